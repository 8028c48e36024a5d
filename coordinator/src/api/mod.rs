//! The operator HTTP/JSON API, one module per noun: [`cluster`], [`hosts`], [`guests`],
//! [`packages`], [`migrations`], [`events`].
//!
//! Every request passes the [`edge`] first: bearer-token authentication, the client certificate
//! check (over TLS: an agent's token must come with its host's certificate, and a host's
//! certificate carries only that host's agent token), the role check for the route, the body
//! size limit — all before the body is read — and, when a handler answers `not_leader`,
//! forwarding to the leader (once; a forwarded request is never forwarded again) over TLS with
//! this coordinator's certificate, naming the original client's certificate identity in
//! [`FORWARDED_FOR_HEADER`], which the leader believes from a coordinator's certificate only. Writes become proposals with a
//! request id (the client's, or a fresh one), so a client may retry any write safely; the
//! request → command conversion lives next to the request types (`switchyard_protocol::api`).
//! Reads are linearizable (leadership confirmed by a quorum, then read once applied) unless
//! `?stale=true`. The handlers take the node's context ([`Node`]); nothing below the API
//! imports it.

mod cluster;
pub mod error;
mod events;
mod guests;
mod hosts;
mod migrations;
pub mod openapi;
mod packages;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use switchyard_protocol::api::{parse_request_id, ReadParams, WriteRequest, WriteResponse, PAGE_DEFAULT, PAGE_MAX};
use switchyard_protocol::{ClusterState, Command, Name, Rejection};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use switchyard_tls::{Identity, Tls};

use crate::config::Role;
use crate::listener::Peer;
use crate::node::Node;
pub use error::{ApiError, LeaderHint};

/// Marks a request a follower already forwarded, so it is not forwarded again.
pub const FORWARDED_HEADER: &str = "x-switchyard-forwarded";
/// On a forwarded request: the identity (URI) of the certificate the original client presented.
pub const FORWARDED_FOR_HEADER: &str = "x-switchyard-forwarded-for";
/// Body limit of `POST /v1/cluster/import` (admin only): a restore's chunks are larger than any
/// other request.
pub const IMPORT_BODY_BYTES_MAX: usize = 4 << 20;

/// Who is calling, from the bearer token.
#[derive(Clone, Debug)]
pub struct Caller {
    pub role: Role,
    pub host: Option<Name>,
    pub actor: String,
    /// The token's SHA-256: what per-token limits count by.
    pub token: [u8; 32],
}

/// The accepted credentials: bearer tokens by SHA-256 (a presented token is hashed and looked
/// up, so no token is kept in memory or configuration, and the lookup's timing tells nothing
/// about one), and client certificates accepted without a token, by name. Shared with the
/// server, which replaces both lists when the configuration is reloaded (SIGHUP): tokens and
/// certificates are added, removed and rotated without a restart.
#[derive(Clone)]
pub struct Credentials(Arc<std::sync::RwLock<Arc<CredentialTables>>>);

#[derive(Default)]
struct CredentialTables {
    /// Callers by their token's SHA-256.
    tokens: HashMap<[u8; 32], Caller>,
    /// Callers by their client certificate's name.
    certificates: HashMap<Name, Caller>,
}

impl Credentials {
    pub fn new(config: &crate::config::Config) -> Credentials {
        Credentials(Arc::new(std::sync::RwLock::new(Arc::new(Self::tables(config)))))
    }

    fn tables(config: &crate::config::Config) -> CredentialTables {
        let tokens = config
            .tokens
            .iter()
            .filter_map(|t| {
                let hash = switchyard_protocol::secret::parse_hash(&t.sha256)?;
                let actor = t.name.clone().unwrap_or_else(|| match (&t.role, &t.host) {
                    (Role::Agent, Some(h)) => format!("agent:{h}"),
                    (role, _) => format!("{role:?}").to_lowercase(),
                });
                Some((hash, Caller { role: t.role, host: t.host.clone(), actor, token: hash }))
            })
            .collect();
        let certificates = config
            .client_certificates
            .iter()
            .filter(|c| c.role != Role::Agent)
            .map(|c| {
                // What per-caller limits (open streams) count by: the digest of the identity.
                let key = switchyard_protocol::secret::token_digest(&Identity::Client(c.name.clone()).uri());
                (c.name.clone(), Caller { role: c.role, host: None, actor: c.name.to_string(), token: key })
            })
            .collect();
        CredentialTables { tokens, certificates }
    }

