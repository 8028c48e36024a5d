//! Package switching, global and per node.
mod common;
use common::*;
use switchyard_protocol::*;

#[test]
fn global_switching_records_who_and_why() {
    let mut w = World::standard();
    let (applied, _) = w.ok(Command::SetPackageSwitching {
        package: n("p1"),
        node: None,
        enabled: false,
        reason: Some("firmware update".into()),
    });
    let p = w.package("p1");
    assert!(!p.switching_enabled);
    assert_eq!(p.switching_changed.revision, applied.revisions.first);
    assert_eq!(p.switching_changed.actor, "tester");
    assert_eq!(p.switching_changed.reason.as_deref(), Some("firmware update"));
    assert_eq!(p.switching_changed.migration, None);
}

#[test]
fn per_node_switching() {
    let mut w = World::standard();
    w.ok(Command::SetPackageSwitching { package: n("p1"), node: Some(n("h2")), enabled: false, reason: None });
    assert!(w.package("p1").disabled_nodes.contains(&n("h2")));
    assert!(w.package("p1").switching_enabled, "global switch untouched");
    w.ok(Command::SetPackageSwitching { package: n("p1"), node: Some(n("h2")), enabled: true, reason: None });
    assert!(w.package("p1").disabled_nodes.is_empty());
}

#[test]
fn switching_rejections() {
    let mut w = World::standard();
    let cases: Vec<(&str, Command, &str)> = vec![
        (
            "unknown package",
            Command::SetPackageSwitching { package: n("nope"), node: None, enabled: false, reason: None },
            "unknown_package",
        ),
        (
            "unknown node",
            Command::SetPackageSwitching { package: n("p1"), node: Some(n("h9")), enabled: false, reason: None },
            "unknown_host",
        ),
        (
            "reason with control chars",
            Command::SetPackageSwitching {
                package: n("p1"),
                node: None,
                enabled: false,
                reason: Some("a\u{7}".into()),
            },
            "invalid_argument",
        ),
        (
            "oversize reason",
            Command::SetPackageSwitching {
                package: n("p1"),
                node: None,
                enabled: false,
                reason: Some("r".repeat(2000)),
            },
            "invalid_argument",
        ),
    ];
    for (what, cmd, code) in cases {
        assert_eq!(w.reject(cmd).code(), code, "{what}");
    }
}

#[test]
fn operator_cannot_touch_switching_during_a_migration() {
    let mut w = World::standard();
    let id = w.migrate("g1", "h2", MigrationKind::Online);
    let r = w.reject(Command::SetPackageSwitching { package: n("p1"), node: None, enabled: true, reason: None });
    assert_eq!(r, Rejection::MigrationInFlight { guest: n("g1"), id });
}
