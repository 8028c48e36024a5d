//! A follower that was down while the leader compacted its log catches up through a snapshot
//! (the state), then fills its event history from its peers: it ends with the full history.
mod common;

use common::cluster::*;
use serde_json::json;
use switchyard_protocol::api::{GuestView, Read, WriteResponse};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_catches_up_through_a_snapshot_after_log_purge() {
    let opts = ClusterOpts { snapshot_logs_since_last: 20, max_in_snapshot_log_to_keep: 5, ..Default::default() };
    let mut cluster = TestCluster::start(3, opts).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let lagging = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != lagging).collect();
    let behind_at = cluster.status(lagging).await.unwrap().last_log_index.unwrap_or(0);
    cluster.kill(lagging);

    let c = cluster.client(&others);
    let _: WriteResponse = c.post("/v1/hosts", &big_host("h1")).await.unwrap();
    let mut last = 0;
    for i in 0..80 {
        let r: WriteResponse = c
            .post("/v1/guests", &json!({"name": format!("g{i}"), "owner": "h1", "vcpus": 1, "memory_mib": 128}))
            .await
            .unwrap();
        last = r.last_revision;
    }
    let leader = cluster.wait_leader(&others).await;
    let purged = eventually("the leader to purge its log", std::time::Duration::from_secs(30), || async {
        cluster.status(leader).await.and_then(|s| s.purged_index).filter(|p| *p > behind_at)
    })
    .await;
    eprintln!("leader purged up to {purged}; follower {lagging} stopped at {behind_at}");

    cluster.restart(lagging);
    let st = cluster.wait_revision(lagging, last).await;
    assert!(st.snapshot_index.is_some(), "follower caught up without installing a snapshot: {st:?}");
    let want: Read<Vec<GuestView>> = cluster.client(&[leader]).get("/v1/guests").await.unwrap();
    let got: Read<Vec<GuestView>> = cluster.client(&[lagging]).get("/v1/guests?stale=true").await.unwrap();
    assert_eq!(got.items, want.items);
    // The snapshot carried the state; the older history comes from the peers. The leader, the
    // first peer asked, is killed meanwhile (and the follower itself once): the history still
    // ends whole, from the third node.
    cluster.kill(lagging);
    cluster.restart(lagging);
    cluster.kill(leader);
    eventually("the follower's history to be whole", std::time::Duration::from_secs(60), || async {
        cluster.status(lagging).await.filter(|s| s.history_first == 1)
    })
    .await;
    cluster.restart(leader);
    cluster.wait_revision(leader, last).await;

    cluster.kill_all();
    let history = |id: u64| {
        let (_, sm) = switchyard_storage::open(&cluster.node(id).dir.join("data"), id).unwrap();
        sm.history().events_from(1, usize::MAX).unwrap()
    };
    let full = history(leader);
    assert_eq!(full.len() as u64, last);
    assert_eq!(history(lagging), full, "the follower's history has a hole or differs");
}
