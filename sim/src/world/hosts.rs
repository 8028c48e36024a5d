//! VM hosts' leases, and the leader's failure detection over them: the half of the fencing
//! argument (ARCHITECTURE.md, "Failover and fencing") that coordinator faults can break.
//!
//! Each host renews its lease with the leader every [`RENEW`]: the leader answers only once
//! `ensure_linearizable` confirmed it still leads, and notes the renewal on its own monotonic
//! clock, as the coordinator's API does. The host keeps the lease with the real
//! `protocol::lease::Lease` on its own clock, from when it sent the renewal. Every coordinator
//! that leads runs the real `ha::liveness_commands` on its clock (a new leader counting its
//! start as every host's last renewal) and commits what it answers. Host faults: a crash (its
//! agent starts again with a fresh lease) and a cut from the coordinators.
//!
//! A leader answers a renewal `failed` while its own `HostFailed` of the host is in flight, as
//! the coordinator does (`coordinator::liveness::Liveness::record`). Without that, a renewal
//! granted between the decision and the commit kept the host's lease for a whole term after the
//! failure (seeds 2, 32 and 56 of the first version of this check).
//!
//! Checked: once a `HostFailed` a leader proposed is committed, the host's own lease no longer
//! holds (or the host is down). Otherwise the failover that follows could start a second copy
//! of a guest that still runs there. A leader whose monotonic clock leaped ahead (the "clock
//! leap" fault) is outside the argument, which assumes clocks that never run ahead of real time
//! by more than their drift: its declarations are noted, not checked.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use switchyard_protocol::api::LeaseGrant;
use switchyard_protocol::entry::Proposals;
use switchyard_protocol::ha::{self, LivenessTimes, Sighting};
use switchyard_protocol::lease::{Fence, Lease};
use switchyard_protocol::model::Timestamp;
use switchyard_protocol::{Command, Name, Proposal};

use super::{name, now_ms, World, HOSTS};
use crate::runtime::{node_now, sim_elapsed, with_rng};
use crate::Lock;

/// How often a host renews its lease.
pub(super) const RENEW: Duration = Duration::from_millis(100);
/// The leader's timings, scaled down from the defaults (lease 4 s, grace 1 s, margin 1 s) so
/// that a run sees many leases expire.
const TIMES: LivenessTimes = LivenessTimes {
    lease: Duration::from_millis(800),
    grace: Duration::from_millis(200),
    report_timeout: Duration::from_millis(1500),
};
/// `lease − margin`: how long a renewal holds on the host.
const FENCE_AFTER_MS: u64 = 600;

/// One host's agent as the simulation keeps it.
pub(super) struct HostSim {
    pub up: bool,
    /// Open cuts from the coordinators (windows may overlap).
    pub cut: u32,
    /// Counts the agent's starts: a renewal answered to an earlier one is not taken.
    pub incarnation: u64,
    pub lease: Lease,
}

/// A coordinator's view of the hosts while it leads (reset when it restarts).
#[derive(Default)]
struct NodeView {
    epoch: u64,
    leader_since: Option<Instant>,
    reports: BTreeMap<Name, Sighting>,
    /// Hosts whose failure this leader proposed and has not seen applied: their renewals are
    /// answered `failed` (as `coordinator::liveness::Liveness` does).
    declaring: std::collections::BTreeSet<Name>,
}

pub(super) struct Hosts {
    /// The origin of every clock reading handed to the real code (only differences matter).
    base: Instant,
    pub hosts: Vec<HostSim>,
    views: BTreeMap<u64, NodeView>,
    /// When each coordinator's clock last leaped (simulated time).
    pub leaped: BTreeMap<u64, Duration>,
}

/// The clock id of host `i` (coordinators are 1–5).
fn clock(i: usize) -> u64 {
    101 + i as u64
}

impl Hosts {
    pub(super) fn new() -> Hosts {
        let base = Instant::now();
        let hosts =
            HOSTS.iter().map(|_| HostSim { up: true, cut: 0, incarnation: 0, lease: Lease::new(base) }).collect();
        Hosts { base, hosts, views: BTreeMap::new(), leaped: BTreeMap::new() }
    }

    /// Clock `id` now, as an `Instant` for the real code.
    fn instant(&self, id: u64) -> Instant {
        self.base + node_now(id)
    }

    /// Host `i` starts again after a crash: a new agent, with no renewal acknowledged yet.
    pub(super) fn restart(&mut self, i: usize) {
        let now = self.instant(clock(i));
        let h = &mut self.hosts[i];
        h.up = true;
        h.incarnation += 1;
        h.lease = Lease::new(now);
    }
}

