//! Host registration, maintenance and reachability.
mod common;
use common::*;
use switchyard_protocol::*;

#[test]
fn register_host_records_it_active() {
    let mut w = World::empty();
    let (applied, events) = w.ok(Command::RegisterHost(host_spec("h1", 8, 1024, "ia64")));
    assert_eq!(applied.revisions, RevisionRange { first: 1, last: 1 });
    assert_eq!(events.len(), 1);
    let h = w.state.host(&n("h1")).unwrap();
    assert_eq!(h.state(), HostState::Active);
    assert_eq!(h.version, 1);
}

#[test]
fn register_host_rejections() {
    let mut w = World::standard();
    let mut bad_addr = host_spec("h9", 8, 1024, "ia64");
    bad_addr.address = "a\nb".into();
    let mut long_addr = host_spec("h9", 8, 1024, "ia64");
    long_addr.address = "a".repeat(300);
    let mut empty_family = host_spec("h9", 8, 1024, "ia64");
    empty_family.profile.hardware_family.clear();
    let cases: Vec<(&str, HostSpec, &str)> = vec![
        ("duplicate", host_spec("h1", 8, 1024, "ia64"), "host_exists"),
        ("zero vcpus", host_spec("h9", 0, 1024, "ia64"), "invalid_argument"),
        ("zero memory", host_spec("h9", 8, 0, "ia64"), "invalid_argument"),
        ("absurd vcpus", host_spec("h9", u32::MAX, 1024, "ia64"), "invalid_argument"),
        ("control char in address", bad_addr, "invalid_argument"),
        ("oversize address", long_addr, "invalid_argument"),
        ("empty profile", empty_family, "invalid_argument"),
        ("space in profile", host_spec("h9", 8, 1024, "ia 64"), "invalid_argument"),
    ];
    for (what, spec, code) in cases {
        assert_eq!(w.reject(Command::RegisterHost(spec)).code(), code, "{what}");
    }
}

#[test]
fn maintenance_and_reachability_change_state() {
    let mut w = World::standard();
    w.ok(Command::SetHostMaintenance { host: n("h2"), maintenance: true });
    assert_eq!(w.state.host(&n("h2")).unwrap().state(), HostState::Maintenance);
    w.ok(Command::SetHostReachable { host: n("h2"), reachable: false });
    assert_eq!(w.state.host(&n("h2")).unwrap().state(), HostState::Unreachable);
    w.ok(Command::SetHostReachable { host: n("h2"), reachable: true });
    assert_eq!(w.state.host(&n("h2")).unwrap().state(), HostState::Maintenance);
    w.ok(Command::SetHostMaintenance { host: n("h2"), maintenance: false });
    assert_eq!(w.state.host(&n("h2")).unwrap().state(), HostState::Active);
}

#[test]
fn unknown_host_is_refused_everywhere() {
    let mut w = World::standard();
    for cmd in [
        Command::SetHostMaintenance { host: n("nope"), maintenance: true },
        Command::SetHostReachable { host: n("nope"), reachable: false },
        Command::CreateGuest {
            name: n("g9"),
            spec: guest_spec(1, 512, None),
            owner: n("nope"),
            run_state: RunState::Running,
        },
    ] {
        assert_eq!(w.reject(cmd).code(), "unknown_host");
    }
}

#[test]
fn hostile_actor_is_refused() {
    let mut w = World::standard();
    let mut p = w.proposal(Command::SetHostMaintenance { host: n("h1"), maintenance: true });
    p.actor = "x".repeat(500);
    let before = switchyard_protocol::codec::encode(&w.state);
    assert_eq!(apply(&mut w.state, &p, 1).unwrap_err().code(), "invalid_argument");
    assert_eq!(switchyard_protocol::codec::encode(&w.state), before);
}

