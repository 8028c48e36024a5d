//! The openraft type configuration shared by the storage and the coordinator.

pub use switchyard_protocol::entry::{NodeInfo, Proposals, Response};

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
