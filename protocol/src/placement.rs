//! Where a guest may be moved by the cluster itself, and how the cluster evens out its load.
//!
//! An operator who names a target gets what `apply` allows (`RequestMigration`'s checks). Moves
//! the cluster chooses — a drain's, a rebalance's — keep stricter rules, in one place here so
//! that every automatic move and every explanation agree:
//!
//! - the target is active (not in maintenance, unreachable or failed) and is not the source;
//! - it shares the source's compatibility profile (an online move needs it);
//! - it has room for the guest, counting what its guests use, what migrations heading there
//!   reserve, and what moves planned before this one will add;
//! - a packaged guest goes only to a node of its package's list (when the list is not empty)
//!   on which the package's switching is not disabled, so a move never takes a guest where its
//!   failover protection does not reach;
//! - a guest of an anti-affinity group never joins another guest of its group in one failure
//!   domain (a host, or the hosts sharing a value of the group's `spread_by` label), counting
//!   where the others are, where migrations in flight take them and where planned moves will.
//!
//! The anti-affinity rule ([`anti_affinity_conflict`]) binds every placement: `apply` refuses
//! an operator's creation, migration or group change that breaks it, and failover skips nodes
//! that would.
//!
//! Load is measured in parts per million of a host's capacity, the larger of its vCPU and its
//! memory share, in integers so that a plan is the same on every machine.
//! [`plan_rebalance`] moves guests from the most to the least loaded hosts while each move
//! lowers the sum of the squared loads and does not widen the spread between the most and the
//! least loaded host; it stops when the spread is within the threshold. Pure, like `apply`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::model::{
    BlockedGuest, DrainOutcome, Guest, GuestSpec, Host, HostState, Migration, MigrationKind, Phase, Resources, RunState,
};
use crate::name::Name;
use crate::state::ClusterState;

/// One million: a host's whole capacity in [`load_ppm`] units.
pub const FULL: u64 = 1_000_000;

/// A host's load: the larger of its vCPU and memory shares, in millionths of its capacity
/// (above [`FULL`] when overcommitted).
pub fn load_ppm(used: Resources, capacity: Resources) -> u64 {
    let share = |u: u64, c: u64| if c == 0 { FULL } else { (u as u128 * FULL as u128 / c as u128) as u64 };
    share(used.vcpus as u64, capacity.vcpus as u64).max(share(used.memory_mib, capacity.memory_mib))
}

/// What the moves decided before the one being judged will do, which the state does not show
/// yet (their migrations are not requested): what they add to each target, and where each
/// moved guest goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Planned {
    room: BTreeMap<Name, Resources>,
    placed: BTreeMap<Name, Name>,
}

impl Planned {
    /// Records a decided move of `guest` to `to`.
    pub fn add(&mut self, guest: &Guest, to: &Name) {
        add(&mut self.room, to, guest.spec.demand());
        self.placed.insert(guest.name.clone(), to.clone());
    }

    /// What planned moves add to `host`.
    pub fn adds_to(&self, host: &Name) -> Resources {
        self.room.get(host).copied().unwrap_or_default()
    }
}

/// Why placing guest `name` (of `spec`) on `target` would put it in one failure domain with
/// another guest of its anti-affinity group, if it would. The other guests count where they
/// run, where a migration in flight takes them and where a planned move will.
pub fn anti_affinity_conflict(
    state: &ClusterState,
    name: &Name,
    spec: &GuestSpec,
    target: &Host,
    planned: &Planned,
) -> Option<String> {
    let mine = spec.anti_affinity.as_ref()?;
    for other in state.group_members(&mine.group) {
        if other.name == *name {
            continue;
        }
        let theirs = other.spec.anti_affinity.as_ref().and_then(|a| a.spread_by.as_ref());
        let places = [
            Some((&other.owner, "runs")),
            state.in_flight(&other.name).map(|m| (&m.target, "is moving")),
            planned.placed.get(&other.name).map(|h| (h, "is planned to move")),
        ];
        for (host, how) in places.into_iter().flatten() {
            if *host == target.spec.name {
                return Some(format!("guest {} of its anti-affinity group {} {how} there", other.name, mine.group));
            }
            let Some(h) = state.host(host) else { continue };
            for label in [mine.spread_by.as_ref(), theirs].into_iter().flatten() {
                if let (Some(a), Some(b)) = (target.spec.labels.get(label), h.spec.labels.get(label)) {
                    if a == b {
                        return Some(format!(
                            "guest {} of its anti-affinity group {} {how} on {host}, in the same {label} ({a})",
                            other.name, mine.group
                        ));
                    }
                }
            }
        }
    }
    None
}

