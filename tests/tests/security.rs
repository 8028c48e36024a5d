//! Secure by default, and what it refuses: plaintext, strangers' certificates, a host's
//! certificate used for another host, expired certificates, strangers on the Raft port (before
//! their body is read), hostile frames on a Raft stream, an empty data directory, secrets in files others can read, placeholder
//! secrets; certificates and tokens replaced without a restart.
mod common;

use std::time::{Duration, SystemTime};

use common::cluster::*;
use serde_json::json;
use switchyard_client::Client;
use switchyard_protocol::api::{ErrorBody, HostReport, NodeStatus};
use switchyard_protocol::Name;
use switchyard_tls::issue::{self, Pair, Validity};
use switchyard_tls::rustls;
use switchyard_tls::rustls::pki_types::pem::PemObject;
use switchyard_tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use switchyard_tls::{Identity, Tls, TlsConfig};

fn host(n: &str) -> Identity {
    Identity::Host(Name::new(n).unwrap())
}

/// A raw HTTP client presenting `client` (certificate and key, PEM; no check of ours, so an
/// expired one is sent as is) and trusting `ca`.
fn raw_client(ca: &Pair, client: Option<&Pair>) -> reqwest::Client {
    reqwest::Client::builder().use_preconfigured_tls(raw_client_config(ca, client)).tls_info(true).build().unwrap()
}

/// The error of a request, with its causes.
fn chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut s = std::error::Error::source(e);
    while let Some(x) = s {
        out.push_str(&format!(": {x}"));
        s = x.source();
    }
    out
}

