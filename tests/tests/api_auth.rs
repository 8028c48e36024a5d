//! Every role is allowed what it should and refused the rest, on every route of the API: the
//! table below must name each route the coordinator describes in `/openapi.json`, so a new route
//! cannot escape the matrix. A refused call changes nothing.
mod common;

use std::collections::BTreeSet;

use common::cluster::*;
use reqwest::Method;
use serde_json::json;
use switchyard_protocol::api::{ErrorBody, NodeStatus};

/// What a route asks of its caller (the coordinator's classes, restated here from the roles'
/// documentation rather than imported, so that the test checks them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// No token needed.
    Public,
    /// The coordinators' own state: status, metrics, identity.
    ReadCluster,
    /// Configuration, history and HA state: agents read them too.
    ReadConfig,
    /// An agent's reports about its own host: agents only.
    Report,
    /// Day-to-day operations: migrate, abort, resolve, switching, maintenance.
    Operate,
    /// Membership, registration, configuration, snapshots, init and import.
    Admin,
}

struct Call {
    method: Method,
    /// The route as `/openapi.json` names it.
    route: &'static str,
    /// A concrete path for it.
    path: &'static str,
    class: Class,
    body: Option<serde_json::Value>,
}

fn calls() -> Vec<Call> {
    use Class::*;
    let c = |method, route, path, class, body| Call { method, route, path, class, body };
    let get = |route, path, class| c(Method::GET, route, path, class, None);
    let host = |name: &str| {
        json!({"name": name, "address": format!("{name}:1"), "vcpus": 8, "memory_mib": 8192,
               "hardware_family": "ia64", "hypervisor_version": "hpvm-6.1"})
    };
    vec![
        get("/openapi.json", "/openapi.json", Public),
        get("/healthz", "/healthz", Public),
        get("/readyz", "/readyz", Public),
        get("/metrics", "/metrics", ReadCluster),
        get("/v1/cluster/status", "/v1/cluster/status", ReadCluster),
        get("/v1/node/status", "/v1/node/status", ReadCluster),
        get("/v1/cluster/identity", "/v1/cluster/identity", ReadCluster),
        get("/v1/state", "/v1/state", ReadConfig),
        get("/v1/events", "/v1/events?from=1", ReadConfig),
        get("/v1/hosts", "/v1/hosts", ReadConfig),
        get("/v1/hosts/{name}", "/v1/hosts/h1", ReadConfig),
        get("/v1/guests", "/v1/guests", ReadConfig),
        get("/v1/guests/{name}", "/v1/guests/g1", ReadConfig),
        get("/v1/packages", "/v1/packages", ReadConfig),
        get("/v1/packages/{name}", "/v1/packages/p1", ReadConfig),
        get("/v1/migrations", "/v1/migrations", ReadConfig),
        get("/v1/migrations/{id}", "/v1/migrations/999", ReadConfig),
        get("/v1/ha", "/v1/ha", ReadConfig),
        get("/v1/rebalance", "/v1/rebalance", ReadCluster),
        // An agent's reports: empty bodies, refused by the body check when the role passes.
        c(Method::POST, "/v1/hosts/{name}/report", "/v1/hosts/h1/report", Report, Some(json!({}))),
        c(Method::POST, "/v1/hosts/{name}/repairs", "/v1/hosts/h1/repairs", Report, Some(json!({}))),
        c(Method::POST, "/v1/hosts/{name}/failovers", "/v1/hosts/h1/failovers", Report, Some(json!({}))),
        c(Method::POST, "/v1/migrations/{id}/report", "/v1/migrations/999/report", Report, Some(json!({}))),
        c(Method::POST, "/v1/migrations/{id}/target", "/v1/migrations/999/target", Report, Some(json!({}))),
        c(Method::POST, "/v1/migrations", "/v1/migrations", Operate, Some(json!({"guest": "g1", "target": "h1"}))),
        c(Method::POST, "/v1/migrations/{id}/abort", "/v1/migrations/999/abort", Operate, Some(json!({"reason": "x"}))),
        c(
            Method::POST,
            "/v1/migrations/{id}/resolve",
            "/v1/migrations/999/resolve",
            Operate,
            Some(json!({"outcome": "completed", "reason": "x"})),
        ),
        c(
            Method::POST,
            "/v1/packages/{name}/switching",
            "/v1/packages/p1/switching",
            Operate,
            Some(json!({"enabled": true})),
        ),
        c(
            Method::POST,
            "/v1/hosts/{name}/maintenance",
            "/v1/hosts/h2/maintenance",
            Operate,
            Some(json!({"maintenance": false})),
        ),
        c(Method::POST, "/v1/hosts/{name}/drain", "/v1/hosts/h2/drain", Operate, Some(json!({"max_parallel": 1}))),
        c(Method::POST, "/v1/hosts/{name}/undrain", "/v1/hosts/h2/undrain", Operate, Some(json!({"reason": "x"}))),
        c(Method::POST, "/v1/hosts", "/v1/hosts", Admin, Some(host("h3"))),
        c(Method::PATCH, "/v1/hosts/{name}", "/v1/hosts/h3", Admin, Some(json!({"vcpus": 4}))),
        c(Method::DELETE, "/v1/hosts/{name}", "/v1/hosts/h3", Admin, None),
        c(
            Method::POST,
            "/v1/guests",
            "/v1/guests",
            Admin,
            Some(json!({"name": "g2", "owner": "h1", "vcpus": 1, "memory_mib": 128})),
        ),
        c(Method::PATCH, "/v1/guests/{name}", "/v1/guests/g1", Admin, Some(json!({"vcpus": 2}))),
        c(Method::POST, "/v1/packages/{name}", "/v1/packages/p1", Admin, Some(json!({"nodes": ["h1", "h2"]}))),
        c(Method::POST, "/v1/node/snapshot", "/v1/node/snapshot", Admin, None),
        c(Method::POST, "/v1/cluster/init", "/v1/cluster/init", Admin, Some(json!({}))),
        c(Method::POST, "/v1/cluster/identity", "/v1/cluster/identity", Admin, Some(json!({}))),
        c(Method::POST, "/v1/cluster/import", "/v1/cluster/import", Admin, Some(json!({}))),
        c(
            Method::POST,
            "/v1/cluster/nodes",
            "/v1/cluster/nodes",
            Admin,
            Some(json!({"id": 9, "raft_addr": "127.0.0.1:1", "api_addr": "127.0.0.1:2"})),
        ),
        c(Method::DELETE, "/v1/cluster/nodes/{id}", "/v1/cluster/nodes/9", Admin, None),
        c(Method::DELETE, "/v1/guests/{name}", "/v1/guests/g2", Admin, None),
    ]
}