/// Why a guest cannot be moved online by the cluster at all, if it cannot.
pub fn unmovable(state: &ClusterState, guest: &Guest) -> Option<String> {
    if let Some(m) = state.in_flight(&guest.name) {
        return Some(format!("migration {} is in flight", m.id));
    }
    if let Some(f) = state.failover(&guest.name) {
        return Some(format!("it is being failed over to {}", f.target));
    }
    if !guest.spec.online_migration {
        return Some("online_migration is disabled".into());
    }
    if guest.spec.cluster_node {
        return Some("it is a cluster node (an online move would evict it)".into());
    }
    if guest.run_state != RunState::Running {
        return Some("it is not running (only running guests move online)".into());
    }
    None
}

/// Why `target` cannot take `guest` in an online move by the cluster, if it cannot; `planned`
/// is what moves decided before this one add to each host (their reservations are not in the
/// state yet).
pub fn refusal(state: &ClusterState, guest: &Guest, target: &Host, planned: &Planned) -> Option<String> {
    refusal_of(state, guest, target, planned, MigrationKind::Online)
}

/// [`refusal`] for a move of `kind`: an offline move needs no common profile.
fn refusal_of(
    state: &ClusterState,
    guest: &Guest,
    target: &Host,
    planned: &Planned,
    kind: MigrationKind,
) -> Option<String> {
    let name = &target.spec.name;
    if *name == guest.owner {
        return Some("it is the guest's host".into());
    }
    let st = state.host_state(target);
    if st != HostState::Active {
        return Some(format!("it is {st}"));
    }
    let Some(source) = state.host(&guest.owner) else {
        return Some(format!("the guest's host {} is not registered", guest.owner));
    };
    if kind == MigrationKind::Online && source.spec.profile != target.spec.profile {
        return Some(format!(
            "its profile {} differs from {}'s {} (an online move needs the same)",
            target.spec.profile, guest.owner, source.spec.profile
        ));
    }
    if let Some(p) = guest.spec.package.as_ref().and_then(|p| state.package(p)) {
        if !p.nodes.is_empty() && !p.nodes.contains(name) {
            return Some(format!("it is not in package {}'s node list", p.name));
        }
        if p.disabled_nodes.contains(name) {
            return Some(format!("switching of package {} is disabled on it", p.name));
        }
    }
    let committed = committed(state, name, planned);
    let need = guest.spec.demand();
    if !committed.saturating_add(need).fits_in(target.spec.capacity) {
        return Some(format!(
            "it lacks room: needs {need}, has {} free",
            target.spec.capacity.saturating_sub(committed)
        ));
    }
    anti_affinity_conflict(state, &guest.name, &guest.spec, target, planned)
}

/// What a host holds: its guests, migrations heading there, and the planned moves' additions.
fn committed(state: &ClusterState, host: &Name, planned: &Planned) -> Resources {
    state.committed_resources(host).saturating_add(planned.adds_to(host))
}

/// The target the cluster would choose for `guest`: of the hosts that may take it, the one
/// least loaded once it has (ties: name order); or why no host may, host by host.
pub fn choose_target(state: &ClusterState, guest: &Guest, planned: &Planned) -> Result<Name, Vec<(Name, String)>> {
    choose_target_for(state, guest, planned, MigrationKind::Online)
}

fn choose_target_for(
    state: &ClusterState,
    guest: &Guest,
    planned: &Planned,
    kind: MigrationKind,
) -> Result<Name, Vec<(Name, String)>> {
    let mut refused = Vec::new();
    let mut best: Option<(u64, &Name)> = None;
    for h in state.hosts() {
        if h.spec.name == guest.owner {
            continue;
        }
        match refusal_of(state, guest, h, planned, kind) {
            Some(why) => refused.push((h.spec.name.clone(), why)),
            None => {
                let after = committed(state, &h.spec.name, planned).saturating_add(guest.spec.demand());
                let load = load_ppm(after, h.spec.capacity);
                if best.is_none_or(|(l, _)| load < l) {
                    best = Some((load, &h.spec.name));
                }
            }
        }
    }
    best.map(|(_, n)| n.clone()).ok_or(refused)
}

