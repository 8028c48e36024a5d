//! The reconciler: its decisions are `switchyard_protocol::reconcile` (pure, so that the
//! simulation runs the same code against its simulated hypervisors); [`runtime`] feeds it from
//! the log, the lease and the hypervisor, and performs what it decides.

pub use switchyard_protocol::reconcile::*;

pub mod runtime;
