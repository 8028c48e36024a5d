//! The leader's high-availability decisions, pure like `apply`:
//!
//! - **Host liveness** ([`liveness_commands`]): when a host joins failure detection, when it is
//!   declared failed (its lease expired by the leader's monotonic clock, plus the grace), when a
//!   failed host rejoins, and its reachability; [`Leases`] is the leader's memory of renewals
//!   that feeds it, and decides what a renewal is answered.
//! - **Where a failed host's guests go** ([`candidates`], [`choose`]): which nodes of a
//!   package could start its guest now, why each other node is excluded, and the choice the
//!   package's failover policy makes among them. `apply` checks the choice again when it is
//!   committed (the state may have changed in between); `package show` and `ha status`
//!   explain with it.
//! - **The failover saga's next steps** ([`plan_failovers`], [`failbacks`]).
//!
//! The leader's tasks (`coordinator/src/leader/`) call these with the time of their own
//! monotonic clock, so the decisions are tested here with made-up instants, without waiting.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::limits::TEXT_LEN_MAX;
use crate::model::{
    FailbackPolicy, FailoverPolicy, FencingToken, Guest, Host, MigrationKind, Package, Phase, RunState,
};
use crate::name::Name;
use crate::state::ClusterState;

/// A sighting of a host's agent by the leader, on the leader's monotonic clock: a lease
/// renewal with the (applied revision, digest) it reported, or the leader's own start of
/// leadership (`report: None`), which a new leader counts as every host's last renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sighting {
    pub at: Instant,
    pub report: Option<(u64, u64)>,
}

/// The leader's liveness timings (the coordinators' `ha` and `api` settings).
#[derive(Clone, Copy, Debug)]
pub struct LivenessTimes {
    /// How long a renewal holds (`ha.lease_ms`).
    pub lease: Duration,
    /// Added to the lease before a silent host is declared failed (`ha.grace_ms`).
    pub grace: Duration,
    /// Silence after which a host is logged unreachable (`api.host_report_timeout_ms`).
    pub report_timeout: Duration,
}

/// The leader's memory of its hosts' lease renewals, on its monotonic clock (`now` in every
/// call): the last renewal of each host, when this node took office, and the hosts whose
/// failure it has decided and not yet seen applied. Only a leader holds it; it starts empty
/// when a node takes office, so a leader change never marks a healthy host failed.
///
/// A renewal and a decision are ordered by whoever holds the value (the coordinator keeps it
/// behind one lock): a renewal recorded before [`Leases::decide`] prevents the declaration; one
/// after it, until the state shows the failure, is answered `failed`. Granting it would let
/// the host keep its guests for a whole lease after the failure commits and a failover starts
/// them elsewhere (found by the simulation's host leases, docs/simulation.md).
#[derive(Clone, Debug, Default)]
pub struct Leases {
    leader_since: Option<Instant>,
    renewals: BTreeMap<Name, Sighting>,
    declaring: BTreeSet<Name>,
}

impl Leases {
    /// Notes whether this node leads at `now`: taking office counts as every host's last
    /// sighting; leaving office forgets the declarations in flight (a new leader decides
    /// again).
    pub fn set_leader(&mut self, leader: bool, now: Instant) {
        match (leader, self.leader_since.is_some()) {
            (true, false) => self.leader_since = Some(now),
            (false, true) => {
                self.leader_since = None;
                self.declaring.clear();
            }
            _ => {}
        }
    }

    /// Notes a renewal by `host`'s agent reporting `(applied revision, digest)`; answers
    /// whether it must be answered `failed` because this leader is declaring the host failed.
    pub fn renewed(&mut self, host: &Name, report: (u64, u64), now: Instant) -> bool {
        self.renewals.insert(host.clone(), Sighting { at: now, report: Some(report) });
        self.declaring.contains(host)
    }

    /// The last renewal `host`'s agent made to this node.
    pub fn last_renewal(&self, host: &Name) -> Option<Sighting> {
        self.renewals.get(host).copied()
    }