    /// Replaces both lists (a validated configuration's); answers how many tokens and
    /// certificates were added and removed.
    pub fn replace(&self, config: &crate::config::Config) -> Replaced {
        let new = Self::tables(config);
        let mut cur = self.0.write().unwrap_or_else(|p| p.into_inner());
        let r = Replaced {
            tokens_added: new.tokens.keys().filter(|k| !cur.tokens.contains_key(*k)).count(),
            tokens_removed: cur.tokens.keys().filter(|k| !new.tokens.contains_key(*k)).count(),
            certificates_added: new.certificates.keys().filter(|k| !cur.certificates.contains_key(*k)).count(),
            certificates_removed: cur.certificates.keys().filter(|k| !new.certificates.contains_key(*k)).count(),
        };
        *cur = Arc::new(new);
        r
    }

    fn current(&self) -> Arc<CredentialTables> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The caller a presented token stands for.
    pub(crate) fn token(&self, token: &str) -> Option<Caller> {
        let digest = switchyard_protocol::secret::token_digest(token);
        self.current().tokens.get(&digest).cloned()
    }

    /// The caller a client certificate stands for without a token: only a client's identity
    /// listed in `client_certificates`.
    pub(crate) fn certificate(&self, identity: &Identity) -> Option<Caller> {
        match identity {
            Identity::Client(name) => self.current().certificates.get(name).cloned(),
            Identity::Node(_) | Identity::Host(_) => None,
        }
    }
}

/// What a reload changed in the accepted credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replaced {
    pub tokens_added: usize,
    pub tokens_removed: usize,
    pub certificates_added: usize,
    pub certificates_removed: usize,
}

/// The API's own state: the node, the accepted tokens, an HTTP client for forwarding, and the
/// OpenAPI description it serves.
pub struct Api {
    pub node: Arc<Node>,
    credentials: Credentials,
    /// For calls to peers (forwarding, status): TLS with this coordinator's certificate.
    client: reqwest::Client,
    /// `https`, or `http` without TLS.
    scheme: &'static str,
    /// Whether clients' certificates are checked (TLS).
    tls: bool,
    /// Open event subscriptions per token.
    streams: Arc<std::sync::Mutex<HashMap<[u8; 32], usize>>>,
    spec: Arc<str>,
}

impl Api {
    fn new(node: Arc<Node>, spec: Arc<str>, tls: Option<Tls>, credentials: Credentials) -> Arc<Api> {
        let config = &node.config;
        let builder = reqwest::Client::builder().timeout(Duration::from_millis(config.api.peer_timeout_ms));
        let (builder, scheme) = switchyard_tls::http(builder, tls.as_ref());
        let client = builder.build().expect("an HTTP client with a preconfigured TLS setup builds");
        Arc::new(Api { node, credentials, client, scheme, tls: tls.is_some(), streams: Arc::default(), spec })
    }
}

type S = State<Arc<Api>>;

/// Every route, split into those behind the [`edge`] (token, role, body limit, forwarding)
/// and the public ones, with the OpenAPI description of all of them.
fn routes() -> (Router<Arc<Api>>, Router<Arc<Api>>, utoipa::openapi::OpenApi) {
    let (authenticated, mut spec) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(cluster::node_status))
        .routes(routes!(cluster::metrics))
        .routes(routes!(cluster::take_snapshot))
        .routes(routes!(cluster::cluster_status))
        .routes(routes!(cluster::init))
        .routes(routes!(cluster::show_identity, cluster::commit_identity))
        .routes(routes!(cluster::import_events))
        .routes(routes!(cluster::add_node))
        .routes(routes!(cluster::remove_node))
        .routes(routes!(cluster::full_state))
        .routes(routes!(hosts::list, hosts::register))
        .routes(routes!(hosts::show, hosts::modify, hosts::remove))
        .routes(routes!(hosts::set_maintenance))
        .routes(routes!(hosts::drain))
        .routes(routes!(hosts::undrain))
        .routes(routes!(hosts::report))
        .routes(routes!(hosts::record_repair))
        .routes(routes!(hosts::report_failover))
        .routes(routes!(hosts::ha_status))
        .routes(routes!(guests::list, guests::create))
        .routes(routes!(guests::show, guests::modify, guests::remove))
        .routes(routes!(packages::list))
        .routes(routes!(packages::show))
        .routes(routes!(packages::set_switching))
        .routes(routes!(packages::modify))
        .routes(routes!(migrations::list, migrations::request))
        .routes(routes!(migrations::show))
        .routes(routes!(migrations::rebalance))
        .routes(routes!(migrations::abort))
        .routes(routes!(migrations::resolve))
        .routes(routes!(migrations::report))
        .routes(routes!(migrations::check_target))
        .routes(routes!(events::subscribe))
        .split_for_parts();
    // What a load balancer, a probe or a newcomer may read without a token.
    let (public, public_spec) = OpenApiRouter::new()
        .routes(routes!(openapi::serve))
        .routes(routes!(cluster::healthz))
        .routes(routes!(cluster::readyz))
        .split_for_parts();
    spec.merge(public_spec);
    (authenticated, public, spec)
}

