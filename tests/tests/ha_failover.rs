//! Package switching made real, on real QEMU guests (three coordinators, three hosts): a host
//! that crashes, hangs or is cut off loses its lease; the leader declares it failed and fails
//! its protected guests over to the right adoptive host, with fencing so that a guest never runs
//! twice (a checker samples every hypervisor all along); guests left down are listed with why;
//! a returning host learns from the log before it acts; and a leader coordinator killed at any
//! step of a failover leaves a saga the next leader completes.
mod common;

use std::time::Duration;

use common::cluster::*;
use common::ha::*;
use common::saga::*;
use common::vms::*;
use switchyard_agent::driver::VmState;
use switchyard_protocol::api::{HaStatus, ModifyGuestRequest, SwitchingRequest};
use switchyard_protocol::{Event, EventPayload, Name};

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

async fn ha_status(cluster: &TestCluster) -> HaStatus {
    cluster.client(&cluster.alive_ids()).ha_status().await.expect("ha status").items
}

/// Waits for the first event after revision `after` that `f` picks.
async fn wait_event(cluster: &TestCluster, after: u64, what: &str, f: impl Fn(&EventPayload) -> bool) -> Event {
    eventually(what, Duration::from_secs(90), || async {
        history(&cluster.client(&cluster.alive_ids())).await.into_iter().find(|e| e.revision > after && f(&e.payload))
    })
    .await
}

