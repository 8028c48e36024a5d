//! # switchyard-protocol
//!
//! Everything the coordinators, agents and tools must agree on, and nothing that does I/O:
//!
//! - [`model`]: the domain (hosts, guests, packages, migrations, phases);
//! - [`command`] and [`event`]: what clients ask for and what the log records;
//! - [`apply()`]: the pure, deterministic state-machine step, and [`state`]: the state it folds;
//! - [`rejection`]: why a command was refused, with stable codes;
//! - [`codec`]: the one home of binary encoding and of sealed (versioned, checksummed) records;
//! - [`frame`]: the frames of the Raft streams between coordinators.
//!
//! Architecture invariant: this crate never reads a clock, a random source, a file or a socket.
//! Replicas stay identical because `apply` is a function of (state, proposal) alone.

pub mod api;
pub mod apply;
pub mod codec;
pub mod command;
pub mod entry;
pub mod event;
pub mod frame;
pub mod ha;
pub mod hostconfig;
pub mod lease;
pub mod limits;
pub mod model;
pub mod name;
pub mod placement;
pub mod reconcile;
pub mod rejection;
pub mod secret;
pub mod state;
#[cfg(test)]
mod testing;
pub mod text;
pub mod timefmt;

pub use apply::{apply, Applied, ApplyResult};
pub use command::{Command, GuestPatch, HostPatch, Proposal};
pub use event::{Event, EventKind, EventPayload};
pub use model::*;
pub use name::{Name, NameError};
pub use rejection::Rejection;
pub use state::{ClusterState, Replay, RevisionRange};
