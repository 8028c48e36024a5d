//! The rebalance planner and the placement rules of automatic moves: tables for the cases an
//! operator meets (already balanced, one hot host, profiles that forbid targets, a package's
//! node list and per-node switching, guests that cannot move), and a property over random
//! clusters: a plan never breaks a placement rule, each move lowers the sum of squared loads,
//! and the spread never widens.
mod common;
use common::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use switchyard_protocol::placement::*;
use switchyard_protocol::*;

fn world(hosts: &[(&str, u32, u64, &str)], guests: &[(&str, &str, u32, u64, Option<&str>)]) -> World {
    let mut w = World::empty();
    for (h, vcpus, mem, family) in hosts {
        w.ok(Command::RegisterHost(host_spec(h, *vcpus, *mem, family)));
    }
    for (g, owner, vcpus, mem, package) in guests {
        w.ok(Command::CreateGuest {
            name: n(g),
            spec: guest_spec(*vcpus, *mem, *package),
            owner: n(owner),
            run_state: RunState::Running,
        });
    }
    w
}

fn moves(plan: &RebalancePlan) -> Vec<(String, String, String)> {
    plan.moves.iter().map(|m| (m.guest.to_string(), m.from.to_string(), m.to.to_string())).collect()
}

fn mv(g: &str, from: &str, to: &str) -> (String, String, String) {
    (g.into(), from.into(), to.into())
}

/// Checks a plan against the state it was made from: each move, in order, is allowed by the
/// placement rules given the moves before it, lowers the sum of squares and keeps the spread.
fn check_plan(state: &ClusterState, plan: &RebalancePlan) -> Result<(), String> {
    let mut planned: BTreeMap<Name, Resources> = BTreeMap::new();
    let mut away: BTreeMap<Name, Resources> = BTreeMap::new();
    let active: Vec<&Host> = state.hosts().filter(|h| state.host_state(h) == HostState::Active).collect();
    let loads = |planned: &BTreeMap<Name, Resources>, away: &BTreeMap<Name, Resources>| -> Vec<u64> {
        active
            .iter()
            .map(|h| {
                let n = &h.spec.name;
                let used = state
                    .committed_resources(n)
                    .saturating_add(planned.get(n).copied().unwrap_or_default())
                    .saturating_sub(away.get(n).copied().unwrap_or_default());
                load_ppm(used, h.spec.capacity)
            })
            .collect()
    };
    let spread = |l: &[u64]| l.iter().max().copied().unwrap_or(0) - l.iter().min().copied().unwrap_or(0);
    let squares = |l: &[u64]| l.iter().map(|x| (*x as u128).pow(2)).sum::<u128>();
    let mut seen = std::collections::BTreeSet::new();
    let mut rules = Planned::default();
    let mut last = loads(&planned, &away);
    if spread(&last) != plan.spread_before {
        return Err(format!("spread_before {} but the state's spread is {}", plan.spread_before, spread(&last)));
    }
    for m in &plan.moves {
        let g = state.guest(&m.guest).ok_or("a planned guest does not exist")?;
        if g.owner != m.from {
            return Err(format!("{} is on {}, not {}", m.guest, g.owner, m.from));
        }
        if !seen.insert(m.guest.clone()) {
            return Err(format!("{} moves twice", m.guest));
        }
        if let Some(why) = unmovable(state, g) {
            return Err(format!("{} cannot move: {why}", m.guest));
        }
        let target = state.host(&m.to).ok_or("unknown target")?;
        if let Some(why) = refusal(state, g, target, &rules) {
            return Err(format!("{} to {} breaks a rule: {why}", m.guest, m.to));
        }
        rules.add(g, &m.to);
        let e = planned.entry(m.to.clone()).or_default();
        *e = e.saturating_add(g.spec.demand());
        let e = away.entry(m.from.clone()).or_default();
        *e = e.saturating_add(g.spec.demand());
        let next = loads(&planned, &away);
        if squares(&next) >= squares(&last) {
            return Err(format!("moving {} does not lower the sum of squared loads", m.guest));
        }
        if spread(&next) > spread(&last) {
            return Err(format!("moving {} widens the spread {} → {}", m.guest, spread(&last), spread(&next)));
        }
        last = next;
    }
    if spread(&last) != plan.spread_after {
        return Err(format!("spread_after {} but the moves end at {}", plan.spread_after, spread(&last)));
    }
    // Anti-affinity, checked apart from the planner's own rule: where every guest ends up, no
    // two of a group share a host, or a value of a label either of them spreads by.
    let mut at: BTreeMap<Name, Name> = state.guests().map(|g| (g.name.clone(), g.owner.clone())).collect();
    for m in &plan.moves {
        at.insert(m.guest.clone(), m.to.clone());
    }
    let grouped: Vec<&Guest> = state.guests().filter(|g| g.spec.anti_affinity.is_some()).collect();
    for (i, a) in grouped.iter().enumerate() {
        for b in &grouped[i + 1..] {
            let (ra, rb) = (a.spec.anti_affinity.as_ref().unwrap(), b.spec.anti_affinity.as_ref().unwrap());
            if ra.group != rb.group {
                continue;
            }
            let (ha, hb) = (state.host(&at[&a.name]).unwrap(), state.host(&at[&b.name]).unwrap());
            let shared = ha.spec.name == hb.spec.name
                || [&ra.spread_by, &rb.spread_by]
                    .into_iter()
                    .flatten()
                    .any(|k| ha.spec.labels.contains_key(k) && ha.spec.labels.get(k) == hb.spec.labels.get(k));
            if shared {
                return Err(format!("{} and {} of group {} end up together", a.name, b.name, ra.group));
            }
        }
    }
    Ok(())
}

