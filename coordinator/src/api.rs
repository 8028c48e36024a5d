//! The operator HTTP/JSON API.
//!
//! Every request passes the [`edge`] first: bearer-token authentication, the role check for the
//! route, the body size limit, and — when a handler answers `not_leader` — forwarding to the
//! leader (once; a forwarded request is never forwarded again). Writes become proposals with a
//! request id (the client's, or a fresh one), so a client may retry any write safely. Reads are
//! linearizable (leadership confirmed by a quorum, then read once applied) unless `?stale=true`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use openraft::{ChangeMembers, Raft, ServerState};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use switchyard_protocol::api::*;
use switchyard_protocol::*;
use switchyard_storage::{NodeId, NodeInfo, StateMachineStore, TypeConfig};

use crate::clock::Clock;
use crate::config::{Config, Role};
use crate::error::{ApiError, LeaderHint};
use crate::liveness::Liveness;
use crate::migration::Reports;
use crate::proposer::Proposer;

/// Marks a request a follower already forwarded, so it is not forwarded again.
pub const FORWARDED_HEADER: &str = "x-switchyard-forwarded";
/// Body limit of `POST /v1/cluster/import` (admin only): a restore's chunks are larger than any
/// other request.
pub const IMPORT_BODY_BYTES_MAX: usize = 4 << 20;

/// The OpenAPI description served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Who is calling, from the bearer token.
#[derive(Clone, Debug)]
pub struct Caller {
    pub role: Role,
    pub host: Option<Name>,
    pub actor: String,
}

pub struct ApiState {
    pub id: NodeId,
    pub raft: Raft<TypeConfig>,
    pub sm: StateMachineStore,
    pub config: Arc<Config>,
    tokens: HashMap<String, Caller>,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    /// Agent reports (meaningful on the leader).
    pub liveness: Arc<Liveness>,
    /// Agents' migration reports, read by the migration driver (kept on every node).
    pub reports: Arc<Reports>,
    /// Every write of this node goes through it into Raft.
    pub proposer: Proposer,
    /// Recent events' encoded frames, shared by the subscribers.
    pub frames: crate::events::RecentFrames,
}

impl ApiState {
    pub fn new(
        id: NodeId,
        raft: Raft<TypeConfig>,
        sm: StateMachineStore,
        config: Arc<Config>,
        clock: Arc<dyn Clock>,
    ) -> Arc<ApiState> {
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
        let (raft_for_proposer, batch_max) = (raft.clone(), config.raft.proposal_batch_max);
        Arc::new(ApiState {
            id,
            raft,
            sm,
            config,
            tokens,
            client,
            clock,
            liveness: Arc::new(Liveness::default()),
            reports: Arc::new(Reports::default()),
            proposer: Proposer::start(raft_for_proposer, batch_max),
            frames: Default::default(),
        })
    }
}