fn running(o: &switchyard_agent::driver::Observed) -> bool {
    o.state == VmState::Running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_host_s_protected_guests_run_on_their_adoptive_hosts_and_the_rest_are_listed_down() {
    let (cluster, mut hosts) = ha_cluster(true, false).await;
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));
    // vm1: package p1 on every host (configured_node: h2 first after h1). vm2: p2, switching
    // disabled on h2, so h3. vm3: no package. vm4: p4 with switching disabled.
    create_vm(&admin, "vm1", "h1", 32, Some("p1")).await;
    create_vm(&admin, "vm2", "h1", 32, Some("p2")).await;
    create_vm(&admin, "vm3", "h1", 32, None).await;
    create_vm(&admin, "vm4", "h1", 32, Some("p4")).await;
    let off = |node: Option<&str>| SwitchingRequest {
        enabled: false,
        node: node.map(n),
        reason: Some("test: excluded".into()),
        request_id: None,
    };
    admin.set_switching(&n("p2"), &off(Some("h2"))).await.unwrap();
    admin.set_switching(&n("p4"), &off(None)).await.unwrap();
    for g in ["vm1", "vm2", "vm3", "vm4"] {
        wait_runs_only_on(&cluster, g, "h1").await;
    }
    let before = history(&admin).await.last().map_or(0, |e| e.revision);
    let checker = TwoCopiesChecker::start(&cluster);

    let lost_at = crash(&cluster, &mut hosts[0]);
    wait_vm(&cluster, "h2", "vm1", "running after the failover", running).await;
    wait_vm(&cluster, "h3", "vm2", "running after the failover", running).await;
    for g in ["vm1", "vm2"] {
        wait_event(
            &cluster,
            0,
            &format!("{g}'s failover to complete"),
            |p| matches!(p, EventPayload::FailoverCompleted { guest, .. } if guest.as_str() == g),
        )
        .await;
    }
    let events = history(&admin).await;
    check_failover_bound(&events, before, "h1", lost_at, 60_000, 10_000);
    check_history(&events, true);

    // Left down, each with why.
    let status = ha_status(&cluster).await;
    assert_eq!(status.failed_hosts.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(), ["h1"]);
    let why = |g: &str| status.down.iter().find(|d| d.guest.as_str() == g).map(|d| d.why.clone());
    assert!(why("vm3").unwrap().contains("not in a failover package"), "{status:?}");
    assert!(why("vm4").unwrap().contains("switching disabled"), "{status:?}");
    assert_eq!((why("vm1"), why("vm2")), (None, None), "{status:?}");
    // The operator's view of the same.
    let (code, out, err) = cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["ha", "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("vm3  on h1: not in a failover package"), "{out}");
    let (code, out, err) = cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["host", "show", "h1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("failed") && out.contains("vm4: down"), "{out}");
    let (code, out, err) = cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["ha", "history"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("vm1  h1 ") && l.contains(" h2 ")), "{out}");
    let (code, out, err) = cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["package", "show", "p2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("h2  excluded: switching of package p2 is disabled on this node"), "{out}");
    let (code, out, err) = cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["events", "--from", "1", "--kind", "ha"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("host h1 FAILED") && out.contains("failover of vm1"), "{out}");

    // h1 comes back: it rejoins once it has caught up, never starts what moved, and runs its
    // own unprotected guests again.
    let h1 = &mut hosts[0];
    h1.watchdog.as_mut().unwrap().restart();
    h1.agent.restart();
    wait_event(
        &cluster,
        0,
        "h1 to recover",
        |p| matches!(p, EventPayload::HostRecovered { host } if host.as_str() == "h1"),
    )
    .await;
    wait_vm(&cluster, "h1", "vm3", "running again on its own host", running).await;
    wait_vm(&cluster, "h1", "vm4", "running again on its own host", running).await;
    for g in ["vm1", "vm2"] {
        let o = observe(&cluster, "h1", g).expect("defined on h1");
        assert!(!o.state.is_live(), "{g} is {:?} on h1", o.state);
    }
    let rounds = checker.finish();
    assert!(rounds > 10, "the checker sampled {rounds} rounds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_agent_s_guests_are_killed_by_its_watchdog_before_they_start_elsewhere() {
    let (cluster, hosts) = ha_cluster(true, false).await;
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));
    create_vm(&admin, "vm1", "h1", 32, Some("p1")).await;
    wait_runs_only_on(&cluster, "vm1", "h1").await;
    let checker = TwoCopiesChecker::start(&cluster);
    let watchdog = hosts[0].watchdog.as_ref().unwrap();
    eventually("h1's watchdog to be armed and petted", Duration::from_secs(30), || async {
        watchdog.lines().last().filter(|l| l.ends_with(" petted")).map(|_| ())
    })
    .await;

    // SIGSTOP: the agent hangs, its VM keeps running, nothing pets the watchdog.
    let before = history(&admin).await.last().map_or(0, |e| e.revision);
    let hung_at = now_ms();
    hosts[0].agent.pause();
    wait_vm(&cluster, "h2", "vm1", "running after the failover", running).await;
    let (fired_at, killed) = watchdog.fired().expect("the watchdog fired");
    assert_eq!(killed, 1, "{:?}", watchdog.lines());
    wait_event(&cluster, before, "vm1's failover to complete", |p| matches!(p, EventPayload::FailoverCompleted { .. }))
        .await;
    let events = history(&admin).await;
    check_failover_bound(&events, before, "h1", hung_at, 60_000, 10_000);
    let started = events.iter().find(|e| matches!(e.payload, EventPayload::FailoverStarted { .. })).unwrap();
    assert!(
        fired_at < started.time.0,
        "the watchdog fired at {fired_at}, after the failover started at {}",
        started.time.0
    );
    // The agent wakes up: it learns the host failed and the guest moved; nothing restarts here.
    hosts[0].agent.resume();
    wait_event(
        &cluster,
        0,
        "h1 to recover",
        |p| matches!(p, EventPayload::HostRecovered { host } if host.as_str() == "h1"),
    )
    .await;
    let o = observe(&cluster, "h1", "vm1").expect("defined on h1");
    assert!(!o.state.is_live(), "vm1 is {:?} on h1", o.state);
    // The healthy hosts' watchdogs, armed from the failover on, never fired.
    let h2 = hosts[1].watchdog.as_ref().unwrap();
    assert!(h2.lines().iter().any(|l| l.ends_with(" petted")), "{:?}", h2.lines());
    for h in &hosts[1..] {
        let w = h.watchdog.as_ref().unwrap();
        assert_eq!(w.fired(), None, "{}: {:?}", h.name, w.lines());
    }
    checker.finish();
    check_history(&history(&admin).await, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_host_fences_itself_before_its_guests_start_elsewhere() {
    let (cluster, hosts) = ha_cluster(false, true).await;
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));
    create_vm(&admin, "vm1", "h1", 32, Some("p1")).await;
    create_vm(&admin, "vm3", "h1", 32, None).await;
    wait_runs_only_on(&cluster, "vm1", "h1").await;
    wait_runs_only_on(&cluster, "vm3", "h1").await;
    let checker = TwoCopiesChecker::start(&cluster);

    let before = history(&admin).await.last().map_or(0, |e| e.revision);
    let cut_at = now_ms();
    hosts[0].cut();
    // Self-fencing stops the packaged guest; the unpackaged one keeps running.
    wait_vm(&cluster, "h1", "vm1", "stopped by self-fencing", |o| !o.state.is_live()).await;
    wait_vm(&cluster, "h2", "vm1", "running after the failover", running).await;
    wait_event(&cluster, before, "vm1's failover to complete", |p| matches!(p, EventPayload::FailoverCompleted { .. }))
        .await;
    check_failover_bound(&history(&admin).await, before, "h1", cut_at, 60_000, 10_000);
    assert!(observe(&cluster, "h1", "vm3").is_some_and(|o| running(&o)), "vm3 kept running on h1");

    hosts[0].heal();
    wait_event(
        &cluster,
        0,
        "h1 to recover",
        |p| matches!(p, EventPayload::HostRecovered { host } if host.as_str() == "h1"),
    )
    .await;
    // A change after the recovery reaches h1, so it has seen the whole failover.
    let req = ModifyGuestRequest { memory_mib: Some(48), ..Default::default() };
    admin.modify_guest(&n("vm3"), &req).await.unwrap();
    wait_vm(&cluster, "h1", "vm3", "redefined", |o| o.defined.as_ref().is_some_and(|(s, _)| s.memory_mib == 48)).await;
    let o = observe(&cluster, "h1", "vm1").expect("defined on h1");
    assert!(!o.state.is_live(), "vm1 is {:?} on h1 after the heal", o.state);
    assert!(observe(&cluster, "h2", "vm1").is_some_and(|o| running(&o)));
    checker.finish();
    check_history(&history(&admin).await, true);
}