    /// When `host` was last seen: its last renewal, or this node's start of leadership if
    /// later (with the renewal's report).
    pub fn last_seen(&self, host: &Name) -> Option<Sighting> {
        let since = self.leader_since.map(|at| Sighting { at, report: None });
        match (self.last_renewal(host), since) {
            (Some(r), Some(s)) if s.at > r.at => Some(Sighting { at: s.at, report: r.report }),
            (Some(r), _) => Some(r),
            (None, s) => s,
        }
    }

    /// What this leader (`leader`, its id) commits about every host at `now`
    /// ([`liveness_commands`]); the hosts it declares failed are answered `failed` from now on,
    /// until the state shows the failure or [`Leases::refused`] says it will not. A declaration
    /// not applied yet is decided again (its proposal may have been lost; a duplicate is
    /// refused once the first applied). Nothing when this node does not lead.
    pub fn decide(&mut self, state: &ClusterState, now: Instant, times: &LivenessTimes, leader: u64) -> Vec<Command> {
        self.declaring.retain(|h| state.host_failure(h).is_none());
        if self.leader_since.is_none() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for host in state.hosts() {
            let name = &host.spec.name;
            let commands =
                liveness_commands(state, host, self.last_seen(name), self.last_renewal(name), now, times, leader);
            for c in commands {
                if matches!(c, Command::DeclareHostFailed { .. }) {
                    self.declaring.insert(name.clone());
                }
                out.push(c);
            }
        }
        out
    }

    /// The state refused this leader's declaration of `host` (it committed without effect):
    /// its renewals are answered again.
    pub fn refused(&mut self, host: &Name) {
        self.declaring.remove(host);
    }
}

/// What the leader `leader` commits about `host` at `now`, given when it last saw the host's
/// agent (`last_seen`: its last renewal, or the leader's start of leadership if later) and the
/// last renewal it received itself (`last_report`):
///
/// - a host joins failure detection (`AdmitHost`) with a renewal within the lease;
/// - a member whose last sighting is older than lease + grace is declared failed, with that
///   evidence;
/// - a failed host rejoins once a fresh renewal says it applied the log past its failure (it
///   has learned where its guests went);
/// - reachability (unreachable after `report_timeout` of silence, reachable on a report) for
///   hosts that are not failed.
pub fn liveness_commands(
    state: &ClusterState,
    host: &Host,
    last_seen: Option<Sighting>,
    last_report: Option<Sighting>,
    now: Instant,
    times: &LivenessTimes,
    leader: u64,
) -> Vec<Command> {
    let name = &host.spec.name;
    let Some(seen) = last_seen else { return Vec::new() };
    let age = |s: Sighting| now.saturating_duration_since(s.at);
    let member = state.member(name).map(|m| (m.failure.is_some(), m.failure.as_ref().map_or(0, |f| f.revision)));
    // A renewal this leader received within the lease: the agent is alive now.
    let fresh = last_report.filter(|r| age(*r) < times.lease);
    let liveness = match member {
        None if fresh.is_some() => Some(Command::AdmitHost { host: name.clone() }),
        Some((false, _)) if age(seen) > times.lease + times.grace => {
            let what = if seen.report.is_some() { "its last lease renewal" } else { "this leader took office" };
            Some(Command::DeclareHostFailed {
                host: name.clone(),
                evidence: format!(
                    "no lease renewal for {} ms since {what} (lease {} ms + grace {} ms, by coordinator {leader}'s monotonic clock)",
                    age(seen).as_millis(),
                    times.lease.as_millis(),
                    times.grace.as_millis(),
                ),
            })
        }
        Some((true, failed_at)) => match fresh.and_then(|r| r.report) {
            Some((applied, _)) if applied >= failed_at => Some(Command::AdmitHost { host: name.clone() }),
            _ => None,
        },
        _ => None,
    };
    let failed = matches!(member, Some((true, _))) || matches!(liveness, Some(Command::DeclareHostFailed { .. }));
    let reachability = if failed {
        None
    } else {
        let silent = age(seen) > times.report_timeout;
        let reported = seen.report.is_some() && !silent;
        match (host.reachable, silent, reported) {
            (true, true, _) => Some(Command::SetHostReachable { host: name.clone(), reachable: false }),
            (false, _, true) => Some(Command::SetHostReachable { host: name.clone(), reachable: true }),
            _ => None,
        }
    };
    liveness.into_iter().chain(reachability).collect()
}

