//! Guest create / modify / remove: validation, capacity, optimistic concurrency, idempotency.
mod common;
use common::*;
use switchyard_protocol::*;

fn create(name: &str, spec: GuestSpec, owner: &str) -> Command {
    Command::CreateGuest { name: n(name), spec, owner: n(owner), run_state: RunState::Running }
}

#[test]
fn create_guest_records_version_and_package() {
    let w = World::standard();
    let g = w.guest("g1");
    assert_eq!(g.owner, n("h1"));
    assert_eq!(g.version, 5);
    let p = w.package("p1");
    assert!(p.switching_enabled);
    assert_eq!(p.guest, n("g1"));
}

#[test]
fn create_guest_rejections() {
    let mut w = World::standard();
    w.ok(Command::SetHostMaintenance { host: n("h2"), maintenance: true });
    let mut many_disks = guest_spec(1, 512, None);
    many_disks.disks = vec!["d".into(); 65];
    let mut bad_disk = guest_spec(1, 512, None);
    bad_disk.disks = vec!["has space".into()];
    let mut empty_net = guest_spec(1, 512, None);
    empty_net.networks = vec![String::new()];
    let cases: Vec<(&str, Command, &str)> = vec![
        ("duplicate name", create("g1", guest_spec(1, 512, None), "h1"), "guest_exists"),
        ("unknown owner", create("g9", guest_spec(1, 512, None), "h9"), "unknown_host"),
        ("owner in maintenance", create("g9", guest_spec(1, 512, None), "h2"), "host_not_active"),
        ("package taken", create("g9", guest_spec(1, 512, Some("p1")), "h1"), "package_exists"),
        ("zero vcpus", create("g9", guest_spec(0, 512, None), "h1"), "invalid_argument"),
        ("zero memory", create("g9", guest_spec(1, 0, None), "h1"), "invalid_argument"),
        ("too many vcpus", create("g9", guest_spec(5000, 512, None), "h1"), "invalid_argument"),
        ("too many disks", create("g9", many_disks, "h1"), "invalid_argument"),
        ("space in disk", create("g9", bad_disk, "h1"), "invalid_argument"),
        ("empty network", create("g9", empty_net, "h1"), "invalid_argument"),
        ("no room on owner", create("g9", guest_spec(3, 512, None), "small"), "insufficient_capacity"),
    ];
    for (what, cmd, code) in cases {
        assert_eq!(w.reject(cmd).code(), code, "{what}");
    }
}

#[test]
fn capacity_counts_every_owned_guest() {
    let mut w = World::standard();
    w.ok(create("a", guest_spec(1, 2048, None), "small"));
    w.ok(create("b", guest_spec(1, 2048, None), "small"));
    let r = w.reject(create("c", guest_spec(1, 1, None), "small"));
    assert_eq!(
        r,
        Rejection::InsufficientCapacity {
            host: n("small"),
            need: Resources { vcpus: 1, memory_mib: 1 },
            free: Resources { vcpus: 0, memory_mib: 0 }
        }
    );
    // Freeing room makes it fit.
    w.ok(Command::RemoveGuest { name: n("b"), expect_version: None });
    w.ok(create("c", guest_spec(1, 1, None), "small"));
}

#[test]
fn modify_applies_patch_and_bumps_version() {
    let mut w = World::standard();
    let v = w.guest("g1").version;
    let (applied, _) = w.ok(Command::ModifyGuest {
        name: n("g1"),
        patch: GuestPatch { online_migration: Some(false), vcpus: Some(8), ..Default::default() },
        expect_version: Some(v),
    });
    let g = w.guest("g1");
    assert!(!g.spec.online_migration);
    assert_eq!(g.spec.vcpus, 8);
    assert_eq!(g.version, applied.revisions.first);
    assert!(w.package("p1").switching_enabled, "unchanged package keeps its state");
}

#[test]
fn modify_package_replaces_it() {
    let mut w = World::standard();
    w.ok(Command::SetPackageSwitching { package: n("p1"), node: None, enabled: false, reason: None });
    w.ok(Command::ModifyGuest {
        name: n("g1"),
        patch: GuestPatch { package: Some(Some(n("p1b"))), ..Default::default() },
        expect_version: None,
    });
    assert!(w.state.package(&n("p1")).is_none());
    assert!(w.package("p1b").switching_enabled);
    w.ok(Command::ModifyGuest {
        name: n("g1"),
        patch: GuestPatch { package: Some(None), ..Default::default() },
        expect_version: None,
    });
    assert!(w.state.package(&n("p1b")).is_none());
}

