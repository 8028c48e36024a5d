//! Cluster and node: status, bootstrap and identity, membership, restore imports, snapshots,
//! the full state, and the unauthenticated health probes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use openraft::ChangeMembers;
use switchyard_protocol::api::*;
use switchyard_protocol::{ClusterId, Command, Rejection};
use switchyard_storage::{NodeId, NodeInfo};

use super::{body, body_or_default, read_simple, submit, submit_body, ApiError, Caller, FORWARDED_HEADER, Q, S};
use crate::api::Api;

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()), responses((status = 200, description = "The process answers", body = String)))]
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready to serve: a member of a cluster that has a leader, and not stopping.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()), responses((status = 200, description = "A member of a cluster with a leader", body = String), (status = 503, description = "No leader known, stopping, or Raft stopped on a storage error", body = String)))]
pub(super) async fn readyz(State(s): S) -> impl IntoResponse {
    let st = s.node.status();
    if s.node.is_stopping() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n".to_string())
    } else if let Some(fault) = s.node.fault() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not writable, serving stale reads: {fault}\n"))
    } else if st.leader.is_none() {
        (StatusCode::SERVICE_UNAVAILABLE, "no leader known\n".to_string())
    } else {
        (StatusCode::OK, format!("ready: {} of a cluster led by node {}\n", st.role, st.leader.unwrap_or(0)))
    }
}

/// This coordinator's metrics in the Prometheus text format (OpenMetrics): Raft, commits and
/// fsyncs, subscribers, hosts (on the leader), migrations, packages' switching, failovers.
/// Needs a token (any role but agent): it names every host and package.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "OpenMetrics text", body = String), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn metrics(State(s): S) -> impl IntoResponse {
    let text = s.node.metrics_text();
    ([(axum::http::header::CONTENT_TYPE, switchyard_protocol::api::METRICS_CONTENT_TYPE)], text)
}

#[utoipa::path(get, path = "/v1/node/status", tag = "cluster", responses((status = 200, body = NodeStatus), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn node_status(State(s): S) -> Json<NodeStatus> {
    Json(s.node.status())
}

/// Builds a snapshot on this node now (before maintenance, or to measure it) and answers once
/// it covers everything applied when asked.
#[utoipa::path(post, path = "/v1/node/snapshot", tag = "cluster", responses((status = 200, body = SnapshotBuilt), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn take_snapshot(State(s): S) -> Result<Json<SnapshotBuilt>, ApiError> {
    let raft = &s.node.raft;
    let started = std::time::Instant::now();
    let applied = raft.metrics().borrow().last_applied.map(|l| l.index);
    let covered = |m: &openraft::RaftMetrics<NodeId, NodeInfo>| m.snapshot.map(|l| l.index) >= applied;
    // openraft ignores a trigger while it builds a snapshot (one of its own may have started
    // just before, covering less): trigger again until one covers what was applied.
    loop {
        raft.trigger().snapshot().await.map_err(|e| ApiError::Unavailable(format!("raft stopped: {e}")))?;
        let built =
            raft.wait(Some(Duration::from_secs(1))).metrics(covered, "the snapshot to cover the applied log").await;
        match built {
            Ok(_) => break,
            Err(_) if started.elapsed() < Duration::from_secs(600) => {}
            Err(e) => return Err(ApiError::Unavailable(format!("the snapshot was not built: {e}"))),
        }
    }
    let m = raft.metrics().borrow().clone();
    Ok(Json(SnapshotBuilt {
        snapshot_index: m.snapshot.map(|l| l.index),
        revision: s.node.sm.applied_meta().revision,
        build_ms: started.elapsed().as_millis() as u64,
    }))
}