#[test]
fn an_already_balanced_cluster_gets_no_moves() {
    let w = world(
        &[("h1", 16, 65536, "ia64"), ("h2", 16, 65536, "ia64")],
        &[("g1", "h1", 4, 16384, None), ("g2", "h2", 4, 16384, None)],
    );
    let plan = plan_rebalance(&w.state, 50_000, 100);
    assert!(plan.moves.is_empty(), "{plan:?}");
    assert_eq!(plan.spread_before, 0);
    assert!(plan.outcome.starts_with("balanced"), "{}", plan.outcome);
}

#[test]
fn a_small_imbalance_within_the_threshold_is_left_alone() {
    let w = world(
        &[("h1", 16, 65536, "ia64"), ("h2", 16, 65536, "ia64")],
        &[("g1", "h1", 4, 16384, None), ("g2", "h1", 1, 1024, None), ("g3", "h2", 4, 16384, None)],
    );
    // h1 at 31.2% (5 of 16 vCPU), h2 at 25%: 6.2 points apart.
    let plan = plan_rebalance(&w.state, 100_000, 100);
    assert!(plan.moves.is_empty(), "{plan:?}");
    assert_eq!(plan.spread_before, 62_500);
    let plan = plan_rebalance(&w.state, 10_000, 100);
    assert!(plan.moves.is_empty(), "moving g2 would only swap the imbalance: {plan:?}");
    assert!(plan.outcome.contains("no move lowers"), "{}", plan.outcome);
}

#[test]
fn one_hot_host_sheds_guests_to_the_cold_ones_with_as_few_moves_as_possible() {
    let w = world(
        &[("h1", 16, 65536, "ia64"), ("h2", 16, 65536, "ia64"), ("h3", 16, 65536, "ia64")],
        &[
            ("big", "h1", 8, 32768, None),
            ("a", "h1", 2, 8192, None),
            ("b", "h1", 2, 8192, None),
            ("c", "h1", 2, 8192, None),
            ("d", "h1", 2, 8192, None),
        ],
    );
    // h1 full (16 of 16), h2 and h3 empty.
    let plan = plan_rebalance(&w.state, 50_000, 100);
    check_plan(&w.state, &plan).unwrap();
    // The big guest first (the largest drop: 50% / 50% / 0%), then two small ones to the empty
    // host (37.5% / 50% / 12.5%, then 25% / 50% / 25%); moving the big guest again would only
    // shift the peak, so the plan ends there.
    assert_eq!(moves(&plan), vec![mv("big", "h1", "h2"), mv("a", "h1", "h3"), mv("b", "h1", "h3")], "{plan:?}");
    assert_eq!(plan.spread_before, 1_000_000);
    assert_eq!(plan.spread_after, 250_000);
    assert!(plan.moves[0].why.contains("h1 is the most loaded host"), "{}", plan.moves[0].why);
    // The same state plans the same moves: deterministic.
    assert_eq!(plan_rebalance(&w.state, 50_000, 100), plan);
    // A move budget is kept.
    assert_eq!(plan_rebalance(&w.state, 50_000, 1).moves.len(), 1);
}

