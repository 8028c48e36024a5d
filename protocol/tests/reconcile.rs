//! The pure reconciler: a table test per input kind, and a property test that any sequence of
//! log changes and observations converges to the log with no action repeated after success.

use std::collections::BTreeMap;

use proptest::prelude::*;
use switchyard_protocol::api::Drift;
use switchyard_protocol::lease::Fence;
use switchyard_protocol::reconcile::{Action, Effect, Input, Reconciler};
use switchyard_protocol::reconcile::{Observed, SwitchingState, VmState};
use switchyard_protocol::{FencingToken, Guest, GuestSpec, Name, Package, RunState, SwitchingChange};

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn spec(memory_mib: u64) -> GuestSpec {
    GuestSpec {
        vcpus: 1,
        memory_mib,
        disks: vec![],
        networks: vec![],
        online_migration: true,
        cluster_node: false,
        package: None,
        anti_affinity: None,
    }
}

fn guest(name: &str, owner: &str, run: RunState, memory_mib: u64, version: u64) -> Guest {
    Guest { name: n(name), spec: spec(memory_mib), owner: n(owner), run_state: run, version }
}

fn tok(term: u64, revision: u64) -> FencingToken {
    FencingToken { term, revision }
}

fn obs(name: &str, defined: Option<(u64, Option<u64>)>, state: VmState) -> Observed {
    let running_spec = defined.filter(|_| state != VmState::ShutOff).map(|(m, _)| spec(m));
    Observed { name: n(name), defined: defined.map(|(m, v)| (spec(m), v)), state, running_spec }
}

fn actions(effects: &[Effect]) -> Vec<(String, Action)> {
    effects.iter().map(|e| (e.guest.to_string(), e.action.clone())).collect()
}

fn done(r: &mut Reconciler, e: &Effect) -> Vec<Effect> {
    r.step(Input::Done { effect: e.clone(), result: Ok(()) })
}

/// h1's reconciler after an empty log view and a first (empty) observation.
fn h1() -> Reconciler {
    let mut r = Reconciler::new(n("h1"), BTreeMap::new());
    assert!(r.step(Input::MigrationsKnown).is_empty());
    assert!(r.step(Input::Reset { guests: vec![] }).is_empty());
    assert!(r.step(Input::Observed(vec![])).is_empty());
    r
}

/// h1's reconciler with this log view and this first observation, and what it decided.
fn fresh(guests: Vec<Guest>, observed: Vec<Observed>) -> (Reconciler, Vec<Effect>) {
    let mut r = Reconciler::new(n("h1"), BTreeMap::new());
    r.step(Input::MigrationsKnown);
    let guests = guests.into_iter().map(|g| (g.clone(), tok(1, g.version))).collect();
    assert!(r.step(Input::Reset { guests }).is_empty(), "nothing before the first observation");
    let e = r.step(Input::Observed(observed));
    (r, e)
}

#[test]
fn nothing_is_decided_before_the_first_observation() {
    let mut r = Reconciler::new(n("h1"), BTreeMap::new());
    r.step(Input::MigrationsKnown);
    let g = guest("g1", "h1", RunState::Running, 32, 5);
    assert!(r.step(Input::Reset { guests: vec![(g, tok(1, 5))] }).is_empty());
    assert!(r.drift().is_empty());
    let e = r.step(Input::Observed(vec![]));
    assert_eq!(actions(&e), [("g1".into(), Action::Define { spec: spec(32), version: 5 })]);
}

#[test]
fn nothing_is_decided_before_the_whole_log_view_arrived() {
    // An agent restarting: it reads its hypervisor before it has told the reconciler what the
    // log holds. Its running guests must not look removed from the log.
    let mut r = Reconciler::new(n("h1"), BTreeMap::new());
    r.step(Input::MigrationsKnown);
    let e = r.step(Input::Observed(vec![obs("g1", Some((32, Some(5))), VmState::Running)]));
    assert!(e.is_empty(), "{e:?}");
    assert!(r.drift().is_empty());
    let e = r.step(Input::Reset { guests: vec![(guest("g1", "h1", RunState::Running, 32, 5), tok(1, 5))] });
    assert!(e.is_empty(), "{e:?}");
}

#[test]
fn nothing_is_decided_before_the_migration_worker_said_what_it_holds() {
    // An agent restarting mid-transfer as its target: the copy waiting for the guest must not
    // look like a copy the log places elsewhere before the worker has claimed it.
    let mut r = Reconciler::new(n("h1"), BTreeMap::new());
    r.step(Input::Reset { guests: vec![(guest("g1", "h2", RunState::Running, 32, 5), tok(1, 5))] });
    let e = r.step(Input::Observed(vec![obs("g1", Some((32, Some(5))), VmState::Incoming)]));
    assert!(e.is_empty(), "{e:?}");
    r.step(Input::Migrating { name: n("g1"), in_flight: true });
    assert!(r.step(Input::MigrationsKnown).is_empty());
    let e = r.step(Input::Migrating { name: n("g1"), in_flight: false });
    assert_eq!(actions(&e), [("g1".into(), Action::Stop { hard: true })], "once the migration ended");
}

