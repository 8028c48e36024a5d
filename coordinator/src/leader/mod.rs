//! The leader's tasks. They run on every coordinator and act only while it leads; each decides
//! from the committed state (and what agents reported) and changes nothing but by proposals.
//!
//! They learn of leadership from Raft's server metrics (role, vote, leader, membership), which
//! change only when leadership does, and of the state from the applied revision: Raft's full
//! metrics change several times per write (appended, flushed, committed, applied, on every
//! node), and a task woken by each of them costs every write a few wake-ups for nothing.

pub mod drain;
pub mod driver;
pub mod failover;
pub mod liveness;

use std::time::Duration;

use tokio::time::Instant;

/// Least time between two passes of a leader task that looks at the whole state (failover,
/// drain) when revisions keep coming: a pass costs in proportion to what it looks at (a failed
/// host's guests, a drained host's), and under a steady stream of writes one per revision would
/// cost that at every write. A revision after a quiet spell is looked at at once; those of a busy
/// spell wait at most this long, and are looked at together.
pub const PASS_SPACING: Duration = Duration::from_millis(20);

/// When a task's last pass began: [`Pace::wait`] spaces the next [`PASS_SPACING`] after it.
#[derive(Default)]
pub struct Pace {
    last: Option<Instant>,
}

impl Pace {
    /// Waits until the next pass may begin, then notes that it begins. `seen` is the revision
    /// watch that woke the task: revisions applied during the wait are marked seen, as the
    /// pass about to begin looks at them.
    pub async fn wait(&mut self, seen: &mut tokio::sync::watch::Receiver<switchyard_protocol::Revision>) {
        if let Some(last) = self.last {
            tokio::time::sleep_until(last + PASS_SPACING).await;
        }
        seen.borrow_and_update();
        self.last = Some(Instant::now());
    }
}