#[test]
fn profiles_forbid_some_targets() {
    let w = world(
        &[("h1", 16, 65536, "ia64"), ("x1", 16, 65536, "x86_64"), ("h2", 16, 65536, "ia64")],
        &[("a", "h1", 4, 4096, None), ("b", "h1", 4, 4096, None), ("c", "h1", 4, 4096, None)],
    );
    let plan = plan_rebalance(&w.state, 50_000, 100);
    check_plan(&w.state, &plan).unwrap();
    assert!(plan.moves.iter().all(|m| m.to.as_str() == "h2"), "x1 has another profile: {plan:?}");
    assert_eq!(plan.moves.len(), 1, "{plan:?}");
    let g = w.state.guest(&n("a")).unwrap();
    let why = refusal(&w.state, g, w.state.host(&n("x1")).unwrap(), &Planned::default()).unwrap();
    assert!(why.contains("profile"), "{why}");
    // choose_target explains every host it turned down when none fits.
    let w2 = world(&[("h1", 16, 65536, "ia64"), ("x1", 16, 65536, "x86_64")], &[("a", "h1", 4, 4096, None)]);
    let refused = choose_target(&w2.state, w2.state.guest(&n("a")).unwrap(), &Planned::default()).unwrap_err();
    assert_eq!(refused.len(), 1);
    assert!(refused[0].1.contains("profile"), "{refused:?}");
}

#[test]
fn a_package_s_node_list_and_per_node_switching_bound_its_guest() {
    let mut w = world(
        &[("h1", 16, 65536, "ia64"), ("h2", 16, 65536, "ia64"), ("h3", 16, 65536, "ia64"), ("h4", 16, 65536, "ia64")],
        &[("pg", "h1", 8, 8192, Some("p1")), ("free", "h1", 8, 8192, None)],
    );
    w.ok(Command::ModifyPackage {
        package: n("p1"),
        nodes: Some(vec![n("h1"), n("h3"), n("h4")]),
        failover_policy: None,
        failback_policy: None,
    });
    w.ok(Command::SetPackageSwitching { package: n("p1"), node: Some(n("h4")), enabled: false, reason: None });
    let pg = w.state.guest(&n("pg")).unwrap();
    let none = Planned::default();
    let host = |h: &str| w.state.host(&n(h)).unwrap();
    assert!(refusal(&w.state, pg, host("h2"), &none).unwrap().contains("not in package p1's node list"));
    assert!(refusal(&w.state, pg, host("h4"), &none).unwrap().contains("switching of package p1 is disabled"));
    assert_eq!(refusal(&w.state, pg, host("h3"), &none), None);
    assert_eq!(choose_target(&w.state, pg, &none).unwrap().as_str(), "h3");
    let plan = plan_rebalance(&w.state, 50_000, 100);
    check_plan(&w.state, &plan).unwrap();
    for m in plan.moves.iter().filter(|m| m.guest.as_str() == "pg") {
        assert_eq!(m.to.as_str(), "h3", "{plan:?}");
    }
}

#[test]
fn guests_that_cannot_move_online_stay_and_maintenance_hosts_take_no_part() {
    let mut w = world(
        &[("h1", 16, 65536, "ia64"), ("h2", 16, 65536, "ia64"), ("m", 16, 65536, "ia64")],
        &[("stuck", "h1", 8, 8192, None), ("node", "h1", 8, 8192, None)],
    );
    w.ok(Command::ModifyGuest {
        name: n("stuck"),
        patch: GuestPatch { online_migration: Some(false), ..Default::default() },
        expect_version: None,
    });
    w.ok(Command::ModifyGuest {
        name: n("node"),
        patch: GuestPatch { cluster_node: Some(true), ..Default::default() },
        expect_version: None,
    });
    w.ok(Command::SetHostMaintenance { host: n("m"), maintenance: true });
    assert!(unmovable(&w.state, w.state.guest(&n("stuck")).unwrap()).unwrap().contains("online_migration"));
    assert!(unmovable(&w.state, w.state.guest(&n("node")).unwrap()).unwrap().contains("cluster node"));
    let plan = plan_rebalance(&w.state, 50_000, 100);
    assert!(plan.moves.is_empty(), "{plan:?}");
    assert_eq!(plan.spread_before, 1_000_000, "h1 full, h2 empty; m is in maintenance and not counted");
}