#[test]
fn a_new_guest_is_defined_everywhere_and_started_only_on_its_owner() {
    for (host, starts) in [("h1", true), ("h2", false)] {
        let mut r = Reconciler::new(n(host), BTreeMap::new());
        r.step(Input::MigrationsKnown);
        r.step(Input::Reset { guests: vec![] });
        r.step(Input::Observed(vec![]));
        let g = guest("g1", "h1", RunState::Running, 32, 5);
        let e = r.step(Input::Guest { guest: g, token: tok(1, 5) });
        assert_eq!(actions(&e), [("g1".into(), Action::Define { spec: spec(32), version: 5 })], "{host}");
        let e = done(&mut r, &e[0]);
        if starts {
            assert_eq!(actions(&e), [("g1".into(), Action::Start { token: tok(1, 5) })]);
            assert!(done(&mut r, &e[0]).is_empty());
            assert_eq!(r.started()[&n("g1")], tok(1, 5));
        } else {
            assert!(e.is_empty(), "{host}: {e:?}");
        }
        assert!(r.drift().is_empty(), "{host}: {:?}", r.drift());
    }
}

#[test]
fn a_modified_guest_is_redefined_and_the_change_pends_until_the_next_start() {
    let (mut r, e) = fresh(
        vec![guest("g1", "h1", RunState::Running, 32, 5)],
        vec![obs("g1", Some((32, Some(5))), VmState::Running)],
    );
    assert!(e.is_empty(), "{e:?}");
    let e = r.step(Input::Guest { guest: guest("g1", "h1", RunState::Running, 64, 9), token: tok(1, 9) });
    assert_eq!(actions(&e), [("g1".into(), Action::Define { spec: spec(64), version: 9 })]);
    assert!(e[0].reason.contains("memory_mib"), "{}", e[0].reason);
    assert!(done(&mut r, &e[0]).is_empty(), "the running copy is not restarted for a change");
    let p = r.pending();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].fields, ["memory_mib"]);
    assert!(r.drift().is_empty(), "a pending change is not drift");
    // Stopped and started (by the log) → the new spec runs, nothing pends.
    let e = r.step(Input::Guest { guest: guest("g1", "h1", RunState::Stopped, 64, 10), token: tok(1, 10) });
    assert_eq!(actions(&e), [("g1".into(), Action::Define { spec: spec(64), version: 10 })]);
    let e = done(&mut r, &e[0]);
    assert_eq!(actions(&e), [("g1".into(), Action::Stop { hard: false })], "the owner's own stop is graceful");
    assert!(done(&mut r, &e[0]).is_empty());
    let e = r.step(Input::Guest { guest: guest("g1", "h1", RunState::Running, 64, 11), token: tok(1, 11) });
    let e = done(&mut r, &e[0]);
    assert_eq!(actions(&e), [("g1".into(), Action::Start { token: tok(1, 11) })]);
    done(&mut r, &e[0]);
    assert!(r.pending().is_empty());
}

#[test]
fn a_removed_guest_is_stopped_then_undefined() {
    let (mut r, e) = fresh(
        vec![guest("g1", "h1", RunState::Running, 32, 5)],
        vec![obs("g1", Some((32, Some(5))), VmState::Running)],
    );
    assert!(e.is_empty());
    let e = r.step(Input::Removed { name: n("g1") });
    assert_eq!(actions(&e), [("g1".into(), Action::Stop { hard: true })]);
    let e = done(&mut r, &e[0]);
    assert_eq!(actions(&e), [("g1".into(), Action::Undefine)]);
    assert!(done(&mut r, &e[0]).is_empty());
    assert!(r.drift().is_empty());
}

#[test]
fn a_reset_replaces_the_log_view_and_removes_what_it_no_longer_has() {
    let (mut r, e) = fresh(
        vec![guest("g1", "h1", RunState::Running, 32, 5)],
        vec![obs("g1", Some((32, Some(5))), VmState::Running)],
    );
    assert!(e.is_empty());
    let e = r.step(Input::Reset { guests: vec![(guest("g2", "h1", RunState::Stopped, 32, 9), tok(2, 9))] });
    assert_eq!(
        actions(&e),
        [("g2".into(), Action::Define { spec: spec(32), version: 9 }), ("g1".into(), Action::Stop { hard: true })],
        "the log's changes first, then what it no longer has"
    );
}

#[test]
fn a_guest_unknown_to_the_log_is_reported_and_never_touched() {
    let mut r = h1();
    let e = r.step(Input::Observed(vec![obs("stray", Some((32, None)), VmState::Running)]));
    assert!(e.is_empty(), "{e:?}");
    assert_eq!(r.drift()[&n("stray")], [Drift::Unknown]);
}

