//! `log restore`: every coordinator of a cluster is lost; brand-new coordinators on the same
//! addresses are seeded from an export taken earlier. The agents of the old cluster, which kept
//! running and applied changes made after the export, notice the new cluster id and re-sync,
//! ending with exactly the restored configuration; new work (config changes, a migration whose
//! fencing tokens must exceed every imported one) then flows as before. On the way: a damaged
//! export, a hostile chunk and a chunk out of order are refused and change nothing, writes are
//! refused while the import runs, and an interrupted restore resumes. The same with members
//! seeded offline (`log seed`), one of them left empty, where `log restore` pushes no event.
mod common;

use std::time::Duration;

use common::cluster::*;
use common::saga::*;
use serde_json::json;
use switchyard_protocol::api::{FullState, IdentityView, ImportRequest, Read, WriteResponse};
use switchyard_protocol::{ClusterId, Event, Phase};
use switchyard_storage::export::ExportRecord;

/// The events of a JSON-lines export with their chain values.
fn export_events(path: &std::path::Path) -> Vec<(Event, String)> {
    std::fs::read_to_string(path)
        .expect("read export")
        .lines()
        .filter_map(|l| match serde_json::from_str::<ExportRecord>(l).expect("a record") {
            ExportRecord::Event { event, chain } => Some((*event, chain)),
            _ => None,
        })
        .collect()
}

async fn identity(c: &switchyard_client::Client) -> Read<IdentityView> {
    c.get("/v1/cluster/identity").await.expect("read identity")
}

async fn patch(c: &switchyard_client::Client, guest: &str, body: serde_json::Value) {
    c.patch::<_, WriteResponse>(&format!("/v1/guests/{guest}"), &body).await.expect("modify guest");
}

/// A history worth restoring: guests, a package, a completed migration, a change. Returns the
/// cluster's identity.
async fn write_restorable_history(
    cluster: &TestCluster,
    admin: &switchyard_client::Client,
) -> switchyard_protocol::ClusterIdentity {
    create_guest(admin, "g1", "h1", Some("p1")).await;
    create_guest(admin, "g2", "h2", None).await;
    create_guest(admin, "g3", "h3", None).await;
    let m = migrate(admin, "g1", "h2", "a1").await;
    assert_eq!(wait_terminal(cluster, m).await.phase, Phase::Completed);
    patch(admin, "g2", json!({"vcpus": 3})).await;
    identity(admin).await.items.identity.expect("init committed an identity")
}

