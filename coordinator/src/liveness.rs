//! Host liveness, held by the leader in memory: the last report of each host's agent. Only
//! *transitions* reach the log (a host became unreachable, or reachable again), never each
//! report (SPEC §4).
//!
//! A new leader knows no reports yet; it counts its own start of leadership as every host's last
//! sighting, so a leader change never marks a healthy host unreachable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use switchyard_protocol::api::{HostReport, HostSync, SyncStatus};
use switchyard_protocol::{ClusterState, Command, Host, Name, Proposal};

use crate::api::ApiState;

#[derive(Clone, Copy, Debug)]
struct Seen {
    at: Instant,
    report: Option<(u64, u64)>,
}

/// The leader's view of agent reports.
#[derive(Default)]
pub struct Liveness {
    seen: Mutex<HashMap<Name, Seen>>,
    /// When this node last became leader.
    leader_since: Mutex<Option<Instant>>,
}

impl Liveness {
    pub fn record(&self, host: &Name, r: &HostReport) {
        let seen = Seen { at: Instant::now(), report: Some((r.applied_revision, r.digest)) };
        self.seen.lock().expect("liveness lock").insert(host.clone(), seen);
    }

    fn last_seen(&self, host: &Name) -> Option<Seen> {
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
            return HostSync { status: SyncStatus::Unknown, applied_revision: None, last_report_ms_ago: None };
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
        HostSync { status, applied_revision: Some(rev), last_report_ms_ago: Some(ago.as_millis() as u64) }
    }
}

/// Runs on every coordinator; acts only while it is the leader: proposes reachability
/// transitions for hosts whose agents went silent or came back.
pub async fn run(s: Arc<ApiState>, liveness: Arc<Liveness>) {
    let timeout = Duration::from_millis(s.config.api.host_report_timeout_ms);
    let mut tick = tokio::time::interval(timeout / 4);
    let mut metrics = s.raft.metrics();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = metrics.changed() => if changed.is_err() { return },
        }
        let leader = metrics.borrow().state == ServerState::Leader;
        {
            let mut since = liveness.leader_since.lock().expect("liveness lock");
            match (leader, since.is_some()) {
                (true, false) => *since = Some(Instant::now()),
                (false, true) => *since = None,
                _ => {}
            }
        }
        if !leader || s.sm.read(|st| st.importing().is_some()) {
            continue;
        }
        let hosts: Vec<Host> = s.sm.read(|st| st.hosts().cloned().collect());
        for h in hosts {
            let name = &h.spec.name;
            let Some(seen) = liveness.last_seen(name) else { continue };
            let silent = seen.at.elapsed() > timeout;
            let reported = seen.report.is_some() && !silent;
            let change = if h.reachable && silent {
                Some(false)
            } else if !h.reachable && reported {
                Some(true)
            } else {
                None
            };
            if let Some(reachable) = change {
                let p = Proposal {
                    request_id: s.clock().request_id(),
                    actor: format!("leader:{}", s.id),
                    time: s.clock().now(),
                    command: Command::SetHostReachable { host: name.clone(), reachable },
                };
                match s.proposer.propose(p).await {
                    Ok(_) => tracing::info!(host = %name, reachable, "host reachability changed"),
                    Err(e) => tracing::warn!(host = %name, %e, "could not record host reachability"),
                }
            }
        }
    }
}