/// The leader is SIGKILLed as each step of a failover commits (the host's failure, the
/// failover's start) and together with the host crash itself; each time the next leader
/// completes the failover from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_at_any_failover_step_leaves_a_saga_the_next_leader_completes() {
    let (mut cluster, mut hosts) = ha_cluster(false, false).await;
    let admin = cluster.admin(Duration::from_secs(60));
    create_vm(&admin, "vm1", "h1", 32, Some("p1")).await;
    wait_runs_only_on(&cluster, "vm1", "h1").await;
    let checker = TwoCopiesChecker::start(&cluster);
    // (host that owns vm1, where it goes next, when the leader dies)
    // configured_node over h1, h2, h3: the first eligible node in that order.
    let rounds = [("h1", "h2", "with the crash"), ("h2", "h1", "at HostFailed"), ("h1", "h2", "at FailoverStarted")];
    for (from, to, when) in rounds {
        eprintln!("round: vm1 on {from}; leader killed {when}");
        let before = history(&admin).await.last().map_or(0, |e| e.revision);
        let idx = HOSTS.iter().position(|h| *h == from).unwrap();
        let leader = cluster.wait_leader(&cluster.alive_ids()).await;
        crash(&cluster, &mut hosts[idx]);
        let step = match when {
            "with the crash" => None,
            "at HostFailed" => Some(
                wait_event(
                    &cluster,
                    before,
                    "the host's failure",
                    |p| matches!(p, EventPayload::HostFailed { host, .. } if host.as_str() == from),
                )
                .await,
            ),
            _ => Some(
                wait_event(
                    &cluster,
                    before,
                    "the failover's start",
                    |p| matches!(p, EventPayload::FailoverStarted { failed_host, .. } if failed_host.as_str() == from),
                )
                .await,
            ),
        };
        assert!(step.is_none_or(|e| e.revision > before));
        cluster.kill(leader);
        wait_vm(&cluster, to, "vm1", "running after the failover", running).await;
        let alive = cluster.alive_ids();
        eventually("the failover to complete", Duration::from_secs(90), || async {
            let events = history(&cluster.client(&alive)).await;
            first(&events, before, |p| matches!(p, EventPayload::FailoverCompleted { host, .. } if host.as_str() == to))
                .map(|_| ())
        })
        .await;
        cluster.restart(leader);
        hosts[idx].agent.restart();
        wait_event(
            &cluster,
            before,
            "the crashed host to recover",
            |p| matches!(p, EventPayload::HostRecovered { host } if host.as_str() == from),
        )
        .await;
    }
    checker.finish();
    let events = history(&cluster.client(&cluster.alive_ids())).await;
    let completed = events.iter().filter(|e| matches!(e.payload, EventPayload::FailoverCompleted { .. })).count();
    assert_eq!(completed, 3);
    check_history(&events, true);
}

