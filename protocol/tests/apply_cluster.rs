//! The cluster's identity and restores: `CreateCluster` is accepted once; `ImportEvents` folds an
//! exported history as it is, only into a cluster that has nothing of its own, refusing a chunk
//! whole (and changing nothing) when it does not fold; a restore ends with a new identity whose
//! term base keeps fencing tokens growing.
mod common;

use common::*;
use switchyard_protocol::*;

const OLD: &str = "0123abcd-0000-4000-8000-000000000001";
const NEW: &str = "0123abcd-0000-4000-8000-000000000002";
const CHAIN: &str = "ab00000000000000000000000000000000000000000000000000000000000000";

fn id(s: &str) -> ClusterId {
    ClusterId::parse(s).unwrap()
}

/// A source cluster's history: identity, the standard world, a completed migration of g1,
/// stamped with growing terms as a real cluster's would be.
fn source_history() -> (ClusterState, Vec<Event>) {
    let mut w = World::empty();
    let (_, mut events) = w.ok(Command::CreateCluster { cluster: id(OLD), restored_from: None });
    let mut state = w.state.clone();
    let mut time = 1_700_000_000_000u64;
    let mut rid = 100u128;
    let mut run = |state: &mut ClusterState, command: Command, term: u64, events: &mut Vec<Event>| {
        rid += 1;
        time += 1000;
        let p = Proposal { request_id: RequestId(rid), actor: "tester".into(), time: Timestamp(time), command };
        let (_, evs) = apply(state, &p, term).unwrap_or_else(|r| panic!("{r}"));
        events.extend(evs);
    };
    for h in ["h1", "h2"] {
        run(&mut state, Command::RegisterHost(host_spec(h, 16, 65536, "ia64")), 3, &mut events);
    }
    let g1 = Command::CreateGuest {
        name: n("g1"),
        spec: guest_spec(4, 8192, Some("p1")),
        owner: n("h1"),
        run_state: RunState::Running,
    };
    run(&mut state, g1, 3, &mut events);
    let source = n("h1");
    let req = Command::RequestMigration {
        guest: n("g1"),
        source,
        target: n("h2"),
        kind: MigrationKind::Online,
        reason: None,
    };
    run(&mut state, req, 4, &mut events);
    let mid = MigrationId(state.revision());
    loop {
        let m = state.migration(mid).unwrap().clone();
        let Some(to) = m.phase.next(m.has_package()) else { break };
        let freeze = (to == Phase::TargetRunning).then_some(100);
        run(
            &mut state,
            Command::AdvanceMigration { id: mid, from: m.phase, to, freeze_time_ms: freeze },
            7,
            &mut events,
        );
    }
    (state, events)
}

fn import(cluster: Option<&str>, events: &[Event]) -> Command {
    Command::ImportEvents { cluster: cluster.map(id), chain: CHAIN.into(), events: events.to_vec() }
}

fn restored_from(through: Revision, term_base: u64) -> Option<RestoredFrom> {
    Some(RestoredFrom { cluster: Some(id(OLD)), through_revision: through, chain: CHAIN.into(), term_base })
}

#[test]
fn identity_is_committed_once() {
    let mut w = World::empty();
    let (a, events) = w.ok(Command::CreateCluster { cluster: id(NEW), restored_from: None });
    assert_eq!(a.revisions.first, 1);
    assert!(matches!(&events[0].payload, EventPayload::ClusterCreated { cluster, .. } if *cluster == id(NEW)));
    assert_eq!(w.state.identity().map(|i| (&i.id, i.revision)), Some((&id(NEW), 1)));
    let r = w.reject(Command::CreateCluster { cluster: id(OLD), restored_from: None });
    assert_eq!(r.code(), "cluster_exists");
    let r = World::empty().reject(Command::CreateCluster { cluster: ClusterId("x\ny".into()), restored_from: None });
    assert_eq!(r.code(), "invalid_argument");
    // Completing a restore that never began.
    let r = World::empty().reject(Command::CreateCluster { cluster: id(NEW), restored_from: restored_from(0, 0) });
    assert_eq!(r.code(), "import_refused");
}

#[test]
fn import_is_refused_by_a_cluster_with_a_history_of_its_own() {
    let (_, events) = source_history();
    let mut w = World::empty();
    w.ok(Command::CreateCluster { cluster: id(NEW), restored_from: None });
    assert_eq!(w.reject(import(Some(OLD), &events[..3])).code(), "cluster_exists");
    let mut w = World::standard();
    let r = w.reject(import(Some(OLD), &events[..3]));
    assert!(r.to_string().contains("already holds"), "{r}");
}

