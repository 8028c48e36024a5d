//! # switchyard-client
//!
//! The typed client of the coordinators' HTTP/JSON API. Agents, the `switchyard` CLI, the
//! benchmark and the tests talk to a cluster through it, so none of them needs the coordinator's
//! code (RocksDB, openraft, axum) to do so.
//!
//! - [`Client`]: endpoints tried in turn, errors with the server's stable code ([`ClientError`]);
//!   one typed method per API call (`api.rs`);
//! - writes carry a request id (made here when the caller gives none) and, with
//!   [`Client::retrying_writes`], are sent again with that id while the cluster has no leader or
//!   a coordinator is unreachable: the state machine applies a request id once, so a retry never
//!   applies a change twice; with [`Client::retrying_reads`] (the CLI), reads are asked again
//!   the same way, so an election does not fail an operator's command;
//! - [`events`]: subscriptions that resume on another coordinator, gap-free and duplicate-free.

mod api;
pub mod events;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchyard_protocol::api::{ErrorBody, Read};
use switchyard_protocol::Revision;
use switchyard_tls::Tls;

pub use events::{EventQuery, MAX_BATCH};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{code}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("no endpoint answered ({0})")]
    Unreachable(String),
    #[error("unexpected answer from {endpoint}: {reason}")]
    Protocol { endpoint: String, reason: String },
    /// The caller's input cannot make a request (e.g. an invalid name).
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The server's stable error code, if the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether sending the same write again (with the same request id) may succeed: the cluster
    /// had no leader, the leader could not be reached through the contacted coordinator, or no
    /// coordinator answered. Refusals (`unknown_guest`, `forbidden`, ...) are final.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Api { code, .. } => code == "unavailable" || code == "not_leader",
            ClientError::Unreachable(_) => true,
            ClientError::Protocol { .. } | ClientError::Invalid(_) => false,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    endpoints: Vec<String>,
    /// `https` (the cluster's CA checked, the client's certificate presented when it has one),
    /// or `http` for a cluster running `tls.insecure`.
    scheme: &'static str,
    token: String,
    http: reqwest::Client,
    /// Without a total timeout: a followed event stream stays open indefinitely.
    streaming: reqwest::Client,
    /// Reads without confirming leadership (`?stale=true`).
    stale: bool,
    /// How long a write is sent again while [`ClientError::is_transient`]; zero: once.
    write_retry: Duration,
    read_retry: Duration,
    /// Why this client cannot send anything (see [`Client::unusable`]).
    unusable: Option<String>,
}

