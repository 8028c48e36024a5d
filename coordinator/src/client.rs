//! HTTP client of the operator API, used by the CLI and by tests: tries each endpoint in turn
//! until one answers, and turns error answers into [`ClientError::Api`] with the server's code.

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchyard_protocol::api::{ErrorBody, Read, StreamItem};
use switchyard_protocol::Revision;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{code}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("no endpoint answered ({0})")]
    Unreachable(String),
    #[error("unexpected answer from {endpoint}: {reason}")]
    Protocol { endpoint: String, reason: String },
}

impl ClientError {
    /// The server's stable error code, if the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    endpoints: Vec<String>,
    token: String,
    http: reqwest::Client,
    /// Without a total timeout: a followed event stream stays open indefinitely.
    streaming: reqwest::Client,
}

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
    /// `endpoints` are `host:port` of coordinators' APIs (an `http://` prefix is accepted).
    pub fn new(endpoints: Vec<String>, token: String, timeout: Duration) -> Client {
        let endpoints =
            endpoints.into_iter().map(|e| e.trim_start_matches("http://").trim_end_matches('/').to_string()).collect();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client without TLS always builds");
        let streaming = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client without TLS always builds");
        Client { endpoints, token, http, streaming }
    }

    /// The same client, trying the endpoints from the `k`-th on (wrapping around). Agents start
    /// at different coordinators, so their subscriptions and reports spread over the cluster
    /// instead of all landing on the first endpoint (and all breaking when it stops).
    pub fn rotated(mut self, k: usize) -> Client {
        if !self.endpoints.is_empty() {
            let n = k % self.endpoints.len();
            self.endpoints.rotate_left(n);
        }
        self
    }

    /// Subscribes to events, calling `on_item` for every item until it returns `false`, or (not
    /// following) until the stream ends. When following, a broken stream is resumed on the next
    /// endpoint from the last revision seen, so the items delivered stay gap-free and
    /// duplicate-free across a coordinator loss. A `Compacted` answer is delivered and ends the
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
        let mut next = q.from.max(1);
        let mut attempt = 0usize;
        let mut down_since: Option<Instant> = None;
        loop {
            let ep = &self.endpoints[attempt % self.endpoints.len().max(1)];
            attempt += 1;
            let mut url = format!("http://{ep}/v1/events?from={next}&follow={}&progress_ms=1000", q.follow);
            for (k, v) in [("guest", &q.guest), ("host", &q.host), ("kind", &q.kind), ("cluster", &q.cluster)] {
                if let Some(v) = v {
                    url.push_str(&format!("&{k}={v}"));
                }
            }
            let resp = match self.streaming.get(&url).bearer_auth(&self.token).send().await {
                Ok(r) => r,
                Err(e) => {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > RECONNECT_GIVE_UP || (!q.follow && attempt >= self.endpoints.len()) {
                        return Err(ClientError::Unreachable(format!("{ep}: {e}")));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if !resp.status().is_success() {
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await.unwrap_or_default();
                return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                    Ok(e) => ClientError::Api { status, code: e.code, message: e.message },
                    Err(_) => ClientError::Protocol { endpoint: ep.clone(), reason: format!("{status}") },
                });
            }
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
                while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
                    let item: StreamItem = serde_json::from_slice(&buf[start..start + pos])
                        .map_err(|e| ClientError::Protocol { endpoint: ep.clone(), reason: e.to_string() })?;
                    start += pos + 1;
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

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send::<(), T>(Method::GET, path, None).await
    }

    /// A read answered as of `revision` or later, which needs no leader when any coordinator has
    /// applied `revision`: each endpoint in turn is asked for a `stale=true` read and the first
    /// answer at `revision` or later is taken (one lagging coordinator does not force the slow
    /// path); when none has one, the read is made linearizable, which a leader serves.
    ///
    /// For callers that know the revision their view must include (an agent acting on an event
    /// it was sent): the answer is never older than that, and may be newer. A coordinator that
    /// does not answer costs one request timeout before the next endpoint is asked.
    pub async fn get_since<T: DeserializeOwned>(&self, path: &str, revision: Revision) -> Result<Read<T>, ClientError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let stale = format!("{path}{sep}stale=true");
        for ep in &self.endpoints {
            if let Ok(r) = self.send_to::<(), Read<T>>(ep, Method::GET, &stale, None).await {
                if r.revision >= revision {
                    return Ok(r);
                }
            }
        }
        self.get(path).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send::<(), T>(Method::DELETE, path, None).await
    }

    /// Posts the same body to every endpoint at once and returns each one's answer, in endpoint
    /// order. For messages every coordinator should hold (agents' migration reports), so that
    /// whichever coordinator leads next already has them.
    pub async fn post_all<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Vec<Result<T, ClientError>> {
        let sends = self.endpoints.iter().map(|ep| async move {
            self.send_to::<B, T>(ep, Method::POST, path, Some(body)).await.map_err(ClientError::from)
        });
        futures_util::future::join_all(sends).await
    }

    /// Sends a request to the first endpoint that answers. Only a failure to connect moves on to
    /// the next endpoint: once a server answered, its answer is final (a write may have been
    /// applied, and retrying is the caller's decision, made safe by request ids).
    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut failures = Vec::new();
        for ep in &self.endpoints {
            match self.send_to(ep, method.clone(), path, body).await {
                Err(Failure::Connect(e)) => failures.push(e),
                Err(Failure::Answered(e)) => return Err(e),
                Ok(v) => return Ok(v),
            }
        }
        Err(ClientError::Unreachable(if failures.is_empty() {
            "no endpoints given".into()
        } else {
            failures.join("; ")
        }))
    }

    /// One request to one endpoint; a failure to connect is told apart (nothing was sent).
    async fn send_to<B: Serialize, T: DeserializeOwned>(
        &self,
        ep: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Failure> {
        let mut req = self.http.request(method, format!("http://{ep}{path}")).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Err(Failure::Connect(format!("{ep}: {e}"))),
            Err(e) => return Err(Failure::Answered(ClientError::Unreachable(format!("{ep}: {e}")))),
        };
        let status = resp.status();
        let bytes =
            resp.bytes().await.map_err(|e| Failure::Answered(ClientError::Unreachable(format!("{ep}: {e}"))))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                Failure::Answered(ClientError::Protocol { endpoint: ep.to_string(), reason: e.to_string() })
            });
        }
        Err(Failure::Answered(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => ClientError::Api { status: status.as_u16(), code: e.code, message: e.message },
            Err(_) => ClientError::Protocol {
                endpoint: ep.to_string(),
                reason: format!("{status}: {}", String::from_utf8_lossy(&bytes)),
            },
        }))
    }
}

/// How one request to one endpoint failed.
enum Failure {
    /// Could not connect: nothing reached the server, another endpoint may be tried.
    Connect(String),
    /// The server answered (or the exchange broke after sending): final.
    Answered(ClientError),
}

impl From<Failure> for ClientError {
    fn from(f: Failure) -> ClientError {
        match f {
            Failure::Connect(e) => ClientError::Unreachable(e),
            Failure::Answered(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_starts_at_another_endpoint_and_keeps_them_all() {
        let c = Client::new(vec!["a:1".into(), "http://b:2/".into(), "c:3".into()], "t".into(), Duration::from_secs(1));
        assert_eq!(c.clone().rotated(0).endpoints, ["a:1", "b:2", "c:3"]);
        assert_eq!(c.clone().rotated(4).endpoints, ["b:2", "c:3", "a:1"]);
        assert_eq!(c.rotated(usize::MAX).endpoints.len(), 3);
        let none = Client::new(Vec::new(), "t".into(), Duration::from_secs(1)).rotated(7);
        assert!(none.endpoints.is_empty());
    }
}
