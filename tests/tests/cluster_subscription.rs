//! Watch guarantees, checked the way etcd's robustness tests check them: several subscribers
//! started at different revisions while writes flow, the leader killed and a follower restarted
//! mid-stream; every subscriber receives strictly increasing, gap-free revisions from its start,
//! without duplicates, equal to the stored history.
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::cluster::*;
use common::metrics::{get, scrape};
use serde_json::json;
use switchyard_client::{Client, EventQuery};
use switchyard_protocol::api::{StreamItem, WriteResponse};
use switchyard_protocol::Event;

/// Follows events from `from` until revision `target` (0 = not known yet) has been received.
async fn subscriber(c: Client, q: EventQuery, target: Arc<AtomicU64>) -> Vec<Event> {
    let mut got = Vec::new();
    let mut seen = 0;
    c.events(&q, |item| {
        match item {
            StreamItem::Event(e) => {
                seen = e.revision;
                got.push((**e).clone());
            }
            StreamItem::Progress { revision } => seen = seen.max(*revision),
            StreamItem::Compacted { .. } => panic!("nothing is compacted in this test"),
        }
        let t = target.load(Ordering::SeqCst);
        t == 0 || seen < t
    })
    .await
    .expect("subscription");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_every_revision_once_in_order_across_failures() {
    let mut cluster = TestCluster::start(3, ClusterOpts::default()).await;
    let all = cluster.client(&[1, 2, 3]);
    let _: WriteResponse = all.post("/v1/hosts", &big_host("h1")).await.unwrap();
    for i in 0..20 {
        let _: WriteResponse = all
            .post("/v1/guests", &json!({"name": format!("g{i}"), "owner": "h1", "vcpus": 1, "memory_mib": 64}))
            .await
            .unwrap();
    }
    let target = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    for (k, from) in [1u64, 10, 30].into_iter().enumerate() {
        // Each subscriber prefers a different coordinator first.
        let order: Vec<u64> = (0..3).map(|j| (k as u64 + j) % 3 + 1).collect();
        let q = EventQuery { from, follow: true, ..Default::default() };
        subs.push((from, tokio::spawn(subscriber(cluster.client(&order), q, target.clone()))));
    }
    let q = EventQuery { from: 1, follow: true, guest: Some("g5".into()), ..Default::default() };
    let filtered = tokio::spawn(subscriber(cluster.client(&[3, 2, 1]), q, target.clone()));

    let writer = {
        let c = all.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for i in 20..80u64 {
                let body = json!({"name": format!("g{i}"), "owner": "h1", "vcpus": 1, "memory_mib": 64,
                                  "request_id": format!("{:x}", 0x7000 + i)});
                last = write_until_acked(&c, "/v1/guests", &body).await.last_revision;
                if i % 10 == 0 {
                    let patch = json!({"vcpus": 2, "request_id": format!("{:x}", 0x8000 + i)});
                    last = loop {
                        match c.patch::<_, WriteResponse>("/v1/guests/g5", &patch).await {
                            Ok(r) => break r.last_revision,
                            Err(e) => {
                                eprintln!("patch g5: {e}; retrying");
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            }
                        }
                    };
                }
            }
            last
        })
    };
    // Faults mid-stream: kill the leader, then restart a follower.
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    cluster.wait_revision(leader, 30).await;
    cluster.kill(leader);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let new_leader = cluster.wait_leader(&survivors).await;
    let follower = survivors.into_iter().find(|id| *id != new_leader).unwrap();
    cluster.kill(follower);
    cluster.restart(leader);
    cluster.wait_leader(&[leader, new_leader]).await;
    cluster.restart(follower);
    let last = writer.await.unwrap();
    target.store(last, Ordering::SeqCst);

    let history = {
        let mut h = Vec::new();
        let q = EventQuery { from: 1, follow: false, ..Default::default() };
        cluster
            .client(&[new_leader])
            .events(&q, |i| {
                if let StreamItem::Event(e) = i {
                    h.push((**e).clone());
                }
                true
            })
            .await
            .unwrap();
        h
    };
    assert_eq!(history.len() as u64, last, "stored history is gap-free up to the last write");
    for (from, sub) in subs {
        let got = sub.await.unwrap();
        let want: Vec<Event> = history.iter().filter(|e| e.revision >= from).cloned().collect();
        let revs: Vec<u64> = got.iter().map(|e| e.revision).collect();
        assert!(revs.windows(2).all(|w| w[1] == w[0] + 1), "subscriber from {from}: gap or duplicate in {revs:?}");
        assert_eq!(revs.first().copied(), Some(from), "subscriber from {from} started elsewhere");
        assert_eq!(got, want, "subscriber from {from} saw something other than the stored history");
    }
    let g5: Vec<Event> =
        history.iter().filter(|e| e.payload.guest().map(|g| g.as_str()) == Some("g5")).cloned().collect();
    assert!(g5.len() >= 7, "expected g5's creation and its modifications, got {}", g5.len());
    assert_eq!(filtered.await.unwrap(), g5, "the guest filter lost, added or reordered events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscription_requests_are_refused() {
    let cluster = TestCluster::start(1, ClusterOpts::default()).await;
    let c = cluster.client(&[1]);
    for (q, code) in [
        (EventQuery { guest: Some("..%2Fx".into()), ..Default::default() }, "bad_request"),
        (EventQuery { kind: Some("colour".into()), ..Default::default() }, "bad_request"),
    ] {
        let err = c.events(&q, |_| true).await.unwrap_err();
        assert_eq!(err.code(), Some(code), "{err}");
    }
    let err =
        cluster.client_for(&[1], "no-such-token-xxxxxxxxx").events(&EventQuery::default(), |_| true).await.unwrap_err();
    assert_eq!(err.code(), Some("unauthenticated"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_stream_carries_the_same_items() {
    let cluster = TestCluster::start(1, ClusterOpts::default()).await;
    let c = cluster.client(&[1]);
    let _: WriteResponse = c.post("/v1/hosts", &big_host("h1")).await.unwrap();
    let _: WriteResponse =
        c.post("/v1/guests", &json!({"name": "g1", "owner": "h1", "vcpus": 1, "memory_mib": 64})).await.unwrap();
    let url = cluster.url(1, "/v1/events?from=1&format=binary");
    let resp = cluster.http_for(AGENT_TOKEN).get(url).bearer_auth(AGENT_TOKEN).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let bytes = resp.bytes().await.unwrap();
    let mut items = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        items.push(switchyard_protocol::codec::decode::<StreamItem>(&rest[4..4 + len]).unwrap());
        rest = &rest[4 + len..];
    }
    let revs: Vec<u64> = items
        .iter()
        .map(|i| match i {
            StreamItem::Event(e) => e.revision,
            StreamItem::Progress { revision } => 1000 + revision,
            StreamItem::Compacted { .. } => panic!("not compacted"),
        })
        .collect();
    assert_eq!(revs, [1, 2, 3, 1003], "the cluster identity, two events, then a progress mark at revision 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_history_gets_a_distinct_answer_and_a_state_to_resume_from() {
    let opts = ClusterOpts {
        snapshot_logs_since_last: 20,
        max_in_snapshot_log_to_keep: 5,
        retain_revisions: 10,
        ..Default::default()
    };
    let cluster = TestCluster::start(3, opts).await;
    let c = cluster.client(&[1, 2, 3]);
    let _: WriteResponse = c.post("/v1/hosts", &big_host("h1")).await.unwrap();
    let mut last = 0;
    for i in 0..60 {
        let r: WriteResponse = c
            .post("/v1/guests", &json!({"name": format!("g{i}"), "owner": "h1", "vcpus": 1, "memory_mib": 64}))
            .await
            .unwrap();
        last = r.last_revision;
    }
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let lc = cluster.client(&[leader]);
    // Snapshots and compaction run in the background: wait for the distinct answer.
    let (first_retained, snapshot_revision) =
        eventually("history to be compacted", std::time::Duration::from_secs(30), || async {
            let mut answer = None;
            lc.events(&EventQuery { from: 1, ..Default::default() }, |i| {
                if let StreamItem::Compacted { first_retained, snapshot_revision } = i {
                    answer = Some((*first_retained, *snapshot_revision));
                }
                false
            })
            .await
            .unwrap();
            answer
        })
        .await;
    assert!(first_retained > 1 && snapshot_revision >= first_retained - 1, "{first_retained} / {snapshot_revision}");
    // Re-read full state, then resume right after it: nothing missing, nothing twice.
    let state: switchyard_protocol::api::Read<switchyard_protocol::api::FullState> = lc.get("/v1/state").await.unwrap();
    assert_eq!(state.items.guests.len(), 60);
    let mut revs = Vec::new();
    lc.events(&EventQuery { from: state.revision + 1, ..Default::default() }, |i| {
        if let StreamItem::Event(e) = i {
            revs.push(e.revision);
        }
        true
    })
    .await
    .unwrap();
    assert_eq!(revs, (state.revision + 1..=last).collect::<Vec<_>>());
}

/// A subscriber that stops reading loses its stream once the coordinator's writes to it have
/// waited `api.stream_stall_timeout_ms`, and its slot is given back; a subscriber that reads
/// receives every event meanwhile, gap-free. What the stalled one got is a gap-free prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_reads_nothing_is_cut_off_and_holds_back_no_one() {
    let opts = ClusterOpts { stream_stall_timeout_ms: 1000, ..Default::default() };
    let cluster = TestCluster::start(1, opts).await;
    let c = cluster.client(&[1]);
    let _: WriteResponse = c.post("/v1/hosts", &big_host("h1")).await.unwrap();
    // Its answer is held and its body never read, so the coordinator's writes to it stall once
    // the buffers between them (socket buffers of a few MiB, the client's read buffer) are full.
    let stalled = cluster
        .http_for(AGENT_TOKEN)
        .get(cluster.url(1, "/v1/events?from=1&follow=true"))
        .bearer_auth(AGENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    let target = Arc::new(AtomicU64::new(0));
    let q = EventQuery { from: 1, follow: true, ..Default::default() };
    let reader = tokio::spawn(subscriber(cluster.client(&[1]), q, target.clone()));
    let open = || async { get(&scrape(&cluster, 1).await, "switchyard_subscribers", &[]) };
    let wait = std::time::Duration::from_secs(30);
    eventually("both subscriptions to be open", wait, || async { (open().await == 2.0).then_some(()) }).await;

    // Large events (a guest with every disk and network it may have: ≈ 24 KiB of JSON each)
    // until the stalled subscription is gone, at most 3 000 of them (≈ 70 MiB).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (c, stop, next) = (c.clone(), stop.clone(), next.clone());
            tokio::spawn(async move {
                let long = |what: &str, i: usize| format!("{what}{i}-{}", "x".repeat(240));
                let mut last = 0;
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= 3000 {
                        break;
                    }
                    let guest = json!({"name": format!("g{i}"), "owner": "h1", "vcpus": 1, "memory_mib": 64,
                        "disks": (0..64).map(|d| long("disk", d)).collect::<Vec<_>>(),
                        "networks": (0..32).map(|n| long("net", n)).collect::<Vec<_>>()});
                    let r: WriteResponse = c.post("/v1/guests", &guest).await.unwrap();
                    last = last.max(r.last_revision);
                }
                last
            })
        })
        .collect();
    eventually("the coordinator to end the stalled subscription", std::time::Duration::from_secs(180), || async {
        (open().await == 1.0).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut last = 0;
    for w in writers {
        last = last.max(w.await.unwrap());
    }
    let log = std::fs::read_to_string(cluster.node(1).proc.log()).unwrap();
    assert!(log.contains("took nothing for 1s"), "the coordinator logs why it ended the connection");

    // The reader was not held back: it receives every revision, in order, once.
    target.store(last, Ordering::SeqCst);
    let got: Vec<u64> = tokio::time::timeout(wait, reader)
        .await
        .expect("the reader keeps up")
        .unwrap()
        .iter()
        .map(|e| e.revision)
        .collect();
    assert_eq!(got, (1..=last).collect::<Vec<_>>());

    // The stalled subscriber's stream ends (an error, its connection closed) after a gap-free
    // prefix of the history.
    let mut stalled = stalled;
    let mut body = Vec::new();
    let ended = tokio::time::timeout(wait, async {
        while let Ok(Some(b)) = stalled.chunk().await {
            body.extend_from_slice(&b);
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled subscription ended");
    let complete = &body[..body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)];
    let revisions: Vec<u64> = complete
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| match serde_json::from_slice::<StreamItem>(l).unwrap() {
            StreamItem::Event(e) => Some(e.revision),
            _ => None,
        })
        .collect();
    assert!(!revisions.is_empty() && revisions.len() < last as usize, "got {} of {last}", revisions.len());
    assert_eq!(revisions, (1..=revisions.len() as u64).collect::<Vec<_>>());
}