/// A fresh request id: 128 random bits as 32 hex digits.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Client {
    /// `endpoints` are `host:port` of coordinators' APIs (a scheme prefix is accepted and
    /// ignored: `tls` decides); `timeout` bounds each request. With `tls`, the coordinators'
    /// certificates must be signed by its CA, and its certificate (if any) is presented;
    /// without, plaintext. An empty `token` sends none: the client's certificate is then its
    /// credential (the coordinators' `client_certificates`).
    pub fn new(endpoints: Vec<String>, token: String, timeout: Duration, tls: Option<&Tls>) -> Client {
        let endpoints = endpoints.iter().map(|e| switchyard_tls::strip_scheme(e).to_string()).collect();
        let (builder, scheme) = switchyard_tls::http(
            reqwest::Client::builder().timeout(timeout).connect_timeout(Duration::from_secs(2)),
            tls,
        );
        let http = builder.build().expect("an HTTP client with a preconfigured TLS setup builds");
        let (builder, _) =
            switchyard_tls::http(reqwest::Client::builder().connect_timeout(Duration::from_secs(2)), tls);
        let streaming = builder.build().expect("an HTTP client with a preconfigured TLS setup builds");
        Client {
            endpoints,
            scheme,
            token,
            http,
            streaming,
            stale: false,
            write_retry: Duration::ZERO,
            read_retry: Duration::ZERO,
            unusable: None,
        }
    }

    /// A client that answers every call with [`ClientError::Invalid`]`(why)`: for a tool whose
    /// connection settings are wrong, so that its offline commands still work and its online
    /// ones say what is wrong.
    pub fn unusable(why: String) -> Client {
        let mut c = Client::new(Vec::new(), String::new(), Duration::from_secs(1), None);
        c.unusable = Some(why);
        c
    }

    /// A request with the bearer token, when there is one.
    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.token.is_empty() {
            req
        } else {
            req.bearer_auth(&self.token)
        }
    }

    /// The URL of `path` on endpoint `ep`.
    fn url(&self, ep: &str, path: &str) -> String {
        format!("{}://{ep}{path}", self.scheme)
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

    /// The same client, reading without confirming leadership (may be stale) when `stale`.
    pub fn stale(mut self, stale: bool) -> Client {
        self.stale = stale;
        self
    }

    /// The same client, sending each write again with its request id for up to `within` while
    /// the cluster answers `unavailable` or `not_leader`, or no coordinator answers.
    pub fn retrying_writes(mut self, within: Duration) -> Client {
        self.write_retry = within;
        self
    }

    /// The same client, asking each read again for up to `within` while the cluster answers
    /// `unavailable` or `not_leader` (an election under way) or no coordinator answers. For an
    /// operator's tools: a read is safe to repeat, and a few hundred milliseconds without a
    /// leader should not fail a command. Agents keep the default (no retry): their loops retry
    /// on their own schedule and must not block in one read.
    pub fn retrying_reads(mut self, within: Duration) -> Client {
        self.read_retry = within;
        self
    }

    /// A GET of `path` that needs no token (`/healthz`, `/readyz`) on each endpoint in turn:
    /// the first answer's status and text.
    pub async fn probe(&self, path: &str) -> Result<(u16, String), ClientError> {
        if let Some(why) = &self.unusable {
            return Err(ClientError::Invalid(why.clone()));
        }
        let mut failures = Vec::new();
        for ep in &self.endpoints {
            match self.http.get(self.url(ep, path)).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    return Ok((status, r.text().await.unwrap_or_default()));
                }
                Err(e) => failures.push(format!("{ep}: {}", chain(&e))),
            }
        }
        Err(ClientError::Unreachable(failures.join("; ")))
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.retried::<(), T>(Method::GET, path, None, self.read_retry).await
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

    /// A write that carries a request id: sent once, or again with the same id while the
    /// answer is transient and the retry window ([`Client::retrying_writes`]) lasts.
    async fn write<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.retried(method, path, body, self.write_retry).await
    }

    /// A request that is safe to send again (a read, or a write with its request id): sent
    /// again while the answer is transient, for up to `within`.
    async fn retried<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        within: Duration,
    ) -> Result<T, ClientError> {
        let deadline = Instant::now() + within;
        let mut pause = Duration::from_millis(20);
        loop {
            match self.send(method.clone(), path, body).await {
                Err(e) if e.is_transient() && Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                r => return r,
            }
        }
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
        if let Some(why) = &self.unusable {
            return Err(ClientError::Invalid(why.clone()));
        }
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
        if let Some(why) = &self.unusable {
            return Err(Failure::Answered(ClientError::Invalid(why.clone())));
        }
        let mut req = self.authorized(self.http.request(method, self.url(ep, path)));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Err(Failure::Connect(format!("{ep}: {}", chain(&e)))),
            Err(e) => return Err(Failure::Answered(ClientError::Unreachable(format!("{ep}: {}", chain(&e))))),
        };
        let status = resp.status();
        let bytes =
            resp.bytes().await.map_err(|e| Failure::Answered(ClientError::Unreachable(format!("{ep}: {e}"))))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                Failure::Answered(ClientError::Protocol { endpoint: ep.to_string(), reason: e.to_string() })
            });
        }
        Err(Failure::Answered(error_answer(ep, status.as_u16(), &bytes)))
    }
}

