//! Host failure detection and failover as log commits: who may be declared failed, which node a
//! failover may start a guest on, and the saga's steps (start, attempt failed, next node,
//! completed or abandoned).
mod common;
use common::*;
use switchyard_protocol::ha;
use switchyard_protocol::*;

/// The standard world with h1, h2 and small under failure detection (h3 never reported).
fn world() -> World {
    let mut w = World::standard();
    for h in ["h1", "h2", "small"] {
        w.ok(Command::AdmitHost { host: n(h) });
    }
    w
}

/// [`world`] with package p1 on the nodes h1, h2 and small (in that order), and g1 small
/// enough for every one of them.
fn world_with_three_nodes_for_g1() -> World {
    let mut w = world();
    w.ok(Command::ModifyPackage {
        package: n("p1"),
        nodes: Some(vec![n("h1"), n("h2"), n("small")]),
        failover_policy: None,
        failback_policy: None,
    });
    w.ok(Command::ModifyGuest {
        name: n("g1"),
        patch: GuestPatch { vcpus: Some(1), memory_mib: Some(512), ..Default::default() },
        expect_version: None,
    });
    w
}

fn fail(w: &mut World, host: &str) {
    w.ok(Command::DeclareHostFailed { host: n(host), evidence: "lease expired 1200 ms ago".into() });
}

#[test]
fn only_live_members_can_be_declared_failed_and_recover_by_admission() {
    let mut w = world();
    assert_eq!(w.reject(Command::DeclareHostFailed { host: n("h3"), evidence: "x".into() }).code(), "invalid_argument");
    assert_eq!(w.reject(Command::AdmitHost { host: n("h1") }).code(), "invalid_argument");
    fail(&mut w, "h1");
    let h1 = w.state.host(&n("h1")).unwrap().clone();
    assert_eq!(w.state.host_state(&h1), HostState::Failed);
    assert_eq!(w.reject(Command::DeclareHostFailed { host: n("h1"), evidence: "x".into() }).code(), "invalid_argument");
    // No migration to or from a failed host.
    let refused = w.reject(Command::RequestMigration {
        guest: n("g1"),
        source: n("h1"),
        target: n("h2"),
        kind: MigrationKind::Online,
        reason: None,
    });
    assert_eq!(refused.code(), "host_not_active");
    let (_, events) = w.ok(Command::AdmitHost { host: n("h1") });
    assert!(matches!(events[0].payload, EventPayload::HostRecovered { .. }));
    let h1 = w.state.host(&n("h1")).unwrap().clone();
    assert_eq!(w.state.host_state(&h1), HostState::Active);
}

#[test]
fn a_failover_moves_the_owner_and_is_fenced_by_its_token() {
    let mut w = world();
    // Not before the host failed.
    assert_eq!(w.reject(Command::StartFailover { guest: n("g1"), to: n("h2") }).code(), "failover_refused");
    fail(&mut w, "h1");
    let g1 = w.guest("g1").clone();
    let p1 = w.package("p1").clone();
    let (to, why) = ha::choose(&w.state, &g1, &p1, &[]).unwrap();
    assert_eq!(to, n("h2"), "{why}");
    // h3 never reported, small lacks the memory, h1 failed: each excluded with a reason.
    let c = ha::candidates(&w.state, &g1, &p1, &[]);
    let excluded = |h: &str| c.iter().find(|c| c.host == n(h)).unwrap().excluded.clone();
    assert!(excluded("h1").unwrap().contains("failed"));
    assert!(excluded("h3").unwrap().contains("never reported"));
    assert!(excluded("small").unwrap().contains("capacity"));
    assert_eq!(excluded("h2"), None);
    // An unprotected guest (no package) is not failed over; an ineligible node is refused.
    assert_eq!(w.reject(Command::StartFailover { guest: n("g2"), to: n("h2") }).code(), "failover_refused");
    assert_eq!(w.reject(Command::StartFailover { guest: n("g1"), to: n("h3") }).code(), "failover_refused");

    let (_, events) = w.ok(Command::StartFailover { guest: n("g1"), to: n("h2") });
    let token = events[0].token();
    assert_eq!(w.guest("g1").owner, n("h2"));
    assert_eq!(w.guest("g1").version, token.revision, "agents see an owner change");
    assert_eq!(w.state.failover(&n("g1")).unwrap().token, token);
    // A second start while the attempt runs, a migration, or a report with another token: refused.
    assert_eq!(w.reject(Command::StartFailover { guest: n("g1"), to: n("h2") }).code(), "failover_refused");
    let stale = FencingToken { term: token.term, revision: token.revision - 1 };
    let refused = w.reject(Command::CompleteFailover { guest: n("g1"), host: n("h2"), token: stale });
    assert_eq!(refused.code(), "failover_refused");
    let refused = w.reject(Command::CompleteFailover { guest: n("g1"), host: n("small"), token });
    assert_eq!(refused.code(), "failover_refused");
    w.ok(Command::CompleteFailover { guest: n("g1"), host: n("h2"), token });
    assert!(w.state.failover(&n("g1")).is_none());
    // h1's return does not bring the guest back: the log says h2 owns it.
    w.ok(Command::AdmitHost { host: n("h1") });
    assert_eq!(w.guest("g1").owner, n("h2"));
}

