//! # switchyard-coordinator
//!
//! The coordinator daemon (`switchyard-coordinator`): a Raft node ([`node`]) with its peer RPC
//! ([`network`], [`raft_server`]) and the operator HTTP/JSON API ([`api`]); and the
//! operator CLI (`switchyard`, [`cli`]) with its HTTP client ([`client`]).
//!
//! Architecture invariant: only the API turns requests into proposals, and it never changes
//! state itself: every change goes through Raft and the pure state machine.

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
pub mod network;
pub mod node;
pub mod raft_server;
