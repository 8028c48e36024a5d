//! Every CLI verb end to end against a running cluster, through the real `switchyard` code
//! (built here as `cli_proc`), in table and JSON output.
mod common;

use common::cluster::*;

/// Runs the CLI as admin and asserts success; returns stdout.
fn ok(c: &TestCluster, ids: &[u64], args: &[&str]) -> String {
    let (code, out, err) = c.cli(ids, ADMIN_TOKEN, args);
    assert_eq!(code, 0, "switchyard {args:?} failed: {err}");
    out
}

/// Runs the CLI and asserts it fails with the given error code in its message.
fn fails(c: &TestCluster, ids: &[u64], token: &str, args: &[&str], code: &str) -> String {
    let (status, _, err) = c.cli(ids, token, args);
    assert_ne!(status, 0, "switchyard {args:?} should fail");
    assert!(err.contains(code), "switchyard {args:?}: expected {code} in {err:?}");
    err
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_verbs() {
    let mut c = TestCluster::empty(ClusterOpts::default());
    c.spawn_new_node(1);
    c.spawn_new_node(2);
    eventually("node 1 up", std::time::Duration::from_secs(20), || async { c.status(1).await }).await;
    assert!(ok(&c, &[1], &["cluster", "init"]).contains("initialized"));
    fails(&c, &[1], ADMIN_TOKEN, &["cluster", "init"], "conflict");
    c.wait_leader(&[1]).await;
    eventually("node 2 up", std::time::Duration::from_secs(20), || async { c.status(2).await }).await;
    let (raft2, api2) = (c.node(2).raft_addr.clone(), c.node(2).api_addr.clone());
    let out = ok(&c, &[1], &["cluster", "add-node", "2", "--raft-addr", &raft2, "--api-addr", &api2]);
    assert!(out.contains("node 2 added"), "{out}");

    let table = ok(&c, &[2, 1], &["cluster", "status"]);
    assert!(table.starts_with("ID  ROLE"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.contains("leader") && table.contains("follower"), "{table}");
    let st = json(&ok(&c, &[1], &["cluster", "status", "-o", "json"]));
    assert_eq!(st["members"].as_array().unwrap().len(), 2);
    for m in st["members"].as_array().unwrap() {
        assert!(m["status"]["term"].as_u64().unwrap() >= 1);
        assert!(m["lag"].is_u64(), "lag shown for {m}");
    }

    // The operator may look but not touch.
    ok_as(&c, READ_ONLY_TOKEN, &["cluster", "status"]);
    fails(&c, &[1], READ_ONLY_TOKEN, &["cluster", "remove-node", "2"], "forbidden");
    assert!(ok(&c, &[1], &["cluster", "remove-node", "2"]).contains("node 2 removed"));
    let st = json(&ok(&c, &[1], &["cluster", "status", "-o", "json"]));
    assert_eq!(st["members"].as_array().unwrap().len(), 1);
    fails(&c, &[1], ADMIN_TOKEN, &["cluster", "remove-node", "7"], "not_found");
}

fn ok_as(c: &TestCluster, token: &str, args: &[&str]) -> String {
    let (code, out, err) = c.cli(&[1], token, args);
    assert_eq!(code, 0, "switchyard {args:?} failed: {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_guest_and_package_verbs() {
    let c = TestCluster::start(3, ClusterOpts::default()).await;
    let all = [3, 2, 1];
    let reg = |name: &str| {
        ok(
            &c,
            &all,
            &[
                "host",
                "register",
                name,
                "--address",
                "10.0.0.1:7100",
                "--vcpus",
                "32",
                "--memory-mib",
                "65536",
                "--hardware-family",
                "ia64",
                "--hypervisor-version",
                "hpvm-6.1",
            ],
        )
    };
    assert!(reg("h1").contains("ok, revision 2"), "revision 1 is the cluster identity");
    reg("h2");
    fails(
        &c,
        &all,
        ADMIN_TOKEN,
        &[
            "host",
            "register",
            "h1",
            "--address",
            "x",
            "--vcpus",
            "1",
            "--memory-mib",
            "1",
            "--hardware-family",
            "ia64",
            "--hypervisor-version",
            "v",
        ],
        "host_exists",
    );
    let hosts = ok(&c, &all, &["host", "list"]);
    assert!(hosts.contains("h1") && hosts.contains("h2") && hosts.contains("active"), "{hosts}");
    assert!(ok(&c, &all, &["host", "show", "h2"]).contains("h2"));
    ok(&c, &all, &["host", "maintenance", "h2", "on"]);
    assert!(ok(&c, &all, &["host", "show", "h2"]).contains("maintenance"));
    ok(&c, &all, &["host", "maintenance", "h2", "off"]);
    assert_eq!(json(&ok(&c, &all, &["host", "show", "h2", "-o", "json"]))["items"]["state"], "active");
    fails(&c, &all, ADMIN_TOKEN, &["host", "show", "nope"], "unknown_host");

    // Guests.
    ok(
        &c,
        &all,
        &[
            "guest",
            "create",
            "vm1",
            "--owner",
            "h1",
            "--vcpus",
            "2",
            "--memory-mib",
            "4096",
            "--disk",
            "avio_stor:/dev/vg01/lvol1",
            "--network",
            "avio_lan:vswitch0",
            "--package",
            "pkg1",
            "-x",
            "online_migration=disabled",
        ],
    );
    let g = json(&ok(&c, &all, &["guest", "show", "vm1", "-o", "json"]));
    assert_eq!(g["items"]["spec"]["online_migration"], false);
    assert_eq!(g["items"]["package"]["switching_enabled"], true);
    let v = g["items"]["version"].as_u64().unwrap().to_string();
    ok(&c, &all, &["guest", "modify", "vm1", "-x", "online_migration=enabled", "--vcpus", "4", "--expect-version", &v]);
    let g = json(&ok(&c, &all, &["guest", "show", "vm1", "-o", "json"]));
    assert_eq!(
        (g["items"]["spec"]["online_migration"].as_bool(), g["items"]["spec"]["vcpus"].as_u64()),
        (Some(true), Some(4))
    );
    // A stale --expect-version is refused and changes nothing.
    fails(
        &c,
        &all,
        ADMIN_TOKEN,
        &["guest", "modify", "vm1", "--vcpus", "8", "--expect-version", &v],
        "version_conflict",
    );
    assert_eq!(json(&ok(&c, &all, &["guest", "show", "vm1", "-o", "json"]))["items"]["spec"]["vcpus"], 4);
    fails(&c, &all, ADMIN_TOKEN, &["guest", "modify", "vm1", "-x", "online_migration=maybe"], "online_migration takes");
    fails(&c, &all, ADMIN_TOKEN, &["guest", "modify", "vm1", "-x", "colour=red"], "unknown attribute");
    fails(
        &c,
        &all,
        ADMIN_TOKEN,
        &["guest", "create", "../x", "--owner", "h1", "--vcpus", "1", "--memory-mib", "1"],
        "invalid name",
    );
    ok(&c, &all, &["guest", "modify", "vm1", "--cluster-node", "true", "--run-state", "stopped"]);
    let list = ok(&c, &all, &["guest", "list"]);
    assert!(list.contains("vm1") && list.contains("stopped") && list.contains("pkg1"), "{list}");
    ok(&c, &all, &["guest", "create", "vm2", "--owner", "h1", "--vcpus", "1", "--memory-mib", "512", "--stopped"]);
    assert_eq!(json(&ok(&c, &all, &["guest", "list", "-o", "json"]))["items"].as_array().unwrap().len(), 2);

    // Packages.
    ok(&c, &all, &["package", "disable", "pkg1", "--reason", "firmware update"]);
    let pk = ok(&c, &all, &["package", "list"]);
    assert!(pk.contains("DISABLED") && pk.contains("firmware update") && pk.contains("test-admin"), "{pk}");
    ok(&c, &all, &["package", "enable", "pkg1"]);
    ok(&c, &all, &["package", "disable", "pkg1", "--node", "h2"]);
    let p = json(&ok(&c, &all, &["package", "list", "-o", "json"]));
    assert_eq!(p["items"][0]["switching_enabled"], true);
    assert_eq!(p["items"][0]["disabled_nodes"][0], "h2");
    fails(&c, &all, ADMIN_TOKEN, &["package", "enable", "nopkg"], "unknown_package");

    // Idempotent retries through the CLI.
    let first = ok(&c, &all, &["guest", "remove", "vm2", "--request-id", "abc123"]);
    let again = ok(&c, &all, &["guest", "remove", "vm2", "--request-id", "abc123"]);
    assert!(first.starts_with("ok") && again.contains("already applied"), "{first} / {again}");
    fails(&c, &all, ADMIN_TOKEN, &["guest", "show", "vm2"], "unknown_guest");
    // Reads with --stale, and an unreachable endpoint first in the list.
    let (code, out, err) = c.cli(&all, READ_ONLY_TOKEN, &["guest", "list", "--stale"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("vm1"));
    let (code, _, err) = std::process::Command::new(env!("CARGO_BIN_EXE_cli_proc"))
        .args([
            "--endpoints",
            &format!("127.0.0.1:1,{}", c.node(1).api_addr),
            "--token",
            READ_ONLY_TOKEN,
            "--ca",
            c.tls_dir().join("ca.pem").to_str().unwrap(),
            "host",
            "list",
        ])
        .output()
        .map(|o| (o.status.code().unwrap_or(-1), (), String::from_utf8_lossy(&o.stderr).to_string()))
        .unwrap();
    assert_eq!(code, 0, "the CLI should move past a dead endpoint: {err}");

    // The event history.
    let table = ok(&c, &all, &["events", "--from", "1"]);
    assert!(table.starts_with("REV  TIME  ACTOR  EVENT"), "{table}");
    assert!(
        table.contains("1  ") && table.contains("host h1 registered") && table.contains("guest vm2 removed"),
        "{table}"
    );
    let lines = ok(&c, &all, &["events", "--from", "1", "--guest", "vm1", "-o", "json"]);
    let items: Vec<serde_json::Value> = lines.lines().map(json).collect();
    assert!(items.len() >= 4, "{lines}");
    for it in &items[..items.len() - 1] {
        let payload = it["event"]["payload"].as_object().unwrap();
        assert!(payload.values().any(|v| v.to_string().contains("vm1")), "not about vm1: {it}");
    }
    assert!(items.last().unwrap()["progress"]["revision"].is_u64(), "ends with a progress mark");
    let pk = ok(&c, &all, &["events", "--kind", "package", "--from", "3"]);
    assert_eq!(pk.lines().count(), 1 + 3, "header + three switching changes: {pk}");
    fails(&c, &all, ADMIN_TOKEN, &["events", "--guest", "../x"], "invalid name");

    // Without --from, `events` starts at now and follows, as `etcdctl watch` does: the first
    // event it prints is the next commit, and JSON output is JSON only.
    let now = c.status(1).await.unwrap().revision;
    let ids: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    let mut follow = c
        .cli_command(&ids, ADMIN_TOKEN)
        .args(["events", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(follow.stdout.take().unwrap());
    // Once it is connected (a progress mark at the current revision), a new write shows up.
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let first = json(&line);
    assert!(first["progress"]["revision"].as_u64().is_some_and(|r| r >= now), "{line}");
    ok(&c, &all, &["package", "enable", "pkg1", "--node", "h2"]);
    loop {
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let item = json(&line);
        if let Some(rev) = item["event"]["revision"].as_u64() {
            assert!(rev > now, "the first event printed is a new one: {line}");
            assert!(line.contains("package_switching_changed") || line.contains("PackageSwitchingChanged"), "{line}");
            break;
        }
        assert!(item["progress"].is_object(), "JSON lines only: {line}");
    }
    follow.kill().unwrap();
    follow.wait().unwrap();

    // Hosts' lifecycle: each refusal says why and what to do, and changes nothing.
    ok(&c, &all, &["package", "disable", "pkg1", "--node", "h2"]);
    let err = fails(&c, &all, ADMIN_TOKEN, &["host", "remove", "h2"], "host_in_use");
    assert!(err.contains("named by package pkg1") && err.contains("package enable pkg1 --node h2"), "{err}");
    let err = fails(&c, &all, ADMIN_TOKEN, &["host", "remove", "h1"], "host_in_use");
    assert!(err.contains("still owns guest vm1") && err.contains("migration request"), "{err}");
    let err = fails(&c, &all, ADMIN_TOKEN, &["host", "maintenance", "h1", "on"], "host_in_use");
    assert!(err.contains("still owns guest vm1"), "{err}");
    let err = fails(&c, &all, ADMIN_TOKEN, &["host", "modify", "h1", "--vcpus", "1"], "capacity_below_committed");
    assert!(err.contains("has 4 vCPU / 4096 MiB committed"), "{err}");
    fails(&c, &all, READ_ONLY_TOKEN, &["host", "modify", "h2", "--vcpus", "2"], "forbidden");
    fails(&c, &all, OPERATIONS_TOKEN, &["host", "remove", "h2"], "forbidden");
    let h2 = json(&ok(&c, &all, &["host", "show", "h2", "-o", "json"]));
    let v = h2["items"]["version"].as_u64().unwrap().to_string();
    ok(
        &c,
        &all,
        &["host", "modify", "h2", "--hypervisor-version", "hpvm-6.2", "--vcpus", "16", "--expect-version", &v],
    );
    fails(&c, &all, ADMIN_TOKEN, &["host", "modify", "h2", "--vcpus", "8", "--expect-version", &v], "version_conflict");
    let h2 = json(&ok(&c, &all, &["host", "show", "h2", "-o", "json"]));
    assert_eq!(h2["items"]["spec"]["profile"]["hypervisor_version"], "hpvm-6.2");
    assert_eq!(h2["items"]["spec"]["capacity"]["vcpus"], 16);
    // Labels: set and removed by name; a malformed one is a usage error.
    ok(&c, &all, &["host", "modify", "h2", "--label", "rack=r2", "--label", "zone=a"]);
    ok(&c, &all, &["host", "modify", "h2", "--unlabel", "zone"]);
    let shown = ok(&c, &all, &["host", "show", "h2"]);
    assert!(shown.contains("labels: rack=r2") && !shown.contains("zone"), "{shown}");
    let (code, _, err) = c.cli(&all, ADMIN_TOKEN, &["host", "modify", "h2", "--label", "rack"]);
    assert!(code != 0 && err.contains("KEY=VALUE"), "{err}");
    // The operations role may put an empty host into maintenance; then it is removed.
    let (code, _, err) = c.cli(&all, OPERATIONS_TOKEN, &["host", "maintenance", "h2", "on"]);
    assert_eq!(code, 0, "{err}");
    ok(&c, &all, &["package", "enable", "pkg1", "--node", "h2"]);
    ok(&c, &all, &["host", "remove", "h2"]);
    fails(&c, &all, ADMIN_TOKEN, &["host", "show", "h2"], "unknown_host");
    assert!(ok(&c, &all, &["events", "--from", "1", "--kind", "host"]).contains("host h2 removed"));
}
