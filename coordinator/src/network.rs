//! Raft RPC between coordinators: bincode over HTTP on the peer's Raft address.
//!
//! Appends, votes and snapshot chunks travel on long-lived streams: `POST /raft/stream`,
//! upgraded (HTTP/1.1 `Upgrade: switchyard-raft`) to a connection that carries [`frame`]s, one
//! request and then its answer at a time. A stream saves what a plain request costs on every
//! heartbeat and every append (headers written and parsed, the checks of [`raft_server`]'s
//! guard, a connection taken from and given back to a pool), which is a good part of a
//! one-client write's round trip. Idle streams are kept per peer, shared by every client
//! openraft makes for it, and dropped after [`STREAM_IDLE`]. A peer that offers no stream (an
//! older coordinator answers 404) gets plain requests (`POST /raft/{append,vote,snapshot}`, the
//! same bodies) for [`PLAIN_RETRY`] before it is asked again.
//!
//! `/raft/handover` (a leader stopping gracefully) and `/raft/history` (a node filling its
//! history after a snapshot install) stay plain requests: they are rare.
//!
//! A stream delivers what was written to it even when the caller has stopped waiting: an
//! append sent to a paused peer is applied when it wakes, as a late plain request can be.
//! Raft takes such late messages (an entry of an old term is checked like any other).
//!
//! Over TLS (unless `tls.insecure`), each side presenting its node certificate: the receiver
//! takes Raft RPC only from a certificate of the cluster's CA that names a coordinator.
//! Every request also carries the cluster secret and the node id it is meant for; the receiver refuses
//! a request addressed to another id, so a stale or wrong address can never make a node answer
//! in another's name (RAFT_STORAGE_RULES §10). A peer that cannot be reached is reported to
//! openraft as `Unreachable`, which makes it back off instead of retrying in a tight loop — for
//! two heartbeat intervals, not openraft's default 500 ms: a restarted coordinator must hear the
//! leader before its own election timer fires (450 ms at the earliest by default), or it
//! campaigns, and without pre-vote in openraft 0.9 it can depose a healthy leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchyard_protocol::codec;
use switchyard_storage::{NodeId, NodeInfo, TypeConfig};

use crate::metrics::{stage, Metrics};

/// `POST /raft/handover`: the leader of `vote` hands its leadership over before it stops (see
/// `handover.rs`); `elect`: campaign now.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Handover {
    pub vote: openraft::Vote<NodeId>,
    pub elect: bool,
}

/// `POST /raft/history`: up to `max` events of the peer's history right before `before` (a
/// node filling its history after a snapshot install; see `backfill.rs`). Answered with the
/// events, contiguous, as a bincode `Vec<Event>`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct HistoryRequest {
    pub before: switchyard_protocol::Revision,
    pub max: u32,
}

/// Most events one `/raft/history` answer holds (and at most 8 MiB of them).
pub const HISTORY_EVENTS_MAX: u32 = 4096;

/// Header naming the node id a Raft RPC is addressed to.
pub const TARGET_HEADER: &str = "x-switchyard-target";

/// The protocol name a Raft stream's upgrade asks for.
pub const STREAM_PROTOCOL: &str = "switchyard-raft";

/// How long a stream may sit idle in the pool before it is dropped rather than reused: well
/// under the server's [`frame::SERVER_IDLE`], so a stream taken from the pool is not one the
/// peer is closing at that moment.
pub const STREAM_IDLE: Duration = Duration::from_secs(30);

/// How long a peer that offers no stream gets plain requests before it is asked again.
pub const PLAIN_RETRY: Duration = Duration::from_secs(60);

/// A request to `target`'s Raft server at `url`, with the cluster secret and the node id it is
/// meant for: every request one coordinator makes of another starts here.
fn to_peer(client: &reqwest::Client, secret: &str, url: &str, target: NodeId) -> reqwest::RequestBuilder {
    client.post(url).bearer_auth(secret).header(TARGET_HEADER, target.to_string())
}

/// Creates one [`Peer`] per remote node.
#[derive(Clone)]
pub struct Network {
    client: reqwest::Client,
    scheme: &'static str,
    secret: String,
    retry: Duration,
    metrics: Arc<Metrics>,
    streams: Arc<Streams>,
}

