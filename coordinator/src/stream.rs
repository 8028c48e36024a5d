//! What event subscriptions are made of: the recent events' shared frames, the filter, the
//! framing. The loop that feeds one subscriber is in `feed.rs`; the HTTP side in
//! `api/events.rs`.

use std::sync::Arc;

use axum::body::Bytes;
use switchyard_protocol::api::StreamItem;
use switchyard_protocol::{codec, Event, EventKind, Name, Revision};

/// Recent events kept with their encoded frames for every subscriber to share.
const RECENT_FRAMES: u64 = 4096;

/// The most recent events with their JSON-lines frames, shared by every subscriber of this node.
///
/// Why: with a thousand agents following, each new event would otherwise be read from the
/// history and encoded a thousand times. Here the first subscriber to need it reads and encodes
/// it; the others clone a reference-counted frame. Only events within [`RECENT_FRAMES`] of the
/// applied revision are kept, so a subscriber catching up on old history reads the store and
/// leaves the cache to the live ones.
#[derive(Default)]
pub struct RecentFrames {
    inner: std::sync::Mutex<std::collections::VecDeque<(Arc<Event>, Bytes)>>,
}

impl RecentFrames {
    /// Up to `limit` events from revision `from`, none past `applied`, with their frames.
    pub fn get(
        &self,
        history: &switchyard_storage::History,
        from: Revision,
        applied: Revision,
        limit: usize,
    ) -> Result<Vec<(Arc<Event>, Bytes)>, switchyard_storage::StoreError> {
        {
            let q = self.inner.lock().expect("frames lock");
            if let (Some((first, _)), Some((last, _))) = (q.front(), q.back()) {
                if (first.revision..=last.revision).contains(&from) {
                    let skip = (from - first.revision) as usize;
                    return Ok(q
                        .iter()
                        .skip(skip)
                        .take(limit)
                        .filter(|(e, _)| e.revision <= applied)
                        .cloned()
                        .collect());
                }
            }
        }
        let page: Vec<(Arc<Event>, Bytes)> = history
            .events_from(from, limit)?
            .into_iter()
            .filter(|e| e.revision <= applied)
            .map(|e| {
                let f = frame(Format::JsonLines, &StreamItem::Event(Box::new(e.clone())));
                (Arc::new(e), f)
            })
            .collect();
        let mut q = self.inner.lock().expect("frames lock");
        for (e, f) in &page {
            if e.revision + RECENT_FRAMES <= applied {
                continue; // old history: not worth keeping
            }
            match q.back().map(|(l, _)| l.revision + 1) {
                Some(next) if e.revision < next => continue,  // cached meanwhile
                Some(next) if e.revision > next => q.clear(), // a gap: start over from here
                _ => {}
            }
            q.push_back((e.clone(), f.clone()));
            while q.len() as u64 > RECENT_FRAMES {
                q.pop_front();
            }
        }
        Ok(page)
    }
}

/// A validated subscription filter.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub guest: Option<Name>,
    pub host: Option<Name>,
    pub kinds: Option<Vec<EventKind>>,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        self.guest.as_ref().is_none_or(|g| e.payload.guest() == Some(g))
            && self.host.as_ref().is_none_or(|h| e.payload.hosts().contains(&h))
            && self.kinds.as_ref().is_none_or(|k| k.contains(&e.payload.kind()))
    }
}

/// An event kind by its name in a subscription's `kind` parameter.
pub fn parse_kind(s: &str) -> Result<EventKind, String> {
    match s {
        "host" => Ok(EventKind::Host),
        "guest" => Ok(EventKind::Guest),
        "package" => Ok(EventKind::Package),
        "migration" => Ok(EventKind::Migration),
        "cluster" => Ok(EventKind::Cluster),
        "ha" => Ok(EventKind::Ha),
        other => Err(format!("unknown event kind {other:?}; use cluster, host, guest, package, migration or ha")),
    }
}

/// How a stream's items are framed.
#[derive(Clone, Copy)]
pub enum Format {
    JsonLines,
    Binary,
}

/// One item, framed: a JSON line, or a big-endian `u32` length and the item's binary encoding.
pub fn frame(format: Format, item: &StreamItem) -> Bytes {
    match format {
        Format::JsonLines => {
            let mut v = serde_json::to_vec(item).expect("stream items serialise to JSON");
            v.push(b'\n');
            Bytes::from(v)
        }
        Format::Binary => {
            let body = codec::encode(item);
            let mut v = Vec::with_capacity(4 + body.len());
            v.extend_from_slice(&(body.len() as u32).to_be_bytes());
            v.extend_from_slice(&body);
            Bytes::from(v)
        }
    }
}