#[utoipa::path(get, path = "/v1/cluster/status", tag = "cluster", responses((status = 200, body = ClusterStatus), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn cluster_status(State(s): S, req: Request) -> Result<Json<ClusterStatus>, ApiError> {
    let auth = req.headers().get("authorization").cloned();
    let membership = s.node.raft.metrics().borrow().membership_config.clone();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let nodes: Vec<(NodeId, NodeInfo)> = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
    let mut statuses = BTreeMap::new();
    for (id, node) in &nodes {
        let st = if *id == s.node.id {
            Some(s.node.status())
        } else {
            let mut r = s.client.get(format!("{}://{}/v1/node/status", s.scheme, node.api_addr));
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

#[utoipa::path(post, path = "/v1/cluster/init", tag = "cluster", request_body(content = InitRequest, description = "Empty: this node alone"), responses((status = 200, body = InitResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn init(
    State(s): S,
    Extension(c): Extension<Caller>,
    headers: axum::http::HeaderMap,
    raw: Bytes,
) -> Result<Json<InitResponse>, ApiError> {
    let req: InitRequest = body_or_default(&raw)?;
    let config = &s.node.config;
    let members: BTreeMap<NodeId, NodeInfo> = if req.members.is_empty() {
        BTreeMap::from([(s.node.id, NodeInfo { raft_addr: config.raft_advertise(), api_addr: config.api_advertise() })])
    } else {
        req.members.iter().map(|m| (m.id, node_info(m))).collect()
    };
    let initialized = s.node.raft.initialize(members.clone()).await;
    let ids: Vec<u64> = members.keys().copied().collect();
    if req.for_restore {
        initialized?;
        return Ok(Json(InitResponse { initialized: ids, cluster: None, for_restore: true }));
    }
    // A cluster initialized by an init that died before committing the identity gets one now
    // (unless it is being restored); an identified one answers "already initialized" as before.
    let unidentified = s.node.sm.read(|st| st.identity().is_none() && st.importing().is_none());
    if let Err(e) = initialized {
        if unidentified {
            commit_identity_anywhere(&s, &c, headers.get("authorization")).await?;
        }
        return Err(e.into());
    }
    let identity = commit_identity_anywhere(&s, &c, headers.get("authorization")).await?;
    Ok(Json(InitResponse { initialized: ids, cluster: Some(identity), for_restore: false }))
}

/// Commits a fresh identity through whichever node leads, once the first election is over.
/// Answers the identity the cluster holds (an earlier init's, if it got there first).
async fn commit_identity_anywhere(s: &Api, c: &Caller, auth: Option<&HeaderValue>) -> Result<ClusterId, ApiError> {
    let req = IdentityRequest {
        request_id: Some(s.node.clock().request_id().to_string()),
        cluster: Some(new_cluster_id()),
        restored_from: None,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(s.node.config.api.join_timeout_ms);
    loop {
        let leader = s.node.raft.metrics().borrow().current_leader;
        let answer = match leader {
            Some(l) if l == s.node.id => identity(s, c, req.clone()).await.map(|Json(v)| v),
            Some(_) => match s.node.leader_api() {
                Some(addr) => {
                    let mut r = s
                        .client
                        .post(format!("{}://{addr}/v1/cluster/identity", s.scheme))
                        .header(FORWARDED_HEADER, s.node.id.to_string())
                        .json(&req);
                    if let Some(a) = auth {
                        r = r.header("authorization", a);
                    }
                    match r.send().await {
                        Ok(resp) if resp.status().is_success() => resp
                            .json::<IdentityResponse>()
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
            Ok(IdentityResponse { cluster: Some(id), .. }) => return Ok(id),
            Ok(v) => return Err(ApiError::Internal(format!("unexpected identity answer: {v:?}"))),
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
async fn identity(s: &Api, c: &Caller, req: IdentityRequest) -> Result<Json<IdentityResponse>, ApiError> {
    let restoring = req.restored_from.is_some();
    let cmd = Command::CreateCluster {
        cluster: req.cluster.unwrap_or_else(new_cluster_id),
        restored_from: req.restored_from,
    };
    match submit(s, c, req.request_id.as_deref(), cmd).await {
        Ok(Json(w)) => {
            let cluster = s.node.sm.read(|st| st.identity().map(|i| i.id.clone()));
            Ok(Json(IdentityResponse { cluster, revision: Some(w.first_revision), duplicate: w.duplicate }))
        }
        Err(ApiError::Rejected(Rejection::ClusterExists { cluster })) if !restoring => {
            Ok(Json(IdentityResponse { cluster: Some(cluster), revision: None, duplicate: true }))
        }
        Err(e) => Err(e),
    }
}

#[utoipa::path(post, path = "/v1/cluster/identity", tag = "cluster", request_body = IdentityRequest, responses((status = 200, body = IdentityResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn commit_identity(
    State(s): S,
    Extension(c): Extension<Caller>,
    raw: Bytes,
) -> Result<Json<IdentityResponse>, ApiError> {
    identity(&s, &c, body_or_default(&raw)?).await
}

#[utoipa::path(get, path = "/v1/cluster/identity", tag = "cluster", params(ReadParams), responses((status = 200, body = Read<IdentityView>), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn show_identity(State(s): S, q: Q<ReadParams>) -> Result<Json<Read<IdentityView>>, ApiError> {
    read_simple(&s, q, |st| Ok(IdentityView { identity: st.identity().cloned(), importing: st.importing().cloned() }))
        .await
}

/// The next chunk of a restore. The state machine checks it whole (see `apply::import`).
#[utoipa::path(post, path = "/v1/cluster/import", tag = "cluster", request_body = ImportRequest, responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn import_events(
    State(s): S,
    Extension(c): Extension<Caller>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    submit_body(&s, &c, &raw, |r: ImportRequest| r).await
}

/// Changes the membership, waiting out the second half of an earlier change: openraft moves
/// through a joint configuration and refuses a new change until the final one commits, which
/// is a matter of one commit, not a conflict to report to the operator.
async fn change_membership(s: &Api, change: ChangeMembers<NodeId, NodeInfo>) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match s.node.raft.change_membership(change.clone(), false).await {
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

#[utoipa::path(post, path = "/v1/cluster/nodes", tag = "cluster", request_body = MemberSpec, responses((status = 200, body = NodeAdded), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn add_node(State(s): S, raw: Bytes) -> Result<Json<NodeAdded>, ApiError> {
    let m: MemberSpec = body(&raw)?;
    if m.id == 0 {
        return Err(ApiError::BadRequest("node id must be at least 1".into()));
    }
    let raft = &s.node.raft;
    // Learner first: it catches up without counting towards the quorum. Only a learner that has
    // caught up is promoted: promoting an unreachable node could cost the cluster its quorum.
    raft.add_learner(m.id, node_info(&m), false).await?;
    let wait = Duration::from_millis(s.node.config.api.join_timeout_ms);
    let mut metrics = raft.metrics();
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
    Ok(Json(NodeAdded { added: m.id }))
}

#[utoipa::path(delete, path = "/v1/cluster/nodes/{id}", tag = "cluster", params(("id" = u64, Path, description = "The node id")), responses((status = 200, body = NodeRemoved), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn remove_node(State(s): S, Path(id): Path<String>) -> Result<Json<NodeRemoved>, ApiError> {
    let id: NodeId = id.parse().map_err(|_| ApiError::BadRequest(format!("node id {id:?} is not a number")))?;
    let membership = s.node.raft.metrics().borrow().membership_config.clone();
    if !membership.nodes().any(|(n, _)| *n == id) {
        return Err(ApiError::NotFound(format!("node {id} is not a member")));
    }
    let change = if membership.voter_ids().any(|v| v == id) {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    change_membership(&s, change).await?;
    Ok(Json(NodeRemoved { removed: id }))
}

#[utoipa::path(get, path = "/v1/state", tag = "cluster", params(ReadParams), responses((status = 200, body = Read<FullState>), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn full_state(State(s): S, q: Q<ReadParams>) -> Result<Json<Read<FullState>>, ApiError> {
    read_simple(&s, q, |st| Ok(FullState::of(st))).await
}