/// The streams of every peer: the idle ones, and the peers that offer none.
#[derive(Default)]
struct Streams {
    idle: Mutex<HashMap<NodeId, Vec<Idle>>>,
    /// Peers that answered 404 to a stream, and until when they get plain requests.
    plain_until: Mutex<HashMap<NodeId, Instant>>,
}

/// A stream's connection, read through a buffer: a frame's length, kind and body (and, on a
/// plaintext link, the next frame's start) come in one read instead of three.
type StreamIo = tokio::io::BufReader<reqwest::Upgraded>;

struct Idle {
    io: StreamIo,
    since: Instant,
}

impl Streams {
    /// The most recently used idle stream to `target` that is not too old to reuse.
    fn take(&self, target: NodeId) -> Option<StreamIo> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&target)?;
        list.retain(|s| s.since.elapsed() < STREAM_IDLE);
        list.pop().map(|s| s.io)
    }

    fn put(&self, target: NodeId, io: StreamIo) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.entry(target).or_default().push(Idle { io, since: Instant::now() });
    }

    fn plain(&self, target: NodeId) -> bool {
        let plain = self.plain_until.lock().unwrap_or_else(|p| p.into_inner());
        plain.get(&target).is_some_and(|until| Instant::now() < *until)
    }

    fn set_plain(&self, target: NodeId) {
        let mut plain = self.plain_until.lock().unwrap_or_else(|p| p.into_inner());
        plain.insert(target, Instant::now() + PLAIN_RETRY);
    }
}

/// Why an RPC did not go over a stream.
#[derive(Debug)]
enum StreamFailure {
    /// The peer offers no stream (404): send a plain request.
    NotOffered,
    /// The peer could not be reached, refused the request, or did not answer in time.
    Unreachable(std::io::Error),
}

impl Network {
    /// `heartbeat` is the Raft heartbeat interval: an unreachable peer is retried every two.
    /// Append-entries round trips that carry entries are timed into `metrics`.
    pub fn new(
        secret: String,
        heartbeat: Duration,
        tls: Option<&switchyard_tls::Tls>,
        metrics: Arc<Metrics>,
    ) -> Network {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30));
        let (builder, scheme) = switchyard_tls::http(builder, tls);
        let client = builder.build().expect("an HTTP client with a preconfigured TLS setup builds");
        Network { client, scheme, secret, retry: heartbeat * 2, metrics, streams: Arc::default() }
    }
}

impl Network {
    /// Delivers a leader's handover notice (`POST /raft/handover`) to `node`.
    pub async fn handover(&self, target: NodeId, node: &NodeInfo, msg: &Handover) -> Result<(), String> {
        let url = format!("{}://{}/raft/handover", self.scheme, node.raft_addr);
        let resp = to_peer(&self.client, &self.secret, &url, target)
            .timeout(Duration::from_secs(1))
            .body(codec::encode(msg))
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if resp.status().is_success() {
            return Ok(());
        }
        let status = resp.status();
        Err(format!("{url}: {status}: {}", resp.text().await.unwrap_or_default()))
    }
}

impl Network {
    /// Asks `node` for the events of its history right before `before` (`POST /raft/history`).
    pub async fn history(
        &self,
        target: NodeId,
        node: &NodeInfo,
        before: switchyard_protocol::Revision,
    ) -> Result<Vec<switchyard_protocol::Event>, String> {
        let url = format!("{}://{}/raft/history", self.scheme, node.raft_addr);
        let req = HistoryRequest { before, max: HISTORY_EVENTS_MAX };
        let resp = to_peer(&self.client, &self.secret, &url, target)
            .timeout(Duration::from_secs(30))
            .body(codec::encode(&req))
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{url}: {status}: {}", String::from_utf8_lossy(&bytes)));
        }
        codec::decode(&bytes).map_err(|e| format!("{url}: {e}"))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Peer {
        Peer {
            target,
            node: node.clone(),
            client: self.client.clone(),
            scheme: self.scheme,
            secret: self.secret.clone(),
            retry: self.retry,
            metrics: self.metrics.clone(),
            streams: self.streams.clone(),
        }
    }
}

/// The connection to one remote coordinator.
pub struct Peer {
    target: NodeId,
    node: NodeInfo,
    client: reqwest::Client,
    scheme: &'static str,
    secret: String,
    retry: Duration,
    metrics: Arc<Metrics>,
    streams: Arc<Streams>,
}