fn agent_cluster(a: &AgentProc) -> Option<String> {
    std::fs::read_to_string(a.dir.join("data").join("cluster")).ok().map(|s| s.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_seeds_a_new_cluster_and_old_agents_resync() {
    let opts = ClusterOpts { sim_transfer_ms: 300, ..Default::default() };
    let (mut cluster, agents) = cluster_with_agents(opts).await;
    let admin = cluster.client(&[1, 2, 3]);

    let old = write_restorable_history(&cluster, &admin).await;
    assert_eq!(old.revision, 1, "the identity is the cluster's first event");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.jsonl");
    let (code, out, err) =
        cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["log", "export", "-f", file.to_str().unwrap(), "--format", "jsonl"]);
    assert_eq!(code, 0, "{out}{err}");
    let exported = export_events(&file);
    let through = exported.last().unwrap().0.revision;
    let at_export: Read<FullState> = admin.get("/v1/state").await.unwrap();
    assert_eq!(at_export.revision, through, "nothing was written during the export");

    // After the export: changes the restored cluster will not know. The agents apply them.
    create_guest(&admin, "g4", "h3", None).await;
    patch(&admin, "g2", json!({"vcpus": 5})).await;
    wait_agents_converged(&cluster, &agents).await;
    assert!(agents.iter().all(|a| a.applied().0 > through));
    assert!(agents.iter().all(|a| agent_cluster(a).as_deref() == Some(old.id.0.as_str())));

    // Disaster: every coordinator is lost. New ones come up on the same addresses, empty; the
    // agents keep running and retrying.
    cluster.kill_all();
    for id in [1, 2, 3] {
        cluster.wipe(id);
        cluster.restart(id);
    }
    let members: Vec<String> = [1, 2, 3]
        .iter()
        .map(|id| format!("{id}={},{}", cluster.node(*id).raft_addr, cluster.node(*id).api_addr))
        .collect();
    let mut args = vec!["cluster", "init", "--for-restore"];
    for m in &members {
        args.extend(["--member", m.as_str()]);
    }
    let (code, out, err) = eventually("init for restore", Duration::from_secs(30), || async {
        let r = cluster.cli(&[1], ADMIN_TOKEN, &args);
        (r.0 == 0).then_some(r)
    })
    .await;
    assert_eq!(code, 0, "{out}{err}");
    cluster.wait_leader(&[1, 2, 3]).await;
    let view = identity(&admin).await;
    assert_eq!((view.revision, view.items.identity.is_none(), view.items.importing.is_none()), (0, true, true));

    // A damaged export is refused before anything is sent.
    let damaged = dir.path().join("damaged.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&damaged, text.replacen("\"vcpus\":3", "\"vcpus\":9", 1)).unwrap();
    let (code, out, err) = cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["log", "restore", damaged.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("hash chain broken"), "{out}{err}");
    assert_eq!(identity(&admin).await.revision, 0, "a refused restore changes nothing");

    // Hostile and out-of-order chunks are refused whole.
    let chunk = |events: &[(Event, String)]| ImportRequest {
        request_id: None,
        cluster: Some(old.id.clone()),
        chain: events.last().unwrap().1.clone(),
        events: events.iter().map(|(e, _)| e.clone()).collect(),
    };
    let mut hostile = exported[..12].to_vec();
    if let switchyard_protocol::EventPayload::GuestCreated { guest } = &mut hostile
        .iter_mut()
        .find(|(e, _)| matches!(e.payload, switchyard_protocol::EventPayload::GuestCreated { .. }))
        .unwrap()
        .0
        .payload
    {
        guest.owner = switchyard_protocol::Name::new("nowhere").unwrap();
    }
    let e = admin.post::<_, WriteResponse>("/v1/cluster/import", &chunk(&hostile)).await.unwrap_err();
    assert_eq!(e.code(), Some("import_refused"), "{e}");
    assert!(e.to_string().contains("unknown host nowhere"), "{e}");
    let e = admin.post::<_, WriteResponse>("/v1/cluster/import", &chunk(&exported[1..5])).await.unwrap_err();
    assert_eq!(e.code(), Some("import_refused"), "{e}");
    assert_eq!(identity(&admin).await.revision, 0, "refused chunks change nothing");

    // The first part of the import lands; then the restore is "interrupted".
    let first: WriteResponse = admin.post("/v1/cluster/import", &chunk(&exported[..10])).await.unwrap();
    assert_eq!((first.first_revision, first.last_revision), (1, 10));
    // While importing: writes are refused, the old cluster's agents are told to wait.
    let e = admin.post::<_, WriteResponse>("/v1/hosts", &big_host("h9")).await.unwrap_err();
    assert_eq!(e.code(), Some("restore_in_progress"), "{e}");
    assert!(agents.iter().all(|a| a.applied().0 > through), "agents applied nothing during the import");

    // The restore resumes from revision 11 and commits a new identity.
    let (code, out, err) = cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["log", "restore", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("configuration matches the export's"), "{out}");
    let new = identity(&admin).await.items.identity.expect("restored identity");
    assert_ne!(new.id, old.id);
    assert_eq!(new.revision, through + 1, "the new cluster's own history starts right after the import");
    let from = new.restored_from.clone().expect("restored_from");
    assert_eq!((from.cluster, from.through_revision), (Some(old.id.clone()), through));
    assert_eq!(from.chain, exported.last().unwrap().1);
    // Restoring again is refused.
    let (code, out, err) = cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["log", "restore", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("already has identity"), "{out}{err}");

    // The restored state is the export's.
    let restored: Read<FullState> = admin.get("/v1/state").await.unwrap();
    let strip = |mut s: FullState| {
        s.cluster = None;
        s
    };
    assert_eq!(strip(restored.items.clone()), strip(at_export.items.clone()));

    // The old cluster's agents notice the new cluster and re-sync: their files end up equal to
    // the restored configuration (g4 and g2's later change are gone), under the new id.
    wait_agents_converged(&cluster, &agents).await;
    eventually("every agent to follow the new cluster", Duration::from_secs(30), || async {
        agents.iter().all(|a| agent_cluster(a).as_deref() == Some(new.id.0.as_str())).then_some(())
    })
    .await;
    for a in &agents {
        let (_, guests) = a.applied();
        assert!(guests.iter().all(|g| g.name.as_str() != "g4"), "agent {} still has g4", a.host);
        let g2 = guests.iter().find(|g| g.name.as_str() == "g2").expect("g2");
        assert_eq!(g2.spec.vcpus, 3, "agent {} holds g2 as exported", a.host);
    }

    // New work flows: a change, and a migration whose fencing tokens exceed the imported ones.
    patch(&admin, "g3", json!({"vcpus": 6})).await;
    let m2 = migrate(&admin, "g2", "h3", "b2").await;
    assert_eq!(wait_terminal(&cluster, m2).await.phase, Phase::Completed);
    wait_hypervisor_agrees(&cluster, "g2").await;
    wait_agents_converged(&cluster, &agents).await;

    let events = history(&admin).await;
    check_history(&events, true);
    for w in events.windows(2) {
        assert!(w[1].term >= w[0].term, "term goes back at revision {}", w[1].revision);
    }
    let imported_max = events[..through as usize].iter().map(|e| e.term).max().unwrap();
    assert!(events[through as usize].term > imported_max, "the restored cluster's terms start above the imported");
    assert!(matches!(
        &events[through as usize].payload,
        switchyard_protocol::EventPayload::ClusterCreated { cluster, .. } if *cluster == new.id
    ));
    let _ = ClusterId::parse(&new.id.0).expect("a well-formed id");
}