#[test]
fn a_failed_attempt_goes_to_the_next_node_and_an_exhausted_list_abandons() {
    let mut w = world_with_three_nodes_for_g1();
    fail(&mut w, "h1");
    let (_, events) = w.ok(Command::StartFailover { guest: n("g1"), to: n("h2") });
    let token = events[0].token();
    // The leader gave up waiting: the next node is asked only once h2 confirmed no copy runs
    // there (or h2 failed).
    w.ok(Command::FailFailoverAttempt {
        guest: n("g1"),
        host: n("h2"),
        token,
        reason: "start failed".into(),
        released: false,
    });
    assert_eq!(w.reject(Command::StartFailover { guest: n("g1"), to: n("small") }).code(), "failover_refused");
    w.ok(Command::ReleaseFailoverAttempt { guest: n("g1"), host: n("h2"), token });
    assert_eq!(
        w.reject(Command::ReleaseFailoverAttempt { guest: n("g1"), host: n("h2"), token }).code(),
        "failover_refused"
    );
    let g1 = w.guest("g1").clone();
    let p1 = w.package("p1").clone();
    let tried = vec![n("h2")];
    assert_eq!(ha::choose(&w.state, &g1, &p1, &tried).unwrap().0, n("small"));
    // The tried node is refused, the next one accepted; the history keeps why h2 ended.
    assert_eq!(w.reject(Command::StartFailover { guest: n("g1"), to: n("h2") }).code(), "failover_refused");
    let (_, events) = w.ok(Command::StartFailover { guest: n("g1"), to: n("small") });
    match &events[0].payload {
        EventPayload::FailoverStarted { from, failed_host, .. } => {
            assert_eq!((from, failed_host), (&n("h2"), &n("h1")));
        }
        other => panic!("{other:?}"),
    }
    let f = w.state.failover(&n("g1")).unwrap().clone();
    assert_eq!(f.tried, vec![(n("h2"), "start failed".to_string())]);
    w.ok(Command::FailFailoverAttempt {
        guest: n("g1"),
        host: n("small"),
        token: f.token,
        reason: "timed out".into(),
        released: true,
    });
    let g1 = w.guest("g1").clone();
    let why = ha::choose(&w.state, &g1, &p1, &[n("h2"), n("small")]).unwrap_err();
    assert!(why.contains("no eligible node"), "{why}");
    w.ok(Command::AbandonFailover { guest: n("g1"), reason: why });
    assert!(w.state.failover(&n("g1")).is_none());
}

