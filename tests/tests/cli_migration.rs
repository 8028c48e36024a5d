//! The operator's migration verbs through the real CLI: `migrate --wait` follows the phases and
//! exits non-zero on failure; `migration list|show|abort`; and `package list` / `guest show`
//! tell when and why a package's switching is disabled.
mod common;

use common::cluster::*;
use common::saga::*;
use switchyard_agent::driver::{Fault, Simulated};
use switchyard_protocol::Name;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_wait_list_show_abort_and_unprotected_window() {
    let (cluster, _agents) = cluster_with_agents(ClusterOpts { sim_transfer_ms: 300, ..Default::default() }).await;
    let admin = cluster.client(&[1, 2, 3]);
    create_guest(&admin, "vm1", "h1", Some("pkg1")).await;
    let cli = |args: &[&str]| cluster.cli(&[2, 1, 3], ADMIN_TOKEN, args);

    let (code, out, err) = cli(&["migrate", "vm1", "--to", "h2", "--wait", "--reason", "patch h1"]);
    assert_eq!(code, 0, "{out}{err}");
    for phase in ["requested", "switching_disabled", "transferring", "target_running", "owner_switched", "completed"] {
        assert!(out.contains(phase), "--wait output lacks {phase}:\n{out}");
    }

    // A failing migration: --wait exits non-zero with the error.
    Simulated::inject(&cluster.sim_dir(), &Name::new("vm1").unwrap(), Fault::Fail).unwrap();
    let (code, out, err) = cli(&["migrate", "vm1", "--to", "h3", "--wait"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("failed") && err.contains("simulated failure"), "{err}");

    let (code, out, _) = cli(&["migration", "list", "--guest", "vm1"]);
    assert_eq!(code, 0);
    assert!(out.contains("completed") && out.contains("failed") && out.contains("h3"), "{out}");
    let (_, out, _) = cli(&["migration", "list", "--phase", "failed", "--since", "1h"]);
    assert_eq!(out.lines().count(), 2, "header + the failed one:\n{out}");
    let (_, out, _) = cli(&["migration", "list", "--limit", "1"]);
    assert!(out.contains("(more: --after"), "{out}");
    let (code, _, err) = cli(&["migration", "list", "--phase", "sideways"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown phase"), "{err}");

    let (_, json, _) = cli(&["-o", "json", "migration", "list", "--guest", "vm1", "--phase", "completed"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let id = v["items"]["migrations"][0]["id"].as_u64().unwrap();
    let (code, out, _) = cli(&["migration", "show", &id.to_string()]);
    assert_eq!(code, 0);
    for want in ["guest vm1 from h1 to h2", "reason: patch h1", "freeze time", "switching_enabled", "LASTED"] {
        assert!(out.contains(want), "show lacks {want:?}:\n{out}");
    }
    let (code, _, err) = cli(&["migration", "abort", &id.to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("already finished as completed"), "{err}");

    // Reports: only the migration's own agents, only for the phase it is in.
    let report =
        serde_json::json!({"phase": "transferring", "token": {"term": 1, "revision": id}, "outcome": "guest_running"});
    let path = format!("/v1/migrations/{id}/report");
    for (token, code) in
        [(agent_token(3), "forbidden"), (ADMIN_TOKEN.to_string(), "forbidden"), (agent_token(2), "stale_report")]
    {
        let c = cluster.client_for(&[1, 2, 3], &token);
        match c.post::<_, serde_json::Value>(&path, &report).await {
            Err(switchyard_client::ClientError::Api { code: got, .. }) => assert_eq!(got, code),
            other => panic!("report with {token} should be refused with {code}: {other:?}"),
        }
    }
    let c = cluster.client_for(&[1, 2, 3], &agent_token(2));
    let bad = c.post::<_, serde_json::Value>(&path, &serde_json::json!({"phase": "transferring"})).await;
    assert!(matches!(bad, Err(switchyard_client::ClientError::Api { code, .. }) if code == "bad_request"));

    // The unprotected window is visible: since when, for how long, by whom, why.
    let (code, _, err) = cli(&["package", "disable", "pkg1", "--reason", "firmware update"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = cli(&["package", "list"]);
    assert!(out.contains("DISABLED for") && out.contains("firmware update"), "{out}");
    let (_, out, _) = cli(&["guest", "show", "vm1"]);
    assert!(out.contains("switching DISABLED since") && out.contains("test-admin: firmware update"), "{out}");
}
