//! A graceful stop keeps the cluster writable: SIGTERM to the leader while agents and
//! `switchyard events --follow` clients stream makes it end its streams, hand its leadership to
//! an up-to-date follower and exit within seconds; a write sent during the stop is acknowledged
//! (once) by the new leader, and the followers' subscribers carry on without a gap.
mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::*;
use common::saga::*;
use switchyard_protocol::api::{CreateGuestRequest, StreamItem};
use switchyard_protocol::{Name, RunState};

fn guest(name: &str, request_id: &str) -> CreateGuestRequest {
    CreateGuestRequest {
        name: Name::new(name).unwrap(),
        owner: Name::new("h1").unwrap(),
        vcpus: 1,
        memory_mib: 512,
        disks: vec![],
        networks: vec![],
        online_migration: true,
        cluster_node: false,
        package: None,
        run_state: RunState::Running,
        request_id: Some(request_id.into()),
        anti_affinity: None,
    }
}

/// `switchyard events --follow --from 1 -o json` against one coordinator; its lines are
/// collected as they come.
fn subscriber(cluster: &TestCluster, id: u64) -> (std::process::Child, Arc<Mutex<Vec<String>>>) {
    let mut child = cluster
        .cli_command(&[id], ADMIN_TOKEN)
        .args(["events", "--follow", "--from", "1", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = BufReader::new(child.stdout.take().unwrap());
    let sink = lines.clone();
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    (child, lines)
}

/// The revisions of the events a follower printed, in order.
fn revisions(lines: &Mutex<Vec<String>>) -> Vec<u64> {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| match serde_json::from_str::<StreamItem>(l).ok()? {
            StreamItem::Event(e) => Some(e.revision),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_leader_hands_over_and_keeps_the_cluster_writable() {
    let (mut cluster, _agents) = cluster_with_agents(ClusterOpts::default()).await;
    let all = [1, 2, 3];
    let admin = cluster.client(&all).retrying_writes(Duration::from_secs(30));
    admin.create_guest(&guest("before", "b1")).await.unwrap();
    let leader = cluster.wait_leader(&all).await;
    let others: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    // Subscribers on every coordinator, the leader's included; each has caught up.
    let mut subscribers: Vec<_> = all.iter().map(|id| (*id, subscriber(&cluster, *id))).collect();
    let now = cluster.status(leader).await.unwrap().revision;
    for (id, (_, lines)) in &subscribers {
        eventually(&format!("the subscriber of node {id} to catch up"), Duration::from_secs(30), || async {
            revisions(lines).last().is_some_and(|r| *r >= now).then_some(())
        })
        .await;
    }

    // The stop, and a write sent while it runs.
    let term = cluster.status(leader).await.unwrap().term;
    cluster.node(leader).proc.signal_terminate();
    let during = admin.create_guest(&guest("during", "d1")).await.expect("a write during the stop is acknowledged");
    let status = cluster.nodes.iter_mut().find(|n| n.id == leader).unwrap().proc.wait_exit(Duration::from_secs(10));
    let status = status.expect("the stopped leader exits within seconds, streams and agents notwithstanding");
    assert!(status.success(), "a graceful stop exits 0: {status:?}");

    // Leadership was handed over, not lost to an election timeout.
    let log = std::fs::read_to_string(cluster.node(leader).dir.join("coordinator.log")).unwrap();
    assert!(log.contains("leadership handed over"), "no handover in the stopped leader's log:\n{log}");
    let new_leader = cluster.wait_leader(&others).await;
    assert!(others.contains(&new_leader));
    // One election round: the chosen follower won the very next term. Without the followers'
    // leases ended (openraft patch 7) its campaign is refused and a later term elects.
    assert_eq!(cluster.status(new_leader).await.unwrap().term, term + 1, "the handover took one election");

    // The write is there once; the followers' subscribers saw it, gap-free, without a restart.
    let history = history(&cluster.client(&others)).await;
    let created: Vec<u64> = history
        .iter()
        .filter(|e| matches!(&e.payload, switchyard_protocol::EventPayload::GuestCreated { guest } if guest.name.as_str() == "during"))
        .map(|e| e.revision)
        .collect();
    assert_eq!(created, vec![during.first_revision], "the write applied exactly once");
    for (id, (child, lines)) in subscribers.iter_mut().filter(|(id, _)| *id != leader) {
        eventually(&format!("the subscriber of node {id} to see the write"), Duration::from_secs(30), || async {
            revisions(lines).contains(&during.first_revision).then_some(())
        })
        .await;
        let seen = revisions(lines);
        assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "node {id}'s subscriber saw a gap or a repeat: {seen:?}");
        assert!(child.try_wait().unwrap().is_none(), "the subscriber of node {id} still follows");
    }
    // The leader's subscriber was moved to another coordinator by its client, without a gap.
    let (_, (child, lines)) = subscribers.iter_mut().find(|(id, _)| *id == leader).unwrap();
    let _ = child.kill();
    let seen = revisions(lines);
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "the leader's subscriber saw a gap or a repeat: {seen:?}");
    for (_, (child, _)) in &mut subscribers {
        let _ = child.kill();
    }
    check_history(&history, true);

    // The stopped coordinator comes back as a follower and catches up.
    cluster.restart(leader);
    cluster.wait_revision(leader, during.first_revision).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stops_promptly_and_the_cluster_keeps_its_leader() {
    let mut cluster = TestCluster::start(3, ClusterOpts::default()).await;
    let all = [1, 2, 3];
    let leader = cluster.wait_leader(&all).await;
    let follower = all.into_iter().find(|id| *id != leader).unwrap();
    let (mut sub, _) = subscriber(&cluster, follower);
    let (status, in_time) = cluster.terminate_within(follower, Duration::from_secs(10));
    assert!(in_time && status.success(), "a follower's graceful stop exits 0 within seconds: {status:?}");
    let admin = cluster.client(&all).retrying_writes(Duration::from_secs(30));
    let host = switchyard_testkit::cluster::big_host("h9", "h9:7100");
    admin.register_host(&host).await.expect("a write after a follower's stop");
    let remaining: Vec<u64> = all.into_iter().filter(|id| *id != follower).collect();
    assert_eq!(cluster.wait_leader(&remaining).await, leader, "no election for a follower's stop");
    let _ = sub.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_coordinators_hand_over_in_one_election() {
    let mut cluster = TestCluster::start(5, ClusterOpts::default()).await;
    let all = [1, 2, 3, 4, 5];
    let leader = cluster.wait_leader(&all).await;
    let admin = cluster.client(&all).retrying_writes(Duration::from_secs(30));
    admin.register_host(&switchyard_testkit::cluster::big_host("h1", "h1:7100")).await.unwrap();
    for id in all {
        cluster.wait_revision(id, 2).await;
    }
    let term = cluster.status(leader).await.unwrap().term;
    let (status, in_time) = cluster.terminate_within(leader, Duration::from_secs(10));
    assert!(in_time && status.success(), "the leader's graceful stop exits 0 within seconds: {status:?}");
    let others: Vec<u64> = all.into_iter().filter(|id| *id != leader).collect();
    let new_leader = cluster.wait_leader(&others).await;
    // The candidate needs three votes of the four left: every other follower ended its lease.
    assert_eq!(cluster.status(new_leader).await.unwrap().term, term + 1, "the handover took one election");
    admin.register_host(&switchyard_testkit::cluster::big_host("h2", "h2:7100")).await.expect("writable");
}
