//! Property tests over random sequences of valid and invalid commands:
//! - two fresh state machines fed the same sequence end byte-identical (states and events);
//! - the invariants of SPEC §5 hold after every step;
//! - folding the emitted events alone rebuilds the same state (the history is the truth);
//! - a state survives encode → decode → rebuild of its indexes unchanged.
mod common;
use common::*;
use proptest::prelude::*;
use switchyard_protocol::codec;
use switchyard_protocol::hostconfig::HostConfig;
use switchyard_protocol::*;

const HOSTS: [&str; 4] = ["h1", "h2", "h3", "small"];
const GUESTS: [&str; 4] = ["g1", "g2", "g3", "g4"];
const PACKAGES: [&str; 2] = ["p1", "p2"];

/// A command template; `Step*` variants are resolved against the current state so that random
/// sequences reach deep migration phases instead of being refused at the first check.
#[derive(Clone, Debug)]
enum Op {
    Register(usize, u32, u64, bool),
    Maintenance(usize, bool),
    Reachable(usize, bool),
    Create(usize, usize, u32, u64, Option<usize>, bool),
    Modify(usize, Option<u32>, Option<bool>, Option<bool>, Option<Option<usize>>, Option<u64>),
    Remove(usize, Option<u64>),
    Switching(usize, Option<usize>, bool),
    Migrate(usize, usize, usize, usize),
    StepInFlight(usize),
    FailInFlight(usize, bool),
    RawAdvance(u64, usize, usize),
    /// An agent records a repair of a guest on a host.
    Repair(usize, usize),
    /// The driver records an in-flight migration's transfer figures.
    Stats(usize),
    /// Re-send an earlier proposal (a client retry).
    Retry(usize),
    /// The leader admits a host (join or recovery) or declares it failed.
    Admit(usize),
    Fail(usize),
    /// Start a failover of a guest to a host (eligible or not).
    Failover(usize, usize),
    /// The current attempt of a guest's failover completes or fails (with its own token or a
    /// stale one), or the failover is abandoned.
    EndAttempt(usize, usize, bool),
    /// A package's node list (hosts by index) and policy.
    ModifyPackage(usize, Option<Vec<usize>>, bool),
    /// A host's capacity (vCPUs, memory) or profile, at an expected version or not.
    ModifyHost(usize, Option<u32>, Option<u64>, bool, Option<u64>),
    RemoveHost(usize, Option<u64>),
    /// A drain of a host starts, or ends (completed, stopped or aborted).
    StartDrain(usize, u32),
    EndDrain(usize, usize),
    /// A guest joins an anti-affinity group (spread by host or by rack) or leaves its group.
    Group(usize, Option<(usize, bool)>),
    /// A host's rack label is set or removed.
    Rack(usize, Option<usize>),
    /// A finished migration's target (or another host, with a stale token or not) says
    /// whether the guest runs there.
    CheckTarget(usize, bool, bool, bool),
}

