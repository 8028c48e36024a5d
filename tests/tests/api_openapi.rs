//! The OpenAPI description (`GET /openapi.json`, no token) is generated from the handlers and
//! the types; these tests fail when it stops describing what the API does:
//! - a path the typed client calls (`client/src/api.rs`) that the description lacks;
//! - a described path the router does not serve;
//! - a field in a real answer that its schema does not declare (the way `NodeStatus` once lost
//!   fields in a hand-written description).
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster::*;
use common::saga::*;
use serde_json::Value;
use switchyard_protocol::MigrationId;
use switchyard_protocol::Phase;

/// The description, read without a token.
async fn description(cluster: &TestCluster) -> Value {
    let url = cluster.url(1, "/openapi.json");
    let r = cluster.http().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "served without a token");
    r.json().await.unwrap()
}

/// `/v1/hosts/{x}` for `/v1/hosts/{name}`: paths compared by shape.
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{x}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            c => out.push(c),
        }
    }
    out
}

/// The paths the typed client builds, from its source (format strings and literals).
fn client_paths() -> BTreeSet<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../client/src/api.rs")).unwrap();
    let mut out = BTreeSet::new();
    for (i, _) in src.match_indices("\"/v1/") {
        let rest = &src[i + 1..];
        let end = rest.find('"').unwrap();
        let p = &rest[..end];
        // `{}` placeholders of a query string are not part of the path.
        let p = p.split("{}").next().unwrap();
        // `format!("/v1/hosts/{name}")`, and `{}` after `id.0`-style arguments.
        out.insert(shape(p).trim_end_matches('/').to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_the_client_calls_is_described_and_every_described_route_is_served() {
    let cluster = TestCluster::start(1, ClusterOpts::default()).await;
    let spec = description(&cluster).await;
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."), "an OpenAPI 3 document");
    let described: BTreeSet<String> = spec["paths"].as_object().unwrap().keys().map(|p| shape(p)).collect();
    let called = client_paths();
    assert!(called.len() >= 15, "the client's paths were read: {called:?}");
    let missing: Vec<&String> = called.difference(&described).collect();
    assert!(missing.is_empty(), "the client calls paths the description lacks: {missing:?}");

    // Every described operation is routed: none answers the router's own "no such endpoint"
    // or "method not allowed".
    let http = cluster.http();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let url = cluster.url(1, &path.replace(['{', '}'], ""));
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = http.request(m, &url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path} is described but not routed");
            assert!(!text.contains("no such endpoint"), "{method} {path} is described but not routed: {text}");
        }
    }
}

/// Checks that every field of `value` is declared by `schema` (resolving `$ref`, `allOf`,
/// `oneOf`/`anyOf`); answers what is not.
fn undeclared(value: &Value, schema: &Value, spec: &Value, at: &str) -> Vec<String> {
    let schema = resolve(schema, spec);
    if let Some(alts) = schema.get("oneOf").or_else(|| schema.get("anyOf")).and_then(|a| a.as_array()) {
        let mut best: Option<Vec<String>> = None;
        for alt in alts {
            let errs = undeclared(value, alt, spec, at);
            if errs.is_empty() {
                return errs;
            }
            if best.as_ref().is_none_or(|b| errs.len() < b.len()) {
                best = Some(errs);
            }
        }
        return best.unwrap_or_default();
    }
    match value {
        Value::Object(map) => {
            let props = properties(schema, spec);
            let additional = additional(schema, spec);
            let mut errs = Vec::new();
            for (k, v) in map {
                match props.iter().find(|(name, _)| name == k) {
                    Some((_, s)) => errs.extend(undeclared(v, s, spec, &format!("{at}.{k}"))),
                    None => match &additional {
                        Some(s) => errs.extend(undeclared(v, s, spec, &format!("{at}.{k}"))),
                        None => errs.push(format!("{at}.{k}")),
                    },
                }
            }
            errs
        }
        Value::Array(items) => match schema.get("items") {
            Some(s) => {
                items.iter().enumerate().flat_map(|(i, v)| undeclared(v, s, spec, &format!("{at}[{i}]"))).collect()
            }
            None => vec![format!("{at} (an array where the schema has no items)")],
        },
        _ => Vec::new(),
    }
}

fn resolve<'a>(schema: &'a Value, spec: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(|r| r.as_str()) {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            resolve(&spec["components"]["schemas"][name], spec)
        }
        None => schema,
    }
}