/// One node of a package's node list and whether it could take the guest now.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub host: Name,
    /// Why it cannot; `None` when it is eligible.
    pub excluded: Option<String>,
}

/// The package's nodes in order: its node list, or every host in name order when it has none.
fn nodes(state: &ClusterState, package: &Package) -> Vec<Name> {
    if package.nodes.is_empty() {
        state.hosts().map(|h| h.spec.name.clone()).collect()
    } else {
        package.nodes.clone()
    }
}

/// Every node of the guest's package with why it could not start the guest now. `tried` are
/// the hosts an in-flight failover already tried.
pub fn candidates(state: &ClusterState, guest: &Guest, package: &Package, tried: &[Name]) -> Vec<Candidate> {
    let owner_profile = state.host(&guest.owner).map(|h| &h.spec.profile);
    nodes(state, package)
        .into_iter()
        .map(|host| {
            let excluded = exclusion(state, guest, package, tried, &host, owner_profile);
            Candidate { host, excluded }
        })
        .collect()
}

fn exclusion(
    state: &ClusterState,
    guest: &Guest,
    package: &Package,
    tried: &[Name],
    host: &Name,
    owner_profile: Option<&crate::model::CompatProfile>,
) -> Option<String> {
    let Some(h) = state.host(host) else { return Some("not a registered host".into()) };
    if let Some(f) = state.host_failure(host) {
        return Some(format!("failed at revision {}", f.revision));
    }
    if *host == guest.owner {
        return Some("owns the guest now".into());
    }
    if state.member(host).is_none() {
        return Some("not under failure detection (its agent never reported)".into());
    }
    if !h.reachable {
        return Some("unreachable (its agent stopped reporting)".into());
    }
    if h.maintenance {
        return Some("in maintenance".into());
    }
    if state.drain(host).is_some() {
        return Some("being drained".into());
    }
    if package.disabled_nodes.contains(host) {
        return Some(format!("switching of package {} is disabled on this node", package.name));
    }
    if tried.contains(host) {
        return Some("tried already in this failover".into());
    }
    if let Some(p) = owner_profile {
        if *p != h.spec.profile {
            return Some(format!("profile {} differs from the guest's host's {p}", h.spec.profile));
        }
    }
    let committed = state.committed_resources(host);
    let demand = guest.spec.demand();
    let cap = h.spec.capacity;
    if committed.vcpus.saturating_add(demand.vcpus) > cap.vcpus
        || committed.memory_mib.saturating_add(demand.memory_mib) > cap.memory_mib
    {
        let free = cap.saturating_sub(committed);
        return Some(format!(
            "not enough capacity: needs {} vCPUs and {} MiB, {} and {} MiB free",
            demand.vcpus, demand.memory_mib, free.vcpus, free.memory_mib
        ));
    }
    crate::placement::anti_affinity_conflict(state, &guest.name, &guest.spec, h, &Default::default())
}

