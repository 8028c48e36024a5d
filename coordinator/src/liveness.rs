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
            (false, true) => *since = None,
            _ => {}
        }
    }
}

impl Liveness {
    pub fn record(&self, host: &Name, r: &HostReport) {
        let seen = Seen { at: Instant::now(), report: Some((r.applied_revision, r.digest)) };
        self.seen.lock().expect("liveness lock").insert(host.clone(), seen);
        if let Some(h) = &r.hypervisor {
            self.hypervisor.lock().expect("liveness lock").insert(host.clone(), h.clone());
        }
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
