//! The openraft type configuration shared by the storage and the coordinator.

use std::fmt;

use serde::{Deserialize, Serialize};
use switchyard_protocol::{ApplyResult, Proposal};

/// How to reach one coordinator: its Raft RPC address and its operator API address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub raft_addr: String,
    pub api_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

/// What one Raft entry carries: the proposals the leader's batcher packed together
/// (`coordinator/src/proposer.rs`), so one log append, one fsync and one replication round commit
/// them all. They are applied in order, each with its own result, exactly as if each had had an
/// entry of its own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposals(pub Vec<Proposal>);

/// What the state machine answers for one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// One result per proposal of the entry, in order (none for blank and membership entries).
    pub results: Vec<ApplyResult>,
}

openraft::declare_raft_types!(
    /// Switchyard's Raft types: proposals in, apply results out, snapshots as files on disk.
    pub TypeConfig:
        D = Proposals,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type StorageError = openraft::StorageError<NodeId>;
