//! Host labels and guests' anti-affinity: the rule binds an operator's creation, migration and
//! group change (refused, with what to do, changing nothing), and every move the cluster
//! chooses (drains, rebalance plans, failover), counting guests where they run, where a
//! migration in flight takes them and where moves planned in the same round will.
mod common;
use common::*;
use switchyard_protocol::placement::*;
use switchyard_protocol::*;

fn labelled(name: &str, labels: &[(&str, &str)]) -> HostSpec {
    let mut h = host_spec(name, 16, 65_536, "ia64");
    h.labels = labels.iter().map(|(k, v)| (n(k), n(v))).collect();
    h
}

fn grouped(vcpus: u32, group: &str, spread_by: Option<&str>) -> GuestSpec {
    GuestSpec {
        anti_affinity: Some(AntiAffinity { group: n(group), spread_by: spread_by.map(n) }),
        ..guest_spec(vcpus, 2048, None)
    }
}

fn create(name: &str, owner: &str, spec: GuestSpec) -> Command {
    Command::CreateGuest { name: n(name), spec, owner: n(owner), run_state: RunState::Running }
}

/// Racks: h1, h2 in r1; h3, h4 in r2; h5 has no rack label.
fn racks() -> World {
    let mut w = World::empty();
    for (h, rack) in [("h1", Some("r1")), ("h2", Some("r1")), ("h3", Some("r2")), ("h4", Some("r2")), ("h5", None)] {
        let labels: Vec<(&str, &str)> = rack.map(|r| ("rack", r)).into_iter().collect();
        w.ok(Command::RegisterHost(labelled(h, &labels)));
    }
    w
}

fn refused(r: Rejection, text: &str) {
    assert_eq!(r.code(), "anti_affinity", "{r}");
    assert!(r.to_string().contains(text), "{r}");
}

#[test]
fn operators_cannot_place_two_guests_of_a_group_together() {
    let mut w = racks();
    w.ok(create("web1", "h1", grouped(1, "web", None)));
    // Same host: refused; another host of the same rack: fine for a group spread by host.
    refused(w.reject(create("web2", "h1", grouped(1, "web", None))), "web1 of its anti-affinity group web runs there");
    w.ok(create("web2", "h2", grouped(1, "web", None)));
    // Another group, or no group, shares hosts freely.
    w.ok(create("db1", "h1", grouped(1, "db", None)));
    w.ok(create("plain", "h1", guest_spec(1, 1024, None)));
    // A migration onto a group member's host is refused; elsewhere it goes.
    let r = w.reject(Command::RequestMigration {
        guest: n("web1"),
        source: n("h1"),
        target: n("h2"),
        kind: MigrationKind::Online,
        reason: None,
    });
    refused(r, "pick another host");
    w.migrate("web1", "h3", MigrationKind::Online);
    // While web1 moves to h3, h3 counts as taken for its group.
    refused(
        w.reject(create("web3", "h3", grouped(1, "web", None))),
        "web1 of its anti-affinity group web is moving there",
    );
    // Joining a group is refused where a member already is; leaving one always works.
    refused(
        w.reject(Command::ModifyGuest {
            name: n("plain"),
            patch: GuestPatch {
                anti_affinity: Some(Some(AntiAffinity { group: n("db"), spread_by: None })),
                ..Default::default()
            },
            expect_version: None,
        }),
        "db1",
    );
    w.ok(Command::ModifyGuest {
        name: n("db1"),
        patch: GuestPatch { anti_affinity: Some(None), ..Default::default() },
        expect_version: None,
    });
    w.ok(Command::ModifyGuest {
        name: n("plain"),
        patch: GuestPatch {
            anti_affinity: Some(Some(AntiAffinity { group: n("db"), spread_by: None })),
            ..Default::default()
        },
        expect_version: None,
    });
    assert!(w.state.check_invariants().is_empty(), "{:?}", w.state.check_invariants());
}

#[test]
fn a_group_spread_by_a_label_keeps_one_guest_per_value() {
    let mut w = racks();
    w.ok(create("db1", "h1", grouped(1, "db", Some("rack"))));
    refused(
        w.reject(create("db2", "h2", grouped(1, "db", Some("rack")))),
        "db1 of its anti-affinity group db runs on h1, in the same rack (r1)",
    );
    w.ok(create("db2", "h3", grouped(1, "db", Some("rack"))));
    // A host without the label is a domain of its own.
    w.ok(create("db3", "h5", grouped(1, "db", Some("rack"))));
    refused(w.reject(create("db4", "h4", grouped(1, "db", Some("rack")))), "same rack (r2)");
    // A member that spreads by host only still keeps the others' rack rule: the rule holds if
    // either of the two guests asks for it.
    refused(w.reject(create("db4", "h4", grouped(1, "db", None))), "db2");
    // Relabelling h4 into a rack of its own lets it take one.
    w.ok(Command::ModifyHost {
        host: n("h4"),
        patch: HostPatch { set_labels: [(n("rack"), n("r3"))].into(), ..Default::default() },
        expect_version: None,
    });
    assert_eq!(w.state.host(&n("h4")).unwrap().spec.labels.get(&n("rack")), Some(&n("r3")));
    w.ok(create("db4", "h4", grouped(1, "db", Some("rack"))));
    // Labels are removed by name; an empty patch of labels is still "nothing to change".
    w.ok(Command::ModifyHost {
        host: n("h5"),
        patch: HostPatch {
            remove_labels: [n("zone")].into(),
            hardware_family: Some("ia64".into()),
            ..Default::default()
        },
        expect_version: None,
    });
}