#[test]
fn an_in_flight_migration_s_reservation_counts_on_its_target() {
    let mut w = world(
        &[("h1", 16, 65536, "ia64"), ("h2", 16, 65536, "ia64"), ("h3", 16, 65536, "ia64")],
        &[("a", "h1", 8, 8192, None), ("b", "h1", 8, 8192, None)],
    );
    w.migrate("a", "h2", MigrationKind::Online);
    let b = w.state.guest(&n("b")).unwrap();
    // h2 already holds a's reservation: b goes to h3.
    assert_eq!(choose_target(&w.state, b, &Planned::default()).unwrap().as_str(), "h3");
    let plan = plan_rebalance(&w.state, 50_000, 100);
    check_plan(&w.state, &plan).unwrap();
    assert!(plan.moves.iter().all(|m| m.guest.as_str() != "a"), "a is in flight: {plan:?}");
}

const FAMILIES: [&str; 2] = ["ia64", "x86_64"];

prop_compose! {
    fn cluster()(
        hosts in proptest::collection::vec((8u32..64, 16_384u64..131_072, 0usize..4, proptest::bool::weighted(0.15)), 2..7),
        // Owners drawn from the first three hosts mostly: hot hosts and cold ones.
        guests in proptest::collection::vec((0usize..9, 1u32..6, 512u64..8192, 0u8..9), 0..40),
        nodes in proptest::option::of(proptest::collection::vec(0usize..7, 1..4)),
        disabled in proptest::option::of(0usize..7),
    ) -> ClusterState {
        let mut w = World::empty();
        let names: Vec<String> = (0..hosts.len()).map(|i| format!("h{i}")).collect();
        for (i, (vcpus, mem, family, _)) in hosts.iter().enumerate() {
            // One host in four (about) of another hardware family; racks of two hosts.
            let mut spec = host_spec(&names[i], *vcpus, *mem, FAMILIES[usize::from(*family == 3)]);
            spec.labels.insert(n("rack"), n(&format!("r{}", i / 2)));
            w.ok(Command::RegisterHost(spec));
        }
        let mut packaged = false;
        for (i, (owner, vcpus, mem, kind)) in guests.iter().enumerate() {
            let owner = &names[if *owner < 6 { owner % 3 } else { *owner } % names.len()];
            let package = (*kind == 0 && !packaged).then_some("p1");
            let p = Proposal {
                request_id: RequestId(1_000 + i as u128),
                actor: "test".into(),
                time: Timestamp(1),
                command: Command::CreateGuest {
                    name: n(&format!("g{i}")),
                    spec: GuestSpec {
                        online_migration: *kind != 1,
                        cluster_node: *kind == 2,
                        // Two anti-affinity groups: one spread by host, one by rack.
                        anti_affinity: match kind {
                            4 | 5 => Some(AntiAffinity { group: n("web"), spread_by: None }),
                            6 => Some(AntiAffinity { group: n("db"), spread_by: Some(n("rack")) }),
                            _ => None,
                        },
                        ..guest_spec(*vcpus, *mem, package)
                    },
                    owner: n(owner),
                    run_state: if *kind == 3 { RunState::Stopped } else { RunState::Running },
                },
            };
            // A guest that does not fit is refused: the cluster simply has fewer guests.
            if apply(&mut w.state, &p, 1).is_ok() && package.is_some() {
                packaged = true;
            }
        }
        if packaged {
            if let Some(v) = nodes {
                let mut list: Vec<Name> = Vec::new();
                for i in v {
                    let h = n(&names[i % names.len()]);
                    if !list.contains(&h) {
                        list.push(h);
                    }
                }
                let nodes = Some(list);
                w.ok(Command::ModifyPackage { package: n("p1"), nodes, failover_policy: None, failback_policy: None });
            }
            if let Some(d) = disabled {
                let node = Some(n(&names[d % names.len()]));
                w.ok(Command::SetPackageSwitching { package: n("p1"), node, enabled: false, reason: None });
            }
        }
        for (i, (_, _, _, maint)) in hosts.iter().enumerate() {
            if *maint && w.state.guests().all(|g| g.owner.as_str() != names[i]) {
                w.ok(Command::SetHostMaintenance { host: n(&names[i]), maintenance: true });
            }
        }
        w.state
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_plan_never_breaks_a_rule_nor_widens_the_imbalance(state in cluster(), threshold in 0u64..300_000) {
        let plan = plan_rebalance(&state, threshold, 50);
        if let Err(e) = check_plan(&state, &plan) {
            prop_assert!(false, "{e}\nplan: {plan:?}");
        }
        prop_assert!(plan.spread_after <= plan.spread_before);
        prop_assert!(plan.moves.is_empty() || plan.spread_before > threshold);
        prop_assert_eq!(plan_rebalance(&state, threshold, 50), plan, "deterministic");
    }
}

/// Guards the generator: random clusters must give the planner real work (plans of several
/// moves, some packaged guests), or the property above would only see empty plans.
#[test]
fn the_generator_makes_plans_with_moves() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut with_moves, mut long, mut packaged, mut grouped) = (0, 0, 0, 0);
    for _ in 0..300 {
        let state = cluster().new_tree(&mut runner).unwrap().current();
        let plan = plan_rebalance(&state, 50_000, 50);
        with_moves += usize::from(!plan.moves.is_empty());
        long += usize::from(plan.moves.len() >= 3);
        packaged += usize::from(plan.moves.iter().any(|m| state.guest(&m.guest).unwrap().spec.package.is_some()));
        grouped += usize::from(plan.moves.iter().any(|m| state.guest(&m.guest).unwrap().spec.anti_affinity.is_some()));
    }
    assert!(
        with_moves > 100 && long > 30 && packaged > 5 && grouped > 30,
        "{with_moves} plans with moves, {long} of 3+, {packaged} moving a packaged guest, {grouped} a grouped one"
    );
}