fn op() -> impl Strategy<Value = Op> {
    let h = 0..HOSTS.len();
    let g = 0..GUESTS.len();
    prop_oneof![
        1 => (h.clone(), 0u32..20, 0u64..70000, any::<bool>()).prop_map(|(a, b, c, d)| Op::Register(a, b, c, d)),
        1 => (h.clone(), any::<bool>()).prop_map(|(a, b)| Op::Maintenance(a, b)),
        1 => (h.clone(), any::<bool>()).prop_map(|(a, b)| Op::Reachable(a, b)),
        1 => (g.clone(), h.clone(), 0u32..8, 0u64..20000, proptest::option::of(0..PACKAGES.len()), any::<bool>())
            .prop_map(|(a, b, c, d, e, f)| Op::Create(a, b, c, d, e, f)),
        1 => (
            g.clone(),
            proptest::option::of(0u32..10),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(proptest::option::of(0..PACKAGES.len())),
            proptest::option::of(0u64..30)
        )
            .prop_map(|(a, b, c, d, e, f)| Op::Modify(a, b, c, d, e, f)),
        1 => (g.clone(), proptest::option::of(0u64..30)).prop_map(|(a, b)| Op::Remove(a, b)),
        1 => (0..PACKAGES.len(), proptest::option::of(h.clone()), any::<bool>()).prop_map(|(a, b, c)| Op::Switching(a, b, c)),
        1 => (g.clone(), h.clone(), h.clone(), 0usize..3).prop_map(|(a, b, c, d)| Op::Migrate(a, b, c, d)),
        4 => (0usize..4).prop_map(Op::StepInFlight),
        1 => (0usize..4, any::<bool>()).prop_map(|(a, b)| Op::FailInFlight(a, b)),
        1 => (0u64..60, 0..Phase::ALL.len(), 0..Phase::ALL.len()).prop_map(|(a, b, c)| Op::RawAdvance(a, b, c)),
        1 => (g.clone(), h.clone()).prop_map(|(a, b)| Op::Repair(a, b)),
        1 => (0usize..4).prop_map(Op::Stats),
        1 => (0usize..200).prop_map(Op::Retry),
        1 => h.clone().prop_map(Op::Admit),
        1 => h.clone().prop_map(Op::Fail),
        2 => (g.clone(), h.clone()).prop_map(|(a, b)| Op::Failover(a, b)),
        2 => (g.clone(), 0usize..4, any::<bool>()).prop_map(|(a, b, c)| Op::EndAttempt(a, b, c)),
        1 => (0..PACKAGES.len(), proptest::option::of(proptest::collection::vec(h.clone(), 0..4)), any::<bool>())
            .prop_map(|(a, b, c)| Op::ModifyPackage(a, b, c)),
        1 => (h.clone(), proptest::option::of(0u32..20), proptest::option::of(0u64..70000), any::<bool>(), proptest::option::of(0u64..30))
            .prop_map(|(a, b, c, d, e)| Op::ModifyHost(a, b, c, d, e)),
        1 => (h.clone(), proptest::option::of(0u64..30)).prop_map(|(a, b)| Op::RemoveHost(a, b)),
        1 => (h.clone(), 0u32..4).prop_map(|(a, b)| Op::StartDrain(a, b)),
        1 => (h.clone(), 0usize..3).prop_map(|(a, b)| Op::EndDrain(a, b)),
        1 => (g.clone(), proptest::option::of((0usize..2, any::<bool>()))).prop_map(|(a, b)| Op::Group(a, b)),
        1 => (h.clone(), proptest::option::of(0usize..2)).prop_map(|(a, b)| Op::Rack(a, b)),
        1 => (0usize..8, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(a, b, c, d)| Op::CheckTarget(a, b, c, d)),
    ]
}