#[test]
fn a_repair_is_recorded_in_the_guests_history_and_changes_nothing() {
    let mut w = World::standard();
    let before = w.state.clone();
    let repair = |guest: &str, host: &str, action: &str, reason: &str| Command::RecordRepair {
        host: n(host),
        guest: n(guest),
        action: action.into(),
        reason: reason.into(),
    };
    let (_, events) = w.ok(repair("g1", "h1", "start", "it should run here but is shut off"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].payload.guest(), Some(&n("g1")));
    assert_eq!(events[0].payload.hosts(), vec![&n("h1")]);
    assert_eq!(w.state.guest(&n("g1")), before.guest(&n("g1")), "the guest is as it was");
    assert_eq!(w.state.config_digest(), before.config_digest());
    let cases = [
        ("unknown guest", repair("nope", "h1", "start", "x"), "unknown_guest"),
        ("unknown host", repair("g1", "h9", "start", "x"), "unknown_host"),
        ("empty action", repair("g1", "h1", "", "x"), "invalid_argument"),
        ("action with a space", repair("g1", "h1", "start now", "x"), "invalid_argument"),
        ("oversize reason", repair("g1", "h1", "start", &"r".repeat(5000)), "invalid_argument"),
    ];
    for (what, cmd, code) in cases {
        assert_eq!(w.reject(cmd).code(), code, "{what}");
    }
}

fn modify(host: &str, patch: HostPatch) -> Command {
    Command::ModifyHost { host: n(host), patch, expect_version: None }
}

#[test]
fn a_host_is_modified_within_what_it_holds() {
    let mut w = World::standard();
    // h1 holds g1 (4 vCPU, 8 GiB) and g2 (2 vCPU, 4 GiB).
    let patch = HostPatch { address: Some("h1.example:7100".into()), vcpus: Some(6), ..Default::default() };
    let (applied, events) = w.ok(modify("h1", patch));
    let h = w.state.host(&n("h1")).unwrap();
    assert_eq!((h.spec.capacity.vcpus, h.spec.capacity.memory_mib), (6, 65536));
    assert_eq!(h.spec.address, "h1.example:7100");
    assert_eq!(h.version, applied.revisions.first);
    assert!(matches!(&events[0].payload, EventPayload::HostModified { host } if host == h));

    let version = h.version;
    let refusals: Vec<(&str, Command, &str, &str)> = vec![
        ("nothing to change", modify("h1", HostPatch::default()), "invalid_argument", "nothing to change"),
        ("unknown host", modify("nope", HostPatch { vcpus: Some(4), ..Default::default() }), "unknown_host", "nope"),
        (
            "stale version",
            Command::ModifyHost {
                host: n("h1"),
                patch: HostPatch { vcpus: Some(8), ..Default::default() },
                expect_version: Some(version - 1),
            },
            "version_conflict",
            "re-read it",
        ),
        (
            "below its guests",
            modify("h1", HostPatch { vcpus: Some(5), ..Default::default() }),
            "capacity_below_committed",
            "move guests off first",
        ),
        (
            "zero memory",
            modify("h1", HostPatch { memory_mib: Some(0), ..Default::default() }),
            "invalid_argument",
            "memory_mib",
        ),
        (
            "hostile address",
            modify("h1", HostPatch { address: Some("a\nb".into()), ..Default::default() }),
            "invalid_argument",
            "address",
        ),
    ];
    for (what, cmd, code, says) in refusals {
        let before = w.state.clone();
        let r = w.reject(cmd);
        assert_eq!(r.code(), code, "{what}: {r}");
        assert!(r.to_string().contains(says), "{what}: {r}");
        assert_eq!(w.state, before, "{what} changed the state");
    }
    // At the expected version it goes through.
    w.ok(Command::ModifyHost {
        host: n("h1"),
        patch: HostPatch { vcpus: Some(8), ..Default::default() },
        expect_version: Some(version),
    });

    // A migration heading to h2 reserves its room there, and pins both ends' profiles.
    w.migrate("g2", "h2", MigrationKind::Online);
    let r = w.reject(modify("h2", HostPatch { vcpus: Some(1), ..Default::default() }));
    assert_eq!(r.code(), "capacity_below_committed", "{r}");
    let r = w.reject(modify("h2", HostPatch { hardware_family: Some("x86_64".into()), ..Default::default() }));
    assert_eq!(r.code(), "host_in_use", "{r}");
    assert!(r.to_string().contains("migration abort"), "{r}");
    w.ok(modify("h2", HostPatch { memory_mib: Some(32768), ..Default::default() }));
    // A host with no migration in flight takes its new profile after a hypervisor upgrade.
    w.ok(modify("h3", HostPatch { hypervisor_version: Some("hpvm-6.2".into()), ..Default::default() }));
    assert_eq!(w.state.host(&n("h3")).unwrap().spec.profile.hypervisor_version, "hpvm-6.2");
}

