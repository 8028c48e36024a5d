//! The cluster state: the fold of every event so far.
//!
//! [`ClusterState::evolve`] is the only way state changes, and it is infallible: all checking
//! happens before an event exists (in `apply.rs`). That split is what makes the history the
//! source of truth: replaying the retained events from a snapshot rebuilds exactly this state.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventPayload};
use crate::hostconfig::guest_digest;
use crate::limits::{FINISHED_MIGRATIONS_RETAINED, REQUEST_IDS_RETAINED};
use crate::model::{
    ClusterIdentity, Drain, FailbackPolicy, Failover, FailoverPolicy, Guest, Host, HostFailure, HostState,
    ImportProgress, Member, Migration, MigrationId, Package, RequestId, Resources, Revision, SwitchingChange,
};
use crate::name::Name;

/// The revisions one request produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRange {
    pub first: Revision,
    pub last: Revision,
}

/// Everything the replicated state machine knows, in memory on every coordinator.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    revision: Revision,
    hosts: BTreeMap<Name, Host>,
    guests: BTreeMap<Name, Guest>,
    packages: BTreeMap<Name, Package>,
    /// In-flight migrations and the most recent finished ones.
    migrations: BTreeMap<MigrationId, Migration>,
    /// Recent request ids in the order they were applied, with the revisions they produced.
    requests: VecDeque<(RequestId, RevisionRange)>,
    /// The identity of the last `ClusterCreated` event folded in.
    identity: Option<ClusterIdentity>,
    /// A restore in progress (`switchyard log restore`): set by imports, cleared when the
    /// restored cluster commits its identity. Not part of the history: only the live state
    /// machine that took the imports holds it.
    importing: Option<ImportProgress>,
    /// Added to the Raft term when stamping events. 0 except in a restored cluster, where it is
    /// the largest imported term, so fencing tokens keep growing across the restore.
    term_base: u64,
    /// The term of the last event folded in.
    last_term: u64,
    /// Hosts under failure detection (their agents renewed a lease once), failed or not.
    members: BTreeMap<Name, Member>,
    /// In-flight failovers by guest.
    failovers: BTreeMap<Name, Failover>,
    /// Drains under way, by host.
    drains: BTreeMap<Name, Drain>,
    /// Indexes derived from the fields above; rebuilt after decoding, never serialised.
    #[serde(skip)]
    derived: Derived,
}

/// A state rebuilt from a long run of events (`log replay`, `log restore`, a data directory's
/// check, a coordinator's restart): each event is folded as by [`ClusterState::evolve`], except
/// for the requests the events answered, which [`Replay::finish`] turns into the state's
/// remembered requests and their index once. Nothing reads either while a history is replayed:
/// keeping the index event by event (an insert and an eviction among 100 000 ids) was a fifth of
/// the work of folding a guest change, and scoping every event's request id (a SHA-256) cost as
/// much again on a long history, of which only the last [`REQUEST_IDS_RETAINED`] requests are
/// kept ([`Answered`]).
#[derive(Debug, Default)]
pub struct Replay {
    state: ClusterState,
    answered: Answered,
}

/// Continues from a state (a coordinator's snapshot or checkpoint, when it restarts).
impl From<ClusterState> for Replay {
    fn from(state: ClusterState) -> Replay {
        Replay { state, answered: Answered::default() }
    }
}

impl Replay {
    /// Revision of the last event folded in.
    pub fn revision(&self) -> Revision {
        self.state.revision
    }

    /// Folds one event, as [`ClusterState::evolve`] does.
    pub fn evolve(&mut self, event: &Event) {
        self.state.fold(event);
        self.answered.push(event);
    }

    /// Checks `event` as [`ClusterState::foldable`] does and folds it as [`Replay::evolve`] when
    /// it passes; nothing changes when it does not. What a tool runs on events it did not
    /// produce.
    pub fn fold_checked(&mut self, event: &Event) -> Result<(), String> {
        self.state.fold_checked(event)?;
        self.answered.push(event);
        Ok(())
    }

    /// The state so far, for reads that need none of the requests the events answered (a
    /// migration's record after the event that changed it, as `log seed` stores it).
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The state, with the requests it remembers and every index it keeps.
    pub fn finish(mut self) -> ClusterState {
        self.answered.remember_in(&mut self.state);
        self.state.derived.requests = self.state.request_index();
        self.state
    }
}

/// The requests a replay's events answered, in order, as their actor and id: scoped
/// ([`scoped_request`]) only at the end, and only the last [`REQUEST_IDS_RETAINED`] of them,
/// which are all the state remembers. Consecutive events of one request (same actor, same id)
/// make one entry, as [`ClusterState::evolve`] makes one remembered request of them.
#[derive(Debug, Default)]
struct Answered {
    /// Each actor once (a cluster has few: its hosts' agents, its tokens).
    actors: Vec<Box<str>>,
    actor_index: std::collections::HashMap<Box<str>, u32>,
    /// The requests, the last [`REQUEST_IDS_RETAINED`] of them: actor (in `actors`), id, the
    /// revisions it produced.
    requests: VecDeque<(u32, RequestId, RevisionRange)>,
    /// Requests were dropped from the front: the state's own remembered requests (from before
    /// the replay) are then all older than the last [`REQUEST_IDS_RETAINED`].
    dropped: bool,
}

impl Answered {
    fn push(&mut self, event: &Event) {
        let rev = event.revision;
        if let Some((actor, id, range)) = self.requests.back_mut() {
            if *id == event.request_id && *self.actors[*actor as usize] == *event.actor {
                range.last = rev;
                return;
            }
        }
        let actor = self.actor(&event.actor);
        self.requests.push_back((actor, event.request_id, RevisionRange { first: rev, last: rev }));
        if self.requests.len() > REQUEST_IDS_RETAINED {
            self.requests.pop_front();
            self.dropped = true;
        }
    }

    fn actor(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.actor_index.get(name) {
            return i;
        }
        let i = u32::try_from(self.actors.len()).expect("fewer than 2^32 actors");
        self.actors.push(name.into());
        self.actor_index.insert(name.into(), i);
        i
    }

