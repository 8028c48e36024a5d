//! `switchyard dev` starts a working 3-coordinator cluster from nothing, and resumes it.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use switchyard_coordinator::client::Client;
use switchyard_protocol::api::{ClusterStatus, WriteResponse};

/// Starts `dev`, returns the child and the (endpoints, token) it printed.
fn start_dev(dir: &std::path::Path) -> (std::process::Child, Vec<String>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cli_proc"))
        .args(["dev", "--base-port", "0", "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut eps, mut token) = (None, None);
    while eps.is_none() || token.is_none() {
        let line = lines.next().expect("dev printed its endpoints and token").unwrap();
        if let Some(v) = line.trim().strip_prefix("export SWITCHYARD_ENDPOINTS=") {
            eps = Some(v.split(',').map(String::from).collect());
        }
        if let Some(v) = line.trim().strip_prefix("export SWITCHYARD_TOKEN=") {
            token = Some(v.to_string());
        }
    }
    (child, eps.unwrap(), token.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_starts_a_cluster_and_resumes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, eps, token) = start_dev(tmp.path());
    let c = Client::new(eps.clone(), token.clone(), Duration::from_secs(10));
    let st: ClusterStatus = c.get("/v1/cluster/status").await.unwrap();
    assert_eq!(st.members.len(), 3);
    assert!(st.members.iter().all(|m| m.voter && m.status.is_some()));
    let w: WriteResponse = c
        .post(
            "/v1/hosts",
            &serde_json::json!({"name": "h1", "address": "h1:7100", "vcpus": 8, "memory_mib": 8192,
                                                "hardware_family": "ia64", "hypervisor_version": "hpvm-6.1"}),
        )
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, eps2, token2) = start_dev(tmp.path());
    assert_eq!((&eps2, &token2), (&eps, &token), "a restart reuses ports and tokens");
    let c = Client::new(eps2, token2, Duration::from_secs(10));
    let st = common::cluster::eventually("the resumed cluster to elect a leader", Duration::from_secs(30), || async {
        c.get::<ClusterStatus>("/v1/cluster/status").await.ok().filter(|s| s.leader.is_some())
    })
    .await;
    assert_eq!(st.members.len(), 3);
    let h: serde_json::Value = c.get("/v1/hosts/h1").await.unwrap();
    assert!(h["revision"].as_u64().unwrap() >= w.first_revision);
    child.kill().unwrap();
    child.wait().unwrap();
}