/// An error with its causes: reqwest's own message ("error sending request") says nothing of a
/// refused certificate or a refused connection, which its sources do.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// An error answer: the server's code and message, or what came instead.
fn error_answer(ep: &str, status: u16, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(e) => ClientError::Api { status, code: e.code, message: e.message },
        Err(_) => ClientError::Protocol {
            endpoint: ep.to_string(),
            reason: format!("{status}: {}", String::from_utf8_lossy(bytes)),
        },
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
        let c = Client::new(
            vec!["a:1".into(), "http://b:2/".into(), "https://c:3".into()],
            "t".into(),
            Duration::from_secs(1),
            None,
        );
        assert_eq!(c.clone().rotated(0).endpoints, ["a:1", "b:2", "c:3"]);
        assert_eq!(c.clone().rotated(4).endpoints, ["b:2", "c:3", "a:1"]);
        assert_eq!(c.rotated(usize::MAX).endpoints.len(), 3);
        let none = Client::new(Vec::new(), "t".into(), Duration::from_secs(1), None).rotated(7);
        assert!(none.endpoints.is_empty());
    }

    #[test]
    fn only_leaderless_and_unreachable_answers_are_retried() {
        let api = |code: &str| ClientError::Api { status: 503, code: code.into(), message: String::new() };
        assert!(api("unavailable").is_transient());
        assert!(api("not_leader").is_transient());
        assert!(ClientError::Unreachable("x".into()).is_transient());
        for final_code in ["unknown_guest", "forbidden", "bad_request", "conflict", "guest_exists"] {
            assert!(!api(final_code).is_transient(), "{final_code}");
        }
        assert!(!ClientError::Protocol { endpoint: "e".into(), reason: "r".into() }.is_transient());
    }

    /// A coordinator on loopback that answers its `i`-th request (from 0) with `answer(i)`: a
    /// status line, a content type and a body. Answers its address.
    async fn answering(answer: impl Fn(usize) -> (&'static str, &'static str, String) + Send + 'static) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            for i in 0.. {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => request.extend_from_slice(&buf[..k]),
                    }
                }
                let (status, content_type, body) = answer(i);
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            }
        });
        addr
    }

    /// A coordinator that answers `not_leader` `leaderless` times, then the read.
    async fn leaderless_then_answering(leaderless: usize) -> String {
        answering(move |i| {
            if i < leaderless {
                (
                    "503 Service Unavailable",
                    "application/json",
                    r#"{"code":"not_leader","message":"no leader is known yet"}"#.to_string(),
                )
            } else {
                ("200 OK", "application/json", r#"{"answer":42}"#.to_string())
            }
        })
        .await
    }

    /// A subscription is served by the next coordinator when one answers `unavailable` (it is
    /// stopping, or lacks history it is still fetching), gap-free from the revision asked for;
    /// with no other coordinator, the refusal is the answer.
    #[tokio::test]
    async fn a_subscription_passes_over_a_coordinator_that_answers_unavailable() {
        let unavailable = || async {
            answering(|_| {
                let body = r#"{"code":"unavailable","message":"this coordinator is filling its event history"}"#;
                ("503 Service Unavailable", "application/json", body.to_string())
            })
            .await
        };
        // Progress marks: the simplest items a stream carries.
        let items: String = (1..=3u64)
            .map(|revision| {
                serde_json::to_string(&switchyard_protocol::api::StreamItem::Progress { revision }).unwrap() + "\n"
            })
            .collect();
        let serving = answering(move |_| ("200 OK", "application/x-ndjson", items.clone())).await;
        let client = |eps: Vec<String>| Client::new(eps, "t".into(), Duration::from_secs(5), None);
        for follow in [false, true] {
            let mut got = Vec::new();
            let q = events::EventQuery { from: 1, follow, ..Default::default() };
            client(vec![unavailable().await, serving.clone()])
                .events(&q, |item| {
                    if let switchyard_protocol::api::StreamItem::Progress { revision } = item {
                        got.push(*revision);
                    }
                    got.len() < 3
                })
                .await
                .unwrap();
            assert_eq!(got, [1, 2, 3], "follow={follow}");
        }
        let q = events::EventQuery { from: 1, ..Default::default() };
        let alone = client(vec![unavailable().await]).events(&q, |_| true).await.unwrap_err();
        assert_eq!(alone.code(), Some("unavailable"), "{alone}");
    }

    #[tokio::test]
    async fn reads_are_asked_again_during_an_election_only_when_asked_to() {
        let client = |addr: String| Client::new(vec![addr], "t".into(), Duration::from_secs(5), None);
        let once = client(leaderless_then_answering(2).await);
        let e = once.get::<serde_json::Value>("/v1/hosts").await.unwrap_err();
        assert_eq!(e.code(), Some("not_leader"), "{e}");
        let retrying = client(leaderless_then_answering(2).await).retrying_reads(Duration::from_secs(5));
        let v: serde_json::Value = retrying.get("/v1/hosts").await.unwrap();
        assert_eq!(v["answer"], 42);
        // Past its window, a retrying client returns the last transient answer.
        let short = client(leaderless_then_answering(usize::MAX).await).retrying_reads(Duration::from_millis(200));
        assert_eq!(short.get::<serde_json::Value>("/v1/hosts").await.unwrap_err().code(), Some("not_leader"));
    }

    #[test]
    fn request_ids_are_fresh_and_parse_as_the_server_reads_them() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert!(switchyard_protocol::api::parse_request_id(&a).is_ok());
    }
}