#[test]
fn a_copy_the_log_placed_elsewhere_is_stopped_hard_first() {
    // Defined from an older version, and running here.
    let (mut r, e) = fresh(
        vec![guest("g1", "h2", RunState::Running, 32, 5)],
        vec![obs("g1", Some((32, Some(3))), VmState::Running)],
    );
    assert_eq!(actions(&e), [("g1".into(), Action::Stop { hard: true })], "stop before anything else");
    assert_eq!(r.drift()[&n("g1")], [Drift::RunningHere { state: VmState::Running.to_string() }]);
    let e = done(&mut r, &e[0]);
    assert_eq!(actions(&e), [("g1".into(), Action::Define { spec: spec(32), version: 5 })]);
    assert!(done(&mut r, &e[0]).is_empty());
    assert!(r.drift().is_empty());
}

#[test]
fn drift_behind_the_agents_back_is_reported_and_repaired() {
    // g1 was killed; g2's definition was edited by hand.
    let (r, e) = fresh(
        vec![guest("g1", "h1", RunState::Running, 32, 5), guest("g2", "h1", RunState::Running, 32, 6)],
        vec![obs("g1", Some((32, Some(5))), VmState::ShutOff), obs("g2", Some((48, Some(6))), VmState::Running)],
    );
    assert_eq!(r.drift()[&n("g1")], [Drift::NotRunning { state: VmState::ShutOff.to_string() }]);
    assert_eq!(r.drift()[&n("g2")], [Drift::Differs { fields: vec!["memory_mib".into()] }]);
    assert_eq!(
        actions(&e),
        [
            ("g1".into(), Action::Start { token: tok(1, 5) }),
            ("g2".into(), Action::Define { spec: spec(32), version: 6 })
        ],
        "in the order of the log changes"
    );
}

#[test]
fn a_guest_that_went_down_behind_the_agents_back_is_known_as_such_until_started_again() {
    let g = guest("g1", "h1", RunState::Running, 64, 3);
    let (mut r, _) = fresh(vec![g.clone()], vec![obs("g1", Some((64, Some(3))), VmState::Running)]);
    r.step(Input::Migrating { name: n("g1"), in_flight: true });
    // Killed while the migration worker held it: nothing is decided, but it is remembered.
    assert!(r.step(Input::Observed(vec![obs("g1", Some((64, Some(3))), VmState::ShutOff)])).is_empty());
    assert!(r.went_down(&n("g1")));
    // The migration ends: once the hypervisor is read again, the start that follows is a repair.
    assert!(r.step(Input::Migrating { name: n("g1"), in_flight: false }).is_empty());
    let e = r.step(Input::Observed(vec![obs("g1", Some((64, Some(3))), VmState::ShutOff)]));
    assert_eq!(actions(&e), vec![("g1".into(), Action::Start { token: tok(1, 3) })]);
    assert!(r.went_down(&n("g1")));
    done(&mut r, &e[0]);
    assert!(!r.went_down(&n("g1")));
    // A stop the log asked for is not one.
    let stopped = guest("g1", "h1", RunState::Stopped, 64, 4);
    let e = r.step(Input::Guest { guest: stopped, token: tok(1, 4) });
    assert!(matches!(e[0].action, Action::Define { version: 4, .. }), "{e:?}");
    let e = done(&mut r, &e[0]);
    assert_eq!(actions(&e), vec![("g1".into(), Action::Stop { hard: false })]);
    assert!(done(&mut r, &e[0]).is_empty());
    r.step(Input::Observed(vec![obs("g1", Some((64, Some(4))), VmState::ShutOff)]));
    assert!(!r.went_down(&n("g1")), "stopped by the reconciler itself");

    // Killed while its definition is being rewritten: the rewrite does not explain it.
    let g = guest("g1", "h1", RunState::Running, 64, 5);
    let (mut r, e) = fresh(vec![g.clone()], vec![obs("g1", Some((64, Some(5))), VmState::ShutOff)]);
    done(&mut r, &e[0]);
    let e = r.step(Input::Guest { guest: guest("g1", "h1", RunState::Running, 48, 6), token: tok(1, 6) });
    assert!(matches!(e[0].action, Action::Define { version: 6, .. }), "{e:?}");
    r.step(Input::Observed(vec![obs("g1", Some((64, Some(5))), VmState::ShutOff)]));
    assert!(r.went_down(&n("g1")));
}

#[test]
fn what_the_migration_worker_hands_back_is_read_again_before_it_is_restarted() {
    // The target of a move: the guest arrived paused (QEMU's -S) while the worker held it, and
    // the worker resumed it just before the migration completed. The last observation still
    // says paused; restarting from it would throw away the guest's memory.
    let (mut r, e) = fresh(
        vec![guest("g1", "h2", RunState::Running, 32, 5)],
        vec![obs("g1", Some((32, Some(5))), VmState::ShutOff)],
    );
    assert!(e.is_empty(), "{e:?}");
    r.step(Input::Migrating { name: n("g1"), in_flight: true });
    assert!(r.step(Input::Observed(vec![obs("g1", Some((32, Some(5))), VmState::Paused("paused".into()))])).is_empty());
    let e = r.step(Input::Guest { guest: guest("g1", "h1", RunState::Running, 32, 6), token: tok(1, 6) });
    assert_eq!(actions(&e), [("g1".into(), Action::Define { spec: spec(32), version: 6 })]);
    assert!(done(&mut r, &e[0]).is_empty(), "the worker still holds it");
    assert!(r.step(Input::Migrating { name: n("g1"), in_flight: false }).is_empty(), "decided on an older reading");
    assert!(r.step(Input::Observed(vec![obs("g1", Some((32, Some(6))), VmState::Running)])).is_empty());
    // Had it really been left paused, the next reading restarts it.
    r.step(Input::Migrating { name: n("g1"), in_flight: true });
    r.step(Input::Migrating { name: n("g1"), in_flight: false });
    let e = r.step(Input::Observed(vec![obs("g1", Some((32, Some(6))), VmState::Paused("paused".into()))]));
    assert_eq!(actions(&e), [("g1".into(), Action::Stop { hard: true })]);
}

