//! The leader's tasks. They run on every coordinator and act only while it leads; each decides
//! from the committed state (and what agents reported) and changes nothing but by proposals.
//!
//! They learn of leadership from Raft's server metrics (role, vote, leader, membership), which
//! change only when leadership does, and of the state from the applied revision: Raft's full
//! metrics change several times per write (appended, flushed, committed, applied, on every
//! node), and a task woken by each of them costs every write a few wake-ups for nothing.

pub mod drain;
pub mod driver;
pub mod failover;
pub mod liveness;