/// One move of a rebalance plan.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMove {
    pub guest: Name,
    pub from: Name,
    pub to: Name,
    /// The two hosts' loads (millionths of capacity) before and after the move, as the plan
    /// stands when it is made.
    pub from_load: LoadChange,
    pub to_load: LoadChange,
    /// Why this move, in words.
    pub why: String,
}

/// A host's load before and after a move, in millionths of its capacity.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadChange {
    pub before: u64,
    pub after: u64,
}

/// A rebalance plan: the moves in order, and the spread (most minus least loaded active host,
/// in millionths) before and after them.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalancePlan {
    pub moves: Vec<PlannedMove>,
    pub spread_before: u64,
    pub spread_after: u64,
    /// The threshold the plan stopped at (millionths).
    pub threshold: u64,
    /// Why the plan ends where it does.
    pub outcome: String,
    /// The coordinators' limits on moves the cluster starts itself, which `rebalance --apply`
    /// keeps too (absent from the planner alone: they are configuration, not state).
    #[serde(default)]
    pub limits: Option<MoveLimits>,
}

/// Plans moves that even out the static load of the active hosts (see the module's doc):
/// at most `max_moves`, none while the spread is within `threshold` (millionths).
///
/// Each round looks at the guests of the most loaded host that has an improving move, against
/// every active host: O(guests of one host × hosts) per move, with the loads kept per host and
/// the extremes found in the loads' order, so that a plan over 1 000 hosts stays interactive.
pub fn plan_rebalance(state: &ClusterState, threshold: u64, max_moves: usize) -> RebalancePlan {
    let hosts: Vec<&Host> = state.hosts().filter(|h| state.host_state(h) == HostState::Active).collect();
    let mut used: Vec<Resources> = hosts.iter().map(|h| state.committed_resources(&h.spec.name)).collect();
    let mut planned = Planned::default();
    let mut moved: BTreeSet<Name> = BTreeSet::new();
    let mut by_owner: BTreeMap<&Name, Vec<&Guest>> = BTreeMap::new();
    for g in state.guests() {
        by_owner.entry(&g.owner).or_default().push(g);
    }
    let load_of = |i: usize, used: &[Resources]| load_ppm(used[i], hosts[i].spec.capacity);
    let spread = |l: &[u64]| l.iter().max().copied().unwrap_or(0) - l.iter().min().copied().unwrap_or(0);
    let mut current: Vec<u64> = (0..hosts.len()).map(|i| load_of(i, &used)).collect();
    let before = spread(&current);
    let mut plan = RebalancePlan { spread_before: before, spread_after: before, threshold, ..Default::default() };
    if hosts.len() < 2 {
        plan.outcome = "fewer than two active hosts: nothing to balance".into();
        return plan;
    }
    loop {
        let now = spread(&current);
        plan.spread_after = now;
        if now <= threshold {
            plan.outcome = format!("balanced: the spread {} is within the threshold {}", pct(now), pct(threshold));
            return plan;
        }
        if plan.moves.len() >= max_moves {
            plan.outcome = format!("stopped at {max_moves} moves (the spread is {})", pct(now));
            return plan;
        }
        // Hosts from the most to the least loaded (ties: name order): the sources in turn, and
        // the extremes of the loads outside a move's two hosts.
        let mut order: Vec<usize> = (0..hosts.len()).collect();
        order.sort_by(|a, b| current[*b].cmp(&current[*a]).then(hosts[*a].spec.name.cmp(&hosts[*b].spec.name)));
        let outside = |pair: [usize; 2]| {
            let max = order.iter().find(|i| !pair.contains(i)).map(|i| current[*i]);
            let min = order.iter().rev().find(|i| !pair.contains(i)).map(|i| current[*i]);
            (max, min)
        };
        let sq = |x: u64| (x as u128) * (x as u128);
        // The best move from the most loaded host that has one: the largest drop in the sum of
        // squared loads (ties: guest, then target name order), never widening the spread.
        let mut best: Option<(u128, usize, usize, &Guest, u64, u64)> = None;
        for &si in &order {
            let source = hosts[si];
            for g in by_owner.get(&source.spec.name).into_iter().flatten() {
                if moved.contains(&g.name) || unmovable(state, g).is_some() {
                    continue;
                }
                let demand = g.spec.demand();
                let from_after = load_ppm(used[si].saturating_sub(demand), source.spec.capacity);
                for (ti, target) in hosts.iter().enumerate() {
                    if ti == si || refusal(state, g, target, &planned).is_some() {
                        continue;
                    }
                    let to_after = load_ppm(used[ti].saturating_add(demand), target.spec.capacity);
                    let (old, new) = (sq(current[si]) + sq(current[ti]), sq(from_after) + sq(to_after));
                    if new >= old {
                        continue;
                    }
                    let (max, min) = outside([si, ti]);
                    let next_max = max.unwrap_or(0).max(from_after).max(to_after);
                    let next_min = min.unwrap_or(u64::MAX).min(from_after).min(to_after);
                    if next_max - next_min > now {
                        continue;
                    }
                    if best.as_ref().is_none_or(|b| old - new > b.0) {
                        best = Some((old - new, si, ti, g, from_after, to_after));
                    }
                }
            }
            if best.is_some() {
                break;
            }
        }
        let Some((_, si, ti, g, from_after, to_after)) = best else {
            plan.outcome =
                format!("no move lowers the imbalance within the placement rules (the spread stays {})", pct(now));
            return plan;
        };
        let (source, target) = (&hosts[si].spec.name, &hosts[ti].spec.name);
        plan.moves.push(PlannedMove {
            guest: g.name.clone(),
            from: source.clone(),
            to: target.clone(),
            from_load: LoadChange { before: current[si], after: from_after },
            to_load: LoadChange { before: current[ti], after: to_after },
            why: format!(
                "{source} is the most loaded host with a guest that can move ({} → {}); {target} goes {} → {}",
                pct(current[si]),
                pct(from_after),
                pct(current[ti]),
                pct(to_after)
            ),
        });
        let demand = g.spec.demand();
        used[si] = used[si].saturating_sub(demand);
        used[ti] = used[ti].saturating_add(demand);
        planned.add(g, target);
        current[si] = from_after;
        current[ti] = to_after;
        moved.insert(g.name.clone());
    }
}

