//! The receiving side of Raft RPC (see `network.rs` for the wire format and the identity check).
//!
//! Every request, a stream's opening request included, passes [`guard`] before its body is read: the connection's certificate must
//! name a coordinator (TLS), the cluster secret must match, and the request must be addressed
//! to this node. A stranger's 64 MiB body is refused from its headers, unread.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::header::UPGRADE;
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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::listener::Peer;
use crate::metrics::{stage, Metrics};
use crate::network::{frame, HistoryRequest, HISTORY_EVENTS_MAX, STREAM_PROTOCOL, TARGET_HEADER};
use crate::node::{HeardLeader, Node};

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
    /// Says when the server stops: streams, which outlive the HTTP server's graceful stop
    /// once upgraded, end then too.
    stop: watch::Receiver<bool>,
}

/// The Raft server of `node`; `tls` says whether its connections are TLS, `stop` when the
/// server stops.
pub fn router(node: &Node, tls: bool, stop: watch::Receiver<bool>) -> Router {
    let state = RaftState {
        id: node.id,
        secret: node.config.cluster_secret.expose().to_string(),
        tls,
        raft: node.raft.clone(),
        heard: node.heard.clone(),
        metrics: node.metrics.clone(),
        sm: node.sm.clone(),
        stop,
    };
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/stream", post(stream))
        .route("/raft/handover", post(handover))
        .route("/raft/history", post(history))
        .layer(DefaultBodyLimit::max(frame::BODY_MAX))
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
fn decoded<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    codec::decode(body).map_err(|e| format!("raft rpc: {e}"))
}

/// Decodes an admitted plain request's body; 400 when it does not decode.
fn admit<T: DeserializeOwned>(body: &[u8]) -> Result<T, (StatusCode, String)> {
    decoded(body).map_err(|e| (StatusCode::BAD_REQUEST, e))
}

/// Answers one Raft RPC of `kind` (a [`frame`] request kind) from its encoded body, with the
/// encoded `Result` Raft answered; `Err` when the body does not decode or the kind is unknown.
/// The plain requests and the streams both come here.
async fn rpc(s: &RaftState, kind: u8, body: &[u8]) -> Result<Vec<u8>, String> {
    match kind {
        frame::APPEND => {
            let req: AppendEntriesRequest<TypeConfig> = decoded(body)?;
            if let (true, Some(leader)) = (req.vote.is_committed(), req.vote.leader_id().voted_for()) {
                s.heard.note(req.vote.leader_id().get_term(), leader);
            }
            if let Some(f) = stopped(&s.raft) {
                return Ok(codec::encode(&Err::<AppendEntriesResponse<NodeId>, RaftError<NodeId>>(f)));
            }
            let carries_entries = !req.entries.is_empty();
            let started = Instant::now();
            let answer = s.raft.append_entries(req).await;
            if carries_entries && answer.is_ok() {
                s.metrics.stage(stage::FOLLOWER_APPEND, started.elapsed());
            }
            Ok(codec::encode(&answer))
        }
        frame::VOTE => {
            let req = decoded(body)?;
            Ok(match stopped(&s.raft) {
                Some(f) => codec::encode(&Err::<VoteResponse<NodeId>, RaftError<NodeId>>(f)),
                None => codec::encode(&s.raft.vote(req).await),
            })
        }
        frame::SNAPSHOT => {
            type Answer = Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;
            let req = decoded(body)?;
            Ok(match stopped(&s.raft) {
                Some(f) => codec::encode(&Answer::Err(f)),
                None => codec::encode(&s.raft.install_snapshot(req).await),
            })
        }
        other => Err(format!("raft rpc: unknown request kind {other}")),
    }
}

/// A plain request's answer: [`rpc`]'s, or 400 when it was not taken.
async fn plain(s: &RaftState, kind: u8, body: &[u8]) -> Response {
    match rpc(s, kind, body).await {
        Ok(answer) => answer.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn append(State(s): State<RaftState>, body: Bytes) -> Response {
    plain(&s, frame::APPEND, &body).await
}

async fn vote(State(s): State<RaftState>, body: Bytes) -> Response {
    plain(&s, frame::VOTE, &body).await
}

async fn snapshot(State(s): State<RaftState>, body: Bytes) -> Response {
    plain(&s, frame::SNAPSHOT, &body).await
}

/// `POST /raft/stream`: an admitted peer's request for a stream (see `network.rs`). Answered
/// with `101 Switching Protocols`; the stream is then served in its own task until the peer
/// closes it, it sits idle for [`frame::SERVER_IDLE`], a frame is refused, or the server stops.
async fn stream(State(s): State<RaftState>, mut req: Request) -> Response {
    let asks = req.headers().get(UPGRADE).and_then(|v| v.to_str().ok());
    if !asks.is_some_and(|p| p.eq_ignore_ascii_case(STREAM_PROTOCOL)) {
        let msg = format!("raft stream: ask for it with `Connection: upgrade` and `Upgrade: {STREAM_PROTOCOL}`");
        return (StatusCode::UPGRADE_REQUIRED, [(UPGRADE, STREAM_PROTOCOL)], msg).into_response();
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            // Read through a buffer, as the other end does (`network::StreamIo`).
            Ok(io) => serve_stream(s, tokio::io::BufReader::new(hyper_util::rt::TokioIo::new(io))).await,
            Err(e) => tracing::debug!(%e, "raft stream: the upgrade did not complete"),
        }
    });
    frame::accepted()
}

/// Serves one stream's frames, one request and then its answer at a time.
async fn serve_stream<IO: AsyncRead + AsyncWrite + Unpin>(s: RaftState, mut io: IO) {
    let mut stop = s.stop.clone();
    loop {
        let read = tokio::select! {
            read = tokio::time::timeout(frame::SERVER_IDLE, frame::read(&mut io, frame::BODY_MAX)) => read,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let (kind, body) = match read {
            Ok(Ok(Some(f))) => f,
            // Closed by the peer, or idle for too long.
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    let _ = frame::write(&mut io, frame::REFUSED, format!("raft stream: {e}").as_bytes()).await;
                }
                tracing::debug!(%e, "raft stream: ended");
                return;
            }
        };
        let written = match rpc(&s, kind, &body).await {
            Ok(answer) => frame::write(&mut io, frame::ANSWER, &answer).await,
            Err(e) => {
                let _ = frame::write(&mut io, frame::REFUSED, e.as_bytes()).await;
                return;
            }
        };
        if written.is_err() {
            return;
        }
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
