//! VM hosts' hypervisors and the agents that reconcile them: the other half of "never two
//! running copies of a guest" (SPEC §5; ARCHITECTURE.md, "Failover and fencing").
//!
//! Every host runs the real `protocol::reconcile::Reconciler` over a simulated hypervisor (a
//! map of guests and their states) for the packaged guests [`HA`], with a runtime that does
//! what the agent's does (`agent/src/reconcile/runtime.rs`):
//!
//! - its log view is some running coordinator's applied state (an agent follows one
//!   coordinator, which may lag), fed as a re-sync every [`TICK`];
//! - a start is checked against the log read linearizably through the leader (the order's
//!   revision, the owner, no migration, no ended failover attempt here) and made only while
//!   the lease holds for [`START_LEASE_MIN`] more; it takes a drawn time on the hypervisor;
//! - the lease's fence reaches the reconciler within [`FENCE_TICK`] and a lost lease stops the
//!   packaged guests hard;
//! - a failover's target reports `CompleteFailover` once the guest runs, and releases an
//!   attempt the leader ended once no copy is left (`ReleaseFailoverAttempt`);
//! - the watchdog is armed on every host and petted only while the lease holds for its
//!   timeout more or no packaged guest runs; a hung agent stops petting and the watchdog
//!   resets the host, taking its guests with it.
//!
//! Every leader runs the real `ha::plan_failovers` on its clock (`hosts.rs`). Host faults: the
//! machine crashes (its guests die), the agent hangs (its guests run on, unfenced; when the
//! hang ends the agent resumes or starts again), the host is cut from the coordinators.
//!
//! Checked at every start: no other host that is up holds a live copy of the guest. The
//! checker is shown to fail with `--bug no-fence` (an agent that acts as if its lease always
//! held) and `--bug no-watchdog` (a hung agent's guests run on).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_protocol::lease::Fence;
use switchyard_protocol::reconcile::{Action, Effect, Input, Observed, Reconciler, VmState};
use switchyard_protocol::{Command, Failover, FencingToken, Guest, GuestSpec, Name, Revision, RunState};

use super::hosts::{clock, FENCE_AFTER_MS};
use super::{name, now_ms, World, HOSTS};
use crate::disk::Bug;
use crate::runtime::{sim_elapsed, with_rng};
use crate::Lock;

/// The guests in packages that the hosts run (one per host at the start); the migration
/// driver leaves them alone, so only failovers move them.
pub(super) const HA: [&str; 3] = ["ha0", "ha1", "ha2"];
/// How often an agent re-reads its log view and the hypervisor.
const TICK: Duration = Duration::from_millis(100);
/// How often the lease's fence is turned into the reconciler's input, and the watchdog petted.
const FENCE_TICK: Duration = Duration::from_millis(20);
/// The watchdog's timeout, shorter than the lease's fence time (as the agent's configuration
/// checks; the defaults' 1 s of 3 s, scaled).
const WATCHDOG_TIMEOUT_MS: u64 = FENCE_AFTER_MS / 3;
/// How long the lease must still hold when a packaged guest starts (the agent's 500 ms of a 3 s
/// fence time, scaled).
const START_LEASE_MIN: Duration = Duration::from_millis(FENCE_AFTER_MS / 6);

/// One guest on a simulated hypervisor.
#[derive(Clone, Debug)]
struct Vm {
    defined: Option<(GuestSpec, Option<Revision>)>,
    state: VmState,
    running_spec: Option<GuestSpec>,
}

/// A host's hypervisor and agent.
pub(super) struct Machine {
    vms: BTreeMap<Name, Vm>,
    /// The start tokens the agent keeps durably (its store survives a crash).
    started: BTreeMap<Name, FencingToken>,
    /// The revision of the log view applied last, kept durably (the agent's cursor): a view
    /// from a coordinator that lags behind it is not taken.
    cursor: Revision,
    pub reconciler: Reconciler,
    /// The fence last given to the reconciler.
    fence: Fence,
    /// Open hang windows of the agent (it acts on nothing while one is open).
    pub hung: u32,
    /// Counts the agent's starts: work begun by an earlier one is dropped.
    pub agent: u64,
    /// When the agent last petted the watchdog (the host's clock), while it is armed.
    watchdog: Option<Duration>,
    /// Failover attempts the leader ended here, to release once no copy is left.
    releasing: BTreeMap<Name, FencingToken>,
    /// Reports sent, by (guest, order): not repeated within a second.
    reported: BTreeMap<(Name, Revision), Duration>,
}

