//! VM hosts' leases, and the leader's failure detection over them: the half of the fencing
//! argument (ARCHITECTURE.md, "Failover and fencing") that coordinator faults can break.
//!
//! Each host renews its lease with the leader every [`RENEW`]: the leader answers only once
//! `ensure_linearizable` confirmed it still leads, and notes the renewal on its own monotonic
//! clock, as the coordinator's API does. The host keeps the lease with the real
//! `protocol::lease::Lease` on its own clock, from when it sent the renewal. Every coordinator
//! keeps the real `ha::Leases` on its clock while it leads (a new leader counting its start as
//! every host's last renewal), as the coordinator does, and commits what it decides. Host
//! faults: a crash (its agent starts again with a fresh lease) and a cut from the coordinators.
//!
//! `Leases` answers a renewal `failed` while its own `HostFailed` of the host is in flight.
//! Without that, a renewal granted between the decision and the commit kept the host's lease
//! for a whole term after the failure (seeds 2, 32 and 56 of the first version of this check).
//!
//! Checked: once a `HostFailed` a leader proposed is committed, the host's own lease no longer
//! holds (or the host is down). Otherwise the failover that follows could start a second copy
//! of a guest that still runs there. A leader whose monotonic clock leaped ahead (the "clock
//! leap" fault) is outside the argument, which assumes clocks that never run ahead of real time
//! by more than their drift: its declarations are noted, not checked.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use switchyard_protocol::api::LeaseGrant;
use switchyard_protocol::entry::Proposals;
use switchyard_protocol::ha::{self, LivenessTimes};
use switchyard_protocol::lease::{Fence, Lease};
use switchyard_protocol::model::Timestamp;
use switchyard_protocol::{Command, FencingToken, Name, Proposal};

use super::hypervisor::{Machine, HA};
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
pub(super) const FENCE_AFTER_MS: u64 = 600;
/// How long a failover's target has to start the guest (the default 60 s, scaled).
const START_TIMEOUT: Duration = Duration::from_millis(1500);

/// One host's agent as the simulation keeps it.
pub(super) struct HostSim {
    pub up: bool,
    /// Open cuts from the coordinators (windows may overlap).
    pub cut: u32,
    /// Counts the agent's starts: a renewal answered to an earlier one is not taken.
    pub incarnation: u64,
    pub lease: Lease,
    /// Its hypervisor and agent (`hypervisor.rs`).
    pub machine: Machine,
}

/// A coordinator's memory of the hosts' renewals, as the coordinator keeps it (reset when it
/// restarts: `epoch` is its incarnation).
#[derive(Default)]
struct NodeView {
    epoch: u64,
    leases: ha::Leases,
    /// When this leader first saw each failover attempt (`ha::plan_failovers`).
    attempts: HashMap<FencingToken, Instant>,
}

pub(super) struct Hosts {
    /// The origin of every clock reading handed to the real code (only differences matter).
    base: Instant,
    pub hosts: Vec<HostSim>,
    views: BTreeMap<u64, NodeView>,
    /// When each coordinator's clock last leaped (simulated time).
    pub leaped: BTreeMap<u64, Duration>,
    /// Hosts a leader whose clock had leaped decided to declare failed while their lease held:
    /// until when (simulated time) their copies may still run. A second copy started meanwhile
    /// is outside the model, like the declaration.
    pub unfenced_until: BTreeMap<usize, Duration>,
}

/// The clock id of host `i` (coordinators are 1–5).
pub(super) fn clock(i: usize) -> u64 {
    101 + i as u64
}

impl Hosts {
    pub(super) fn new() -> Hosts {
        let base = Instant::now();
        let hosts = HOSTS
            .iter()
            .map(|h| HostSim {
                up: true,
                cut: 0,
                incarnation: 0,
                lease: Lease::new(base),
                machine: Machine::new(&name(h)),
            })
            .collect();
        Hosts { base, hosts, views: BTreeMap::new(), leaped: BTreeMap::new(), unfenced_until: BTreeMap::new() }
    }

    /// Clock `id` now, as an `Instant` for the real code.
    pub(super) fn instant(&self, id: u64) -> Instant {
        self.base + node_now(id)
    }

    /// Whether coordinator `n`'s clock leaped recently enough to matter for a lease.
    fn leaped(&self, n: u64) -> bool {
        self.leaped.get(&n).is_some_and(|at| sim_elapsed().saturating_sub(*at) < TIMES.lease * 3)
    }

    /// Leader `n` decided to declare `host` failed: if its clock leaped and the host's lease
    /// still holds, the host's copies may outlive the declaration.
    fn deciding(&mut self, n: u64, host: &Name) {
        let Some(i) = HOSTS.iter().position(|h| *h == host.as_str()) else { return };
        let left = self.hosts[i].lease.remaining(self.instant(clock(i)));
        if self.leaped(n) && !left.is_zero() {
            let until = sim_elapsed() + left + TIMES.lease;
            self.unfenced_until.insert(i, until);
        }
    }

    /// Host `i` crashes: its guests die with it.
    pub(super) fn crash(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        h.up = false;
        h.machine.reset();
    }

    /// Host `i` starts again after a crash: a new agent, with no renewal acknowledged yet.
    pub(super) fn restart(&mut self, i: usize) {
        self.restart_agent(i);
        self.hosts[i].up = true;
    }

    /// Host `i`'s agent starts again (after a crash of the host or of the agent alone).
    pub(super) fn restart_agent(&mut self, i: usize) {
        let now = self.instant(clock(i));
        let h = &mut self.hosts[i];
        h.incarnation += 1;
        h.lease = Lease::new(now);
        h.machine.start_agent(&name(HOSTS[i]));
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
                (h.up && h.machine.hung == 0, h.cut, h.incarnation)
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
                view.epoch == epoch && view.leases.renewed(&host, (revision, 0), at)
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
                    view.leases.set_leader(leads, now);
                    if !leads {
                        view.attempts.clear();
                        continue;
                    }
                    let disk = self.disks[&n].locked();
                    let st = &disk.live().sm.cluster;
                    let mut commands = view.leases.decide(st, now, &TIMES, n);
                    // Failovers of the guests the hosts run; the migrating guests' agents are not
                    // simulated (their migrations are commits only), so their failovers would
                    // only wait for a start that never comes.
                    let plan = ha::plan_failovers(st, &mut view.attempts, now, START_TIMEOUT);
                    commands.extend(plan.into_iter().filter(|(g, _)| HA.contains(&g.as_str())).map(|(_, c)| c));
                    for c in &commands {
                        if let Command::DeclareHostFailed { host, .. } = c {
                            hs.deciding(n, host);
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
                    let Some(host) = declared else { continue };
                    match answer {
                        Ok(Ok(r)) if r.data.results.first().is_some_and(|x| x.is_ok()) => self.check_fenced(n, &host),
                        Ok(Ok(_)) => {
                            let mut hs = self.hosts.locked();
                            if let Some(view) = hs.views.get_mut(&n).filter(|v| v.epoch == epoch) {
                                view.leases.refused(&host);
                            }
                        }
                        _ => {}
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
        let leaped = hs.leaped(n);
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
