//! Agents and drivers failing during migrations, operators aborting them, and the checks that
//! refuse unsafe moves (SPEC §4, §5). Each scenario ends in the right terminal phase with
//! switching restored and one owner, both in the log and on the (simulated) hypervisors; at the
//! end the whole history is checked revision by revision and every agent holds the cluster's
//! configuration.
mod common;

use std::time::Duration;

use common::cluster::*;
use common::saga::*;
use serde_json::json;
use switchyard_agent::driver::{Fault, Simulated};
use switchyard_client::{Client, ClientError};
use switchyard_protocol::api::{GuestView, Read, WriteResponse};
use switchyard_protocol::{Migration, MigrationId, Name, Phase};

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

async fn expect_ended(cluster: &TestCluster, id: MigrationId, phase: Phase, error_has: &str) -> Migration {
    let m = wait_terminal(cluster, id).await;
    assert_eq!(m.phase, phase, "migration {id}: {:?}", m.error);
    if !error_has.is_empty() {
        let e = m.error.clone().unwrap_or_default();
        assert!(e.contains(error_has), "migration {id} error {e:?} should mention {error_has:?}");
    }
    m
}

async fn owner_of(c: &Client, guest: &str) -> String {
    let g: Read<GuestView> = c.get(&format!("/v1/guests/{guest}")).await.expect("guest");
    g.items.guest.owner.to_string()
}

async fn wait_active(c: &Client, host: &str) {
    eventually(&format!("{host} to be active again"), Duration::from_secs(30), || async {
        let h: Read<serde_json::Value> = c.get(&format!("/v1/hosts/{host}")).await.ok()?;
        (h.items["state"] == "active").then_some(())
    })
    .await
}