/// A host lost in the middle of a live migration: as its source, the migration fails (switching
/// restored in the same commit) and the guest is failed over; as its target, the migration fails
/// and the guest keeps running on its source, protected again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_lost_mid_migration_ends_it_failed_with_switching_restored_and_the_guest_protected() {
    // 8 MiB of guest data at 2 MiB/s: the transfer lasts long enough to lose a host in the
    // middle of it.
    let opts = ClusterOpts { qemu_bandwidth_kib: Some(2048), qemu_guest_data_mib: 8, ..ClusterOpts::default() };
    let (cluster, mut hosts) = ha_cluster_with(false, false, opts).await;
    let admin = cluster.admin(Duration::from_secs(60));
    create_vm(&admin, "vm1", "h1", 32, Some("p1")).await;
    wait_runs_only_on(&cluster, "vm1", "h1").await;
    let checker = TwoCopiesChecker::start(&cluster);

    // The target is lost: the guest stays on its source.
    let m = lose_host_mid_migration(&cluster, &admin, &mut hosts[1], "h2", "a1").await;
    assert_eq!(m.phase, switchyard_protocol::Phase::Failed, "{m:?}");
    // Two causes race, both right: the leader declares h2 failed once its lease runs out, or the
    // source reports first that the transfer broke off with the target gone.
    let error = m.error.as_deref().unwrap_or_default();
    assert!(error.contains("target host h2 failed") || error.contains("transfer failed on h1"), "{m:?}");
    assert!(admin.package(&n("p1")).await.unwrap().items.package.switching_enabled, "switching restored");
    wait_vm(&cluster, "h1", "vm1", "still running on its source", running).await;
    hosts[1].agent.restart();
    wait_event(
        &cluster,
        0,
        "h2 to recover",
        |p| matches!(p, EventPayload::HostRecovered { host } if host.as_str() == "h2"),
    )
    .await;

    // The source is lost: the migration fails and the guest fails over.
    let m = lose_host_mid_migration(&cluster, &admin, &mut hosts[0], "h3", "a2").await;
    assert_eq!(m.phase, switchyard_protocol::Phase::Failed, "{m:?}");
    assert!(m.error.as_deref().unwrap_or_default().contains("source host h1 failed"), "{m:?}");
    let done = wait_event(
        &cluster,
        0,
        "vm1's failover to complete",
        |p| matches!(p, EventPayload::FailoverCompleted { guest, .. } if guest.as_str() == "vm1"),
    )
    .await;
    let EventPayload::FailoverCompleted { host, .. } = &done.payload else { unreachable!() };
    wait_vm(&cluster, host.as_str(), "vm1", "running after the failover", running).await;
    checker.finish();
    check_history(&history(&admin).await, true);
}