/// How many migrations the cluster runs at once for its own moves (drains, failbacks,
/// `rebalance --apply`); a drain's own `max_parallel` bounds those from its host.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveLimits {
    /// Migrations heading to one host.
    pub per_target: u32,
    /// Migrations in the whole cluster (operators' and failbacks' included).
    pub cluster: u32,
}

/// The migrations in flight, counted against [`MoveLimits`], so that moves the cluster starts
/// itself (drains, failbacks) wait while the cluster or their target is busy.
#[derive(Clone, Debug)]
pub struct MoveBudget {
    limits: MoveLimits,
    cluster: u32,
    to_target: BTreeMap<Name, u32>,
}

impl MoveBudget {
    /// The budget left by what is in flight in `state`.
    pub fn new(state: &ClusterState, limits: MoveLimits) -> MoveBudget {
        Self::counting(state.in_flight_migrations(), limits)
    }

    /// The budget left by `in_flight`, the migrations in flight as a client read them.
    pub fn from_migrations(in_flight: &[Migration], limits: MoveLimits) -> MoveBudget {
        Self::counting(in_flight.iter(), limits)
    }

    fn counting<'a>(in_flight: impl Iterator<Item = &'a Migration>, limits: MoveLimits) -> MoveBudget {
        let mut b = MoveBudget { limits, cluster: 0, to_target: BTreeMap::new() };
        for m in in_flight {
            b.take(&m.target);
        }
        b
    }

    /// Whether one more migration to `target` stays within the limits.
    pub fn allows(&self, target: &Name) -> bool {
        self.cluster < self.limits.cluster && self.to_target.get(target).copied().unwrap_or(0) < self.limits.per_target
    }

    /// Counts one more migration to `target`.
    pub fn take(&mut self, target: &Name) {
        self.cluster += 1;
        *self.to_target.entry(target.clone()).or_default() += 1;
    }
}

/// A drain gives up on a guest whose migrations from the draining host failed this often
/// since the drain started.
pub const DRAIN_ATTEMPTS: usize = 3;

