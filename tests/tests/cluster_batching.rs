//! Concurrent writes are packed into shared log entries by the leader's batcher
//! (`coordinator/src/proposer.rs`). Whatever the packing, every write gets its own revision, every
//! acknowledged write is in the history exactly once, and a retry with the same request id —
//! even one that lands in the same entry as the original — is applied once.
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::cluster::*;
use common::saga::history;
use serde_json::json;
use switchyard_protocol::api::WriteResponse;
use switchyard_protocol::EventPayload;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_and_retries_each_commit_once() {
    let cluster = TestCluster::start(3, ClusterOpts::default()).await;
    let admin = Arc::new(cluster.client(&[1, 2, 3]));
    write_until_acked(&admin, "/v1/hosts", &big_host("h1")).await;
    let mut tasks = Vec::new();
    for w in 0..64u32 {
        let c = admin.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..10u32 {
                let rid = format!("{:x}", (w << 8) | i | 0x1000_0000);
                let body = json!({"name": format!("w{w}i{i}"), "owner": "h1", "vcpus": 1, "memory_mib": 64,
                                  "request_id": rid});
                // Every fourth write is sent twice at once: same request id, likely the same batch.
                let twice = i % 4 == 0;
                let (a, b) = tokio::join!(c.post::<_, WriteResponse>("/v1/guests", &body), async {
                    if twice {
                        Some(c.post::<_, WriteResponse>("/v1/guests", &body).await)
                    } else {
                        None
                    }
                });
                let a = a.unwrap_or_else(|e| panic!("write {w}/{i}: {e}"));
                if let Some(b) = b {
                    let b = b.unwrap_or_else(|e| panic!("retry {w}/{i}: {e}"));
                    assert_eq!(a.first_revision, b.first_revision, "a retry must answer the original's revision");
                    assert!(a.duplicate != b.duplicate, "exactly one of the two applies");
                }
                acked.push((format!("w{w}i{i}"), a.first_revision));
            }
            acked
        }));
    }
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    for t in tasks {
        for (name, rev) in t.await.unwrap() {
            assert!(acked.insert(rev, name.clone()).is_none(), "two writes acknowledged at revision {rev}");
        }
    }
    let events = history(&admin).await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.revision, i as u64 + 1, "gap-free history");
    }
    let created: BTreeMap<u64, String> = events
        .iter()
        .filter_map(|e| match &e.payload {
            EventPayload::GuestCreated { guest } => Some((e.revision, guest.name.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(created, acked, "the history holds exactly the acknowledged writes, each once, at its revision");
    // And they really were packed: fewer log entries than revisions.
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let st = cluster.status(leader).await.unwrap();
    assert!(
        st.last_log_index.unwrap() < st.revision,
        "{} log entries for {} revisions: the writes were not batched",
        st.last_log_index.unwrap(),
        st.revision
    );
}