#[test]
fn a_paused_or_left_behind_copy_on_the_owner_is_restarted() {
    for state in [VmState::Paused("internal-error".into()), VmState::Migrated, VmState::Incoming] {
        let (mut r, e) = fresh(
            vec![guest("g1", "h1", RunState::Running, 32, 5)],
            vec![obs("g1", Some((32, Some(5))), state.clone())],
        );
        assert_eq!(actions(&e), [("g1".into(), Action::Stop { hard: true })], "{state:?}");
        let e = done(&mut r, &e[0]);
        assert_eq!(actions(&e), [("g1".into(), Action::Start { token: tok(1, 5) })], "{state:?}");
    }
}

#[test]
fn a_migrating_guest_keeps_its_definition_and_its_run_state_is_left_to_the_migration() {
    let mut r = Reconciler::new(n("h1"), BTreeMap::new());
    r.step(Input::MigrationsKnown);
    r.step(Input::Migrating { name: n("g1"), in_flight: true });
    r.step(Input::Reset { guests: vec![(guest("g1", "h2", RunState::Running, 32, 5), tok(1, 5))] });
    // The target's incoming copy here, and an old definition.
    let e = r.step(Input::Observed(vec![obs("g1", Some((32, Some(4))), VmState::Incoming)]));
    assert_eq!(actions(&e), [("g1".into(), Action::Define { spec: spec(32), version: 5 })]);
    assert!(done(&mut r, &e[0]).is_empty(), "the incoming copy is the migration's");
    assert!(r.drift().is_empty());
    // The migration ended with the guest elsewhere: the copy here goes.
    let e = r.step(Input::Migrating { name: n("g1"), in_flight: false });
    assert_eq!(actions(&e), [("g1".into(), Action::Stop { hard: true })]);
}

#[test]
fn a_failed_action_waits_for_the_next_observation() {
    let mut r = h1();
    let e = r.step(Input::Guest { guest: guest("g1", "h1", RunState::Running, 32, 5), token: tok(1, 5) });
    let again = r.step(Input::Done { effect: e[0].clone(), result: Err("disk full".into()) });
    assert!(again.is_empty(), "not retried at once: {again:?}");
    assert!(r.step(Input::Guest { guest: guest("g1", "h1", RunState::Running, 32, 5), token: tok(1, 5) }).is_empty());
    let e = r.step(Input::Observed(vec![]));
    assert_eq!(actions(&e), [("g1".into(), Action::Define { spec: spec(32), version: 5 })]);
}

#[test]
fn one_action_per_guest_is_in_progress_at_a_time() {
    let mut r = h1();
    let e = r.step(Input::Guest { guest: guest("g1", "h1", RunState::Running, 32, 5), token: tok(1, 5) });
    assert_eq!(e.len(), 1);
    assert!(r.step(Input::Observed(vec![])).is_empty(), "the define is still running");
    assert!(r.step(Input::Guest { guest: guest("g1", "h1", RunState::Running, 64, 6), token: tok(1, 6) }).is_empty());
    // The first define ends; the newer spec follows.
    let e = done(&mut r, &e[0]);
    assert_eq!(actions(&e), [("g1".into(), Action::Define { spec: spec(64), version: 6 })]);
}

#[test]
fn a_start_never_uses_an_older_order_than_one_already_used() {
    let started = BTreeMap::from([(n("g1"), tok(3, 40))]);
    let mut r = Reconciler::new(n("h1"), started);
    r.step(Input::MigrationsKnown);
    r.step(Input::Reset { guests: vec![] });
    // A re-sync from a stale coordinator shows an older order asking g1 to run here.
    r.step(Input::Guest { guest: guest("g1", "h1", RunState::Running, 32, 30), token: tok(2, 30) });
    let e = r.step(Input::Observed(vec![obs("g1", Some((32, Some(30))), VmState::ShutOff)]));
    assert!(e.is_empty(), "{e:?}");
    let e = r.step(Input::Guest { guest: guest("g1", "h1", RunState::Running, 32, 41), token: tok(3, 41) });
    let e = done(&mut r, &e[0]);
    assert_eq!(actions(&e), [("g1".into(), Action::Start { token: tok(3, 41) })]);
}

// ---- property: convergence, no action repeated after success ----

const GUESTS: [&str; 3] = ["g0", "g1", "g2"];
const HOSTS: [&str; 2] = ["h1", "h2"];