fn resolve(op: &Op, state: &ClusterState) -> Command {
    let nth_in_flight = |k: usize| {
        let v: Vec<&Migration> = state.in_flight_migrations().collect();
        (!v.is_empty()).then(|| v[k % v.len()].clone())
    };
    match op.clone() {
        Op::Register(h, vcpus, mem, other) => {
            Command::RegisterHost(host_spec(HOSTS[h], vcpus, mem, if other { "x86_64" } else { "ia64" }))
        }
        Op::Maintenance(h, m) => Command::SetHostMaintenance { host: n(HOSTS[h]), maintenance: m },
        Op::Reachable(h, r) => Command::SetHostReachable { host: n(HOSTS[h]), reachable: r },
        Op::Create(g, h, vcpus, mem, pkg, running) => Command::CreateGuest {
            name: n(GUESTS[g]),
            spec: guest_spec(vcpus, mem, pkg.map(|p| PACKAGES[p])),
            owner: n(HOSTS[h]),
            run_state: if running { RunState::Running } else { RunState::Stopped },
        },
        Op::Modify(g, vcpus, online, cnode, pkg, ver) => Command::ModifyGuest {
            name: n(GUESTS[g]),
            patch: GuestPatch {
                vcpus,
                online_migration: online,
                cluster_node: cnode,
                package: pkg.map(|p| p.map(|p| n(PACKAGES[p]))),
                ..Default::default()
            },
            expect_version: ver,
        },
        Op::Remove(g, ver) => Command::RemoveGuest { name: n(GUESTS[g]), expect_version: ver },
        Op::ModifyHost(h, vcpus, memory_mib, other, ver) => Command::ModifyHost {
            host: n(HOSTS[h]),
            patch: HostPatch {
                vcpus,
                memory_mib,
                hardware_family: other.then(|| "x86_64".into()),
                ..Default::default()
            },
            expect_version: ver,
        },
        Op::RemoveHost(h, ver) => Command::RemoveHost { host: n(HOSTS[h]), expect_version: ver },
        Op::Group(g, group) => Command::ModifyGuest {
            name: n(GUESTS[g]),
            patch: GuestPatch {
                anti_affinity: Some(group.map(|(k, by_rack)| AntiAffinity {
                    group: n(["web", "db"][k]),
                    spread_by: by_rack.then(|| n("rack")),
                })),
                ..Default::default()
            },
            expect_version: None,
        },
        Op::Rack(h, rack) => {
            let patch = match rack {
                Some(r) => HostPatch { set_labels: [(n("rack"), n(["r1", "r2"][r]))].into(), ..Default::default() },
                None => HostPatch { remove_labels: [n("rack")].into(), ..Default::default() },
            };
            Command::ModifyHost { host: n(HOSTS[h]), patch, expect_version: None }
        }
        Op::StartDrain(h, parallel) => {
            Command::StartDrain { host: n(HOSTS[h]), allow_offline: false, max_parallel: parallel }
        }
        Op::EndDrain(h, how) => Command::EndDrain {
            host: n(HOSTS[h]),
            outcome: [DrainOutcome::Completed, DrainOutcome::Stopped, DrainOutcome::Aborted][how],
            reason: "test".into(),
            blocked: vec![BlockedGuest { guest: n(GUESTS[h % GUESTS.len()]), why: "no target".into() }],
        },
        Op::Admit(h) => Command::AdmitHost { host: n(HOSTS[h]) },
        Op::Fail(h) => Command::DeclareHostFailed { host: n(HOSTS[h]), evidence: "lease expired".into() },
        Op::Failover(g, h) => Command::StartFailover { guest: n(GUESTS[g]), to: n(HOSTS[h]) },
        Op::EndAttempt(g, how, own_token) => {
            let guest = n(GUESTS[g]);
            let (host, token) = state
                .failover(&guest)
                .map(|f| (f.target.clone(), f.token))
                .unwrap_or((n(HOSTS[0]), Default::default()));
            let token = if own_token { token } else { FencingToken { term: token.term, revision: token.revision + 1 } };
            match how {
                0 => Command::CompleteFailover { guest, host, token },
                1 => Command::FailFailoverAttempt {
                    guest,
                    host,
                    token,
                    reason: "start failed".into(),
                    released: own_token,
                },
                2 => Command::ReleaseFailoverAttempt { guest, host, token },
                _ => Command::AbandonFailover { guest, reason: "no eligible node".into() },
            }
        }
        Op::ModifyPackage(p, nodes, min) => Command::ModifyPackage {
            package: n(PACKAGES[p]),
            nodes: nodes.map(|v| v.into_iter().map(|h| n(HOSTS[h])).collect()),
            failover_policy: min.then_some(FailoverPolicy::MinPackageNode),
            failback_policy: None,
        },
        Op::Repair(g, h) => Command::RecordRepair {
            host: n(HOSTS[h]),
            guest: n(GUESTS[g]),
            action: "start".into(),
            reason: "it should run here but is shut off".into(),
        },
        Op::Switching(p, node, en) => Command::SetPackageSwitching {
            package: n(PACKAGES[p]),
            node: node.map(|h| n(HOSTS[h])),
            enabled: en,
            reason: None,
        },
        Op::Migrate(g, s, t, kind) => Command::RequestMigration {
            guest: n(GUESTS[g]),
            source: n(HOSTS[s]),
            target: n(HOSTS[t]),
            kind: [MigrationKind::Online, MigrationKind::Offline, MigrationKind::OfflineStop][kind],
            reason: None,
        },
        Op::StepInFlight(k) => match nth_in_flight(k) {
            Some(m) => {
                let to = m.phase.next(m.has_package()).unwrap();
                let freeze = (to == Phase::TargetRunning).then_some(k as u64 * 10);
                Command::AdvanceMigration { id: m.id, from: m.phase, to, freeze_time_ms: freeze }
            }
            None => Command::AbortMigration { id: MigrationId(1), reason: None },
        },
        Op::CheckTarget(k, own_host, own_token, runs_there) => {
            let finished: Vec<&Migration> = state.migrations().filter(|m| m.phase.is_terminal()).collect();
            match (!finished.is_empty()).then(|| finished[k % finished.len()]) {
                Some(m) => {
                    let token = m.current().token();
                    Command::CheckMigrationTarget {
                        id: m.id,
                        host: if own_host { m.target.clone() } else { m.source.clone() },
                        token: if own_token {
                            token
                        } else {
                            FencingToken { term: token.term, revision: token.revision + 1 }
                        },
                        runs_there,
                    }
                }
                None => Command::CheckMigrationTarget {
                    id: MigrationId(k as u64),
                    host: n(HOSTS[0]),
                    token: FencingToken::default(),
                    runs_there,
                },
            }
        }
        Op::Stats(k) => Command::RecordTransferStats {
            id: nth_in_flight(k).map(|m| m.id).unwrap_or(MigrationId(3)),
            stats: TransferStats { total_time_ms: k as u64 * 100, transferred_bytes: 1 << 20 },
        },
        Op::FailInFlight(k, abort) => {
            let id = nth_in_flight(k).map(|m| m.id).unwrap_or(MigrationId(2));
            if abort {
                Command::AbortMigration { id, reason: None }
            } else {
                Command::FailMigration { id, error: "injected".into() }
            }
        }
        Op::RawAdvance(id, f, t) => Command::AdvanceMigration {
            id: MigrationId(id),
            from: Phase::ALL[f],
            to: Phase::ALL[t],
            freeze_time_ms: None,
        },
        Op::Retry(_) => unreachable!("handled by the runner"),
    }
}

