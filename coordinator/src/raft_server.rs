//! The receiving side of Raft RPC (see `network.rs` for the wire format and the identity check).

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use openraft::Raft;
use serde::de::DeserializeOwned;
use switchyard_protocol::codec;
use switchyard_storage::{NodeId, TypeConfig};

use crate::network::TARGET_HEADER;

/// Largest Raft RPC body: a batch of entries or one snapshot chunk.
const RAFT_BODY_BYTES_MAX: usize = 64 << 20;

#[derive(Clone)]
struct RaftState {
    id: NodeId,
    secret: String,
    raft: Raft<TypeConfig>,
}

pub fn router(id: NodeId, secret: String, raft: Raft<TypeConfig>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/handover", post(handover))
        .layer(DefaultBodyLimit::max(RAFT_BODY_BYTES_MAX))
        .with_state(RaftState { id, secret, raft })
}

/// Checks the secret and that the request is addressed to this node; decodes the body.
fn admit<T: DeserializeOwned>(s: &RaftState, headers: &HeaderMap, body: &[u8]) -> Result<T, (StatusCode, String)> {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if auth.strip_prefix("Bearer ") != Some(s.secret.as_str()) {
        return Err((StatusCode::UNAUTHORIZED, "raft rpc: wrong or missing cluster secret".into()));
    }
    let target = headers.get(TARGET_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if target != Some(s.id) {
        let msg = format!("raft rpc addressed to node {target:?}, but this is node {}", s.id);
        return Err((StatusCode::MISDIRECTED_REQUEST, msg));
    }
    codec::decode(body).map_err(|e| (StatusCode::BAD_REQUEST, format!("raft rpc: {e}")))
}

async fn append(State(s): State<RaftState>, headers: HeaderMap, body: Bytes) -> Response {
    match admit(&s, &headers, &body) {
        Ok(req) => codec::encode(&s.raft.append_entries(req).await).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn vote(State(s): State<RaftState>, headers: HeaderMap, body: Bytes) -> Response {
    match admit(&s, &headers, &body) {
        Ok(req) => codec::encode(&s.raft.vote(req).await).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn snapshot(State(s): State<RaftState>, headers: HeaderMap, body: Bytes) -> Response {
    match admit(&s, &headers, &body) {
        Ok(req) => codec::encode(&s.raft.install_snapshot(req).await).into_response(),
        Err(r) => r.into_response(),
    }
}

/// A stopping leader hands its leadership over (see `handover.rs`).
async fn handover(State(s): State<RaftState>, headers: HeaderMap, body: Bytes) -> Response {
    match admit::<crate::network::Handover>(&s, &headers, &body) {
        Ok(h) => match crate::handover::take(&s.raft, h).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
        },
        Err(r) => r.into_response(),
    }
}
