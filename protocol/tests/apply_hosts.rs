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