#[test]
fn modify_rejections() {
    let mut w = World::standard();
    let v = w.guest("g1").version;
    let patch = |p: GuestPatch| Command::ModifyGuest { name: n("g1"), patch: p, expect_version: None };
    let cases: Vec<(&str, Command, &str)> = vec![
        (
            "unknown guest",
            Command::ModifyGuest {
                name: n("zz"),
                patch: GuestPatch { vcpus: Some(1), ..Default::default() },
                expect_version: None,
            },
            "unknown_guest",
        ),
        (
            "stale version",
            Command::ModifyGuest {
                name: n("g1"),
                patch: GuestPatch { vcpus: Some(1), ..Default::default() },
                expect_version: Some(v - 1),
            },
            "version_conflict",
        ),
        ("empty patch", patch(GuestPatch::default()), "invalid_argument"),
        ("zero vcpus", patch(GuestPatch { vcpus: Some(0), ..Default::default() }), "invalid_argument"),
        ("grows past host", patch(GuestPatch { vcpus: Some(15), ..Default::default() }), "insufficient_capacity"),
        (
            "package of another guest",
            {
                w.ok(Command::CreateGuest {
                    name: n("g3"),
                    spec: guest_spec(1, 512, Some("p3")),
                    owner: n("h2"),
                    run_state: RunState::Running,
                });
                patch(GuestPatch { package: Some(Some(n("p3"))), ..Default::default() })
            },
            "package_exists",
        ),
    ];
    for (what, cmd, code) in cases {
        assert_eq!(w.reject(cmd).code(), code, "{what}");
    }
}

#[test]
fn stale_version_is_refused_with_both_versions() {
    let mut w = World::standard();
    let v = w.guest("g1").version;
    w.ok(Command::ModifyGuest {
        name: n("g1"),
        patch: GuestPatch { memory_mib: Some(4096), ..Default::default() },
        expect_version: Some(v),
    });
    let r = w.reject(Command::ModifyGuest {
        name: n("g1"),
        patch: GuestPatch { memory_mib: Some(2048), ..Default::default() },
        expect_version: Some(v),
    });
    assert_eq!(r, Rejection::VersionConflict { guest: n("g1"), expected: v, actual: w.guest("g1").version });
    let r = w.reject(Command::RemoveGuest { name: n("g1"), expect_version: Some(v) });
    assert_eq!(r.code(), "version_conflict");
}

#[test]
fn remove_guest_drops_its_package() {
    let mut w = World::standard();
    w.ok(Command::RemoveGuest { name: n("g1"), expect_version: None });
    assert!(w.state.guest(&n("g1")).is_none());
    assert!(w.state.package(&n("p1")).is_none());
    assert_eq!(w.reject(Command::RemoveGuest { name: n("g1"), expect_version: None }).code(), "unknown_guest");
}

#[test]
fn retried_request_is_applied_once() {
    let mut w = World::standard();
    let p = w.proposal(Command::ModifyGuest {
        name: n("g1"),
        patch: GuestPatch { vcpus: Some(6), ..Default::default() },
        expect_version: None,
    });
    let (first, events) = apply(&mut w.state, &p, 1).unwrap();
    assert!(!first.duplicate);
    assert_eq!(events.len(), 1);
    let after_first = switchyard_protocol::codec::encode(&w.state);
    let (again, events) = apply(&mut w.state, &p, 1).unwrap();
    assert!(again.duplicate);
    assert_eq!(again.revisions, first.revisions);
    assert!(events.is_empty());
    assert_eq!(switchyard_protocol::codec::encode(&w.state), after_first, "a retry changed the state");
}

#[test]
fn rejected_request_can_be_retried_after_the_cause_is_fixed() {
    let mut w = World::standard();
    let p = w.proposal(Command::CreateGuest {
        name: n("late"),
        spec: guest_spec(1, 512, None),
        owner: n("h9"),
        run_state: RunState::Running,
    });
    assert_eq!(apply(&mut w.state, &p, 1).unwrap_err().code(), "unknown_host");
    w.ok(Command::RegisterHost(host_spec("h9", 4, 4096, "ia64")));
    assert!(!apply(&mut w.state, &p, 1).unwrap().0.duplicate);
}

#[test]
fn a_request_id_is_scoped_to_its_actor() {
    let mut w = World::standard();
    let change = |vcpus| Command::ModifyGuest {
        name: n("g1"),
        patch: GuestPatch { vcpus: Some(vcpus), ..Default::default() },
        expect_version: None,
    };
    let mut alice = w.proposal(change(6));
    alice.actor = "alice".into();
    let mut bob = w.proposal(change(7));
    bob.actor = "bob".into();
    bob.request_id = alice.request_id;
    // Two clients that chose the same id: both writes apply.
    assert!(!apply(&mut w.state, &alice, 1).unwrap().0.duplicate);
    assert!(!apply(&mut w.state, &bob, 1).unwrap().0.duplicate);
    assert_eq!(w.state.guest(&n("g1")).unwrap().spec.vcpus, 7);
    // Each one's retry is its own duplicate.
    assert!(apply(&mut w.state, &alice, 1).unwrap().0.duplicate);
    assert!(apply(&mut w.state, &bob, 1).unwrap().0.duplicate);
}
