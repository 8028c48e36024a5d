//! Migrations: the request checks of SPEC §4 and the phase transitions of SPEC §5.
mod common;
use common::*;
use switchyard_protocol::*;

fn request(guest: &str, source: &str, target: &str, kind: MigrationKind) -> Command {
    Command::RequestMigration {
        guest: n(guest),
        source: n(source),
        target: n(target),
        kind,
        reason: Some("rebalance".into()),
    }
}

#[test]
fn packaged_guest_walks_every_phase_and_switching_comes_back() {
    let mut w = World::standard();
    let id = w.migrate("g1", "h2", MigrationKind::Online);
    assert_eq!(id.0, w.state.revision(), "the id is the request's revision");
    let m = w.state.migration(id).unwrap();
    assert_eq!((m.phase, m.switching_before), (Phase::Requested, Some(true)));

    assert_eq!(w.advance(id), Phase::SwitchingDisabled);
    let p = w.package("p1");
    assert!(!p.switching_enabled);
    assert_eq!(p.switching_changed.migration, Some(id), "the unprotected window names its migration");
    assert_eq!(w.advance(id), Phase::Transferring);
    assert_eq!(w.advance(id), Phase::TargetRunning);
    assert_eq!(w.guest("g1").owner, n("h1"), "owner moves only at the owner switch");
    assert_eq!(w.advance(id), Phase::OwnerSwitched);
    assert_eq!(w.guest("g1").owner, n("h2"));
    assert_eq!(w.advance(id), Phase::SwitchingEnabled);
    assert!(w.package("p1").switching_enabled);
    assert_eq!(w.advance(id), Phase::Completed);

    let m = w.state.migration(id).unwrap();
    let phases: Vec<Phase> = m.history.iter().map(|r| r.phase).collect();
    assert_eq!(
        phases,
        [
            Phase::Requested,
            Phase::SwitchingDisabled,
            Phase::Transferring,
            Phase::TargetRunning,
            Phase::OwnerSwitched,
            Phase::SwitchingEnabled,
            Phase::Completed
        ]
    );
    assert_eq!(m.freeze_time_ms, Some(120));
    assert!(w.state.in_flight(&n("g1")).is_none());
    // Capacity moved with the guest.
    assert_eq!(w.state.committed_resources(&n("h2")), Resources { vcpus: 4, memory_mib: 8192 });
    assert_eq!(w.state.committed_resources(&n("h1")), Resources { vcpus: 2, memory_mib: 4096 });
}

#[test]
fn guest_without_package_skips_switching_phases() {
    let mut w = World::standard();
    let id = w.migrate("g2", "h2", MigrationKind::Online);
    let mut seen = vec![];
    while !w.state.migration(id).unwrap().phase.is_terminal() {
        seen.push(w.advance(id));
    }
    assert_eq!(seen, [Phase::Transferring, Phase::TargetRunning, Phase::OwnerSwitched, Phase::Completed]);
}

#[test]
fn switching_disabled_before_stays_disabled_after() {
    let mut w = World::standard();
    w.ok(Command::SetPackageSwitching {
        package: n("p1"),
        node: None,
        enabled: false,
        reason: Some("operator".into()),
    });
    let id = w.migrate("g1", "h2", MigrationKind::Online);
    w.advance_to(id, Phase::Completed);
    assert!(!w.package("p1").switching_enabled, "restored to the state before the migration");
}

