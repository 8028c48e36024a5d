//! `switchyard rebalance`: a plan over a real cluster (one loaded host, two empty ones), shown
//! per move; applied by the operations role as ordinary migrations that the agents carry out;
//! afterwards nothing is left to move, and the whole history keeps every SPEC §5 invariant.
mod common;

use common::cluster::*;
use common::saga::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_is_shown_then_applied_as_migrations_and_leaves_the_cluster_balanced() {
    let (cluster, agents) = cluster_with_agents(ClusterOpts::default()).await;
    let admin = cluster.client(&[1, 2, 3]);
    for g in ["vm1", "vm2", "vm3", "vm4"] {
        create_guest(&admin, g, "h1", None).await;
    }
    let all = [1, 2, 3];
    // The hosts are large: a threshold of 0 points asks for any improvement at all.
    let (code, out, err) = cluster.cli(&all, READ_ONLY_TOKEN, &["rebalance", "--threshold-pct", "0"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 move(s)") && out.contains("no move lowers the imbalance"), "{out}");
    let plan: serde_json::Value = serde_json::from_str(
        &cluster.cli(&all, READ_ONLY_TOKEN, &["rebalance", "--threshold-pct", "0", "-o", "json"]).1,
    )
    .unwrap();
    let moves = plan["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 2, "{plan}");
    let targets: Vec<&str> = moves.iter().map(|m| m["to"].as_str().unwrap()).collect();
    assert_eq!(targets, ["h2", "h3"], "{plan}");
    assert!(moves[0]["why"].as_str().unwrap().contains("h1 is the most loaded host"), "{plan}");
    // The coordinators' limits on the cluster's own moves travel with the plan; --apply keeps them.
    assert_eq!(plan["limits"], serde_json::json!({"per_target": 2, "cluster": 8}), "{plan}");

    // A read-only token may plan but not apply: its first migration request is refused.
    let (code, out, err) = cluster.cli(&all, READ_ONLY_TOKEN, &["rebalance", "--threshold-pct", "0", "--apply"]);
    assert_ne!(code, 0);
    assert!(err.contains("0 of 2 moves completed") && out.contains("forbidden"), "{out}\n{err}");
    let (code, out, err) =
        cluster.cli(&all, OPERATIONS_TOKEN, &["rebalance", "--threshold-pct", "0", "--apply", "--max-parallel", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("2 of 2 moves completed"), "{out}");

    let (code, out, err) = cluster.cli(&all, READ_ONLY_TOKEN, &["rebalance", "--threshold-pct", "0"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("0 move(s)"), "{out}");
    let events = history(&admin).await;
    let st = check_history(&events, true);
    let on = |h: &str| st.guests().filter(|g| g.owner.as_str() == h).count();
    assert_eq!((on("h1"), on("h2"), on("h3")), (2, 1, 1));
    wait_agents_converged(&cluster, &agents).await;
}
