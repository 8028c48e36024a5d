//! This host's lease and the self-fencing it decides: `switchyard_protocol::lease`, kept beside
//! the leader's side of the timing argument (`switchyard_protocol::ha`).
pub use switchyard_protocol::lease::{Fence, Lease};
