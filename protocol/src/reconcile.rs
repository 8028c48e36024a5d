//! A VM host's reconciler, the agent's decisions: desired state (from the log) against observed
//! state (from the hypervisor) → actions. Pure, like `apply` is for the coordinator: no I/O, no
//! clock, no randomness. A thin runtime feeds it [`Input`]s — log changes, observations of the
//! hypervisor, the results of the effects it performed — and performs the [`Effect`]s
//! [`Reconciler::step`] returns: the agent's (`agent/src/reconcile/runtime.rs`) against a real
//! hypervisor, the simulation's (`sim/src/world/hosts.rs`) against simulated ones.
//!
//! What a host must hold, per guest in the log:
//!
//! - **the definition**, on every host (the seed: a distributed guest has a configuration file on
//!   every VM host), written from the log's spec and version;
//! - **a running copy only on the owner**, and only while the log says `running`. A copy that
//!   must not run here is stopped *hard* (it is a second copy, not a guest to shut down
//!   politely); the owner's own stop is graceful;
//! - nothing for a guest the log removed (its definition goes, after any copy is stopped).
//!
//! A guest the hypervisor holds but this agent never defined is *unknown to the log*: reported,
//! never touched.
//!
//! **Package switching**, when the driver reaches a cluster manager (Serviceguard): the host
//! that owns a package's guest keeps the package's global switching as the log says, and every
//! host keeps its own node's switching. A package the cluster manager does not know is left
//! alone (it is configured there by the cluster's administrators, not by Switchyard).
//!
//! While a migration of a guest is in flight, its run state belongs to the migration worker
//! (the transfer moves the running copy); the reconciler still keeps its definition.
//!
//! **Fencing.** A start carries the fencing token (Raft term, revision) of the log change that
//! asks for it, and is emitted only when that change is not older than the newest one a start
//! of the guest has already used here: a log view that went backwards (a re-sync from a stale
//! coordinator) cannot restart a guest. Orders are compared by revision, which a cluster never
//! reuses (a restored cluster continues above the imported history), so an agent that restarts
//! and knows its guests' revisions but not the terms that committed them compares the same way.
//! The runtime checks the order with a linearizable read before it starts anything, so a lagging
//! agent cannot start a guest the log has since moved elsewhere.
//!
//! **No action twice.** One action per guest is in progress at a time; an action that
//! succeeded updates the model of the hypervisor as it implies, so the next plan does not ask
//! for it again; an action that failed is not retried until the next observation (the runtime
//! observes on a timer), so a failing hypervisor is not hammered.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::api::{Drift, PendingChange};
use crate::lease::Fence;
use crate::{FencingToken, Guest, GuestSpec, Name, Package, Revision, RunState};

/// What the hypervisor says about one guest on this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Defined, no process.
    ShutOff,
    Running,
    /// Exists but does not run the guest (e.g. QEMU's `paused`, `shutdown`, `internal-error`).
    Paused(String),
    /// Waiting for an incoming migration: it never ran here yet.
    Incoming,
    /// Sent away by a completed live migration: paused for good.
    Migrated,
    /// Exists but its control channel does not answer.
    Unresponsive(String),
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmState::ShutOff => f.write_str("shut off"),
            VmState::Running => f.write_str("running"),
            VmState::Paused(why) => write!(f, "paused ({why})"),
            VmState::Incoming => f.write_str("waiting for an incoming migration"),
            VmState::Migrated => f.write_str("migrated away (paused)"),
            VmState::Unresponsive(why) => write!(f, "unresponsive ({why})"),
        }
    }
}

impl VmState {
    /// Could a copy of the guest be executing here, or resume without an order? What "never two
    /// running copies" counts.
    pub fn is_live(&self) -> bool {
        matches!(self, VmState::Running | VmState::Paused(_) | VmState::Unresponsive(_))
    }
}

