//! Agent reports: bound to the agent's own host, held by the leader, turned into a per-host sync
//! status; only reachability *transitions* reach the log.
mod common;

use std::time::Duration;

use common::cluster::*;
use serde_json::json;
use switchyard_client::{Client, EventQuery};
use switchyard_protocol::api::{FullState, HostView, Read, StreamItem, SyncStatus, WriteResponse};
use switchyard_protocol::hostconfig::HostConfig;
use switchyard_protocol::{EventPayload, HostState};

async fn report(c: &Client, host: &str, revision: u64, digest: u64) -> Result<serde_json::Value, String> {
    c.post(&format!("/v1/hosts/{host}/report"), &json!({"applied_revision": revision, "digest": digest}))
        .await
        .map_err(|e| e.to_string())
}

async fn host(c: &Client, name: &str) -> HostView {
    c.get::<Read<HostView>>(&format!("/v1/hosts/{name}")).await.unwrap().items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_give_sync_status_and_silence_is_logged_once() {
    let opts = ClusterOpts { host_report_timeout_ms: 1000, ..Default::default() };
    let cluster = TestCluster::start(3, opts).await;
    let admin = cluster.client(&[1, 2, 3]);
    let _: WriteResponse = admin.post("/v1/hosts", &big_host("h1")).await.unwrap();
    let _: WriteResponse = admin.post("/v1/hosts", &big_host("h2")).await.unwrap();
    let _: WriteResponse =
        admin.post("/v1/guests", &json!({"name": "vm1", "owner": "h1", "vcpus": 1, "memory_mib": 64})).await.unwrap();
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    // The agent talks to a follower first: its report is forwarded to the leader.
    let agent = cluster.client_for(&[follower, leader], AGENT_TOKEN);

    let state: Read<FullState> = admin.get("/v1/state").await.unwrap();
    let digest = HostConfig::from_guests(state.items.guests.clone()).digest();

    // An agent token for h1 may not report for h2.
    let err = report(&agent, "h2", state.revision, digest).await.unwrap_err();
    assert!(err.contains("forbidden") && err.contains("may not report for host h2"), "{err}");
    // Nor may an admin or operator token pose as an agent.
    let err = report(&admin, "h1", state.revision, digest).await.unwrap_err();
    assert!(err.contains("forbidden"), "{err}");

    // The first report makes h1 join failure detection (`HostJoined`, a commit): report again
    // at the revision that follows it.
    report(&agent, "h1", state.revision, digest).await.unwrap();
    let joined = eventually("h1 to join failure detection", Duration::from_secs(30), || async {
        let s: Read<FullState> = admin.get("/v1/state").await.ok()?;
        (s.revision > state.revision).then_some(s)
    })
    .await;
    let state = joined;
    report(&agent, "h1", state.revision, digest).await.unwrap();
    assert_eq!(host(&admin, "h1").await.sync.unwrap().status, SyncStatus::InSync);
    report(&agent, "h1", state.revision, digest ^ 1).await.unwrap();
    assert_eq!(host(&admin, "h1").await.sync.unwrap().status, SyncStatus::Diverged);
    report(&agent, "h1", state.revision - 2, digest).await.unwrap();
    assert_eq!(host(&admin, "h1").await.sync.unwrap().status, SyncStatus::Lagging { behind: 2 });

    // h2 has no agent: after the timeout the leader logs it unreachable, once.
    let h2 = eventually("h2 to be marked unreachable", Duration::from_secs(30), || async {
        Some(host(&admin, "h2").await).filter(|h| h.state == HostState::Unreachable)
    })
    .await;
    assert_eq!(h2.sync.unwrap().status, SyncStatus::Unknown);
    // h1 falls silent too, then reports again: unreachable, then reachable.
    eventually("h1 to be marked unreachable", Duration::from_secs(30), || async {
        Some(host(&admin, "h1").await).filter(|h| h.state == HostState::Unreachable)
    })
    .await;
    let now: Read<FullState> = admin.get("/v1/state").await.unwrap();
    report(&agent, "h1", now.revision, digest).await.unwrap();
    eventually("h1 to be reachable again", Duration::from_secs(30), || async {
        Some(host(&admin, "h1").await).filter(|h| h.state == HostState::Active)
    })
    .await;
    // Let a few more liveness rounds pass without changes, then read the transitions logged.
    let end: Read<FullState> = admin.get("/v1/state").await.unwrap();
    let mut transitions = Vec::new();
    admin
        .events(&EventQuery { from: 1, kind: Some("host".into()), ..Default::default() }, |i| {
            if let StreamItem::Event(e) = i {
                if let EventPayload::HostReachabilityChanged { host, reachable } = &e.payload {
                    transitions.push((host.to_string(), *reachable));
                }
            }
            true
        })
        .await
        .unwrap();
    let of = |h: &str| transitions.iter().filter(|(n, _)| n == h).map(|(_, r)| *r).collect::<Vec<_>>();
    assert_eq!(of("h2"), [false], "only transitions are logged (history up to revision {})", end.revision);
    assert_eq!(of("h1"), [false, true], "only transitions are logged (history up to revision {})", end.revision);
}