#[test]
fn a_host_is_removed_only_once_nothing_needs_it() {
    let mut w = World::standard();
    let remove = |h: &str| Command::RemoveHost { host: n(h), expect_version: None };
    let r = w.reject(remove("h1"));
    assert_eq!(r.code(), "host_in_use");
    assert!(r.to_string().contains("still owns guests g1, g2") && r.to_string().contains("migration request"), "{r}");

    // Named by a package's node list, or its per-node switch.
    w.ok(Command::ModifyPackage {
        package: n("p1"),
        nodes: Some(vec![n("h1"), n("h2")]),
        failover_policy: None,
        failback_policy: None,
    });
    let r = w.reject(remove("h2"));
    assert_eq!(r.code(), "host_in_use");
    assert!(r.to_string().contains("named by package p1") && r.to_string().contains("package modify p1"), "{r}");
    w.ok(Command::ModifyPackage {
        package: n("p1"),
        nodes: Some(vec![]),
        failover_policy: None,
        failback_policy: None,
    });
    w.ok(Command::SetPackageSwitching { package: n("p1"), node: Some(n("h2")), enabled: false, reason: None });
    assert_eq!(w.reject(remove("h2")).code(), "host_in_use");
    w.ok(Command::SetPackageSwitching { package: n("p1"), node: Some(n("h2")), enabled: true, reason: None });

    // An end of a migration in flight.
    let id = w.migrate("g2", "h2", MigrationKind::Online);
    let r = w.reject(remove("h2"));
    assert!(r.to_string().contains(&format!("migration abort {id}")), "{r}");
    w.ok(Command::AbortMigration { id, reason: None });

    // A stale version, then the removal; the host is gone from every view.
    let version = w.state.host(&n("h2")).unwrap().version;
    assert_eq!(
        w.reject(Command::RemoveHost { host: n("h2"), expect_version: Some(version + 1) }).code(),
        "version_conflict"
    );
    w.ok(Command::AdmitHost { host: n("h2") });
    assert!(w.state.member(&n("h2")).is_some());
    let (_, events) = w.ok(Command::RemoveHost { host: n("h2"), expect_version: None });
    assert!(matches!(&events[0].payload, EventPayload::HostRemoved { host } if host.as_str() == "h2"));
    assert!(w.state.host(&n("h2")).is_none() && w.state.member(&n("h2")).is_none());
    assert!(w.state.check_invariants().is_empty());
    assert_eq!(w.reject(remove("h2")).code(), "unknown_host");
    // Its name can be registered again (a rebuilt machine).
    w.ok(Command::RegisterHost(host_spec("h2", 8, 8192, "ia64")));
}

#[test]
fn maintenance_is_refused_while_the_host_still_owns_guests() {
    let mut w = World::standard();
    let on = |h: &str| Command::SetHostMaintenance { host: n(h), maintenance: true };
    let r = w.reject(on("h1"));
    assert_eq!(r.code(), "host_in_use");
    assert!(r.to_string().contains("still owns guests g1, g2"), "{r}");
    // An empty host goes into maintenance (twice is harmless) and out.
    w.ok(on("h2"));
    w.ok(on("h2"));
    w.ok(Command::SetHostMaintenance { host: n("h2"), maintenance: false });
    // A failed host may be put in maintenance to be repaired, guests or not.
    w.ok(Command::AdmitHost { host: n("h1") });
    w.ok(Command::DeclareHostFailed { host: n("h1"), evidence: "lease expired".into() });
    w.ok(on("h1"));
}