fn package(name: &str, guest: &str, enabled: bool, disabled_on: &[&str]) -> Package {
    Package {
        name: n(name),
        guest: n(guest),
        switching_enabled: enabled,
        disabled_nodes: disabled_on.iter().map(|h| n(h)).collect(),
        switching_changed: SwitchingChange::default(),
        nodes: Vec::new(),
        failover_policy: Default::default(),
        failback_policy: Default::default(),
    }
}

fn switching(global: bool, nodes: &[(&str, bool)]) -> SwitchingState {
    SwitchingState { global, nodes: nodes.iter().map(|(h, on)| (n(h), *on)).collect() }
}

fn packaged(name: &str, owner: &str, package: &str) -> Guest {
    let mut g = guest(name, owner, RunState::Running, 64, 3);
    g.spec.package = Some(n(package));
    g
}

fn set(package: &str, node: Option<&str>, enabled: bool) -> Action {
    Action::SetSwitching { package: n(package), node: node.map(n), enabled }
}

#[test]
fn switching_is_set_as_the_log_says_globally_by_the_owner_and_per_node_by_each_host() {
    let mut r = h1();
    r.step(Input::Reset {
        guests: vec![(packaged("g1", "h1", "p1"), tok(1, 3)), (packaged("g2", "h2", "p2"), tok(1, 3))],
    });
    r.step(Input::Observed(vec![
        obs("g1", Some((64, Some(3))), VmState::Running),
        obs("g2", Some((64, Some(3))), VmState::ShutOff),
    ]));
    // Nothing before the whole package list arrived.
    assert!(r.step(Input::ObservedSwitching(BTreeMap::from([(n("p1"), switching(true, &[("h1", true)]))]))).is_empty());
    let e = r.step(Input::Packages(vec![package("p1", "g1", false, &[]), package("p2", "g2", false, &["h1"])]));
    // g1 runs here: its package's global switching is this host's to keep; p2's global is
    // h2's. p2 is unknown to the cluster manager: left alone.
    assert_eq!(actions(&e), vec![("g1".into(), set("p1", None, false))]);
    assert!(done(&mut r, &e[0]).is_empty());
    // The cluster manager now knows p2; its node switching on h1 differs from the log.
    let e = r.step(Input::ObservedSwitching(BTreeMap::from([
        (n("p1"), switching(false, &[("h1", true)])),
        (n("p2"), switching(true, &[("h1", true), ("h2", true)])),
    ])));
    assert_eq!(actions(&e), vec![("g2".into(), set("p2", Some("h1"), false))]);
    assert!(done(&mut r, &e[0]).is_empty());
    // The log re-enables p1 (a migration ended): the owner enables it.
    let e = r.step(Input::Package(package("p1", "g1", true, &[])));
    assert_eq!(actions(&e), vec![("g1".into(), set("p1", None, true))]);
}

#[test]
fn a_failed_switching_change_waits_for_the_next_reading_and_a_package_goes_with_its_guest() {
    let mut r = h1();
    r.step(Input::Reset { guests: vec![(packaged("g1", "h1", "p1"), tok(1, 3))] });
    r.step(Input::Packages(vec![package("p1", "g1", false, &[])]));
    let seen = BTreeMap::from([(n("p1"), switching(true, &[("h1", true)]))]);
    let e = r.step(Input::ObservedSwitching(seen.clone()));
    assert_eq!(e.len(), 1);
    assert!(r.step(Input::Done { effect: e[0].clone(), result: Err("cmmodpkg: cluster not up".into()) }).is_empty());
    assert!(r.step(Input::Package(package("p1", "g1", false, &[]))).is_empty(), "not retried before a reading");
    assert_eq!(r.step(Input::ObservedSwitching(seen.clone())).len(), 1, "retried after one");
    // The guest no longer names the package: the package is gone with it.
    let mut g = guest("g1", "h1", RunState::Running, 64, 4);
    g.spec.package = None;
    r.step(Input::Guest { guest: g, token: tok(1, 4) });
    assert!(r.step(Input::ObservedSwitching(seen)).is_empty());
}

#[derive(Clone, Debug)]
enum Op {
    /// The log changes a guest (owner index, running, memory).
    Log(usize, usize, bool, u64),
    Remove(usize),
    Migrating(usize, bool),
    /// Something behind the agent's back: kill, pause, edit the definition, drop it, or a
    /// stray guest appears.
    Kill(usize),
    Pause(usize),
    Edit(usize, u64),
    Drop(usize),
    Stray,
    /// The agent re-syncs its whole log view.
    Resync,
    /// The agent observes; effects fail with the given pattern until the next op.
    Observe(bool),
    /// The log sets a guest's package switching (global, and whether h1 is excluded).
    Switch(usize, bool, bool),
    /// The cluster manager's global switching of a package flips behind the agent's back.
    Flip(usize),
    /// The host's lease: held, unknown (no answer since the agent started), lost.
    Fence(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..2usize, any::<bool>(), prop_oneof![Just(32u64), Just(48), Just(64)])
            .prop_map(|(g, h, r, m)| Op::Log(g, h, r, m)),
        1 => (0..3usize).prop_map(Op::Remove),
        1 => (0..3usize, any::<bool>()).prop_map(|(g, b)| Op::Migrating(g, b)),
        1 => (0..3usize).prop_map(Op::Kill),
        1 => (0..3usize).prop_map(Op::Pause),
        1 => (0..3usize, prop_oneof![Just(16u64), Just(128)]).prop_map(|(g, m)| Op::Edit(g, m)),
        1 => (0..3usize).prop_map(Op::Drop),
        1 => Just(Op::Stray),
        1 => Just(Op::Resync),
        3 => any::<bool>().prop_map(Op::Observe),
        1 => (0..3usize, any::<bool>(), any::<bool>()).prop_map(|(g, on, off_here)| Op::Switch(g, on, off_here)),
        1 => (0..3usize).prop_map(Op::Flip),
        2 => (0..3usize).prop_map(Op::Fence),
    ]
}