#[test]
fn min_package_node_spreads_packages_and_per_node_switching_excludes() {
    let mut w = World::empty();
    for h in ["a", "b", "c"] {
        w.ok(Command::RegisterHost(host_spec(h, 16, 65536, "ia64")));
        w.ok(Command::AdmitHost { host: n(h) });
    }
    // b already runs a package; c runs none.
    for (g, owner, p) in [("g1", "a", "p1"), ("g2", "b", "p2")] {
        w.ok(Command::CreateGuest {
            name: n(g),
            spec: guest_spec(1, 512, Some(p)),
            owner: n(owner),
            run_state: RunState::Running,
        });
    }
    fail(&mut w, "a");
    let g1 = w.guest("g1").clone();
    let p1 = w.package("p1").clone();
    assert_eq!(ha::choose(&w.state, &g1, &p1, &[]).unwrap().0, n("b"), "configured_node: list order");
    w.ok(Command::ModifyPackage {
        package: n("p1"),
        nodes: None,
        failover_policy: Some(FailoverPolicy::MinPackageNode),
        failback_policy: Some(FailbackPolicy::Automatic),
    });
    let p1 = w.package("p1").clone();
    assert_eq!(ha::choose(&w.state, &g1, &p1, &[]).unwrap().0, n("c"), "min_package_node: fewest packages");
    w.ok(Command::SetPackageSwitching { package: n("p1"), node: Some(n("c")), enabled: false, reason: None });
    let p1 = w.package("p1").clone();
    assert_eq!(ha::choose(&w.state, &g1, &p1, &[]).unwrap().0, n("b"));
    // Global switching disabled: not protected at all.
    w.ok(Command::SetPackageSwitching { package: n("p1"), node: None, enabled: false, reason: Some("test".into()) });
    assert!(ha::unprotected(&w.state, &g1).unwrap().contains("switching disabled"));
    assert_eq!(w.reject(Command::StartFailover { guest: n("g1"), to: n("b") }).code(), "failover_refused");
}

#[test]
fn package_modify_checks_its_node_list() {
    let mut w = world();
    let modify = |nodes: Vec<&str>| Command::ModifyPackage {
        package: n("p1"),
        nodes: Some(nodes.into_iter().map(n).collect()),
        failover_policy: None,
        failback_policy: None,
    };
    assert_eq!(w.reject(modify(vec!["h1", "nohost"])).code(), "unknown_host");
    assert_eq!(w.reject(modify(vec!["h1", "h1"])).code(), "invalid_argument");
    let none = Command::ModifyPackage { package: n("p1"), nodes: None, failover_policy: None, failback_policy: None };
    assert_eq!(w.reject(none).code(), "invalid_argument");
    let unknown = Command::ModifyPackage {
        package: n("nope"),
        nodes: Some(vec![]),
        failover_policy: None,
        failback_policy: None,
    };
    assert_eq!(w.reject(unknown).code(), "unknown_package");
    w.ok(modify(vec!["h2", "h1"]));
    assert_eq!(w.package("p1").nodes, vec![n("h2"), n("h1")]);
}

const TIMES: ha::LivenessTimes = ha::LivenessTimes {
    lease: std::time::Duration::from_millis(4000),
    grace: std::time::Duration::from_millis(1000),
    report_timeout: std::time::Duration::from_millis(10_000),
};

fn at(t0: std::time::Instant, ms: u64) -> std::time::Instant {
    t0 + std::time::Duration::from_millis(ms)
}

fn kinds(commands: &[Command]) -> Vec<&'static str> {
    commands.iter().map(|c| c.kind()).collect()
}

#[test]
fn a_member_is_declared_failed_only_after_lease_and_grace_by_the_leaders_clock() {
    let w = world();
    let h1 = w.state.host(&n("h1")).unwrap().clone();
    let t0 = std::time::Instant::now();
    let renewal = ha::Sighting { at: t0, report: Some((5, 7)) };
    let decide = |now: u64| ha::liveness_commands(&w.state, &h1, Some(renewal), Some(renewal), at(t0, now), &TIMES, 2);
    assert!(decide(4999).is_empty(), "{:?}", decide(4999));
    assert!(decide(5000).is_empty(), "not at the expiry itself");
    let failed = decide(5001);
    assert_eq!(kinds(&failed), ["declare_host_failed"]);
    let Command::DeclareHostFailed { evidence, .. } = &failed[0] else { unreachable!() };
    assert_eq!(
        evidence,
        "no lease renewal for 5001 ms since its last lease renewal (lease 4000 ms + grace 1000 ms, by coordinator 2's monotonic clock)"
    );
    // A new leader counts its own start as every host's last renewal: a full lease first.
    let took_office = ha::Sighting { at: at(t0, 3000), report: Some((5, 7)) };
    let decide =
        |now: u64| ha::liveness_commands(&w.state, &h1, Some(took_office), Some(renewal), at(t0, now), &TIMES, 3);
    assert!(decide(7999).is_empty());
    assert_eq!(kinds(&decide(8001)), ["declare_host_failed"]);
    // A failed host is not also marked unreachable, and is not declared failed twice.
    let mut w = w;
    fail(&mut w, "h1");
    let h1 = w.state.host(&n("h1")).unwrap().clone();
    let late = ha::liveness_commands(&w.state, &h1, Some(renewal), Some(renewal), at(t0, 60_000), &TIMES, 2);
    assert!(late.is_empty(), "{late:?}");
}

