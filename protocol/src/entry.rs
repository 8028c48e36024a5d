//! What one Raft log entry of the coordinators carries and answers, and how a coordinator is
//! reached. The Raft types themselves (`TypeConfig`) live with the store that persists them
//! (`switchyard-storage`); these plain values live here so that everything that speaks the
//! coordinators' Raft — the store, the coordinator, the deterministic simulation — shares one
//! definition without depending on RocksDB.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{ApplyResult, Proposal};

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
