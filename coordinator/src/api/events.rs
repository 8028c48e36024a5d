//! `GET /v1/events`: checks a subscription's parameters and the cluster it names, answers
//! `compacted` for a start older than the retained history (`unavailable` while this node is
//! still fetching retained history it lacks), and answers a body pulled from
//! `feed.rs`, which ends when the subscriber leaves, the node stops or its storage fails.

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use switchyard_protocol::api::{ErrorBody, EventParams, StreamItem};
use switchyard_protocol::Name;

use super::{query, Api, ApiError, Caller, Q, S};
use crate::feed::{Feed, Subscription};
use crate::stream::{frame, parse_kind, Filter, Format};

#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventParams), responses((status = 200, description = "A stream of items: JSON lines (`application/x-ndjson`), or with `format=binary` big-endian u32-length-prefixed bincode frames", body = StreamItem, content_type = "application/x-ndjson"), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn subscribe(
    State(s): S,
    Extension(c): Extension<Caller>,
    q: Q<EventParams>,
) -> Result<Response, ApiError> {
    let p = query(q)?;
    let name = |s: Option<String>| {
        s.map(|s| Name::new(&s).map_err(|e| ApiError::BadRequest(format!("invalid name {s:?}: {e}")))).transpose()
    };
    let kinds = p.kind.map(|k| k.split(',').map(parse_kind).collect::<Result<Vec<_>, _>>()).transpose();
    let filter = Filter { guest: name(p.guest)?, host: name(p.host)?, kinds: kinds.map_err(ApiError::BadRequest)? };
    let (format, ctype) = match p.format.as_deref() {
        None | Some("jsonl") => (Format::JsonLines, "application/x-ndjson"),
        Some("binary") => (Format::Binary, "application/octet-stream"),
        Some(f) => return Err(ApiError::BadRequest(format!("unknown format {f:?}; use jsonl or binary"))),
    };
    let progress = std::time::Duration::from_millis(p.progress_ms.unwrap_or(5000));
    if !(100..=60_000).contains(&progress.as_millis()) {
        return Err(ApiError::BadRequest("progress_ms must be within 100..=60000".into()));
    }
    let node = s.node.clone();
    if node.is_stopping() {
        return Err(ApiError::Unavailable("this coordinator is stopping; subscribe to another".into()));
    }
    if let Some(want) = &p.cluster {
        let (have, importing) =
            node.sm.read(|st| (st.identity().map(|i| i.id.0.clone()), st.importing().map(|i| i.through_revision)));
        match (have, importing) {
            (_, Some(through)) => {
                return Err(ApiError::Unavailable(format!(
                    "this cluster is being restored (imported through revision {through}); subscribe again once the restore completes"
                )))
            }
            (Some(have), None) if have == *want => {}
            (Some(have), None) => {
                return Err(ApiError::ClusterMismatch(format!(
                    "this is cluster {have}, not cluster {want}: re-read the full state (GET /v1/state) and subscribe from its revision"
                )))
            }
            (None, None) => {
                return Err(ApiError::Unavailable(format!(
                    "this coordinator has not applied the identity of cluster {want} (yet); retry"
                )))
            }
        }
    }
    let from = p.from.unwrap_or(1).max(1);
    // After a snapshot install the history may be empty up to the applied revision: its start is
    // then the next revision, not 1, while the older part is fetched from peers (`backfill`).
    // Revisions the retention window still keeps are not compacted, only missing here: another
    // coordinator serves them, so the subscriber is sent there rather than told to re-read the
    // full state (unless no peer holds them either).
    let first_retained = node.sm.history_first()?;
    if from < first_retained && from >= node.sm.history_floor() && !node.history_held_nowhere_before(first_retained) {
        return Err(ApiError::Unavailable(format!(
            "this coordinator is filling its event history from its peers after a snapshot install \
             (it holds revisions from {first_retained}); subscribe through another coordinator, or retry"
        )));
    }
    if from < first_retained {
        let snapshot_revision = node.sm.applied_meta().revision;
        let item = StreamItem::Compacted { first_retained, snapshot_revision };
        return Ok(([("content-type", ctype)], frame(format, &item)).into_response());
    }
    let slot = StreamSlot::take(&s, &c)?;
    let sub = Subscription { filter, from, follow: p.follow, progress, format };
    // The connection's task pulls the frames as it can write them: no task or queue of its own.
    let body = futures_util::stream::unfold((Feed::new(node, sub), slot), |(mut feed, slot)| async move {
        feed.next_frame().await.map(|b| (Ok::<_, std::convert::Infallible>(b), (feed, slot)))
    });
    Ok(([("content-type", ctype)], Body::from_stream(body)).into_response())
}

/// One of a token's open subscriptions on this node, counted while it lives.
struct StreamSlot {
    streams: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<[u8; 32], usize>>>,
    token: [u8; 32],
}

impl StreamSlot {
    /// Counts a new subscription of `c`'s token, or refuses it past the limit.
    fn take(s: &Api, c: &Caller) -> Result<StreamSlot, ApiError> {
        let max = s.node.config.api.streams_per_token_max;
        let mut open = s.streams.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(c.token).or_insert(0);
        if *n >= max {
            return Err(ApiError::TooManyStreams(format!(
                "{} already holds {max} event subscriptions on this coordinator (api.streams_per_token_max); \
                 close one, or subscribe through another coordinator",
                c.actor
            )));
        }
        *n += 1;
        Ok(StreamSlot { streams: s.streams.clone(), token: c.token })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.token) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.token);
            }
        }
    }
}