/// A hypervisor that performs effects on a map, refusing what a real one refuses (starting an
/// undefined guest, undefining a live one): the reconciler's model of it may be stale.
#[derive(Default)]
struct Hv {
    vms: BTreeMap<Name, Observed>,
    /// The cluster manager: every guest's package, configured on h1 and h2.
    switching: BTreeMap<Name, SwitchingState>,
}

impl Hv {
    fn perform(&mut self, e: &Effect) -> Result<(), String> {
        let name = &e.guest;
        match &e.action {
            Action::Define { spec, version } => {
                let o = self.vms.entry(name.clone()).or_insert_with(|| Observed {
                    name: name.clone(),
                    defined: None,
                    state: VmState::ShutOff,
                    running_spec: None,
                });
                o.defined = Some((spec.clone(), Some(*version)));
            }
            Action::Undefine => {
                if self.vms.get(name).is_some_and(|o| o.state != VmState::ShutOff) {
                    return Err("a copy exists: stop it first".into());
                }
                self.vms.remove(name);
            }
            Action::Start { .. } => {
                let o = self.vms.get_mut(name).ok_or("not defined on this host")?;
                if o.defined.is_none() {
                    return Err("not defined on this host".into());
                }
                o.state = VmState::Running;
                o.running_spec = o.defined.as_ref().map(|(s, _)| s.clone());
            }
            Action::Stop { .. } => {
                if let Some(o) = self.vms.get_mut(name) {
                    o.state = VmState::ShutOff;
                    o.running_spec = None;
                }
            }
            Action::SetSwitching { package, node, enabled } => {
                let s = self.switching.get_mut(package).ok_or("package not configured")?;
                match node {
                    None => s.global = *enabled,
                    Some(n) => *s.nodes.get_mut(n).ok_or("node not configured")? = *enabled,
                }
            }
        }
        Ok(())
    }
    fn list(&self) -> Vec<Observed> {
        self.vms.values().cloned().collect()
    }
}

