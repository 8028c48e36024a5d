//! The leader's tasks. They run on every coordinator and act only while it leads; each decides
//! from the committed state (and what agents reported) and changes nothing but by proposals.

pub mod drain;
pub mod driver;
pub mod failover;
pub mod liveness;
