//! A transfer ordered by a committed `transferring` phase does not wait for a leader (SPEC §5,
//! §8 "an in-flight migration making progress again"): the source agent learns of the order
//! only after two of the three coordinators are gone, and must still start the transfer, from
//! the one coordinator left, which cannot elect a leader. Before, the agent's read of the
//! target's address was linearizable and needed a leader, so the transfer waited for the
//! election (measured: ≈ 250 ms more per leader kill in the benchmark). When the coordinators
//! come back the migration completes and the history satisfies every invariant.
//!
//! Two ways for the source agent to miss the order: it is frozen (SIGSTOP) and resumed, or it is
//! killed and started again. A restarted agent must also learn the in-flight migrations it takes
//! part in, and with no leader it can only learn them from a coordinator that has applied its
//! cursor (a stale read checked against it).
mod common;

use std::time::Duration;

use common::cluster::*;
use common::saga::*;
use switchyard_protocol::{Name, Phase};

/// How the source agent misses the transfer order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Away {
    Frozen,
    Killed,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_transfer_order_starts_without_a_leader() {
    transfer_without_a_leader(Away::Frozen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_agent_started_without_a_leader_learns_the_order_and_moves_the_guest() {
    transfer_without_a_leader(Away::Killed).await;
}

async fn transfer_without_a_leader(away: Away) {
    // Liveness reports must not lapse while the source agent is frozen.
    let opts = ClusterOpts { host_report_timeout_ms: 120_000, sim_transfer_ms: 300, ..Default::default() };
    let (mut cluster, mut agents) = cluster_with_agents(opts).await;
    let admin = cluster.client(&[1, 2, 3]);
    create_guest(&admin, "vm1", "h1", None).await;

    // The source agent is frozen before the migration exists, so it cannot know of the order;
    // first it must have loaded the in-flight migrations (a read that needs a leader), or it
    // would still be waiting for that list when resumed without one.
    assert_eq!(agents[0].host, "h1");
    let source = &agents[0];
    eventually("the source agent to load its migrations", Duration::from_secs(60), || async {
        let log = std::fs::read_to_string(source.dir.join("agent.log")).unwrap_or_default();
        log.contains("migrations loaded").then_some(())
    })
    .await;
    match away {
        Away::Frozen => agents[0].pause(),
        Away::Killed => agents[0].kill(),
    }
    let id = migrate(&admin, "vm1", "h2", "a1").await;
    let m = wait_phase(&cluster, id, Phase::Transferring).await;
    let ordered = m.history.iter().find(|r| r.phase == Phase::Transferring).expect("transferring recorded").revision;
    assert_eq!(sim_location(&cluster, "vm1", &Name::new("h1").unwrap()), "h1", "nothing moved the guest yet");

    // Node 3 keeps the order (it has applied it); nodes 1 and 2 go away, and no leader can be
    // elected from one coordinator of three.
    cluster.wait_revision(3, ordered).await;
    cluster.kill(1);
    cluster.kill(2);
    match away {
        Away::Frozen => agents[0].resume(),
        Away::Killed => agents[0].restart(),
    }
    let source = &agents[0];

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sim_location(&cluster, "vm1", &Name::new("h1").unwrap()) != "h2" {
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(source.dir.join("agent.log")).unwrap_or_default();
            panic!("the source agent did not move vm1 to h2 without a leader within 60 s; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = cluster.status(3).await.expect("node 3 answers");
    assert_ne!(st.role, "leader", "one coordinator of three cannot lead");
    let m = read_migration(&cluster, id).await.expect("node 3 serves the migration");
    assert_eq!(m.phase, Phase::Transferring, "no phase can commit without a quorum");

    // The quorum returns: the agent's report is committed and the migration completes.
    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_leader(&[1, 2, 3]).await;
    let m = wait_terminal(&cluster, id).await;
    assert_eq!(m.phase, Phase::Completed, "{:?}", m.error);
    let events = history(&admin).await;
    let state = check_history(&events, true);
    assert_eq!(state.guest(&Name::new("vm1").unwrap()).unwrap().owner.as_str(), "h2");
    wait_hypervisor_agrees(&cluster, "vm1").await;
    wait_agents_converged(&cluster, &agents).await;
}
