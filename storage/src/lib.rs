//! # switchyard-storage
//!
//! Durable storage of one coordinator, all in one RocksDB instance per data directory:
//!
//! - [`LogStore`]: the Raft log, vote and purge/commit pointers (openraft `RaftLogStorage`);
//! - [`StateMachineStore`]: the replicated state machine (openraft `RaftStateMachine`), which
//!   keeps the cluster state in memory and the **event history** on disk;
//! - [`History`]: read access to the retained events and the secondary indexes
//!   (events by guest, migrations by id, guest and host);
//! - [`snapshot`]: snapshot files, which carry the state and the migration records (a node
//!   that installs one fills in the older history from a peer's);
//! - [`seed`]: a member's directory built offline from an export (`switchyard log seed`);
//! - [`checkpoint`]: the state alone, written every so many events, so a restart replays a
//!   bounded part of the history.
//!
//! See `storage/OVERVIEW.md` for the read and write paths and the durability argument.
//!
//! Architecture invariant: the Raft log is only a transport; the event history is the record.
//! Purging the log never loses history, and the state is always rebuildable from a snapshot plus
//! the events after it.

pub mod checkpoint;
pub mod db;
pub mod error;
pub mod export;
pub mod history;
pub mod log_store;
pub mod seed;
pub mod snapshot;
pub mod state_machine;
pub mod types;

pub use db::{DataDir, DISK_FORMAT_VERSION};
pub use error::StoreError;
pub use history::History;
pub use log_store::LogStore;
pub use state_machine::{AppliedMeta, StateMachineStore};
pub use types::*;

/// Opens a node's data directory and both halves of its Raft storage.
/// What the store tells its owner's metrics: how long each durable (fsynced) write took, each
/// snapshot build, the storage stages of a write (log append, until durable, apply), and the
/// events each apply produced.
pub trait Observer: Send + Sync {
    fn synced(&self, took: std::time::Duration);
    fn snapshot_built(&self, took: std::time::Duration);
    /// Appended entries were written to the log (not yet synced): a leader's appends, whose
    /// flush the WAL sync thread does.
    fn appended(&self, _took: std::time::Duration) {}
    /// Appended entries became durable, `took` after they were written; for an append synced
    /// in the call (a follower's), `took` after the call began.
    fn durable(&self, _took: std::time::Duration) {}
    /// Committed entries were applied to the state machine, producing `events` (in revision
    /// order, written to the history; told before the applied revision is published). Called
    /// from the state machine's one applying task, so calls come in revision order.
    fn applied(&self, _took: std::time::Duration, _events: &[switchyard_protocol::Event]) {}
}

/// Whether `path` holds a coordinator's data (it was opened, and stamped, before).
pub fn holds_data(path: &std::path::Path) -> bool {
    path.join("db").join("CURRENT").exists()
}

pub fn open(path: &std::path::Path, node_id: NodeId) -> Result<(LogStore, StateMachineStore), StoreError> {
    let dir = DataDir::open(path, node_id)?;
    let sm = StateMachineStore::open(dir.clone())?;
    Ok((LogStore::new(dir), sm))
}
