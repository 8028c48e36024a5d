//! Adding and removing coordinators while writes flow.
mod common;

use std::collections::BTreeSet;

use common::cluster::*;
use serde_json::json;
use switchyard_protocol::api::{ClusterStatus, GuestView, Read, WriteResponse};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_remove_nodes_while_writes_flow() {
    let mut cluster = TestCluster::start(3, ClusterOpts::default()).await;
    let c = cluster.client(&[1, 2, 3]);
    let _: WriteResponse = c.post("/v1/hosts", &big_host("h1")).await.unwrap();
    let writer = {
        let c = cluster.client(&[2, 3, 1]);
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..60 {
                let body = json!({"name": format!("g{i}"), "owner": "h1", "vcpus": 1, "memory_mib": 128,
                                  "request_id": format!("{:x}", 0x9000 + i)});
                let r = write_until_acked(&c, "/v1/guests", &body).await;
                last = r.last_revision;
            }
            last
        })
    };
    cluster.spawn_new_node(4);
    cluster.add_voter(4).await.expect("node 4 joins");
    let removed: serde_json::Value = cluster.client(&[2, 3, 4]).delete("/v1/cluster/nodes/1").await.unwrap();
    assert_eq!(removed["removed"], 1);
    let last = writer.await.unwrap();

    let status: ClusterStatus = cluster.client(&[2, 3, 4]).get("/v1/cluster/status").await.unwrap();
    let members: BTreeSet<u64> = status.members.iter().map(|m| m.id).collect();
    assert_eq!(members, BTreeSet::from([2, 3, 4]));
    assert!(status.members.iter().all(|m| m.voter));
    for id in [2, 3, 4] {
        cluster.wait_revision(id, last).await;
    }
    let on4: Read<Vec<GuestView>> = cluster.client(&[4]).get("/v1/guests?stale=true").await.unwrap();
    assert_eq!(on4.items.len(), 60);
    // The cluster works without node 1.
    cluster.kill(1);
    cluster.wait_leader(&[2, 3, 4]).await;
    let _: WriteResponse = cluster
        .client(&[2, 3, 4])
        .post("/v1/guests", &json!({"name": "after", "owner": "h1", "vcpus": 1, "memory_mib": 128}))
        .await
        .unwrap();
}
