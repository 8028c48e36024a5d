//! # switchyard-coordinator
//!
//! The coordinator daemon (`switchyard-coordinator`). Layers, each importing only those above it:
//!
//! 1. [`config`], [`clock`]: what the node is told and where its time comes from;
//! 2. what the node holds: the [`proposer`] (every write into Raft), agents' reports
//!    ([`liveness`], and [`migration`] with the driver's pure decisions), the recent event
//!    frames ([`stream`]), the [`metrics`];
//! 3. [`node`]: the service context every part shares, with its own error type;
//! 4. the node's work: [`feed`] (one subscription), [`leader`] (the liveness task and the
//!    migration driver), and over the Raft RPC ([`network`], [`raft_server`]) the [`handover`]
//!    of leadership on a graceful stop and the [`backfill`] of the history after a snapshot
//!    install; [`observe`] (what `/metrics` counts); the [`listener`]s both servers accept on (TLS, the
//!    client certificate's identity, the connection bound);
//! 5. [`api`]: the operator HTTP/JSON API, by noun; it maps the node's errors to HTTP;
//!    [`ui`], the operator console, calls the API in-process and nothing below it;
//! 6. [`server`] starts and stops all of it; [`daemon`] is the binary's command line.
//!
//! `tests/module_graph.rs` holds the modules to this: no import cycle, and nothing below the
//! API imports it.
//!
//! Architecture invariant: only the API and the leader's tasks (liveness, migration driver) turn
//! intentions into proposals, and none changes state itself: every change goes through Raft and
//! the pure state machine.

pub mod api;
pub mod backfill;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod feed;
pub mod handover;
pub mod leader;
pub mod listener;
pub mod liveness;
pub mod metrics;
pub mod migration;
pub mod network;
pub mod node;
pub mod observe;
pub mod proposer;
pub mod raft_server;
pub mod server;
pub mod stream;
pub mod ui;
