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

/// What the state machine answers for one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// `None` for entries that carry no client proposal (blank and membership entries).
    pub result: Option<ApplyResult>,
}

openraft::declare_raft_types!(
    /// Switchyard's Raft types: proposals in, apply results out, snapshots as files on disk.
    pub TypeConfig:
        D = Proposal,
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
