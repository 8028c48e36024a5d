//! A migration survives the loss of any coordinator, the leader included (SPEC §5): for every
//! non-terminal phase, the leader is SIGKILLed while a migration sits in that phase, and the new
//! leader's driver resumes it from the log alone; then all three coordinators are killed and
//! restarted at once in the middle of a transfer. Afterwards the whole event history satisfies
//! every invariant at every revision, the hypervisors run the guest where the log says, and
//! every agent holds the cluster's configuration.
mod common;

use common::cluster::*;
use common::saga::*;
use switchyard_protocol::Phase;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_survive_leader_loss_at_every_phase_and_a_full_restart() {
    // Each driver step waits 1.2 s, and transfers take 2 s: long enough to kill the leader while
    // the migration is in a given phase.
    let opts = ClusterOpts { step_delay_ms: 1200, sim_transfer_ms: 2000, ..Default::default() };
    let (mut cluster, agents) = cluster_with_agents(opts).await;
    let admin = cluster.client(&[1, 2, 3]);
    create_guest(&admin, "vm1", "h1", Some("pkg1")).await;

    // Every phase a migration can be in flight at (a packaged guest passes through all of them).
    let phases = Phase::ALL.into_iter().filter(|p| !p.is_terminal());
    let mut owner = "h1";
    for (i, phase) in phases.into_iter().enumerate() {
        let target = if owner == "h1" { "h2" } else { "h1" };
        let id = migrate(&admin, "vm1", target, &format!("a{i}")).await;
        let seen = wait_phase(&cluster, id, phase).await;
        assert_eq!(seen.phase, phase, "migration {id} passed {phase} before the leader could be killed");
        let leader = cluster.wait_leader(&cluster.alive_ids()).await;
        cluster.kill(leader);
        let killed = std::time::Instant::now();
        // Not a benchmark (that is the bench harness's job): printed so a run shows how long the
        // migration stood still.
        eventually("the next phase commit", std::time::Duration::from_secs(60), || async {
            read_migration(&cluster, id).await.filter(|m| m.phase != phase)
        })
        .await;
        eprintln!(
            "killed leader {leader} with migration {id} in phase {phase}: next phase committed {:?} later",
            killed.elapsed()
        );
        let m = wait_terminal(&cluster, id).await;
        assert_eq!(
            m.phase,
            Phase::Completed,
            "migration {id} (leader killed at {phase}) ended {:?}: {:?}",
            m.phase,
            m.error
        );
        assert!(m.freeze_time_ms.is_some(), "the source's freeze time is recorded");
        cluster.restart(leader);
        cluster.wait_leader(&[1, 2, 3]).await;
        owner = target;
    }

    // All three coordinators at once, mid-transfer.
    let target = if owner == "h1" { "h2" } else { "h1" };
    let id = migrate(&admin, "vm1", target, "a11").await;
    wait_phase(&cluster, id, Phase::Transferring).await;
    cluster.kill_all();
    for n in [1, 2, 3] {
        cluster.restart(n);
    }
    cluster.wait_leader(&[1, 2, 3]).await;
    let m = wait_terminal(&cluster, id).await;
    assert_eq!(m.phase, Phase::Completed, "after a full restart: {:?}", m.error);

    let events = history(&admin).await;
    let state = check_history(&events, true);
    assert_eq!(state.guest(&switchyard_protocol::Name::new("vm1").unwrap()).unwrap().owner.as_str(), target);
    assert!(state.package(&switchyard_protocol::Name::new("pkg1").unwrap()).unwrap().switching_enabled);
    wait_hypervisor_agrees(&cluster, "vm1").await;
    wait_agents_converged(&cluster, &agents).await;
}
