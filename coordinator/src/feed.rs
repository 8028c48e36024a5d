//! Feeding one event subscription (`GET /v1/events`): catch up from the retained history, then
//! follow live applies, filtered, with periodic progress marks, until the subscriber goes away.
//!
//! Why it is gap-free and duplicate-free: a stream reads the node's own history, which is
//! gap-free by construction, strictly forward from a cursor, and only up to what the state
//! machine has applied. Across a leader change the subscriber reconnects to any coordinator and
//! resumes from its last revision + 1; every coordinator's history is a prefix of the same one.
//!
//! Why it is pulled, not pushed: the HTTP server asks the feed for the next frame only when the
//! connection can take it, so a subscription is one task (the connection's) and no queue. A new
//! event wakes each following connection once, which reads the shared frame and writes it; a
//! reader that takes nothing holds back only its own connection, whose writes stall and end it
//! (`listener.rs`, `api.stream_stall_timeout_ms`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use switchyard_protocol::api::StreamItem;
use switchyard_protocol::{Event, Revision};

use crate::metrics::Subscribed;
use crate::node::Node;
use crate::stream::{frame, Filter, Format};

/// Events read from the history per step.
const PAGE_EVENTS: usize = 512;

/// What one subscription asks for.
pub struct Subscription {
    pub filter: Filter,
    /// The first revision to deliver.
    pub from: Revision,
    /// Keep following live applies once caught up (otherwise end there with a progress mark).
    pub follow: bool,
    /// How often a following subscriber with nothing to receive gets a progress mark.
    pub progress: Duration,
    pub format: Format,
}

/// One subscriber's stream: [`Feed::next_frame`] answers its frames in order.
pub struct Feed {
    node: Arc<Node>,
    history: switchyard_storage::History,
    sub: Subscription,
    /// The next revision to look at.
    next: Revision,
    /// Events read and not yet looked at, in revision order.
    page: std::vec::IntoIter<(Arc<Event>, Bytes)>,
    applied: tokio::sync::watch::Receiver<Revision>,
    tick: tokio::time::Interval,
    /// Completes when the node stops or its storage fails: the stream then ends, and the
    /// subscriber resumes on another coordinator from the last revision it got.
    ended: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
    _counted: Subscribed,
}

impl Feed {
    pub fn new(node: Arc<Node>, sub: Subscription) -> Feed {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + sub.progress, sub.progress);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = {
            let node = node.clone();
            Box::pin(async move {
                tokio::select! {
                    _ = node.stopped() => {}
                    _ = node.faulted() => {}
                }
            })
        };
        Feed {
            history: node.sm.history(),
            applied: node.sm.watch_revision(),
            _counted: Subscribed::new(&node.metrics.subscribers),
            next: sub.from,
            page: Vec::new().into_iter(),
            tick,
            ended,
            done: false,
            node,
            sub,
        }
    }

    /// The next frame for the subscriber, waiting for one while following; `None` once the
    /// stream is over (caught up without `follow`, the node stopping, a storage fault).
    pub async fn next_frame(&mut self) -> Option<Bytes> {
        while !self.done {
            for (e, jsonl) in self.page.by_ref() {
                if e.revision != self.next {
                    tracing::error!(expected = self.next, found = e.revision, "hole in the event history");
                    self.done = true;
                    return None;
                }
                self.next += 1;
                if !self.sub.filter.matches(&e) {
                    continue;
                }
                self.node.metrics.events_streamed.inc();
                return Some(match self.sub.format {
                    Format::JsonLines => jsonl,
                    Format::Binary => frame(self.sub.format, &StreamItem::Event(Box::new((*e).clone()))),
                });
            }
            let applied = *self.applied.borrow_and_update();
            if self.next <= applied {
                if self.node.is_stopping() {
                    break;
                }
                // A long catch-up through events the filter drops yields nothing to the server:
                // let the thread's other tasks run between pages.
                tokio::task::consume_budget().await;
                match self.node.frames.get(&self.history, self.next, applied, PAGE_EVENTS) {
                    Ok(p) if !p.is_empty() => self.page = p.into_iter(),
                    Ok(_) => {
                        tracing::error!(next = self.next, applied, "event history has no event where one was applied");
                        break;
                    }
                    Err(e) => {
                        tracing::error!(%e, "read event history for a subscriber");
                        break;
                    }
                }
                continue;
            }
            if !self.sub.follow {
                self.done = true;
                return Some(self.progress());
            }
            tokio::select! {
                changed = self.applied.changed() => if changed.is_err() { break },
                _ = self.tick.tick() => return Some(self.progress()),
                _ = &mut self.ended => break,
            }
        }
        self.done = true;
        None
    }

    fn progress(&self) -> Bytes {
        frame(self.sub.format, &StreamItem::Progress { revision: self.next - 1 })
    }
}