#[test]
fn request_rejections() {
    let mut w = World::standard();
    w.ok(Command::CreateGuest {
        name: n("stopped"),
        spec: guest_spec(1, 512, None),
        owner: n("h1"),
        run_state: RunState::Stopped,
    });
    let mut locked = guest_spec(1, 512, None);
    locked.online_migration = false;
    w.ok(Command::CreateGuest { name: n("locked"), spec: locked, owner: n("h1"), run_state: RunState::Running });
    let mut node = guest_spec(1, 512, None);
    node.cluster_node = true;
    w.ok(Command::CreateGuest { name: n("cnode"), spec: node, owner: n("h1"), run_state: RunState::Running });
    w.ok(Command::RegisterHost(host_spec("maint", 16, 65536, "ia64")));
    w.ok(Command::SetHostMaintenance { host: n("maint"), maintenance: true });
    w.ok(Command::RegisterHost(host_spec("gone", 16, 65536, "ia64")));
    w.ok(Command::SetHostReachable { host: n("gone"), reachable: false });

    use MigrationKind::*;
    let cases: Vec<(&str, Command, &str)> = vec![
        ("unknown guest", request("nope", "h1", "h2", Online), "unknown_guest"),
        ("unknown source", request("g1", "h9", "h2", Online), "unknown_host"),
        ("unknown target", request("g1", "h1", "h9", Online), "unknown_host"),
        ("not on stated source", request("g1", "h2", "h1", Online), "wrong_source"),
        ("target is source", request("g1", "h1", "h1", Online), "same_source_and_target"),
        ("target in maintenance", request("g1", "h1", "maint", Online), "host_not_active"),
        ("target unreachable", request("g1", "h1", "gone", Offline), "host_not_active"),
        ("online_migration=disabled", request("locked", "h1", "h2", Online), "online_migration_disabled"),
        ("cluster-node guest", request("cnode", "h1", "h2", Online), "guest_is_cluster_node"),
        ("stopped guest online", request("stopped", "h1", "h2", Online), "guest_not_running"),
        ("incompatible profiles", request("g1", "h1", "h3", Online), "incompatible_profiles"),
        ("running guest offline without a stop", request("g1", "h1", "h2", Offline), "guest_running"),
        ("target lacks capacity", request("g1", "h1", "small", OfflineStop), "insufficient_capacity"),
        (
            "control char in reason",
            Command::RequestMigration {
                guest: n("g1"),
                source: n("h1"),
                target: n("h2"),
                kind: Online,
                reason: Some("\0".into()),
            },
            "invalid_argument",
        ),
    ];
    for (what, cmd, code) in cases {
        assert_eq!(w.reject(cmd).code(), code, "{what}");
    }
}

#[test]
fn refusals_say_how_to_fix_them() {
    let mut w = World::standard();
    w.ok(Command::ModifyGuest {
        name: n("g2"),
        patch: GuestPatch { online_migration: Some(false), ..Default::default() },
        expect_version: None,
    });
    let r = w.reject(request("g2", "h1", "h2", MigrationKind::Online));
    assert!(r.to_string().contains("switchyard guest modify g2 -x online_migration=enabled"), "{r}");
    w.ok(Command::ModifyGuest {
        name: n("g2"),
        patch: GuestPatch { online_migration: Some(true), cluster_node: Some(true), ..Default::default() },
        expect_version: None,
    });
    let r = w.reject(request("g2", "h1", "h2", MigrationKind::Online));
    assert!(r.to_string().contains("--offline"), "{r}");
}

#[test]
fn offline_moves_skip_online_only_checks() {
    let mut w = World::standard();
    w.ok(Command::ModifyGuest {
        name: n("g2"),
        patch: GuestPatch {
            online_migration: Some(false),
            cluster_node: Some(true),
            run_state: Some(RunState::Stopped),
            ..Default::default()
        },
        expect_version: None,
    });
    let id = w.migrate("g2", "h3", MigrationKind::Offline);
    w.advance_to(id, Phase::Completed);
    assert_eq!(w.guest("g2").owner, n("h3"));
}

#[test]
fn an_offline_move_of_a_running_guest_needs_leave_to_stop_it() {
    let mut w = World::standard();
    // g2 runs, and is a cluster node: never moved online, and offline only with a stop.
    w.ok(Command::ModifyGuest {
        name: n("g2"),
        patch: GuestPatch { cluster_node: Some(true), ..Default::default() },
        expect_version: None,
    });
    let r = w.reject(request("g2", "h1", "h2", MigrationKind::Offline));
    assert_eq!(r.code(), "guest_running");
    assert!(r.to_string().contains("switchyard migrate g2 --to h2 --offline --allow-stop"), "{r}");
    let id = w.migrate("g2", "h2", MigrationKind::OfflineStop);
    w.advance_to(id, Phase::Completed);
    let g = w.guest("g2");
    assert_eq!((&g.owner, g.run_state), (&n("h2"), RunState::Running), "it runs again, on the target");
}

