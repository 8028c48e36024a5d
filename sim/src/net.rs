//! The simulated network between coordinators: every Raft RPC is encoded with the real codec,
//! delayed, possibly lost, duplicated or cut by a partition, delivered to the target's current
//! incarnation, and its answer comes back the same way. A peer that cannot be reached answers
//! `Unreachable`, as the coordinators' HTTP network does, so openraft backs off the same way.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::Raft;
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchyard_protocol::codec;
use switchyard_protocol::entry::NodeInfo;

use crate::runtime::{as_node, with_rng};
use crate::Lock;
use crate::SimConfig;

/// What the network does to messages now (the fault injector changes it as the run goes).
#[derive(Clone, Debug, Default)]
pub struct Weather {
    /// Directed links that drop everything: (from, to), with how many partitions cut each (they
    /// may overlap; a link heals when the last one ends).
    pub cut: BTreeMap<(u64, u64), u32>,
    /// Per mille of messages lost.
    pub loss: u64,
    /// Per mille of requests delivered twice (the copy later, its answer discarded).
    pub duplicate: u64,
    /// Per mille of messages held up by `spike` more.
    pub spike_chance: u64,
    pub spike: Duration,
    /// How many times each kind of weather was set: a window ends its weather only if no later
    /// window set it again.
    pub set: BTreeMap<&'static str, u64>,
}

/// The running nodes and the network's state, shared by every simulated link.
#[derive(Default)]
pub struct Switchboard {
    /// The running nodes: their current incarnation's Raft and its number.
    pub nodes: BTreeMap<u64, (u64, Raft<SimConfig>)>,
    pub weather: Weather,
}

pub type SharedBoard = Arc<Mutex<Switchboard>>;

/// Creates the links of node `from`'s incarnation.
#[derive(Clone)]
pub struct Network {
    pub from: u64,
    /// The sending incarnation: once it crashed, its messages go nowhere.
    pub epoch: u64,
    pub board: SharedBoard,
}

impl RaftNetworkFactory<SimConfig> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> Link {
        Link { from: self.from, epoch: self.epoch, to: target, node: node.clone(), board: self.board.clone() }
    }
}

/// Node `from`'s connection to node `to`.
pub struct Link {
    from: u64,
    epoch: u64,
    to: u64,
    node: NodeInfo,
    board: SharedBoard,
}

/// One leg's fate: delivered after a delay, or lost. `epoch`: the sending incarnation, which
/// must still run.
fn leg(board: &SharedBoard, from: u64, epoch: Option<u64>, to: u64) -> Option<Duration> {
    let b = board.locked();
    let w = b.weather.clone();
    let sender_gone = epoch.is_some_and(|e| b.nodes.get(&from).map(|n| n.0) != Some(e));
    let (lost, mut delay) = with_rng(|r| {
        let lost = sender_gone || w.cut.contains_key(&(from, to)) || r.chance(w.loss);
        let delay = Duration::from_micros(50 + r.below(700));
        (lost, if r.chance(w.spike_chance) { delay + w.spike } else { delay })
    });
    if lost {
        return None;
    }
    if !b.nodes.contains_key(&to) {
        delay = Duration::from_micros(50);
    }
    Some(delay)
}

fn unreachable(why: &str) -> Unreachable {
    Unreachable::new(&std::io::Error::other(why.to_string()))
}

impl Link {
    /// Sends `req` and waits for the answer, as the HTTP network does: bytes over, bytes back.
    async fn call<Req, Resp, E, F, Fut>(
        &self,
        req: &Req,
        option: &RPCOption,
        serve: F,
    ) -> Result<Resp, RPCError<u64, NodeInfo, RaftError<u64, E>>>
    where
        Req: Serialize + DeserializeOwned + Send + 'static,
        Resp: Serialize + DeserializeOwned,
        E: std::error::Error + Serialize + DeserializeOwned,
        F: Fn(Raft<SimConfig>, Req) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<Resp, RaftError<u64, E>>> + Send,
    {
        let ttl = option.hard_ttl();
        let bytes = codec::encode(req);
        let (from, epoch, to, board) = (self.from, self.epoch, self.to, self.board.clone());
        let exchange = async move {
            let Some(delay) = leg(&board, from, Some(epoch), to) else {
                // Lost on the way: the sender learns nothing until its deadline.
                return std::future::pending().await;
            };
            if with_rng(|r| r.chance(board.locked().weather.duplicate)) {
                let (copy, board2, serve2) = (bytes.clone(), board.clone(), serve.clone());
                let later = delay + with_rng(|r| r.millis(1, 200));
                tokio::spawn(as_node(to, async move {
                    tokio::time::sleep(later).await;
                    let target = board2.locked().nodes.get(&to).map(|n| n.1.clone());
                    if let (Some(raft), Ok(req)) = (target, codec::decode::<Req>(&copy)) {
                        let _ = serve2(raft, req).await;
                    }
                }));
            }
            tokio::time::sleep(delay).await;
            let target = board.locked().nodes.get(&to).map(|n| n.1.clone());
            let Some(raft) = target else {
                return Err(RPCError::Unreachable(unreachable("connection refused: the node is down")));
            };
            let req: Req = codec::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            let answer = as_node(to, serve(raft, req)).await;
            let back = codec::encode(&answer);
            let Some(delay) = leg(&board, to, None, from) else {
                return std::future::pending().await;
            };
            tokio::time::sleep(delay).await;
            let answer: Result<Resp, RaftError<u64, E>> =
                codec::decode(&back).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            Ok(answer)
        };
        let answer = match tokio::time::timeout(ttl, exchange).await {
            Ok(r) => r?,
            Err(_) => return Err(RPCError::Unreachable(unreachable("timed out"))),
        };
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.to, self.node.clone(), e)))
    }
}

impl RaftNetwork<SimConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        self.call(&rpc, &option, |raft: Raft<SimConfig>, req| async move { raft.append_entries(req).await }).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64, InstallSnapshotError>>> {
        self.call(&rpc, &option, |raft: Raft<SimConfig>, req| async move { raft.install_snapshot(req).await }).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        self.call(&rpc, &option, |raft: Raft<SimConfig>, req| async move { raft.vote(req).await }).await
    }

    /// As the coordinators' network: an unreachable peer is retried every two heartbeats.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}
