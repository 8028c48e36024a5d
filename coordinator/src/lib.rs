//! # switchyard-coordinator
//!
//! The coordinator daemon (`switchyard-coordinator`): a Raft node ([`node`]) with its peer RPC
//! ([`network`], [`raft_server`]), the operator HTTP/JSON API ([`api`]) and the leader's
//! migration driver ([`migration`]); and the operator CLI (`switchyard`, [`cli`]) with its HTTP client ([`client`]).
//!
//! Architecture invariant: only the API and the leader's tasks (liveness, migration driver) turn
//! intentions into proposals, and none changes state itself: every change goes through Raft and
//! the pure state machine.

pub mod api;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dev;
pub mod error;
pub mod events;
pub mod liveness;
pub mod migration;
pub mod network;
pub mod node;
pub mod proposer;
pub mod raft_server;
pub mod recovery;
pub mod timefmt;