/// `log seed` on two of three lost coordinators' machines, the third left empty: the seeded
/// members start initialized and elect a leader on their own, the empty one receives the seed
/// as a snapshot, and `log restore` pushes no event — it checks every member holds the export
/// and commits the new identity. A damaged export seeds nothing. The old cluster's agents
/// re-sync, new work flows with fencing tokens above the imported ones, and a seeded member
/// restarted later comes back with the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_members_restore_without_pushing_events_through_raft() {
    let opts = ClusterOpts { sim_transfer_ms: 300, ..Default::default() };
    let (mut cluster, agents) = cluster_with_agents(opts).await;
    let admin = cluster.client(&[1, 2, 3]);
    let old = write_restorable_history(&cluster, &admin).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.bin");
    let (code, out, err) = cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["log", "export", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let at_export: Read<FullState> = admin.get("/v1/state").await.unwrap();
    let through = at_export.revision;
    let exported = history(&admin).await;
    patch(&admin, "g2", json!({"vcpus": 5})).await;
    wait_agents_converged(&cluster, &agents).await;

    cluster.kill_all();
    for id in [1, 2, 3] {
        cluster.wipe(id);
    }
    let members: Vec<String> = [1, 2, 3]
        .iter()
        .map(|id| format!("{id}={},{}", cluster.node(*id).raft_addr, cluster.node(*id).api_addr))
        .collect();
    // Node 1's directory, and node 2's from the same read of the export (`--also`: members on
    // one machine share the table files).
    let also = format!("2={}", cluster.data_dir(2).display());
    let seed = |file: &std::path::Path| {
        let data = cluster.data_dir(1);
        let mut args =
            vec!["log", "seed", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap(), "--node-id", "1"];
        for m in &members {
            args.extend(["--member", m.as_str()]);
        }
        args.extend(["--also", also.as_str()]);
        cluster.cli(&[1], ADMIN_TOKEN, &args)
    };

    // A damaged export seeds nothing.
    let damaged = dir.path().join("damaged.bin");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&damaged, bytes).unwrap();
    let (code, out, err) = seed(&damaged);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("nothing was seeded"), "{out}{err}");
    assert!(!cluster.data_dir(1).exists() && !cluster.data_dir(2).exists(), "a refused seed leaves no directory");

    let (code, out, err) = seed(&file);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("revisions 1..={through}")), "{out}");
    assert!(out.contains("node 1's data directory") && out.contains("node 2's data directory"), "{out}");
    for id in [1, 2, 3] {
        cluster.restart(id);
    }
    // No `cluster init`: the seeded members elect a leader, which brings node 3 in.
    cluster.wait_leader(&[1, 2, 3]).await;

    let (code, out, err) = cluster.cli(&[1, 2, 3], ADMIN_TOKEN, &["log", "restore", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("every member holds"), "{out}");
    let new = identity(&admin).await.items.identity.expect("restored identity");
    assert_ne!(new.id, old.id);
    assert_eq!(new.revision, through + 1);
    let from = new.restored_from.clone().expect("restored_from");
    assert_eq!((from.cluster, from.through_revision), (Some(old.id.clone()), through));
    let restored: Read<FullState> = admin.get("/v1/state").await.unwrap();
    let strip = |mut s: FullState| {
        s.cluster = None;
        s
    };
    assert_eq!(strip(restored.items.clone()), strip(at_export.items.clone()));
    let events = history(&admin).await;
    assert_eq!(&events[..through as usize], &exported[..], "the history is the export's, revision for revision");
    for id in [1, 2, 3] {
        let st = cluster.wait_revision(id, through + 1).await;
        assert!(st.importing.is_none(), "node {id} still holds a restore in progress");
    }
    // Node 3 got the seed as a snapshot (the state) and fills in the history from its peers.
    eventually("node 3's history to be whole", Duration::from_secs(60), || async {
        cluster.status(3).await.filter(|s| s.history_first == 1)
    })
    .await;

    // The old cluster's agents follow the new cluster; new work flows above the imported terms.
    wait_agents_converged(&cluster, &agents).await;
    eventually("every agent to follow the new cluster", Duration::from_secs(30), || async {
        agents.iter().all(|a| agent_cluster(a).as_deref() == Some(new.id.0.as_str())).then_some(())
    })
    .await;
    let m2 = migrate(&admin, "g2", "h3", "b2").await;
    assert_eq!(wait_terminal(&cluster, m2).await.phase, Phase::Completed);
    let events = history(&admin).await;
    check_history(&events, true);
    let imported_max = events[..through as usize].iter().map(|e| e.term).max().unwrap();
    assert!(events[through as usize].term > imported_max, "the restored cluster's terms start above the imported");

    // A seeded member restarted comes back to the same state.
    let revision = cluster.status(1).await.map(|s| s.revision).unwrap_or_default();
    cluster.kill(1);
    cluster.restart(1);
    cluster.wait_revision(1, revision).await;
    let one = cluster.client(&[1]);
    eventually("the restarted member to hold the cluster's state", Duration::from_secs(30), || async {
        let mine: Read<FullState> = one.get("/v1/state?stale=true").await.ok()?;
        let all: Read<FullState> = admin.get("/v1/state").await.ok()?;
        (mine.revision == all.revision && mine.items == all.items).then_some(())
    })
    .await;
}