impl World {
    /// Host `i`'s agent renews its lease until `until`.
    pub(super) async fn host(&self, i: usize, until: Duration) {
        let host = name(HOSTS[i]);
        while sim_elapsed() < until {
            tokio::time::sleep(RENEW).await;
            let (up, cut, incarnation) = {
                let h = &self.hosts.locked().hosts[i];
                (h.up, h.cut, h.incarnation)
            };
            if !up || cut > 0 {
                continue;
            }
            let Some(n) = self.leader() else { continue };
            let Some((epoch, raft)) = self.raft(n) else { continue };
            let sent = self.hosts.locked().instant(clock(i));
            let confirmed = tokio::time::timeout(Duration::from_millis(300), raft.ensure_linearizable()).await;
            if !matches!(confirmed, Ok(Ok(_))) || self.raft(n).map(|r| r.0) != Some(epoch) {
                continue;
            }
            let (failed, revision) = {
                let disk = self.disks[&n].locked();
                let c = &disk.live().sm.cluster;
                (c.host_failure(&host).is_some(), c.revision())
            };
            let declaring = {
                let mut hs = self.hosts.locked();
                let at = hs.instant(n);
                let view = hs.views.entry(n).or_default();
                if view.epoch == epoch {
                    view.reports.insert(host.clone(), Sighting { at, report: Some((revision, 0)) });
                }
                view.declaring.contains(&host)
            };
            // The answer's way back.
            tokio::time::sleep(with_rng(|r| r.millis(0, 20))).await;
            let mut hs = self.hosts.locked();
            let h = &mut hs.hosts[i];
            if h.up && h.cut == 0 && h.incarnation == incarnation {
                h.lease.renewed(sent, LeaseGrant { fence_after_ms: FENCE_AFTER_MS, failed: failed || declaring });
            }
        }
    }

    /// Every leader's failure detection, until `until`.
    pub(super) async fn detect_failures(&self, until: Duration) {
        while sim_elapsed() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
            for n in self.running() {
                let Some((epoch, raft)) = self.raft(n) else { continue };
                let leads = raft.metrics().borrow().state == openraft::ServerState::Leader;
                let commands = {
                    let mut hs = self.hosts.locked();
                    let now = hs.instant(n);
                    let view = hs.views.entry(n).or_default();
                    if view.epoch != epoch {
                        *view = NodeView { epoch, ..Default::default() };
                    }
                    match (leads, view.leader_since) {
                        (true, None) => view.leader_since = Some(now),
                        (false, Some(_)) => {
                            view.leader_since = None;
                            view.declaring.clear();
                        }
                        _ => {}
                    }
                    if !leads {
                        continue;
                    }
                    let since = view.leader_since.map(|at| Sighting { at, report: None });
                    let disk = self.disks[&n].locked();
                    let st = &disk.live().sm.cluster;
                    view.declaring.retain(|h| st.host_failure(h).is_none());
                    let mut commands = Vec::new();
                    for host in st.hosts() {
                        let report = view.reports.get(&host.spec.name).copied();
                        // As `coordinator::liveness::Liveness::last_seen`: the later of the two.
                        let seen = match (report, since) {
                            (Some(r), Some(s)) if s.at > r.at => Some(Sighting { at: s.at, report: r.report }),
                            (Some(r), _) => Some(r),
                            (None, s) => s,
                        };
                        commands.extend(ha::liveness_commands(st, host, seen, report, now, &TIMES, n));
                    }
                    for c in &commands {
                        if let Command::DeclareHostFailed { host, .. } = c {
                            view.declaring.insert(host.clone());
                        }
                    }
                    commands
                };
                for command in commands {
                    let declared = match &command {
                        Command::DeclareHostFailed { host, .. } => Some(host.clone()),
                        _ => None,
                    };
                    let proposal = Proposal {
                        request_id: self.request_id(),
                        actor: format!("leader:{n}"),
                        time: Timestamp(self.wall_ms(n)),
                        command,
                    };
                    let answer =
                        tokio::time::timeout(Duration::from_millis(1500), raft.client_write(Proposals(vec![proposal])))
                            .await;
                    let committed = matches!(&answer, Ok(Ok(r)) if r.data.results.first().is_some_and(|x| x.is_ok()));
                    if let (Some(host), true) = (declared, committed) {
                        self.check_fenced(n, &host);
                    }
                }
            }
        }
    }

    /// A committed `HostFailed` of `host` by leader `n`: the host's lease must have run out.
    fn check_fenced(&self, n: u64, host: &Name) {
        let Some(i) = HOSTS.iter().position(|h| *h == host.as_str()) else { return };
        let hs = self.hosts.locked();
        let h = &hs.hosts[i];
        let now = hs.instant(clock(i));
        let held = h.up && h.lease.fence(now) == Fence::Held;
        let leaped = hs.leaped.get(&n).is_some_and(|at| sim_elapsed().saturating_sub(*at) < TIMES.lease * 3);
        let remaining = h.lease.remaining(now).as_millis();
        drop(hs);
        match (held, leaped) {
            (false, _) => self.note(format!("n{n} declared {host} failed; its lease had run out")),
            (true, true) => self.note(format!(
                "n{n} declared {host} failed while its lease held {remaining} ms more; n{n}'s clock leaped (outside the model)"
            )),
            (true, false) => self.rec.locked().violation(format!(
                "at {} ms n{n} declared {host} failed while its lease held {remaining} ms more: a failover could start a second copy of its guests",
                now_ms()
            )),
        }
    }
}