impl Peer {
    /// Sends one Raft RPC of `kind` (a [`frame`] request kind; `path` names its plain request)
    /// and decodes the answer.
    async fn call<Req, Resp, E>(
        &self,
        kind: u8,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = codec::encode(req);
        let ttl = option.hard_ttl();
        let streamed = if self.streams.plain(self.target) {
            Err(StreamFailure::NotOffered)
        } else {
            tokio::time::timeout(ttl, self.over_stream(kind, &body)).await.unwrap_or_else(|elapsed| {
                Err(StreamFailure::Unreachable(std::io::Error::new(std::io::ErrorKind::TimedOut, elapsed)))
            })
        };
        let bytes = match streamed {
            Ok(bytes) => bytes,
            Err(StreamFailure::NotOffered) => self.post(path, body, ttl).await?,
            Err(StreamFailure::Unreachable(e)) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
        };
        let answer: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }

    /// Sends a request on a stream (an idle one, else a new one) and answers the answer's body.
    /// A reused stream that fails before it answers (the peer restarted, or closed it idle) is
    /// replaced by a new one once: a Raft RPC may be delivered twice, as a retry would.
    async fn over_stream(&self, kind: u8, body: &[u8]) -> Result<Vec<u8>, StreamFailure> {
        if let Some(mut io) = self.streams.take(self.target) {
            if let Ok(answer) = self.exchange(&mut io, kind, body).await {
                self.streams.put(self.target, io);
                return Ok(answer);
            }
        }
        let mut io = self.open_stream().await?;
        let answer = self.exchange(&mut io, kind, body).await?;
        self.streams.put(self.target, io);
        Ok(answer)
    }

    /// One request and its answer on `io`. A stream goes back to the pool only after a whole
    /// exchange: one dropped midway (a timeout, an error) is closed.
    async fn exchange(&self, io: &mut StreamIo, kind: u8, body: &[u8]) -> Result<Vec<u8>, StreamFailure> {
        frame::write(io, kind, body).await.map_err(StreamFailure::Unreachable)?;
        let (answer_kind, answer) = frame::read(io, frame::BODY_MAX)
            .await
            .and_then(|f| f.ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into()))
            .map_err(StreamFailure::Unreachable)?;
        match answer_kind {
            frame::ANSWER => Ok(answer),
            frame::REFUSED => Err(StreamFailure::Unreachable(std::io::Error::other(format!(
                "{}: raft stream: refused: {}",
                self.node.raft_addr,
                String::from_utf8_lossy(&answer)
            )))),
            other => Err(StreamFailure::Unreachable(std::io::Error::other(format!(
                "{}: raft stream: an answer of unknown kind {other}",
                self.node.raft_addr
            )))),
        }
    }

    /// Opens a stream: `POST /raft/stream`, upgraded.
    async fn open_stream(&self) -> Result<StreamIo, StreamFailure> {
        let url = format!("{}://{}/raft/stream", self.scheme, self.node.raft_addr);
        let resp = to_peer(&self.client, &self.secret, &url, self.target)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, STREAM_PROTOCOL)
            .send()
            .await
            .map_err(|e| StreamFailure::Unreachable(std::io::Error::other(e)))?;
        match resp.status() {
            reqwest::StatusCode::SWITCHING_PROTOCOLS => {
                let io = resp.upgrade().await.map_err(|e| StreamFailure::Unreachable(std::io::Error::other(e)))?;
                Ok(tokio::io::BufReader::new(io))
            }
            reqwest::StatusCode::NOT_FOUND => {
                tracing::info!(
                    peer = self.target,
                    "the peer offers no raft stream; plain requests for {PLAIN_RETRY:?}"
                );
                self.streams.set_plain(self.target);
                Err(StreamFailure::NotOffered)
            }
            status => {
                let text = resp.text().await.unwrap_or_default();
                // A refusal (wrong node id, wrong secret) means this address is not the peer we want.
                Err(StreamFailure::Unreachable(std::io::Error::other(format!("{url}: {status}: {text}"))))
            }
        }
    }

    /// A plain request: `POST /raft/{path}`, answered with the answer's body.
    async fn post<E>(
        &self,
        path: &str,
        body: Vec<u8>,
        ttl: Duration,
    ) -> Result<Vec<u8>, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        E: std::error::Error,
    {
        let url = format!("{}://{}/raft/{path}", self.scheme, self.node.raft_addr);
        let resp = to_peer(&self.client, &self.secret, &url, self.target)
            .timeout(ttl)
            .body(body)
            .send()
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let e = std::io::Error::other(format!("{url}: {status}: {text}"));
            // A refusal (wrong node id, wrong secret) means this address is not the peer we want.
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        let bytes = resp.bytes().await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        Ok(bytes.to_vec())
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let carries_entries = !rpc.entries.is_empty();
        let started = Instant::now();
        let answer = self.call(frame::APPEND, "append", &rpc, &option).await;
        if carries_entries && answer.is_ok() {
            self.metrics.stage(stage::REPLICATE_RPC, started.elapsed());
        }
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(frame::SNAPSHOT, "snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call(frame::VOTE, "vote", &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.retry))
    }
}