    /// Adds the requests to those `state` remembers, as folding their events one by one with
    /// [`ClusterState::evolve`] would have.
    fn remember_in(self, state: &mut ClusterState) {
        if self.dropped {
            state.requests.clear();
        }
        for (actor, id, range) in self.requests {
            state.remember_request(scoped_request(&self.actors[actor as usize], id), range, false);
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Derived {
    requests: BTreeMap<RequestId, RevisionRange>,
    in_flight: BTreeMap<Name, MigrationId>,
    /// Finished migrations by (revision they finished at, id): eviction goes oldest-finished first.
    finished: BTreeSet<(Revision, MigrationId)>,
    /// Resources of the guests each host owns.
    used: BTreeMap<Name, Resources>,
    /// The guests each host owns, by name: what a failed or draining host's guests are found
    /// from at every revision the leader applies, without a scan of every guest.
    owned: BTreeMap<Name, BTreeSet<Name>>,
    /// Resources promised to in-flight migrations' targets.
    reserved: BTreeMap<Name, Resources>,
    /// The digest of the guest configuration every host holds ([`ClusterState::config_digest`]).
    config_digest: u64,
    /// The guests of each anti-affinity group.
    groups: BTreeMap<Name, BTreeSet<Name>>,
}

impl ClusterState {
    /// Revision of the last event folded in (0 for an empty cluster).
    pub fn revision(&self) -> Revision {
        self.revision
    }
    pub fn host(&self, name: &Name) -> Option<&Host> {
        self.hosts.get(name)
    }
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }
    pub fn guest(&self, name: &Name) -> Option<&Guest> {
        self.guests.get(name)
    }
    pub fn guests(&self) -> impl Iterator<Item = &Guest> {
        self.guests.values()
    }
    pub fn package(&self, name: &Name) -> Option<&Package> {
        self.packages.get(name)
    }
    pub fn packages(&self) -> impl Iterator<Item = &Package> {
        self.packages.values()
    }
    /// Hosts in name order, from the first name after `after` (for paged lists).
    pub fn hosts_after(&self, after: Option<&Name>) -> impl Iterator<Item = &Host> {
        after_name(&self.hosts, after)
    }
    /// Guests in name order, from the first name after `after` (for paged lists).
    pub fn guests_after(&self, after: Option<&Name>) -> impl Iterator<Item = &Guest> {
        after_name(&self.guests, after)
    }
    /// Packages in name order, from the first name after `after` (for paged lists).
    pub fn packages_after(&self, after: Option<&Name>) -> impl Iterator<Item = &Package> {
        after_name(&self.packages, after)
    }
    /// In-flight migrations and recently finished ones; older history is in the event store.
    pub fn migration(&self, id: MigrationId) -> Option<&Migration> {
        self.migrations.get(&id)
    }
    pub fn migrations(&self) -> impl Iterator<Item = &Migration> {
        self.migrations.values()
    }
    /// The in-flight migration of a guest, if any.
    pub fn in_flight(&self, guest: &Name) -> Option<&Migration> {
        self.derived.in_flight.get(guest).and_then(|id| self.migrations.get(id))
    }
    pub fn in_flight_migrations(&self) -> impl Iterator<Item = &Migration> {
        self.derived.in_flight.values().filter_map(|id| self.migrations.get(id))
    }
    /// The cluster's identity, once committed (see [`ClusterIdentity`]).
    pub fn identity(&self) -> Option<&ClusterIdentity> {
        self.identity.as_ref()
    }
    /// The restore in progress, if any.
    pub fn importing(&self) -> Option<&ImportProgress> {
        self.importing.as_ref()
    }
    /// What apply adds to the Raft term when stamping events.
    pub fn term_base(&self) -> u64 {
        self.term_base
    }
    /// The term of the last event folded in.
    pub fn last_term(&self) -> u64 {
        self.last_term
    }
    /// A host under failure detection, failed or not.
    pub fn member(&self, host: &Name) -> Option<&Member> {
        self.members.get(host)
    }
    /// Why `host` is failed, if it is.
    pub fn host_failure(&self, host: &Name) -> Option<&HostFailure> {
        self.members.get(host).and_then(|m| m.failure.as_ref())
    }
    /// The member hosts declared failed (and not recovered), by name.
    pub fn failed_hosts(&self) -> impl Iterator<Item = &Name> {
        self.members.iter().filter(|(_, m)| m.failure.is_some()).map(|(h, _)| h)
    }
    /// A host's state with its failure: a failed host is `failed` whatever else holds.
    pub fn host_state(&self, host: &Host) -> HostState {
        if self.host_failure(&host.spec.name).is_some() {
            HostState::Failed
        } else if host.reachable && self.drains.contains_key(&host.spec.name) {
            HostState::Draining
        } else {
            host.state()
        }
    }
    /// The drain under way on `host`.
    pub fn drain(&self, host: &Name) -> Option<&Drain> {
        self.drains.get(host)
    }
    pub fn drains(&self) -> impl Iterator<Item = &Drain> {
        self.drains.values()
    }
    /// The in-flight failover of a guest.
    pub fn failover(&self, guest: &Name) -> Option<&Failover> {
        self.failovers.get(guest)
    }
    pub fn failovers(&self) -> impl Iterator<Item = &Failover> {
        self.failovers.values()
    }
    /// The guests `host` owns, in name order.
    pub fn guests_on<'a>(&'a self, host: &Name) -> impl Iterator<Item = &'a Guest> + 'a {
        let names = self.derived.owned.get(host).into_iter().flatten();
        names.map(|n| self.guests.get(n).expect("the owner index names existing guests"))
    }
    /// Packaged guests `host` owns (what `min_package_node` counts).
    pub fn packages_on(&self, host: &Name) -> usize {
        let packaged =
            |g: &&Guest| g.spec.package.as_ref().and_then(|p| self.packages.get(p)).is_some_and(|p| p.guest == g.name);
        self.guests_on(host).filter(packaged).count()
    }
    pub(crate) fn set_importing(&mut self, progress: ImportProgress) {
        self.importing = Some(progress);
    }

    /// Puts back the restore in progress that storage recorded beside the applied revision
    /// (the progress is not part of the history, so a state rebuilt from a base and the events
    /// after it lacks it or holds an older one), or that `log seed` found at the end of an
    /// export.
    pub fn resume_import(&mut self, progress: ImportProgress) {
        self.importing = Some(progress);
    }

    /// The digest every in-sync host reports: [`crate::hostconfig::HostConfig::digest`] of this
    /// state's guests, kept up to date event by event.
    pub fn config_digest(&self) -> u64 {
        self.derived.config_digest
    }

    /// The revisions an already-applied request of `actor` produced, if it is still
    /// remembered. Request ids are scoped to their actor: two clients that both choose id "1"
    /// make two different requests.
    pub fn applied_request(&self, actor: &str, id: RequestId) -> Option<RevisionRange> {
        self.derived.requests.get(&scoped_request(actor, id)).copied()
    }
    /// The guests of an anti-affinity group, in name order.
    pub fn group_members(&self, group: &Name) -> impl Iterator<Item = &Guest> {
        self.derived.groups.get(group).into_iter().flatten().filter_map(|n| self.guests.get(n))
    }

    /// Resources committed on a host: owned guests plus in-flight migrations heading there.
    pub fn committed_resources(&self, host: &Name) -> Resources {
        let used = self.derived.used.get(host).copied().unwrap_or_default();
        let reserved = self.derived.reserved.get(host).copied().unwrap_or_default();
        used.saturating_add(reserved)
    }

    /// Folds one event into the state. Events must come in revision order without gaps; that is
    /// an internal invariant of the log, so a violation is a bug and panics.
    pub fn evolve(&mut self, event: &Event) {
        self.fold(event);
        let rev = event.revision;
        self.remember_request(
            scoped_request(&event.actor, event.request_id),
            RevisionRange { first: rev, last: rev },
            true,
        );
    }

    /// [`ClusterState::evolve`] without remembering the request the event answered (see
    /// [`Replay`]).
    fn fold(&mut self, event: &Event) {
        assert_eq!(event.revision, self.revision + 1, "event revisions must be folded in order without gaps");
        let rev = event.revision;
        match &event.payload {
            EventPayload::ClusterCreated { cluster, restored_from } => {
                self.identity = Some(ClusterIdentity {
                    id: cluster.clone(),
                    created_at: event.time,
                    revision: rev,
                    restored_from: restored_from.clone(),
                });
                if let Some(from) = restored_from {
                    self.term_base = from.term_base;
                }
                self.importing = None;
            }
            EventPayload::HostRegistered { host } => {
                self.hosts.insert(host.spec.name.clone(), host.clone());
            }
            EventPayload::HostModified { host } => {
                let h = self.hosts.get_mut(&host.spec.name).expect("event names a registered host");
                *h = host.clone();
            }
            EventPayload::HostRemoved { host } => {
                self.hosts.remove(host).expect("event names a registered host");
                self.members.remove(host);
            }
            EventPayload::DrainStarted { drain } => {
                self.drains.insert(drain.host.clone(), drain.clone());
            }
            EventPayload::DrainEnded { host, .. } => {
                self.drains.remove(host).expect("event names a drain under way");
            }
            EventPayload::HostMaintenanceChanged { host, maintenance } => {
                let h = self.hosts.get_mut(host).expect("event names a registered host");
                h.maintenance = *maintenance;
                h.version = rev;
            }
            EventPayload::HostReachabilityChanged { host, reachable } => {
                let h = self.hosts.get_mut(host).expect("event names a registered host");
                h.reachable = *reachable;
                h.version = rev;
            }
            EventPayload::GuestCreated { guest } => {
                self.add_guest(guest.clone(), event);
            }
            EventPayload::GuestModified { guest } => {
                let slot = self.guests.get_mut(&guest.name).expect("event names an existing guest");
                modify_guest(slot, &mut self.derived, &mut self.packages, guest, event);
            }
            EventPayload::GuestRemoved { guest } => {
                self.failovers.remove(guest);
                let old = self.remove_guest(guest);
                if let Some(p) = &old.spec.package {
                    self.packages.remove(p);
                }
            }
            EventPayload::PackageSwitchingChanged { package, node, enabled, reason, migration, .. } => {
                let p = self.packages.get_mut(package).expect("event names an existing package");
                match node {
                    Some(n) if *enabled => {
                        p.disabled_nodes.remove(n);
                    }
                    Some(n) => {
                        p.disabled_nodes.insert(n.clone());
                    }
                    None => {
                        p.switching_enabled = *enabled;
                        p.switching_changed = SwitchingChange {
                            at: event.time,
                            revision: rev,
                            actor: event.actor.clone(),
                            reason: reason.clone(),
                            migration: *migration,
                        };
                    }
                }
            }
            EventPayload::MigrationRequested { migration } => {
                let demand = self.guests[&migration.guest].spec.demand();
                add(&mut self.derived.reserved, &migration.target, demand);
                self.derived.in_flight.insert(migration.guest.clone(), migration.id);
                let mut m = migration.clone();
                // The request's phase record is stamped with the term of the commit, which the
                // deciding step could not know.
                m.history[0].term = event.term;
                self.migrations.insert(m.id, m);
            }
            EventPayload::MigrationPhaseChanged { id, phase, .. } => {
                let m = self.migrations.get_mut(id).expect("event names a known migration");
                m.evolve(event);
                if phase.is_terminal() {
                    let (guest, target) = (m.guest.clone(), m.target.clone());
                    self.derived.in_flight.remove(&guest);
                    // A migration that failed before the owner switch still holds its reservation.
                    if let Some(g) = self.guests.get(&guest) {
                        if g.owner != target {
                            sub(&mut self.derived.reserved, &target, g.spec.demand());
                        }
                    }
                    self.derived.finished.insert((rev, *id));
                    self.evict_finished();
                }
            }
            EventPayload::GuestOwnerChanged { guest, from, to, .. } => {
                let demand = self.move_owner(guest, from, to, rev);
                // The reservation becomes real use.
                sub(&mut self.derived.reserved, to, demand);
            }
            // Records of what an agent did or measured; the state is what it was.
            EventPayload::GuestRepaired { .. }
            | EventPayload::MigrationTransferStats { .. }
            | EventPayload::MigrationResolved { .. }
            | EventPayload::MigrationTargetChecked { .. } => {}
            EventPayload::HostJoined { host } => {
                self.members.insert(host.clone(), Member { joined: rev, failure: None });
            }
            EventPayload::HostFailed { host, evidence } => {
                let failure = HostFailure { at: event.time, revision: rev, evidence: evidence.clone() };
                self.set_failure(host, Some(failure), rev);
            }
            EventPayload::HostRecovered { host } => self.set_failure(host, None, rev),
            EventPayload::FailoverStarted { guest, package, failed_host, from, to, .. } => {
                self.move_owner(guest, from, to, rev);
                let token = event.token();
                match self.failovers.get_mut(guest) {
                    Some(f) => {
                        let why = f.attempt_failed.take().unwrap_or_else(|| "replaced".into());
                        f.released = false;
                        f.tried.push((f.target.clone(), why));
                        f.target = to.clone();
                        f.token = token;
                    }
                    None => {
                        self.failovers.insert(
                            guest.clone(),
                            Failover {
                                guest: guest.clone(),
                                package: package.clone(),
                                failed_host: failed_host.clone(),
                                target: to.clone(),
                                token,
                                started_at: event.time,
                                tried: Vec::new(),
                                attempt_failed: None,
                                released: false,
                            },
                        );
                    }
                }
            }
            EventPayload::FailoverCompleted { guest, .. } | EventPayload::FailoverFailed { guest, .. } => {
                self.failovers.remove(guest);
            }
            EventPayload::FailoverAttemptFailed { guest, reason, released, .. } => {
                let f = self.failovers.get_mut(guest).expect("event names an in-flight failover");
                f.attempt_failed = Some(reason.clone());
                f.released = *released;
            }
            EventPayload::FailoverAttemptReleased { guest, .. } => {
                self.failovers.get_mut(guest).expect("event names an in-flight failover").released = true;
            }
            EventPayload::PackageModified { package, nodes, failover_policy, failback_policy, .. } => {
                let p = self.packages.get_mut(package).expect("event names an existing package");
                p.nodes.clone_from(nodes);
                p.failover_policy = *failover_policy;
                p.failback_policy = *failback_policy;
            }
        }
        self.folded(event);
    }

    /// What folding any event ends with, once the event's own change is made: the revision and
    /// the term.
    fn folded(&mut self, event: &Event) {
        self.revision = event.revision;
        self.last_term = event.term;
    }

    /// Checks `event` as [`ClusterState::foldable`] does and, when it passes, folds it without
    /// remembering its request (see [`Replay`]). A guest change, most of a long history, looks its
    /// guest up once for both.
    fn fold_checked(&mut self, event: &Event) -> Result<(), String> {
        let EventPayload::GuestModified { guest } = &event.payload else {
            self.foldable(event)?;
            self.fold(event);
            return Ok(());
        };
        self.follows(event)?;
        let slot = self.guests.get_mut(&guest.name).ok_or_else(|| unknown_guest(&guest.name))?;
        guest_change_foldable(&self.hosts, &self.packages, slot, guest)?;
        modify_guest(slot, &mut self.derived, &mut self.packages, guest, event);
        self.folded(event);
        Ok(())
    }

    fn follows(&self, event: &Event) -> Result<(), String> {
        match event.revision == self.revision + 1 {
            true => Ok(()),
            false => Err(format!("revision {} does not follow revision {}", event.revision, self.revision)),
        }
    }

    /// Whether `event` can be folded onto this state: everything [`ClusterState::evolve`] takes
    /// for granted. Events this state machine produced always pass; imported events (`log
    /// restore`) are checked with it first, so a damaged or hostile import is refused instead
    /// of corrupting the state.
    pub fn foldable(&self, event: &Event) -> Result<(), String> {
        self.follows(event)?;
        let host = |h: &Name| known_host(&self.hosts, h);
        let guest = |g: &Name| self.guests.get(g).ok_or_else(|| unknown_guest(g));
        let fresh_package = |g: &Guest, replacing: Option<&Guest>| fresh_package(&self.packages, g, replacing);
        match &event.payload {
            EventPayload::ClusterCreated { .. } => Ok(()),
            EventPayload::HostRegistered { host: h } if self.hosts.contains_key(&h.spec.name) => {
                Err(format!("registers host {} twice", h.spec.name))
            }
            EventPayload::HostRegistered { .. } => Ok(()),
            EventPayload::HostMaintenanceChanged { host: h, .. }
            | EventPayload::HostReachabilityChanged { host: h, .. } => host(h),
            EventPayload::HostModified { host: h } => host(&h.spec.name),
            EventPayload::DrainStarted { drain } => {
                host(&drain.host)?;
                match self.drains.contains_key(&drain.host) {
                    true => Err(format!("starts a second drain of host {}", drain.host)),
                    false => Ok(()),
                }
            }
            EventPayload::DrainEnded { host: h, .. } => match self.drains.contains_key(h) {
                true => Ok(()),
                false => Err(format!("ends a drain of host {h} that is not under way")),
            },
            EventPayload::HostRemoved { host: h } => {
                host(h)?;
                if self.drains.contains_key(h) {
                    return Err(format!("removes host {h} while it is being drained"));
                }
                if let Some(g) = self.guests.values().find(|g| g.owner == *h) {
                    return Err(format!("removes host {h}, which still owns guest {}", g.name));
                }
                if let Some(m) = self.in_flight_migrations().find(|m| m.source == *h || m.target == *h) {
                    return Err(format!("removes host {h}, which migration {} still names", m.id));
                }
                match self.packages.values().find(|p| p.nodes.contains(h) || p.disabled_nodes.contains(h)) {
                    Some(p) => Err(format!("removes host {h}, which package {} still names", p.name)),
                    None => Ok(()),
                }
            }
            EventPayload::GuestCreated { guest: g } => {
                if self.guests.contains_key(&g.name) {
                    return Err(format!("creates guest {} twice", g.name));
                }
                host(&g.owner)?;
                fresh_package(g, None)
            }
            EventPayload::GuestModified { guest: g } => {
                guest_change_foldable(&self.hosts, &self.packages, guest(&g.name)?, g)
            }
            EventPayload::GuestRemoved { guest: g } => guest(g).map(|_| ()),
            EventPayload::PackageSwitchingChanged { package, .. } => self
                .packages
                .contains_key(package)
                .then_some(())
                .ok_or_else(|| format!("names unknown package {package}")),
            EventPayload::MigrationRequested { migration: m } => {
                guest(&m.guest)?;
                host(&m.source)?;
                host(&m.target)?;
                if m.id.0 != event.revision || m.history.is_empty() {
                    return Err(format!(
                        "migration record {} is not the one revision {} would hold",
                        m.id, event.revision
                    ));
                }
                match self.derived.in_flight.get(&m.guest) {
                    Some(other) => Err(format!("guest {} already has migration {other} in flight", m.guest)),
                    None => Ok(()),
                }
            }
            EventPayload::MigrationPhaseChanged { id, .. } => match self.migrations.get(id) {
                Some(m) if !m.phase.is_terminal() => Ok(()),
                Some(m) => Err(format!("changes migration {id}, which already finished as {}", m.phase)),
                None => Err(format!("names unknown migration {id}")),
            },
            EventPayload::GuestOwnerChanged { guest: g, from, to, .. } => {
                let old = guest(g)?;
                host(to)?;
                if &old.owner != from {
                    return Err(format!("moves guest {g} from {from}, but it runs on {}", old.owner));
                }
                Ok(())
            }
            EventPayload::GuestRepaired { guest: g, host: h, .. } => {
                guest(g)?;
                host(h)
            }
            EventPayload::MigrationTransferStats { id, guest: g, .. } => match self.migrations.get(id) {
                Some(m) if &m.guest == g => Ok(()),
                Some(m) => {
                    Err(format!("gives transfer figures of migration {id} for guest {g}, but it moves {}", m.guest))
                }
                None => Err(format!("gives transfer figures of unknown migration {id}")),
            },
            EventPayload::MigrationTargetChecked { id, guest: g, host: h, .. } => match self.migrations.get(id) {
                Some(m) if !m.phase.is_terminal() => {
                    Err(format!("checks the target of migration {id}, which is still {}", m.phase))
                }
                Some(m) if &m.guest != g || &m.target != h => {
                    Err(format!("checks {h} for guest {g} in migration {id}, which moves {} to {}", m.guest, m.target))
                }
                Some(_) => Ok(()),
                None => Err(format!("checks the target of unknown migration {id}")),
            },
            EventPayload::MigrationResolved { id, guest: g, .. } => match self.migrations.get(id) {
                Some(m) if m.phase.is_terminal() => {
                    Err(format!("resolves migration {id}, which already finished as {}", m.phase))
                }
                Some(m) if &m.guest == g => Ok(()),
                Some(m) => Err(format!("resolves migration {id} of guest {g}, but it moves {}", m.guest)),
                None => Err(format!("resolves unknown migration {id}")),
            },
            EventPayload::HostJoined { host: h } => {
                host(h)?;
                match self.members.contains_key(h) {
                    true => Err(format!("joins host {h} twice")),
                    false => Ok(()),
                }
            }
            EventPayload::HostFailed { host: h, .. } => match self.members.get(h) {
                Some(m) if m.failure.is_none() => Ok(()),
                Some(_) => Err(format!("fails host {h}, which already failed")),
                None => Err(format!("fails host {h}, which never joined")),
            },
            EventPayload::HostRecovered { host: h } => match self.members.get(h) {
                Some(m) if m.failure.is_some() => Ok(()),
                _ => Err(format!("recovers host {h}, which is not failed")),
            },
            EventPayload::FailoverStarted { guest: g, package, from, to, failed_host, .. } => {
                let old = guest(g)?;
                host(to)?;
                host(failed_host)?;
                if &old.owner != from {
                    return Err(format!("fails guest {g} over from {from}, but it runs on {}", old.owner));
                }
                if old.spec.package.as_ref() != Some(package) {
                    return Err(format!("fails guest {g} over as package {package}, which does not wrap it"));
                }
                Ok(())
            }
            EventPayload::FailoverCompleted { guest: g, .. }
            | EventPayload::FailoverAttemptFailed { guest: g, .. }
            | EventPayload::FailoverAttemptReleased { guest: g, .. }
            | EventPayload::FailoverFailed { guest: g, .. } => self
                .failovers
                .contains_key(g)
                .then_some(())
                .ok_or_else(|| format!("ends a failover of {g}, which has none")),
            EventPayload::PackageModified { package, nodes, .. } => {
                if !self.packages.contains_key(package) {
                    return Err(format!("names unknown package {package}"));
                }
                nodes.iter().try_for_each(host)
            }
        }
    }

    fn add_guest(&mut self, guest: Guest, event: &Event) {
        add(&mut self.derived.used, &guest.owner, guest.spec.demand());
        own(&mut self.derived.owned, &guest.owner, &guest.name);
        group(&mut self.derived.groups, &guest);
        if let Some(p) = &guest.spec.package {
            self.packages.insert(p.clone(), new_package(p, &guest.name, event));
        }
        self.derived.config_digest = self.derived.config_digest.wrapping_add(guest_digest(&guest));
        self.guests.insert(guest.name.clone(), guest);
    }

    /// A member host fails (reachable no more) or recovers (reachable again).
    fn set_failure(&mut self, host: &Name, failure: Option<HostFailure>, rev: Revision) {
        let h = self.hosts.get_mut(host).expect("event names a registered host");
        h.reachable = failure.is_none();
        h.version = rev;
        self.members.get_mut(host).expect("event names a member host").failure = failure;
    }

    /// The guest now runs on `to` (its version is the revision that says so); answers its demand.
    fn move_owner(&mut self, guest: &Name, from: &Name, to: &Name, rev: Revision) -> Resources {
        let g = self.guests.get_mut(guest).expect("event names an existing guest");
        let demand = g.spec.demand();
        let before = guest_digest(g);
        g.owner = to.clone();
        g.version = rev;
        self.derived.config_digest = self.derived.config_digest.wrapping_sub(before).wrapping_add(guest_digest(g));
        sub(&mut self.derived.used, from, demand);
        add(&mut self.derived.used, to, demand);
        disown(&mut self.derived.owned, from, guest);
        own(&mut self.derived.owned, to, guest);
        demand
    }

    fn remove_guest(&mut self, name: &Name) -> Guest {
        let old = self.guests.remove(name).expect("event names an existing guest");
        sub(&mut self.derived.used, &old.owner, old.spec.demand());
        disown(&mut self.derived.owned, &old.owner, &old.name);
        ungroup(&mut self.derived.groups, &old);
        self.derived.config_digest = self.derived.config_digest.wrapping_sub(guest_digest(&old));
        old
    }

    /// Remembers that the request `id` (scoped: [`scoped_request`]) produced the revisions
    /// `produced`, right after those remembered so far: a request that goes on from the last
    /// one remembered extends it. `index` keeps the request-id index up to date too.
    fn remember_request(&mut self, id: RequestId, produced: RevisionRange, index: bool) {
        if let Some((last_id, range)) = self.requests.back_mut() {
            if *last_id == id {
                range.last = produced.last;
                if index {
                    self.derived.requests.insert(id, *range);
                }
                return;
            }
        }
        self.requests.push_back((id, produced));
        if index {
            self.derived.requests.insert(id, produced);
        }
        while self.requests.len() > REQUEST_IDS_RETAINED {
            let (old, range) = self.requests.pop_front().expect("non-empty");
            // Only its own entry: an id used again later (an imported history's) indexes the
            // later request, as the index rebuilt from the remembered requests does.
            if index && self.derived.requests.get(&old) == Some(&range) {
                self.derived.requests.remove(&old);
            }
        }
    }

    /// The request-id index as the remembered requests make it.
    fn request_index(&self) -> BTreeMap<RequestId, RevisionRange> {
        self.requests.iter().copied().collect()
    }

    fn evict_finished(&mut self) {
        while self.derived.finished.len() > FINISHED_MIGRATIONS_RETAINED {
            let (_, oldest) = self.derived.finished.pop_first().expect("non-empty");
            self.migrations.remove(&oldest);
        }
    }

    /// A copy of the part of the state that folding `events` can read or change, for checking
    /// an import chunk at a cost that does not grow with the number of guests: every host and
    /// migration; the guests and packages the events name, with the packages of those guests
    /// and the guests of those packages; the guests (and packages) of in-flight migrations; the
    /// packages whose switching a migration the events change last set. Recent request ids are
    /// left out (no check reads them).
    ///
    /// For these events, [`ClusterState::foldable`] and [`ClusterState::check_invariants`] give
    /// the same verdicts on this copy as on a whole one: every entity a check of the events
    /// reads is here with its current value, and the invariants of the entities left out held
    /// before and are not touched by the events.
    pub fn scoped_copy(&self, events: &[Event]) -> ClusterState {
        let mut guests: BTreeSet<&Name> = BTreeSet::new();
        let mut packages: BTreeSet<&Name> = BTreeSet::new();
        let mut migrations: BTreeSet<MigrationId> = BTreeSet::new();
        for e in events {
            match &e.payload {
                EventPayload::GuestCreated { guest } | EventPayload::GuestModified { guest } => {
                    guests.insert(&guest.name);
                    packages.extend(guest.spec.package.as_ref());
                }
                EventPayload::GuestRemoved { guest }
                | EventPayload::GuestOwnerChanged { guest, .. }
                | EventPayload::GuestRepaired { guest, .. } => {
                    guests.insert(guest);
                }
                EventPayload::PackageSwitchingChanged { package, guest, .. } => {
                    packages.insert(package);
                    guests.insert(guest);
                }
                EventPayload::MigrationRequested { migration } => {
                    guests.insert(&migration.guest);
                }
                EventPayload::MigrationPhaseChanged { id, guest, .. }
                | EventPayload::MigrationTransferStats { id, guest, .. }
                | EventPayload::MigrationResolved { id, guest, .. }
                | EventPayload::MigrationTargetChecked { id, guest, .. } => {
                    guests.insert(guest);
                    migrations.insert(*id);
                }
                EventPayload::FailoverStarted { guest, .. }
                | EventPayload::FailoverCompleted { guest, .. }
                | EventPayload::FailoverAttemptFailed { guest, .. }
                | EventPayload::FailoverAttemptReleased { guest, .. }
                | EventPayload::FailoverFailed { guest, .. } => {
                    guests.insert(guest);
                }
                EventPayload::PackageModified { package, guest, .. } => {
                    packages.insert(package);
                    guests.insert(guest);
                }
                // Its check reads every guest the host owns and every package naming it (rare:
                // the packages' scan is paid only by a host's removal).
                EventPayload::HostRemoved { host } => {
                    guests.extend(self.guests_on(host).map(|g| &g.name));
                    packages.extend(
                        self.packages
                            .values()
                            .filter(|p| p.nodes.contains(host) || p.disabled_nodes.contains(host))
                            .map(|p| &p.name),
                    );
                }
                EventPayload::ClusterCreated { .. }
                | EventPayload::HostRegistered { .. }
                | EventPayload::HostMaintenanceChanged { .. }
                | EventPayload::HostReachabilityChanged { .. }
                | EventPayload::HostModified { .. }
                | EventPayload::DrainStarted { .. }
                | EventPayload::DrainEnded { .. }
                | EventPayload::HostJoined { .. }
                | EventPayload::HostFailed { .. }
                | EventPayload::HostRecovered { .. } => {}
            }
        }
        guests.extend(self.derived.in_flight.keys());
        guests.extend(migrations.iter().filter_map(|id| self.migrations.get(id)).map(|m| &m.guest));
        // Packages a changed migration last switched: invariant 3 ties them to it.
        if !migrations.is_empty() {
            packages.extend(
                self.packages
                    .values()
                    .filter(|p| p.switching_changed.migration.is_some_and(|m| migrations.contains(&m)))
                    .map(|p| &p.name),
            );
        }
        // Close over guest ↔ package, both ways.
        let guest_packages: Vec<&Name> =
            guests.iter().filter_map(|g| self.guests.get(*g)).filter_map(|g| g.spec.package.as_ref()).collect();
        packages.extend(guest_packages);
        guests.extend(packages.iter().filter_map(|p| self.packages.get(*p)).map(|p| &p.guest));
        let failovers = subset(&self.failovers, guests.iter().copied());
        let mut copy = ClusterState {
            revision: self.revision,
            hosts: self.hosts.clone(),
            guests: subset(&self.guests, guests),
            packages: subset(&self.packages, packages),
            migrations: self.migrations.clone(),
            requests: VecDeque::new(),
            identity: self.identity.clone(),
            importing: self.importing.clone(),
            term_base: self.term_base,
            last_term: self.last_term,
            members: self.members.clone(),
            failovers,
            drains: self.drains.clone(),
            derived: Derived::default(),
        };
        copy.rebuild_indexes();
        copy
    }

    /// Recomputes the derived indexes from the serialised fields. Called after decoding.
    pub fn rebuild_indexes(&mut self) {
        self.derived = self.derive();
    }

    /// The derived indexes computed from scratch.
    fn derive(&self) -> Derived {
        let mut d = Derived { requests: self.request_index(), ..Derived::default() };
        for g in self.guests.values() {
            add(&mut d.used, &g.owner, g.spec.demand());
            own(&mut d.owned, &g.owner, &g.name);
            group(&mut d.groups, g);
            d.config_digest = d.config_digest.wrapping_add(guest_digest(g));
        }
        for m in self.migrations.values() {
            if m.phase.is_terminal() {
                let finished_at = m.history.last().map_or(m.id.0, |r| r.revision);
                d.finished.insert((finished_at, m.id));
            } else {
                d.in_flight.insert(m.guest.clone(), m.id);
                if let Some(g) = self.guests.get(&m.guest) {
                    if g.owner != m.target {
                        add(&mut d.reserved, &m.target, g.spec.demand());
                    }
                }
            }
        }
        d
    }

    /// Checks the invariants that must hold at every revision (SPEC §5) plus the consistency of
    /// the derived indexes. Returns a description of every violation found.
    pub fn check_invariants(&self) -> Vec<String> {
        let mut bad = Vec::new();
        if self.derive() != self.derived {
            bad.push("derived indexes differ from a rebuild".to_string());
        }
        for g in self.guests.values() {
            // 1. exactly one owner, and it is a registered host.
            if !self.hosts.contains_key(&g.owner) {
                bad.push(format!("guest {} owned by unknown host {}", g.name, g.owner));
            }
            if let Some(p) = &g.spec.package {
                match self.packages.get(p) {
                    Some(pkg) if pkg.guest == g.name => {}
                    _ => bad.push(format!("guest {} names package {p} that does not wrap it", g.name)),
                }
            }
        }
        // A failover's target owns its guest: the owner is who was asked to start it.
        for f in self.failovers.values() {
            match self.guests.get(&f.guest) {
                Some(g) if g.owner == f.target => {}
                Some(g) => bad.push(format!("failover of {} targets {}, but {} owns it", f.guest, f.target, g.owner)),
                None => bad.push(format!("failover of unknown guest {}", f.guest)),
            }
        }
        for d in self.drains.values() {
            if !self.hosts.contains_key(&d.host) {
                bad.push(format!("a drain of unknown host {}", d.host));
            }
        }
        // 4. at most one in-flight migration per guest.
        let mut seen = BTreeSet::new();
        for m in self.migrations.values().filter(|m| !m.phase.is_terminal()) {
            if !seen.insert(&m.guest) {
                bad.push(format!("guest {} has more than one in-flight migration", m.guest));
            }
        }
        // 3. no package left unprotected by a finished migration: a package whose switching was
        //    last changed by a migration that is now finished must be back at its earlier state.
        for p in self.packages.values() {
            if let Some(mid) = p.switching_changed.migration {
                if let Some(m) = self.migrations.get(&mid) {
                    if m.phase.is_terminal() && Some(p.switching_enabled) != m.switching_before {
                        bad.push(format!(
                            "package {} switching is {} after migration {mid} ended, was {:?} before",
                            p.name, p.switching_enabled, m.switching_before
                        ));
                    }
                }
            }
        }
        bad
    }
}

/// The package a guest event creates: switching enabled, on no node disabled.
/// Folds a guest's change into its record `slot`, overwritten in place (buffers reused), and
/// into what is derived from it: the owner's resources, the configuration digest, the
/// anti-affinity groups and the guest's package. Guest changes are most of a long history.
fn modify_guest(
    slot: &mut Guest,
    derived: &mut Derived,
    packages: &mut BTreeMap<Name, Package>,
    guest: &Guest,
    event: &Event,
) {
    let (before, after) = (slot.spec.demand(), guest.spec.demand());
    if slot.owner == guest.owner {
        replace(&mut derived.used, &slot.owner, before, after);
    } else {
        sub(&mut derived.used, &slot.owner, before);
        add(&mut derived.used, &guest.owner, after);
        disown(&mut derived.owned, &slot.owner, &slot.name);
        own(&mut derived.owned, &guest.owner, &guest.name);
    }
    derived.config_digest = derived.config_digest.wrapping_sub(guest_digest(slot));
    if slot.spec.anti_affinity != guest.spec.anti_affinity {
        ungroup(&mut derived.groups, slot);
        group(&mut derived.groups, guest);
    }
    // A package that stays the same keeps its switching state; any other change drops the old
    // package and creates the new one fresh.
    if slot.spec.package != guest.spec.package {
        if let Some(old) = &slot.spec.package {
            packages.remove(old);
        }
        if let Some(p) = &guest.spec.package {
            packages.insert(p.clone(), new_package(p, &guest.name, event));
        }
    }
    slot.clone_from(guest);
    derived.config_digest = derived.config_digest.wrapping_add(guest_digest(slot));
}

/// Whether guest `old` can change into `g`: its owner is a known host, and its package wraps
/// no other guest.
fn guest_change_foldable(
    hosts: &BTreeMap<Name, Host>,
    packages: &BTreeMap<Name, Package>,
    old: &Guest,
    g: &Guest,
) -> Result<(), String> {
    known_host(hosts, &g.owner)?;
    fresh_package(packages, g, Some(old))
}

fn known_host(hosts: &BTreeMap<Name, Host>, h: &Name) -> Result<(), String> {
    hosts.contains_key(h).then_some(()).ok_or_else(|| format!("names unknown host {h}"))
}

fn unknown_guest(g: &Name) -> String {
    format!("names unknown guest {g}")
}

/// A guest's package is fresh unless another guest than `replacing` (the guest's record before
/// a change) has it.
fn fresh_package(packages: &BTreeMap<Name, Package>, g: &Guest, replacing: Option<&Guest>) -> Result<(), String> {
    match &g.spec.package {
        Some(p) if packages.get(p).is_some_and(|pk| Some(&pk.guest) != replacing.map(|r| &r.name)) => {
            Err(format!("package {p} already wraps another guest"))
        }
        _ => Ok(()),
    }
}

fn new_package(name: &Name, guest: &Name, event: &Event) -> Package {
    Package {
        name: name.clone(),
        guest: guest.clone(),
        switching_enabled: true,
        disabled_nodes: BTreeSet::new(),
        switching_changed: SwitchingChange {
            at: event.time,
            revision: event.revision,
            actor: event.actor.clone(),
            reason: Some("package created".into()),
            migration: None,
        },
        nodes: Vec::new(),
        failover_policy: FailoverPolicy::default(),
        failback_policy: FailbackPolicy::default(),
    }
}

/// The entries of `map` under `keys` (absent keys skipped), copied.
fn subset<'a, V: Clone>(map: &BTreeMap<Name, V>, keys: impl IntoIterator<Item = &'a Name>) -> BTreeMap<Name, V> {
    keys.into_iter().filter_map(|k| map.get_key_value(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn add(map: &mut BTreeMap<Name, Resources>, host: &Name, r: Resources) {
    // Looked up first: `entry` would copy the name on every guest change, not only the first.
    match map.get_mut(host) {
        Some(e) => *e = e.saturating_add(r),
        None => {
            map.insert(host.clone(), r);
        }
    }
}

/// Notes in the owner index that `host` owns `guest`.
fn own(owned: &mut BTreeMap<Name, BTreeSet<Name>>, host: &Name, guest: &Name) {
    match owned.get_mut(host) {
        Some(guests) => {
            guests.insert(guest.clone());
        }
        None => {
            owned.insert(host.clone(), BTreeSet::from([guest.clone()]));
        }
    }
}

/// Notes in the owner index that `host` no longer owns `guest`.
fn disown(owned: &mut BTreeMap<Name, BTreeSet<Name>>, host: &Name, guest: &Name) {
    if let Some(guests) = owned.get_mut(host) {
        guests.remove(guest);
        if guests.is_empty() {
            owned.remove(host);
        }
    }
}

/// Adds a guest to its anti-affinity group's index, if it has one.
fn group(groups: &mut BTreeMap<Name, BTreeSet<Name>>, g: &Guest) {
    if let Some(a) = &g.spec.anti_affinity {
        groups.entry(a.group.clone()).or_default().insert(g.name.clone());
    }
}

fn ungroup(groups: &mut BTreeMap<Name, BTreeSet<Name>>, g: &Guest) {
    if let Some(a) = &g.spec.anti_affinity {
        if let Some(members) = groups.get_mut(&a.group) {
            members.remove(&g.name);
            if members.is_empty() {
                groups.remove(&a.group);
            }
        }
    }
}

/// [`sub`] of `before` then [`add`] of `after` for one host, in one lookup (a guest changed in
/// place: most of a long history).
fn replace(map: &mut BTreeMap<Name, Resources>, host: &Name, before: Resources, after: Resources) {
    match map.get_mut(host) {
        Some(e) => *e = e.saturating_sub(before).saturating_add(after),
        None => {
            map.insert(host.clone(), after);
        }
    }
}

fn sub(map: &mut BTreeMap<Name, Resources>, host: &Name, r: Resources) {
    if let Some(e) = map.get_mut(host) {
        *e = e.saturating_sub(r);
        if *e == Resources::default() {
            map.remove(host);
        }
    }
}

/// The values of `map` whose names come after `after` (all of them without one).
fn after_name<'a, T>(map: &'a BTreeMap<Name, T>, after: Option<&Name>) -> impl Iterator<Item = &'a T> {
    use std::ops::Bound;
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    map.range::<Name, _>((from, Bound::Unbounded)).map(|(_, v)| v)
}

/// The key a request is remembered by: its id within its actor's (the first 128 bits of
/// SHA-256 over the actor, a separator and the id), so one actor's id never answers for
/// another's request.
pub fn scoped_request(actor: &str, id: RequestId) -> RequestId {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(actor.as_bytes());
    h.update([0u8]);
    h.update(id.0.to_be_bytes());
    let d = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&d[..16]);
    RequestId(u128::from_be_bytes(first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CompatProfile, HostSpec, Timestamp};

    fn event(revision: Revision, request: u128, payload: EventPayload) -> Event {
        Event {
            revision,
            term: 1,
            time: Timestamp(revision),
            actor: "test".into(),
            request_id: RequestId(request),
            payload,
        }
    }

    /// A history of `length` events past its first two: guest changes, where the event at every
    /// seventh revision belongs to the request before it (a request of two events), and the
    /// requests' actors take turns among `actors` (a request's id is its actor's own).
    fn guest_changes(length: u128, actors: u128) -> Vec<Event> {
        let name = |s: &str| Name::new(s).unwrap();
        let host = Host {
            spec: HostSpec {
                name: name("h1"),
                address: "h1:7100".into(),
                capacity: Resources { vcpus: 64, memory_mib: 1 << 20 },
                profile: CompatProfile::default(),
                labels: Default::default(),
            },
            maintenance: false,
            reachable: true,
            version: 1,
        };
        let mut guest = crate::testing::guest("g1", 1);
        guest.version = 2;
        let mut events = vec![
            event(1, 1, EventPayload::HostRegistered { host }),
            event(2, 2, EventPayload::GuestCreated { guest: guest.clone() }),
        ];
        let mut request = 2;
        while request < length {
            let revision = events.len() as Revision + 1;
            if !revision.is_multiple_of(7) {
                request += 1;
            }
            guest.spec.vcpus = 1 + (revision % 8) as u32;
            guest.version = revision;
            let mut e = event(revision, request / actors, EventPayload::GuestModified { guest: guest.clone() });
            if actors > 1 {
                e.actor = format!("agent-{}", request % actors);
            }
            events.push(e);
        }
        events
    }

    /// Past the window of remembered requests, with requests of one and of two events: the
    /// index a replay builds at the end is the one `evolve` keeps event by event.
    #[test]
    fn a_replay_ends_with_the_state_evolve_keeps() {
        let events = guest_changes(REQUEST_IDS_RETAINED as u128 + 5_000, 1);
        let request = events.last().unwrap().request_id.0;
        let mut live = ClusterState::default();
        let mut replay = Replay::default();
        for e in &events {
            live.evolve(e);
            replay.evolve(e);
        }
        assert_eq!(replay.revision(), live.revision());
        let replayed = replay.finish();
        assert_eq!(replayed, live);
        assert!(replayed.check_invariants().is_empty());
        assert_eq!(replayed.applied_request("test", RequestId(3)), None, "evicted");
        let last = replayed.applied_request("test", RequestId(request)).map(|r| r.last);
        assert_eq!(last, Some(events.len() as Revision));
        assert_eq!(replayed.applied_request("someone-else", RequestId(request)), None, "scoped to the actor");
    }

    /// A replay that goes on from a state (a coordinator's restart from its snapshot) ends with
    /// the requests `evolve` remembers: a request begun before the state's revision and ended
    /// after it is one request, of both parts' revisions; the state's own requests go once the
    /// replay answered more than the window holds; requests of several actors with the same ids
    /// stay apart.
    #[test]
    fn a_replay_from_a_state_ends_with_the_requests_evolve_keeps() {
        for length in [3_000, REQUEST_IDS_RETAINED as u128 + 3_000] {
            let events = guest_changes(length, 3);
            let mut live = ClusterState::default();
            for e in &events {
                live.evolve(e);
            }
            // Cut within a request of two events (revisions 13 and 14), after one (at 15), and
            // where the replay answers the window's worth of requests or one more.
            let mut cuts = vec![13, 15];
            let mut answered = 0;
            for cut in (1..events.len()).rev() {
                let next = events.get(cut + 1).map(|n| (&n.actor, n.request_id));
                if next != Some((&events[cut].actor, events[cut].request_id)) {
                    answered += 1;
                }
                if answered == REQUEST_IDS_RETAINED || answered == REQUEST_IDS_RETAINED + 1 {
                    cuts.push(cut);
                }
            }
            cuts.sort_unstable();
            let mut base = ClusterState::default();
            let mut folded = 0;
            for cut in cuts {
                for e in &events[folded..cut] {
                    base.evolve(e);
                }
                folded = cut;
                let mut replay = Replay::from(base.clone());
                for e in &events[cut..] {
                    replay.evolve(e);
                }
                assert_eq!(replay.finish(), live, "{length} requests, cut after {cut} events");
            }
        }
    }

    /// A replay that answered more requests than the window holds keeps none of the state's:
    /// not even when the oldest it keeps has the id of the state's last (a client that used an
    /// id again), which is another request, not the same one going on.
    #[test]
    fn a_replay_past_the_window_keeps_none_of_the_states_requests() {
        let mut events = guest_changes(REQUEST_IDS_RETAINED as u128 + 100, 1);
        // The first event of a request, where the events after it answer one request more than
        // the window holds.
        let (mut answered, mut cut) = (0, 0);
        for i in (1..events.len()).rev() {
            if events.get(i + 1).map(|n| n.request_id) != Some(events[i].request_id) {
                answered += 1;
            }
            if answered == REQUEST_IDS_RETAINED + 1 && events[i - 1].request_id != events[i].request_id {
                cut = i;
                break;
            }
        }
        let reused = events[cut - 1].request_id;
        let second = events[cut..].iter().position(|e| e.request_id != events[cut].request_id).unwrap() + cut;
        let id = events[second].request_id;
        for e in events[second..].iter_mut().take_while(|e| e.request_id == id) {
            e.request_id = reused;
        }
        let mut live = ClusterState::default();
        for e in &events {
            live.evolve(e);
        }
        let mut base = ClusterState::default();
        for e in &events[..cut] {
            base.evolve(e);
        }
        let mut replay = Replay::from(base);
        for e in &events[cut..] {
            replay.evolve(e);
        }
        let replayed = replay.finish();
        assert_eq!(replayed, live);
        let range = replayed.applied_request("test", reused).unwrap();
        assert_eq!(range.first, events[second].revision, "the id used again is its own request");
    }
}