/// The node the package's failover policy picks, with why; or why there is none.
pub fn choose(
    state: &ClusterState,
    guest: &Guest,
    package: &Package,
    tried: &[Name],
) -> Result<(Name, String), String> {
    let all = candidates(state, guest, package, tried);
    let excluded: Vec<String> =
        all.iter().filter_map(|c| c.excluded.as_ref().map(|why| format!("{}: {why}", c.host))).collect();
    let eligible: Vec<&Name> = all.iter().filter(|c| c.excluded.is_none()).map(|c| &c.host).collect();
    let chosen = match package.failover_policy {
        FailoverPolicy::ConfiguredNode => eligible.first().copied(),
        // `min_by_key` keeps the first of equals: ties go to node-list order.
        FailoverPolicy::MinPackageNode => eligible.iter().copied().min_by_key(|h| state.packages_on(h)),
    };
    let excluded = if excluded.is_empty() { String::new() } else { format!("; excluded: {}", excluded.join(", ")) };
    match chosen {
        Some(h) => {
            let how = match package.failover_policy {
                FailoverPolicy::ConfiguredNode => "first eligible node in the package's list".to_string(),
                FailoverPolicy::MinPackageNode => {
                    format!("eligible node running the fewest packages ({})", state.packages_on(h))
                }
            };
            Ok((h.clone(), format!("{how} ({}){excluded}", package.failover_policy)))
        }
        None => Err(format!("no eligible node for package {}{excluded}", package.name)),
    }
}

/// Why a guest whose host failed is not being failed over, or `None` if it is protected (it
/// runs, its package's switching is enabled) and so a failover applies to it.
pub fn unprotected(state: &ClusterState, guest: &Guest) -> Option<String> {
    if guest.run_state != RunState::Running {
        return Some("the log says it is stopped".into());
    }
    let Some(p) = guest.spec.package.as_ref().and_then(|p| state.package(p)) else {
        return Some("not in a failover package".into());
    };
    if !p.switching_enabled {
        let why = p.switching_changed.reason.as_deref().unwrap_or("no reason given");
        return Some(format!("package {} has switching disabled ({why})", p.name));
    }
    None
}

/// The next step of every failover the state calls for, at `now` on the leader's monotonic
/// clock. `seen` holds when this leader first saw each attempt (the start timeout's origin);
/// attempts no longer in flight are dropped from it.
///
/// - Attempts under way: one whose target failed, or that has not completed within
///   `start_timeout`, is failed (`FailFailoverAttempt`); one that failed goes on to the next
///   eligible node once it is released (or its target failed), or is abandoned when none is
///   left.
/// - Guests of failed hosts that no failover holds yet, running and protected:
///   `StartFailover` to the node the package's policy picks. A `min_package_node` choice counts
///   the packages each node runs, which this pass's own starts do not change yet: one such
///   start per pass, the next decided once it has committed.
pub fn plan_failovers(
    st: &ClusterState,
    seen: &mut HashMap<FencingToken, Instant>,
    now: Instant,
    start_timeout: Duration,
) -> Vec<(Name, Command)> {
    seen.retain(|token, _| st.failovers().any(|f| f.token == *token));
    let mut out = Vec::new();
    for f in st.failovers() {
        let guest = f.guest.clone();
        if f.attempt_failed.is_some() {
            // The next node only once no copy can run on the last one: it confirmed, or failed.
            if !f.released && st.host_failure(&f.target).is_none() {
                continue;
            }
            let (Some(g), Some(p)) = (st.guest(&f.guest), st.package(&f.package)) else { continue };
            let mut tried: Vec<Name> = f.tried.iter().map(|(h, _)| h.clone()).collect();
            tried.push(f.target.clone());
            out.push(match choose(st, g, p, &tried) {
                Ok((to, _)) => (guest, Command::StartFailover { guest: f.guest.clone(), to }),
                Err(why) => (guest, Command::AbandonFailover { guest: f.guest.clone(), reason: clip(why) }),
            });
            continue;
        }
        let since = *seen.entry(f.token).or_insert(now);
        let reason = if let Some(failure) = st.host_failure(&f.target) {
            Some(format!("target {} failed at revision {}", f.target, failure.revision))
        } else if now.saturating_duration_since(since) > start_timeout {
            Some(format!("target {} did not start the guest within {} ms", f.target, start_timeout.as_millis()))
        } else {
            None
        };
        if let Some(reason) = reason {
            let command = Command::FailFailoverAttempt {
                guest: f.guest.clone(),
                host: f.target.clone(),
                token: f.token,
                reason,
                released: false,
            };
            out.push((guest, command));
        }
    }
    // The leader's failover driver runs this as revisions come: it reads the guests of failed
    // hosts only (none in the usual case), found from the owner index, host by host in name
    // order and each host's in name order.
    let mut counted_start = false;
    for g in st.failed_hosts().flat_map(|h| st.guests_on(h)) {
        if st.failover(&g.name).is_some() || st.in_flight(&g.name).is_some() {
            continue;
        }
        if unprotected(st, g).is_some() {
            continue;
        }
        let Some(p) = g.spec.package.as_ref().and_then(|p| st.package(p)) else { continue };
        let counts = p.failover_policy == FailoverPolicy::MinPackageNode;
        if counts && counted_start {
            continue;
        }
        let to = match copy_left_by_move(st, &g.name) {
            // The guest may run there already: the first attempt goes there, or nowhere yet.
            Some(target) => {
                let eligible = candidates(st, g, p, &[]).iter().any(|c| c.host == *target && c.excluded.is_none());
                if !eligible {
                    continue;
                }
                target.clone()
            }
            None => match choose(st, g, p, &[]) {
                Ok((to, _)) => to,
                Err(_) => continue,
            },
        };
        counted_start |= counts;
        out.push((g.name.clone(), Command::StartFailover { guest: g.name.clone(), to }));
    }
    out
}

