//! Raft RPC between coordinators: bincode over HTTP (`POST /raft/{append,vote,snapshot}` on the
//! peer's Raft address, `/raft/handover` when a leader stops gracefully, and `/raft/history`
//! for a node filling its history after a snapshot install).
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

use std::sync::Arc;
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

/// Creates one [`Peer`] per remote node.
#[derive(Clone)]
pub struct Network {
    client: reqwest::Client,
    scheme: &'static str,
    secret: String,
    retry: Duration,
    metrics: Arc<Metrics>,
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
        Network { client, scheme, secret, retry: heartbeat * 2, metrics }
    }
}

impl Network {
    /// Delivers a leader's handover notice (`POST /raft/handover`) to `node`.
    pub async fn handover(&self, target: NodeId, node: &NodeInfo, msg: &Handover) -> Result<(), String> {
        let url = format!("{}://{}/raft/handover", self.scheme, node.raft_addr);
        let resp = self
            .client
            .post(&url)
            .bearer_auth(&self.secret)
            .header(TARGET_HEADER, target.to_string())
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
        let resp = self
            .client
            .post(&url)
            .bearer_auth(&self.secret)
            .header(TARGET_HEADER, target.to_string())
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
}

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("{}://{}/raft/{path}", self.scheme, self.node.raft_addr);
        let resp = self
            .client
            .post(&url)
            .bearer_auth(&self.secret)
            .header(TARGET_HEADER, self.target.to_string())
            .timeout(option.hard_ttl())
            .body(codec::encode(req))
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
        let answer: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
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
        let answer = self.call("append", &rpc, &option).await;
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
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.retry))
    }
}