/// The OpenAPI description of every route.
pub fn description() -> utoipa::openapi::OpenApi {
    routes().2
}

/// The API of `node`, with TLS material to check clients' certificates and call peers, and
/// the accepted credentials.
pub fn router(node: Arc<Node>, tls: Option<Tls>, credentials: Credentials) -> Router {
    let (authenticated, public, spec) = routes();
    let spec = spec.to_pretty_json().expect("the OpenAPI description serialises");
    let api = Api::new(node, spec.into(), tls, credentials);
    let authenticated = authenticated
        .fallback(|| async { ApiError::NotFound("no such endpoint; see /openapi.json".into()) })
        .layer(from_fn_with_state(api.clone(), edge));
    public.merge(authenticated).with_state(api)
}

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Reading the cluster's configuration, history and HA state: what an agent needs too.
    ReadConfig,
    /// Reading the coordinators' own state (status, metrics, identity).
    ReadCluster,
    /// An agent's reports about its own host (phase reports, repairs, failover outcomes).
    Report,
    /// Day-to-day operations: moving guests, switching, maintenance.
    Operate,
    /// Everything else: membership, registration, configuration, snapshots, init and import.
    Admin,
}

/// Classifies a request by method and path. Anything not named here needs an admin, so a new
/// route is closed until it is given a class (the role matrix test walks every route).
fn access(method: &Method, path: &str) -> Access {
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if method == Method::GET {
        let config = ["/v1/hosts", "/v1/guests", "/v1/packages", "/v1/events", "/v1/state", "/v1/migrations", "/v1/ha"];
        return if config.iter().any(|p| under(p)) { Access::ReadConfig } else { Access::ReadCluster };
    }
    if method != Method::POST {
        return Access::Admin;
    }
    match segments.as_slice() {
        ["v1", "hosts" | "migrations", _, "report"]
        | ["v1", "migrations", _, "target"]
        | ["v1", "hosts", _, "repairs" | "failovers"] => Access::Report,
        ["v1", "migrations"]
        | ["v1", "migrations", _, "abort" | "resolve"]
        | ["v1", "packages", _, "switching"]
        | ["v1", "hosts", _, "maintenance" | "drain" | "undrain"] => Access::Operate,
        _ => Access::Admin,
    }
}

/// Which roles may call a route: reads for everyone authenticated (agents only the desired
/// configuration), reports for agents only (about their own host: the handlers check which),
/// day-to-day operations for the operations role, the rest for admins.
pub(crate) fn allowed(role: Role, method: &Method, path: &str) -> bool {
    let access = access(method, path);
    match role {
        Role::Admin => access != Access::Report,
        Role::Operations => matches!(access, Access::ReadConfig | Access::ReadCluster | Access::Operate),
        Role::ReadOnly => matches!(access, Access::ReadConfig | Access::ReadCluster),
        Role::Agent => matches!(access, Access::ReadConfig | Access::Report),
    }
}