/// The frames of a Raft stream ([`switchyard_protocol::frame`] holds their format) read from and
/// written to a connection.
pub mod frame {
    use std::time::Duration;

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    use switchyard_protocol::frame::{body_len, encode, HEADER};
    pub use switchyard_protocol::frame::{ANSWER, APPEND, BODY_MAX, REFUSED, SNAPSHOT, VOTE};

    /// How long the server keeps a stream on which nothing arrives.
    pub const SERVER_IDLE: Duration = Duration::from_secs(60);

    /// Writes one frame.
    pub async fn write<W: AsyncWrite + Unpin>(io: &mut W, kind: u8, body: &[u8]) -> std::io::Result<()> {
        let buf = encode(kind, body).map_err(std::io::Error::other)?;
        io.write_all(&buf).await?;
        io.flush().await
    }

    /// Reads one frame: its kind and body, or `None` when the stream ended cleanly before a
    /// frame began. A frame longer than `max` bytes of body is an `InvalidData` error, read no
    /// further.
    pub async fn read<R: AsyncRead + Unpin>(io: &mut R, max: usize) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        let mut header = [0u8; HEADER];
        let mut got = 0;
        while got < header.len() {
            match io.read(&mut header[got..]).await? {
                0 if got == 0 => return Ok(None),
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => got += n,
            }
        }
        let len = body_len(header, max).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut kind = [0u8; 1];
        io.read_exact(&mut kind).await?;
        let mut body = vec![0u8; len];
        io.read_exact(&mut body).await?;
        Ok(Some((kind[0], body)))
    }

    /// The answer that accepts a stream: `101 Switching Protocols` to
    /// [`super::STREAM_PROTOCOL`].
    pub fn accepted() -> axum::response::Response {
        axum::response::Response::builder()
            .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
            .header(axum::http::header::CONNECTION, "upgrade")
            .header(axum::http::header::UPGRADE, super::STREAM_PROTOCOL)
            .body(axum::body::Body::empty())
            .expect("a 101 answer with static headers builds")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::{Request, State};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use axum::Router;
    use openraft::Vote;

    use super::*;

    #[tokio::test]
    async fn a_frame_reads_back_as_written_and_a_clean_end_is_told_from_a_cut() {
        let mut buf = Vec::new();
        frame::write(&mut buf, frame::VOTE, b"body").await.unwrap();
        frame::write(&mut buf, frame::ANSWER, b"").await.unwrap();
        let mut r = &buf[..];
        assert_eq!(frame::read(&mut r, 16).await.unwrap(), Some((frame::VOTE, b"body".to_vec())));
        assert_eq!(frame::read(&mut r, 16).await.unwrap(), Some((frame::ANSWER, Vec::new())));
        assert_eq!(frame::read(&mut r, 16).await.unwrap(), None, "a clean end between frames");
        for cut in 1..buf.len() - 5 {
            let mut r = &buf[..cut];
            let e = frame::read(&mut r, 16).await.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn a_frame_past_the_limit_or_of_no_length_is_refused_unread() {
        let mut buf = Vec::new();
        frame::write(&mut buf, frame::APPEND, &[7; 17]).await.unwrap();
        let e = frame::read(&mut &buf[..], 16).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        // A length that claims 4 GiB is refused from the length alone, nothing allocated.
        let e = frame::read(&mut &[0xff, 0xff, 0xff, 0xff][..], frame::BODY_MAX).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        let e = frame::read(&mut &[0, 0, 0, 0, 1][..], frame::BODY_MAX).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    }

    /// A peer's Raft server, as far as these tests need one: it grants every vote, on a
    /// stream unless `streams` is off (then `/raft/stream` is not found, as on a coordinator
    /// without streams), and ends each stream after `answers_per_stream` answers.
    #[derive(Clone)]
    struct FakePeer {
        streams: bool,
        answers_per_stream: usize,
        opened: Arc<AtomicUsize>,
        plain: Arc<AtomicUsize>,
    }

    fn granted() -> Vec<u8> {
        codec::encode(&Ok::<_, RaftError<NodeId>>(VoteResponse::new(Vote::new(3, 1), None, true)))
    }

    async fn fake_stream(State(f): State<FakePeer>, mut req: Request) -> Response {
        if !f.streams {
            return axum::http::StatusCode::NOT_FOUND.into_response();
        }
        f.opened.fetch_add(1, Ordering::SeqCst);
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = hyper_util::rt::TokioIo::new(upgrade.await.unwrap());
            for _ in 0..f.answers_per_stream {
                let Ok(Some((kind, body))) = frame::read(&mut io, frame::BODY_MAX).await else { return };
                assert_eq!(kind, frame::VOTE);
                let _: VoteRequest<NodeId> = codec::decode(&body).unwrap();
                frame::write(&mut io, frame::ANSWER, &granted()).await.unwrap();
            }
        });
        frame::accepted()
    }

    async fn fake_vote(State(f): State<FakePeer>, body: axum::body::Bytes) -> Vec<u8> {
        let _: VoteRequest<NodeId> = codec::decode(&body).unwrap();
        f.plain.fetch_add(1, Ordering::SeqCst);
        granted()
    }

    /// Serves `f` on a loopback port; answers its address.
    async fn serve_fake(f: &FakePeer) -> NodeInfo {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/raft/stream", post(fake_stream))
            .route("/raft/vote", post(fake_vote))
            .with_state(f.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        NodeInfo { raft_addr: addr.to_string(), api_addr: String::new() }
    }

    fn network() -> Network {
        Network::new("s".into(), Duration::from_millis(50), None, Arc::new(Metrics::new()))
    }

    async fn peer_of(f: &FakePeer) -> Peer {
        network().new_client(1, &serve_fake(f).await).await
    }

    fn fake(streams: bool, answers_per_stream: usize) -> FakePeer {
        FakePeer { streams, answers_per_stream, opened: Arc::default(), plain: Arc::default() }
    }

    async fn vote(peer: &mut Peer) -> VoteResponse<NodeId> {
        let req = VoteRequest::new(Vote::new(3, 1), None);
        peer.vote(req, RPCOption::new(Duration::from_secs(5))).await.unwrap()
    }

    #[tokio::test]
    async fn every_rpc_to_a_peer_shares_one_stream() {
        let f = fake(true, usize::MAX);
        let node = serve_fake(&f).await;
        let mut net = network();
        // openraft makes a client per use (replication, elections): they share the streams.
        let mut replication = net.new_client(1, &node).await;
        let mut election = net.new_client(1, &node).await;
        for _ in 0..5 {
            assert!(vote(&mut replication).await.vote_granted);
            assert!(vote(&mut election).await.vote_granted);
        }
        assert_eq!(f.opened.load(Ordering::SeqCst), 1);
        assert_eq!(f.plain.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_stream_the_peer_ended_is_replaced_without_failing_the_rpc() {
        let f = fake(true, 1);
        let mut peer = peer_of(&f).await;
        for _ in 0..3 {
            assert!(vote(&mut peer).await.vote_granted);
        }
        assert_eq!(f.opened.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_peer_that_offers_no_stream_gets_plain_requests_and_is_not_asked_again_at_once() {
        let f = fake(false, 0);
        let mut peer = peer_of(&f).await;
        for _ in 0..3 {
            assert!(vote(&mut peer).await.vote_granted);
        }
        assert_eq!(f.plain.load(Ordering::SeqCst), 3);
        assert!(peer.streams.plain(1));
    }
}
