//! Helpers of the migration tests: a cluster with agents on simulated hypervisors, requests and
//! waits on migration phases, and the SPEC §5 invariant check over the whole event history.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use switchyard_agent::driver::Simulated;
use switchyard_client::{Client, EventQuery};
use switchyard_protocol::api::{GuestView, Read, StreamItem, WriteResponse};
use switchyard_protocol::{ClusterState, Event, EventPayload, Migration, MigrationId, Name, Phase};

use super::cluster::*;

/// Three coordinators, hosts h1..h3 registered, one agent per host (endpoints of all three).
pub async fn cluster_with_agents(opts: ClusterOpts) -> (TestCluster, Vec<AgentProc>) {
    let cluster = TestCluster::start(3, opts).await;
    let admin = cluster.client(&[1, 2, 3]);
    for h in ["h1", "h2", "h3"] {
        write_until_acked(&admin, "/v1/hosts", &big_host(h)).await;
    }
    let agents = (1..=3).map(|n| AgentProc::start(&cluster, &format!("h{n}"), &agent_token(n), &[1, 2, 3])).collect();
    (cluster, agents)
}

/// Creates a running guest on `owner`, in package `package` if given.
pub async fn create_guest(c: &Client, name: &str, owner: &str, package: Option<&str>) {
    let body = json!({"name": name, "owner": owner, "vcpus": 2, "memory_mib": 2048,
                      "disks": [format!("avio_stor:/dev/vg01/{name}")], "networks": ["avio_lan:vswitch0"],
                      "package": package});
    let r = c.post::<_, WriteResponse>("/v1/guests", &body).await.expect("create guest");
    assert!(r.first_revision > 0);
}

/// Requests a migration and returns its id (retrying with one request id through leader loss).
pub async fn migrate(c: &Client, guest: &str, to: &str, rid: &str) -> MigrationId {
    let body = json!({"guest": guest, "target": to, "request_id": rid});
    MigrationId(write_until_acked(c, "/v1/migrations", &body).await.first_revision)
}

/// The migration as any running coordinator has applied it (stale read; for polling).
pub async fn read_migration(cluster: &TestCluster, id: MigrationId) -> Option<Migration> {
    for n in cluster.alive_ids() {
        let c = cluster.client(&[n]);
        if let Ok(r) = c.get::<Read<Migration>>(&format!("/v1/migrations/{}?stale=true", id.0)).await {
            return Some(r.items);
        }
    }
    None
}

/// Waits until the migration has entered `phase` (or passed it).
pub async fn wait_phase(cluster: &TestCluster, id: MigrationId, phase: Phase) -> Migration {
    eventually(&format!("migration {id} to reach {phase}"), Duration::from_secs(60), || async {
        read_migration(cluster, id)
            .await
            .filter(|m| m.history.iter().any(|r| r.phase == phase) || m.phase.is_terminal())
    })
    .await
}

/// Waits for the migration's terminal phase.
pub async fn wait_terminal(cluster: &TestCluster, id: MigrationId) -> Migration {
    eventually(&format!("migration {id} to end"), Duration::from_secs(90), || async {
        read_migration(cluster, id).await.filter(|m| m.phase.is_terminal())
    })
    .await
}

/// Every event, from revision 1, read from the cluster.
pub async fn history(c: &Client) -> Vec<Event> {
    let mut out = Vec::new();
    c.events(&EventQuery { from: 1, ..Default::default() }, |i| {
        if let StreamItem::Event(e) = i {
            out.push((**e).clone());
        }
        true
    })
    .await
    .expect("read the history");
    out
}

/// Folds the whole history and checks the SPEC §5 invariants at every revision:
/// (1) every guest has exactly one owner, a registered host, changed only by an `owner_switched`
/// commit; (2) every migration has at most one terminal phase event, and (when `all_finished`)
/// exactly one; (3) after a terminal phase the package's switching is back to what it was;
/// (4) at most one in-flight migration per guest. Returns the final state.
pub fn check_history(events: &[Event], all_finished: bool) -> ClusterState {
    let mut state = ClusterState::default();
    let mut terminal: BTreeMap<MigrationId, Vec<Phase>> = BTreeMap::new();
    let mut last_revision = 0;
    for e in events {
        assert_eq!(e.revision, last_revision + 1, "history has a gap or a duplicate at {}", e.revision);
        last_revision = e.revision;
    }
    for e in events {
        if let EventPayload::GuestOwnerChanged { migration, .. } = &e.payload {
            // The owner changes only together with the owner_switched phase commit.
            let next = events.iter().find(|n| n.revision == e.revision + 1).map(|n| &n.payload);
            assert!(
                matches!(next, Some(EventPayload::MigrationPhaseChanged { id, phase: Phase::OwnerSwitched, .. }) if id == migration),
                "owner change at revision {} is not part of migration {migration}'s owner_switched commit",
                e.revision
            );
        }
        state.evolve(e);
        let bad = state.check_invariants();
        assert!(bad.is_empty(), "invariants broken at revision {}: {bad:?}", e.revision);
        if let EventPayload::MigrationPhaseChanged { id, phase, .. } = &e.payload {
            if phase.is_terminal() {
                terminal.entry(*id).or_default().push(*phase);
                let m = state.migration(*id).expect("known migration");
                if let Some(p) = &m.package {
                    let pkg = state.package(p).expect("package exists");
                    assert_eq!(
                        Some(pkg.switching_enabled),
                        m.switching_before,
                        "package {p} switching not restored after migration {id} ({phase})"
                    );
                }
            }
        }
    }
    for m in state.migrations() {
        let ends = terminal.get(&m.id).map_or(0, |t| t.len());
        assert!(ends <= 1, "migration {} has {ends} terminal phases", m.id);
        if all_finished {
            assert_eq!(ends, 1, "migration {} never finished (phase {})", m.id, m.phase);
        }
    }
    for g in state.guests() {
        assert!(state.host(&g.owner).is_some(), "guest {} owned by unknown host {}", g.name, g.owner);
    }
    state
}

/// Where the simulated hypervisors run `guest` (its log owner if never moved).
pub fn sim_location(cluster: &TestCluster, guest: &str, log_owner: &Name) -> String {
    Simulated::location(&cluster.sim_dir(), &Name::new(guest).unwrap()).unwrap_or_else(|| log_owner.to_string())
}

/// Waits until the hypervisors run `guest` where the log says it is owned.
pub async fn wait_hypervisor_agrees(cluster: &TestCluster, guest: &str) {
    let admin = cluster.client(&cluster.alive_ids());
    eventually(&format!("the hypervisors to run {guest} on its owner"), Duration::from_secs(60), || async {
        let g: Read<GuestView> = admin.get(&format!("/v1/guests/{guest}")).await.ok()?;
        let owner = g.items.guest.owner;
        (sim_location(cluster, guest, &owner) == owner.as_str()).then_some(())
    })
    .await
}

/// Waits until every agent's guest files equal the cluster's guests at the agent's cursor.
pub async fn wait_agents_converged(cluster: &TestCluster, agents: &[AgentProc]) {
    let admin = cluster.client(&cluster.alive_ids());
    eventually("every agent to hold the cluster's configuration", Duration::from_secs(60), || async {
        let st: Read<switchyard_protocol::api::FullState> = admin.get("/v1/state").await.ok()?;
        for a in agents {
            let (cursor, guests) = a.applied();
            if cursor < st.revision || guests != st.items.guests {
                return None;
            }
        }
        Some(())
    })
    .await
}