/// A fixed opening (hosts with room, two running guests) so random tails reach deep phases.
fn prelude() -> Vec<Op> {
    vec![
        Op::Register(0, 16, 65536, false),
        Op::Register(1, 16, 65536, false),
        Op::Register(2, 16, 65536, true),
        Op::Register(3, 2, 4096, false),
        Op::Create(0, 0, 2, 1024, Some(0), true),
        Op::Create(1, 0, 1, 512, None, true),
    ]
}

/// Runs the prelude then a sequence; returns the final state, every outcome and every event.
fn run(tail: &[Op]) -> (ClusterState, Vec<Result<Applied, Rejection>>, Vec<Event>) {
    let ops: Vec<Op> = prelude().into_iter().chain(tail.iter().cloned()).collect();
    let mut state = ClusterState::default();
    let mut sent: Vec<Proposal> = Vec::new();
    let mut outcomes = Vec::new();
    let mut events = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let proposal = match op {
            Op::Retry(k) if !sent.is_empty() => sent[k % sent.len()].clone(),
            Op::Retry(_) => continue,
            _ => Proposal {
                request_id: RequestId(i as u128 + 1),
                actor: "prop".into(),
                time: Timestamp(1_000 * i as u64),
                command: resolve(op, &state),
            },
        };
        let before = codec::encode(&state);
        match apply(&mut state, &proposal, 1) {
            Ok((applied, evs)) => {
                outcomes.push(Ok(applied));
                events.extend(evs);
            }
            Err(r) => {
                assert_eq!(codec::encode(&state), before, "rejection {r:?} changed the state");
                outcomes.push(Err(r));
            }
        }
        let bad = state.check_invariants();
        assert!(bad.is_empty(), "after {:?}: {bad:?}", proposal.command);
        // The digest kept event by event is the one an agent computes from the same guests.
        assert_eq!(state.config_digest(), HostConfig::from_state(&state).digest());
        sent.push(proposal);
    }
    (state, outcomes, events)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn same_commands_same_bytes(ops in proptest::collection::vec(op(), 1..120)) {
        let (s1, o1, e1) = run(&ops);
        let (s2, o2, e2) = run(&ops);
        prop_assert_eq!(codec::encode(&s1), codec::encode(&s2));
        prop_assert_eq!(codec::encode(&e1), codec::encode(&e2));
        prop_assert_eq!(o1, o2);
    }

    #[test]
    fn history_rebuilds_state(ops in proptest::collection::vec(op(), 1..120)) {
        let (live, _, events) = run(&ops);
        let mut rebuilt = ClusterState::default();
        let mut replay = Replay::default();
        for e in &events {
            rebuilt.evolve(e);
            replay.evolve(e);
        }
        prop_assert_eq!(&rebuilt, &live);
        prop_assert_eq!(&replay.finish(), &live);
        // Revisions are gap-free and strictly increasing.
        for (i, e) in events.iter().enumerate() {
            prop_assert_eq!(e.revision, i as u64 + 1);
        }
    }

    #[test]
    fn host_config_folded_from_events_equals_the_state(ops in proptest::collection::vec(op(), 1..120)) {
        use switchyard_protocol::hostconfig::HostConfig;
        let (live, _, events) = run(&ops);
        let mut folded = HostConfig::default();
        for e in &events {
            folded.apply(e);
        }
        let want = HostConfig::from_state(&live);
        prop_assert_eq!(folded.digest(), want.digest());
        prop_assert_eq!(folded, want);
    }

    #[test]
    fn state_survives_encoding(ops in proptest::collection::vec(op(), 1..80)) {
        let (live, _, _) = run(&ops);
        let mut decoded: ClusterState = codec::decode(&codec::encode(&live)).unwrap();
        decoded.rebuild_indexes();
        prop_assert_eq!(decoded, live);
    }
}

