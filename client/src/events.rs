//! Event subscriptions (`GET /v1/events`): catch up from the history, then follow live commits,
//! resuming on the next coordinator from the last revision seen when a stream breaks, so the
//! items delivered stay gap-free and duplicate-free across the loss of a coordinator.

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use switchyard_protocol::api::{EventParams, StreamItem};
use switchyard_protocol::Revision;

use crate::{error_answer, Client, ClientError};

/// What to subscribe to (see `GET /v1/events`).
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub from: Revision,
    pub guest: Option<String>,
    pub host: Option<String>,
    /// Comma-separated kinds.
    pub kind: Option<String>,
    pub follow: bool,
    /// The cluster id the subscriber follows (answered `cluster_mismatch` by another cluster).
    pub cluster: Option<String>,
}

/// How long a followed subscription keeps trying when no endpoint answers.
const RECONNECT_GIVE_UP: Duration = Duration::from_secs(60);

/// The most items [`Client::event_batches`] hands over at once.
pub const MAX_BATCH: usize = 4096;

impl Client {
    /// Subscribes to events, calling `on_item` for every item until it returns `false`, or (not
    /// following) until the stream ends. When following, a broken stream is resumed on the next
    /// endpoint from the last revision seen, so the items delivered stay gap-free and
    /// duplicate-free across a coordinator loss. A coordinator that answers `unavailable` (it is
    /// stopping, or it lacks history it is still fetching after a snapshot install) is left for
    /// the next endpoint the same way. A `Compacted` answer is delivered and ends the
    /// subscription: the caller must re-read full state.
    pub async fn events(
        &self,
        q: &EventQuery,
        mut on_item: impl FnMut(&StreamItem) -> bool,
    ) -> Result<(), ClientError> {
        self.event_batches(q, |batch| batch.iter().all(&mut on_item)).await
    }

    /// [`Client::events`], delivering the items in batches: each batch is what had arrived when
    /// the previous one was handed over (at most [`MAX_BATCH`] items, never empty). A subscriber
    /// that is far behind gets large batches and one that keeps up gets single items, so it can
    /// amortise its per-batch work (an agent writes each guest file once per batch, not once per
    /// event) without delaying anything. Delivery stops when `on_batch` returns `false`.
    pub async fn event_batches(
        &self,
        q: &EventQuery,
        mut on_batch: impl FnMut(&[StreamItem]) -> bool,
    ) -> Result<(), ClientError> {
        if let Some(why) = &self.unusable {
            return Err(ClientError::Invalid(why.clone()));
        }
        let mut next = q.from.max(1);
        let mut attempt = 0usize;
        let mut down_since: Option<Instant> = None;
        loop {
            let ep = &self.endpoints[attempt % self.endpoints.len().max(1)];
            attempt += 1;
            let params = EventParams {
                from: Some(next),
                guest: q.guest.clone(),
                host: q.host.clone(),
                kind: q.kind.clone(),
                follow: q.follow,
                format: None,
                progress_ms: Some(1000),
                cluster: q.cluster.clone(),
            };
            let request = self.authorized(self.streaming.get(self.url(ep, "/v1/events")).query(&params));
            // A coordinator that does not answer, or answers `unavailable` (it is stopping, or
            // still fetching history it lacks), is left for the next one: while following, for
            // up to RECONNECT_GIVE_UP; otherwise once around the endpoints.
            let failed = match request.send().await {
                Ok(r) if r.status().is_success() => Ok(r),
                Ok(r) => {
                    let status = r.status().as_u16();
                    let bytes = r.bytes().await.unwrap_or_default();
                    Err(error_answer(ep, status, &bytes))
                }
                Err(e) => Err(ClientError::Unreachable(format!("{ep}: {}", crate::chain(&e)))),
            };
            let resp = match failed {
                Ok(r) => r,
                Err(e) if e.is_transient() => {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > RECONNECT_GIVE_UP || (!q.follow && attempt >= self.endpoints.len()) {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            down_since = None;
            let mut resp = resp;
            let mut buf: Vec<u8> = Vec::new();
            let mut batch: Vec<StreamItem> = Vec::new();
            loop {
                // Wait for a chunk only when nothing is pending; otherwise take what has already
                // arrived (`now_or_never` drops a read that is not ready, which loses nothing).
                let chunk = if batch.is_empty() {
                    Some(resp.chunk().await)
                } else if batch.len() < MAX_BATCH {
                    resp.chunk().now_or_never()
                } else {
                    None
                };
                let ended = match chunk {
                    None => {
                        if !on_batch(&batch) {
                            return Ok(());
                        }
                        batch.clear();
                        continue;
                    }
                    Some(Ok(Some(c))) => {
                        buf.extend_from_slice(&c);
                        None
                    }
                    Some(Ok(None)) => Some(!q.follow),
                    Some(Err(_)) => Some(false),
                };
                let mut start = 0;
                while let Some(parsed) = next_item(&buf, start) {
                    let (item, after) =
                        parsed.map_err(|e| ClientError::Protocol { endpoint: ep.clone(), reason: e.to_string() })?;
                    start = after;
                    match &item {
                        StreamItem::Event(e) => next = e.revision + 1,
                        StreamItem::Progress { revision } => next = next.max(revision + 1),
                        StreamItem::Compacted { .. } => {
                            batch.push(item);
                            on_batch(&batch);
                            return Ok(());
                        }
                    }
                    batch.push(item);
                }
                buf.drain(..start);
                if let Some(done) = ended {
                    if !batch.is_empty() && !on_batch(&batch) {
                        return Ok(());
                    }
                    if done {
                        return Ok(());
                    }
                    break; // stream broken: resume elsewhere
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The next complete line of an event stream in `buf` from `start`: its item and where the
/// next line starts, or why the line is not an item; `None` until a whole line has arrived.
pub fn next_item(buf: &[u8], start: usize) -> Option<Result<(StreamItem, usize), serde_json::Error>> {
    let pos = buf.get(start..)?.iter().position(|b| *b == b'\n')?;
    Some(serde_json::from_slice(&buf[start..start + pos]).map(|item| (item, start + pos + 1)))
}
