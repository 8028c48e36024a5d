//! Hostile and malformed input is refused at the edge with a clear error and changes nothing.
mod common;

use common::cluster::*;
use serde_json::json;
use switchyard_protocol::api::{ErrorBody, NodeStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let cluster = TestCluster::start(1, ClusterOpts::default()).await;
    let admin = cluster.client(&[1]);
    let _: serde_json::Value = admin.post("/v1/hosts", &big_host("h1")).await.unwrap();
    let start = admin.get::<NodeStatus>("/v1/node/status").await.unwrap().revision;
    let http = cluster.http();
    let base = cluster.url(1, "");
    let guest = |name: serde_json::Value| json!({"name": name, "owner": "h1", "vcpus": 1, "memory_mib": 128});

    let long = "x".repeat(64);
    let huge = "d".repeat(100_000);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str, &str)> = vec![
        ("dot-dot name", http.post(format!("{base}/v1/guests")).json(&guest(json!("../x"))), 400, "bad_request", "'/'"),
        (
            "absolute path name",
            http.post(format!("{base}/v1/guests")).json(&guest(json!("/etc/passwd"))),
            400,
            "bad_request",
            "name",
        ),
        (
            "NUL in name",
            http.post(format!("{base}/v1/guests")).json(&guest(json!("a\u{0}b"))),
            400,
            "bad_request",
            "name",
        ),
        (
            "overlong name",
            http.post(format!("{base}/v1/guests")).json(&guest(json!(long))),
            400,
            "bad_request",
            "at most 63",
        ),
        ("hostile path", http.get(format!("{base}/v1/guests/..%2Fetc")), 400, "bad_request", "invalid name"),
        ("NUL in path", http.get(format!("{base}/v1/hosts/a%00b")), 400, "bad_request", "invalid name"),
        (
            "unknown field",
            http.post(format!("{base}/v1/guests"))
                .json(&json!({"name": "g1", "owner": "h1", "vcpus": 1, "memory_mib": 1, "colour": "red"})),
            400,
            "bad_request",
            "unknown field",
        ),
        (
            "a form instead of JSON",
            http.post(format!("{base}/v1/guests"))
                .body("name=x&owner=h1")
                .header("content-type", "application/x-www-form-urlencoded"),
            415,
            "unsupported_media_type",
            "Content-Type: application/json",
        ),
        (
            "JSON without a content type",
            http.post(format!("{base}/v1/guests")).body(guest(json!("g-untyped")).to_string()),
            415,
            "unsupported_media_type",
            "none",
        ),
        (
            "malformed JSON",
            http.post(format!("{base}/v1/guests")).body("{\"name\": ").header("content-type", "application/json"),
            400,
            "bad_request",
            "invalid request body",
        ),
        (
            "wrong type",
            http.post(format!("{base}/v1/guests"))
                .json(&json!({"name": "g1", "owner": "h1", "vcpus": "many", "memory_mib": 1})),
            400,
            "bad_request",
            "invalid",
        ),
        (
            "oversize body",
            http.post(format!("{base}/v1/guests"))
                .json(&json!({"name": "g1", "owner": "h1", "vcpus": 1, "memory_mib": 1, "disks": [huge]})),
            413,
            "payload_too_large",
            "larger than",
        ),
        (
            "bad request id",
            http.post(format!("{base}/v1/guests"))
                .json(&json!({"name": "g1", "owner": "h1", "vcpus": 1, "memory_mib": 1, "request_id": "zz"})),
            400,
            "bad_request",
            "hex",
        ),
        (
            "unknown query parameter",
            http.get(format!("{base}/v1/guests?stael=true")),
            400,
            "bad_request",
            "invalid query",
        ),
        (
            "rule violation",
            http.post(format!("{base}/v1/guests"))
                .json(&json!({"name": "g1", "owner": "h1", "vcpus": 0, "memory_mib": 1})),
            400,
            "invalid_argument",
            "vcpus",
        ),
        (
            "a cursor past the largest id",
            http.get(format!("{base}/v1/migrations?order=oldest&after={}", u64::MAX)),
            400,
            "bad_request",
            "after must be below",
        ),
        ("unknown endpoint", http.get(format!("{base}/v1/nothing")), 404, "not_found", "openapi"),
    ];
    for (what, req, status, code, needle) in cases {
        let resp = req.bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        let got = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body: ErrorBody =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {got} {text:?} is not an error body: {e}"));
        assert_eq!((got, body.code.as_str()), (status, code), "{what}: {}", body.message);
        assert!(body.message.contains(needle), "{what}: message {:?} should mention {needle:?}", body.message);
    }
    let end = admin.get::<NodeStatus>("/v1/node/status").await.unwrap().revision;
    assert_eq!(end, start, "bad input changed the cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_endpoint() {
    let cluster = TestCluster::start(1, ClusterOpts::default()).await;
    let doc: serde_json::Value = cluster.client(&[1]).get("/openapi.json").await.unwrap();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "an OpenAPI 3 document: {}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/node/status",
        "/v1/cluster/status",
        "/v1/cluster/init",
        "/v1/cluster/identity",
        "/v1/cluster/import",
        "/v1/cluster/nodes",
        "/v1/cluster/nodes/{id}",
        "/v1/hosts",
        "/v1/hosts/{name}",
        "/v1/hosts/{name}/maintenance",
        "/v1/hosts/{name}/report",
        "/v1/guests",
        "/v1/guests/{name}",
        "/v1/packages",
        "/v1/packages/{name}",
        "/v1/packages/{name}/switching",
        "/v1/node/snapshot",
        "/v1/state",
        "/v1/events",
        "/openapi.json",
        "/healthz",
        "/readyz",
        "/v1/migrations",
        "/v1/migrations/{id}",
        "/v1/migrations/{id}/abort",
        "/v1/migrations/{id}/report",
    ] {
        assert!(paths.contains_key(p), "openapi.json lacks {p}");
    }
}
