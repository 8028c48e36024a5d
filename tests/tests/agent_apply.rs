//! An agent applies every guest change to its files, survives SIGKILL mid-stream, a leader kill
//! and damaged guest files, and ends identical to the cluster's configuration, reported in sync.
mod common;

use std::time::Duration;

use common::cluster::*;
use serde_json::json;
use switchyard_protocol::api::{FullState, HostView, Read, SyncStatus, WriteResponse};
use switchyard_protocol::Name;
use switchyard_tls::Identity;

async fn converged(cluster: &TestCluster, agent: &AgentProc, ids: &[u64]) {
    let c = cluster.client(ids);
    eventually(&format!("agent {} to converge", agent.host), Duration::from_secs(60), || async {
        let state: Read<FullState> = c.get("/v1/state").await.ok()?;
        let (cursor, guests) = agent.applied();
        let h: Read<HostView> = c.get(&format!("/v1/hosts/{}", agent.host)).await.ok()?;
        let in_sync = h.items.sync.map(|s| s.status) == Some(SyncStatus::InSync);
        (cursor == state.revision && guests == state.items.guests && in_sync).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_converges_through_kills() {
    let mut cluster = TestCluster::start(3, ClusterOpts::default()).await;
    let c = cluster.client(&[1, 2, 3]);
    let _: WriteResponse = c.post("/v1/hosts", &big_host("h1")).await.unwrap();
    let mut agent = AgentProc::start(&cluster, "h1", AGENT_TOKEN, &[1, 2, 3]);
    for i in 0..10 {
        let _: WriteResponse = c
            .post("/v1/guests", &json!({"name": format!("g{i}"), "owner": "h1", "vcpus": 1, "memory_mib": 64, "package": format!("p{i}")}))
            .await
            .unwrap();
    }
    converged(&cluster, &agent, &[1, 2, 3]).await;
    let g: Read<switchyard_protocol::api::GuestView> = c.get("/v1/guests/g0").await.unwrap();
    assert_eq!(g.items.hosts.len(), 1, "{:?}", g.items.hosts);
    assert_eq!((g.items.hosts[0].host.as_str(), &g.items.hosts[0].status), ("h1", &SyncStatus::InSync));

    // Kill the agent while changes keep coming, and the leader too.
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..30u64 {
                let body = if i % 3 == 0 {
                    json!({"name": format!("n{i}"), "owner": "h1", "vcpus": 1, "memory_mib": 64, "request_id": format!("{:x}", 0xa000 + i)})
                } else {
                    json!({"name": format!("n{}", i - i % 3), "owner": "h1", "vcpus": 2, "memory_mib": 64, "request_id": format!("{:x}", 0xa000 + i)})
                };
                if i % 3 == 0 {
                    write_until_acked(&c, "/v1/guests", &body).await;
                } else {
                    // A modification: PATCH, retried with the same request id.
                    let name = format!("n{}", i - i % 3);
                    let patch = json!({"vcpus": (i % 3) + 1, "request_id": format!("{:x}", 0xa000 + i)});
                    loop {
                        match c.patch::<_, WriteResponse>(&format!("/v1/guests/{name}"), &patch).await {
                            Ok(_) => break,
                            Err(e) => {
                                eprintln!("patch {name}: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
            }
            let _: WriteResponse = loop {
                match c.delete("/v1/guests/g3?request_id=beef").await {
                    Ok(r) => break r,
                    Err(e) => {
                        eprintln!("remove g3: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
        })
    };
    agent.kill();
    agent.restart();
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    cluster.kill(leader);
    agent.kill();
    agent.restart();
    writer.await.unwrap();
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    converged(&cluster, &agent, &survivors).await;
    let (_, guests) = agent.applied();
    assert!(guests.iter().all(|g| g.name.as_str() != "g3"), "removed guest's file is gone");
    assert_eq!(guests.len(), 10 - 1 + 10);

    // What a machine crash can leave behind a group commit (a guest file renamed into place
    // before its data reached the disk), or a bad disk: a torn file and a file holding another
    // guest. The restarted agent sets them aside and re-syncs from the coordinators.
    agent.kill();
    let files = agent.dir.join("data/guests");
    let torn = std::fs::read(files.join("g1.json")).unwrap();
    std::fs::write(files.join("g1.json"), &torn[..torn.len() / 2]).unwrap();
    std::fs::copy(files.join("g2.json"), files.join("g4.json")).unwrap();
    agent.restart();
    converged(&cluster, &agent, &survivors).await;
    for name in ["g1", "g4"] {
        assert!(files.join(format!("{name}.damaged")).exists(), "{name}'s damaged file is kept aside");
    }
    assert_eq!(agent.applied().1.len(), 10 - 1 + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_a_token_for_another_host_stops_with_a_clear_error() {
    let cluster = TestCluster::start(1, ClusterOpts::default()).await;
    let c = cluster.client(&[1]);
    let _: WriteResponse = c.post("/v1/hosts", &big_host("h2")).await.unwrap();
    // h1's token used for host h2.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "host = \"h2\"\nendpoints = [\"{}\"]\ntoken = \"{AGENT_TOKEN}\"\ndata_dir = \"{}\"\n\
             [driver]\nkind = \"simulated\"\nstate_dir = \"{}\"\n[tls]\n{}",
            cluster.node(1).api_addr,
            dir.path().join("data").display(),
            dir.path().join("sim").display(),
            toml::to_string(&cluster.tls_config(Some(&Identity::Host(Name::new("h2").unwrap()))).unwrap()).unwrap(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_agent_proc")).arg("--config").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("forbidden") && err.contains("bound to host h2"), "{err}");
}

/// Every configuration problem is reported at start, all at once, with exit status 2 (the
/// systemd unit does not restart on it) — a driver the agent cannot build included.
#[test]
fn configuration_problems_are_reported_at_once_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let run = |body: &str| {
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, body).unwrap();
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let out =
            std::process::Command::new(env!("CARGO_BIN_EXE_agent_proc")).arg("--config").arg(&config).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let data = dir.path().join("data");
    let (code, err) = run(&format!(
        "host = \"h1\"\nendpoints = []\ntoken = \"t\"\ndata_dir = \"{}\"\nreport_interval_ms = 0\n\
         [watchdog]\ndevice = \"{}\"\ntimeout_ms = 5\n[driver]\nkind = \"simulated\"\nstate_dir = \"{}\"\n",
        data.display(),
        dir.path().join("no-such-watchdog").display(),
        dir.path().join("sim").display()
    ));
    assert_eq!(code, Some(2), "{err}");
    for problem in ["endpoints is empty", "report_interval_ms", "watchdog.timeout_ms", "watchdog.device", "tls.ca"] {
        assert!(err.contains(problem), "{problem} not reported: {err}");
    }
    // A command driver whose template lacks the guest: found when the driver is built.
    let (code, err) = run(&format!(
        "host = \"h1\"\nendpoints = [\"127.0.0.1:1\"]\ntoken = \"t\"\ndata_dir = \"{}\"\n\
         [driver]\nkind = \"command\"\nmigrate = [\"/bin/true\"]\n[tls]\ninsecure = true\n",
        data.display()
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("invalid configuration: driver"), "{err}");
}

/// SIGTERM stops the agent at once with status 0 (it used to wait for SIGKILL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_agent_cleanly() {
    let cluster = TestCluster::start(1, ClusterOpts::default()).await;
    let c = cluster.client(&[1]);
    let _: WriteResponse = c.post("/v1/hosts", &big_host("h1")).await.unwrap();
    let mut agent = AgentProc::start(&cluster, "h1", AGENT_TOKEN, &[1]);
    eventually("the agent to report", Duration::from_secs(30), || async {
        let h: Read<HostView> = c.get("/v1/hosts/h1").await.ok()?;
        h.items.sync.filter(|s| s.applied_revision.is_some()).map(|_| ())
    })
    .await;
    let (status, in_time) = agent.proc.terminate(Duration::from_secs(10)).expect("the agent was running");
    assert!(in_time, "the agent did not stop within 10 s of SIGTERM");
    assert_eq!(status.code(), Some(0));
}