// ---- drains ----

fn drain_world(guests: usize) -> World {
    let mut w = World::empty();
    w.ok(Command::RegisterHost(host_spec("src", 64, 262_144, "ia64")));
    for h in ["t1", "t2", "t3"] {
        w.ok(Command::RegisterHost(host_spec(h, 32, 131_072, "ia64")));
    }
    w.ok(Command::RegisterHost(host_spec("x86", 64, 262_144, "x86_64")));
    for i in 0..guests {
        w.ok(Command::CreateGuest {
            name: n(&format!("g{i:02}")),
            spec: guest_spec(1 + (i % 3) as u32, 2048, None),
            owner: n("src"),
            run_state: RunState::Running,
        });
    }
    w
}

/// Commits the drain's steps as the leader would, checking every limit after each commit; the
/// migrations it starts finish (one at a time, oldest first) through `finish`, which says
/// whether each completes. Returns the drain's end.
fn run_drain(w: &mut World, limits: MoveLimits, per_host: u32, mut finish: impl FnMut(&Migration) -> bool) -> Event {
    for _ in 0..10_000 {
        for c in drain_steps(&w.state, limits) {
            let (_, events) = w.ok(c);
            let in_flight: Vec<&Migration> = w.state.in_flight_migrations().collect();
            assert!(in_flight.len() as u32 <= limits.cluster, "cluster limit");
            assert!(in_flight.iter().filter(|m| m.source.as_str() == "src").count() as u32 <= per_host, "source limit");
            for t in ["t1", "t2", "t3", "x86"] {
                assert!(
                    in_flight.iter().filter(|m| m.target.as_str() == t).count() as u32 <= limits.per_target,
                    "target limit"
                );
            }
            if let Some(e) = events.iter().find(|e| matches!(e.payload, EventPayload::DrainEnded { .. })) {
                return e.clone();
            }
        }
        let Some(m) = w.state.in_flight_migrations().next().cloned() else { continue };
        if finish(&m) {
            w.advance_to(m.id, Phase::Completed);
        } else {
            w.ok(Command::FailMigration { id: m.id, error: "transfer failed".into() });
        }
    }
    panic!("the drain never ended");
}