fn refused(r: Result<WriteResponse, ClientError>) -> (String, String) {
    match r {
        Err(ClientError::Api { code, message, .. }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_driver_faults_aborts_and_refusals() {
    // Agents are killed and left down here for longer than the default lease: this test is about
    // what a migration does when its agents fail, not about host failure (ha_failover.rs), so
    // no host is declared failed within it.
    let opts = ClusterOpts {
        transferring_timeout_ms: 5_000,
        step_delay_ms: 700,
        sim_transfer_ms: 800,
        host_report_timeout_ms: 1_500,
        lease_ms: 60_000,
        ..Default::default()
    };
    let (cluster, mut agents) = cluster_with_agents(opts).await;
    let admin = cluster.client(&[1, 2, 3]);
    let sim = cluster.sim_dir();
    for (g, p) in [("vm1", "pkg1"), ("vm2", "pkg2"), ("vm3", "pkg3"), ("vm6", "pkg6")] {
        create_guest(&admin, g, "h1", Some(p)).await;
    }
    create_guest(&admin, "vm7", "h1", None).await;

    // Driver failure: failed, rolled back, still on the source.
    Simulated::inject(&sim, &n("vm1"), Fault::Fail).unwrap();
    let id = migrate(&admin, "vm1", "h2", "f1").await;
    expect_ended(&cluster, id, Phase::Failed, "simulated failure").await;
    assert_eq!(owner_of(&admin, "vm1").await, "h1");
    assert_eq!(sim_location(&cluster, "vm1", &n("h1")), "h1");

    // Driver hang past the phase timeout: failed by the driver, the transfer cancelled.
    Simulated::inject(&sim, &n("vm1"), Fault::Hang).unwrap();
    let id = migrate(&admin, "vm1", "h2", "f2").await;
    expect_ended(&cluster, id, Phase::Failed, "timed out").await;
    assert_eq!(sim_location(&cluster, "vm1", &n("h1")), "h1");

    // Source agent SIGKILLed mid-transfer and left down: the migration times out and fails.
    let id = migrate(&admin, "vm1", "h2", "f3").await;
    wait_phase(&cluster, id, Phase::Transferring).await;
    agents[0].kill();
    expect_ended(&cluster, id, Phase::Failed, "timed out").await;
    agents[0].restart();
    wait_active(&admin, "h1").await;
    assert_eq!(owner_of(&admin, "vm1").await, "h1");
    wait_hypervisor_agrees(&cluster, "vm1").await;

    // The source agent crashes mid-transfer and comes back: it asks its driver where the guest
    // runs, transfers again, and the migration completes.
    Simulated::inject(&sim, &n("vm1"), Fault::Crash).unwrap();
    let id = migrate(&admin, "vm1", "h2", "f4").await;
    eventually("agent h1 to crash", Duration::from_secs(30), || {
        let down = !agents[0].running();
        async move { down.then_some(()) }
    })
    .await;
    agents[0].restart();
    expect_ended(&cluster, id, Phase::Completed, "").await;
    assert_eq!(owner_of(&admin, "vm1").await, "h2");
    wait_hypervisor_agrees(&cluster, "vm1").await;

    // Target agent killed after `transferring` began: the source moves the guest, nobody
    // confirms, the migration fails; back up, the target sends the guest back to its owner.
    let id = migrate(&admin, "vm2", "h2", "f5").await;
    wait_phase(&cluster, id, Phase::Transferring).await;
    agents[1].kill();
    expect_ended(&cluster, id, Phase::Failed, "target h2 to confirm").await;
    assert_eq!(owner_of(&admin, "vm2").await, "h1");
    agents[1].restart();
    wait_active(&admin, "h2").await;
    wait_hypervisor_agrees(&cluster, "vm2").await;

    // Target unreachable at request time: refused, nothing committed.
    agents[2].kill();
    eventually("h3 to be marked unreachable", Duration::from_secs(30), || async {
        let h: Read<serde_json::Value> = admin.get("/v1/hosts/h3").await.ok()?;
        (h.items["state"] == "unreachable").then_some(())
    })
    .await;
    let (code, msg) = refused(admin.post("/v1/migrations", &json!({"guest": "vm2", "target": "h3"})).await);
    assert_eq!(code, "host_not_active", "{msg}");
    assert!(msg.contains("unreachable"), "{msg}");
    agents[2].restart();
    wait_active(&admin, "h3").await;

    // Abort at every phase before the owner switch: aborted, switching restored, one owner.
    for (i, phase) in
        [Phase::Requested, Phase::SwitchingDisabled, Phase::Transferring, Phase::TargetRunning].into_iter().enumerate()
    {
        let id = migrate(&admin, "vm3", "h2", &format!("ab{i}")).await;
        wait_phase(&cluster, id, phase).await;
        let r: WriteResponse = admin
            .post(&format!("/v1/migrations/{}/abort", id.0), &json!({"reason": format!("drill at {phase}")}))
            .await
            .unwrap_or_else(|e| panic!("abort at {phase}: {e}"));
        assert!(r.last_revision > id.0);
        let m = expect_ended(&cluster, id, Phase::Aborted, "").await;
        assert_eq!(m.history.iter().rev().nth(1).map(|r| r.phase), Some(phase), "aborted right at {phase}");
        assert_eq!(owner_of(&admin, "vm3").await, "h1", "after abort at {phase}");
        // At target_running the guest already ran on h2: the target sends it back.
        wait_hypervisor_agrees(&cluster, "vm3").await;
    }
    // Past the owner switch, abort says so and the migration completes.
    let id = migrate(&admin, "vm3", "h2", "ab1a7e").await;
    wait_phase(&cluster, id, Phase::OwnerSwitched).await;
    let (code, msg) = refused(admin.post(&format!("/v1/migrations/{}/abort", id.0), &json!({})).await);
    assert_eq!(code, "migration_past_owner_switch", "{msg}");
    assert!(msg.contains("can only complete"), "{msg}");
    expect_ended(&cluster, id, Phase::Completed, "").await;

    // Guests that must not move online: refused with the reason and the fix. Offline, a running
    // guest is refused too unless the request allows stopping it; with that, the move works.
    for (g, attr, code, fix) in [
        ("vm4", json!({"online_migration": false}), "online_migration_disabled", "-x online_migration=enabled"),
        ("vm5", json!({"cluster_node": true}), "guest_is_cluster_node", "--cluster-node=false"),
    ] {
        let mut body = json!({"name": g, "owner": "h1", "vcpus": 1, "memory_mib": 1024});
        body.as_object_mut().unwrap().extend(attr.as_object().unwrap().clone());
        admin.post::<_, WriteResponse>("/v1/guests", &body).await.expect("create guest");
        let (c, msg) = refused(admin.post("/v1/migrations", &json!({"guest": g, "target": "h2"})).await);
        assert_eq!(c, code, "{msg}");
        assert!(msg.contains(fix) && msg.contains("--offline"), "{msg}");
        let (c, msg) =
            refused(admin.post("/v1/migrations", &json!({"guest": g, "target": "h2", "offline": true})).await);
        assert_eq!(c, "guest_running", "{msg}");
        assert!(msg.contains("--offline --allow-stop"), "{msg}");
        let body = json!({"guest": g, "target": "h2", "offline": true, "allow_stop": true});
        let r: WriteResponse = admin.post("/v1/migrations", &body).await.expect("offline with a stop");
        expect_ended(&cluster, MigrationId(r.first_revision), Phase::Completed, "").await;
        assert_eq!(owner_of(&admin, g).await, "h2");
    }

    // Concurrent migrations of different guests proceed; a second one of the same guest is
    // refused while the first is in flight.
    let a = migrate(&admin, "vm6", "h2", "c1").await;
    let b = migrate(&admin, "vm7", "h3", "c2").await;
    let (code, msg) = refused(admin.post("/v1/migrations", &json!({"guest": "vm6", "target": "h3"})).await);
    assert_eq!(code, "migration_in_flight", "{msg}");
    expect_ended(&cluster, a, Phase::Completed, "").await;
    expect_ended(&cluster, b, Phase::Completed, "").await;

    let events = history(&admin).await;
    let state = check_history(&events, true);
    for g in state.guests() {
        wait_hypervisor_agrees(&cluster, g.name.as_str()).await;
        if let Some(p) = &g.spec.package {
            assert!(state.package(p).unwrap().switching_enabled, "package {p} left unprotected");
        }
    }
    wait_agents_converged(&cluster, &agents).await;
}
