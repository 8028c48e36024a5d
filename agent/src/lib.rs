//! # switchyard-agent
//!
//! The VM-host agent: it follows the coordinators' event history and keeps this host's copy of
//! every guest's configuration identical to the cluster's.
//!
//! Built so far: [`store`], the durable applied state (atomic per-guest files and the cursor),
//! using `switchyard_protocol::hostconfig` for what each event changes and for the digest the
//! coordinators compare. Still to come (see ARCHITECTURE.md, "Status"): the daemon loop
//! (subscribe from the cursor, re-sync after a `compacted` answer), heartbeats and reports, and
//! the hypervisor drivers.

pub mod store;
