//! Where the proposer's time and randomness come from. The state machine never reads either;
//! the proposer stamps them into each proposal. Behind a trait so a deterministic simulation can
//! drive a coordinator with a fake clock and a seeded random source.

use switchyard_protocol::{RequestId, Timestamp};

pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time to stamp into a proposal.
    fn now(&self) -> Timestamp;
    /// A fresh request id for a client that did not send one.
    fn request_id(&self) -> RequestId;
}

/// The real clock and the thread-local random generator.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        Timestamp(since.map(|d| d.as_millis() as u64).unwrap_or(0))
    }

    fn request_id(&self) -> RequestId {
        RequestId(rand::random())
    }
}