/// The hosts `commands` declare failed.
fn declared(commands: &[Command]) -> Vec<&str> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::DeclareHostFailed { host, .. } => Some(host.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_renewal_before_the_decision_prevents_it_and_one_after_it_is_answered_failed() {
    let mut w = world();
    let t0 = std::time::Instant::now();
    let mut leases = ha::Leases::default();
    assert!(leases.decide(&w.state, at(t0, 60_000), &TIMES, 1).is_empty(), "not leading: nothing");
    leases.set_leader(true, t0);
    for h in ["h1", "h2", "small"] {
        assert!(!leases.renewed(&n(h), (1, 0), at(t0, 1000)));
    }
    assert!(declared(&leases.decide(&w.state, at(t0, 6000), &TIMES, 1)).is_empty(), "not past lease + grace");
    // h2 renews just before the decision: only the other two are declared.
    assert!(!leases.renewed(&n("h2"), (1, 0), at(t0, 6000)));
    assert_eq!(declared(&leases.decide(&w.state, at(t0, 6001), &TIMES, 1)), ["h1", "small"]);
    // Renewals after it are answered failed until the state shows the failure...
    assert!(leases.renewed(&n("h1"), (1, 0), at(t0, 6002)));
    assert!(!leases.renewed(&n("h2"), (1, 0), at(t0, 6002)));
    fail(&mut w, "h1");
    // A declaration not applied yet is decided again; an applied one is not.
    assert_eq!(declared(&leases.decide(&w.state, at(t0, 6100), &TIMES, 1)), ["small"]);
    assert!(!leases.renewed(&n("h1"), (1, 0), at(t0, 6101)), "the state answers it now");
    // ...or the state refused the declaration, or this node stopped leading.
    assert!(leases.renewed(&n("small"), (1, 0), at(t0, 6102)));
    leases.refused(&n("small"));
    assert!(!leases.renewed(&n("small"), (1, 0), at(t0, 6103)));
    assert_eq!(declared(&leases.decide(&w.state, at(t0, 11_200), &TIMES, 1)), ["h2", "small"]);
    leases.set_leader(false, at(t0, 11_300));
    assert!(!leases.renewed(&n("h2"), (1, 0), at(t0, 11_301)));
    assert!(leases.decide(&w.state, at(t0, 60_000), &TIMES, 1).is_empty());
    // Taking office again counts as every host's last sighting: a full lease and grace first.
    leases.set_leader(true, at(t0, 20_000));
    assert!(declared(&leases.decide(&w.state, at(t0, 25_000), &TIMES, 1)).is_empty());
    assert_eq!(declared(&leases.decide(&w.state, at(t0, 25_001), &TIMES, 1)), ["h2", "small"]);
}

#[test]
fn hosts_join_on_a_fresh_renewal_and_a_failed_one_rejoins_only_past_its_failure() {
    let mut w = World::standard();
    let h1 = w.state.host(&n("h1")).unwrap().clone();
    let t0 = std::time::Instant::now();
    let renewal = |ms: u64, applied: u64| ha::Sighting { at: at(t0, ms), report: Some((applied, 0)) };
    // Never reported: nothing. A renewal within the lease: it joins.
    let leader_start = ha::Sighting { at: t0, report: None };
    assert!(ha::liveness_commands(&w.state, &h1, Some(leader_start), None, at(t0, 100), &TIMES, 1).is_empty());
    let joined = ha::liveness_commands(&w.state, &h1, Some(renewal(0, 1)), Some(renewal(0, 1)), at(t0, 100), &TIMES, 1);
    assert_eq!(kinds(&joined), ["admit_host"]);
    // A stale renewal (older than the lease) does not make it join.
    let stale = ha::liveness_commands(&w.state, &h1, Some(renewal(0, 1)), Some(renewal(0, 1)), at(t0, 4000), &TIMES, 1);
    assert!(!kinds(&stale).contains(&"admit_host"), "{stale:?}");

    w.ok(Command::AdmitHost { host: n("h1") });
    fail(&mut w, "h1");
    let failed_at = w.state.host_failure(&n("h1")).unwrap().revision;
    let h1 = w.state.host(&n("h1")).unwrap().clone();
    let behind = renewal(10_000, failed_at - 1);
    assert!(ha::liveness_commands(&w.state, &h1, Some(behind), Some(behind), at(t0, 10_100), &TIMES, 1).is_empty());
    let caught_up = renewal(10_000, failed_at);
    let back = ha::liveness_commands(&w.state, &h1, Some(caught_up), Some(caught_up), at(t0, 10_100), &TIMES, 1);
    assert_eq!(kinds(&back), ["admit_host"]);
}

#[test]
fn an_attempt_fails_after_the_start_timeout_from_when_this_leader_first_saw_it() {
    let mut w = world();
    fail(&mut w, "h1");
    let t0 = std::time::Instant::now();
    let timeout = std::time::Duration::from_millis(2000);
    let mut seen = std::collections::HashMap::new();
    let plan = ha::plan_failovers(&w.state, &mut seen, t0, timeout);
    assert_eq!(plan.len(), 1, "{plan:?}");
    let (guest, start) = plan.into_iter().next().unwrap();
    assert_eq!((guest.as_str(), start.kind()), ("g1", "start_failover"));
    w.ok(start);
    // This leader first sees the attempt at t0 + 500: the timeout runs from there.
    assert!(ha::plan_failovers(&w.state, &mut seen, at(t0, 500), timeout).is_empty());
    assert!(ha::plan_failovers(&w.state, &mut seen, at(t0, 2500), timeout).is_empty());
    let plan = ha::plan_failovers(&w.state, &mut seen, at(t0, 2501), timeout);
    assert_eq!(plan.iter().map(|(_, c)| c.kind()).collect::<Vec<_>>(), ["fail_failover_attempt"]);
    // A new leader (an empty `seen`) gives the attempt a full timeout again.
    let mut other = std::collections::HashMap::new();
    assert!(ha::plan_failovers(&w.state, &mut other, at(t0, 10_000), timeout).is_empty());
}

/// A live migration whose source is lost once the transfer began may have finished on the
/// hypervisor just before: the guest may run on the target although the migration failed.
/// Its failover goes to that target (where a running guest counts as started), never first to
/// another node, which would make a second copy; while the target is not eligible, nowhere.
#[test]
fn a_guest_whose_move_ended_with_its_source_lost_fails_over_to_the_move_s_target_first() {
    let mut w = world_with_three_nodes_for_g1();
    // A move that failed before the transfer began leaves no copy anywhere else.
    let early = w.migrate("g1", "h2", MigrationKind::Online);
    w.ok(Command::FailMigration { id: early, error: "refused".into() });
    let id = w.migrate("g1", "small", MigrationKind::Online);
    w.advance_to(id, Phase::Transferring);
    fail(&mut w, "h1");
    // In flight: no failover yet (the migration fails first).
    assert_eq!(ha::copy_left_by_move(&w.state, &n("g1")), None);
    w.ok(Command::FailMigration { id, error: "source host h1 failed".into() });
    assert_eq!(ha::copy_left_by_move(&w.state, &n("g1")), Some(&n("small")));
    // The package's policy alone would pick h2, the first eligible node in its list.
    let (g1, p1) = (w.guest("g1").clone(), w.package("p1").clone());
    assert_eq!(ha::choose(&w.state, &g1, &p1, &[]).unwrap().0, n("h2"));
    let t0 = std::time::Instant::now();
    let timeout = std::time::Duration::from_millis(2000);
    let mut seen = std::collections::HashMap::new();

    // The target in maintenance: not eligible, so no failover at all, and none is accepted
    // elsewhere.
    w.ok(Command::SetHostMaintenance { host: n("small"), maintenance: true });
    assert!(ha::plan_failovers(&w.state, &mut seen, t0, timeout).is_empty());
    let refused = w.reject(Command::StartFailover { guest: n("g1"), to: n("h2") });
    assert_eq!(refused.code(), "failover_refused");
    assert!(refused.to_string().contains("may run on small"), "{refused}");
    w.ok(Command::SetHostMaintenance { host: n("small"), maintenance: false });

    let plan = ha::plan_failovers(&w.state, &mut seen, t0, timeout);
    let starts: Vec<_> = plan.iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(starts, [Command::StartFailover { guest: n("g1"), to: n("small") }]);
    w.ok(starts[0].clone());
    assert_eq!(w.guest("g1").owner, n("small"));
    // Once the target is the owner, the rule has nothing more to say.
    assert_eq!(ha::copy_left_by_move(&w.state, &n("g1")), None);
}
