//! `/metrics` scraped as Prometheus scrapes it and read with a Prometheus text parser: every
//! metric is there, and moves the right way through a migration and a leader kill. Health
//! probes answer without a token. Each agent serves its own metrics, which follow the same
//! migration.
mod common;

use std::time::Duration;

use common::cluster::*;
use common::metrics::*;
use common::saga::*;
use serde_json::json;
use switchyard_protocol::Phase;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_and_move_through_a_migration_and_a_leader_kill() {
    let (mut cluster, agents) =
        cluster_with_agents(ClusterOpts { sim_transfer_ms: 300, ..ClusterOpts::default() }).await;
    let admin = cluster.client(&[1, 2, 3]);
    create_guest(&admin, "g1", "h1", Some("p1")).await;
    wait_agents_converged(&cluster, &agents).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;

    // Probes answer without a token; /metrics needs one, and not an agent's.
    let http = cluster.http();
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http.get(cluster.url(leader, path)).send().await.unwrap().status(), 200, "{path}");
    }
    assert_eq!(http.get(cluster.url(leader, "/metrics")).send().await.unwrap().status(), 401);
    let agent = cluster.http_for(AGENT_TOKEN).get(cluster.url(leader, "/metrics")).bearer_auth(AGENT_TOKEN);
    assert_eq!(agent.send().await.unwrap().status(), 403);

    let before = scrape(&cluster, leader).await;
    assert_eq!(get(&before, "switchyard_raft_is_leader", &[]), 1.0);
    for h in ["h1", "h2", "h3"] {
        assert_eq!(get(&before, "switchyard_host_state", &[("host", h), ("state", "active")]), 1.0);
    }
    eventually("h1..h3 in sync by the leader's metrics", Duration::from_secs(30), || async {
        let s = scrape(&cluster, leader).await;
        ["h1", "h2", "h3"]
            .iter()
            .all(|h| value(&s, "switchyard_host_in_sync", &[("host", h)]) == Some(1.0))
            .then_some(())
    })
    .await;
    let term0 = get(&before, "switchyard_raft_term", &[]);
    let commits0 = get(&before, "switchyard_proposal_commit_seconds_count", &[]);
    let fsyncs0 = get(&before, "switchyard_log_fsync_seconds_count", &[]);

    // Switching disabled: the package shows as unprotected, for a growing time.
    let _: serde_json::Value =
        admin.post("/v1/packages/p1/switching", &json!({"enabled": false, "reason": "test"})).await.unwrap();
    let s = eventually("p1 unprotected in the metrics", Duration::from_secs(10), || async {
        let s = scrape(&cluster, leader).await;
        (value(&s, "switchyard_packages_switching_disabled", &[]) == Some(1.0)).then_some(s)
    })
    .await;
    assert!(get(&s, "switchyard_package_switching_disabled_seconds", &[("package", "p1")]) >= 0.0);
    let _: serde_json::Value =
        admin.post("/v1/packages/p1/switching", &json!({"enabled": true, "reason": "test done"})).await.unwrap();

    // A migration: phases timed, one completed, commits and fsyncs counted.
    let id = migrate(&admin, "g1", "h2", "a1").await;
    let m = wait_terminal(&cluster, id).await;
    assert_eq!(m.phase, Phase::Completed, "{:?}", m.error);
    let after = eventually("the migration counted", Duration::from_secs(10), || async {
        let s = scrape(&cluster, leader).await;
        (value(&s, "switchyard_migrations_finished_total", &[("outcome", "completed")]) == Some(1.0)).then_some(s)
    })
    .await;
    assert!(get(&after, "switchyard_migration_phase_seconds_count", &[("phase", "transferring")]) >= 1.0);
    assert!(get(&after, "switchyard_proposal_commit_seconds_count", &[]) > commits0);
    assert!(get(&after, "switchyard_log_fsync_seconds_count", &[]) > fsyncs0);
    assert!(get(&after, "switchyard_applied_revision", &[]) > get(&before, "switchyard_applied_revision", &[]));
    // Every stage of a write is timed: on the leader its own stages and the round trips to the
    // followers, on a follower its handling of the appends.
    for stage in ["api", "proposer_queue", "log_append", "log_durable", "apply", "replicate_rpc"] {
        let n = get(&after, "switchyard_write_stage_seconds_count", &[("stage", stage)]);
        assert!(n >= 1.0, "the leader timed no write at stage {stage}");
    }
    let follower = [1, 2, 3].into_iter().find(|n| *n != leader).unwrap();
    let f = scrape(&cluster, follower).await;
    assert!(get(&f, "switchyard_write_stage_seconds_count", &[("stage", "follower_append")]) >= 1.0);
    assert!(get(&f, "switchyard_write_stage_seconds_count", &[("stage", "log_durable")]) >= 1.0);
    // Agents follow the event stream: somewhere, subscribers are open and events were sent.
    let mut subscribers = 0.0;
    let mut streamed = 0.0;
    for n in [1, 2, 3] {
        let s = scrape(&cluster, n).await;
        subscribers += get(&s, "switchyard_subscribers", &[]);
        streamed += get(&s, "switchyard_events_streamed_total", &[]);
    }
    assert!(subscribers >= 3.0 && streamed > 0.0, "subscribers {subscribers}, streamed {streamed}");
    // A snapshot built on request is counted.
    let _: serde_json::Value = cluster.client(&[leader]).post("/v1/node/snapshot", &json!({})).await.unwrap();
    let s = scrape(&cluster, leader).await;
    assert!(get(&s, "switchyard_snapshot_builds_total", &[]) >= 1.0);

    // The leader is killed: a survivor leads, in a later term, and counts the change.
    cluster.kill(leader);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
    let new = cluster.wait_leader(&rest).await;
    let s = scrape(&cluster, new).await;
    assert_eq!(get(&s, "switchyard_raft_is_leader", &[]), 1.0);
    assert!(get(&s, "switchyard_raft_term", &[]) > term0);
    assert!(get(&s, "switchyard_raft_leader_changes_total", &[]) >= 2.0, "the first leader, then itself");
    // Every node counted the migration from the events it applied.
    assert_eq!(value(&s, "switchyard_migrations_finished_total", &[("outcome", "completed")]), Some(1.0));
    // The new leader hears every agent: hosts in sync by its metrics too.
    let s = eventually("h1..h3 in sync by the new leader's metrics", Duration::from_secs(30), || async {
        let s = scrape(&cluster, new).await;
        ["h1", "h2", "h3"]
            .iter()
            .all(|h| value(&s, "switchyard_host_in_sync", &[("host", h)]) == Some(1.0))
            .then_some(s)
    })
    .await;
    // Every family is there. (`package_switching_disabled_seconds` has a series per package
    // left unprotected, checked above while p1 was.)
    for family in [
        "raft_term",
        "raft_is_leader",
        "raft_leader_changes",
        "raft_last_log_index",
        "raft_applied_index",
        "applied_revision",
        "proposal_commit_seconds",
        "proposal_batch_size",
        "log_fsync_seconds",
        "write_stage_seconds",
        "snapshot_builds",
        "snapshot_build_seconds",
        "subscribers",
        "events_streamed",
        "migrations_finished",
        "migration_phase_seconds",
        "migrations_in_flight",
        "migrations_stuck",
        "failovers",
        "failovers_in_flight",
        "hosts_failed",
        "host_applied_revision",
        "host_lag_revisions",
        "host_in_sync",
        "host_last_report_age_seconds",
        "host_state",
        "packages_switching_disabled",
    ] {
        let name = format!("switchyard_{family}");
        assert!(s.docs.contains_key(&name), "{name} is not described");
    }
    assert_eq!(get(&s, "switchyard_migrations_stuck", &[]), 0.0);
    let other = rest.into_iter().find(|n| *n != new).unwrap();
    assert_eq!(get(&scrape(&cluster, other).await, "switchyard_raft_is_leader", &[]), 0.0);
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_serve_their_own_metrics() {
    let (cluster, agents) = cluster_with_agents(ClusterOpts { sim_transfer_ms: 200, ..ClusterOpts::default() }).await;
    let admin = cluster.client(&[1, 2, 3]);
    create_guest(&admin, "g1", "h1", None).await;
    let id = migrate(&admin, "g1", "h2", "a1").await;
    let m = wait_terminal(&cluster, id).await;
    assert_eq!(m.phase, Phase::Completed, "{:?}", m.error);
    let revision = cluster.client(&[1, 2, 3]).full_state().await.unwrap().revision as f64;

    // Every agent has applied up to the migration's end, and says so.
    for a in &agents {
        let s = eventually(&format!("{} caught up by its metrics", a.host), Duration::from_secs(30), || async {
            let s = scrape_agent(&cluster, a).await;
            (value(&s, "switchyard_agent_applied_revision", &[]) >= Some(revision)).then_some(s)
        })
        .await;
        assert_eq!(get(&s, "switchyard_agent_apply_lag_revisions", &[]), 0.0, "{}", a.host);
        assert!(get(&s, "switchyard_agent_stream_revision", &[]) >= revision);
        assert!(get(&s, "switchyard_agent_events_applied_total", &[]) > 0.0);
        assert_eq!(get(&s, "switchyard_agent_subscribed", &[]), 1.0);
        assert!(get(&s, "switchyard_agent_reports_total", &[("outcome", "ok")]) > 0.0);
        for family in ["lease_held", "watchdog_armed", "drift_guests", "pending_guests", "repairs"] {
            let name = format!("switchyard_agent_{family}");
            assert!(s.docs.contains_key(&name), "{name} is not described");
        }
    }
    // The source moved the guest through its driver (timed) and reported it; the target
    // reported the guest running there.
    let h1 = scrape_agent(&cluster, &agents[0]).await;
    assert!(get(&h1, "switchyard_agent_driver_call_seconds_count", &[("call", "transfer"), ("outcome", "ok")]) >= 1.0);
    assert_eq!(get(&h1, "switchyard_agent_migration_reports_total", &[("outcome", "transfer_done")]), 1.0);
    let h2 = scrape_agent(&cluster, &agents[1]).await;
    assert_eq!(get(&h2, "switchyard_agent_migration_reports_total", &[("outcome", "guest_running")]), 1.0);

    // The listener answers health, and nothing else; plaintext is not spoken to it.
    let http = cluster.http();
    let health = http.get(format!("https://{}/healthz", agents[0].metrics)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let other = http.get(format!("https://{}/v1/state", agents[0].metrics)).send().await.unwrap();
    assert_eq!(other.status(), 404);
    let plain = reqwest::Client::new().get(format!("http://{}/metrics", agents[0].metrics)).send().await;
    assert!(plain.map_or(true, |r| !r.status().is_success()), "plaintext must not get the metrics");
}