/// Cases from `PROPTEST_CASES` (256 by default); the seed from `SWITCHYARD_SEED`, else a fresh
/// one, printed either way so a failure can be replayed.
fn config() -> ProptestConfig {
    let seed = std::env::var("SWITCHYARD_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        h.finish()
    });
    eprintln!("reconcile property: SWITCHYARD_SEED={seed}");
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    ProptestConfig { cases, rng_seed: proptest::test_runner::RngSeed::Fixed(seed), ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_history_converges_to_the_log_without_repeating_a_successful_action(ops in prop::collection::vec(op(), 1..40)) {
        let host = n("h1");
        let mut r = Reconciler::new(host.clone(), BTreeMap::new());
        r.step(Input::MigrationsKnown);
        r.step(Input::Reset { guests: vec![] });
        r.step(Input::Packages(vec![]));
        let mut hv = Hv::default();
        for g in GUESTS {
            hv.switching.insert(n(&format!("p{g}")), switching(true, &[("h1", true), ("h2", true)]));
        }
        let mut packages: BTreeMap<Name, Package> = BTreeMap::new();
        let mut revision = 0u64;
        let mut log: BTreeMap<Name, Guest> = BTreeMap::new();
        let mut migrating = std::collections::BTreeSet::new();
        let mut queue: Vec<Effect> = Vec::new();
        let mut failing = false;
        // Every guest of this history is packaged: none starts without the lease, and none
        // survives an observation once it is lost.
        let mut fence = Fence::Held;
        r.step(Input::Fence(fence));
        // Performs (or fails) everything queued, feeding results back, until nothing is left.
        let drain = |r: &mut Reconciler, hv: &mut Hv, queue: &mut Vec<Effect>, failing: bool, fence: Fence| {
            let mut rounds = 0;
            while let Some(e) = queue.pop() {
                rounds += 1;
                assert!(rounds < 1000, "effects never end");
                assert!(fence == Fence::Held || !matches!(e.action, Action::Start { .. }), "{e:?} without the lease");
                let result = if failing { Err("injected".into()) } else { hv.perform(&e) };
                queue.extend(r.step(Input::Done { effect: e, result }));
            }
        };
        for op in ops {
            match op {
                Op::Log(g, h, run, mem) => {
                    revision += 1;
                    let mut gst = guest(GUESTS[g], HOSTS[h], if run { RunState::Running } else { RunState::Stopped }, mem, revision);
                    let p = n(&format!("p{}", GUESTS[g]));
                    gst.spec.package = Some(p.clone());
                    log.insert(gst.name.clone(), gst.clone());
                    queue.extend(r.step(Input::Guest { guest: gst, token: tok(1, revision) }));
                    // As the runtime does: the guest's package is read after the guest's change.
                    let pk = packages.entry(p.clone()).or_insert_with(|| package(p.as_str(), GUESTS[g], true, &[])).clone();
                    queue.extend(r.step(Input::Package(pk)));
                }
                Op::Remove(g) => {
                    packages.remove(&n(&format!("p{}", GUESTS[g])));
                    if log.remove(&n(GUESTS[g])).is_some() {
                        queue.extend(r.step(Input::Removed { name: n(GUESTS[g]) }));
                    }
                }
                Op::Migrating(g, b) => {
                    if b { migrating.insert(g); } else { migrating.remove(&g); }
                    queue.extend(r.step(Input::Migrating { name: n(GUESTS[g]), in_flight: b }));
                }
                Op::Kill(g) => if let Some(o) = hv.vms.get_mut(&n(GUESTS[g])) { o.state = VmState::ShutOff; o.running_spec = None; },
                Op::Pause(g) => if let Some(o) = hv.vms.get_mut(&n(GUESTS[g])) {
                    if o.state == VmState::Running { o.state = VmState::Paused("paused".into()); }
                },
                Op::Edit(g, m) => if let Some(o) = hv.vms.get_mut(&n(GUESTS[g])) {
                    if let Some((s, _)) = o.defined.as_mut() { s.memory_mib = m; }
                },
                Op::Drop(g) => if hv.vms.get(&n(GUESTS[g])).is_some_and(|o| o.state == VmState::ShutOff) {
                    hv.vms.remove(&n(GUESTS[g]));
                },
                Op::Stray => { hv.vms.insert(n("stray"), obs("stray", Some((32, None)), VmState::Running)); }
                Op::Resync => {
                    let guests = log.values().map(|g| (g.clone(), tok(1, g.version))).collect();
                    queue.extend(r.step(Input::Reset { guests }));
                }
                Op::Observe(fail) => {
                    failing = fail;
                    queue.extend(r.step(Input::Observed(hv.list())));
                    queue.extend(r.step(Input::ObservedSwitching(hv.switching.clone())));
                }
                Op::Switch(g, on, off_here) => {
                    if let Some(pk) = packages.get_mut(&n(&format!("p{}", GUESTS[g]))) {
                        revision += 1;
                        pk.switching_enabled = on;
                        pk.disabled_nodes = if off_here { [n("h1")].into() } else { Default::default() };
                        pk.switching_changed.revision = revision;
                        queue.extend(r.step(Input::Package(pk.clone())));
                    }
                }
                Op::Flip(g) => {
                    let s = hv.switching.get_mut(&n(&format!("p{}", GUESTS[g]))).expect("configured");
                    s.global = !s.global;
                }
                Op::Fence(f) => {
                    fence = [Fence::Held, Fence::Unknown, Fence::Lost][f];
                    queue.extend(r.step(Input::Fence(fence)));
                }
            }
            drain(&mut r, &mut hv, &mut queue, failing, fence);
            if fence == Fence::Lost && !failing {
                // Self-fencing: after an observation, no packaged copy is left running here.
                queue.extend(r.step(Input::Observed(hv.list())));
                drain(&mut r, &mut hv, &mut queue, failing, fence);
                let live: Vec<&Name> = hv.vms.values().filter(|o| o.state.is_live() && o.name.as_str() != "stray").map(|o| &o.name).collect();
                prop_assert!(live.is_empty(), "with the lease lost, still live here: {:?}", live);
            }
        }
        // The lease is held again for the end.
        fence = Fence::Held;
        queue.extend(r.step(Input::Fence(fence)));
        // Everything settles: migrations end, the hypervisor stops failing, the agent observes.
        for g in std::mem::take(&mut migrating) {
            queue.extend(r.step(Input::Migrating { name: n(GUESTS[g]), in_flight: false }));
        }
        drain(&mut r, &mut hv, &mut queue, failing, fence);
        let mut seen: Vec<Effect> = Vec::new();
        for _ in 0..2 {
            queue.extend(r.step(Input::Observed(hv.list())));
            queue.extend(r.step(Input::ObservedSwitching(hv.switching.clone())));
            while let Some(e) = queue.pop() {
                prop_assert!(!seen.iter().any(|s| s.guest == e.guest && s.action == e.action),
                    "{:?} repeated after it succeeded", e);
                let result = hv.perform(&e);
                prop_assert!(result.is_ok(), "{:?} failed right after an observation: {:?}", e, result);
                seen.push(e.clone());
                queue.extend(r.step(Input::Done { effect: e, result }));
            }
        }
        // Converged: the hypervisor holds exactly what the log says, for this host.
        for (name, g) in &log {
            let o = hv.vms.get(name);
            prop_assert_eq!(o.and_then(|o| o.defined.clone()), Some((g.spec.clone(), Some(g.version))), "{}", name);
            let want = g.owner == host && g.run_state == RunState::Running;
            let state = o.map(|o| o.state.clone()).unwrap_or(VmState::ShutOff);
            prop_assert_eq!(state == VmState::Running, want, "{} is {:?}", name, state);
            prop_assert!(want || state == VmState::ShutOff, "{} is {:?}", name, state);
        }
        for name in hv.vms.keys() {
            prop_assert!(log.contains_key(name) || name.as_str() == "stray", "{} was not undefined", name);
        }
        prop_assert!(hv.vms.get(&n("stray")).is_none_or(|o| o.state == VmState::Running), "the stray guest was touched");
        // Switching as the log says: globally where this host owns the guest, on this node always.
        for (p, pk) in &packages {
            let s = &hv.switching[p];
            if log[&pk.guest].owner == host {
                prop_assert_eq!(s.global, pk.switching_enabled, "global switching of {}", p);
            }
            prop_assert_eq!(s.nodes[&host], !pk.disabled_nodes.contains(&host), "switching of {} on h1", p);
        }
        let drift: Vec<_> = r.drift().into_iter().filter(|(n, _)| n.as_str() != "stray").collect();
        prop_assert!(drift.is_empty(), "{:?}", drift);
    }
}

