//! Feeding one event subscription (`GET /v1/events`): catch up from the retained history, then
//! follow live applies, filtered, with periodic progress marks, until the subscriber goes away.
//!
//! Why it is gap-free and duplicate-free: a stream reads the node's own history, which is
//! gap-free by construction, strictly forward from a cursor, and only up to what the state
//! machine has applied. Across a leader change the subscriber reconnects to any coordinator and
//! resumes from its last revision + 1; every coordinator's history is a prefix of the same one.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use switchyard_protocol::api::StreamItem;
use switchyard_protocol::Revision;
use tokio::sync::mpsc;

use crate::node::Node;
use crate::stream::{frame, Filter, Format};

/// Events read from the history per step.
const PAGE_EVENTS: usize = 512;

/// Feeds one subscriber until it goes away (or, without `follow`, until it is caught up).
pub async fn feed(
    s: Arc<Node>,
    filter: Filter,
    mut next: Revision,
    follow: bool,
    progress: Duration,
    format: Format,
    tx: mpsc::Sender<Bytes>,
) {
    let stall = Duration::from_millis(s.config.api.stream_stall_timeout_ms);
    let history = s.sm.history();
    let _counted = crate::metrics::Subscribed::new(&s.metrics.subscribers);
    let mut applied_rx = s.sm.watch_revision();
    let mut tick = tokio::time::interval(progress);
    tick.tick().await;
    loop {
        let applied = *applied_rx.borrow_and_update();
        while next <= applied {
            let page = match s.frames.get(&history, next, applied, PAGE_EVENTS) {
                Ok(p) if !p.is_empty() => p,
                Ok(_) => {
                    tracing::error!(next, applied, "event history has no event where one was applied");
                    return;
                }
                Err(e) => {
                    tracing::error!(%e, "read event history for a subscriber");
                    return;
                }
            };
            for (e, jsonl) in page {
                if e.revision != next {
                    tracing::error!(expected = next, found = e.revision, "hole in the event history");
                    return;
                }
                next += 1;
                if !filter.matches(&e) {
                    continue;
                }
                let f = match format {
                    Format::JsonLines => jsonl,
                    Format::Binary => frame(format, &StreamItem::Event(Box::new((*e).clone()))),
                };
                match tx.send_timeout(f, stall).await {
                    Ok(()) => {
                        s.metrics.events_streamed.inc();
                    }
                    Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                        tracing::info!(
                            revision = e.revision,
                            "a subscriber took nothing for {stall:?}: its stream ends (it resumes from its cursor)"
                        );
                        return;
                    }
                    Err(mpsc::error::SendTimeoutError::Closed(_)) => return,
                }
            }
        }
        if !follow {
            let _ = tx.send(frame(format, &StreamItem::Progress { revision: next - 1 })).await;
            return;
        }
        tokio::select! {
            changed = applied_rx.changed() => if changed.is_err() { return },
            _ = tick.tick() => {
                if tx.send(frame(format, &StreamItem::Progress { revision: next - 1 })).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}