/// The declared properties of an object schema, `allOf` parts included.
fn properties(schema: &Value, spec: &Value) -> Vec<(String, Value)> {
    let schema = resolve(schema, spec);
    let mut out: Vec<(String, Value)> = schema
        .get("properties")
        .and_then(|p| p.as_object())
        .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    for part in schema.get("allOf").and_then(|a| a.as_array()).into_iter().flatten() {
        out.extend(properties(part, spec));
    }
    out
}

fn additional(schema: &Value, spec: &Value) -> Option<Value> {
    let schema = resolve(schema, spec);
    if let Some(a) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        return Some(a.clone());
    }
    schema.get("allOf").and_then(|a| a.as_array())?.iter().find_map(|p| additional(p, spec))
}

/// The schema of the 200 answer of `GET path`.
fn answer_schema<'a>(spec: &'a Value, path: &str) -> &'a Value {
    let op = &spec["paths"][path]["get"];
    let content = op["responses"]["200"]["content"].as_object().unwrap_or_else(|| panic!("GET {path}: no 200 content"));
    &content.values().next().unwrap()["schema"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_of_every_answer_is_described() {
    let (cluster, _agents) = cluster_with_agents(ClusterOpts { sim_transfer_ms: 200, ..Default::default() }).await;
    let admin = cluster.client(&[1, 2, 3]);
    create_guest(&admin, "g1", "h1", Some("p1")).await;
    create_guest(&admin, "g2", "h2", None).await;
    let id: MigrationId = migrate(&admin, "g1", "h2", "0a1").await;
    let m = wait_terminal(&cluster, id).await;
    assert_eq!(m.phase, Phase::Completed);
    // Every host in sync, so host answers carry their sync status.
    eventually("the agents' reports", Duration::from_secs(30), || async {
        let v: Value = admin.get("/v1/hosts").await.ok()?;
        v["items"].as_array()?.iter().all(|h| h["sync"]["status"] == "in_sync").then_some(())
    })
    .await;
    let spec = description(&cluster).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let on_leader = cluster.client(&[leader]);
    let reads = [
        ("/v1/node/status", "/v1/node/status".to_string()),
        ("/v1/cluster/status", "/v1/cluster/status".into()),
        ("/v1/cluster/identity", "/v1/cluster/identity".into()),
        ("/v1/state", "/v1/state".into()),
        ("/v1/hosts", "/v1/hosts".into()),
        ("/v1/hosts/{name}", "/v1/hosts/h1".into()),
        ("/v1/guests", "/v1/guests".into()),
        ("/v1/guests/{name}", "/v1/guests/g1".into()),
        ("/v1/packages", "/v1/packages".into()),
        ("/v1/packages/{name}", "/v1/packages/p1".into()),
        ("/v1/migrations", "/v1/migrations".into()),
        ("/v1/migrations/{id}", format!("/v1/migrations/{}", id.0)),
    ];
    let mut errs = Vec::new();
    for (template, path) in reads {
        let v: Value = on_leader.get(&path).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        errs.extend(undeclared(&v, answer_schema(&spec, template), &spec, &format!("GET {path}")));
    }
    // An event of every kind this history holds, against the stream item's schema.
    let events = history(&admin).await;
    let item_schema = answer_schema(&spec, "/v1/events");
    for e in &events {
        let item = serde_json::to_value(switchyard_protocol::api::StreamItem::Event(Box::new(e.clone()))).unwrap();
        errs.extend(undeclared(&item, item_schema, &spec, &format!("event {}", e.revision)));
    }
    assert!(errs.is_empty(), "fields the description does not declare: {errs:#?}");
}

#[test]
fn the_field_check_finds_an_undeclared_field() {
    let spec = serde_json::json!({"components": {"schemas": {
        "A": {"type": "object", "properties": {"x": {"type": "integer"}, "b": {"$ref": "#/components/schemas/B"}}},
        "B": {"allOf": [{"type": "object", "properties": {"y": {"type": "string"}}}]}
    }}});
    let schema = serde_json::json!({"$ref": "#/components/schemas/A"});
    assert!(undeclared(&serde_json::json!({"x": 1, "b": {"y": "s"}}), &schema, &spec, "v").is_empty());
    assert_eq!(undeclared(&serde_json::json!({"x": 1, "b": {"y": "s", "z": 2}}), &schema, &spec, "v"), ["v.b.z"]);
    assert_eq!(undeclared(&serde_json::json!({"w": 1}), &schema, &spec, "v"), ["v.w"]);
}