/// The same losses at the worst moment: a guest whose memory is all zero pages moves in a few
/// milliseconds, so the host is lost after the hypervisor moved the guest and before any agent
/// could report it. Whatever the migration's end, the guest ends running on exactly one live
/// host, the one the log names, and never on two: with the target lost, the source starts its
/// guest again once the target is declared failed (its fence stopped the copy there); with
/// the source lost, the failover goes to the target, where the guest may already run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_lost_right_after_the_hypervisor_moved_the_guest_leaves_one_copy_where_the_log_says() {
    let (cluster, mut hosts) = ha_cluster(false, false).await;
    let admin = cluster.admin(Duration::from_secs(60));
    create_vm(&admin, "vm1", "h1", 32, Some("p1")).await;
    wait_runs_only_on(&cluster, "vm1", "h1").await;
    let checker = TwoCopiesChecker::start(&cluster);

    // The target is lost.
    let m = lose_host_mid_migration(&cluster, &admin, &mut hosts[1], "h2", "b1").await;
    let owner = wait_settled(&cluster, "vm1", &["h1", "h3"]).await;
    eprintln!("target lost: migration {} ended {} ({:?}); vm1 runs on {owner}", m.id, m.phase, m.error);
    // Declared failed and recovered, or (when the source saw the transfer break and ended the
    // migration first) back before its lease ran out.
    hosts[1].agent.restart();
    eventually("h2 to be active again", Duration::from_secs(90), || async {
        let h2 = admin.host(&n("h2")).await.ok()?.items;
        (h2.state == switchyard_protocol::HostState::Active).then_some(())
    })
    .await;

    // The source is lost.
    let target = if owner == "h1" { "h3" } else { "h1" };
    let source = HOSTS.iter().position(|h| *h == owner).expect("a known host");
    let m = lose_host_mid_migration(&cluster, &admin, &mut hosts[source], target, "b2").await;
    let live: Vec<&str> = HOSTS.iter().copied().filter(|h| *h != owner).collect();
    let now = wait_settled(&cluster, "vm1", &live).await;
    eprintln!("source {owner} lost: migration {} ended {} ({:?}); vm1 runs on {now}", m.id, m.phase, m.error);
    checker.finish();
    check_history(&history(&admin).await, true);
}

/// Migrates vm1 to `target` and crashes `lost` (its source or its target) as soon as the
/// migration is `transferring`; answers the migration once it has ended.
async fn lose_host_mid_migration(
    cluster: &TestCluster,
    admin: &switchyard_client::Client,
    lost: &mut HaHost,
    target: &str,
    request_id: &str,
) -> switchyard_protocol::Migration {
    let id = migrate(admin, "vm1", target, request_id).await;
    wait_phase(cluster, id, switchyard_protocol::Phase::Transferring).await;
    crash(cluster, lost);
    wait_terminal(cluster, id).await
}

/// Waits until the log names one of `hosts` as `guest`'s owner, no failover of it is under
/// way, and it runs there; answers that host.
async fn wait_settled(cluster: &TestCluster, guest: &str, hosts: &[&str]) -> String {
    eventually(&format!("{guest} to run on one of {hosts:?}, as the log says"), Duration::from_secs(90), || async {
        let c = cluster.client(&cluster.alive_ids());
        let owner = c.guest(&n(guest)).await.ok()?.items.guest.owner.to_string();
        let settled = hosts.contains(&owner.as_str())
            && ha_status(cluster).await.failovers.iter().all(|f| f.guest.as_str() != guest)
            && observe(cluster, &owner, guest).is_some_and(|o| running(&o));
        settled.then_some(owner)
    })
    .await
}