#[test]
fn a_drain_moves_every_guest_within_the_limits_and_ends_in_maintenance() {
    let mut w = drain_world(30);
    w.ok(Command::StartDrain { host: n("src"), allow_offline: false, max_parallel: 3 });
    let limits = MoveLimits { per_target: 2, cluster: 4 };
    // The first round starts three migrations (the drain's own limit), to different targets
    // while one is free, never to the other family's host.
    let first = drain_steps(&w.state, limits);
    assert_eq!(first.len(), 3, "{first:?}");
    let end = run_drain(&mut w, limits, 3, |_| true);
    assert!(matches!(&end.payload, EventPayload::DrainEnded { outcome: DrainOutcome::Completed, .. }), "{end:?}");
    let src = w.state.host(&n("src")).unwrap();
    assert_eq!(w.state.host_state(src), HostState::Maintenance);
    assert_eq!(w.state.guests().filter(|g| g.owner.as_str() == "src").count(), 0);
    assert_eq!(w.state.guests().filter(|g| g.owner.as_str() == "x86").count(), 0, "another profile");
    assert!(drain_steps(&w.state, limits).is_empty());
}

#[test]
fn a_drain_stops_before_guests_that_cannot_move_and_says_why() {
    let mut w = drain_world(4);
    w.ok(Command::ModifyGuest {
        name: n("g00"),
        patch: GuestPatch { online_migration: Some(false), ..Default::default() },
        expect_version: None,
    });
    w.ok(Command::StartDrain { host: n("src"), allow_offline: false, max_parallel: 2 });
    // g01 always fails: after three attempts it is given up.
    let end = run_drain(&mut w, MoveLimits { per_target: 1, cluster: 8 }, 2, |m| m.guest.as_str() != "g01");
    let EventPayload::DrainEnded { outcome, blocked, .. } = &end.payload else { unreachable!() };
    assert_eq!(*outcome, DrainOutcome::Stopped);
    let why = |g: &str| blocked.iter().find(|b| b.guest.as_str() == g).map(|b| b.why.clone()).unwrap_or_default();
    assert!(
        why("g00").contains("online_migration is disabled") && why("g00").contains("--allow-offline"),
        "{blocked:?}"
    );
    assert!(why("g01").contains("last 3 migrations failed"), "{blocked:?}");
    assert_eq!(blocked.len(), 2, "{blocked:?}");
    let src = w.state.host(&n("src")).unwrap();
    assert_eq!(w.state.host_state(src), HostState::Active, "a stopped drain leaves the host as it was");

    // With --allow-offline the guest that cannot move online moves offline, stopped on the way.
    let mut w = drain_world(2);
    w.ok(Command::ModifyGuest {
        name: n("g00"),
        patch: GuestPatch { cluster_node: Some(true), ..Default::default() },
        expect_version: None,
    });
    w.ok(Command::StartDrain { host: n("src"), allow_offline: true, max_parallel: 2 });
    let steps = drain_steps(&w.state, MoveLimits { per_target: 1, cluster: 8 });
    assert!(steps.iter().any(|c| matches!(c, Command::RequestMigration { guest, kind: MigrationKind::OfflineStop, .. } if guest.as_str() == "g00")), "{steps:?}");
}

#[test]
fn a_drain_with_no_room_anywhere_names_every_host_that_refused() {
    let mut w = World::empty();
    w.ok(Command::RegisterHost(host_spec("src", 64, 262_144, "ia64")));
    w.ok(Command::RegisterHost(host_spec("tiny", 1, 1024, "ia64")));
    w.ok(Command::CreateGuest {
        name: n("big"),
        spec: guest_spec(8, 8192, None),
        owner: n("src"),
        run_state: RunState::Running,
    });
    w.ok(Command::StartDrain { host: n("src"), allow_offline: false, max_parallel: 2 });
    let steps = drain_steps(&w.state, MoveLimits { per_target: 1, cluster: 8 });
    let [Command::EndDrain { outcome: DrainOutcome::Stopped, blocked, .. }] = steps.as_slice() else {
        panic!("{steps:?}")
    };
    assert!(blocked[0].why.contains("tiny: it lacks room"), "{blocked:?}");
}