#[test]
fn too_many_labels_are_refused_and_change_nothing() {
    let mut w = World::empty();
    let many: Vec<(String, String)> = (0..=limits::HOST_LABELS_MAX).map(|i| (format!("k{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = w.reject(Command::RegisterHost(labelled("h1", &many)));
    assert!(r.code() == "invalid_argument" && r.to_string().contains("labels"), "{r}");
}

#[test]
fn the_cluster_s_own_moves_keep_groups_apart() {
    let mut w = racks();
    w.ok(create("web1", "h1", grouped(1, "web", None)));
    w.ok(create("web2", "h3", grouped(1, "web", None)));
    w.ok(create("web3", "h4", grouped(1, "web", None)));
    // Load h2 so that, without the rule, h3 and h4 would be the least loaded targets.
    w.ok(create("filler", "h2", guest_spec(8, 2048, None)));
    w.ok(create("filler5", "h5", guest_spec(9, 2048, None)));
    let web1 = w.guest("web1").clone();
    let h3 = w.state.host(&n("h3")).unwrap().clone();
    assert!(refusal(&w.state, &web1, &h3, &Planned::default())
        .unwrap()
        .contains("web2 of its anti-affinity group web runs there"));
    assert_eq!(choose_target(&w.state, &web1, &Planned::default()), Ok(n("h2")));
    // A move planned earlier in the same round counts: once web1 is planned for h2, a guest of
    // its group on h5 may not follow it there.
    w.ok(create("web4", "h5", grouped(1, "web", None)));
    let web4 = w.guest("web4").clone();
    let mut planned = Planned::default();
    planned.add(&web1, &n("h2"));
    let h2 = w.state.host(&n("h2")).unwrap().clone();
    assert!(refusal(&w.state, &web4, &h2, &planned)
        .unwrap()
        .contains("web1 of its anti-affinity group web is planned to move"));

    // A drain of h1 takes web1 to h2, the one host without a member of its group.
    w.ok(Command::StartDrain { host: n("h1"), allow_offline: false, max_parallel: 2 });
    let steps = drain_steps(&w.state, MoveLimits { per_target: 2, cluster: 8 });
    assert!(
        matches!(steps.as_slice(), [Command::RequestMigration { guest, target, .. }] if guest.as_str() == "web1" && target.as_str() == "h2"),
        "{steps:?}"
    );
}

#[test]
fn a_drain_stops_before_a_guest_whose_group_fills_every_other_host() {
    let mut w = racks();
    for (g, h) in [("web1", "h1"), ("web2", "h2"), ("web3", "h3"), ("web4", "h4"), ("web5", "h5")] {
        w.ok(create(g, h, grouped(1, "web", None)));
    }
    w.ok(Command::StartDrain { host: n("h1"), allow_offline: false, max_parallel: 2 });
    let steps = drain_steps(&w.state, MoveLimits { per_target: 2, cluster: 8 });
    let [Command::EndDrain { outcome: DrainOutcome::Stopped, blocked, .. }] = steps.as_slice() else {
        panic!("{steps:?}")
    };
    assert_eq!(blocked.len(), 1);
    for h in ["h2", "h3", "h4", "h5"] {
        assert!(blocked[0].why.contains(&format!("{h}: guest web")), "{blocked:?}");
    }
}

#[test]
fn two_drains_in_one_round_do_not_send_two_members_to_one_host() {
    let mut w = World::empty();
    for h in ["s1", "s2", "t1", "t2"] {
        w.ok(Command::RegisterHost(labelled(h, &[])));
    }
    w.ok(create("a", "s1", grouped(1, "g", None)));
    w.ok(create("b", "s2", grouped(1, "g", None)));
    w.ok(Command::StartDrain { host: n("s1"), allow_offline: false, max_parallel: 2 });
    w.ok(Command::StartDrain { host: n("s2"), allow_offline: false, max_parallel: 2 });
    let steps = drain_steps(&w.state, MoveLimits { per_target: 4, cluster: 8 });
    let targets: Vec<&str> = steps
        .iter()
        .filter_map(|c| match c {
            Command::RequestMigration { target, .. } => Some(target.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(targets.len(), 2, "{steps:?}");
    assert_ne!(targets[0], targets[1], "{steps:?}");
    for c in steps {
        w.ok(c);
    }
}

#[test]
fn failover_skips_nodes_where_the_group_already_runs() {
    let mut w = racks();
    w.ok(create("a", "h1", GuestSpec { package: Some(n("pa")), ..grouped(1, "g", None) }));
    w.ok(create("b", "h2", grouped(1, "g", None)));
    w.ok(Command::ModifyPackage {
        package: n("pa"),
        nodes: Some(vec![n("h1"), n("h2"), n("h3")]),
        failover_policy: None,
        failback_policy: None,
    });
    for h in ["h1", "h2", "h3"] {
        w.ok(Command::AdmitHost { host: n(h) });
    }
    w.ok(Command::DeclareHostFailed { host: n("h1"), evidence: "lease expired".into() });
    let a = w.guest("a").clone();
    let p = w.package("pa").clone();
    let cands = ha::candidates(&w.state, &a, &p, &[]);
    let h2 = cands.iter().find(|c| c.host.as_str() == "h2").unwrap();
    assert!(h2.excluded.as_deref().unwrap_or_default().contains("anti-affinity group g"), "{cands:?}");
    // The configured node order would pick h2; the rule makes it h3, and apply agrees.
    assert_eq!(ha::choose(&w.state, &a, &p, &[]).map(|(h, _)| h), Ok(n("h3")));
    let r = w.reject(Command::StartFailover { guest: n("a"), to: n("h2") });
    assert!(r.code() == "failover_refused" && r.to_string().contains("anti-affinity"), "{r}");
    w.ok(Command::StartFailover { guest: n("a"), to: n("h3") });
}