/// `failback_policy = automatic`: once its primary node is back, the guest moves home online,
/// through a normal migration.
///
/// The agents renew their leases at the product's default interval (1 s): the leader readmits
/// the returning host on a renewal it answers "failed", and requests the failback at once, so
/// the host receives the guest during the second until its next renewal is answered, while
/// its own reconciler still holds the lease lost. The move must wait for the lease, not have
/// its arriving copy fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_failback_moves_the_guest_home_online_when_its_primary_node_returns() {
    let (cluster, mut hosts) =
        ha_cluster_with(false, false, ClusterOpts { report_interval_ms: 1000, ..Default::default() }).await;
    let admin = cluster.admin(Duration::from_secs(60));
    create_vm(&admin, "vm1", "h1", 32, Some("p1")).await;
    let (code, _, err) = cluster.cli(
        &[1, 2, 3],
        ADMIN_TOKEN,
        &["package", "modify", "p1", "--nodes", "h1,h3", "--failback-policy", "automatic"],
    );
    assert_eq!(code, 0, "{err}");
    wait_runs_only_on(&cluster, "vm1", "h1").await;
    let checker = TwoCopiesChecker::start(&cluster);
    crash(&cluster, &mut hosts[0]);
    wait_vm(&cluster, "h3", "vm1", "running after the failover (h2 is not in the node list)", running).await;
    hosts[0].agent.restart();
    let requested = wait_event(
        &cluster,
        0,
        "the failback to be requested",
        |p| matches!(p, EventPayload::MigrationRequested { migration } if migration.target.as_str() == "h1"),
    )
    .await;
    let EventPayload::MigrationRequested { migration } = &requested.payload else { unreachable!() };
    assert!(migration.reason.as_deref().unwrap_or_default().contains("automatic failback"), "{migration:?}");
    let m = wait_terminal(&cluster, migration.id).await;
    assert_eq!(m.phase, switchyard_protocol::Phase::Completed, "{m:?}");
    wait_runs_only_on(&cluster, "vm1", "h1").await;
    checker.finish();
    assert!(
        runs_in_received_process(&cluster, "h1", "vm1"),
        "vm1 runs on h1 in the process the failback moved it into, not one started afresh after a fence"
    );
    check_history(&history(&admin).await, true);
}

/// `min_package_node`: a failed host's packages spread over the eligible nodes, each to the one
/// running the fewest packages when its failover is decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_package_node_spreads_a_failed_host_s_packages() {
    let (cluster, mut hosts) = ha_cluster(false, false).await;
    let admin = cluster.admin(Duration::from_secs(60));
    for (g, p) in [("vma", "pa"), ("vmb", "pb")] {
        create_vm(&admin, g, "h1", 32, Some(p)).await;
        let (code, _, err) =
            cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["package", "modify", p, "--failover-policy", "min_package_node"]);
        assert_eq!(code, 0, "{err}");
    }
    wait_runs_only_on(&cluster, "vma", "h1").await;
    wait_runs_only_on(&cluster, "vmb", "h1").await;
    let checker = TwoCopiesChecker::start(&cluster);
    crash(&cluster, &mut hosts[0]);
    let mut places = Vec::new();
    for g in ["vma", "vmb"] {
        let done = wait_event(
            &cluster,
            0,
            &format!("{g}'s failover to complete"),
            |p| matches!(p, EventPayload::FailoverCompleted { guest, .. } if guest.as_str() == g),
        )
        .await;
        let EventPayload::FailoverCompleted { host, .. } = done.payload else { unreachable!() };
        wait_vm(&cluster, host.as_str(), g, "running after the failover", running).await;
        places.push(host.to_string());
    }
    places.sort();
    assert_eq!(places, ["h2", "h3"], "one package on each node");
    checker.finish();
    check_history(&history(&admin).await, true);
}

