//! Killing the leader: a new leader is elected within seconds, writes continue, and clients that
//! retry with their request ids lose no acknowledged write and apply none twice (checked on
//! every node's event history).
mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::cluster::*;
use serde_json::json;
use switchyard_client::Client;
use switchyard_protocol::api::WriteResponse;
use switchyard_protocol::EventPayload;

const WRITES: u64 = 60;

/// Writes guest `i` with a fixed request id, retrying (same id) until acknowledged.
async fn write_with_retries(c: &Client, i: u64) -> WriteResponse {
    let body = json!({"name": format!("g{i}"), "owner": "h1", "vcpus": 1, "memory_mib": 256,
                      "request_id": format!("{:x}", 0x5000 + i)});
    write_until_acked(c, "/v1/guests", &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_writes_continue_without_loss_or_duplicates() {
    let mut cluster = TestCluster::start(3, ClusterOpts::default()).await;
    let all = cluster.client(&[1, 2, 3]);
    let _: WriteResponse = all.post("/v1/hosts", &big_host("h1")).await.unwrap();
    let old_leader = cluster.wait_leader(&[1, 2, 3]).await;

    let mut acked = BTreeMap::new();
    for i in 0..WRITES / 3 {
        acked.insert(i, write_with_retries(&all, i).await);
    }
    // Kill the leader while a write is in flight.
    let writer = {
        let c = all.clone();
        tokio::spawn(async move {
            let mut out = BTreeMap::new();
            for i in WRITES / 3..WRITES {
                out.insert(i, write_with_retries(&c, i).await);
            }
            out
        })
    };
    cluster.kill(old_leader);
    let killed_at = Instant::now();
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old_leader).collect();
    let new_leader = cluster.wait_leader(&survivors).await;
    eprintln!("new leader {new_leader} after {:?}", killed_at.elapsed());
    assert_ne!(new_leader, old_leader);
    acked.extend(writer.await.unwrap());

    // The old leader comes back and catches up.
    cluster.restart(old_leader);
    let last = acked.values().map(|r| r.last_revision).max().unwrap();
    for id in [1, 2, 3] {
        cluster.wait_revision(id, last).await;
    }
    cluster.kill_all();

    // Every node's history holds each acknowledged write exactly once, at the acknowledged revision.
    let mut histories = Vec::new();
    for id in [1, 2, 3] {
        let (_, sm) = switchyard_storage::open(&cluster.node(id).dir.join("data"), id).unwrap();
        histories.push(sm.history().events_from(1, usize::MAX).unwrap());
    }
    assert_eq!(histories[0], histories[1]);
    assert_eq!(histories[0], histories[2]);
    let history = &histories[0];
    for (i, r) in &acked {
        let name = format!("g{i}");
        let created: Vec<_> = history
            .iter()
            .filter(|e| matches!(&e.payload, EventPayload::GuestCreated { guest } if guest.name.as_str() == name))
            .collect();
        assert_eq!(created.len(), 1, "guest {name} created {} times", created.len());
        assert_eq!(created[0].revision, r.first_revision, "ack for {name} names another revision");
        assert_eq!(created[0].request_id.0, 0x5000 + *i as u128);
    }
    // Revisions are gap-free.
    for (k, e) in history.iter().enumerate() {
        assert_eq!(e.revision, k as u64 + 1);
    }
}
