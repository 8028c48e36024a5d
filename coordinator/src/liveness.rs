//! Host liveness, held by the leader in memory: the last report of each host's agent. Only
//! *transitions* reach the log (a host became unreachable, or reachable again), never each
//! report (SPEC §4).
//!
//! A new leader knows no reports yet; it counts its own start of leadership as every host's last
//! sighting, so a leader change never marks a healthy host unreachable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchyard_protocol::api::{HostReport, HostSync, HypervisorReport, SyncStatus};
use switchyard_protocol::{ClusterState, Host, Name};

/// A sighting of a host's agent (`report: None` for the leader's own start).
pub use switchyard_protocol::ha::Sighting as Seen;

/// The leader's view of agent reports.
#[derive(Default)]
pub struct Liveness {
    seen: Mutex<HashMap<Name, Seen>>,
    /// Hosts whose `DeclareHostFailed` this leader has proposed and not yet seen applied. A
    /// renewal answered meanwhile says `failed`: granting it would let the host keep its guests
    /// for a whole lease after the failure commits and a failover starts them elsewhere (found
    /// by the simulation's host leases). Guarded with `seen`, so a renewal either lands before
    /// the declaration (which is then dropped) or is answered `failed`.
    declaring: Mutex<std::collections::HashSet<Name>>,
    /// The last hypervisor report of each host whose agent sends one.
    hypervisor: Mutex<HashMap<Name, HypervisorReport>>,
    /// When this node last became leader.
    leader_since: Mutex<Option<Instant>>,
}

impl Liveness {
    /// Notes whether this node leads now (a new leader gives every host a fresh sighting).
    pub fn set_leader(&self, leader: bool) {
        let mut since = self.leader_since.lock().expect("liveness lock");
        match (leader, since.is_some()) {
            (true, false) => *since = Some(Instant::now()),
            (false, true) => {
                *since = None;
                self.declaring.lock().expect("liveness lock").clear();
            }
            _ => {}
        }
    }
}

impl Liveness {
    /// Notes a renewal; answers whether this leader is declaring the host failed (the renewal
    /// must then be answered `failed`).
    pub fn record(&self, host: &Name, r: &HostReport) -> bool {
        let seen = Seen { at: Instant::now(), report: Some((r.applied_revision, r.digest)) };
        let declaring = {
            let mut all = self.seen.lock().expect("liveness lock");
            all.insert(host.clone(), seen);
            self.declaring.lock().expect("liveness lock").contains(host)
        };
        if let Some(h) = &r.hypervisor {
            self.hypervisor.lock().expect("liveness lock").insert(host.clone(), h.clone());
        }
        declaring
    }

    /// Begins declaring `host` failed, decided on its last report `decided_on`: refused (false)
    /// when a newer renewal arrived since, which the declaration would overrule.
    pub fn begin_declaring(&self, host: &Name, decided_on: Option<Seen>) -> bool {
        let all = self.seen.lock().expect("liveness lock");
        if all.get(host).map(|s| s.at) != decided_on.map(|s| s.at) {
            return false;
        }
        self.declaring.lock().expect("liveness lock").insert(host.clone());
        true
    }

    /// Forgets the declarations the state now shows (a failed host's renewals are answered
    /// `failed` from the state), or that will not come (`failed` says which host is failed).
    pub fn declared(&self, failed: impl Fn(&Name) -> bool) {
        self.declaring.lock().expect("liveness lock").retain(|h| !failed(h));
    }

    /// The last report `host`'s agent made to this node while it led, if any.
    pub fn last_report(&self, host: &Name) -> Option<Seen> {
        self.seen.lock().expect("liveness lock").get(host).copied()
    }

    /// When `host` was last seen: its last report, or this node's start of leadership if later
    /// (a new leader counts that as every host's last sighting).
    pub fn last_seen(&self, host: &Name) -> Option<Seen> {
        let own = self.seen.lock().expect("liveness lock").get(host).copied();
        let since = self.leader_since.lock().expect("liveness lock").map(|at| Seen { at, report: None });
        match (own, since) {
            (Some(o), Some(s)) if s.at > o.at => Some(Seen { at: s.at, report: o.report }),
            (Some(o), _) => Some(o),
            (None, s) => s,
        }
    }

    /// The sync status of `host` against `state` (call on the leader).
    pub fn sync(&self, host: &Host, state: &ClusterState, digest: u64, timeout: Duration) -> HostSync {
        let seen = self.seen.lock().expect("liveness lock").get(&host.spec.name).copied();
        let Some(seen) = seen else {
            return HostSync {
                status: SyncStatus::Unknown,
                applied_revision: None,
                last_report_ms_ago: None,
                hypervisor: None,
            };
        };
        let ago = seen.at.elapsed();
        let (rev, d) = seen.report.expect("recorded sightings carry a report");
        let status = if ago > timeout {
            SyncStatus::Silent
        } else if rev < state.revision() {
            SyncStatus::Lagging { behind: state.revision() - rev }
        } else if d == digest {
            SyncStatus::InSync
        } else {
            SyncStatus::Diverged
        };
        let hypervisor = self.hypervisor.lock().expect("liveness lock").get(&host.spec.name).cloned();
        HostSync { status, applied_revision: Some(rev), last_report_ms_ago: Some(ago.as_millis() as u64), hypervisor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> HostReport {
        HostReport { applied_revision: 1, digest: 0, hypervisor: None }
    }

    #[test]
    fn a_renewal_during_a_declaration_is_answered_failed_and_one_before_it_cancels_it() {
        let h = Name::new("h1").unwrap();
        let l = Liveness::default();
        l.set_leader(true);
        assert!(!l.record(&h, &report()));
        let decided_on = l.last_report(&h);
        // A renewal after the decision (once the clock has moved): the declaration is dropped,
        // the renewal granted.
        let t = Instant::now();
        while Instant::now() == t {}
        assert!(!l.record(&h, &report()));
        assert!(!l.begin_declaring(&h, decided_on));
        // No renewal in between: declared; renewals are answered failed until the state shows
        // the failure, or this node stops leading.
        let decided_on = l.last_report(&h);
        assert!(l.begin_declaring(&h, decided_on));
        assert!(l.record(&h, &report()));
        l.declared(|_| false);
        assert!(l.record(&h, &report()));
        l.declared(|x| *x == h);
        assert!(!l.record(&h, &report()));
        let decided_on = l.last_report(&h);
        assert!(l.begin_declaring(&h, decided_on));
        l.set_leader(false);
        assert!(!l.record(&h, &report()));
    }
}
