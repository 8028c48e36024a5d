//! A real 3-coordinator cluster: writes through any node reach every node; stale versions are
//! refused without changing anything.
mod common;

use common::cluster::*;
use serde_json::json;
use switchyard_protocol::api::{GuestView, Read, WriteResponse};

fn host(name: &str) -> serde_json::Value {
    json!({"name": name, "address": format!("{name}:7100"), "vcpus": 64, "memory_mib": 262144,
           "hardware_family": "ia64", "hypervisor_version": "hpvm-6.1"})
}

fn guest(name: &str, owner: &str) -> serde_json::Value {
    json!({"name": name, "owner": owner, "vcpus": 2, "memory_mib": 2048, "package": format!("pkg-{name}")})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_reach_every_node() {
    let cluster = TestCluster::start(3, ClusterOpts::default()).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();

    // Revision 1 is the cluster's identity, committed by `cluster init`.
    let r: WriteResponse = cluster.client(&[leader]).post("/v1/hosts", &host("h1")).await.unwrap();
    assert_eq!(r.first_revision, 2);
    // Through a follower: forwarded to the leader.
    let r: WriteResponse = cluster.client(&[followers[0]]).post("/v1/guests", &guest("g1", "h1")).await.unwrap();
    assert_eq!(r.first_revision, 3);
    let r: WriteResponse = cluster
        .client(&[followers[1]])
        .patch("/v1/guests/g1", &json!({"vcpus": 4, "expect_version": 3}))
        .await
        .unwrap();
    assert_eq!(r.first_revision, 4);

    // Every node holds the same guest at the same revision (stale local reads, after catching up).
    for id in [1, 2, 3] {
        cluster.wait_revision(id, 4).await;
        let g: Read<GuestView> = cluster.client(&[id]).get("/v1/guests/g1?stale=true").await.unwrap();
        assert_eq!((g.revision, g.items.guest.spec.vcpus, g.items.guest.version), (4, 4, 4), "node {id}");
    }
    // A linearizable read through a follower sees the latest write.
    let g: Read<GuestView> = cluster.client(&[followers[0]]).get("/v1/guests/g1").await.unwrap();
    assert_eq!(g.revision, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_expected_version_is_refused_and_changes_nothing() {
    let cluster = TestCluster::start(3, ClusterOpts::default()).await;
    let c = cluster.client(&[1, 2, 3]);
    let _: WriteResponse = c.post("/v1/hosts", &host("h1")).await.unwrap();
    let created: WriteResponse = c.post("/v1/guests", &guest("g1", "h1")).await.unwrap();
    let v = created.first_revision;
    let _: WriteResponse = c.patch("/v1/guests/g1", &json!({"memory_mib": 4096, "expect_version": v})).await.unwrap();
    let before: Read<GuestView> = c.get("/v1/guests/g1").await.unwrap();
    let err = c
        .patch::<_, WriteResponse>("/v1/guests/g1", &json!({"memory_mib": 1024, "expect_version": v}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("version_conflict"), "{err}");
    let after: Read<GuestView> = c.get("/v1/guests/g1").await.unwrap();
    assert_eq!(after, before, "a refused write changed something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_cleanly_and_it_rejoins() {
    let mut cluster = TestCluster::start(3, ClusterOpts::default()).await;
    let c = cluster.client(&[1, 2, 3]);
    let _: WriteResponse = c.post("/v1/hosts", &host("h1")).await.unwrap();
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let status = cluster.terminate(leader);
    assert!(status.success(), "graceful shutdown exited with {status}");
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    cluster.wait_leader(&others).await;
    let w: WriteResponse = cluster.client(&others).post("/v1/guests", &guest("g1", "h1")).await.unwrap();
    cluster.restart(leader);
    cluster.wait_revision(leader, w.last_revision).await;
}
