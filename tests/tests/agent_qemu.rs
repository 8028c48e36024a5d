//! Agents on real QEMU guests (three hosts, three coordinators): the log's guest changes reach
//! the hypervisor on the right host, drift made behind an agent's back is reported and
//! repaired, live migrations move the real VM — with the leader coordinator SIGKILLed at each
//! phase, and with an agent SIGKILLed mid-transfer — an offline move of a running
//! cluster-node guest stops it first, and a move whose stream the target never received (the
//! source's QEMU answered `completed`) fails with the guest resumed on its source, in the same
//! process, both agents SIGKILLed on the failure; a move ordered while that rollback still
//! waits for its target's word moves the guest once it is done. A checker samples every hypervisor all
//! along and fails the test if a guest ever runs on two hosts at once.
mod common;

use std::time::Duration;

use common::cluster::*;
use common::metrics::*;
use common::saga::*;
use common::vms::*;
use switchyard_agent::driver::VmState;
use switchyard_protocol::api::{
    CreateGuestRequest, Drift, HostView, MigrateRequest, ModifyGuestRequest, Read, RemoveParams,
};
use switchyard_protocol::{EventPayload, MigrationId, MigrationKind, Name, Phase, RunState};

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// The leader's view of a host (reports live on the leader).
async fn host_view(cluster: &TestCluster, host: &str) -> Option<HostView> {
    let r: Read<HostView> = cluster.client(&cluster.alive_ids()).host(&n(host)).await.ok()?;
    Some(r.items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_changes_reach_the_hypervisor_on_the_right_host() {
    let (cluster, _agents) = qemu_cluster(ClusterOpts::default()).await;
    let checker = TwoCopiesChecker::start(&cluster);
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));

    // Created: defined on every host, running on its owner only.
    create_vm(&admin, "g1", "h2", 32, None).await;
    wait_runs_only_on(&cluster, "g1", "h2").await;

    // Modified while running: every definition changes; the running VM keeps its memory until
    // its next start, and `host show` lists the change as pending.
    let req = ModifyGuestRequest { memory_mib: Some(48), ..Default::default() };
    admin.modify_guest(&n("g1"), &req).await.unwrap();
    for h in HOSTS {
        wait_vm(&cluster, h, "g1", "defined with 48 MiB", |o| {
            o.defined.as_ref().is_some_and(|(s, _)| s.memory_mib == 48)
        })
        .await;
    }
    let o = observe(&cluster, "h2", "g1").unwrap();
    assert_eq!((o.state, o.running_spec.map(|s| s.memory_mib)), (VmState::Running, Some(32)));
    eventually("h2 reports the pending change", Duration::from_secs(30), || async {
        let hv = host_view(&cluster, "h2").await?.sync?.hypervisor?;
        hv.pending.iter().any(|p| p.guest.as_str() == "g1" && p.fields == ["memory_mib"]).then_some(())
    })
    .await;
    eventually("guest show to list the pending change on h2", Duration::from_secs(30), || async {
        let v = cluster.client(&cluster.alive_ids()).guest(&n("g1")).await.ok()?.items;
        v.hosts.iter().any(|h| h.host.as_str() == "h2" && h.pending == ["memory_mib"]).then_some(())
    })
    .await;

    // Stopped, then started: the new memory size applies.
    let stop = ModifyGuestRequest { run_state: Some(RunState::Stopped), ..Default::default() };
    admin.modify_guest(&n("g1"), &stop).await.unwrap();
    wait_vm(&cluster, "h2", "g1", "stopped", |o| o.state == VmState::ShutOff).await;
    let start = ModifyGuestRequest { run_state: Some(RunState::Running), ..Default::default() };
    admin.modify_guest(&n("g1"), &start).await.unwrap();
    let o = wait_vm(&cluster, "h2", "g1", "running", |o| o.state == VmState::Running).await;
    assert_eq!(o.running_spec.map(|s| s.memory_mib), Some(48));
    eventually("the pending change to clear", Duration::from_secs(30), || async {
        let hv = host_view(&cluster, "h2").await?.sync?.hypervisor?;
        hv.pending.is_empty().then_some(())
    })
    .await;

    // Removed: stopped and undefined everywhere.
    let params = RemoveParams::default();
    admin.remove_guest(&n("g1"), &params).await.unwrap();
    for h in HOSTS {
        eventually(&format!("g1 gone from {h}"), Duration::from_secs(60), || async {
            observe(&cluster, h, "g1").is_none().then_some(())
        })
        .await;
    }
    eprintln!("checker sampled {} rounds", checker.finish());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_behind_an_agents_back_is_reported_and_repaired() {
    let (cluster, agents) = qemu_cluster(ClusterOpts::default()).await;
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));
    create_vm(&admin, "g1", "h1", 32, None).await;
    wait_runs_only_on(&cluster, "g1", "h1").await;

    // The VM killed on its owner: reported (DIVERGED), then started again.
    let pid: i32 = std::fs::read_to_string(cluster.qemu_dir("h1").join("g1/qemu.pid")).unwrap().trim().parse().unwrap();
    // SAFETY: kill(2) of the QEMU process of this test's guest.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    eventually("h1 to report g1 not running", Duration::from_secs(30), || async {
        let hv = host_view(&cluster, "h1").await?.sync?.hypervisor?;
        hv.drift
            .iter()
            .any(|d| d.guest.as_str() == "g1" && matches!(d.drift[..], [Drift::NotRunning { .. }]))
            .then_some(())
    })
    .await;
    let o = wait_vm(&cluster, "h1", "g1", "running again", |o| o.state == VmState::Running).await;
    assert_eq!(o.running_spec.map(|s| s.memory_mib), Some(32));
    // The repair is in the guest's history, with its reason.
    eventually("the repair in g1's history", Duration::from_secs(30), || async {
        history(&cluster.client(&[1, 2, 3])).await.into_iter().find_map(|e| match e.payload {
            EventPayload::GuestRepaired { guest, host, action, reason }
                if guest.as_str() == "g1" && host.as_str() == "h1" && action == "start" =>
            {
                Some(reason)
            }
            _ => None,
        })
    })
    .await;

    // A definition edited by hand on another host: reported, then rewritten from the log.
    let def = cluster.qemu_dir("h3").join("g1/definition.json");
    let edited = std::fs::read_to_string(&def).unwrap().replace("\"memory_mib\": 32", "\"memory_mib\": 64");
    assert!(edited.contains("\"memory_mib\": 64"), "{edited}");
    std::fs::write(&def, edited).unwrap();
    wait_vm(&cluster, "h3", "g1", "defined from the log again", |o| {
        o.defined.as_ref().is_some_and(|(s, _)| s.memory_mib == 32)
    })
    .await;

    // A guest the log does not know: reported, never touched.
    let stray = hypervisor(&cluster, "h2");
    let mut spec = observe(&cluster, "h1", "g1").unwrap().defined.unwrap().0;
    spec.memory_mib = 32;
    // Written without the agent's version mark, as an operator's own tool would leave it, and
    // in one rename: a definition the agent saw *with* a mark would be one it manages, which
    // the log does not know, and it would remove it.
    let dir = cluster.qemu_dir("h2").join("stray");
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = cluster.qemu_dir("h2").join("stray-definition.tmp");
    std::fs::write(&tmp, serde_json::json!({ "spec": spec }).to_string()).unwrap();
    std::fs::rename(&tmp, dir.join("definition.json")).unwrap();
    stray.start(&n("stray")).unwrap();
    eventually("h2 to report the stray guest and h1 to have repaired", Duration::from_secs(30), || async {
        let h2 = host_view(&cluster, "h2").await?.sync?.hypervisor?;
        let h1 = host_view(&cluster, "h1").await?.sync?.hypervisor?;
        let stray_seen = h2.drift.iter().any(|d| d.guest.as_str() == "stray" && d.drift == [Drift::Unknown]);
        (stray_seen && h1.repairs >= 1 && h1.drift.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        observe(&cluster, "h2", "stray").unwrap().state,
        VmState::Running,
        "a guest unknown to the log is never touched"
    );

    // The agents' metrics tell the same: h1 repaired by starting g1 again, its starts and
    // observations timed; h2 saw a guest that differs from the log.
    let h1 = scrape_agent(&cluster, &agents[0]).await;
    assert!(get(&h1, "switchyard_agent_repairs_total", &[]) >= 1.0);
    assert!(get(&h1, "switchyard_agent_reconcile_actions_total", &[("action", "start"), ("outcome", "ok")]) >= 2.0);
    assert!(get(&h1, "switchyard_agent_driver_call_seconds_count", &[("call", "start"), ("outcome", "ok")]) >= 2.0);
    assert!(get(&h1, "switchyard_agent_driver_call_seconds_count", &[("call", "observe"), ("outcome", "ok")]) >= 1.0);
    let h2 = scrape_agent(&cluster, &agents[1]).await;
    assert!(get(&h2, "switchyard_agent_drift_guests", &[]) >= 1.0, "the stray guest");
    stray.stop(&n("stray"), true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migrations_of_a_real_vm_survive_leader_loss_at_every_phase() {
    // Driver steps wait 1.2 s; QEMU sends the guest's 1 MiB of data at 256 KiB/s (about 4 s):
    // long enough to kill the leader while the migration sits in each phase.
    let opts = ClusterOpts {
        step_delay_ms: 1200,
        qemu_bandwidth_kib: Some(256),
        qemu_guest_data_mib: 1,
        ..Default::default()
    };
    let (mut cluster, agents) = qemu_cluster(opts).await;
    let checker = TwoCopiesChecker::start(&cluster);
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));
    // In a package: its migrations pass through every phase (switching disabled and restored).
    create_vm(&admin, "vm1", "h1", 32, Some("pkg1")).await;
    wait_runs_only_on(&cluster, "vm1", "h1").await;

    let phases = Phase::ALL.into_iter().filter(|p| !p.is_terminal() && *p != Phase::Requested);
    let mut owner = "h1";
    for (i, phase) in phases.enumerate() {
        let target = if owner == "h1" { "h3" } else { "h1" };
        let id = migrate(&admin, "vm1", target, &format!("c{i}")).await;
        let seen = wait_phase(&cluster, id, phase).await;
        assert_eq!(
            seen.phase, phase,
            "migration {id} passed {phase} before the leader could be killed: {:?}",
            seen.error
        );
        let leader = cluster.wait_leader(&cluster.alive_ids()).await;
        cluster.kill(leader);
        let m = wait_terminal(&cluster, id).await;
        assert_eq!(m.phase, Phase::Completed, "migration {id} (leader killed at {phase}): {:?}", m.error);
        let freeze = m.freeze_time_ms.expect("QEMU's freeze time is in the migration's record");
        // QEMU's total time and bytes sent, from the migration's history.
        let shown = cluster.client(&cluster.alive_ids()).migration(id).await.unwrap().items;
        let t = shown.transfer.expect("QEMU's transfer figures are in the migration's history");
        assert!(t.total_time_ms >= freeze && t.transferred_bytes > 0, "{t:?}");
        eprintln!(
            "leader killed at {phase}: migration {id} completed, QEMU downtime {freeze} ms, total {} ms, {} bytes",
            t.total_time_ms, t.transferred_bytes
        );
        cluster.restart(leader);
        cluster.wait_leader(&[1, 2, 3]).await;
        wait_runs_only_on(&cluster, "vm1", target).await;
        owner = target;
    }
    check_history(&settled_history(&cluster).await, true);
    wait_agents_converged(&cluster, &agents).await;
    eprintln!("checker sampled {} rounds", checker.finish());
}

/// The whole history, once the coordinator it is read from has applied every migration's end
/// (a coordinator just restarted may still be catching up).
async fn settled_history(cluster: &TestCluster) -> Vec<switchyard_protocol::Event> {
    let admin = cluster.client(&[1, 2, 3]);
    eventually("a history in which every migration has ended", Duration::from_secs(60), || async {
        let events = history(&admin).await;
        let mut state = switchyard_protocol::ClusterState::default();
        for e in &events {
            state.evolve(e);
        }
        let settled = state.in_flight_migrations().next().is_none();
        settled.then_some(events)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_transfer_converges() {
    // The guest's 1 MiB of data at 256 KiB/s: the transfer lasts about 4 s, so the agent is
    // killed while it runs.
    let opts = ClusterOpts { qemu_bandwidth_kib: Some(256), qemu_guest_data_mib: 1, ..Default::default() };
    let (cluster, mut agents) = qemu_cluster(opts).await;
    let checker = TwoCopiesChecker::start(&cluster);
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));
    create_vm(&admin, "vm1", "h1", 32, None).await;
    wait_runs_only_on(&cluster, "vm1", "h1").await;
    for (i, (victim, target)) in [(0usize, "h2"), (0usize, "h1")].into_iter().enumerate() {
        // h1's agent both times: first as the source, then (moving back) as the target.
        let id = migrate(&admin, "vm1", target, &format!("d{i}")).await;
        wait_phase(&cluster, id, Phase::Transferring).await;
        agents[victim].kill();
        agents[victim].restart();
        let m = wait_terminal(&cluster, id).await;
        assert_eq!(m.phase, Phase::Completed, "agent {} killed mid-transfer: {:?}", agents[victim].host, m.error);
        wait_runs_only_on(&cluster, "vm1", target).await;
    }
    check_history(&settled_history(&cluster).await, true);
    wait_agents_converged(&cluster, &agents).await;
    eprintln!("checker sampled {} rounds", checker.finish());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_move_of_a_running_cluster_node_guest_stops_it_first() {
    let (cluster, _agents) = qemu_cluster(ClusterOpts::default()).await;
    let checker = TwoCopiesChecker::start(&cluster);
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));
    let req = CreateGuestRequest {
        name: n("sg1"),
        owner: n("h1"),
        vcpus: 1,
        memory_mib: 32,
        disks: vec![],
        networks: vec![],
        online_migration: false,
        cluster_node: true,
        package: None,
        run_state: RunState::Running,
        request_id: None,
        anti_affinity: None,
    };
    admin.create_guest(&req).await.unwrap();
    wait_runs_only_on(&cluster, "sg1", "h1").await;
    let migrate = |offline: bool, allow_stop: bool| MigrateRequest {
        guest: n("sg1"),
        target: n("h2"),
        offline,
        allow_stop,
        reason: None,
        request_id: None,
    };
    // Never online; offline only with leave to stop it.
    let e = admin.migrate(&migrate(false, false)).await.unwrap_err();
    assert_eq!(e.code(), Some("online_migration_disabled"), "{e}");
    let e = admin.migrate(&migrate(true, false)).await.unwrap_err();
    assert_eq!(e.code(), Some("guest_running"), "{e}");
    assert!(e.to_string().contains("--allow-stop"), "{e}");
    let id = MigrationId(admin.migrate(&migrate(true, true)).await.unwrap().first_revision);
    let m = wait_terminal(&cluster, id).await;
    assert_eq!((m.phase, m.kind), (Phase::Completed, MigrationKind::OfflineStop), "{:?}", m.error);
    // Stopped on h1, started on h2 (a fresh process: it was not moved running).
    wait_runs_only_on(&cluster, "sg1", "h2").await;
    let history = settled_history(&cluster).await;
    check_history(&history, true);
    eprintln!("checker sampled {} rounds", checker.finish());
}

/// Every migration port on `address`, held by something that takes a migration stream whole
/// and drops it: the source's QEMU sends a tiny guest's stream and answers `completed`, as when
/// the target refused the stream only after the source had sent it all, while the target's
/// QEMU cannot listen there. Dropped, it frees the ports.
struct StreamSink {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    taken: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl StreamSink {
    fn hold(address: &str, first_port: u16) -> StreamSink {
        use std::io::Read as _;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads = (0..switchyard_testkit::MIGRATION_PORTS)
            .map(|i| {
                let l = std::net::TcpListener::bind((address, first_port + i)).expect("hold a migration port");
                l.set_nonblocking(true).unwrap();
                let (stop, taken) = (stop.clone(), taken.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match l.accept() {
                            Ok((mut s, _)) => {
                                s.set_nonblocking(false).unwrap();
                                let mut sink = Vec::new();
                                let _ = s.read_to_end(&mut sink);
                                taken.fetch_add(sink.len(), Ordering::SeqCst);
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                })
            })
            .collect();
        StreamSink { stop, taken, threads }
    }

    fn bytes_taken(&self) -> usize {
        self.taken.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for StreamSink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn qemu_pid(cluster: &TestCluster, host: &str, guest: &str) -> String {
    let path = cluster.qemu_dir(host).join(guest).join("qemu.pid");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_its_target_never_received_leaves_the_guest_running_on_its_source() {
    // The migration fails once it has waited 5 s for the target.
    let opts = ClusterOpts { transferring_timeout_ms: 5000, ..Default::default() };
    let (cluster, mut agents) = qemu_cluster(opts).await;
    let checker = TwoCopiesChecker::start(&cluster);
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));
    create_vm(&admin, "vm1", "h1", 32, None).await;
    wait_runs_only_on(&cluster, "vm1", "h1").await;
    let pid = qemu_pid(&cluster, "h1", "vm1");

    // h2's address is 127.0.0.12 (`register_loopback_hosts`).
    let sink = StreamSink::hold("127.0.0.12", cluster.migration_port);
    let id = migrate(&admin, "vm1", "h2", "f0").await;
    let m = wait_terminal(&cluster, id).await;
    assert_eq!(m.phase, Phase::Failed, "{:?}", m.error);
    let error = m.error.unwrap_or_default();
    assert!(error.contains("waiting for target h2 to confirm"), "the source finished its transfer: {error}");
    assert!(sink.bytes_taken() > 0, "the stream went to the sink");
    // Both agents are SIGKILLed as soon as the failure is seen and start again: whatever of
    // the rollback they had done, they pick it up from the log and their journals.
    for a in agents.iter_mut().take(2) {
        a.kill();
        a.restart();
    }

    // h2 says no copy is there (nothing ever ran there), and h1 resumes the copy its QEMU
    // left paused: the same process, memory and all, not a fresh start.
    eventually("h2 to say no copy of vm1 is there", Duration::from_secs(30), || async {
        let d = cluster.client(&cluster.alive_ids()).migration(id).await.ok()?.items;
        (d.target_runs == Some(false)).then_some(())
    })
    .await;
    wait_runs_only_on(&cluster, "vm1", "h1").await;
    assert_eq!(qemu_pid(&cluster, "h1", "vm1"), pid, "vm1 runs on in the QEMU process it ran in before the move");

    // With the ports free again, the guest moves.
    drop(sink);
    let id = migrate(&admin, "vm1", "h2", "f1").await;
    let m = wait_terminal(&cluster, id).await;
    assert_eq!(m.phase, Phase::Completed, "{:?}", m.error);
    wait_runs_only_on(&cluster, "vm1", "h2").await;
    let history = settled_history(&cluster).await;
    let checks: Vec<_> =
        history.iter().filter(|e| matches!(e.payload, EventPayload::MigrationTargetChecked { .. })).collect();
    assert_eq!(checks.len(), 1, "one word from the failed migration's target: {checks:?}");
    check_history(&history, true);
    wait_agents_converged(&cluster, &agents).await;
    eprintln!("checker sampled {} rounds", checker.finish());
}

/// A migration requested while the last one's rollback still waits for its target's word moves
/// the guest once that rollback is done. The first move's stream goes to a sink and its target's
/// agent is down, so nothing says whether the guest ran there and the source's copy stays
/// paused when the second move is ordered. The source must not take that copy for a transfer of
/// the second move (the new target would wait for a guest that never comes), and the first
/// move's target, back up, still owes its word though a newer move of the guest exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_ordered_during_the_last_ones_rollback_waits_for_it() {
    // Long leases: h2's agent is down for a while, and this test is not about host failure.
    let opts = ClusterOpts { transferring_timeout_ms: 20_000, lease_ms: 60_000, ..Default::default() };
    let (cluster, mut agents) = qemu_cluster(opts).await;
    let checker = TwoCopiesChecker::start(&cluster);
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));
    create_vm(&admin, "vm1", "h1", 32, None).await;
    wait_runs_only_on(&cluster, "vm1", "h1").await;
    let pid = qemu_pid(&cluster, "h1", "vm1");

    let sink = StreamSink::hold("127.0.0.12", cluster.migration_port);
    let first = migrate(&admin, "vm1", "h2", "f0").await;
    eventually("the first move's stream to end in the sink", Duration::from_secs(30), || async {
        (sink.bytes_taken() > 0).then_some(())
    })
    .await;
    agents[1].kill();
    let m = wait_terminal(&cluster, first).await;
    assert_eq!(m.phase, Phase::Failed, "{:?}", m.error);
    assert!(m.error.unwrap_or_default().contains("waiting for target h2 to confirm"));
    assert_eq!(observe(&cluster, "h1", "vm1").map(|o| o.state), Some(VmState::Migrated), "paused until h2's word");

    let second = migrate(&admin, "vm1", "h3", "f1").await;
    eventually("the second move to be transferring", Duration::from_secs(30), || async {
        read_migration(&cluster, second).await.filter(|m| m.phase == Phase::Transferring)
    })
    .await;
    agents[1].restart();
    let m = wait_terminal(&cluster, second).await;
    assert_eq!(m.phase, Phase::Completed, "{:?}", m.error);
    let d = cluster.client(&cluster.alive_ids()).migration(first).await.unwrap().items;
    assert_eq!(d.target_runs, Some(false), "h2 said no copy is there");
    wait_runs_only_on(&cluster, "vm1", "h3").await;
    assert_ne!(qemu_pid(&cluster, "h3", "vm1"), pid);
    drop(sink);
    check_history(&settled_history(&cluster).await, true);
    wait_agents_converged(&cluster, &agents).await;
    eprintln!("checker sampled {} rounds", checker.finish());
}
