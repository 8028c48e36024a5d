//! A follower that was down while the leader compacted its log catches up through a snapshot
//! (the state), then fills its event history from its peers: it ends with the full history, and
//! until then it sends subscribers of the part it lacks to another coordinator.
mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use serde_json::json;
use switchyard_client::events::EventQuery;
use switchyard_protocol::api::{GuestView, Read, StreamItem, WriteResponse};

/// Three nodes that purge their log after a few entries: a follower to leave behind, and the two
/// others.
async fn three_nodes_compacting_often() -> (TestCluster, u64, Vec<u64>) {
    let opts = ClusterOpts { snapshot_logs_since_last: 20, max_in_snapshot_log_to_keep: 5, ..Default::default() };
    let cluster = TestCluster::start(3, opts).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let lagging = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != lagging).collect();
    (cluster, lagging, others)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_catches_up_through_a_snapshot_after_log_purge() {
    let (mut cluster, lagging, others) = three_nodes_compacting_often().await;
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

/// Between its snapshot install and the end of its backfill, a follower lacks the history before
/// the snapshot, which the cluster still holds: a subscription from revision 1 is answered
/// `unavailable` there (not `compacted`, which would make an agent re-read the full state), and
/// a client with other endpoints gets the whole history, gap-free, from one that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_still_filling_its_history_sends_subscribers_on_instead_of_calling_it_compacted() {
    let (mut cluster, lagging, others) = three_nodes_compacting_often().await;
    let c = cluster.client(&others);
    let _: WriteResponse = c.post("/v1/hosts", &big_host("h1")).await.unwrap();
    // The follower's backfill looks for missing history once a second: catch it in between, when
    // it has installed the snapshot and not yet fetched what lies before it, and cut it off from
    // its peers there (each try that misses the window lets it fill in, and goes again).
    let mut last = 0;
    let mut missing_before = None;
    for attempt in 0..5 {
        let behind_at = cluster.status(lagging).await.unwrap().last_log_index.unwrap_or(0);
        cluster.kill(lagging);
        for i in 0..40 {
            let guest = json!({"name": format!("g{attempt}-{i}"), "owner": "h1", "vcpus": 1, "memory_mib": 64});
            last = c.post::<_, WriteResponse>("/v1/guests", &guest).await.unwrap().last_revision;
        }
        let leader = cluster.wait_leader(&others).await;
        eventually("the leader to purge its log", Duration::from_secs(30), || async {
            cluster.status(leader).await.and_then(|s| s.purged_index).filter(|p| *p > behind_at)
        })
        .await;
        cluster.restart(lagging);
        let started = Instant::now();
        let first = loop {
            assert!(started.elapsed() < Duration::from_secs(60), "the follower did not catch up");
            match cluster.status(lagging).await {
                Some(st) if st.history_first > 1 => break Some(st.history_first),
                Some(st) if st.revision >= last => break None,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        if first.is_some() {
            for id in &others {
                cluster.kill(*id);
            }
            // Read again once cut off: a second snapshot install may have moved the history's
            // start up meanwhile, or the backfill may have filled it in.
            let held_from = cluster.status(lagging).await.unwrap().history_first;
            if held_from > 1 {
                missing_before = Some(held_from);
                break;
            }
            for id in &others {
                cluster.restart(*id);
            }
            cluster.wait_leader(&[1, 2, 3]).await;
        }
        eprintln!("try {attempt}: the follower filled its history before it could be cut off");
        cluster.wait_revision(lagging, last).await;
    }
    let first = missing_before.expect("the follower was caught between its snapshot install and its backfill");
    eprintln!("follower {lagging} holds its history from revision {first}; its peers are down");

    // Alone, it refuses the part it lacks, and serves the part it holds.
    let alone = cluster.client(&[lagging]);
    let e = alone.events(&EventQuery { from: 1, ..Default::default() }, |_| true).await.unwrap_err();
    assert_eq!(e.code(), Some("unavailable"), "{e}");
    // Its start as it is now: an install whose snapshot arrived just before the peers were cut
    // off may have moved it up since.
    let first = cluster.status(lagging).await.unwrap().history_first;
    let mut held = Vec::new();
    alone
        .events(&EventQuery { from: first, ..Default::default() }, |i| {
            if let StreamItem::Event(e) = i {
                held.push(e.revision);
            }
            true
        })
        .await
        .unwrap();
    assert!(held.iter().copied().eq(first..first + held.len() as u64), "from {first}: {held:?}");

    // With a peer back, a subscription through the follower first gets everything, in order.
    cluster.restart(others[0]);
    let mut got = Vec::new();
    cluster
        .client(&[lagging, others[0]])
        .events(&EventQuery { from: 1, follow: true, ..Default::default() }, |i| {
            match i {
                StreamItem::Event(e) => got.push(e.revision),
                StreamItem::Compacted { .. } => panic!("told compacted: {i:?}"),
                StreamItem::Progress { .. } => {}
            }
            got.last() < Some(&last)
        })
        .await
        .unwrap();
    assert_eq!(got, (1..=last).collect::<Vec<_>>());
}
