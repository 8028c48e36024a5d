//! An operator resolves a migration stuck after its owner switch (`migration resolve`): refused
//! before the switch (with what to do instead), recorded with who and why, the package's
//! switching restored and the guest left with its new owner; the whole history still keeps
//! every SPEC §5 invariant.
mod common;

use common::cluster::*;
use common::saga::*;
use switchyard_client::ClientError;
use switchyard_protocol::api::{PackageView, Read, ResolveRequest};
use switchyard_protocol::{Phase, Rejection};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_resolves_a_migration_past_its_owner_switch() {
    // Every step the driver takes itself waits 2 s: a window to act in each phase.
    let opts = ClusterOpts { step_delay_ms: 2_000, sim_transfer_ms: 200, ..Default::default() };
    let (cluster, agents) = cluster_with_agents(opts).await;
    let admin = cluster.client(&[1, 2, 3]);
    create_guest(&admin, "vm1", "h1", Some("pkg1")).await;
    let id = migrate(&admin, "vm1", "h2", "5e501e1").await;
    let resolve = |outcome: Phase| ResolveRequest {
        outcome,
        reason: "the guest runs on h2 (checked at its console)".into(),
        request_id: None,
    };

    // Before the owner switch it can still roll back: refused, saying how.
    match admin.resolve_migration(id, &resolve(Phase::Completed)).await {
        Err(ClientError::Api { code, message, .. }) => {
            assert_eq!(code, "invalid_argument");
            assert!(message.contains("before the owner switch") && message.contains("migration abort"), "{message}");
        }
        other => panic!("a resolution before the owner switch should be refused, got {other:?}"),
    }

    wait_phase(&cluster, id, Phase::OwnerSwitched).await;
    admin.resolve_migration(id, &resolve(Phase::Completed)).await.expect("resolved");
    let m = wait_terminal(&cluster, id).await;
    assert_eq!(m.phase, Phase::Completed);
    let detail = admin.migration(id).await.expect("migration show").items;
    let r = detail.resolution.expect("the resolution is in the migration's history");
    assert_eq!((r.outcome, r.by.as_str()), (Phase::Completed, "test-admin"));
    assert!(r.reason.contains("checked at its console"));
    let p: Read<PackageView> = admin.get("/v1/packages/pkg1").await.expect("package");
    assert!(p.items.package.switching_enabled, "switching as before the migration");

    // A second resolution finds it finished.
    match admin.resolve_migration(id, &resolve(Phase::Failed)).await {
        Err(ClientError::Api { code, .. }) => {
            assert_eq!(code, Rejection::MigrationFinished { id, phase: Phase::Completed }.code())
        }
        other => panic!("expected migration_finished, got {other:?}"),
    }
    wait_hypervisor_agrees(&cluster, "vm1").await;
    wait_agents_converged(&cluster, &agents).await;
    let events = history(&admin).await;
    let st = check_history(&events, true);
    assert_eq!(st.guest(&switchyard_protocol::Name::new("vm1").unwrap()).unwrap().owner.as_str(), "h2");
}
