//! Convergence (SPEC §5 invariant 5, §6): 3 coordinators and 5 agents; random guest changes
//! while an agent is SIGKILLed mid-apply, the leader is killed, and one agent stays offline until
//! the history it needs is compacted. After healing, every agent's configuration directory is
//! byte-identical to the cluster's configuration at the same revision, and the coordinators
//! report every host in sync.
mod common;

use std::time::Duration;

use common::cluster::*;
use serde_json::json;
use switchyard_client::{Client, EventQuery};
use switchyard_protocol::api::{FullState, HostView, Read, StreamItem, SyncStatus, WriteResponse};
use switchyard_protocol::hostconfig::HostConfig;
use switchyard_testkit::rng::{seed, Lcg};

/// Every file of an agent's guest directory, by name, as bytes.
fn files(agent: &AgentProc) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(agent.dir.join("data/guests")) {
        for e in rd.flatten() {
            out.insert(e.file_name().to_string_lossy().to_string(), std::fs::read(e.path()).unwrap());
        }
    }
    out
}

/// Random create / modify / remove, retried with its request id until acknowledged.
async fn random_change(c: &Client, rng: &mut Lcg, seq: u64) {
    let g = format!("vm{}", rng.next(25));
    let owner = format!("h{}", 1 + rng.next(5));
    let rid = format!("{:x}", 0xc0000 + seq);
    let (method, path, body) = match rng.next(3) {
        0 => (
            "POST",
            "/v1/guests".to_string(),
            json!({"name": g, "owner": owner, "vcpus": 1, "memory_mib": 64, "request_id": rid}),
        ),
        1 => ("PATCH", format!("/v1/guests/{g}"), json!({"vcpus": 1 + rng.next(4), "request_id": rid})),
        _ => ("DELETE", format!("/v1/guests/{g}?request_id={rid}"), json!({})),
    };
    for _ in 0..200 {
        let r: Result<WriteResponse, _> = match method {
            "POST" => c.post(&path, &body).await,
            "PATCH" => c.patch(&path, &body).await,
            _ => c.delete(&path).await,
        };
        match r {
            Ok(_) => return,
            // The state machine refused it (unknown guest, exists…): a valid outcome, nothing changed.
            Err(e) if e.code().is_some_and(|c| c != "not_leader" && c != "unavailable") => return,
            Err(e) => {
                eprintln!("{method} {path}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("{method} {path} never answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_agents_converge_after_kills_and_compaction() {
    let mut rng = Lcg(seed("five_agents_converge"));
    let opts = ClusterOpts {
        snapshot_logs_since_last: 20,
        max_in_snapshot_log_to_keep: 5,
        retain_revisions: 10,
        host_report_timeout_ms: 3000,
        ..Default::default()
    };
    let mut cluster = TestCluster::start(3, opts).await;
    let c = cluster.client(&[1, 2, 3]);
    for n in 1..=5 {
        let _: WriteResponse = c.post("/v1/hosts", &big_host(&format!("h{n}"))).await.unwrap();
    }
    let mut agents: Vec<AgentProc> =
        (1..=5).map(|n| AgentProc::start(&cluster, &format!("h{n}"), &agent_token(n), &[1, 2, 3])).collect();
    let mut seq = 0;
    for _ in 0..20 {
        random_change(&c, &mut rng, seq).await;
        seq += 1;
    }
    // Agent h5 goes offline and stays away until its history is compacted.
    agents[4].kill();
    let (offline_cursor, _) = agents[4].applied();
    for round in 0..60 {
        random_change(&c, &mut rng, seq).await;
        seq += 1;
        if round == 10 {
            agents[0].kill(); // mid-apply: changes are streaming to it
            agents[0].restart();
        }
        if round == 25 {
            let leader = cluster.wait_leader(&cluster.alive_ids()).await;
            cluster.kill(leader);
        }
        if round == 40 {
            agents[1].kill();
            agents[1].restart();
        }
    }
    let alive = cluster.alive_ids();
    let probe = cluster.client(&alive);
    eventually("h5's history to be compacted", Duration::from_secs(60), || async {
        let mut compacted = false;
        let q = EventQuery { from: offline_cursor + 1, ..Default::default() };
        probe
            .events(&q, |i| {
                compacted = matches!(i, StreamItem::Compacted { .. });
                false
            })
            .await
            .ok()?;
        compacted.then_some(())
    })
    .await;
    agents[4].restart();

    // Heal: every agent's directory equals the cluster's configuration at its revision, and every
    // host is reported in sync.
    eventually("all agents to converge and be reported in sync", Duration::from_secs(90), || async {
        let state: Read<FullState> = probe.get("/v1/state").await.ok()?;
        let want: std::collections::BTreeMap<String, Vec<u8>> =
            state.items.guests.iter().map(|g| (format!("{}.json", g.name), HostConfig::render(g))).collect();
        for a in &agents {
            let (cursor, _) = a.applied();
            if cursor != state.revision || files(a) != want {
                return None;
            }
        }
        let hosts: Read<Vec<HostView>> = probe.get("/v1/hosts").await.ok()?;
        let all_in_sync = hosts.items.iter().all(|h| h.sync.as_ref().map(|s| &s.status) == Some(&SyncStatus::InSync));
        all_in_sync.then_some(())
    })
    .await;
    let log = std::fs::read_to_string(agents[4].dir.join("agent.log")).unwrap();
    assert!(log.contains("re-synced from full state"), "the offline agent should have re-synced after compaction");
}

/// Invariant 5 for an agent far behind (SPEC §6): past `jump_after_revisions` it takes the
/// desired state at the current revision instead of every event, writing only the guests that
/// differ. SIGKILLed while it jumps and started again, it still ends byte-identical to the
/// cluster, and one that is only a little behind applies events as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_far_behind_jumps_to_the_current_state_and_survives_a_kill_mid_jump() {
    let mut rng = Lcg(seed("agent_far_behind_jumps"));
    let opts = ClusterOpts { jump_after_revisions: 40, ..Default::default() };
    let cluster = TestCluster::start(3, opts).await;
    let c = cluster.client(&[1, 2, 3]);
    for n in 1..=2 {
        let _: WriteResponse = c.post("/v1/hosts", &big_host(&format!("h{n}"))).await.unwrap();
    }
    let mut agents: Vec<AgentProc> =
        (1..=2).map(|n| AgentProc::start(&cluster, &format!("h{n}"), &agent_token(n), &[1, 2, 3])).collect();
    let mut seq = 0;
    for _ in 0..20 {
        random_change(&c, &mut rng, seq).await;
        seq += 1;
    }
    let converged = |agents: &[AgentProc]| {
        let agents: Vec<_> = agents.iter().map(|a| (a.applied().0, files(a))).collect();
        let probe = c.clone();
        async move {
            let state: Read<FullState> = probe.get("/v1/state").await.ok()?;
            let want: std::collections::BTreeMap<String, Vec<u8>> =
                state.items.guests.iter().map(|g| (format!("{}.json", g.name), HostConfig::render(g))).collect();
            agents.iter().all(|(cursor, f)| *cursor == state.revision && *f == want).then_some(())
        }
    };
    // A little behind (under the threshold): events, no jump.
    agents[1].kill();
    for _ in 0..20 {
        random_change(&c, &mut rng, seq).await;
        seq += 1;
    }
    agents[1].restart();
    eventually("both agents to apply the events", Duration::from_secs(60), || converged(&agents)).await;
    let log = |a: &AgentProc| std::fs::read_to_string(a.dir.join("agent.log")).unwrap_or_default();
    assert!(!log(&agents[1]).contains("revisions behind"), "20 changes (at most 20 revisions) behind must not jump");
    // Far behind: it jumps; killed as soon as the jump begins, then started again.
    agents[1].kill();
    let (cursor, _) = agents[1].applied();
    while c.node_status().await.unwrap().revision < cursor + 100 {
        random_change(&c, &mut rng, seq).await;
        seq += 1;
    }
    let before = log(&agents[1]).len();
    agents[1].restart();
    eventually("the agent to start its jump", Duration::from_secs(30), || async {
        log(&agents[1]).get(before..)?.contains("re-syncing from full state").then_some(())
    })
    .await;
    agents[1].kill();
    agents[1].restart();
    eventually("the agent that jumped to converge", Duration::from_secs(60), || converged(&agents)).await;
    let jumped = log(&agents[1]);
    let jumped = jumped.get(before..).unwrap_or_default();
    // The jump began (it was killed then); the restarted agent either jumped again or found the
    // state the first one had committed just before the kill. Either way it converged above.
    assert!(
        jumped.contains("re-syncing from full state") && jumped.contains("revisions behind"),
        "an agent 100 revisions behind with jump_after_revisions = 40 must jump:\n{jumped}"
    );
    // It follows the log again after the jump.
    for _ in 0..5 {
        random_change(&c, &mut rng, seq).await;
        seq += 1;
    }
    eventually("both agents to follow after the jump", Duration::from_secs(60), || converged(&agents)).await;
}