#[test]
fn a_history_imported_in_chunks_is_the_source_state_and_ends_with_a_new_identity() {
    let (source, events) = source_history();
    let mut w = World::empty();
    let (a, _) = w.ok(import(Some(OLD), &events[..4]));
    assert_eq!((a.revisions.first, a.revisions.last), (1, 4));
    // While importing: other writes are refused, and so are chunks that do not continue it.
    assert_eq!(w.reject(Command::RegisterHost(host_spec("h9", 1, 1, "ia64"))).code(), "restore_in_progress");
    assert_eq!(w.reject(import(Some(OLD), &events[5..])).code(), "import_refused");
    assert_eq!(w.reject(import(Some(NEW), &events[4..])).code(), "import_refused");
    assert_eq!(w.reject(import(Some(OLD), &[])).code(), "import_refused");
    let mut bad_chain = import(Some(OLD), &events[4..]);
    if let Command::ImportEvents { chain, .. } = &mut bad_chain {
        *chain = "not hex".into();
    }
    assert_eq!(w.reject(bad_chain).code(), "import_refused");
    w.ok(import(Some(OLD), &events[4..]));
    assert_eq!(api::FullState::of(&w.state), api::FullState::of(&source));
    assert_eq!(w.state.importing().map(|p| p.through_revision), Some(source.revision()));

    let through = source.revision();
    let last_term = events.last().unwrap().term;
    assert_eq!(last_term, 7);
    for (cmd, why) in [
        (Command::CreateCluster { cluster: id(NEW), restored_from: None }, "restore_in_progress"),
        (Command::CreateCluster { cluster: id(NEW), restored_from: restored_from(through - 1, 7) }, "import_refused"),
        (Command::CreateCluster { cluster: id(NEW), restored_from: restored_from(through, 6) }, "import_refused"),
        (Command::CreateCluster { cluster: id(OLD), restored_from: restored_from(through, 7) }, "import_refused"),
    ] {
        assert_eq!(w.reject(cmd).code(), why);
    }
    // The new cluster's Raft terms start again at 1: stamped terms continue above the imported.
    let p = w.proposal(Command::CreateCluster { cluster: id(NEW), restored_from: restored_from(through, 7) });
    let (_, evs) = apply(&mut w.state, &p, 1).unwrap();
    assert_eq!((evs[0].revision, evs[0].term), (through + 1, 8));
    assert!(w.state.importing().is_none());
    assert_eq!(w.state.identity().unwrap().restored_from.as_ref().unwrap().through_revision, through);
    let p = w.proposal(Command::RegisterHost(host_spec("h9", 1, 1, "ia64")));
    let (_, evs) = apply(&mut w.state, &p, 2).unwrap();
    assert_eq!(evs[0].term, 9, "every later event is stamped above the imported terms");
    assert!(w.state.check_invariants().is_empty());
}

#[test]
fn a_chunk_that_does_not_fold_is_refused_whole() {
    let (_, events) = source_history();
    let hostile = |f: &dyn Fn(&mut Vec<Event>)| {
        let mut evs = events.clone();
        f(&mut evs);
        let mut w = World::empty();
        w.reject(import(Some(OLD), &evs))
    };
    // A guest on a host that does not exist.
    let r = hostile(&|evs| {
        for e in evs.iter_mut() {
            if let EventPayload::GuestCreated { guest } = &mut e.payload {
                guest.owner = n("nowhere");
            }
        }
    });
    assert!(r.to_string().contains("unknown host nowhere"), "{r}");
    // A gap.
    let r = hostile(&|evs| {
        evs.remove(3);
    });
    assert!(r.to_string().contains("does not follow"), "{r}");
    // A phase change of a migration that does not exist.
    let r = hostile(&|evs| {
        for e in evs.iter_mut() {
            if let EventPayload::MigrationPhaseChanged { id, .. } = &mut e.payload {
                *id = MigrationId(999);
            }
        }
    });
    assert!(r.to_string().contains("unknown migration"), "{r}");
    // Ownership moved behind the migration's back: folds, but breaks an invariant afterwards.
    let r = hostile(&|evs| {
        for e in evs.iter_mut() {
            if let EventPayload::GuestOwnerChanged { from, .. } = &mut e.payload {
                *from = n("h2");
            }
        }
    });
    assert!(r.to_string().contains("moves guest g1 from h2"), "{r}");
}