async fn edge(State(s): S, req: Request, next: Next) -> Response {
    let identity = match client_identity(&req) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let token =
        req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // A token decides who calls; without one, a client certificate listed in the configuration.
    let caller = match token {
        Some(t) => s.credentials.token(t),
        None if s.tls => identity.as_ref().and_then(|i| s.credentials.certificate(i)),
        None => None,
    };
    let Some(caller) = caller else {
        return ApiError::Unauthenticated.into_response();
    };
    if s.tls {
        if let Err(e) = certificate_fits(&caller, identity.as_ref()) {
            return e.into_response();
        }
    }
    if !allowed(caller.role, req.method(), req.uri().path()) {
        let msg = format!("role {:?} may not {} {}", caller.role, req.method(), req.uri().path()).to_lowercase();
        return ApiError::Forbidden(msg).into_response();
    }
    if let Err(e) = json_body_only(&req) {
        return e.into_response();
    }
    let config = &s.node.config;
    let limit = match req.uri().path() {
        "/v1/cluster/import" => IMPORT_BODY_BYTES_MAX.max(config.api.request_body_bytes_max),
        _ => config.api.request_body_bytes_max,
    };
    let (mut parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return ApiError::PayloadTooLarge(limit).into_response();
    };
    parts.extensions.insert(caller);
    let forwarded = parts.headers.contains_key(FORWARDED_HEADER);
    let (method, uri, headers) = (parts.method.clone(), parts.uri.clone(), parts.headers.clone());
    let resp = next.run(Request::from_parts(parts, Body::from(bytes.clone()))).await;
    let Some(LeaderHint(leader)) = resp.extensions().get::<LeaderHint>().cloned() else {
        return resp;
    };
    if forwarded {
        return resp;
    }
    // Forward once to the leader, with the caller's own credentials.
    let url = format!("{}://{leader}{}", s.scheme, uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut fwd = s.client.request(method, &url).header(FORWARDED_HEADER, s.node.id.to_string()).body(bytes);
    if let Some(i) = &identity {
        fwd = fwd.header(FORWARDED_FOR_HEADER, i.uri());
    }
    for name in ["authorization", "content-type"] {
        if let Some(v) = headers.get(name) {
            fwd = fwd.header(name, v);
        }
    }
    match fwd.send().await {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let ctype = r.headers().get("content-type").cloned();
            let body = r.bytes().await.unwrap_or_default();
            let mut out = (status, body).into_response();
            if let Some(c) = ctype.and_then(|c| HeaderValue::from_bytes(c.as_bytes()).ok()) {
                out.headers_mut().insert("content-type", c);
            }
            out
        }
        Err(e) => ApiError::Unavailable(format!("forwarding to the leader at {leader} failed: {e}")).into_response(),
    }
}

/// A request with a body must say it is JSON (`Content-Type: application/json`): the body is
/// parsed as nothing else, and a form or text a browser can send cross-site never reaches the
/// parser.
fn json_body_only(req: &Request) -> Result<(), ApiError> {
    let h = req.headers();
    let has_body = h.contains_key("transfer-encoding")
        || h.get("content-length").and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() != "0");
    if !has_body {
        return Ok(());
    }
    let ctype = h.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = ctype.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        let shown = if ctype.is_empty() { "none".to_string() } else { format!("{ctype:?}") };
        Err(ApiError::UnsupportedMediaType(format!(
            "a request body must be JSON with Content-Type: application/json (this one's content type: {shown})"
        )))
    }
}

/// The identity of the client's certificate: the connection's own, or — on a request a
/// coordinator forwards — the one it names for the original client.
fn client_identity(req: &Request) -> Result<Option<Identity>, ApiError> {
    let direct = req.extensions().get::<ConnectInfo<Peer>>().and_then(|c| c.0.identity.clone());
    if !matches!(direct, Some(Identity::Node(_))) {
        return Ok(direct);
    }
    match req.headers().get(FORWARDED_FOR_HEADER) {
        None => Ok(direct),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(Identity::from_uri)
            .map(Some)
            .ok_or_else(|| ApiError::BadRequest(format!("invalid {FORWARDED_FOR_HEADER} header"))),
    }
}

/// Over TLS, a token and the certificate it comes with must fit: an agent's token only with
/// its own host's certificate (a stolen token is useless without the host's key, and h1's
/// certificate never acts for h2), and a host's certificate only with its agent's token.
fn certificate_fits(caller: &Caller, identity: Option<&Identity>) -> Result<(), ApiError> {
    match (caller.role, &caller.host, identity) {
        (Role::Agent, Some(h), Some(Identity::Host(c))) if c == h => Ok(()),
        (Role::Agent, Some(h), other) => Err(ApiError::Forbidden(format!(
            "the agent token of host {h} must come with host {h}'s client certificate (`switchyard cert host {h}`); \
             this connection presents {}",
            other.map_or("no certificate".to_string(), |i| format!("the certificate of {i}"))
        ))),
        (_, _, Some(Identity::Host(c))) => {
            Err(ApiError::Forbidden(format!("host {c}'s certificate may carry only host {c}'s agent token")))
        }
        _ => Ok(()),
    }
}

/// Parses a JSON body, refusing unknown fields and malformed values with a clear message.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

/// A body that may be empty (then the type's default).
fn body_or_default<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.is_empty() {
        Ok(T::default())
    } else {
        body(bytes)
    }
}

/// A name from a path.
fn name(s: &str) -> Result<Name, ApiError> {
    Name::new(s).map_err(|e| ApiError::BadRequest(format!("invalid name {s:?}: {e}")))
}

