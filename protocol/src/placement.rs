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
//!   failover protection does not reach.
//!
//! Load is measured in parts per million of a host's capacity, the larger of its vCPU and its
//! memory share, in integers so that a plan is the same on every machine.
//! [`plan_rebalance`] moves guests from the most to the least loaded hosts while each move
//! lowers the sum of the squared loads and does not widen the spread between the most and the
//! least loaded host; it stops when the spread is within the threshold. Pure, like `apply`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{Guest, Host, HostState, Resources, RunState};
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
pub fn refusal(
    state: &ClusterState,
    guest: &Guest,
    target: &Host,
    planned: &BTreeMap<Name, Resources>,
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
    if source.spec.profile != target.spec.profile {
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
    None
}

/// What a host holds: its guests, migrations heading there, and the planned moves' additions.
fn committed(state: &ClusterState, host: &Name, planned: &BTreeMap<Name, Resources>) -> Resources {
    state.committed_resources(host).saturating_add(planned.get(host).copied().unwrap_or_default())
}

/// The target the cluster would choose for `guest`: of the hosts that may take it, the one
/// least loaded once it has (ties: name order); or why no host may, host by host.
pub fn choose_target(
    state: &ClusterState,
    guest: &Guest,
    planned: &BTreeMap<Name, Resources>,
) -> Result<Name, Vec<(Name, String)>> {
    let mut refused = Vec::new();
    let mut best: Option<(u64, &Name)> = None;
    for h in state.hosts() {
        if h.spec.name == guest.owner {
            continue;
        }
        match refusal(state, guest, h, planned) {
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
    pub from_load: (u64, u64),
    pub to_load: (u64, u64),
    /// Why this move, in words.
    pub why: String,
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
}

/// Plans moves that even out the static load of the active hosts (see the module's doc):
/// at most `max_moves`, none while the spread is within `threshold` (millionths).
pub fn plan_rebalance(state: &ClusterState, threshold: u64, max_moves: usize) -> RebalancePlan {
    let hosts: Vec<&Host> = state.hosts().filter(|h| state.host_state(h) == HostState::Active).collect();
    let mut planned: BTreeMap<Name, Resources> = BTreeMap::new();
    let mut away: BTreeMap<Name, Resources> = BTreeMap::new();
    let mut moved: BTreeSet<Name> = BTreeSet::new();
    // Guests by owner, so each round looks only at the hosts it may move from.
    let mut by_owner: BTreeMap<&Name, Vec<&Guest>> = BTreeMap::new();
    for g in state.guests() {
        by_owner.entry(&g.owner).or_default().push(g);
    }
    let load = |h: &Host, planned: &BTreeMap<Name, Resources>, away: &BTreeMap<Name, Resources>| {
        let n = &h.spec.name;
        let used = committed(state, n, planned).saturating_sub(away.get(n).copied().unwrap_or_default());
        load_ppm(used, h.spec.capacity)
    };
    let loads = |planned: &BTreeMap<Name, Resources>, away: &BTreeMap<Name, Resources>| -> Vec<u64> {
        hosts.iter().map(|h| load(h, planned, away)).collect()
    };
    let spread = |l: &[u64]| l.iter().max().copied().unwrap_or(0) - l.iter().min().copied().unwrap_or(0);
    let before = spread(&loads(&planned, &away));
    let mut plan = RebalancePlan { spread_before: before, spread_after: before, threshold, ..Default::default() };
    if hosts.len() < 2 {
        plan.outcome = "fewer than two active hosts: nothing to balance".into();
        return plan;
    }
    loop {
        let current = loads(&planned, &away);
        let now = spread(&current);
        plan.spread_after = now;
        if now <= threshold {
            plan.outcome = format!("balanced: the spread {} is within the threshold {threshold}", pct(now));
            return plan;
        }
        if plan.moves.len() >= max_moves {
            plan.outcome = format!("stopped at {max_moves} moves (the spread is {})", pct(now));
            return plan;
        }
        let squares = |l: &[u64]| l.iter().map(|x| (*x as u128) * (*x as u128)).sum::<u128>();
        let base = squares(&current);
        // The best move from the most loaded host that has one: the largest drop in the sum of
        // squares (ties: guest, then target name order).
        let mut order: Vec<usize> = (0..hosts.len()).collect();
        order.sort_by(|a, b| current[*b].cmp(&current[*a]).then(hosts[*a].spec.name.cmp(&hosts[*b].spec.name)));
        let mut best: Option<(u128, PlannedMove, Resources)> = None;
        for &si in &order {
            let source = hosts[si];
            for g in by_owner.get(&source.spec.name).into_iter().flatten() {
                if moved.contains(&g.name) || unmovable(state, g).is_some() {
                    continue;
                }
                let demand = g.spec.demand();
                for (ti, target) in hosts.iter().enumerate() {
                    if ti == si || refusal(state, g, target, &planned).is_some() {
                        continue;
                    }
                    let mut next = current.clone();
                    let mut away2 = away.clone();
                    add(&mut away2, &source.spec.name, demand);
                    let mut planned2 = planned.clone();
                    add(&mut planned2, &target.spec.name, demand);
                    next[si] = load(source, &planned2, &away2);
                    next[ti] = load(target, &planned2, &away2);
                    let sq = squares(&next);
                    if sq >= base || spread(&next) > now {
                        continue;
                    }
                    let gain = base - sq;
                    if best.as_ref().is_none_or(|(b, _, _)| gain > *b) {
                        let m = PlannedMove {
                            guest: g.name.clone(),
                            from: source.spec.name.clone(),
                            to: target.spec.name.clone(),
                            from_load: (current[si], next[si]),
                            to_load: (current[ti], next[ti]),
                            why: format!(
                                "{} is the most loaded host with a guest that can move ({} → {}); {} is at {} → {}",
                                source.spec.name,
                                pct(current[si]),
                                pct(next[si]),
                                target.spec.name,
                                pct(current[ti]),
                                pct(next[ti])
                            ),
                        };
                        best = Some((gain, m, demand));
                    }
                }
            }
            if best.is_some() {
                break;
            }
        }
        let Some((_, m, demand)) = best else {
            plan.outcome =
                format!("no move lowers the imbalance within the placement rules (the spread stays {})", pct(now));
            return plan;
        };
        add(&mut away, &m.from, demand);
        add(&mut planned, &m.to, demand);
        moved.insert(m.guest.clone());
        plan.moves.push(m);
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