#[test]
fn one_migration_in_flight_per_guest_and_guest_is_frozen_meanwhile() {
    let mut w = World::standard();
    let id = w.migrate("g1", "h2", MigrationKind::Online);
    assert_eq!(
        w.reject(request("g1", "h1", "h2", MigrationKind::Offline)),
        Rejection::MigrationInFlight { guest: n("g1"), id }
    );
    let modify = Command::ModifyGuest {
        name: n("g1"),
        patch: GuestPatch { vcpus: Some(1), ..Default::default() },
        expect_version: None,
    };
    assert_eq!(w.reject(modify).code(), "migration_in_flight");
    assert_eq!(w.reject(Command::RemoveGuest { name: n("g1"), expect_version: None }).code(), "migration_in_flight");
    // Another guest may move at the same time.
    w.migrate("g2", "h2", MigrationKind::Online);
}

#[test]
fn in_flight_migration_reserves_target_capacity() {
    let mut w = World::standard();
    w.ok(Command::RegisterHost(host_spec("tight", 4, 8192, "ia64")));
    w.migrate("g1", "tight", MigrationKind::Online);
    // g2 (2 vCPU) would fit on its own, but g1's 4 vCPUs are already promised.
    assert_eq!(w.reject(request("g2", "h1", "tight", MigrationKind::Online)).code(), "insufficient_capacity");
    let create = Command::CreateGuest {
        name: n("g9"),
        spec: guest_spec(1, 512, None),
        owner: n("tight"),
        run_state: RunState::Running,
    };
    assert_eq!(w.reject(create).code(), "insufficient_capacity");
}

#[test]
fn abort_before_owner_switch_rolls_back_at_every_phase() {
    for stop_at in [Phase::Requested, Phase::SwitchingDisabled, Phase::Transferring, Phase::TargetRunning] {
        let mut w = World::standard();
        let id = w.migrate("g1", "h2", MigrationKind::Online);
        w.advance_to(id, stop_at);
        w.ok(Command::AbortMigration { id, reason: Some("change freeze".into()) });
        let m = w.state.migration(id).unwrap();
        assert_eq!(m.phase, Phase::Aborted, "abort at {stop_at}");
        assert_eq!(m.error.as_deref(), Some("change freeze"));
        assert_eq!(w.guest("g1").owner, n("h1"), "abort at {stop_at} leaves the guest on its source");
        assert!(w.package("p1").switching_enabled, "abort at {stop_at} restores switching");
        assert_eq!(w.state.committed_resources(&n("h2")), Resources::default(), "reservation released");
        // A new migration may start.
        w.migrate("g1", "h2", MigrationKind::Online);
    }
}

#[test]
fn fail_rolls_back_like_abort() {
    let mut w = World::standard();
    let id = w.migrate("g1", "h2", MigrationKind::Online);
    w.advance_to(id, Phase::Transferring);
    w.ok(Command::FailMigration { id, error: "source agent silent for 30s".into() });
    let m = w.state.migration(id).unwrap();
    assert_eq!(m.phase, Phase::Failed);
    assert!(w.package("p1").switching_enabled);
    assert_eq!(w.package("p1").switching_changed.migration, Some(id));
}

#[test]
fn no_rollback_after_owner_switch() {
    for phase in [Phase::OwnerSwitched, Phase::SwitchingEnabled] {
        let mut w = World::standard();
        let id = w.migrate("g1", "h2", MigrationKind::Online);
        w.advance_to(id, phase);
        assert_eq!(w.reject(Command::AbortMigration { id, reason: None }), Rejection::PastOwnerSwitch { id, phase });
        assert_eq!(w.reject(Command::FailMigration { id, error: "x".into() }).code(), "migration_past_owner_switch");
        w.advance_to(id, Phase::Completed);
    }
}

