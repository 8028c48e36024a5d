//! The receiving side of Raft RPC (see `network.rs` for the wire format and the identity check).
//!
//! Every request passes [`guard`] before its body is read: the connection's certificate must
//! name a coordinator (TLS), the cluster secret must match, and the request must be addressed
//! to this node. A stranger's 64 MiB body is refused from its headers, unread.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotResponse, VoteResponse};
use openraft::Raft;
use serde::de::DeserializeOwned;
use switchyard_protocol::codec;
use switchyard_storage::{NodeId, StateMachineStore, TypeConfig};
use switchyard_tls::Identity;

use crate::listener::Peer;
use crate::metrics::{stage, Metrics};
use crate::network::{HistoryRequest, HISTORY_EVENTS_MAX, TARGET_HEADER};
use crate::node::HeardLeader;

/// Largest Raft RPC body: a batch of entries or one snapshot chunk.
const RAFT_BODY_BYTES_MAX: usize = 64 << 20;

#[derive(Clone)]
struct RaftState {
    id: NodeId,
    secret: String,
    /// Whether connections are TLS, whose client certificates must name a coordinator.
    tls: bool,
    raft: Raft<TypeConfig>,
    /// Where the leader's appends are noted (the node's [`HeardLeader`]).
    heard: Arc<HeardLeader>,
    /// Where appends that carry entries are timed.
    metrics: Arc<Metrics>,
    /// The history a peer's backfill reads (`/raft/history`).
    sm: StateMachineStore,
}