/// One guest as the hypervisor of this host holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub name: Name,
    /// The definition kept on this host, and the log's version it was written from (`None`
    /// for a definition this agent did not write: a guest unknown to the log).
    pub defined: Option<(GuestSpec, Option<Revision>)>,
    pub state: VmState,
    /// The spec the running process was started with; differs from `defined` while a change
    /// is pending (applied at the next start).
    pub running_spec: Option<GuestSpec>,
}

/// A package's switching as the cluster manager (Serviceguard) holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchingState {
    /// Global switching (Serviceguard's `autorun`): may the package fail over at all?
    pub global: bool,
    /// Per-node switching, for the nodes the package may run on.
    pub nodes: BTreeMap<Name, bool>,
}

/// What the reconciler is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A guest as the log now has it (created, changed, moved), with the token of that change.
    Guest { guest: Guest, token: FencingToken },
    /// The log removed the guest.
    Removed { name: Name },
    /// Every guest the log has, replacing what was known (an agent's start, a re-sync from
    /// full state).
    Reset { guests: Vec<(Guest, FencingToken)> },
    /// Whether a migration of the guest is in flight.
    Migrating { name: Name, in_flight: bool },
    /// The migration worker has told which guests it holds (after it started or re-synced):
    /// until then a migration's copy here (e.g. a target waiting for the guest) would look
    /// like a copy to stop.
    MigrationsKnown,
    /// Everything the hypervisor holds now.
    Observed(Vec<Observed>),
    /// A package as the log now has it.
    Package(Package),
    /// The log no longer has the package.
    PackageRemoved { name: Name },
    /// Every package the log has, replacing what was known.
    Packages(Vec<Package>),
    /// Package switching as the cluster manager holds it now.
    ObservedSwitching(BTreeMap<Name, SwitchingState>),
    /// An effect ended.
    Done { effect: Effect, result: Result<(), String> },
    /// This host's lease ([`crate::lease`]): packaged guests start only while it is held, and
    /// are stopped hard once it is lost.
    Fence(Fence),
    /// The failover attempt that made this host the guest's owner at `revision` has ended
    /// (its start failed, or the leader stopped waiting): no copy of the guest may run here on
    /// that order, whatever a start under way does.
    GaveUp { name: Name, revision: Revision },
}

/// What to do to one guest on this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Write (or replace) the guest's definition.
    Define { spec: GuestSpec, version: Revision },
    /// Remove the definition of a guest the log removed.
    Undefine,
    /// Start the guest from its definition, on the order with this token.
    Start { token: FencingToken },
    /// Stop the guest; `hard` skips the graceful shutdown.
    Stop { hard: bool },
    /// Set the switching of the guest's package on the cluster manager: globally, or on one
    /// node.
    SetSwitching { package: Name, node: Option<Name>, enabled: bool },
}

