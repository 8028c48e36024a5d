//! `host drain` on a real cluster (three coordinator processes, three agents): guests leave h1
//! while the leader coordinator is SIGKILLed in the middle; the next leader carries the drain on
//! from the log. Once with 30 guests on the simulated hypervisor (packages bound to some nodes,
//! an anti-affinity group), once with 30 real QEMU VMs, sampled all along for a guest running on
//! two hosts at once. Afterwards every guest runs elsewhere, h1 is in maintenance, and a checker
//! over the whole log shows that the concurrency limits were never exceeded at any revision and
//! that no guest was placed against a rule (a packaged guest only on its package's nodes, never
//! beside a guest of its anti-affinity group, never on a host in maintenance or being drained,
//! never beyond capacity); every SPEC §5 invariant holds throughout.
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::*;
use common::saga::*;
use common::vms::*;
use switchyard_protocol::{
    BlockedGuest, ClusterState, DrainOutcome, Event, EventPayload, Guest, HostState, MigrationId, Name,
};

/// The limits the drain runs under: its own `--max-parallel` and the coordinators' defaults.
const PER_SOURCE: usize = 3;
const PER_TARGET: usize = 2;
const CLUSTER: usize = 8;

/// The drain of 30 real VMs loads a 2-core machine enough (30 QEMU starts, live migrations) that
/// a cluster started beside it misses its leases and forwarding deadlines; these tests take
/// turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether `a` placed on `host` would share a failure domain with `b` where it stands (its
/// host, or its migration's target): checked here from the definition, apart from the
/// placement code.
fn beside(state: &ClusterState, a: &Guest, host: &Name, b: &Guest) -> bool {
    let (Some(ra), Some(rb)) = (&a.spec.anti_affinity, &b.spec.anti_affinity) else { return false };
    if ra.group != rb.group || a.name == b.name {
        return false;
    }
    let places = std::iter::once(&b.owner).chain(state.in_flight(&b.name).map(|m| &m.target));
    let target = state.host(host).expect("known host");
    places.into_iter().any(|p| {
        let other = state.host(p).expect("known host");
        p == host
            || [&ra.spread_by, &rb.spread_by]
                .into_iter()
                .flatten()
                .any(|k| target.spec.labels.contains_key(k) && target.spec.labels.get(k) == other.spec.labels.get(k))
    })
}