pub fn router(
    id: NodeId,
    secret: String,
    raft: Raft<TypeConfig>,
    tls: bool,
    heard: Arc<HeardLeader>,
    metrics: Arc<Metrics>,
    sm: StateMachineStore,
) -> Router {
    let state = RaftState { id, secret, tls, raft, heard, metrics, sm };
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/handover", post(handover))
        .route("/raft/history", post(history))
        .layer(DefaultBodyLimit::max(RAFT_BODY_BYTES_MAX))
        .layer(from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Admits a request from its connection and headers alone, before anything reads its body.
async fn guard(State(s): State<RaftState>, req: Request, next: Next) -> Response {
    if s.tls {
        let identity = req.extensions().get::<ConnectInfo<Peer>>().and_then(|c| c.0.identity.clone());
        if !matches!(identity, Some(Identity::Node(_))) {
            let who = identity.map_or("no Switchyard identity".to_string(), |i| i.to_string());
            let msg = format!("raft rpc: only coordinators' certificates are accepted here; this one names {who}");
            return (StatusCode::FORBIDDEN, msg).into_response();
        }
    }
    let headers = req.headers();
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let given = auth.strip_prefix("Bearer ").unwrap_or("").as_bytes();
    if !switchyard_protocol::secret::secret_eq(given, s.secret.as_bytes()) {
        return (StatusCode::UNAUTHORIZED, "raft rpc: wrong or missing cluster secret").into_response();
    }
    let target = headers.get(TARGET_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if target != Some(s.id) {
        let msg = format!("raft rpc addressed to node {target:?}, but this is node {}", s.id);
        return (StatusCode::MISDIRECTED_REQUEST, msg).into_response();
    }
    next.run(req).await
}

/// Decodes an admitted request's body.
fn admit<T: DeserializeOwned>(body: &[u8]) -> Result<T, (StatusCode, String)> {
    codec::decode(body).map_err(|e| (StatusCode::BAD_REQUEST, format!("raft rpc: {e}")))
}

async fn append(State(s): State<RaftState>, body: Bytes) -> Response {
    match admit::<AppendEntriesRequest<TypeConfig>>(&body) {
        Ok(req) => {
            if let (true, Some(leader)) = (req.vote.is_committed(), req.vote.leader_id().voted_for()) {
                s.heard.note(req.vote.leader_id().get_term(), leader);
            }
            if let Some(f) = stopped(&s.raft) {
                return codec::encode(&Err::<AppendEntriesResponse<NodeId>, RaftError<NodeId>>(f)).into_response();
            }
            let carries_entries = !req.entries.is_empty();
            let started = Instant::now();
            let answer = s.raft.append_entries(req).await;
            if carries_entries && answer.is_ok() {
                s.metrics.stage(stage::FOLLOWER_APPEND, started.elapsed());
            }
            codec::encode(&answer).into_response()
        }
        Err(r) => r.into_response(),
    }
}

async fn vote(State(s): State<RaftState>, body: Bytes) -> Response {
    match admit(&body) {
        Ok(req) => match stopped(&s.raft) {
            Some(f) => codec::encode(&Err::<VoteResponse<NodeId>, RaftError<NodeId>>(f)).into_response(),
            None => codec::encode(&s.raft.vote(req).await).into_response(),
        },
        Err(r) => r.into_response(),
    }
}

async fn snapshot(State(s): State<RaftState>, body: Bytes) -> Response {
    type Answer = Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;
    match admit(&body) {
        Ok(req) => match stopped(&s.raft) {
            Some(f) => codec::encode(&Answer::Err(f)).into_response(),
            None => codec::encode(&s.raft.install_snapshot(req).await).into_response(),
        },
        Err(r) => r.into_response(),
    }
}

/// Raft's fatal error once its core stopped (a storage failure, or a stop): answered as is,
/// without calling into Raft, which would log an error for every heartbeat the leader keeps
/// sending to a node whose disk is full.
fn stopped<E>(raft: &Raft<TypeConfig>) -> Option<RaftError<NodeId, E>> {
    raft.metrics().borrow().running_state.clone().err().map(RaftError::Fatal)
}

/// A stopping leader hands its leadership over (see `handover.rs`).
async fn handover(State(s): State<RaftState>, body: Bytes) -> Response {
    match admit::<crate::network::Handover>(&body) {
        Ok(h) => match crate::handover::take(&s.raft, h).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
        },
        Err(r) => r.into_response(),
    }
}

/// Most bytes of events in one `/raft/history` answer.
const HISTORY_BYTES_MAX: usize = 8 << 20;

/// Events of this node's history for a peer that fills its own (see `backfill.rs`): the ones
/// it holds right before `before`, at most `max` and [`HISTORY_BYTES_MAX`], never past what it
/// has applied; the answer is contiguous and ends at `before - 1` unless this node lacks that
/// revision (then it ends earlier, or is empty, and the peer asks elsewhere).
async fn history(State(s): State<RaftState>, body: Bytes) -> Response {
    let req = match admit::<HistoryRequest>(&body) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let end = req.before.saturating_sub(1).min(s.sm.applied_meta().revision);
    let max = u64::from(req.max.clamp(1, HISTORY_EVENTS_MAX));
    if end == 0 {
        return codec::encode(&Vec::<switchyard_protocol::Event>::new()).into_response();
    }
    let start = end.saturating_sub(max - 1).max(1);
    let history = s.sm.history();
    // Read, trimmed and encoded off the async workers: up to 8 MiB of events.
    let read = tokio::task::spawn_blocking(move || {
        let events = history.events_from(start, (end + 1 - start) as usize)?;
        // The newest ones within the byte bound (events are up to tens of KiB each), each
        // encoded once: the answer is made of the same encodings.
        let mut bytes = 0;
        let mut newest: Vec<Vec<u8>> = events
            .iter()
            .rev()
            .filter(|e| e.revision <= end)
            .map(codec::encode)
            .take_while(|e| {
                bytes += e.len();
                bytes <= HISTORY_BYTES_MAX || bytes == e.len()
            })
            .collect();
        newest.reverse();
        Ok::<_, switchyard_storage::StoreError>(codec::encode_seq_of_encoded(&newest))
    })
    .await;
    match read {
        Ok(Ok(answer)) => answer.into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("read history: {e}")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("read history: {e}")).into_response(),
    }
}