/// Which classes each role may call.
fn allowed(role: &str, class: Class) -> bool {
    use Class::*;
    match role {
        _ if class == Public => true,
        "admin" => class != Report,
        "operations" => matches!(class, ReadCluster | ReadConfig | Operate),
        "read_only" => matches!(class, ReadCluster | ReadConfig),
        "agent" => matches!(class, ReadConfig | Report),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_gets_what_it_should_on_every_route_and_nothing_else() {
    let cluster = TestCluster::start(1, ClusterOpts::default()).await;
    let admin = cluster.client(&[1]);
    for h in ["h1", "h2"] {
        let _: serde_json::Value = admin.post("/v1/hosts", &big_host(h)).await.unwrap();
    }
    let _: serde_json::Value = admin
        .post("/v1/guests", &json!({"name": "g1", "owner": "h1", "vcpus": 1, "memory_mib": 128, "package": "p1"}))
        .await
        .unwrap();
    let base = cluster.url(1, "");

    // The table names every route the coordinator describes, and nothing else.
    let spec: serde_json::Value =
        cluster.http().get(format!("{base}/openapi.json")).send().await.unwrap().json().await.unwrap();
    let described: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(route, ops)| ops.as_object().unwrap().keys().map(move |m| (m.to_uppercase(), route.clone())))
        .filter(|(m, _)| ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&m.as_str()))
        .collect();
    let tabled: BTreeSet<(String, String)> =
        calls().iter().map(|c| (c.method.to_string(), c.route.to_string())).collect();
    assert_eq!(
        described.difference(&tabled).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routes the role matrix does not classify"
    );
    assert_eq!(tabled.difference(&described).collect::<Vec<_>>(), Vec::<&(String, String)>::new(), "stale rows");

    let roles = [
        ("none", None),
        ("bogus", Some("not-a-valid-token-at-all")),
        ("read_only", Some(READ_ONLY_TOKEN)),
        ("agent", Some(AGENT_TOKEN)),
        ("operations", Some(OPERATIONS_TOKEN)),
        ("admin", Some(ADMIN_TOKEN)),
    ];
    let send = |role: &str, token: Option<&str>, call: &Call| {
        let http = cluster.http_for(token.unwrap_or(""));
        let mut req = http.request(call.method.clone(), format!("{base}{}", call.path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = &call.body {
            req = req.json(b);
        }
        let what = format!("{role} {} {}", call.method, call.path);
        async move { (what, req.send().await.unwrap()) }
    };

    // First every refusal: each is refused by the edge, with the right code, and changes nothing.
    let revision = || async { admin.get::<NodeStatus>("/v1/node/status").await.unwrap().revision };
    let start = revision().await;
    for (role, token) in roles {
        for call in calls().iter().filter(|c| !allowed(role, c.class)) {
            let (what, resp) = send(role, token, call).await;
            let status = resp.status().as_u16();
            let body: ErrorBody = resp.json().await.unwrap_or_else(|e| panic!("{what}: error body is not JSON: {e}"));
            let want = if token.is_none() || role == "bogus" { (401, "unauthenticated") } else { (403, "forbidden") };
            assert_eq!((status, body.code.as_str()), want, "{what}: {}", body.message);
        }
    }
    assert_eq!(revision().await, start, "a refused call changed the cluster");

    // Then what each role may do: never refused by the role check (a write may still be refused
    // by the state machine or its body check), and every read answered.
    for (role, token) in roles {
        for call in calls().iter().filter(|c| allowed(role, c.class)) {
            let (what, resp) = send(role, token, call).await;
            let status = resp.status();
            assert!(status.as_u16() != 401 && status.as_u16() != 403, "{what} should be allowed, got {status}");
            if call.method == Method::GET {
                assert!(status.is_success() || call.path.ends_with("/999"), "{what}: {status}");
            }
        }
    }

    // The operations role really operates: a host into maintenance and out, switching off and on.
    let ops = cluster.client_for(&[1], OPERATIONS_TOKEN);
    for (path, body) in [
        ("/v1/hosts/h2/maintenance", json!({"maintenance": true})),
        ("/v1/hosts/h2/maintenance", json!({"maintenance": false})),
        ("/v1/packages/p1/switching", json!({"enabled": false, "reason": "operations test"})),
        ("/v1/packages/p1/switching", json!({"enabled": true})),
    ] {
        let _: serde_json::Value = ops.post(path, &body).await.unwrap_or_else(|e| panic!("operations {path}: {e}"));
    }
}