/// Replays the log and checks, at every revision, the in-flight migrations against the limits,
/// and every drain's migration request against the placement rules as the state stood.
fn check_drain(events: &[Event], guests: usize) {
    let mut state = ClusterState::default();
    let mut drain_moves = 0;
    for e in events {
        if let EventPayload::MigrationRequested { migration: m } = &e.payload {
            if m.reason.as_deref().is_some_and(|r| r.starts_with("drain of")) {
                drain_moves += 1;
                let guest = state.guest(&m.guest).expect("known guest");
                let target = state.host(&m.target).expect("known target");
                assert_eq!(
                    state.host_state(target),
                    HostState::Active,
                    "{} placed on a {} host",
                    m.guest,
                    state.host_state(target)
                );
                if let Some(p) = guest.spec.package.as_ref().and_then(|p| state.package(p)) {
                    assert!(
                        p.nodes.is_empty() || p.nodes.contains(&m.target),
                        "{} placed off its package's nodes",
                        m.guest
                    );
                    assert!(!p.disabled_nodes.contains(&m.target), "{} placed where switching is disabled", m.guest);
                }
                let committed = state.committed_resources(&m.target).saturating_add(guest.spec.demand());
                assert!(committed.fits_in(target.spec.capacity), "{} overcommits {}", m.guest, m.target);
                if let Some(b) = state.guests().find(|b| beside(&state, guest, &m.target, b)) {
                    panic!("{} placed on {} beside {} of its anti-affinity group", m.guest, m.target, b.name);
                }
            }
        }
        state.evolve(e);
        let in_flight: Vec<_> = state.in_flight_migrations().collect();
        assert!(in_flight.len() <= CLUSTER, "{} migrations in flight at revision {}", in_flight.len(), e.revision);
        let from_h1 = in_flight.iter().filter(|m| m.source.as_str() == "h1").count();
        assert!(from_h1 <= PER_SOURCE, "{from_h1} migrations from h1 at revision {}", e.revision);
        let mut per_target: BTreeMap<&Name, usize> = BTreeMap::new();
        for m in &in_flight {
            *per_target.entry(&m.target).or_default() += 1;
        }
        for (t, k) in per_target {
            assert!(k <= PER_TARGET, "{k} migrations to {t} at revision {}", e.revision);
        }
    }
    assert!(drain_moves >= guests, "the drain requested {drain_moves} migrations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_of_30_guests_survives_the_leader_s_loss_within_its_limits() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let opts = ClusterOpts { sim_transfer_ms: 400, ..Default::default() };
    let (mut cluster, agents) = cluster_with_agents(opts).await;
    let admin = cluster.admin(Duration::from_secs(60));
    for i in 0..30 {
        let package = (i < 4).then(|| format!("p{i}"));
        create_guest(&admin, &format!("vm{i:02}"), "h1", package.as_deref()).await;
    }
    // vm04 and web-b (on h2) are in one anti-affinity group: vm04 may only go to h3.
    let (code, _, err) = cluster.cli(
        &[1, 2, 3],
        ADMIN_TOKEN,
        &["guest", "create", "web-b", "--owner", "h2", "--vcpus", "1", "--memory-mib", "512", "--anti-affinity", "web"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["guest", "modify", "vm04", "--anti-affinity", "web"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cluster.cli(&[1, 2, 3], READ_ONLY_TOKEN, &["guest", "show", "vm04"]);
    assert!(code == 0 && out.contains("anti-affinity group web (spread by host)"), "{out}{err}");
    // An operator's move beside the group is refused with the reason.
    let (code, _, err) = cluster.cli(&[1, 2, 3], OPERATIONS_TOKEN, &["migrate", "vm04", "--to", "h2"]);
    assert!(code != 0 && err.contains("web-b of its anti-affinity group web runs there"), "{err}");
    // Two packages may only go to h3 (their node list), one of them not to h2 by switching.
    for p in ["p0", "p1"] {
        let (code, _, err) = cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["package", "modify", p, "--nodes", "h1,h3"]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["package", "disable", "p2", "--node", "h2"]);
    assert_eq!(code, 0, "{err}");
    // Maintenance is refused while h1 still owns guests, pointing at the drain.
    let (code, _, err) = cluster.cli(&[1, 2, 3], OPERATIONS_TOKEN, &["host", "maintenance", "h1", "on"]);
    assert_ne!(code, 0);
    assert!(err.contains("host drain h1"), "{err}");

    let (code, out, err) =
        cluster.cli(&[1, 2, 3], OPERATIONS_TOKEN, &["host", "drain", "h1", "--max-parallel", &PER_SOURCE.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cluster.cli(&[1, 2, 3], READ_ONLY_TOKEN, &["host", "show", "h1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("draining") && out.contains("guest(s) left"), "{out}");

    // Mid-drain (some guests moved, most not), the leader dies.
    let leader = kill_leader_after_moves(&mut cluster, &admin, 5).await;
    let ended = drain_ended(&admin).await;
    assert_eq!(ended.0, DrainOutcome::Completed, "{ended:?}");

    // Read from the coordinators that stayed up (a restarted one serves its history as far as
    // it has caught up).
    let events = history(&cluster.client(&cluster.alive_ids())).await;
    let st = check_history(&events, true);
    check_drain(&events, 30);
    let h1 = st.host(&Name::new("h1").unwrap()).unwrap();
    assert_eq!(st.host_state(h1), HostState::Maintenance);
    assert_eq!(st.guests().filter(|g| g.owner.as_str() == "h1").count(), 0);
    for g in ["vm00", "vm01"] {
        assert_eq!(st.guest(&Name::new(g).unwrap()).unwrap().owner.as_str(), "h3", "{g} is bound to h3 by its package");
    }
    assert_eq!(st.guest(&Name::new("vm02").unwrap()).unwrap().owner.as_str(), "h3", "switching of p2 is off on h2");
    assert_eq!(st.guest(&Name::new("vm04").unwrap()).unwrap().owner.as_str(), "h3", "web-b of its group is on h2");
    let failed: Vec<MigrationId> =
        st.migrations().filter(|m| m.phase == switchyard_protocol::Phase::Failed).map(|m| m.id).collect();
    eprintln!("drain done; {} migration(s) failed and were retried: {failed:?}", failed.len());
    for g in ["vm05", "vm17", "vm29"] {
        wait_hypervisor_agrees(&cluster, g).await;
    }
    wait_agents_converged(&cluster, &agents).await;
    let alive = cluster.alive_ids();
    let (code, out, _) = cluster.cli(&alive, READ_ONLY_TOKEN, &["events", "--from", "1", "--kind", "host"]);
    assert_eq!(code, 0);
    assert!(out.contains("host h1 drain completed") && out.contains("host h1 maintenance on"), "{out}");
    cluster.restart(leader);
    cluster.wait_leader(&[1, 2, 3]).await;
}

/// Waits until `moves` guests have changed owner, then SIGKILLs the leader; returns its id.
async fn kill_leader_after_moves(cluster: &mut TestCluster, client: &switchyard_client::Client, moves: usize) -> u64 {
    eventually("a few guests to have moved", Duration::from_secs(120), || async {
        let moved = history(client)
            .await
            .iter()
            .filter(|e| matches!(e.payload, EventPayload::GuestOwnerChanged { .. }))
            .count();
        (moved >= moves).then_some(())
    })
    .await;
    let leader = cluster.wait_leader(&cluster.alive_ids()).await;
    cluster.kill(leader);
    eprintln!("killed leader {leader} mid-drain");
    leader
}

/// Waits for the drain's end: its outcome, reason and the guests it stopped before.
async fn drain_ended(client: &switchyard_client::Client) -> (DrainOutcome, String, Vec<BlockedGuest>) {
    eventually("the drain to end", Duration::from_secs(300), || async {
        history(client).await.into_iter().find_map(|e| match e.payload {
            EventPayload::DrainEnded { outcome, reason, blocked, .. } => Some((outcome, reason, blocked)),
            _ => None,
        })
    })
    .await
}

/// The same drain with real QEMU VMs (32 MiB, no disk), moved by QEMU's own live migration at a
/// limited bandwidth so that the leader dies while transfers run; a checker samples the three
/// hypervisors all along and fails on any guest running on two hosts at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_of_30_real_vms_survives_the_leader_s_loss_within_its_limits() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const VMS: usize = 30;
    // Starting 30 QEMU processes on h1 while another test's cluster runs beside this one can
    // starve h1's agent past the default 4 s lease, and a failed host takes no guests: this
    // test is not about host failure, so its hosts' leases are long.
    let opts = ClusterOpts { qemu_bandwidth_kib: Some(65_536), lease_ms: 30_000, ..Default::default() };
    let (mut cluster, agents) = qemu_cluster(opts).await;
    let checker = TwoCopiesChecker::start(&cluster);
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));
    for i in 0..VMS {
        create_vm(&admin, &format!("vm{i:02}"), "h1", 32, None).await;
    }
    for i in [0, VMS / 2, VMS - 1] {
        wait_runs_only_on(&cluster, &format!("vm{i:02}"), "h1").await;
    }
    let (code, out, err) =
        cluster.cli(&[1, 2, 3], OPERATIONS_TOKEN, &["host", "drain", "h1", "--max-parallel", &PER_SOURCE.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let leader = kill_leader_after_moves(&mut cluster, &admin, 5).await;
    let ended = drain_ended(&admin).await;
    assert_eq!(ended.0, DrainOutcome::Completed, "{ended:?}");
    let events = history(&cluster.client(&cluster.alive_ids())).await;
    let st = check_history(&events, true);
    check_drain(&events, VMS);
    assert_eq!(st.host_state(st.host(&Name::new("h1").unwrap()).unwrap()), HostState::Maintenance);
    for g in st.guests() {
        assert_ne!(g.owner.as_str(), "h1");
        wait_runs_only_on(&cluster, g.name.as_str(), g.owner.as_str()).await;
    }
    cluster.restart(leader);
    cluster.wait_leader(&[1, 2, 3]).await;
    wait_agents_converged(&cluster, &agents).await;
    eprintln!("checker sampled {} rounds", checker.finish());
}

/// A drain that cannot move everything stops before those guests, names each with why, and
/// leaves the host active; `--wait` exits non-zero with the list. `host undrain` ends a drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_stops_before_guests_that_cannot_move_and_undrain_ends_one() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (cluster, _agents) = cluster_with_agents(ClusterOpts::default()).await;
    let admin = cluster.admin(Duration::from_secs(60));
    create_guest(&admin, "vm1", "h1", None).await;
    create_guest(&admin, "node1", "h1", None).await;
    let (code, _, err) = cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["guest", "modify", "node1", "--cluster-node", "true"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cluster.cli(&[1, 2, 3], OPERATIONS_TOKEN, &["host", "drain", "h1", "--wait"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("drain of h1 stopped"), "{err}");
    assert!(out.contains("node1: it is a cluster node") && out.contains("--allow-offline"), "{out}");
    let h1 = admin.host(&Name::new("h1").unwrap()).await.unwrap().items;
    assert_eq!(h1.state, HostState::Active);
    // vm1 moved; node1 stayed.
    let st = check_history(&history(&admin).await, true);
    assert_ne!(st.guest(&Name::new("vm1").unwrap()).unwrap().owner.as_str(), "h1");
    assert_eq!(st.guest(&Name::new("node1").unwrap()).unwrap().owner.as_str(), "h1");

    // h3 drains (vm1 moves on if it went there), into maintenance; undrain of a host that is not
    // draining is refused; activate takes it out of maintenance.
    let (code, out, err) = cluster.cli(&[1, 2, 3], OPERATIONS_TOKEN, &["host", "drain", "h3", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("h3 drained and in maintenance"), "{out}");
    let (code, _, err) = cluster.cli(&[1, 2, 3], OPERATIONS_TOKEN, &["host", "undrain", "h3"]);
    assert_ne!(code, 0);
    assert!(err.contains("drain_refused") || err.contains("no drain is under way"), "{err}");
    let (code, _, err) = cluster.cli(&[1, 2, 3], OPERATIONS_TOKEN, &["host", "activate", "h3"]);
    assert_eq!(code, 0, "{err}");
}