/// Where a guest whose host failed may run although the log does not say so: the target of
/// its newest live migration, if that migration left the failed host, reached `transferring`,
/// ended (failed or aborted) after the host failed, and its target has not failed too.
///
/// Why: the hypervisor can finish a move in the moment before its source is lost, before any
/// agent reports it; the migration then fails for the lost source while the guest runs on the
/// target. Starting the guest on another node would make a second copy, so its failover goes
/// to that target first (where a guest already running counts as started), and nowhere while
/// the target is not eligible (until it is, or it is lost too: then its fence has stopped any
/// copy there).
pub fn copy_left_by_move<'a>(st: &'a ClusterState, guest: &Name) -> Option<&'a Name> {
    let owner = &st.guest(guest)?.owner;
    let failure = st.host_failure(owner)?;
    let m = st.migrations().filter(|m| m.guest == *guest).max_by_key(|m| m.id)?;
    let reached = m.history.iter().any(|r| r.phase == Phase::Transferring);
    let ended = matches!(m.phase, Phase::Failed | Phase::Aborted) && m.current().revision > failure.revision;
    (m.source == *owner && !m.kind.is_offline() && reached && ended && st.host_failure(&m.target).is_none())
        .then_some(&m.target)
}

/// Online moves home for the guests of automatic-failback packages whose primary node (the
/// first of the node list) is eligible again.
pub fn failbacks(st: &ClusterState) -> Vec<(Name, Command)> {
    let mut out = Vec::new();
    for p in st.packages() {
        if p.failback_policy != FailbackPolicy::Automatic {
            continue;
        }
        let (Some(primary), Some(g)) = (p.nodes.first(), st.guest(&p.guest)) else { continue };
        if g.owner == *primary
            || g.run_state != RunState::Running
            || st.failover(&g.name).is_some()
            || st.in_flight(&g.name).is_some()
            || st.host_failure(&g.owner).is_some()
        {
            continue;
        }
        let home = candidates(st, g, p, &[]).into_iter().find(|c| c.host == *primary);
        if home.is_some_and(|c| c.excluded.is_none()) {
            out.push((
                g.name.clone(),
                Command::RequestMigration {
                    guest: g.name.clone(),
                    source: g.owner.clone(),
                    target: primary.clone(),
                    kind: MigrationKind::Online,
                    reason: Some(format!("automatic failback of package {} to its primary node", p.name)),
                },
            ));
        }
    }
    out
}

/// A reason cut to what the log accepts.
fn clip(mut s: String) -> String {
    if s.len() > TEXT_LEN_MAX {
        let mut end = TEXT_LEN_MAX - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}