#[test]
fn a_migration_stuck_after_its_owner_switch_is_resolved_by_an_operator_with_a_reason() {
    for (phase, outcome) in [
        (Phase::OwnerSwitched, Phase::Completed),
        (Phase::OwnerSwitched, Phase::Failed),
        (Phase::SwitchingEnabled, Phase::Completed),
        (Phase::SwitchingEnabled, Phase::Failed),
    ] {
        let mut w = World::standard();
        let id = w.migrate("g1", "h2", MigrationKind::Online);
        w.advance_to(id, phase);
        let resolve = |outcome: Phase, reason: &str| Command::ResolveMigration { id, outcome, reason: reason.into() };
        assert_eq!(w.reject(resolve(outcome, "  ")).code(), "invalid_argument", "a reason is required");
        assert_eq!(w.reject(resolve(Phase::Aborted, "x")).code(), "invalid_argument");
        let (_, events) = w.ok(resolve(outcome, "the target's agent was rebuilt; the guest runs there"));
        assert!(
            matches!(&events[0].payload, EventPayload::MigrationResolved { id: i, outcome: o, reason, .. }
                if *i == id && *o == outcome && reason.starts_with("the target's agent")),
            "{events:?}"
        );
        let m = w.state.migration(id).unwrap();
        assert_eq!(m.phase, outcome, "{phase} resolved as {outcome}");
        assert_eq!(m.error.is_some(), outcome == Phase::Failed);
        assert_eq!(w.guest("g1").owner, n("h2"), "the owner switch stands");
        assert!(w.package("p1").switching_enabled, "switching as before the migration");
        assert!(w.state.in_flight(&n("g1")).is_none());
        assert_eq!(w.reject(resolve(outcome, "again")).code(), "migration_finished");
    }
    // Before the owner switch it rolls back instead: abort, or the phase timeout.
    let mut w = World::standard();
    let id = w.migrate("g1", "h2", MigrationKind::Online);
    w.advance_to(id, Phase::TargetRunning);
    let r = w.reject(Command::ResolveMigration { id, outcome: Phase::Completed, reason: "x".into() });
    assert!(r.to_string().contains("before the owner switch") && r.to_string().contains("migration abort"), "{r}");
}

#[test]
fn finished_migrations_cannot_move() {
    let mut w = World::standard();
    let id = w.migrate("g2", "h2", MigrationKind::Online);
    w.advance_to(id, Phase::Completed);
    assert_eq!(
        w.reject(Command::AbortMigration { id, reason: None }),
        Rejection::MigrationFinished { id, phase: Phase::Completed }
    );
    let adv = Command::AdvanceMigration { id, from: Phase::Completed, to: Phase::Failed, freeze_time_ms: None };
    assert_eq!(w.reject(adv).code(), "migration_finished");
}

#[test]
fn advance_rejections() {
    let mut w = World::standard();
    let id = w.migrate("g1", "h2", MigrationKind::Online);
    let adv = |from, to, freeze| Command::AdvanceMigration { id, from, to, freeze_time_ms: freeze };
    let cases: Vec<(&str, Command, &str)> = vec![
        (
            "unknown migration",
            Command::AdvanceMigration {
                id: MigrationId(999),
                from: Phase::Requested,
                to: Phase::SwitchingDisabled,
                freeze_time_ms: None,
            },
            "unknown_migration",
        ),
        ("stale from", adv(Phase::Transferring, Phase::TargetRunning, None), "phase_conflict"),
        ("skips a phase", adv(Phase::Requested, Phase::Transferring, None), "invalid_transition"),
        ("backwards", adv(Phase::Requested, Phase::Requested, None), "invalid_transition"),
        ("to a failure phase", adv(Phase::Requested, Phase::Failed, None), "invalid_transition"),
        (
            "freeze time on the wrong phase",
            adv(Phase::Requested, Phase::SwitchingDisabled, Some(10)),
            "invalid_argument",
        ),
        ("unknown abort", Command::AbortMigration { id: MigrationId(999), reason: None }, "unknown_migration"),
        ("oversize error", Command::FailMigration { id, error: "e".repeat(5000) }, "invalid_argument"),
    ];
    for (what, cmd, code) in cases {
        assert_eq!(w.reject(cmd).code(), code, "{what}");
    }
    w.advance_to(id, Phase::Transferring);
    let absurd = Command::AdvanceMigration {
        id,
        from: Phase::Transferring,
        to: Phase::TargetRunning,
        freeze_time_ms: Some(u64::MAX),
    };
    assert_eq!(w.reject(absurd).code(), "invalid_argument");
}

#[test]
fn a_replayed_phase_step_is_refused_not_reapplied() {
    // The driver of a new leader may propose a step the old leader already committed.
    let mut w = World::standard();
    let id = w.migrate("g1", "h2", MigrationKind::Online);
    w.advance(id);
    let again =
        Command::AdvanceMigration { id, from: Phase::Requested, to: Phase::SwitchingDisabled, freeze_time_ms: None };
    assert_eq!(
        w.reject(again),
        Rejection::PhaseConflict { id, expected: Phase::Requested, actual: Phase::SwitchingDisabled }
    );
}