impl Machine {
    pub(super) fn new(host: &Name) -> Machine {
        let mut reconciler = Reconciler::new(host.clone(), BTreeMap::new());
        reconciler.step(Input::MigrationsKnown);
        Machine {
            vms: BTreeMap::new(),
            started: BTreeMap::new(),
            cursor: 0,
            reconciler,
            fence: Fence::Unknown,
            hung: 0,
            agent: 0,
            watchdog: None,
            releasing: BTreeMap::new(),
            reported: BTreeMap::new(),
        }
    }

    /// The machine resets (a crash, the watchdog): every guest process dies, and the watchdog
    /// with the agent.
    pub(super) fn reset(&mut self) {
        self.watchdog = None;
        self.vms.values_mut().for_each(|vm| {
            vm.state = VmState::ShutOff;
            vm.running_spec = None;
        });
    }

    /// The agent starts (again): a new reconciler from what its store kept.
    pub(super) fn start_agent(&mut self, host: &Name) {
        self.agent += 1;
        self.hung = 0;
        self.reconciler = Reconciler::new(host.clone(), self.started.clone());
        self.reconciler.step(Input::MigrationsKnown);
        self.fence = Fence::Unknown;
        self.releasing.clear();
        self.reported.clear();
    }

    fn observed(&self) -> Vec<Observed> {
        self.vms
            .iter()
            .map(|(name, vm)| Observed {
                name: name.clone(),
                defined: vm.defined.clone(),
                state: vm.state.clone(),
                running_spec: vm.running_spec.clone(),
            })
            .collect()
    }

    fn live(&self, guest: &Name) -> bool {
        self.vms.get(guest).is_some_and(|vm| vm.state.is_live())
    }

    /// Carries out `e` on the hypervisor if it is not a start (starts are checked first).
    fn local(&mut self, e: &Effect) -> Result<(), String> {
        match &e.action {
            Action::Define { spec, version } => {
                let vm = self.vms.entry(e.guest.clone()).or_insert(Vm {
                    defined: None,
                    state: VmState::ShutOff,
                    running_spec: None,
                });
                vm.defined = Some((spec.clone(), Some(*version)));
                Ok(())
            }
            Action::Undefine => match self.vms.get(&e.guest) {
                Some(vm) if vm.state.is_live() => Err("the guest runs".into()),
                _ => {
                    self.vms.remove(&e.guest);
                    Ok(())
                }
            },
            Action::Stop { .. } => {
                if let Some(vm) = self.vms.get_mut(&e.guest).filter(|vm| vm.state == e.seen) {
                    vm.state = VmState::ShutOff;
                    vm.running_spec = None;
                }
                Ok(())
            }
            Action::SetSwitching { .. } => Err("no cluster manager on simulated hosts".into()),
            Action::Start { .. } => unreachable!("starts are checked before they run"),
        }
    }
}

/// What an agent reads from its coordinator: the HA guests and their failovers.
struct LogView {
    revision: Revision,
    guests: Vec<Guest>,
    failovers: Vec<Failover>,
}

impl World {
    fn log_view(&self) -> Option<LogView> {
        let running = self.running();
        if running.is_empty() {
            return None;
        }
        let node = *with_rng(|r| r.pick(&running));
        let disk = self.disks[&node].locked();
        let st = &disk.live().sm.cluster;
        let ha = |g: &Name| HA.contains(&g.as_str());
        Some(LogView {
            revision: st.revision(),
            guests: st.guests().filter(|g| ha(&g.name)).cloned().collect(),
            failovers: st.failovers().filter(|f| ha(&f.guest)).cloned().collect(),
        })
    }