#[test]
fn packaged_guests_start_only_under_the_lease_and_stop_hard_when_it_is_lost() {
    let mut pkg = guest("g1", "h1", RunState::Running, 32, 5);
    pkg.spec.package = Some(n("p1"));
    let plain = guest("g2", "h1", RunState::Running, 32, 6);
    let seen = |g: &Guest, state: VmState| Observed {
        name: g.name.clone(),
        defined: Some((g.spec.clone(), Some(g.version))),
        running_spec: (state == VmState::Running).then(|| g.spec.clone()),
        state,
    };
    let (mut r, e) =
        fresh(vec![pkg.clone(), plain.clone()], vec![seen(&pkg, VmState::ShutOff), seen(&plain, VmState::ShutOff)]);
    // No lease answer yet: the unpackaged guest starts, the packaged one waits.
    assert_eq!(actions(&e), [("g2".into(), Action::Start { token: tok(1, 6) })]);
    done(&mut r, &e[0]);
    let e = r.step(Input::Fence(Fence::Held));
    assert_eq!(actions(&e), [("g1".into(), Action::Start { token: tok(1, 5) })]);
    done(&mut r, &e[0]);
    // Lost: the packaged copy is stopped hard, whatever its state; the other keeps running.
    let e = r.step(Input::Fence(Fence::Lost));
    assert_eq!(actions(&e), [("g1".into(), Action::Stop { hard: true })]);
    assert!(e[0].reason.contains("self-fencing"), "{}", e[0].reason);
    done(&mut r, &e[0]);
    let e = r.step(Input::Observed(vec![seen(&pkg, VmState::ShutOff), seen(&plain, VmState::Running)]));
    assert!(e.is_empty(), "nothing restarts without the lease: {e:?}");
    // Held again (the log still places it here): it starts again.
    let e = r.step(Input::Fence(Fence::Held));
    assert_eq!(actions(&e), [("g1".into(), Action::Start { token: tok(1, 5) })]);
    assert!(r.protects());
}

#[test]
fn a_given_up_failover_order_stops_any_copy_and_never_starts_again() {
    let mut g = guest("g1", "h1", RunState::Running, 32, 9);
    g.spec.package = Some(n("p1"));
    let seen = |state: VmState| Observed {
        name: g.name.clone(),
        defined: Some((g.spec.clone(), Some(g.version))),
        running_spec: (state == VmState::Running).then(|| g.spec.clone()),
        state,
    };
    let (mut r, _) = fresh(vec![g.clone()], vec![seen(VmState::Running)]);
    r.step(Input::Fence(Fence::Held));
    assert!(!r.settled_off(&n("g1")));
    // A start that completed after the attempt ended: the copy is stopped hard.
    let e = r.step(Input::GaveUp { name: n("g1"), revision: 9 });
    assert_eq!(actions(&e), [("g1".into(), Action::Stop { hard: true })]);
    assert!(!r.settled_off(&n("g1")), "a stop under way is not settled");
    done(&mut r, &e[0]);
    assert!(r.settled_off(&n("g1")));
    // Nothing starts it again on that order, even though the log still names this host.
    assert!(r.step(Input::Observed(vec![seen(VmState::ShutOff)])).is_empty());
    // A newer order (the guest came back here later) is not given up.
    let mut back = g.clone();
    back.version = 12;
    let e = r.step(Input::Guest { guest: back.clone(), token: tok(3, 12) });
    assert_eq!(actions(&e), [("g1".into(), Action::Define { spec: back.spec.clone(), version: 12 })]);
    let e = done(&mut r, &e[0]);
    assert_eq!(actions(&e), [("g1".into(), Action::Start { token: tok(3, 12) })]);
}