/// Damages one event of a history: a name, an owner, a package, a phase or a migration id,
/// whichever the event has, chosen by `x`.
fn damage(e: &mut Event, x: usize) {
    match &mut e.payload {
        EventPayload::GuestCreated { guest } | EventPayload::GuestModified { guest } => match x % 3 {
            0 => guest.name = n(GUESTS[x / 3 % GUESTS.len()]),
            1 => guest.owner = n(HOSTS[x / 3 % HOSTS.len()]),
            _ => guest.spec.package = Some(n(PACKAGES[x / 3 % PACKAGES.len()])),
        },
        EventPayload::GuestRemoved { guest } => *guest = n(GUESTS[x % GUESTS.len()]),
        EventPayload::GuestOwnerChanged { guest, to, .. } => match x % 2 {
            0 => *guest = n(GUESTS[x / 2 % GUESTS.len()]),
            _ => *to = n(HOSTS[x / 2 % HOSTS.len()]),
        },
        EventPayload::PackageSwitchingChanged { package, migration, .. } => match x % 2 {
            0 => *package = n(PACKAGES[x / 2 % PACKAGES.len()]),
            _ => *migration = Some(MigrationId(x as u64 / 2 % 40)),
        },
        EventPayload::MigrationPhaseChanged { id, phase, .. } => match x % 2 {
            0 => *phase = Phase::ALL[x / 2 % Phase::ALL.len()],
            _ => *id = MigrationId(x as u64 / 2 % 40),
        },
        EventPayload::MigrationRequested { migration } => migration.guest = n(GUESTS[x % GUESTS.len()]),
        EventPayload::HostMaintenanceChanged { host, .. } | EventPayload::HostReachabilityChanged { host, .. } => {
            *host = n(["h1", "h9"][x % 2])
        }
        EventPayload::HostRegistered { host } | EventPayload::HostModified { host } => {
            host.spec.name = n(["h1", "h9"][x % 2])
        }
        EventPayload::HostRemoved { host } | EventPayload::DrainEnded { host, .. } => *host = n(HOSTS[x % HOSTS.len()]),
        EventPayload::DrainStarted { drain } => drain.host = n(["h1", "h9"][x % 2]),
        EventPayload::GuestRepaired { guest, host, .. } => match x % 2 {
            0 => *guest = n(GUESTS[x / 2 % GUESTS.len()]),
            _ => *host = n(["h1", "h9"][x / 2 % 2]),
        },
        EventPayload::MigrationTransferStats { id, guest, .. } | EventPayload::MigrationResolved { id, guest, .. } => {
            match x % 2 {
                0 => *id = MigrationId(x as u64 / 2 % 40),
                _ => *guest = n(GUESTS[x / 2 % GUESTS.len()]),
            }
        }
        EventPayload::MigrationTargetChecked { id, guest, host, .. } => match x % 3 {
            0 => *id = MigrationId(x as u64 / 3 % 40),
            1 => *guest = n(GUESTS[x / 3 % GUESTS.len()]),
            _ => *host = n(HOSTS[x / 3 % HOSTS.len()]),
        },
        EventPayload::HostJoined { host }
        | EventPayload::HostFailed { host, .. }
        | EventPayload::HostRecovered { host } => *host = n(["h1", "h9"][x % 2]),
        EventPayload::FailoverStarted { guest, to, from, .. } => match x % 3 {
            0 => *guest = n(GUESTS[x / 3 % GUESTS.len()]),
            1 => *to = n(HOSTS[x / 3 % HOSTS.len()]),
            _ => *from = n(HOSTS[x / 3 % HOSTS.len()]),
        },
        EventPayload::FailoverCompleted { guest, .. }
        | EventPayload::FailoverAttemptFailed { guest, .. }
        | EventPayload::FailoverAttemptReleased { guest, .. }
        | EventPayload::FailoverFailed { guest, .. } => *guest = n(GUESTS[x % GUESTS.len()]),
        EventPayload::PackageModified { package, nodes, .. } => match x % 2 {
            0 => *package = n(PACKAGES[x / 2 % PACKAGES.len()]),
            _ => nodes.push(n("h9")),
        },
        EventPayload::ClusterCreated { .. } => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Checking and folding in one step (`Replay::fold_checked`, what `log restore`, `log seed`
    /// and `log verify` run on an export) refuses exactly what a check before a fold refuses,
    /// in the same words, changes nothing when it refuses, and folds as `evolve` does.
    #[test]
    fn a_checked_fold_is_a_check_then_a_fold(
        ops in proptest::collection::vec(op(), 1..120),
        damaged in proptest::collection::vec((0usize..200, 0usize..1000), 0..3),
    ) {
        let (_, _, mut events) = run(&ops);
        for (at, x) in damaged {
            let at = at % events.len();
            damage(&mut events[at], x);
        }
        let (mut checked, mut stepwise) = (Replay::default(), ClusterState::default());
        for e in &events {
            let want = stepwise.foldable(e);
            if want.is_ok() {
                stepwise.evolve(e);
            }
            prop_assert_eq!(checked.fold_checked(e), want);
        }
        prop_assert_eq!(checked.finish(), stepwise);
    }

    /// A history imported in chunks (`log restore`), possibly with one event damaged: chunks
    /// before the damage are accepted, the damaged chunk is refused or accepted exactly as a check
    /// on a whole copy of the state decides (debug builds assert that inside `apply`), a refusal
    /// changes nothing, and an undamaged history ends in the source's state.
    #[test]
    fn imported_chunks_are_checked_as_on_a_whole_copy(
        ops in proptest::collection::vec(op(), 1..120),
        chunk in 1usize..12,
        damaged in proptest::option::of((0usize..200, 0usize..1000)),
    ) {
        let (live, _, mut events) = run(&ops);
        if let Some((at, x)) = damaged {
            let at = at % events.len();
            damage(&mut events[at], x);
        }
        let mut state = ClusterState::default();
        let mut refused = false;
        for (i, part) in events.chunks(chunk).enumerate() {
            let p = Proposal {
                request_id: RequestId(1 << 64 | i as u128),
                actor: "restore".into(),
                time: Timestamp(0),
                command: Command::ImportEvents { cluster: None, chain: "0".repeat(64), events: part.to_vec() },
            };
            let before = codec::encode(&state);
            if let Err(r) = apply(&mut state, &p, 1) {
                prop_assert_eq!(r.code(), "import_refused");
                prop_assert_eq!(codec::encode(&state), before, "a refused chunk changed the state");
                refused = true;
                break;
            }
            prop_assert!(state.check_invariants().is_empty());
        }
        if damaged.is_none() {
            prop_assert!(!refused, "an undamaged history was refused");
            prop_assert_eq!(state.revision(), live.revision());
            prop_assert_eq!(state.config_digest(), live.config_digest());
            prop_assert!(state.guests().eq(live.guests()));
        }
    }
}

/// Guards the generator itself: random sequences must reach the deep phases, or the properties
/// above would only ever exercise rejections.
#[test]
fn generator_reaches_completed_and_rolled_back_migrations() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut completed, mut ended) = (0, 0);
    for _ in 0..200 {
        let ops = proptest::collection::vec(op(), 100..120).new_tree(&mut runner).unwrap().current();
        let (_, _, events) = run(&ops);
        for e in events {
            if let EventPayload::MigrationPhaseChanged { phase, .. } = e.payload {
                completed += (phase == Phase::Completed) as u32;
                ended += matches!(phase, Phase::Failed | Phase::Aborted) as u32;
            }
        }
    }
    assert!(completed > 0 && ended > 0, "completed {completed}, rolled back {ended}");
}