impl Action {
    /// The action in a word (a repair's record, a metric's label); the guest, package and node
    /// are said elsewhere.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Define { .. } => "define",
            Action::Undefine => "undefine",
            Action::Start { .. } => "start",
            Action::Stop { hard: true } => "stop-hard",
            Action::Stop { hard: false } => "stop",
            Action::SetSwitching { node: None, enabled: true, .. } => "enable-switching",
            Action::SetSwitching { node: None, enabled: false, .. } => "disable-switching",
            Action::SetSwitching { node: Some(_), enabled: true, .. } => "enable-node-switching",
            Action::SetSwitching { node: Some(_), enabled: false, .. } => "disable-node-switching",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Effect {
    pub guest: Name,
    pub action: Action,
    /// Why, in words (logged, and in the repair's report).
    pub reason: String,
    /// The guest's state here the action was decided from. A stop is carried out only if the
    /// state is still this one when it runs: meanwhile a migration may have started a new
    /// process that is not the copy the decision was about.
    pub seen: VmState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Desire {
    guest: Guest,
    token: FencingToken,
}

#[derive(Clone, Debug)]
pub struct Reconciler {
    host: Name,
    desired: BTreeMap<Name, Desire>,
    migrating: BTreeSet<Name>,
    /// Guests the migration worker handed back since the last observation: what it left here
    /// (a copy that arrived and was just resumed, one it released) is read afresh before the
    /// guest is started or stopped to make it run.
    handed_back: BTreeSet<Name>,
    /// The hypervisor as last observed, updated by the effects that succeeded since. `None`
    /// until the first observation: nothing is decided blind.
    observed: Option<BTreeMap<Name, Observed>>,
    /// Whether the whole log view arrived ([`Input::Reset`]). Until then nothing is decided
    /// either: every guest would look removed from the log, and be stopped.
    log_known: bool,
    /// Whether the migration worker said which guests it holds ([`Input::MigrationsKnown`]).
    migrations_known: bool,
    in_progress: BTreeMap<Name, Action>,
    /// Actions that failed since the last observation: not retried before the next one.
    failed: BTreeMap<Name, Action>,
    /// The newest token a start of each guest used on this host.
    started: BTreeMap<Name, FencingToken>,
    /// Packages as the log has them; `None` until the whole list arrived.
    packages: Option<BTreeMap<Name, Package>>,
    /// Switching as the cluster manager holds it, updated by the changes that succeeded since.
    switching: Option<BTreeMap<Name, SwitchingState>>,
    /// Switching changes under way, and those that failed since the last observation, by
    /// package.
    switching_in_progress: BTreeMap<Name, Action>,
    switching_failed: BTreeMap<Name, Action>,
    /// Guests seen running here, then seen not running without an action of this reconciler
    /// (killed, crashed, stopped at the console) and not started again since: starting them
    /// is a repair, whichever input the start is decided on.
    went_down: BTreeSet<Name>,
    fence: Fence,
    /// Failover orders given up here: guest → the revision of the order.
    gave_up: BTreeMap<Name, Revision>,
}

impl Reconciler {
    /// `started` is what the runtime kept durably of earlier starts' tokens.
    pub fn new(host: Name, started: BTreeMap<Name, FencingToken>) -> Reconciler {
        Reconciler {
            host,
            desired: BTreeMap::new(),
            migrating: BTreeSet::new(),
            handed_back: BTreeSet::new(),
            observed: None,
            log_known: false,
            migrations_known: false,
            in_progress: BTreeMap::new(),
            failed: BTreeMap::new(),
            started,
            packages: None,
            switching: None,
            switching_in_progress: BTreeMap::new(),
            switching_failed: BTreeMap::new(),
            went_down: BTreeSet::new(),
            fence: Fence::Unknown,
            gave_up: BTreeMap::new(),
        }
    }

    /// Whether no copy of the guest exists here and no action on it is under way: what a
    /// released failover attempt must make sure of.
    pub fn settled_off(&self, name: &Name) -> bool {
        let observed = self.observed.as_ref().and_then(|o| o.get(name));
        self.observed.is_some()
            && !self.in_progress.contains_key(name)
            && observed.is_none_or(|o| o.state == VmState::ShutOff)
    }

    /// Whether the guest runs here, as last observed.
    pub fn runs(&self, name: &Name) -> bool {
        self.observed.as_ref().and_then(|o| o.get(name)).is_some_and(|o| o.state == VmState::Running)
    }

    /// The fence this reconciler acts on (the last [`Input::Fence`]).
    pub fn fence(&self) -> Fence {
        self.fence
    }

    /// Whether a packaged guest runs here or is to run here: what the host's watchdog guards.
    pub fn protects(&self) -> bool {
        let packaged = |name: &Name| self.desired.get(name).is_some_and(|d| d.guest.spec.package.is_some());
        let to_run = self.desired.values().any(|d| {
            d.guest.spec.package.is_some() && d.guest.owner == self.host && d.guest.run_state == RunState::Running
        });
        let running =
            self.observed.as_ref().is_some_and(|o| o.values().any(|o| o.state.is_live() && packaged(&o.name)));
        to_run || running
    }

    /// Takes one input; returns the effects to perform now, in the order of the log changes
    /// that ask for them.
    pub fn step(&mut self, input: Input) -> Vec<Effect> {
        let mut touched_packages: Vec<Name> = Vec::new();
        let touched: Vec<Name> = match input {
            Input::Guest { guest, token } => {
                let name = guest.name.clone();
                self.went_down.remove(&name);
                // A package lives with its guest's spec: one the guest no longer names is gone.
                if let Some(packages) = &mut self.packages {
                    packages.retain(|p, pk| pk.guest != name || guest.spec.package.as_ref() == Some(p));
                }
                touched_packages.extend(guest.spec.package.clone());
                self.desired.insert(name.clone(), Desire { guest, token });
                vec![name]
            }
            Input::Removed { name } => {
                self.desired.remove(&name);
                self.gave_up.remove(&name);
                self.went_down.remove(&name);
                if let Some(packages) = &mut self.packages {
                    packages.retain(|_, pk| pk.guest != name);
                }
                vec![name]
            }
            Input::Package(p) => {
                touched_packages.push(p.name.clone());
                if let Some(packages) = &mut self.packages {
                    packages.insert(p.name.clone(), p);
                }
                Vec::new()
            }
            Input::PackageRemoved { name } => {
                if let Some(packages) = &mut self.packages {
                    packages.remove(&name);
                }
                Vec::new()
            }
            Input::Packages(list) => {
                self.packages = Some(list.into_iter().map(|p| (p.name.clone(), p)).collect());
                touched_packages = self.package_names();
                Vec::new()
            }
            Input::ObservedSwitching(seen) => {
                self.switching = Some(seen);
                self.switching_failed.clear();
                touched_packages = self.package_names();
                Vec::new()
            }
            Input::Done { effect, result } if matches!(effect.action, Action::SetSwitching { .. }) => {
                let Action::SetSwitching { package, node, enabled } = &effect.action else { unreachable!() };
                if self.switching_in_progress.get(package) == Some(&effect.action) {
                    self.switching_in_progress.remove(package);
                }
                match result {
                    Ok(()) => {
                        if let Some(s) = self.switching.as_mut().and_then(|s| s.get_mut(package)) {
                            match node {
                                None => s.global = *enabled,
                                Some(n) => {
                                    s.nodes.insert(n.clone(), *enabled);
                                }
                            }
                        }
                    }
                    Err(_) => {
                        self.switching_failed.insert(package.clone(), effect.action.clone());
                    }
                }
                touched_packages.push(package.clone());
                Vec::new()
            }
            Input::Reset { guests } => {
                self.log_known = true;
                self.went_down.clear();
                touched_packages = self.package_names();
                let before: Vec<Name> = self.desired.keys().cloned().collect();
                self.desired =
                    guests.into_iter().map(|(g, token)| (g.name.clone(), Desire { guest: g, token })).collect();
                let mut names = self.all_names();
                names.extend(before);
                names.sort();
                names.dedup();
                names
            }
            Input::MigrationsKnown => {
                self.migrations_known = true;
                self.all_names()
            }
            Input::Fence(fence) => {
                self.fence = fence;
                self.all_names()
            }
            Input::GaveUp { name, revision } => {
                self.gave_up.insert(name.clone(), revision);
                vec![name]
            }
            Input::Migrating { name, in_flight } => {
                if in_flight {
                    self.migrating.insert(name.clone());
                } else if self.migrating.remove(&name) {
                    self.handed_back.insert(name.clone());
                }
                vec![name]
            }
            Input::Observed(list) => {
                let now: BTreeMap<Name, Observed> = list.into_iter().map(|o| (o.name.clone(), o)).collect();
                if let Some(before) = &self.observed {
                    for (name, o) in before {
                        let running_now = now.get(name).is_some_and(|n| n.state == VmState::Running);
                        // Only a stop under way explains it (a definition being rewritten does not).
                        let stopping = matches!(self.in_progress.get(name), Some(Action::Stop { .. }));
                        if o.state == VmState::Running && !running_now && !stopping {
                            self.went_down.insert(name.clone());
                        }
                    }
                }
                self.went_down.retain(|name| now.get(name).is_none_or(|o| o.state != VmState::Running));
                self.observed = Some(now);
                self.handed_back.clear();
                self.failed.clear();
                self.all_names()
            }
            Input::Done { effect, result } => {
                if self.in_progress.get(&effect.guest) == Some(&effect.action) {
                    self.in_progress.remove(&effect.guest);
                }
                match result {
                    Ok(()) => self.record_success(&effect),
                    Err(_) => {
                        self.failed.insert(effect.guest.clone(), effect.action.clone());
                    }
                }
                vec![effect.guest]
            }
        };
        let mut effects: Vec<(Revision, Effect)> = Vec::new();
        for name in touched {
            if self.in_progress.contains_key(&name) {
                continue;
            }
            let Some((action, reason)) = self.plan(&name) else { continue };
            if self.failed.get(&name) == Some(&action) {
                continue;
            }
            self.in_progress.insert(name.clone(), action.clone());
            let order = self.desired.get(&name).map_or(Revision::MAX, |d| d.token.revision);
            let seen = self.observed.as_ref().and_then(|o| o.get(&name)).map_or(VmState::ShutOff, |o| o.state.clone());
            effects.push((order, Effect { guest: name, action, reason, seen }));
        }
        touched_packages.sort();
        touched_packages.dedup();
        for package in touched_packages {
            if self.switching_in_progress.contains_key(&package) {
                continue;
            }
            let Some((action, reason, guest, order)) = self.plan_switching(&package) else { continue };
            if self.switching_failed.get(&package) == Some(&action) {
                continue;
            }
            self.switching_in_progress.insert(package, action.clone());
            let seen = self.observed.as_ref().and_then(|o| o.get(&guest)).map_or(VmState::ShutOff, |o| o.state.clone());
            effects.push((order, Effect { guest, action, reason, seen }));
        }
        effects.sort_by_key(|(order, e)| (*order, e.guest.clone()));
        effects.into_iter().map(|(_, e)| e).collect()
    }

    fn package_names(&self) -> Vec<Name> {
        self.packages.as_ref().map(|p| p.keys().cloned().collect()).unwrap_or_default()
    }

    /// The next switching change for one package, if any: why, the package's guest, and the
    /// revision of the log's switching state it carries out.
    fn plan_switching(&self, package: &Name) -> Option<(Action, String, Name, Revision)> {
        if !self.log_known {
            return None;
        }
        let pk = self.packages.as_ref()?.get(package)?;
        let seen = self.switching.as_ref()?.get(package)?;
        let word = |on: bool| if on { "enabled" } else { "disabled" };
        let owner_here = self.desired.get(&pk.guest).is_some_and(|d| d.guest.owner == self.host);
        let (node, enabled, reason) = if owner_here && seen.global != pk.switching_enabled {
            let reason = format!("the log says switching of package {package} is {}", word(pk.switching_enabled));
            (None, pk.switching_enabled, reason)
        } else {
            let want = !pk.disabled_nodes.contains(&self.host);
            if *seen.nodes.get(&self.host)? == want {
                return None;
            }
            let reason = format!("the log says switching of package {package} is {} on {}", word(want), self.host);
            (Some(self.host.clone()), want, reason)
        };
        let action = Action::SetSwitching { package: package.clone(), node, enabled };
        Some((action, reason, pk.guest.clone(), pk.switching_changed.revision))
    }

    fn all_names(&self) -> Vec<Name> {
        let mut names: BTreeSet<Name> = self.desired.keys().cloned().collect();
        if let Some(o) = &self.observed {
            names.extend(o.keys().cloned());
        }
        names.into_iter().collect()
    }

    /// The model of the hypervisor after `effect` succeeded.
    fn record_success(&mut self, effect: &Effect) {
        let Some(observed) = self.observed.as_mut() else { return };
        let name = &effect.guest;
        match &effect.action {
            Action::Define { spec, version } => {
                let o = observed.entry(name.clone()).or_insert_with(|| Observed {
                    name: name.clone(),
                    defined: None,
                    state: VmState::ShutOff,
                    running_spec: None,
                });
                o.defined = Some((spec.clone(), Some(*version)));
            }
            Action::Undefine => {
                observed.remove(name);
            }
            Action::Start { token } => {
                self.went_down.remove(name);
                let started = self.started.entry(name.clone()).or_default();
                if token.revision >= started.revision {
                    *started = *token;
                }
                if let Some(o) = observed.get_mut(name) {
                    o.state = VmState::Running;
                    o.running_spec = o.defined.as_ref().map(|(s, _)| s.clone());
                }
            }
            Action::Stop { .. } => {
                if let Some(o) = observed.get_mut(name) {
                    o.state = VmState::ShutOff;
                    o.running_spec = None;
                }
            }
            // Handled with the package's inputs.
            Action::SetSwitching { .. } => {}
        }
    }

    /// The next action for one guest, if any, and why.
    fn plan(&self, name: &Name) -> Option<(Action, String)> {
        if !self.log_known || !self.migrations_known {
            return None;
        }
        let observed = self.observed.as_ref()?;
        let o = observed.get(name);
        let d = self.desired.get(name);
        let state = o.map_or(VmState::ShutOff, |o| o.state.clone());
        // Anything of the guest that exists here (a process in any state).
        let exists = state != VmState::ShutOff;
        let Some(d) = d else {
            // Not in the log: remove what this agent defined; leave what it did not.
            let o = o?;
            let managed = matches!(o.defined, Some((_, Some(_))));
            if !managed {
                return None;
            }
            if exists {
                return Some((Action::Stop { hard: true }, "the log removed the guest".into()));
            }
            return Some((Action::Undefine, "the log removed the guest".into()));
        };
        let g = &d.guest;
        let here = g.owner == self.host;
        let migrating = self.migrating.contains(name);
        // Safety first: a copy that must not run here stops before anything else.
        if !migrating && !here && exists {
            return Some((Action::Stop { hard: true }, format!("the log says {} runs on {}", name, g.owner)));
        }
        // Self-fencing: with the lease lost the cluster may start a packaged guest elsewhere,
        // so no copy of one stays here, whatever else is under way (a migration's included).
        let packaged = g.spec.package.is_some();
        if packaged && exists && self.fence == Fence::Lost {
            return Some((Action::Stop { hard: true }, "self-fencing: this host's lease is lost".into()));
        }
        // A failover attempt here that ended: the next node may be starting the guest.
        let given_up = self.gave_up.get(name) == Some(&g.version);
        if given_up && exists {
            return Some((Action::Stop { hard: true }, "the failover attempt here ended".into()));
        }
        let defined = o.and_then(|o| o.defined.as_ref());
        if defined.is_none_or(|(spec, version)| spec != &g.spec || *version != Some(g.version)) {
            let why = match defined {
                None => "not defined on this host".to_string(),
                Some((spec, _)) if spec != &g.spec => {
                    format!("definition differs in {}", differing(spec, &g.spec).join(", "))
                }
                Some(_) => "the log's version changed".to_string(),
            };
            return Some((Action::Define { spec: g.spec.clone(), version: g.version }, why));
        }
        // The observation of a guest the worker just handed back is older than what the worker
        // did (a copy that arrived paused may run by now): no start or restart decided from it.
        if migrating || !here || self.handed_back.contains(name) {
            return None;
        }
        match (g.run_state, &state) {
            (RunState::Running, VmState::Running) => None,
            (RunState::Running, VmState::ShutOff) => {
                if (packaged && self.fence != Fence::Held) || given_up {
                    // Started only under a lease (without one it may run elsewhere), and never
                    // on a failover order given up.
                    return None;
                }
                if self.started.get(name).is_some_and(|t| t.revision > d.token.revision) {
                    // A start already used a newer order: this view of the log is older.
                    return None;
                }
                Some((Action::Start { token: d.token }, "the log says it runs here".into()))
            }
            // A copy here that does not execute (paused, stuck, left waiting for a migration or
            // left behind by one): stop it, then start afresh.
            (RunState::Running, s) => Some((Action::Stop { hard: true }, format!("it should run here but is {s}"))),
            (RunState::Stopped, VmState::ShutOff) => None,
            (RunState::Stopped, VmState::Running) => {
                Some((Action::Stop { hard: false }, "the log says it is stopped".into()))
            }
            (RunState::Stopped, s) => {
                Some((Action::Stop { hard: true }, format!("the log says it is stopped; it is {s}")))
            }
        }
    }

    /// How each guest on this host differs from the log right now (guests in a migration are
    /// compared by definition only). Empty until the first observation.
    pub fn drift(&self) -> BTreeMap<Name, Vec<Drift>> {
        let mut out = BTreeMap::new();
        let Some(observed) = self.observed.as_ref().filter(|_| self.log_known && self.migrations_known) else {
            return out;
        };
        for name in self.all_names() {
            let o = observed.get(&name);
            let state = o.map_or(VmState::ShutOff, |o| o.state.clone());
            let mut drift = Vec::new();
            match self.desired.get(&name) {
                None => {
                    if o.is_some_and(|o| !matches!(o.defined, Some((_, Some(_))))) {
                        drift.push(Drift::Unknown);
                    } else if state.is_live() {
                        drift.push(Drift::RunningHere { state: state.to_string() });
                    }
                }
                Some(d) => {
                    match o.and_then(|o| o.defined.as_ref()) {
                        None => drift.push(Drift::Missing),
                        Some((spec, _)) if spec != &d.guest.spec => drift.push(Drift::Differs {
                            fields: differing(spec, &d.guest.spec).into_iter().map(String::from).collect(),
                        }),
                        Some(_) => {}
                    }
                    if !self.migrating.contains(&name) {
                        let run_here = d.guest.owner == self.host && d.guest.run_state == RunState::Running;
                        if run_here && state != VmState::Running {
                            drift.push(Drift::NotRunning { state: state.to_string() });
                        } else if !run_here && state.is_live() {
                            drift.push(Drift::RunningHere { state: state.to_string() });
                        }
                    }
                }
            }
            if !drift.is_empty() {
                out.insert(name, drift);
            }
        }
        out
    }

    /// Changes waiting for their guest's next start.
    pub fn pending(&self) -> Vec<PendingChange> {
        let Some(observed) = &self.observed else { return Vec::new() };
        self.desired
            .iter()
            .filter_map(|(name, d)| {
                let o = observed.get(name)?;
                let running = o.running_spec.as_ref().filter(|_| o.state == VmState::Running)?;
                (running != &d.guest.spec).then(|| PendingChange {
                    guest: name.clone(),
                    fields: differing(running, &d.guest.spec).into_iter().map(String::from).collect(),
                })
            })
            .collect()
    }

    /// The newest start token per guest (the runtime keeps it durably).
    pub fn started(&self) -> &BTreeMap<Name, FencingToken> {
        &self.started
    }

    /// Was the guest seen running here and then not, without this reconciler stopping it? A
    /// start of it is then a repair of drift, even when decided on another input than an
    /// observation (e.g. the end of a migration, after which a guest killed meanwhile must be
    /// started again).
    pub fn went_down(&self, guest: &Name) -> bool {
        self.went_down.contains(guest)
    }
}

/// The fields in which two specs differ, by name.
pub fn differing(a: &GuestSpec, b: &GuestSpec) -> Vec<&'static str> {
    let mut f = Vec::new();
    if a.vcpus != b.vcpus {
        f.push("vcpus");
    }
    if a.memory_mib != b.memory_mib {
        f.push("memory_mib");
    }
    if a.disks != b.disks {
        f.push("disks");
    }
    if a.networks != b.networks {
        f.push("networks");
    }
    if a.online_migration != b.online_migration {
        f.push("online_migration");
    }
    if a.cluster_node != b.cluster_node {
        f.push("cluster_node");
    }
    if a.package != b.package {
        f.push("package");
    }
    f
}