    /// Host `i`'s agent reconciles its hypervisor until `until`.
    pub(super) async fn agent(self: &Arc<Self>, i: usize, until: Duration) {
        let host = name(HOSTS[i]);
        while sim_elapsed() < until {
            tokio::time::sleep(TICK).await;
            let (up, cut, hung) = {
                let hs = self.hosts.locked();
                let h = &hs.hosts[i];
                (h.up, h.cut, h.machine.hung)
            };
            if !up || hung > 0 {
                continue;
            }
            let view = if cut == 0 { self.log_view() } else { None };
            let view = view.filter(|v| v.revision >= self.hosts.locked().hosts[i].machine.cursor);
            let now = sim_elapsed();
            let (effects, reports) = {
                let mut hs = self.hosts.locked();
                let m = &mut hs.hosts[i].machine;
                let mut effects = Vec::new();
                let mut reports = Vec::new();
                if let Some(v) = &view {
                    m.cursor = v.revision;
                    let guests = v.guests.iter().map(|g| (g.clone(), FencingToken { term: 0, revision: g.version }));
                    effects.extend(m.reconciler.step(Input::Reset { guests: guests.collect() }));
                    for f in v.failovers.iter().filter(|f| f.target == host) {
                        if f.attempt_failed.is_some() && !f.released && !m.releasing.contains_key(&f.guest) {
                            m.releasing.insert(f.guest.clone(), f.token);
                            let gave_up = Input::GaveUp { name: f.guest.clone(), revision: f.token.revision };
                            effects.extend(m.reconciler.step(gave_up));
                        }
                    }
                    // The releases the log shows are done.
                    m.releasing.retain(|g, t| {
                        v.failovers.iter().any(|f| f.guest == *g && f.token == *t && f.target == host && !f.released)
                    });
                }
                effects.extend(m.reconciler.step(Input::Observed(m.observed())));
                if let Some(v) = &view {
                    for f in v.failovers.iter().filter(|f| f.target == host && f.attempt_failed.is_none()) {
                        if m.reconciler.runs(&f.guest) {
                            let command = Command::CompleteFailover {
                                guest: f.guest.clone(),
                                host: host.clone(),
                                token: f.token,
                            };
                            reports.push((f.guest.clone(), f.token.revision, command));
                        }
                    }
                }
                for (g, token) in &m.releasing {
                    if m.reconciler.settled_off(g) {
                        let command =
                            Command::ReleaseFailoverAttempt { guest: g.clone(), host: host.clone(), token: *token };
                        reports.push((g.clone(), token.revision, command));
                    }
                }
                reports.retain(|(g, rev, _)| {
                    let last = m.reported.get(&(g.clone(), *rev));
                    if last.is_some_and(|at| now.saturating_sub(*at) < Duration::from_secs(1)) {
                        return false;
                    }
                    m.reported.insert((g.clone(), *rev), now);
                    true
                });
                (effects, reports)
            };
            self.perform(i, effects);
            for (_, _, command) in reports {
                let w = self.clone();
                let actor = format!("agent:{host}");
                tokio::spawn(async move {
                    let kind = command.kind();
                    let id = w.request_id();
                    let complete = matches!(command, Command::CompleteFailover { .. });
                    let answer = match w.write(&actor, id, command).await {
                        super::Written::Answer(Ok(_)) => {
                            w.rec.locked().failovers += u64::from(complete);
                            "ok".to_string()
                        }
                        super::Written::Answer(Err(e)) => format!("refused: {}", e.code()),
                        super::Written::Unknown => "unanswered".into(),
                    };
                    w.note(format!("{actor} {kind} -> {answer}"));
                });
            }
        }
    }