#[test]
fn a_record_rewound_to_a_revision_equals_the_record_then() {
    let mut w = World::standard();
    let id = w.migrate("g1", "h2", MigrationKind::Online);
    let mut snapshots = vec![(w.state.revision(), w.state.migration(id).unwrap().clone())];
    w.advance_to(id, Phase::TargetRunning);
    snapshots.push((w.state.revision(), w.state.migration(id).unwrap().clone()));
    w.ok(Command::AbortMigration { id, reason: Some("stop".into()) });
    let last = w.state.migration(id).unwrap().clone();
    for (rev, then) in snapshots {
        assert_eq!(last.at_revision(rev).as_ref(), Some(&then), "at revision {rev}");
    }
    assert_eq!(last.at_revision(id.0 - 1), None, "not yet requested");
    assert_eq!(last.at_revision(w.state.revision()), Some(last.clone()));
}

#[test]
fn transfer_figures_are_recorded_only_while_transferring_and_change_nothing() {
    let mut w = World::standard();
    let id = w.migrate("g1", "h2", MigrationKind::Online);
    let stats = TransferStats { total_time_ms: 850, transferred_bytes: 40 << 20 };
    let record = |stats| Command::RecordTransferStats { id, stats };
    assert_eq!(w.reject(record(stats)).code(), "invalid_argument", "not before the transfer");
    w.advance_to(id, Phase::Transferring);
    let before = w.state.clone();
    let (_, events) = w.ok(record(stats));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].payload, EventPayload::MigrationTransferStats { id, guest: n("g1"), stats });
    assert_eq!((events[0].payload.migration(), events[0].payload.kind()), (Some(id), EventKind::Migration));
    assert_eq!(w.state.migration(id), before.migration(id), "the migration is as it was");
    assert_eq!(w.state.config_digest(), before.config_digest());
    let absurd = TransferStats { total_time_ms: u64::MAX, transferred_bytes: 1 };
    assert_eq!(w.reject(record(absurd)).code(), "invalid_argument");
    assert_eq!(w.reject(Command::RecordTransferStats { id: MigrationId(999_999), stats }).code(), "unknown_migration");
    w.advance(id);
    assert_eq!(w.reject(record(stats)).code(), "invalid_argument", "not after it");
}

#[test]
fn only_the_target_of_a_failed_or_aborted_online_migration_says_whether_the_guest_runs_there() {
    let mut w = World::standard();
    let id = w.migrate("g1", "h2", MigrationKind::Online);
    w.advance_to(id, Phase::Transferring);
    let check = |host: &str, token: FencingToken, runs_there: bool| Command::CheckMigrationTarget {
        id,
        host: n(host),
        token,
        runs_there,
    };
    let token = w.state.migration(id).unwrap().current().token();
    assert_eq!(w.reject(check("h2", token, false)).code(), "invalid_argument", "not while it is transferring");
    w.ok(Command::FailMigration { id, error: "timed out".into() });
    let token = w.state.migration(id).unwrap().current().token();
    assert_eq!(w.reject(check("h1", token, false)).code(), "invalid_argument", "the source has no say");
    let stale = FencingToken { term: token.term, revision: token.revision - 1 };
    assert_eq!(w.reject(check("h2", stale, false)).code(), "invalid_argument", "the failure's token only");
    assert_eq!(
        w.reject(Command::CheckMigrationTarget { id: MigrationId(999_999), host: n("h2"), token, runs_there: false })
            .code(),
        "unknown_migration"
    );
    let before = w.state.clone();
    let (_, events) = w.ok(check("h2", token, false));
    assert_eq!(
        events[0].payload,
        EventPayload::MigrationTargetChecked { id, guest: n("g1"), host: n("h2"), runs_there: false }
    );
    assert_eq!((events[0].payload.migration(), events[0].payload.kind()), (Some(id), EventKind::Migration));
    assert_eq!(events[0].payload.hosts(), vec![&n("h2")]);
    assert_eq!(w.state.migration(id), before.migration(id), "the migration is as it was");
    assert_eq!(w.state.config_digest(), before.config_digest());

    // An offline move leaves no paused copy behind: nothing to check.
    let mut w = World::standard();
    let id = w.migrate("g1", "h2", MigrationKind::OfflineStop);
    w.ok(Command::AbortMigration { id, reason: None });
    let token = w.state.migration(id).unwrap().current().token();
    assert_eq!(
        w.reject(Command::CheckMigrationTarget { id, host: n("h2"), token, runs_there: false }).code(),
        "invalid_argument"
    );
}
