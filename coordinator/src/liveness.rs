//! Host liveness, held by the leader in memory: the last report of each host's agent. Only
//! *transitions* reach the log (a host became unreachable, or reachable again), never each
//! report (SPEC §4).
//!
//! The lease bookkeeping and its decisions are `protocol::ha::Leases` (pure, tested there and
//! run by the simulation); this wraps it for the API's handlers and the leader's task, and
//! keeps what only the API shows (hypervisor reports, sync status).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchyard_protocol::api::{HostReport, HostSync, HypervisorReport, SyncStatus};
use switchyard_protocol::ha::{Leases, LivenessTimes};
use switchyard_protocol::{ClusterState, Command, Host, Name};

/// The leader's view of agent reports.
#[derive(Default)]
pub struct Liveness {
    /// Renewals and declarations in flight, behind one lock so that a renewal is ordered
    /// against a decision ([`Leases`]).
    leases: Mutex<Leases>,
    /// The last hypervisor report of each host whose agent sends one.
    hypervisor: Mutex<HashMap<Name, HypervisorReport>>,
}

impl Liveness {
    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().expect("liveness lock")
    }

    /// Notes whether this node leads now (a new leader gives every host a fresh sighting).
    pub fn set_leader(&self, leader: bool) {
        self.leases().set_leader(leader, Instant::now());
    }

    /// Notes a renewal; answers whether this leader is declaring the host failed (the renewal
    /// must then be answered `failed`).
    pub fn record(&self, host: &Name, r: &HostReport) -> bool {
        let declaring = self.leases().renewed(host, (r.applied_revision, r.digest), Instant::now());
        if let Some(h) = &r.hypervisor {
            self.hypervisor.lock().expect("liveness lock").insert(host.clone(), h.clone());
        }
        declaring
    }

    /// What this leader commits about its hosts now (`ha::Leases::decide`).
    pub fn decide(&self, st: &ClusterState, times: &LivenessTimes, leader: u64) -> Vec<Command> {
        self.leases().decide(st, Instant::now(), times, leader)
    }

    /// The state refused this leader's declaration of `host`.
    pub fn refused(&self, host: &Name) {
        self.leases().refused(host);
    }

    /// The sync status of `host` against `state` (call on the leader).
    pub fn sync(&self, host: &Host, state: &ClusterState, digest: u64, timeout: Duration) -> HostSync {
        let seen = self.leases().last_renewal(&host.spec.name);
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