/// Query parameters, refusing unknown ones with a clear message.
fn query<T: DeserializeOwned + Default>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))
}

type Q<T> = Result<Query<T>, QueryRejection>;

/// The one write path: a request becomes a command, which is proposed through Raft with the
/// caller's request id (or a fresh one) and answered with the revisions it committed.
async fn submit<T>(
    s: &Api,
    caller: &Caller,
    request_id: Option<&str>,
    request: T,
) -> Result<Json<WriteResponse>, ApiError>
where
    T: TryInto<Command>,
    ApiError: From<T::Error>,
{
    let started = std::time::Instant::now();
    let command = request.try_into()?;
    let request_id = match request_id {
        None => s.node.clock().request_id(),
        Some(h) => parse_request_id(h).map_err(ApiError::BadRequest)?,
    };
    let result = s.node.propose(request_id, caller.actor.clone(), command).await?;
    s.node.metrics.stage(crate::metrics::stage::API, started.elapsed());
    match result {
        Ok(a) => Ok(Json(WriteResponse {
            request_id: request_id.to_string(),
            first_revision: a.revisions.first,
            last_revision: a.revisions.last,
            duplicate: a.duplicate,
        })),
        Err(r) => Err(ApiError::Rejected(r)),
    }
}

/// [`submit`] of a JSON body: parsed, its request id kept, turned into a command by `wrap`
/// (which adds what the path names).
async fn submit_body<R, T>(
    s: &Api,
    caller: &Caller,
    raw: &Bytes,
    wrap: impl FnOnce(R) -> T,
) -> Result<Json<WriteResponse>, ApiError>
where
    R: DeserializeOwned + WriteRequest,
    T: TryInto<Command>,
    ApiError: From<T::Error>,
{
    let r: R = body(raw)?;
    let rid = r.request_id().map(str::to_string);
    submit(s, caller, rid.as_deref(), wrap(r)).await
}

/// A read of the state: linearizable unless `stale`, answered with the revision it saw.
async fn read_state<T>(
    s: &Api,
    stale: bool,
    f: impl FnOnce(&ClusterState) -> Result<T, ApiError>,
) -> Result<Json<switchyard_protocol::api::Read<T>>, ApiError> {
    s.node.read_barrier(stale).await?;
    s.node.sm.read(|st| f(st).map(|items| Json(switchyard_protocol::api::Read::new(st.revision(), items))))
}

/// [`read_state`] with `?stale=` as the only parameter.
async fn read_simple<T>(
    s: &Api,
    q: Q<ReadParams>,
    f: impl FnOnce(&ClusterState) -> Result<T, ApiError>,
) -> Result<Json<switchyard_protocol::api::Read<T>>, ApiError> {
    let stale = query(q)?.stale;
    read_state(s, stale, f).await
}

/// A read of one page of a list: `f` answers the page and the cursor of the next one.
async fn read_page<T>(
    s: &Api,
    stale: bool,
    f: impl FnOnce(&ClusterState) -> Result<(Vec<T>, Option<String>), ApiError>,
) -> Result<Json<switchyard_protocol::api::Read<Vec<T>>>, ApiError> {
    let mut next = None;
    let mut answer = read_state(s, stale, |st| {
        let (items, more) = f(st)?;
        next = more;
        Ok(items)
    })
    .await?;
    answer.0.next_after = next;
    Ok(answer)
}

/// A page of a name-ordered list: at most `limit` (checked) of `items`, and the name to pass as
/// `after` for the next page when there are more.
fn page<'a, T: 'a>(
    items: impl Iterator<Item = &'a T>,
    limit: Option<usize>,
    name: impl Fn(&T) -> &Name,
) -> Result<(Vec<&'a T>, Option<String>), ApiError> {
    let limit = limit.unwrap_or(PAGE_DEFAULT);
    if limit == 0 || limit > PAGE_MAX {
        return Err(ApiError::BadRequest(format!("limit must be 1 to {PAGE_MAX}")));
    }
    let mut out: Vec<&T> = items.take(limit + 1).collect();
    let next = (out.len() > limit).then(|| {
        out.truncate(limit);
        out.last().map(|t| name(t).to_string())
    });
    Ok((out, next.flatten()))
}

/// `unknown_<what>` for a name the state does not hold.
fn unknown_guest(n: &Name) -> ApiError {
    ApiError::Rejected(Rejection::UnknownGuest { guest: n.clone() })
}

impl From<std::convert::Infallible> for ApiError {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}
