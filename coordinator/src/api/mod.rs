//! The operator HTTP/JSON API, one module per noun: [`cluster`], [`hosts`], [`guests`],
//! [`packages`], [`migrations`], [`events`].
//!
//! Every request passes the [`edge`] first: bearer-token authentication, the role check for the
//! route, the body size limit, and — when a handler answers `not_leader` — forwarding to the
//! leader (once; a forwarded request is never forwarded again). Writes become proposals with a
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
use axum::extract::{Query, Request, State};
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

use crate::config::Role;
use crate::node::Node;
pub use error::{ApiError, LeaderHint};

/// Marks a request a follower already forwarded, so it is not forwarded again.
pub const FORWARDED_HEADER: &str = "x-switchyard-forwarded";
/// Body limit of `POST /v1/cluster/import` (admin only): a restore's chunks are larger than any
/// other request.
pub const IMPORT_BODY_BYTES_MAX: usize = 4 << 20;

/// Who is calling, from the bearer token.
#[derive(Clone, Debug)]
pub struct Caller {
    pub role: Role,
    pub host: Option<Name>,
    pub actor: String,
}

/// The API's own state: the node, the accepted tokens, an HTTP client for forwarding, and the
/// OpenAPI description it serves.
pub struct Api {
    pub node: Arc<Node>,
    tokens: HashMap<String, Caller>,
    client: reqwest::Client,
    spec: Arc<str>,
}

impl Api {
    fn new(node: Arc<Node>, spec: Arc<str>) -> Arc<Api> {
        let config = &node.config;
        let tokens = config
            .tokens
            .iter()
            .map(|t| {
                let actor = t.name.clone().unwrap_or_else(|| match (&t.role, &t.host) {
                    (Role::Agent, Some(h)) => format!("agent:{h}"),
                    (role, _) => format!("{role:?}").to_lowercase(),
                });
                (t.token.clone(), Caller { role: t.role, host: t.host.clone(), actor })
            })
            .collect();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.api.peer_timeout_ms))
            .build()
            .expect("an HTTP client without TLS always builds");
        Arc::new(Api { node, tokens, client, spec })
    }
}

type S = State<Arc<Api>>;

/// Every route, split into those behind the [`edge`] (token, role, body limit, forwarding)
/// and the public ones, with the OpenAPI description of all of them.
fn routes() -> (Router<Arc<Api>>, Router<Arc<Api>>, utoipa::openapi::OpenApi) {
    let (authenticated, mut spec) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(cluster::node_status))
        .routes(routes!(cluster::take_snapshot))
        .routes(routes!(cluster::cluster_status))
        .routes(routes!(cluster::init))
        .routes(routes!(cluster::show_identity, cluster::commit_identity))
        .routes(routes!(cluster::import_events))
        .routes(routes!(cluster::add_node))
        .routes(routes!(cluster::remove_node))
        .routes(routes!(cluster::full_state))
        .routes(routes!(hosts::list, hosts::register))
        .routes(routes!(hosts::show))
        .routes(routes!(hosts::set_maintenance))
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
        .routes(routes!(migrations::abort))
        .routes(routes!(migrations::report))
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

/// The API of `node`.
pub fn router(node: Arc<Node>) -> Router {
    let (authenticated, public, spec) = routes();
    let spec = spec.to_pretty_json().expect("the OpenAPI description serialises");
    let api = Api::new(node, spec.into());
    let authenticated = authenticated
        .fallback(|| async { ApiError::NotFound("no such endpoint; see /openapi.json".into()) })
        .layer(from_fn_with_state(api.clone(), edge));
    public.merge(authenticated).with_state(api)
}

/// Which roles may call a route: reads for everyone authenticated (agents only the desired
/// configuration; their own reports and repairs), cluster membership and every write for
/// admins.
fn allowed(role: Role, method: &Method, path: &str) -> bool {
    let read = method == Method::GET;
    match role {
        Role::Admin => true,
        Role::Operator => read,
        Role::Agent => {
            let report =
                (path.starts_with("/v1/hosts/") || path.starts_with("/v1/migrations/")) && path.ends_with("/report");
            let repair = path.starts_with("/v1/hosts/") && (path.ends_with("/repairs") || path.ends_with("/failovers"));
            (method == Method::POST && (report || repair))
                || read
                    && [
                        "/v1/hosts",
                        "/v1/guests",
                        "/v1/packages",
                        "/v1/events",
                        "/v1/state",
                        "/v1/migrations",
                        "/v1/ha",
                    ]
                    .iter()
                    .any(|p| path == *p || path.starts_with(&format!("{p}/")))
        }
    }
}

async fn edge(State(s): S, req: Request, next: Next) -> Response {
    let token =
        req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(caller) = token.and_then(|t| s.tokens.get(t)).cloned() else {
        return ApiError::Unauthenticated.into_response();
    };
    if !allowed(caller.role, req.method(), req.uri().path()) {
        let msg = format!("role {:?} may not {} {}", caller.role, req.method(), req.uri().path()).to_lowercase();
        return ApiError::Forbidden(msg).into_response();
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
    let url = format!("http://{leader}{}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut fwd = s.client.request(method, &url).header(FORWARDED_HEADER, s.node.id.to_string()).body(bytes);
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
    let command = request.try_into()?;
    let request_id = match request_id {
        None => s.node.clock().request_id(),
        Some(h) => parse_request_id(h).map_err(ApiError::BadRequest)?,
    };
    match s.node.propose(request_id, caller.actor.clone(), command).await? {
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
