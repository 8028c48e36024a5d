//! `switchyard dev` starts a working cluster (3 coordinator and 3 agent processes) from nothing,
//! resumes it, and plays the demo: an online migration that completes although the leader
//! coordinator is killed in the middle of the transfer.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use switchyard_client::Client;
use switchyard_protocol::api::{ClusterStatus, WriteResponse};
use switchyard_tls::{Tls, TlsConfig};

fn dev_command(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cli_proc"));
    cmd.args(["dev", "--base-port", "0", "--dir"])
        .arg(dir)
        .env("SWITCHYARD_COORDINATOR_BIN", env!("CARGO_BIN_EXE_coordinator_proc"))
        .env("SWITCHYARD_AGENT_BIN", env!("CARGO_BIN_EXE_agent_proc"))
        .stdout(Stdio::piped());
    cmd
}

/// Starts `dev`, returns the child and the (endpoints, token) it printed.
fn start_dev(dir: &std::path::Path) -> (std::process::Child, Vec<String>, String, Tls) {
    let mut child = dev_command(dir).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut eps, mut token, mut ca) = (None, None, None);
    while eps.is_none() || token.is_none() || ca.is_none() {
        let line = lines.next().expect("dev printed its endpoints and token").unwrap();
        if let Some(v) = line.trim().strip_prefix("export SWITCHYARD_ENDPOINTS=") {
            eps = Some(v.split(',').map(String::from).collect());
        }
        if let Some(v) = line.trim().strip_prefix("export SWITCHYARD_TOKEN=") {
            token = Some(v.to_string());
        }
        if let Some(v) = line.trim().strip_prefix("export SWITCHYARD_CA=") {
            ca = Some(std::path::PathBuf::from(v));
        }
    }
    // The dev cluster is TLS: its CA is what clients check the coordinators with.
    let tls = Tls::load(&TlsConfig { ca, ..TlsConfig::default() }, None).expect("the dev cluster's CA");
    (child, eps.unwrap(), token.unwrap(), tls)
}

/// Kills the QEMU guests a dev cluster left running, whatever the test's outcome.
struct KillVms(std::path::PathBuf);

impl Drop for KillVms {
    fn drop(&mut self) {
        switchyard_testkit::kill_vms_in(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_starts_a_cluster_and_resumes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("switchyard-dev");
    // The VMs of a SIGKILLed dev (its agents' QEMU guests) outlive it, as on a real host.
    let _vms = KillVms(dir.clone());
    let (mut child, eps, token, tls) = start_dev(&dir);
    let c = Client::new(eps.clone(), token.clone(), Duration::from_secs(10), Some(&tls));
    let st: ClusterStatus = c.get("/v1/cluster/status").await.unwrap();
    assert_eq!(st.members.len(), 3);
    assert!(st.members.iter().all(|m| m.voter && m.status.is_some()));
    // The three agents report in: every host is in sync.
    common::cluster::eventually("h1..h3 to be in sync", Duration::from_secs(30), || async {
        let hosts: serde_json::Value = c.get("/v1/hosts").await.ok()?;
        let items = hosts["items"].as_array()?;
        (items.len() == 3 && items.iter().all(|h| h["sync"]["status"] == "in_sync")).then_some(())
    })
    .await;
    let w: WriteResponse = c
        .post("/v1/guests", &serde_json::json!({"name": "vm1", "owner": "h1", "vcpus": 1, "memory_mib": 1024}))
        .await
        .unwrap();
    // SIGKILL of `dev` takes its children down with it (or the restart below could not bind).
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, eps2, token2, tls) = start_dev(&tmp.path().join("switchyard-dev"));
    assert_eq!((&eps2, &token2), (&eps, &token), "a restart reuses ports and tokens");
    let c = Client::new(eps2, token2, Duration::from_secs(10), Some(&tls));
    let st = common::cluster::eventually("the resumed cluster to elect a leader", Duration::from_secs(30), || async {
        c.get::<ClusterStatus>("/v1/cluster/status").await.ok().filter(|s| s.leader.is_some())
    })
    .await;
    assert_eq!(st.members.len(), 3);
    // A just-resumed cluster may change leader once more: the linearizable read is retried.
    let g: serde_json::Value =
        common::cluster::eventually("the resumed cluster to answer a read", Duration::from_secs(30), || async {
            c.get("/v1/guests/vm1").await.ok()
        })
        .await;
    assert!(g["revision"].as_u64().unwrap() >= w.first_revision);
    // The CLI finds the dev cluster without flags from the folder holding switchyard-dev/.
    let out = Command::new(env!("CARGO_BIN_EXE_cli_proc"))
        .args(["guest", "show", "vm1"])
        .current_dir(tmp.path())
        .env_remove("SWITCHYARD_ENDPOINTS")
        .env_remove("SWITCHYARD_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("vm1"));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn dev_demo_moves_a_guest_through_a_leader_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let _vms = KillVms(tmp.path().to_path_buf());
    let errors = tmp.path().join("demo.stderr");
    let mut child =
        dev_command(tmp.path()).arg("--demo").stderr(std::fs::File::create(&errors).unwrap()).spawn().unwrap();
    let mut out = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        out.push_str(&line);
        out.push('\n');
        if line.starts_with("try:") {
            break;
        }
    }
    let _ = child.kill();
    child.wait().unwrap();
    for want in [
        "refused:",
        "cluster node",
        "killing the leader",
        "ended completed",
        "enabled (protected again)",
        "freeze time",
    ] {
        let errors = std::fs::read_to_string(&errors).unwrap_or_default();
        assert!(out.contains(want), "demo output lacks {want:?}:\n{out}\nits errors:\n{errors}");
    }
}