    /// Host `i`'s lease reaches its reconciler, and its watchdog is petted or fires, until
    /// `until`.
    pub(super) async fn fence(self: &Arc<Self>, i: usize, until: Duration) {
        let host = name(HOSTS[i]);
        while sim_elapsed() < until {
            tokio::time::sleep(FENCE_TICK).await;
            let effects = {
                let mut hs = self.hosts.locked();
                let now = hs.instant(clock(i));
                let clock_now = crate::runtime::node_now(clock(i));
                let h = &mut hs.hosts[i];
                if !h.up {
                    continue;
                }
                let m = &mut h.machine;
                let timeout = Duration::from_millis(WATCHDOG_TIMEOUT_MS);
                let overdue = m.watchdog.is_some_and(|petted| clock_now.saturating_sub(petted) > timeout);
                if overdue && self.opts.bug != Bug::NoWatchdog {
                    m.reset();
                    h.up = false;
                    None
                } else if m.hung > 0 {
                    Some(Vec::new())
                } else {
                    // As the agent's fence loop: armed while a packaged guest is (to be) here,
                    // petted only while the lease outlasts the watchdog.
                    let left = match self.opts.bug {
                        Bug::NoFence => Duration::MAX,
                        _ => h.lease.remaining(now),
                    };
                    m.watchdog = match (m.watchdog, m.reconciler.protects()) {
                        (_, false) => None,
                        (None, true) => Some(clock_now),
                        (Some(_), true) if left >= timeout => Some(clock_now),
                        (petted, true) => petted,
                    };
                    let fence = match h.lease.fence(now) {
                        Fence::Lost if self.opts.bug == Bug::NoFence => Fence::Held,
                        f => f,
                    };
                    if fence == m.fence {
                        Some(Vec::new())
                    } else {
                        m.fence = fence;
                        Some(m.reconciler.step(Input::Fence(fence)))
                    }
                }
            };
            match effects {
                Some(effects) => self.perform(i, effects),
                None => {
                    self.note(format!("{host}'s watchdog fired: the host resets"));
                    self.reboot(i, with_rng(|r| r.millis(50, 300)));
                }
            }
        }
    }