/// A failover target whose hypervisor cannot start the guest: it makes sure no copy runs there,
/// reports the failure (releasing the attempt), and the next node of the list runs the guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_cannot_start_the_guest_releases_it_to_the_next_node() {
    let (cluster, mut hosts) = ha_cluster(false, false).await;
    let admin = cluster.admin(Duration::from_secs(60));
    create_vm(&admin, "vm1", "h1", 32, Some("p1")).await;
    wait_runs_only_on(&cluster, "vm1", "h1").await;
    // QEMU cannot open its log on h2 (a folder where the file goes): every start there fails.
    let log = cluster.qemu_dir("h2").join("vm1").join("qemu.log");
    let _ = std::fs::remove_file(&log);
    std::fs::create_dir_all(&log).unwrap();
    let checker = TwoCopiesChecker::start(&cluster);
    crash(&cluster, &mut hosts[0]);
    wait_vm(&cluster, "h3", "vm1", "running on the next node", running).await;
    let events = history(&admin).await;
    let failed = events
        .iter()
        .find_map(|e| match &e.payload {
            EventPayload::FailoverAttemptFailed { host, released, reason, .. } if host.as_str() == "h2" => {
                Some((*released, reason.clone()))
            }
            _ => None,
        })
        .expect("h2's attempt failed");
    assert!(failed.0, "h2 released its attempt with its report: {failed:?}");
    wait_event(
        &cluster,
        0,
        "vm1's failover to complete on h3",
        |p| matches!(p, EventPayload::FailoverCompleted { host, .. } if host.as_str() == "h3"),
    )
    .await;
    let o = observe(&cluster, "h2", "vm1").expect("defined on h2");
    assert!(!o.state.is_live(), "vm1 is {:?} on h2", o.state);
    checker.finish();
    check_history(&history(&admin).await, true);
}

/// A failover target whose start takes longer than `ha.start_timeout_ms`: the leader ends the
/// attempt, the target stops the copy its late start left and releases the attempt, and only
/// then does the next node start the guest — never two copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_the_leader_ends_is_released_by_its_target_before_the_next_node_starts() {
    let opts = ClusterOpts { start_timeout_ms: 1500, ..ClusterOpts::default() };
    let (cluster, mut hosts) = ha_cluster_with(false, false, opts).await;
    let admin = cluster.admin(Duration::from_secs(60));
    create_vm(&admin, "vm1", "h1", 32, Some("p1")).await;
    wait_runs_only_on(&cluster, "vm1", "h1").await;
    // h2's QEMU takes 5 s to start a guest (a hypervisor that hangs, then completes).
    let dir = cluster.dir().join("agent-h2");
    let slow = dir.join("slow-qemu");
    std::fs::write(
        &slow,
        "#!/bin/sh\ncase \"$*\" in *--version*) ;; *) sleep 5 ;; esac\nexec qemu-system-x86_64 \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config_path = dir.join("agent.toml");
    let mut config: switchyard_agent::daemon::AgentConfig =
        toml::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    match &mut config.driver {
        switchyard_agent::driver::DriverConfig::Qemu(q) => q.binary = slow.clone(),
        other => panic!("{other:?}"),
    }
    switchyard_testkit::cluster::write_toml(&config_path, &config).unwrap();
    hosts[1].agent.kill();
    hosts[1].agent.restart();
    let checker = TwoCopiesChecker::start(&cluster);
    crash(&cluster, &mut hosts[0]);
    let released = wait_event(
        &cluster,
        0,
        "h2 to release its attempt",
        |p| matches!(p, EventPayload::FailoverAttemptReleased { host, .. } if host.as_str() == "h2"),
    )
    .await;
    wait_vm(&cluster, "h3", "vm1", "running on the next node", running).await;
    let events = history(&admin).await;
    let ended = events
        .iter()
        .find(|e| matches!(&e.payload, EventPayload::FailoverAttemptFailed { host, released: false, .. } if host.as_str() == "h2"))
        .expect("the leader ended h2's attempt");
    let next = events
        .iter()
        .find(|e| matches!(&e.payload, EventPayload::FailoverStarted { to, .. } if to.as_str() == "h3"))
        .expect("the failover went on to h3");
    assert!(ended.revision < released.revision && released.revision < next.revision);
    // h2's late start did run the guest for a moment, and stopped it before h3 was asked.
    let h2_log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    assert!(h2_log.contains("the failover attempt here ended"), "h2 stopped its late copy");
    let o = observe(&cluster, "h2", "vm1").expect("defined on h2");
    assert!(!o.state.is_live(), "vm1 is {:?} on h2", o.state);
    checker.finish();
    check_history(&history(&admin).await, true);
}