#[test]
fn a_drain_starts_keeps_guests_off_the_host_and_completes_into_maintenance() {
    let mut w = World::standard();
    let start = |h: &str, p: u32| Command::StartDrain { host: n(h), allow_offline: false, max_parallel: p };
    let end = |h: &str, outcome: DrainOutcome| Command::EndDrain {
        host: n(h),
        outcome,
        reason: "test".into(),
        blocked: vec![],
    };
    assert_eq!(w.reject(start("h1", 0)).code(), "invalid_argument");
    assert_eq!(w.reject(start("h1", 17)).code(), "invalid_argument");
    assert_eq!(w.reject(start("nope", 2)).code(), "unknown_host");
    let (_, events) = w.ok(start("h1", 2));
    assert!(
        matches!(&events[0].payload, EventPayload::DrainStarted { drain } if drain.max_parallel == 2 && drain.actor == "tester")
    );
    let h1 = w.state.host(&n("h1")).unwrap();
    assert_eq!(w.state.host_state(h1), HostState::Draining);
    let r = w.reject(start("h1", 2));
    assert!(r.code() == "drain_refused" && r.to_string().contains("under way"), "{r}");
    // No new guest, no migration target, no failover target, no removal while it drains.
    let create = Command::CreateGuest {
        name: n("g9"),
        spec: guest_spec(1, 512, None),
        owner: n("h1"),
        run_state: RunState::Running,
    };
    assert_eq!(w.reject(create).code(), "host_not_active");
    w.ok(start("h2", 1));
    let r = w.reject(Command::RequestMigration {
        guest: n("g1"),
        source: n("h1"),
        target: n("h2"),
        kind: MigrationKind::Online,
        reason: None,
    });
    assert_eq!(r.code(), "host_not_active", "{r}");
    w.ok(end("h2", DrainOutcome::Aborted));
    assert_eq!(w.reject(end("h2", DrainOutcome::Aborted)).code(), "drain_refused");
    let r = w.reject(Command::RemoveHost { host: n("h1"), expect_version: None });
    assert!(r.to_string().contains("host undrain h1"), "{r}");
    // It cannot complete while it owns guests.
    let r = w.reject(end("h1", DrainOutcome::Completed));
    assert!(r.code() == "host_in_use" && r.to_string().contains("still owns guests g1, g2"), "{r}");
    // Its guests move away (a migration from a draining host is allowed)...
    for g in ["g1", "g2"] {
        let id = w.migrate(g, "h2", MigrationKind::Online);
        let r = w.reject(end("h1", DrainOutcome::Completed));
        assert_eq!(r.code(), "host_in_use", "{r}");
        w.advance_to(id, Phase::Completed);
    }
    // ... and the drain completes with the host in maintenance, in one commit.
    let (applied, events) = w.ok(end("h1", DrainOutcome::Completed));
    assert_eq!(applied.revisions.last - applied.revisions.first, 1);
    assert!(matches!(&events[0].payload, EventPayload::DrainEnded { outcome: DrainOutcome::Completed, .. }));
    assert!(matches!(&events[1].payload, EventPayload::HostMaintenanceChanged { maintenance: true, .. }));
    let h1 = w.state.host(&n("h1")).unwrap();
    assert_eq!(w.state.host_state(h1), HostState::Maintenance);
    assert!(w.state.drain(&n("h1")).is_none());
    assert!(w.state.check_invariants().is_empty());
}

#[test]
fn a_drain_is_refused_for_a_failed_or_unreachable_host_and_a_stopped_one_names_what_stayed() {
    let mut w = World::standard();
    w.ok(Command::AdmitHost { host: n("h1") });
    w.ok(Command::DeclareHostFailed { host: n("h1"), evidence: "lease expired".into() });
    let r = w.reject(Command::StartDrain { host: n("h1"), allow_offline: false, max_parallel: 2 });
    assert!(r.code() == "drain_refused" && r.to_string().contains("failed"), "{r}");
    w.ok(Command::SetHostReachable { host: n("h3"), reachable: false });
    let r = w.reject(Command::StartDrain { host: n("h3"), allow_offline: false, max_parallel: 2 });
    assert!(r.to_string().contains("stopped reporting"), "{r}");
    w.ok(Command::StartDrain { host: n("h2"), allow_offline: false, max_parallel: 2 });
    let blocked = vec![BlockedGuest { guest: n("g2"), why: "online_migration is disabled".into() }];
    let (_, events) = w.ok(Command::EndDrain {
        host: n("h2"),
        outcome: DrainOutcome::Stopped,
        reason: "1 guest cannot move online".into(),
        blocked,
    });
    assert!(matches!(&events[0].payload, EventPayload::DrainEnded { blocked, .. } if blocked.len() == 1));
    assert_eq!(w.state.host_state(w.state.host(&n("h2")).unwrap()), HostState::Active);
}