    /// Host `i` starts again `after` a reset: a new agent, with no lease yet.
    pub(super) fn reboot(self: &Arc<Self>, i: usize, after: Duration) {
        let w = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            w.hosts.locked().restart(i);
        });
    }

    /// Performs the reconciler's effects on host `i`: at once on the hypervisor, or, for a
    /// start, once checked.
    fn perform(self: &Arc<Self>, i: usize, effects: Vec<Effect>) {
        let mut next = Vec::new();
        let mut stops = Vec::new();
        {
            let mut hs = self.hosts.locked();
            let m = &mut hs.hosts[i].machine;
            for e in effects {
                if let Action::Start { token } = e.action {
                    let w = self.clone();
                    let agent = m.agent;
                    tokio::spawn(async move { w.start_guest(i, agent, e, token).await });
                    continue;
                }
                let result = m.local(&e);
                if matches!(e.action, Action::Stop { .. }) && e.seen.is_live() {
                    stops.push(format!("{} stopped on {} ({})", e.guest, HOSTS[i], e.reason));
                }
                next.extend(m.reconciler.step(Input::Done { effect: e, result }));
            }
        }
        for line in stops {
            self.note(line);
        }
        if !next.is_empty() {
            self.perform(i, next);
        }
    }

    /// A start on host `i`, as the agent's runtime makes it: the order checked against the log
    /// read linearizably, then the lease; then the hypervisor starts the guest.
    async fn start_guest(self: &Arc<Self>, i: usize, agent: u64, e: Effect, token: FencingToken) {
        let host = name(HOSTS[i]);
        let checked = self.check_order(&host, &e.guest, token).await;
        // The agent acts on the answer once it runs (a hang holds it here).
        loop {
            let (gone, hung) = {
                let hs = self.hosts.locked();
                let h = &hs.hosts[i];
                (!h.up || h.machine.agent != agent, h.machine.hung > 0)
            };
            if gone {
                return; // the agent that asked is gone
            }
            if !hung {
                break;
            }
            tokio::time::sleep(FENCE_TICK).await;
        }
        let checked = checked.and_then(|()| {
            let hs = self.hosts.locked();
            let left = hs.hosts[i].lease.remaining(hs.instant(clock(i)));
            if left < START_LEASE_MIN {
                return Err(format!("the lease holds {} ms only", left.as_millis()));
            }
            Ok(())
        });
        let result = match checked {
            Err(why) => Err(why),
            Ok(()) => {
                // The hypervisor takes a while; the guest runs from the end of it, whatever the
                // agent does meanwhile.
                tokio::time::sleep(with_rng(|r| r.millis(1, 40))).await;
                self.started(i, agent, &e.guest, token)
            }
        };
        let effects = {
            let mut hs = self.hosts.locked();
            let m = &mut hs.hosts[i].machine;
            if m.agent != agent {
                return;
            }
            if result.is_ok() {
                m.started.insert(e.guest.clone(), token);
            }
            m.reconciler.step(Input::Done { effect: e, result })
        };
        self.perform(i, effects);
    }

    /// The guest starts on host `i`'s hypervisor, unless the machine was reset meanwhile;
    /// checks that no other host runs a copy.
    fn started(&self, i: usize, agent: u64, guest: &Name, token: FencingToken) -> Result<(), String> {
        let mut hs = self.hosts.locked();
        if !hs.hosts[i].up || hs.hosts[i].machine.agent != agent {
            return Err("the host was reset".into());
        }
        let now = sim_elapsed();
        let (mut others, mut outside) = (Vec::new(), Vec::new());
        for j in (0..HOSTS.len()).filter(|&j| j != i && hs.hosts[j].up && hs.hosts[j].machine.live(guest)) {
            match hs.unfenced_until.get(&j) {
                Some(until) if now < *until => outside.push(HOSTS[j]),
                _ => others.push(HOSTS[j]),
            }
        }
        let m = &mut hs.hosts[i].machine;
        let Some(vm) = m.vms.get_mut(guest) else { return Err("not defined".into()) };
        let spec = vm.defined.as_ref().map(|d| d.0.clone());
        vm.state = VmState::Running;
        vm.running_spec = spec;
        drop(hs);
        self.rec.locked().starts += 1;
        if !others.is_empty() {
            self.rec.locked().violation(format!(
                "at {} ms {guest} started on {} (order at revision {}) while it runs on {}: two running copies",
                now_ms(),
                HOSTS[i],
                token.revision,
                others.join(", ")
            ));
        }
        if !outside.is_empty() {
            self.note(format!(
                "{guest} started on {} while it runs on {}, declared failed by a leader whose clock leaped (outside the model)",
                HOSTS[i],
                outside.join(", ")
            ));
        }
        self.note(format!("{guest} started on {} (order at revision {})", HOSTS[i], token.revision));
        Ok(())
    }

    /// The agent's check before a start (`check_order`): the log, read linearizably through
    /// the leader, still orders it here at this revision.
    async fn check_order(&self, host: &Name, guest: &Name, token: FencingToken) -> Result<(), String> {
        let Some(n) = self.leader() else { return Err("no leader".into()) };
        let Some((epoch, raft)) = self.raft(n) else { return Err("no leader".into()) };
        let ok = tokio::time::timeout(Duration::from_millis(300), raft.ensure_linearizable()).await;
        if !matches!(ok, Ok(Ok(_))) || self.raft(n).map(|r| r.0) != Some(epoch) {
            return Err("the log could not be read".into());
        }
        let disk = self.disks[&n].locked();
        let st = &disk.live().sm.cluster;
        let Some(g) = st.guest(guest) else { return Err("removed".into()) };
        if g.version != token.revision || g.owner != *host || g.run_state != RunState::Running {
            return Err(format!("the log moved on (version {}, owner {})", g.version, g.owner));
        }
        if st.in_flight(guest).is_some() {
            return Err("a migration is in flight".into());
        }
        if st.failover(guest).is_some_and(|f| f.target == *host && f.attempt_failed.is_some()) {
            return Err("the failover attempt here ended".into());
        }
        Ok(())
    }
}
