//! # switchyard-agent
//!
//! The VM-host agent: it follows the coordinators' event history and keeps this host's copy of
//! every guest's configuration identical to the cluster's.
//!
//! - [`store`]: the durable applied state (atomic per-guest files and the cursor);
//! - [`daemon`]: subscribe from the cursor, apply, re-sync from full state after a `compacted`
//!   answer, report (applied revision, digest) to the leader;
//! - [`migrations`]: this host's part in migrations (transfer, confirm, move back after a
//!   rollback), fenced and de-duplicated by (migration, phase token);
//! - [`reconcile`]: the pure decisions of a reconciler: desired state (the log) against observed
//!   state (the hypervisor) → actions;
//! - [`driver`]: the hypervisor drivers behind one trait (simulated, external commands), and
//!   the `qemu` driver (real QEMU processes over QMP);
//! - [`lease`]: this host's lease, renewed by every report, and the self-fencing it decides;
//! - [`watchdog`]: the host watchdog that kills the guests of a hung agent;
//! - [`metrics`]: the agent's own metrics and the listener that serves them.
//!
//! What each event changes and the digest come from `switchyard_protocol::hostconfig`, the one
//! home shared with the coordinators.

pub mod daemon;
pub mod driver;
pub mod lease;
pub mod metrics;
pub mod migrations;
pub mod reconcile;
pub mod store;
pub mod watchdog;
