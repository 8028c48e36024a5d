//! Every role is allowed what it should and refused the rest, per endpoint group; a refused call
//! changes nothing.
mod common;

use common::cluster::*;
use reqwest::Method;
use serde_json::json;
use switchyard_protocol::api::{ErrorBody, NodeStatus};

struct Call {
    group: &'static str,
    method: Method,
    path: &'static str,
    body: Option<serde_json::Value>,
}

fn calls() -> Vec<Call> {
    let c = |group, method, path, body| Call { group, method, path, body };
    vec![
        c("public", Method::GET, "/openapi.json", None),
        c("public", Method::GET, "/healthz", None),
        c("public", Method::GET, "/readyz", None),
        c("cluster-read", Method::GET, "/v1/cluster/status", None),
        c("cluster-read", Method::GET, "/v1/node/status", None),
        c(
            "cluster-write",
            Method::POST,
            "/v1/cluster/nodes",
            Some(json!({"id": 9, "raft_addr": "127.0.0.1:1", "api_addr": "127.0.0.1:2"})),
        ),
        c("cluster-write", Method::DELETE, "/v1/cluster/nodes/9", None),
        c("config-read", Method::GET, "/v1/hosts", None),
        c("config-read", Method::GET, "/v1/hosts/h1", None),
        c("config-read", Method::GET, "/v1/guests", None),
        c("config-read", Method::GET, "/v1/guests/g1", None),
        c("config-read", Method::GET, "/v1/packages", None),
        c(
            "config-write",
            Method::POST,
            "/v1/hosts",
            Some(
                json!({"name": "h2", "address": "h2:1", "vcpus": 8, "memory_mib": 8192, "hardware_family": "ia64", "hypervisor_version": "hpvm-6.1"}),
            ),
        ),
        c("config-write", Method::POST, "/v1/hosts/h1/maintenance", Some(json!({"maintenance": true}))),
        c(
            "config-write",
            Method::POST,
            "/v1/guests",
            Some(json!({"name": "g2", "owner": "h1", "vcpus": 1, "memory_mib": 128})),
        ),
        c("config-write", Method::PATCH, "/v1/guests/g1", Some(json!({"vcpus": 2}))),
        c("config-write", Method::DELETE, "/v1/guests/g1", None),
        c("config-write", Method::POST, "/v1/packages/p1/switching", Some(json!({"enabled": false}))),
        c("config-write", Method::POST, "/v1/migrations/999/abort", Some(json!({"reason": "x"}))),
        c(
            "config-write",
            Method::POST,
            "/v1/migrations/999/resolve",
            Some(json!({"outcome": "completed", "reason": "x"})),
        ),
    ]
}

/// Which groups each role may call. The API's description and the health probes are public:
/// a probe or a newcomer reads them without a token.
fn allowed(role: &str, group: &str) -> bool {
    match role {
        _ if group == "public" => true,
        "operator" => matches!(group, "cluster-read" | "config-read"),
        "agent" => matches!(group, "config-read"),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_gets_what_it_should_and_nothing_else() {
    let cluster = TestCluster::start(1, ClusterOpts::default()).await;
    let admin = cluster.client(&[1]);
    let _: serde_json::Value = admin.post("/v1/hosts", &big_host("h1")).await.unwrap();
    let _: serde_json::Value = admin
        .post("/v1/guests", &json!({"name": "g1", "owner": "h1", "vcpus": 1, "memory_mib": 128, "package": "p1"}))
        .await
        .unwrap();
    let revision = || async { admin.get::<NodeStatus>("/v1/node/status").await.unwrap().revision };
    let start = revision().await;
    let base = cluster.url(1, "");

    for (role, token) in [
        ("none", None),
        ("bogus", Some("not-a-valid-token-at-all")),
        ("operator", Some(OPERATOR_TOKEN)),
        ("agent", Some(AGENT_TOKEN)),
    ] {
        let http = cluster.http_for(token.unwrap_or(""));
        for call in calls() {
            let mut req = http.request(call.method.clone(), format!("{base}{}", call.path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = &call.body {
                req = req.json(b);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let what = format!("{role} {} {}", call.method, call.path);
            if allowed(role, call.group) {
                assert!(resp.status().is_success(), "{what} should be allowed, got {status}");
            } else {
                let body: ErrorBody =
                    resp.json().await.unwrap_or_else(|e| panic!("{what}: error body is not JSON: {e}"));
                let want =
                    if token.is_none() || role == "bogus" { (401, "unauthenticated") } else { (403, "forbidden") };
                assert_eq!((status, body.code.as_str()), want, "{what}: {}", body.message);
            }
        }
    }
    assert_eq!(revision().await, start, "a refused call changed the cluster");

    // Admin may do everything (the writes here are accepted or refused by the state machine,
    // never by the role check).
    let http = cluster.http();
    for call in calls() {
        let mut req = http.request(call.method.clone(), format!("{base}{}", call.path)).bearer_auth(ADMIN_TOKEN);
        if let Some(b) = &call.body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        assert!(status != 401 && status != 403, "admin {} {} refused with {status}", call.method, call.path);
    }
}