/// The leader's next steps for every drain under way, pure like `apply` (the coordinator's
/// drain task commits them; a leader killed between two steps leaves the next leader the same
/// decision from the same state):
///
/// - each guest of the draining host that is not moving yet, in name order, gets a migration
///   to the target [`choose_target`] picks (offline with `allow_offline` for a guest that cannot
///   move online), while the drain's `max_parallel`, the target's and the cluster's limits
///   allow, every limit counting the migrations already in flight;
/// - a guest with no allowed target, that cannot move online (without `allow_offline`), or
///   whose last [`DRAIN_ATTEMPTS`] migrations since the drain started failed, is blocked;
/// - with nothing of the host's in flight: no guest left → `completed` (the host goes into
///   maintenance in the same commit); only blocked guests left → `stopped`, naming each.
pub fn drain_steps(state: &ClusterState, limits: MoveLimits) -> Vec<Command> {
    let mut out = Vec::new();
    let in_flight: Vec<_> = state.in_flight_migrations().collect();
    let mut budget = MoveBudget::new(state, limits);
    let mut planned = Planned::default();
    for d in state.drains() {
        let mut from_host = in_flight.iter().filter(|m| m.source == d.host || m.target == d.host).count() as u32;
        let moving_before = from_host;
        let mut blocked = Vec::new();
        let mut waiting = 0;
        for g in state.guests_on(&d.host) {
            if state.in_flight(&g.name).is_some() {
                continue;
            }
            if let Some(f) = state.failover(&g.name) {
                blocked.push(BlockedGuest {
                    guest: g.name.clone(),
                    why: format!("it is being failed over to {}", f.target),
                });
                continue;
            }
            let failures: Vec<&str> = state
                .migrations()
                .filter(|m| m.guest == g.name && m.source == d.host && m.id.0 > d.started && m.phase == Phase::Failed)
                .map(|m| m.error.as_deref().unwrap_or("no reason given"))
                .collect();
            if failures.len() >= DRAIN_ATTEMPTS {
                let last = failures.last().copied().unwrap_or_default();
                blocked.push(BlockedGuest {
                    guest: g.name.clone(),
                    why: format!("its last {} migrations failed (the last: {last})", failures.len()),
                });
                continue;
            }
            let kind = match (unmovable(state, g), d.allow_offline) {
                (None, _) => MigrationKind::Online,
                (Some(_), true) if g.run_state == RunState::Running => MigrationKind::OfflineStop,
                (Some(_), true) => MigrationKind::Offline,
                (Some(why), false) => {
                    blocked.push(BlockedGuest {
                        guest: g.name.clone(),
                        why: format!("{why}; drain with --allow-offline to move it offline"),
                    });
                    continue;
                }
            };
            let target = match choose_target_for(state, g, &planned, kind) {
                Ok(t) => t,
                Err(refused) => {
                    let why = refused.iter().map(|(h, why)| format!("{h}: {why}")).collect::<Vec<_>>().join("; ");
                    let why =
                        if why.is_empty() { "no other host".into() } else { format!("no host may take it ({why})") };
                    blocked.push(BlockedGuest { guest: g.name.clone(), why });
                    continue;
                }
            };
            if from_host >= d.max_parallel || !budget.allows(&target) {
                waiting += 1;
                continue;
            }
            planned.add(g, &target);
            budget.take(&target);
            from_host += 1;
            out.push(Command::RequestMigration {
                guest: g.name.clone(),
                source: d.host.clone(),
                target,
                kind,
                reason: Some(format!("drain of {}", d.host)),
            });
        }
        if moving_before > 0 || from_host > moving_before || waiting > 0 {
            continue;
        }
        let (outcome, reason) = if blocked.is_empty() {
            (DrainOutcome::Completed, "every guest moved".to_string())
        } else {
            (DrainOutcome::Stopped, format!("{} guest(s) cannot move", blocked.len()))
        };
        blocked.truncate(crate::limits::BLOCKED_GUESTS_MAX);
        for b in &mut blocked {
            clip(&mut b.why, crate::limits::TEXT_LEN_MAX);
        }
        out.push(Command::EndDrain { host: d.host.clone(), outcome, reason, blocked });
    }
    out
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
fn clip(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max.saturating_sub(3);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
}

fn add(map: &mut BTreeMap<Name, Resources>, host: &Name, r: Resources) {
    let e = map.entry(host.clone()).or_default();
    *e = e.saturating_add(r);
}

/// Millionths as a percentage with one decimal: "37.5%".
pub fn pct(ppm: u64) -> String {
    format!("{}.{}%", ppm / 10_000, ppm / 1_000 % 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_the_larger_share_in_millionths() {
        let cap = Resources { vcpus: 8, memory_mib: 1000 };
        assert_eq!(load_ppm(Resources { vcpus: 2, memory_mib: 500 }, cap), 500_000);
        assert_eq!(load_ppm(Resources { vcpus: 6, memory_mib: 100 }, cap), 750_000);
        assert_eq!(load_ppm(Resources::default(), cap), 0);
        assert_eq!(pct(375_000), "37.5%");
        assert_eq!(pct(1_000_000), "100.0%");
    }
}