fn past() -> Validity {
    let now = SystemTime::now();
    Validity { not_before: now - Duration::from_secs(7200), not_after: now - Duration::from_secs(3600) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_strangers_and_expired_certificates_are_refused() {
    let cluster = TestCluster::start(1, ClusterOpts::default()).await;
    let ca = cluster.ca();
    let status = cluster.url(1, "/v1/node/status");

    // The cluster's own CA and no client certificate: the API answers (the token decides).
    let r = raw_client(&ca, None).get(&status).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Plaintext to a TLS listener: no HTTP answer, on the API and on the Raft port.
    let plain = reqwest::Client::new();
    let api_plain = status.replace("https://", "http://");
    let e = plain.get(&api_plain).bearer_auth(ADMIN_TOKEN).send().await.unwrap_err();
    eprintln!("plaintext to the API: {}", chain(&e));
    let raft_plain = format!("http://{}/raft/vote", cluster.node(1).raft_addr);
    assert!(plain.post(&raft_plain).body("x").send().await.is_err(), "plaintext Raft must get no answer");
    // The CLI told to speak plaintext says it could not talk to the cluster.
    let (code, _, err) = {
        let program = cluster.binaries.cli.clone().unwrap();
        let out = std::process::Command::new(program)
            .args(["cluster", "status", "--insecure", "--timeout", "3"])
            .env("SWITCHYARD_ENDPOINTS", cluster.endpoint(1))
            .env("SWITCHYARD_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_ne!(code, Some(0), "plaintext CLI must fail: {err}");

    // A client trusting another CA refuses the coordinator's certificate.
    let other = issue::new_ca("another CA", Validity::days(1)).unwrap();
    let e = raw_client(&other, None).get(&status).send().await.unwrap_err();
    let text = chain(&e);
    assert!(text.contains("UnknownIssuer") || text.contains("unknown issuer"), "{text}");
    // The typed client says so too, naming the cause.
    let dir = tempfile::tempdir().unwrap();
    let (other_ca, _) = issue::write(dir.path(), "other", &other).unwrap();
    let tls = Tls::load(&TlsConfig { ca: Some(other_ca), ..TlsConfig::default() }, None).unwrap();
    let c = Client::new(vec![cluster.endpoint(1)], ADMIN_TOKEN.into(), Duration::from_secs(5), Some(&tls));
    let e = c.node_status().await.unwrap_err().to_string();
    assert!(e.contains("UnknownIssuer") || e.contains("unknown issuer"), "{e}");

    // A client certificate signed by another CA: the handshake is refused.
    let stranger =
        issue::issue(&other, &Identity::Client(Name::new("mallory").unwrap()), &[], Validity::days(1)).unwrap();
    let e = raw_client(&ca, Some(&stranger)).get(&status).bearer_auth(ADMIN_TOKEN).send().await.unwrap_err();
    eprintln!("client certificate of another CA: {}", chain(&e));

    // An expired client certificate of the right CA: refused, and the alert says why.
    let expired = issue::issue(&ca, &Identity::Client(Name::new("old").unwrap()), &[], past()).unwrap();
    let e = raw_client(&ca, Some(&expired)).get(&status).bearer_auth(ADMIN_TOKEN).send().await.unwrap_err();
    let text = chain(&e);
    assert!(text.contains("CertificateExpired") || text.contains("expired"), "{text}");
    // Our own tools refuse to use an expired certificate, with its date.
    let (cert, key) = issue::write(dir.path(), "old", &expired).unwrap();
    let e = Tls::load(&TlsConfig::files(&cluster.tls_dir().join("ca.pem"), &cert, &key), None).unwrap_err();
    assert!(e.to_string().contains("expired on"), "{e}");
    // The coordinator still serves everyone else.
    cluster.client(&[1]).node_status().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_certificate_acts_for_that_host_only() {
    let cluster = TestCluster::start(3, ClusterOpts::default()).await;
    let admin = cluster.client(&[1, 2, 3]);
    for h in ["h1", "h2"] {
        let _: serde_json::Value = admin.post("/v1/hosts", &big_host(h)).await.unwrap();
    }
    let ca = cluster.ca();
    let pair = |id: &Identity| {
        let cfg = cluster.tls_config(Some(id)).unwrap();
        Pair {
            cert: std::fs::read_to_string(cfg.cert.unwrap()).unwrap(),
            key: std::fs::read_to_string(cfg.key.unwrap()).unwrap(),
        }
    };
    let h1 = raw_client(&ca, Some(&pair(&host("h1"))));
    let none = raw_client(&ca, None);
    let report = HostReport { applied_revision: 0, digest: 0, hypervisor: None };
    let t1 = agent_token(1);
    let t2 = agent_token(2);
    // Each coordinator in turn: followers forward reports to the leader, naming the client's
    // certificate, and the leader checks it as if the agent had called it directly.
    for id in [1, 2, 3] {
        let url = |p: &str| cluster.url(id, p);
        // The right pair works.
        let r = h1.post(url("/v1/hosts/h1/report")).bearer_auth(&t1).json(&report).send().await.unwrap();
        assert_eq!(r.status(), 200, "node {id}: {}", r.text().await.unwrap());
        let r = h1.get(url("/v1/hosts")).bearer_auth(&t1).send().await.unwrap();
        assert_eq!(r.status(), 200);
        // h1's certificate with h2's token: neither reports nor reads as h2.
        for (method, path) in [("POST", "/v1/hosts/h2/report"), ("GET", "/v1/hosts"), ("GET", "/v1/guests")] {
            let req = match method {
                "POST" => h1.post(url(path)).json(&report),
                _ => h1.get(url(path)),
            };
            let r = req.bearer_auth(&t2).send().await.unwrap();
            let status = r.status().as_u16();
            let body: ErrorBody = r.json().await.unwrap();
            assert_eq!((status, body.code.as_str()), (403, "forbidden"), "node {id} {method} {path}: {}", body.message);
            assert!(body.message.contains("host h2") && body.message.contains("host h1"), "{}", body.message);
        }
        // h1's token without any certificate: refused (a stolen token alone is not enough).
        let r = none.post(url("/v1/hosts/h1/report")).bearer_auth(&t1).json(&report).send().await.unwrap();
        assert_eq!(r.status(), 403);
        // h1's certificate with the admin token: refused (a host's key never acts as admin).
        let r = h1.post(url("/v1/hosts")).bearer_auth(ADMIN_TOKEN).json(&big_host("h9")).send().await.unwrap();
        assert_eq!(r.status(), 403);
        // h1's own token and certificate, reporting for h2: refused.
        let r = h1.post(url("/v1/hosts/h2/report")).bearer_auth(&t1).json(&report).send().await.unwrap();
        assert_eq!(r.status(), 403);
    }
    // A host's certificate does not open the Raft port: neither Raft itself nor the history
    // peers fill theirs from.
    for rpc in ["vote", "history", "stream"] {
        let r = h1
            .post(format!("https://{}/raft/{rpc}", cluster.node(1).raft_addr))
            .bearer_auth("cluster-secret-for-tests-0001")
            .body(vec![0u8; 16])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "/raft/{rpc}");
    }
    let hosts: serde_json::Value = admin.get("/v1/hosts").await.unwrap();
    assert_eq!(hosts["items"].as_array().unwrap().len(), 2, "nothing refused was applied");
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_large_body_is_refused_unread() {
    let cluster = TestCluster::start(1, ClusterOpts::default()).await;
    let ca = cluster.ca();
    let pid = cluster.node(1).proc.pid().unwrap();
    // A certificate of the cluster's CA, but not a coordinator's (a host's), and a coordinator's
    // certificate with a wrong secret: both refused from the headers.
    let h1 = issue::issue(&ca, &host("h1"), &[], Validity::days(1)).unwrap();
    let node9 = issue::issue(&ca, &Identity::Node(9), &[], Validity::days(1)).unwrap();
    let url = format!("https://{}/raft/append", cluster.node(1).raft_addr);
    let before = rss_kib(pid);
    for (who, client, want) in [("host", raw_client(&ca, Some(&h1)), 403), ("node", raw_client(&ca, Some(&node9)), 401)]
    {
        for _ in 0..3 {
            let body = vec![7u8; 64 << 20];
            let started = std::time::Instant::now();
            match client.post(&url).bearer_auth("wrong-secret-wrong-secret").body(body).send().await {
                Ok(r) => assert_eq!(r.status().as_u16(), want, "{who}"),
                // The server answered and closed the connection before taking the rest: the
                // client may see the reset while still sending.
                Err(e) => eprintln!("{who}: {} after {:?}", chain(&e), started.elapsed()),
            }
        }
    }
    let after = rss_kib(pid);
    eprintln!("coordinator RSS {before} KiB before, {after} KiB after 6 refused 64 MiB bodies");
    assert!(after < before + 32 * 1024, "the bodies were buffered: RSS {before} -> {after} KiB");
    cluster.client(&[1]).node_status().await.unwrap();
}

/// One frame of a Raft stream: length, kind, body.
fn raft_frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = ((body.len() + 1) as u32).to_le_bytes().to_vec();
    f.push(kind);
    f.extend_from_slice(body);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_on_a_raft_stream_are_refused_and_change_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = TestCluster::start(1, ClusterOpts::default()).await;
    let ca = cluster.ca();
    // A coordinator's certificate, the cluster secret and the right node id: admitted, so the
    // frames themselves are what is checked.
    let node9 = issue::issue(&ca, &Identity::Node(9), &[], Validity::days(1)).unwrap();
    let client = raw_client(&ca, Some(&node9));
    let url = format!("https://{}/raft/stream", cluster.node(1).raft_addr);
    let ask = || client.post(&url).bearer_auth("cluster-secret-for-tests-0001").header("x-switchyard-target", "1");
    let before = cluster.client(&[1]).node_status().await.unwrap();

    // Without the upgrade headers: told how to ask.
    let r = ask().send().await.unwrap();
    assert_eq!(r.status(), 426);

    let hostile: [(&str, Vec<u8>); 6] = [
        ("a frame of an unknown kind", raft_frame(9, b"x")),
        ("an answer sent as a request", raft_frame(0x80, b"")),
        ("an append that does not decode", raft_frame(1, &[0xff; 40])),
        ("a vote with an empty body", raft_frame(2, b"")),
        ("a length of 4 GiB", u32::MAX.to_le_bytes().to_vec()),
        ("a frame of no length", 0u32.to_le_bytes().to_vec()),
    ];
    for (what, bytes) in hostile {
        let r = ask().header("connection", "upgrade").header("upgrade", "switchyard-raft").send().await.unwrap();
        assert_eq!(r.status(), 101, "{what}");
        let mut io = r.upgrade().await.unwrap();
        io.write_all(&bytes).await.unwrap();
        // Refused, with a reason...
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await.unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        let mut answer = vec![0u8; u32::from_le_bytes(len) as usize];
        io.read_exact(&mut answer).await.unwrap();
        let reason = String::from_utf8_lossy(&answer[1..]).to_string();
        assert_eq!(answer[0], 0x81, "{what}: {reason}");
        assert!(reason.starts_with("raft "), "{what}: {reason}");
        eprintln!("{what}: refused: {reason}");
        // ...and the stream ends.
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut rest)).await;
        assert!(matches!(ended, Ok(Ok(0)) | Ok(Err(_))), "{what}: the stream went on: {ended:?}");
    }

    // Nothing changed: the same term, log and state, and the node takes writes.
    let after = cluster.client(&[1]).node_status().await.unwrap();
    assert_eq!(
        (after.role.as_str(), after.term, after.last_log_index, after.revision),
        (before.role.as_str(), before.term, before.last_log_index, before.revision)
    );
    write_until_acked(&cluster.client(&[1]), "/v1/hosts", &big_host("h1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_replaced_on_disk_are_used_without_a_restart() {
    let cluster = TestCluster::start(3, ClusterOpts::default()).await;
    let ca = cluster.ca();
    let client = raw_client(&ca, None);
    let url = cluster.url(1, "/v1/node/status");
    let served = || async {
        let r = client.get(&url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.extensions().get::<reqwest::tls::TlsInfo>().unwrap().peer_certificate().unwrap().to_vec()
    };
    let first = served().await;
    // A new certificate (new key) for node 1, written over the old files.
    let pid = cluster.node(1).proc.pid();
    let fresh = issue::issue(&ca, &Identity::Node(1), &[], Validity::days(2)).unwrap();
    issue::write(&cluster.tls_dir(), "node-1", &fresh).unwrap();
    let want = CertificateDer::from_pem_slice(fresh.cert.as_bytes()).unwrap().to_vec();
    eventually("node 1 to serve its new certificate", Duration::from_secs(20), || async {
        let now = raw_client(&ca, None).get(&url).bearer_auth(ADMIN_TOKEN).send().await.ok()?;
        let der = now.extensions().get::<reqwest::tls::TlsInfo>()?.peer_certificate()?.to_vec();
        (der == want).then_some(())
    })
    .await;
    assert_ne!(first, want);
    assert_eq!(cluster.node(1).proc.pid(), pid, "no restart");
    // The cluster still works through node 1 (Raft with its new client certificate included).
    let admin = cluster.client(&[1]);
    let _: serde_json::Value = admin.post("/v1/hosts", &big_host("h1")).await.unwrap();
    cluster.wait_leader(&[1, 2, 3]).await;
    let st: NodeStatus = admin.get("/v1/node/status").await.unwrap();
    for id in [2, 3] {
        cluster.wait_revision(id, st.revision).await;
    }

    // A bad replacement (a key that is not the certificate's) is ignored: the last good pair stays.
    let other = issue::issue(&ca, &Identity::Node(1), &[], Validity::days(2)).unwrap();
    std::fs::write(cluster.tls_dir().join("node-1.key"), &other.key).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await; // past one reload check
    let r = cluster.http().get(&url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200, "still serving with the last good certificate");
    let _ = json!({});
}

fn raw_client_config(ca: &Pair, client: Option<&Pair>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.cert.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(switchyard_tls::provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .unwrap()
        .with_root_certificates(roots);
    match client {
        Some(p) => {
            let chain = CertificateDer::pem_slice_iter(p.cert.as_bytes()).map(|c| c.unwrap()).collect();
            let key = PrivateKeyDer::from_pem_slice(p.key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_data_directory_is_refused_unless_told() {
    let mut cluster = TestCluster::empty(ClusterOpts::default());
    cluster.add_node(1, switchyard_testkit::cluster::free_addrs()).unwrap();
    let config = cluster.node(1).dir.join("coordinator.toml");
    let data = cluster.data_dir(1);
    let refused = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_coordinator_proc"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    // Never started: refused without --initial-state, and nothing is created.
    let err = refused();
    assert!(err.contains("holds no data") && err.contains("--initial-state new") && err.contains("join"), "{err}");
    assert!(!data.join("db").exists(), "nothing was created");
    // Told it is new (the kit says `--initial-state new` on a first start): it starts, and
    // restarts on its data without being told again.
    cluster.start_node(1).unwrap();
    cluster.bootstrap().await.unwrap();
    cluster.kill(1);
    cluster.restart(1);
    cluster.wait_leader(&[1]).await;
    // Its disk lost (wiped while it was down): refused again, naming the node and the way out.
    cluster.kill(1);
    cluster.wipe(1);
    let err = refused();
    assert!(err.contains("node 1 had data here") && err.contains("remove-node 1"), "{err}");
}

/// The coordinator's configuration file, read as it is on disk.
fn read_config(cluster: &TestCluster, id: u64) -> (std::path::PathBuf, switchyard_coordinator::config::Config) {
    let path = cluster.node(id).dir.join("coordinator.toml");
    let config = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    (path, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_added_and_removed_without_a_restart() {
    let cluster = TestCluster::start(1, ClusterOpts::default()).await;
    let pid = cluster.node(1).proc.pid().unwrap();
    let fresh = "e4c1f0a9b3d2c5e6f7a8091b2c3d4e5f60718293a4b5c6d7";
    let with = |token: &str| cluster.client_for(&[1], token);
    let e = with(fresh).node_status().await.unwrap_err();
    assert_eq!(e.code(), Some("unauthenticated"));
    // The configuration holds hashes only: no token in it.
    let (path, mut config) = read_config(&cluster, 1);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(ADMIN_TOKEN) && !text.contains(READ_ONLY_TOKEN), "a token in plaintext:\n{text}");
    // Add a token and remove the operator's, then SIGHUP.
    let operator = switchyard_protocol::secret::token_hash(READ_ONLY_TOKEN);
    config.tokens.retain(|t| t.sha256 != operator);
    config.tokens.push(switchyard_coordinator::config::TokenConfig {
        sha256: switchyard_protocol::secret::token_hash(fresh),
        token: None,
        role: switchyard_coordinator::config::Role::ReadOnly,
        host: None,
        name: Some("rotated".into()),
    });
    switchyard_testkit::cluster::write_toml(&path, &config).unwrap();
    // SAFETY: kill(2) of the coordinator this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    eventually("the new token to be accepted", Duration::from_secs(20), || async {
        with(fresh).node_status().await.ok()
    })
    .await;
    let e = with(READ_ONLY_TOKEN).node_status().await.unwrap_err();
    assert_eq!(e.code(), Some("unauthenticated"), "the removed token still works");
    cluster.client(&[1]).node_status().await.unwrap();
    assert_eq!(cluster.node(1).proc.pid(), Some(pid), "no restart");
    // A broken file on SIGHUP changes nothing: the tokens in use stay.
    std::fs::write(&path, "node_id = \"not a number\"").unwrap();
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    with(fresh).node_status().await.unwrap();
    assert_eq!(cluster.node(1).proc.pid(), Some(pid));
}

#[test]
fn secrets_in_readable_files_and_placeholder_secrets_are_refused_at_start() {
    let mut cluster = TestCluster::empty(ClusterOpts::default());
    cluster.add_node(1, switchyard_testkit::cluster::free_addrs()).unwrap();
    let (path, config) = read_config(&cluster, 1);
    let start = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_coordinator_proc"))
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, err) = start();
    assert_eq!(code, Some(0), "{err}");
    // World-readable: refused with the fix.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, err) = start();
    assert_eq!(code, Some(2));
    assert!(err.contains("others may read") && err.contains("chmod o-rwx"), "{err}");
    // The example's placeholder secret and a plaintext token: refused, each with what to do.
    let mut bad = config.clone();
    bad.cluster_secret = switchyard_protocol::secret::Secret("change-me-to-a-long-random-secret".into());
    bad.tokens[0].token = Some(switchyard_protocol::secret::Secret(ADMIN_TOKEN.into()));
    switchyard_testkit::cluster::write_toml(&path, &bad).unwrap();
    let (code, err) = start();
    assert_eq!(code, Some(2));
    assert!(err.contains("placeholder") && err.contains("switchyard token new"), "{err}");
    assert!(err.contains(&format!("sha256 = \"{}\"", switchyard_protocol::secret::token_hash(ADMIN_TOKEN))), "{err}");
    // The key of its certificate readable by others: refused too.
    switchyard_testkit::cluster::write_toml(&path, &config).unwrap();
    let key = config.tls.key.clone().unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, err) = start();
    assert_eq!(code, Some(2));
    assert!(err.contains("private key") && err.contains("chmod o-rwx"), "{err}");
    // No secret in the configuration's debug output (what a log line would show).
    let shown = format!("{config:?}");
    assert!(!shown.contains("cluster-secret-for-tests") && shown.contains("<redacted>"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_per_token_limit_are_refused() {
    let cluster = TestCluster::start(1, ClusterOpts { streams_per_token_max: 2, ..ClusterOpts::default() }).await;
    let http = cluster.http();
    let url = cluster.url(1, "/v1/events?follow=true&from=1&progress_ms=200");
    let open = || async { http.get(&url).bearer_auth(READ_ONLY_TOKEN).send().await.unwrap() };
    let first = open().await;
    let second = open().await;
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    let third = open().await;
    assert_eq!(third.status(), 429);
    let body: ErrorBody = third.json().await.unwrap();
    assert_eq!(body.code, "too_many_streams", "{}", body.message);
    assert!(body.message.contains("streams_per_token_max"), "{}", body.message);
    // Another token has its own allowance.
    assert_eq!(http.get(&url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().status(), 200);
    // A closed stream frees its place.
    drop(first);
    eventually("a place to free up", Duration::from_secs(10), || async {
        let r = open().await;
        (r.status() == 200).then_some(())
    })
    .await;
    drop(second);
}

/// An HTTP client as a browser would be, presenting `client` (if any) and following no
/// redirect, so that a sign-in's cookie and each redirect can be checked.
fn browser_like(ca: &Pair, client: Option<&Pair>) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(raw_client_config(ca, client))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Lists (or, with `None`, unlists) client `name`'s certificate in node 1's configuration and
/// reloads it.
fn list_certificate(cluster: &TestCluster, name: &str, role: Option<switchyard_coordinator::config::Role>) {
    let (path, mut config) = read_config(cluster, 1);
    let name = Name::new(name).unwrap();
    config.client_certificates.retain(|c| c.name != name);
    if let Some(role) = role {
        config.client_certificates.push(switchyard_coordinator::config::ClientCertificateConfig { name, role });
    }
    switchyard_testkit::cluster::write_toml(&path, &config).unwrap();
    let pid = cluster.node(1).proc.pid().unwrap();
    // SAFETY: kill(2) of the coordinator this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_client_certificate_is_a_credential_for_the_api_and_the_console() {
    use switchyard_coordinator::config::Role;
    let cluster = TestCluster::start(1, ClusterOpts::default()).await;
    let ca = cluster.ca();
    let cert =
        |name: &str| issue::issue(&ca, &Identity::Client(Name::new(name).unwrap()), &[], Validity::days(1)).unwrap();
    let (alice, bob) = (cert("alice"), cert("bob"));
    let (as_alice, as_bob, anonymous) =
        (browser_like(&ca, Some(&alice)), browser_like(&ca, Some(&bob)), browser_like(&ca, None));
    let admin = cluster.client(&[1]);
    write_until_acked(&admin, "/v1/hosts", &big_host("h1")).await;
    let url = |p: &str| cluster.url(1, p);
    let status = url("/v1/node/status");

    // Not listed: a certificate of the cluster's CA without a token is no credential.
    let r = as_alice.get(&status).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: ErrorBody = r.json().await.unwrap();
    assert!(body.message.contains("client_certificates"), "the refusal names the way in: {}", body.message);

    // Listed with role operations (a reload, no restart).
    list_certificate(&cluster, "alice", Some(Role::Operations));
    eventually("alice's certificate to be accepted", Duration::from_secs(20), || async {
        (as_alice.get(&status).send().await.ok()?.status() == 200).then_some(())
    })
    .await;
    for (who, c) in [("bob (not listed)", &as_bob), ("no certificate", &anonymous)] {
        assert_eq!(c.get(&status).send().await.unwrap().status(), 401, "{who}");
    }
    // What the role allows, recorded with the certificate's name; what it does not, refused.
    let maintenance = url("/v1/hosts/h1/maintenance");
    let r = as_alice.post(&maintenance).json(&json!({"maintenance": true})).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let events = as_alice.get(url("/v1/events?kind=host")).send().await.unwrap().text().await.unwrap();
    assert!(events.contains("\"actor\":\"alice\""), "the change is alice's: {events}");
    let r = as_alice.post(url("/v1/hosts")).json(&big_host("h2")).send().await.unwrap();
    assert_eq!(r.status(), 403, "operations may not register hosts");
    // A token sent along decides who calls: the read-only token with alice's certificate.
    let r = as_alice.post(&maintenance).bearer_auth(READ_ONLY_TOKEN).json(&json!({"maintenance": false})).send();
    assert_eq!(r.await.unwrap().status(), 403);

    // The console: the sign-in page offers the certificate; signing in needs no token.
    let login = url("/ui/login");
    let page = as_alice.get(&login).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Sign in as alice") && page.contains("role operations"), "{page}");
    let page = as_bob.get(&login).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("client bob") && page.contains("does not list") && !page.contains("Sign in as"), "{page}");
    let origin = url("");
    let sign_in = |c: &reqwest::Client| {
        c.post(&login)
            .header("origin", origin.trim_end_matches('/'))
            .form(&[("with", "certificate"), ("next", "/ui/hosts")])
            .send()
    };
    let r = sign_in(&as_alice).await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/hosts");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("HttpOnly; SameSite=Strict; Secure"));
    let hosts = |c: &reqwest::Client| c.get(url("/ui/hosts")).header("cookie", &cookie).send();
    let r = hosts(&as_alice).await.unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("alice (operations)") && page.contains("h1"), "{page}");
    // The session is bound to the certificate: its cookie on another connection opens nothing.
    for (who, c) in [("bob", &as_bob), ("no certificate", &anonymous)] {
        let r = hosts(c).await.unwrap();
        assert_eq!(r.status(), 303, "{who} with alice's cookie");
        assert!(r.headers()["location"].to_str().unwrap().starts_with("/ui/login"), "{who}");
    }
    // An unlisted certificate cannot sign in, and the refusal says why.
    let r = sign_in(&as_bob).await.unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"].to_str().unwrap().contains("error="), "sent back to the sign-in page");
    assert!(r.headers().get("set-cookie").is_none(), "no session for bob");

    // Unlisted again: the API refuses it and its console session ends.
    list_certificate(&cluster, "alice", None);
    eventually("alice's certificate to be refused", Duration::from_secs(20), || async {
        (as_alice.get(&status).send().await.ok()?.status() == 401).then_some(())
    })
    .await;
    let r = hosts(&as_alice).await.unwrap();
    assert_eq!(r.status(), 303, "the session ended with its credential");
}
