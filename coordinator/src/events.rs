//! Event subscriptions (`GET /v1/events`): catch up from the retained history, then follow live
//! applies, filtered, with periodic progress marks.
//!
//! Why it is gap-free and duplicate-free: a stream reads the node's own history, which is
//! gap-free by construction, strictly forward from a cursor, and only up to what the state
//! machine has applied. Across a leader change the subscriber reconnects to any coordinator and
//! resumes from its last revision + 1; every coordinator's history is a prefix of the same one.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use switchyard_protocol::api::StreamItem;
use switchyard_protocol::{codec, Event, EventKind, Name, Revision};
use tokio::sync::mpsc;

use crate::api::ApiState;
use crate::error::ApiError;

/// Events read from the history per step.
const PAGE_EVENTS: usize = 512;
/// Items buffered per subscriber before a slow reader holds the stream back.
const QUEUE_ITEMS: usize = 256;
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
    fn get(
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// First revision wanted (default 1).
    from: Option<Revision>,
    guest: Option<String>,
    host: Option<String>,
    /// Comma-separated kinds: host, guest, package, migration.
    kind: Option<String>,
    /// Keep the stream open and follow new events.
    #[serde(default)]
    follow: bool,
    /// `jsonl` (default) or `binary`.
    format: Option<String>,
    /// Interval of progress marks while following (100 to 60000 ms, default 5000).
    progress_ms: Option<u64>,
    /// The cluster id the subscriber follows. A coordinator of another cluster answers
    /// `cluster_mismatch` (re-sync from `GET /v1/state`); one that has not applied that identity
    /// yet, or is being restored, answers `unavailable` (retry).
    cluster: Option<String>,
}

/// A validated subscription filter.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    guest: Option<Name>,
    host: Option<Name>,
    kinds: Option<Vec<EventKind>>,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        self.guest.as_ref().is_none_or(|g| e.payload.guest() == Some(g))
            && self.host.as_ref().is_none_or(|h| e.payload.hosts().contains(&h))
            && self.kinds.as_ref().is_none_or(|k| k.contains(&e.payload.kind()))
    }
}

fn parse_kind(s: &str) -> Result<EventKind, ApiError> {
    match s {
        "host" => Ok(EventKind::Host),
        "guest" => Ok(EventKind::Guest),
        "package" => Ok(EventKind::Package),
        "migration" => Ok(EventKind::Migration),
        "cluster" => Ok(EventKind::Cluster),
        other => Err(ApiError::BadRequest(format!(
            "unknown event kind {other:?}; use cluster, host, guest, package or migration"
        ))),
    }
}

#[derive(Clone, Copy)]
enum Format {
    JsonLines,
    Binary,
}

fn frame(format: Format, item: &StreamItem) -> Bytes {
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

pub async fn subscribe(
    State(s): State<Arc<ApiState>>,
    q: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let p = q.map(|Query(p)| p).map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    let name = |s: Option<String>| {
        s.map(|s| Name::new(&s).map_err(|e| ApiError::BadRequest(format!("invalid name {s:?}: {e}")))).transpose()
    };
    let filter = Filter {
        guest: name(p.guest)?,
        host: name(p.host)?,
        kinds: p.kind.map(|k| k.split(',').map(parse_kind).collect::<Result<Vec<_>, _>>()).transpose()?,
    };
    let (format, ctype) = match p.format.as_deref() {
        None | Some("jsonl") => (Format::JsonLines, "application/x-ndjson"),
        Some("binary") => (Format::Binary, "application/octet-stream"),
        Some(f) => return Err(ApiError::BadRequest(format!("unknown format {f:?}; use jsonl or binary"))),
    };
    let progress = Duration::from_millis(p.progress_ms.unwrap_or(5000));
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&progress) {
        return Err(ApiError::BadRequest("progress_ms must be within 100..=60000".into()));
    }
    if let Some(want) = &p.cluster {
        let (have, importing) =
            s.sm.read(|st| (st.identity().map(|i| i.id.0.clone()), st.importing().map(|i| i.through_revision)));
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
    let history = s.sm.history();
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE_ITEMS);
    let first_retained = history.bounds()?.map_or(1, |(first, _)| first);
    if from < first_retained {
        let snapshot_revision = s.sm.applied_meta().revision;
        let item = StreamItem::Compacted { first_retained, snapshot_revision };
        return Ok(([("content-type", ctype)], frame(format, &item)).into_response());
    }
    tokio::spawn(stream(s.clone(), filter, from, p.follow, progress, format, tx));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok(([("content-type", ctype)], Body::from_stream(body)).into_response())
}

/// Feeds one subscriber until it goes away (or, without `follow`, until it is caught up).
async fn stream(
    s: Arc<ApiState>,
    filter: Filter,
    mut next: Revision,
    follow: bool,
    progress: Duration,
    format: Format,
    tx: mpsc::Sender<Bytes>,
) {
    let history = s.sm.history();
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
                if tx.send(f).await.is_err() {
                    return;
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