impl ApiState {
    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    fn leader_api(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        let addr = m.membership_config.nodes().find(|(id, _)| **id == leader).map(|(_, n)| n.api_addr.clone());
        addr
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/v1/node/status", get(node_status))
        .route("/v1/node/snapshot", post(take_snapshot))
        .route("/v1/cluster/status", get(cluster_status))
        .route("/v1/cluster/init", post(cluster_init))
        .route("/v1/cluster/identity", get(show_identity).post(cluster_identity))
        .route("/v1/cluster/import", post(import_events))
        .route("/v1/cluster/nodes", post(add_node))
        .route("/v1/cluster/nodes/{id}", delete(remove_node))
        .route("/v1/hosts", get(list_hosts).post(register_host))
        .route("/v1/hosts/{name}", get(show_host))
        .route("/v1/hosts/{name}/maintenance", post(set_maintenance))
        .route("/v1/hosts/{name}/report", post(report))
        .route("/v1/guests", get(list_guests).post(create_guest))
        .route("/v1/guests/{name}", get(show_guest).patch(modify_guest).delete(remove_guest))
        .route("/v1/packages", get(list_packages))
        .route("/v1/events", get(crate::events::subscribe))
        .route("/v1/state", get(full_state))
        .route("/v1/packages/{name}/switching", post(set_switching))
        .route("/v1/migrations", get(list_migrations).post(request_migration))
        .route("/v1/migrations/{id}", get(show_migration))
        .route("/v1/migrations/{id}/abort", post(abort_migration))
        .route("/v1/migrations/{id}/report", post(report_migration))
        .fallback(|| async { ApiError::NotFound("no such endpoint; see /openapi.json".into()) })
        .layer(from_fn_with_state(state.clone(), edge))
        .with_state(state)
}

/// Which roles may call a route: reads for everyone authenticated (agents only the desired
/// configuration), cluster membership and every write for admins.
fn allowed(role: Role, method: &Method, path: &str) -> bool {
    let read = method == Method::GET;
    match role {
        Role::Admin => true,
        Role::Operator => read,
        Role::Agent => {
            (method == Method::POST
                && (path.starts_with("/v1/hosts/") || path.starts_with("/v1/migrations/"))
                && path.ends_with("/report"))
                || read
                    && (path == "/openapi.json"
                        || ["/v1/hosts", "/v1/guests", "/v1/packages", "/v1/events", "/v1/state", "/v1/migrations"]
                            .iter()
                            .any(|p| path == *p || path.starts_with(&format!("{p}/"))))
        }
    }
}

async fn edge(State(s): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let token =
        req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(caller) = token.and_then(|t| s.tokens.get(t)).cloned() else {
        return ApiError::Unauthenticated.into_response();
    };
    if !allowed(caller.role, req.method(), req.uri().path()) {
        let msg = format!("role {:?} may not {} {}", caller.role, req.method(), req.uri().path()).to_lowercase();
        return ApiError::Forbidden(msg).into_response();
    }
    let limit = match req.uri().path() {
        "/v1/cluster/import" => IMPORT_BODY_BYTES_MAX.max(s.config.api.request_body_bytes_max),
        _ => s.config.api.request_body_bytes_max,
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
    let mut fwd = s.client.request(method, &url).header(FORWARDED_HEADER, s.id.to_string()).body(bytes);
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

fn name(s: &str) -> Result<Name, ApiError> {
    Name::new(s).map_err(|e| ApiError::BadRequest(format!("invalid name {s:?}: {e}")))
}

fn request_id(clock: &dyn Clock, s: Option<&str>) -> Result<RequestId, ApiError> {
    match s {
        None => Ok(clock.request_id()),
        Some(h) if !h.is_empty() && h.len() <= 32 => u128::from_str_radix(h, 16)
            .map(RequestId)
            .map_err(|_| ApiError::BadRequest(format!("request_id {h:?} is not 1 to 32 hex digits"))),
        Some(h) => Err(ApiError::BadRequest(format!("request_id {h:?} is not 1 to 32 hex digits"))),
    }
}

/// Proposes a command through Raft and waits for its apply result.
async fn propose(
    s: &ApiState,
    caller: &Caller,
    rid: Option<&str>,
    command: Command,
) -> Result<Json<WriteResponse>, ApiError> {
    let request_id = request_id(&*s.clock, rid)?;
    let proposal = Proposal { request_id, actor: caller.actor.clone(), time: s.clock.now(), command };
    match s.proposer.propose(proposal).await? {
        Ok(a) => Ok(Json(WriteResponse {
            request_id: request_id.to_string(),
            first_revision: a.revisions.first,
            last_revision: a.revisions.last,
            duplicate: a.duplicate,
        })),
        Err(r) => Err(ApiError::Rejected(r)),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    #[serde(default)]
    stale: bool,
}

/// Waits until this node may answer a linearizable read (or not at all for a stale read).
async fn read_barrier(s: &ApiState, params: &ReadParams) -> Result<(), ApiError> {
    if !params.stale {
        s.raft.ensure_linearizable().await?;
    }
    Ok(())
}

type ReadQuery = Result<Query<ReadParams>, axum::extract::rejection::QueryRejection>;

/// A read of the state: linearizable unless `?stale=true`, answered with the revision it saw.
async fn read_state<T>(
    s: &ApiState,
    q: ReadQuery,
    f: impl FnOnce(&ClusterState) -> Result<T, ApiError>,
) -> Result<Json<Read<T>>, ApiError> {
    read_barrier(s, &query(q)?).await?;
    s.sm.read(|st| f(st).map(|items| Json(Read { revision: st.revision(), items })))
}

fn query<T: DeserializeOwned + Default>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))
}

async fn openapi() -> Response {
    ([("content-type", "application/json")], OPENAPI).into_response()
}

// ---- cluster ----

fn node_status_of(s: &ApiState) -> NodeStatus {
    let m = s.raft.metrics().borrow().clone();
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    NodeStatus {
        id: s.id,
        role: role.into(),
        term: m.current_term,
        leader: m.current_leader,
        last_log_index: m.last_log_index,
        applied_index: m.last_applied.map(|l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        revision: s.sm.applied_meta().revision,
    }
}

async fn node_status(State(s): State<Arc<ApiState>>) -> Json<NodeStatus> {
    Json(node_status_of(&s))
}

/// Builds a snapshot on this node now (before maintenance, or to measure it) and answers once
/// it covers everything applied when asked.
async fn take_snapshot(State(s): State<Arc<ApiState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let started = std::time::Instant::now();
    let applied = s.raft.metrics().borrow().last_applied.map(|l| l.index);
    let covered = |m: &openraft::RaftMetrics<NodeId, NodeInfo>| m.snapshot.map(|l| l.index) >= applied;
    // openraft ignores a trigger while it builds a snapshot (one of its own may have started
    // just before, covering less): trigger again until one covers what was applied.
    loop {
        s.raft.trigger().snapshot().await.map_err(|e| ApiError::Unavailable(format!("raft stopped: {e}")))?;
        let built =
            s.raft.wait(Some(Duration::from_secs(1))).metrics(covered, "the snapshot to cover the applied log").await;
        match built {
            Ok(_) => break,
            Err(_) if started.elapsed() < Duration::from_secs(600) => {}
            Err(e) => return Err(ApiError::Unavailable(format!("the snapshot was not built: {e}"))),
        }
    }
    let m = s.raft.metrics().borrow().clone();
    Ok(Json(serde_json::json!({
        "snapshot_index": m.snapshot.map(|l| l.index),
        "revision": s.sm.applied_meta().revision,
        "build_ms": started.elapsed().as_millis() as u64,
    })))
}

async fn cluster_status(State(s): State<Arc<ApiState>>, req: Request) -> Result<Json<ClusterStatus>, ApiError> {
    let auth = req.headers().get("authorization").cloned();
    let membership = s.raft.metrics().borrow().membership_config.clone();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let nodes: Vec<(NodeId, NodeInfo)> = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
    let mut statuses = BTreeMap::new();
    for (id, node) in &nodes {
        let st = if *id == s.id {
            Some(node_status_of(&s))
        } else {
            let mut r = s.client.get(format!("http://{}/v1/node/status", node.api_addr));
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            match r.send().await {
                Ok(resp) if resp.status().is_success() => resp.json::<NodeStatus>().await.ok(),
                _ => None,
            }
        };
        statuses.insert(*id, st);
    }
    let leader = statuses.values().flatten().find(|st| st.role == "leader").map(|st| st.id);
    let leader_last = leader.and_then(|l| statuses.get(&l).cloned().flatten()).and_then(|st| st.last_log_index);
    let members = nodes
        .into_iter()
        .map(|(id, node)| {
            let status = statuses.remove(&id).flatten();
            let lag = match (leader_last, status.as_ref().and_then(|st| st.applied_index)) {
                (Some(l), Some(a)) => Some(l.saturating_sub(a)),
                _ => None,
            };
            MemberStatus {
                id,
                raft_addr: node.raft_addr,
                api_addr: node.api_addr,
                voter: voters.contains(&id),
                status,
                lag,
            }
        })
        .collect();
    Ok(Json(ClusterStatus { leader, members }))
}

fn node_info(m: &MemberSpec) -> NodeInfo {
    NodeInfo { raft_addr: m.raft_addr.clone(), api_addr: m.api_addr.clone() }
}

async fn cluster_init(
    State(s): State<Arc<ApiState>>,
    Extension(c): Extension<Caller>,
    headers: axum::http::HeaderMap,
    raw: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: InitRequest = if raw.is_empty() { InitRequest::default() } else { body(&raw)? };
    let members: BTreeMap<NodeId, NodeInfo> = if req.members.is_empty() {
        BTreeMap::from([(s.id, NodeInfo { raft_addr: s.config.raft_advertise(), api_addr: s.config.api_advertise() })])
    } else {
        req.members.iter().map(|m| (m.id, node_info(m))).collect()
    };
    let initialized = s.raft.initialize(members.clone()).await;
    if req.for_restore {
        initialized?;
        return Ok(Json(serde_json::json!({ "initialized": members.keys().collect::<Vec<_>>(), "for_restore": true })));
    }
    // A cluster initialized by an init that died before committing the identity gets one now
    // (unless it is being restored); an identified one answers "already initialized" as before.
    let unidentified = s.sm.read(|st| st.identity().is_none() && st.importing().is_none());
    if let Err(e) = initialized {
        if unidentified {
            commit_identity(&s, &c, headers.get("authorization")).await?;
        }
        return Err(e.into());
    }
    let identity = commit_identity(&s, &c, headers.get("authorization")).await?;
    Ok(Json(serde_json::json!({ "initialized": members.keys().collect::<Vec<_>>(), "cluster": identity })))
}

/// Commits a fresh identity through whichever node leads, once the first election is over.
/// Answers the identity the cluster holds (an earlier init's, if it got there first).
async fn commit_identity(s: &ApiState, c: &Caller, auth: Option<&HeaderValue>) -> Result<ClusterId, ApiError> {
    let req = IdentityRequest {
        request_id: Some(s.clock.request_id().to_string()),
        cluster: Some(new_cluster_id()),
        restored_from: None,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(s.config.api.join_timeout_ms);
    loop {
        let leader = s.raft.metrics().borrow().current_leader;
        let answer = match leader {
            Some(l) if l == s.id => identity(s, c, req.clone()).await.map(|Json(v)| v),
            Some(_) => match s.leader_api() {
                Some(addr) => {
                    let mut r = s
                        .client
                        .post(format!("http://{addr}/v1/cluster/identity"))
                        .header(FORWARDED_HEADER, s.id.to_string())
                        .json(&req);
                    if let Some(a) = auth {
                        r = r.header("authorization", a);
                    }
                    match r.send().await {
                        Ok(resp) if resp.status().is_success() => resp
                            .json::<serde_json::Value>()
                            .await
                            .map_err(|e| ApiError::Unavailable(format!("the leader's answer: {e}"))),
                        Ok(resp) => Err(ApiError::Unavailable(format!(
                            "the leader at {addr} answered {}: {}",
                            resp.status(),
                            resp.text().await.unwrap_or_default()
                        ))),
                        Err(e) => Err(ApiError::Unavailable(format!("the leader at {addr}: {e}"))),
                    }
                }
                None => Err(ApiError::Unavailable("no leader address known yet".into())),
            },
            None => Err(ApiError::Unavailable("no leader elected yet".into())),
        };
        match answer {
            Ok(v) => {
                if let Some(id) = v.get("cluster").and_then(|c| c.as_str()).and_then(ClusterId::parse) {
                    return Ok(id);
                }
                return Err(ApiError::Internal(format!("unexpected identity answer: {v}")));
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(ApiError::Unavailable(format!(
                    "the cluster is initialized but could not commit its identity ({e}); run `switchyard cluster init` again"
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// 128 random bits as 32 hex digits, in the 8-4-4-4-12 layout people recognise.
fn new_cluster_id() -> ClusterId {
    let h = format!("{:032x}", rand::random::<u128>());
    ClusterId(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
}

/// Proposes `CreateCluster`; a cluster that already has an identity answers it (so a retried
/// init succeeds), unless the request was to complete a restore.
async fn identity(s: &ApiState, c: &Caller, req: IdentityRequest) -> Result<Json<serde_json::Value>, ApiError> {
    let restoring = req.restored_from.is_some();
    let cmd = Command::CreateCluster {
        cluster: req.cluster.unwrap_or_else(new_cluster_id),
        restored_from: req.restored_from,
    };
    match propose(s, c, req.request_id.as_deref(), cmd).await {
        Ok(Json(w)) => {
            let id = s.sm.read(|st| st.identity().map(|i| i.id.clone()));
            Ok(Json(serde_json::json!({ "cluster": id, "revision": w.first_revision, "duplicate": w.duplicate })))
        }
        Err(ApiError::Rejected(Rejection::ClusterExists { cluster })) if !restoring => {
            Ok(Json(serde_json::json!({ "cluster": cluster, "duplicate": true })))
        }
        Err(e) => Err(e),
    }
}

async fn cluster_identity(
    State(s): State<Arc<ApiState>>,
    Extension(c): Extension<Caller>,
    raw: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: IdentityRequest = if raw.is_empty() { IdentityRequest::default() } else { body(&raw)? };
    identity(&s, &c, req).await
}

async fn show_identity(State(s): State<Arc<ApiState>>, q: ReadQuery) -> Result<Json<Read<IdentityView>>, ApiError> {
    read_state(&s, q, |st| Ok(IdentityView { identity: st.identity().cloned(), importing: st.importing().cloned() }))
        .await
}

/// The next chunk of a restore. The state machine checks it whole (see `apply::import`).
async fn import_events(
    State(s): State<Arc<ApiState>>,
    Extension(c): Extension<Caller>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let r: ImportRequest = body(&raw)?;
    propose(
        &s,
        &c,
        r.request_id.as_deref(),
        Command::ImportEvents { cluster: r.cluster, chain: r.chain, events: r.events },
    )
    .await
}

/// Changes the membership, waiting out the second half of an earlier change: openraft moves
/// through a joint configuration and refuses a new change until the final one commits, which
/// is a matter of one commit, not a conflict to report to the operator.
async fn change_membership(s: &ApiState, change: ChangeMembers<NodeId, NodeInfo>) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match s.raft.change_membership(change.clone(), false).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                let e = ApiError::from(e);
                let in_progress = matches!(&e, ApiError::Conflict(m) if m.contains("already undergoing"));
                if !in_progress || tokio::time::Instant::now() >= deadline {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn add_node(State(s): State<Arc<ApiState>>, raw: Bytes) -> Result<Json<serde_json::Value>, ApiError> {
    let m: MemberSpec = body(&raw)?;
    if m.id == 0 {
        return Err(ApiError::BadRequest("node id must be at least 1".into()));
    }
    // Learner first: it catches up without counting towards the quorum. Only a learner that has
    // caught up is promoted: promoting an unreachable node could cost the cluster its quorum.
    s.raft.add_learner(m.id, node_info(&m), false).await?;
    let wait = Duration::from_millis(s.config.api.join_timeout_ms);
    let mut metrics = s.raft.metrics();
    let target = metrics.borrow().last_log_index.unwrap_or(0);
    let id = m.id;
    let matched = |m: &openraft::RaftMetrics<NodeId, NodeInfo>| -> Option<u64> {
        m.replication.as_ref()?.get(&id)?.as_ref().map(|l| l.index)
    };
    let caught_up = async {
        loop {
            if matched(&metrics.borrow()).is_some_and(|i| i >= target) {
                return Ok(());
            }
            if metrics.changed().await.is_err() {
                return Err(ApiError::Unavailable("raft stopped".into()));
            }
        }
    };
    match tokio::time::timeout(wait, caught_up).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ApiError::Unavailable(format!(
                "node {id} was added as a learner but did not catch up within {wait:?}; check that it runs and \
                 is reachable at {}, then retry (or remove it)",
                m.raft_addr
            )))
        }
    }
    change_membership(&s, ChangeMembers::AddVoterIds(BTreeSet::from([m.id]))).await?;
    Ok(Json(serde_json::json!({ "added": m.id })))
}

async fn remove_node(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id: NodeId = id.parse().map_err(|_| ApiError::BadRequest(format!("node id {id:?} is not a number")))?;
    let membership = s.raft.metrics().borrow().membership_config.clone();
    if !membership.nodes().any(|(n, _)| *n == id) {
        return Err(ApiError::NotFound(format!("node {id} is not a member")));
    }
    let change = if membership.voter_ids().any(|v| v == id) {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    change_membership(&s, change).await?;
    Ok(Json(serde_json::json!({ "removed": id })))
}

// ---- hosts ----

/// Host views with their sync status (known on the leader only).
fn host_views<'a>(s: &ApiState, st: &ClusterState, hosts: impl Iterator<Item = &'a Host>) -> Vec<HostView> {
    let leader = s.is_leader();
    let digest = leader.then(|| st.config_digest());
    let timeout = Duration::from_millis(s.config.api.host_report_timeout_ms);
    hosts
        .map(|h| HostView {
            host: h.clone(),
            state: h.state(),
            sync: digest.map(|d| s.liveness.sync(h, st, d, timeout)),
        })
        .collect()
}

/// An agent reports what it has applied. Only for its own host, and only to the leader (a
/// follower forwards it).
async fn report(
    State(s): State<Arc<ApiState>>,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    raw: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let host = name(&n)?;
    if c.role != Role::Agent || c.host.as_ref() != Some(&host) {
        let bound = c.host.as_ref().map_or("no host".to_string(), |h| format!("host {h}"));
        return Err(ApiError::Forbidden(format!("this token is bound to {bound} and may not report for host {host}")));
    }
    let r: HostReport = body(&raw)?;
    if s.sm.read(|st| st.host(&host).is_none()) {
        return Err(ApiError::Rejected(Rejection::UnknownHost { host }));
    }
    if !s.is_leader() {
        return Err(ApiError::NotLeader { leader: s.leader_api() });
    }
    s.liveness.record(&host, &r);
    Ok(Json(serde_json::json!({ "recorded": host })))
}

async fn list_hosts(State(s): State<Arc<ApiState>>, q: ReadQuery) -> Result<Json<Read<Vec<HostView>>>, ApiError> {
    read_state(&s, q, |st| Ok(host_views(&s, st, st.hosts()))).await
}

async fn show_host(
    State(s): State<Arc<ApiState>>,
    Path(n): Path<String>,
    q: ReadQuery,
) -> Result<Json<Read<HostView>>, ApiError> {
    let n = name(&n)?;
    read_state(&s, q, |st| {
        let h = st.host(&n).ok_or(ApiError::Rejected(Rejection::UnknownHost { host: n.clone() }))?;
        Ok(host_views(&s, st, std::iter::once(h)).remove(0))
    })
    .await
}

async fn register_host(
    State(s): State<Arc<ApiState>>,
    Extension(c): Extension<Caller>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let r: RegisterHostRequest = body(&raw)?;
    let spec = HostSpec {
        name: r.name,
        address: r.address,
        capacity: Resources { vcpus: r.vcpus, memory_mib: r.memory_mib },
        profile: CompatProfile { hardware_family: r.hardware_family, hypervisor_version: r.hypervisor_version },
    };
    propose(&s, &c, r.request_id.as_deref(), Command::RegisterHost(spec)).await
}

async fn set_maintenance(
    State(s): State<Arc<ApiState>>,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let host = name(&n)?;
    let r: MaintenanceRequest = body(&raw)?;
    propose(&s, &c, r.request_id.as_deref(), Command::SetHostMaintenance { host, maintenance: r.maintenance }).await
}

// ---- guests ----

fn guest_view(st: &ClusterState, g: &Guest) -> GuestView {
    GuestView {
        guest: g.clone(),
        package: g.spec.package.as_ref().and_then(|p| st.package(p)).cloned(),
        migration: st.in_flight(&g.name).cloned(),
        hosts: Vec::new(),
    }
}

/// Per host: does it hold `g`'s current configuration? (Leader only; empty elsewhere.)
fn guest_on_hosts(s: &ApiState, st: &ClusterState, g: &Guest) -> Vec<GuestOnHost> {
    host_views(s, st, st.hosts())
        .into_iter()
        .filter_map(|h| {
            let sync = h.sync?;
            let status = match sync.status {
                SyncStatus::Lagging { .. } if sync.applied_revision.is_some_and(|r| r >= g.version) => {
                    SyncStatus::InSync
                }
                other => other,
            };
            Some(GuestOnHost { host: h.host.spec.name, status })
        })
        .collect()
}

async fn list_guests(State(s): State<Arc<ApiState>>, q: ReadQuery) -> Result<Json<Read<Vec<GuestView>>>, ApiError> {
    read_state(&s, q, |st| Ok(st.guests().map(|g| guest_view(st, g)).collect())).await
}

async fn show_guest(
    State(s): State<Arc<ApiState>>,
    Path(n): Path<String>,
    q: ReadQuery,
) -> Result<Json<Read<GuestView>>, ApiError> {
    let n = name(&n)?;
    read_state(&s, q, |st| {
        let g = st.guest(&n).ok_or(ApiError::Rejected(Rejection::UnknownGuest { guest: n.clone() }))?;
        Ok(GuestView { hosts: guest_on_hosts(&s, st, g), ..guest_view(st, g) })
    })
    .await
}

async fn create_guest(
    State(s): State<Arc<ApiState>>,
    Extension(c): Extension<Caller>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let r: CreateGuestRequest = body(&raw)?;
    let spec = GuestSpec {
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        disks: r.disks,
        networks: r.networks,
        online_migration: r.online_migration,
        cluster_node: r.cluster_node,
        package: r.package,
    };
    let cmd = Command::CreateGuest { name: r.name, spec, owner: r.owner, run_state: r.run_state };
    propose(&s, &c, r.request_id.as_deref(), cmd).await
}

async fn modify_guest(
    State(s): State<Arc<ApiState>>,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let guest = name(&n)?;
    let r: ModifyGuestRequest = body(&raw)?;
    if r.remove_package && r.package.is_some() {
        return Err(ApiError::BadRequest("package and remove_package exclude each other".into()));
    }
    let patch = GuestPatch {
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        disks: r.disks,
        networks: r.networks,
        online_migration: r.online_migration,
        cluster_node: r.cluster_node,
        package: if r.remove_package { Some(None) } else { r.package.map(Some) },
        run_state: r.run_state,
    };
    let cmd = Command::ModifyGuest { name: guest, patch, expect_version: r.expect_version };
    propose(&s, &c, r.request_id.as_deref(), cmd).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RemoveParams {
    expect_version: Option<Revision>,
    request_id: Option<String>,
}

async fn remove_guest(
    State(s): State<Arc<ApiState>>,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    q: Result<Query<RemoveParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<WriteResponse>, ApiError> {
    let guest = name(&n)?;
    let p = query(q)?;
    propose(&s, &c, p.request_id.as_deref(), Command::RemoveGuest { name: guest, expect_version: p.expect_version })
        .await
}

// ---- packages ----

async fn list_packages(State(s): State<Arc<ApiState>>, q: ReadQuery) -> Result<Json<Read<Vec<Package>>>, ApiError> {
    read_state(&s, q, |st| Ok(st.packages().cloned().collect())).await
}

async fn set_switching(
    State(s): State<Arc<ApiState>>,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let package = name(&n)?;
    let r: SwitchingRequest = body(&raw)?;
    let cmd = Command::SetPackageSwitching { package, node: r.node, enabled: r.enabled, reason: r.reason };
    propose(&s, &c, r.request_id.as_deref(), cmd).await
}

async fn full_state(State(s): State<Arc<ApiState>>, q: ReadQuery) -> Result<Json<Read<FullState>>, ApiError> {
    read_state(&s, q, |st| Ok(FullState::of(st))).await
}

// ---- migrations ----

fn migration_id(s: &str) -> Result<MigrationId, ApiError> {
    s.parse().map(MigrationId).map_err(|_| ApiError::BadRequest(format!("migration id {s:?} is not a number")))
}

/// `migrate GUEST --to HOST`: the source is where the guest runs now; the state machine checks
/// every rule again when the request commits.
async fn request_migration(
    State(s): State<Arc<ApiState>>,
    Extension(c): Extension<Caller>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let r: MigrateRequest = body(&raw)?;
    // The source is read from the state: only the leader's is sure to hold every acknowledged
    // write (a lagging follower would answer "unknown guest" for a guest just created).
    if !s.is_leader() {
        return Err(ApiError::NotLeader { leader: s.leader_api() });
    }
    let source =
        s.sm.read(|st| st.guest(&r.guest).map(|g| g.owner.clone()))
            .ok_or_else(|| ApiError::Rejected(Rejection::UnknownGuest { guest: r.guest.clone() }))?;
    let kind = if r.offline { MigrationKind::Offline } else { MigrationKind::Online };
    let cmd = Command::RequestMigration { guest: r.guest, source, target: r.target, kind, reason: r.reason };
    propose(&s, &c, r.request_id.as_deref(), cmd).await
}

async fn abort_migration(
    State(s): State<Arc<ApiState>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let id = migration_id(&id)?;
    let r: AbortRequest = if raw.is_empty() { AbortRequest::default() } else { body(&raw)? };
    propose(&s, &c, r.request_id.as_deref(), Command::AbortMigration { id, reason: r.reason }).await
}

/// An agent reports its part of the current phase of a migration it takes part in. Held in
/// memory for the driver by every coordinator that receives it and whose applied state has the
/// migration at that phase; a follower then forwards it to the leader, whose answer (with its
/// term) the agent gets. Agents send each report to every coordinator they know, so the one that
/// wins the next election already holds it and moves the migration on at once.
async fn report_migration(
    State(s): State<Arc<ApiState>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<ReportAck>, ApiError> {
    let id = migration_id(&id)?;
    let r: MigrationReport = body(&raw)?;
    let (Role::Agent, Some(host)) = (c.role, c.host.as_ref()) else {
        return Err(ApiError::Forbidden("only an agent token bound to a host may report on a migration".into()));
    };
    let leader = s.is_leader();
    let m = s.sm.read(|st| st.migration(id).cloned());
    let m = match m {
        Some(m) => Some(m),
        None if leader => s.sm.history().migration(id)?,
        None => None,
    };
    if !leader {
        // Keep what this node can check against its own applied state (it may be the next
        // leader); the leader's answer decides.
        if let Some(m) = m.filter(|m| m.involves(host)) {
            if let Err(e) = s.reports.record(&m, host, &r) {
                tracing::debug!(migration = %id, %e, "report not kept on this follower");
            }
        }
        return Err(ApiError::NotLeader { leader: s.leader_api() });
    }
    let m = m.ok_or(ApiError::Rejected(Rejection::UnknownMigration { id }))?;
    if !m.involves(host) {
        return Err(ApiError::Forbidden(format!(
            "host {host} takes no part in migration {id} ({} to {})",
            m.source, m.target
        )));
    }
    s.reports.record(&m, host, &r)?;
    // In the terms events carry (see `RestoredFrom::term_base`), so agents can compare them.
    let term = s.raft.metrics().borrow().current_term + s.sm.read(|st| st.term_base());
    Ok(Json(ReportAck { migration: id, phase: m.phase, term }))
}

async fn show_migration(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    q: ReadQuery,
) -> Result<Json<Read<Migration>>, ApiError> {
    let id = migration_id(&id)?;
    read_barrier(&s, &query(q)?).await?;
    let revision = s.sm.applied_meta().revision;
    let m = s.sm.history().migration(id)?.ok_or(ApiError::Rejected(Rejection::UnknownMigration { id }))?;
    Ok(Json(Read { revision, items: m }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MigrationQuery {
    #[serde(default)]
    stale: bool,
    guest: Option<String>,
    host: Option<String>,
    /// A phase, or `in_flight` / `finished`.
    phase: Option<String>,
    /// Requested at or after (milliseconds since the Unix epoch).
    since: Option<u64>,
    /// Requested before (milliseconds since the Unix epoch).
    until: Option<u64>,
    /// Only ids greater than this (paging).
    after: Option<u64>,
    limit: Option<usize>,
}

const MIGRATION_PAGE_MAX: usize = 1000;

/// Migration history, oldest first, filtered and paged; retained across snapshots and log
/// purges (it lives in the event store, not in the Raft log).
async fn list_migrations(
    State(s): State<Arc<ApiState>>,
    q: Result<Query<MigrationQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Read<MigrationPage>>, ApiError> {
    let q = query(q)?;
    read_barrier(&s, &ReadParams { stale: q.stale }).await?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MIGRATION_PAGE_MAX {
        return Err(ApiError::BadRequest(format!("limit must be 1 to {MIGRATION_PAGE_MAX}")));
    }
    let phase: Option<Box<dyn Fn(Phase) -> bool + Send>> = match q.phase.as_deref() {
        None => None,
        Some("in_flight") => Some(Box::new(|p: Phase| !p.is_terminal())),
        Some("finished") => Some(Box::new(|p: Phase| p.is_terminal())),
        Some(x) => {
            let want = Phase::ALL.into_iter().find(|p| p.as_str() == x).ok_or_else(|| {
                ApiError::BadRequest(format!("unknown phase {x:?}; use a phase name, in_flight or finished"))
            })?;
            Some(Box::new(move |p: Phase| p == want))
        }
    };
    let guest = q.guest.as_deref().map(name).transpose()?;
    let host = q.host.as_deref().map(name).transpose()?;
    let keep = |m: &Migration| {
        let requested = m.history.first().map_or(0, |r| r.at.0);
        guest.as_ref().is_none_or(|g| m.guest == *g)
            && host.as_ref().is_none_or(|h| m.involves(h))
            && phase.as_ref().is_none_or(|f| f(m.phase))
            && q.since.is_none_or(|t| requested >= t)
            && q.until.is_none_or(|t| requested < t)
    };
    let history = s.sm.history();
    let revision = s.sm.applied_meta().revision;
    let after = q.after.unwrap_or(0);
    let mut migrations = Vec::new();
    let mut more = false;
    let mut take = |m: Migration| {
        if !keep(&m) {
            return true;
        }
        if migrations.len() == limit {
            more = true;
            return false;
        }
        migrations.push(m);
        true
    };
    // A guest or host filter reads its index; otherwise scan the records in id order.
    let ids = match (&guest, &host) {
        (Some(g), _) => Some(history.migrations_of_guest(g, usize::MAX)?),
        (None, Some(h)) => Some(history.migrations_of_host(h, usize::MAX)?),
        _ => None,
    };
    match ids {
        Some(ids) => {
            for id in ids.into_iter().filter(|id| id.0 > after) {
                if let Some(m) = history.migration(id)? {
                    if !take(m) {
                        break;
                    }
                }
            }
        }
        None => history.scan_migrations(after + 1, take)?,
    }
    let next_after = more.then(|| migrations.last().map(|m| m.id)).flatten();
    Ok(Json(Read { revision, items: MigrationPage { migrations, next_after } }))
}
