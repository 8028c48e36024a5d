//! A host's lease, as its agent keeps it, and the self-fencing it decides. The leader's side of
//! the same lease (when a silent host is declared failed) is [`crate::ha::liveness_commands`];
//! the two are the timing argument's halves, and both are pure: the agent passes its own
//! monotonic clock's readings.
//!
//! Every report to the leader is a lease renewal. The leader acknowledges one only after a
//! quorum confirmed it still leads, and answers how long the renewal holds (`fence_after_ms`,
//! the coordinators' `ha.lease_ms - ha.fence_margin_ms`) and whether the log says this host
//! failed. The agent measures the lease from when it *sent* the renewal, on its monotonic
//! clock: the leader received it later, so the leader's lease (measured from receipt, plus a
//! grace, before it may declare the host failed) always ends after the agent's. The argument
//! in full is in ARCHITECTURE.md ("Failover and fencing").
//!
//! - [`Fence::Held`]: an acknowledged renewal is in force and the host is not failed. Packaged
//!   guests may start here.
//! - [`Fence::Unknown`]: the agent has just started and no renewal was acknowledged yet.
//!   Packaged guests that run keep running, none starts.
//! - [`Fence::Lost`]: the lease ran out, or the log says the host failed. Every packaged guest
//!   here is stopped hard: the cluster may start it elsewhere.
//!
//! Guests without a package are never failed over, so they are never fenced.

use std::time::{Duration, Instant};

use crate::api::LeaseGrant;

/// How long an agent that has had no renewal acknowledged since it started keeps its packaged
/// guests running: the default `ha.lease_ms - ha.fence_margin_ms` of the coordinators. (A
/// guest that outlived its agent for longer has been killed by the host's watchdog.)
pub const UNACKNOWLEDGED_FENCE_AFTER: Duration = Duration::from_millis(3000);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    Held,
    Unknown,
    Lost,
}

/// The lease as far as acknowledged renewals tell.
#[derive(Clone, Copy, Debug)]
pub struct Lease {
    started: Instant,
    /// When the newest acknowledged renewal stops holding.
    valid_until: Option<Instant>,
    /// When the renewal whose answer set `failed` was sent (answers can arrive out of order).
    answered_sent: Option<Instant>,
    failed: bool,
}

impl Lease {
    /// A lease with no acknowledged renewal yet, at the agent's start.
    pub fn new(now: Instant) -> Lease {
        Lease { started: now, valid_until: None, answered_sent: None, failed: false }
    }

    /// A renewal sent at `sent` was acknowledged with `grant`.
    pub fn renewed(&mut self, sent: Instant, grant: LeaseGrant) {
        let until = sent + Duration::from_millis(grant.fence_after_ms);
        self.valid_until = Some(self.valid_until.map_or(until, |v| v.max(until)));
        if self.answered_sent.is_none_or(|a| sent >= a) {
            self.answered_sent = Some(sent);
            self.failed = grant.failed;
        }
    }

    pub fn fence(&self, now: Instant) -> Fence {
        if self.failed {
            return Fence::Lost;
        }
        match self.valid_until {
            Some(until) if now < until => Fence::Held,
            Some(_) => Fence::Lost,
            None if now < self.started + UNACKNOWLEDGED_FENCE_AFTER => Fence::Unknown,
            None => Fence::Lost,
        }
    }

    /// When the fence changes next without any new answer.
    pub fn next_change(&self, now: Instant) -> Option<Instant> {
        if self.failed {
            return None;
        }
        let at = self.valid_until.unwrap_or(self.started + UNACKNOWLEDGED_FENCE_AFTER);
        (at > now).then_some(at)
    }

    /// How long the lease holds from `now` (zero unless held).
    pub fn remaining(&self, now: Instant) -> Duration {
        match (self.fence(now), self.valid_until) {
            (Fence::Held, Some(until)) => until - now,
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(ms: u64, failed: bool) -> LeaseGrant {
        LeaseGrant { fence_after_ms: ms, failed }
    }

    #[test]
    fn the_lease_runs_from_the_send_instant_of_the_newest_acknowledged_renewal() {
        let t0 = Instant::now();
        let mut l = Lease::new(t0);
        assert_eq!(l.fence(t0), Fence::Unknown);
        assert_eq!(l.fence(t0 + UNACKNOWLEDGED_FENCE_AFTER), Fence::Lost);
        l.renewed(t0 + Duration::from_millis(100), grant(3000, false));
        assert_eq!(l.fence(t0 + Duration::from_millis(3099)), Fence::Held);
        assert_eq!(l.fence(t0 + Duration::from_millis(3100)), Fence::Lost);
        assert_eq!(l.next_change(t0 + Duration::from_millis(200)), Some(t0 + Duration::from_millis(3100)));
        // An older renewal answered late never shortens the lease.
        l.renewed(t0, grant(3000, false));
        assert_eq!(l.fence(t0 + Duration::from_millis(3050)), Fence::Held);
        assert_eq!(l.remaining(t0 + Duration::from_millis(3000)), Duration::from_millis(100));
    }

    #[test]
    fn a_failed_host_is_fenced_until_a_newer_answer_readmits_it() {
        let t0 = Instant::now();
        let mut l = Lease::new(t0);
        l.renewed(t0 + Duration::from_millis(10), grant(3000, true));
        assert_eq!(l.fence(t0 + Duration::from_millis(20)), Fence::Lost);
        // A late answer to an earlier renewal does not clear it.
        l.renewed(t0, grant(3000, false));
        assert_eq!(l.fence(t0 + Duration::from_millis(20)), Fence::Lost);
        l.renewed(t0 + Duration::from_millis(30), grant(3000, false));
        assert_eq!(l.fence(t0 + Duration::from_millis(40)), Fence::Held);
    }
}
