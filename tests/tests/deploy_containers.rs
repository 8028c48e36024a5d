//! Cross-container fault tests of `deploy/`: the image built FROM scratch by
//! `deploy/build-image.sh`, the compose cluster of 3 coordinators + 3 agents on a private network,
//! and a workload of config changes and migrations while (a) the leader's container is cut off
//! the network and reconnected, (b) a coordinator container is killed and restarted, (c) every
//! coordinator is restarted in turn, (d) an agent container is killed mid-migration. Afterwards
//! the whole history satisfies the SPEC §5 invariants at every revision and every agent's files
//! equal the cluster's configuration.
//!
//! Needs a Docker engine and Compose: `docker compose` (v2) where it is installed, else Debian's
//! `docker-compose` (1.29, which reads the same Compose Specification file); without them it
//! says so and passes (skipped).
//! Traffic goes only to the test's own containers on their private network.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cluster::eventually;
use common::saga::{check_history, history};
use serde_json::json;
use switchyard_client::Client;
use switchyard_protocol::api::{FullState, NodeStatus, Read, WriteResponse};
use switchyard_protocol::{Guest, Migration, MigrationId, Phase};
use switchyard_tls::{Tls, TlsConfig};

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Compose command on this machine: `docker compose` (v2) or `docker-compose` (v1).
fn compose_tool() -> Option<Vec<&'static str>> {
    [vec!["docker", "compose"], vec!["docker-compose"]]
        .into_iter()
        .find(|tool| ok(Command::new(tool[0]).args(&tool[1..]).arg("version")))
}

/// The compose project of one test run; `down` on drop.
struct Project {
    tool: Vec<&'static str>,
    name: String,
    dir: std::path::PathBuf,
    net: String,
    tag: String,
}

impl Project {
    fn compose(&self) -> Command {
        let mut c = Command::new(self.tool[0]);
        c.args(&self.tool[1..])
            .arg("-f")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose.yaml"))
            .arg("-p")
            .arg(&self.name)
            .env("SWITCHYARD_DIR", &self.dir)
            .env("SWITCHYARD_NET", &self.net)
            .env("SWITCHYARD_TAG", &self.tag);
        c
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.name)
    }

    fn network(&self) -> String {
        format!("{}_switchyard", self.name)
    }

    fn coord_ip(&self, n: u64) -> String {
        format!("{}.1{n}", self.net)
    }

    /// A client over TLS, checking the coordinators against the cluster's CA.
    fn client(&self, token: &str, nodes: &[u64]) -> Client {
        let ca = self.dir.join("tls/ca.pem");
        let tls = Tls::load(&TlsConfig { ca: Some(ca), ..TlsConfig::default() }, None).expect("the cluster's CA");
        Client::new(
            nodes.iter().map(|n| format!("{}:7201", self.coord_ip(*n))).collect(),
            token.into(),
            Duration::from_secs(5),
            Some(&tls),
        )
    }

    fn docker(&self, args: &[&str]) {
        run(Command::new("docker").args(args));
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose().args(["down", "-v", "--timeout", "5"]).output();
        let _ = Command::new("docker").args(["rmi", "-f", &format!("switchyard:{}", self.tag)]).output();
    }
}

async fn leader(p: &Project, token: &str, among: &[u64]) -> u64 {
    eventually(&format!("a leader among {among:?}"), Duration::from_secs(60), || async {
        let mut seen = None;
        for n in among {
            let st: NodeStatus = p.client(token, &[*n]).get("/v1/node/status").await.ok()?;
            let l = st.leader.filter(|l| among.contains(l))?;
            if seen.is_some_and(|s| s != l) {
                return None;
            }
            seen = Some(l);
        }
        seen
    })
    .await
}

async fn wait_migration(c: &Client, id: MigrationId, until: impl Fn(&Migration) -> bool) -> Migration {
    eventually(&format!("migration {id}"), Duration::from_secs(120), || async {
        c.get::<Read<Migration>>(&format!("/v1/migrations/{}", id.0)).await.ok().map(|r| r.items).filter(|m| until(m))
    })
    .await
}

async fn write(c: &Client, path: &str, body: serde_json::Value) -> WriteResponse {
    eventually(&format!("POST {path}"), Duration::from_secs(60), || async { c.post(path, &body).await.ok() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_survives_partition_kill_rolling_restart_and_agent_loss() {
    let tool = match compose_tool() {
        Some(tool) if ok(Command::new("docker").arg("info")) => tool,
        _ => {
            eprintln!("SKIPPED deploy_containers: no Docker engine or no Compose on this machine");
            return;
        }
    };
    eprintln!("compose: {}", tool.join(" "));
    let tmp = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    let p = Project {
        tool,
        name: format!("switchyardtest{pid}"),
        dir: tmp.path().to_path_buf(),
        net: format!("172.29.{}", 100 + pid % 100),
        tag: format!("test{pid}"),
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    run(Command::new(root.join("deploy/build-image.sh"))
        .env("COORDINATOR_BIN", env!("CARGO_BIN_EXE_coordinator_proc"))
        .env("AGENT_BIN", env!("CARGO_BIN_EXE_agent_proc"))
        .env("CLI_BIN", env!("CARGO_BIN_EXE_cli_proc"))
        .env("TAG", &p.tag));
    run(Command::new(root.join("deploy/compose/make-configs.sh"))
        .arg(tmp.path())
        .env("SWITCHYARD_BIN", env!("CARGO_BIN_EXE_cli_proc"))
        .env("SWITCHYARD_NET", &p.net));
    let env = std::fs::read_to_string(tmp.path().join("cli.env")).unwrap();
    let token = env.lines().find_map(|l| l.strip_prefix("SWITCHYARD_TOKEN=")).unwrap().to_string();
    // The first start of new coordinators says so (an empty data directory is refused otherwise).
    run(p.compose().args(["up", "-d"]).env("SWITCHYARD_INITIAL_STATE", "new"));
    eprintln!("image switchyard:{} built, compose project {} up on {}.0/24", p.tag, p.name, p.net);

    // Bootstrap: three members at once, then the hosts (the agents retry until registered).
    let first = p.client(&token, &[1]);
    let members: Vec<_> = (1..=3)
        .map(|n| json!({"id": n, "raft_addr": format!("coord{n}:7101"), "api_addr": format!("coord{n}:7201")}))
        .collect();
    let _: serde_json::Value = eventually("coord1 to accept init", Duration::from_secs(60), || async {
        first.post("/v1/cluster/init", &json!({"members": members})).await.ok()
    })
    .await;
    leader(&p, &token, &[1, 2, 3]).await;
    // The processes run as the image's user, not root, and the image's health check (the CLI
    // asking /readyz over TLS with the mounted CA) finds every coordinator ready.
    for n in 1..=3 {
        let c = p.container(&format!("coord{n}"));
        let user = run(Command::new("docker").args(["inspect", "--format", "{{.Config.User}}", &c]));
        assert_eq!(user.trim(), "10001:10001", "coord{n} runs as");
        eventually(&format!("coord{n} to be healthy"), Duration::from_secs(120), || async {
            let status = run(Command::new("docker").args(["inspect", "--format", "{{.State.Health.Status}}", &c]));
            (status.trim() == "healthy").then_some(())
        })
        .await;
    }
    let all = p.client(&token, &[1, 2, 3]);
    for h in ["h1", "h2", "h3"] {
        write(
            &all,
            "/v1/hosts",
            json!({"name": h, "address": format!("{h}:7100"), "vcpus": 256, "memory_mib": 1_048_576,
                                        "hardware_family": "ia64", "hypervisor_version": "hpvm-6.1"}),
        )
        .await;
    }
    for (i, g) in ["g1", "g2", "g3"].iter().enumerate() {
        write(
            &all,
            "/v1/guests",
            json!({"name": g, "owner": "h1", "vcpus": 2, "memory_mib": 2048, "package": format!("pkg-{g}"),
                                         "request_id": format!("c0de{i}")}),
        )
        .await;
    }
    // (a) The leader's container is cut off the network: the others elect a leader and go on
    // (config change and a migration), then it comes back and catches up.
    let l = leader(&p, &token, &[1, 2, 3]).await;
    p.docker(&["network", "disconnect", &p.network(), &p.container(&format!("coord{l}"))]);
    eprintln!("(a) leader coord{l} disconnected from the network");
    let rest: Vec<u64> = (1..=3).filter(|n| *n != l).collect();
    leader(&p, &token, &rest).await;
    let others = p.client(&token, &rest);
    let w = eventually("a write without the old leader", Duration::from_secs(60), || async {
        others.patch::<_, WriteResponse>("/v1/guests/g1", &json!({"vcpus": 3, "request_id": "a1"})).await.ok()
    })
    .await;
    let m1 = MigrationId(
        write(&others, "/v1/migrations", json!({"guest": "g1", "target": "h2", "request_id": "a2"}))
            .await
            .first_revision,
    );
    let m = wait_migration(&others, m1, |m| m.phase.is_terminal()).await;
    assert_eq!(m.phase, Phase::Completed, "migration during the partition: {:?}", m.error);
    p.docker(&["network", "connect", "--ip", &p.coord_ip(l), &p.network(), &p.container(&format!("coord{l}"))]);
    eventually("the reconnected coordinator to catch up", Duration::from_secs(60), || async {
        let st: NodeStatus = p.client(&token, &[l]).get("/v1/node/status").await.ok()?;
        (st.revision >= w.first_revision).then_some(())
    })
    .await;

    // (b) A coordinator container killed and restarted, while a migration runs.
    let m2 = MigrationId(
        write(&all, "/v1/migrations", json!({"guest": "g2", "target": "h3", "request_id": "b1"})).await.first_revision,
    );
    let victim = leader(&p, &token, &[1, 2, 3]).await;
    p.docker(&["kill", &p.container(&format!("coord{victim}"))]);
    eprintln!("(b) leader coord{victim} killed during migration {m2}");
    let m = wait_migration(&all, m2, |m| m.phase.is_terminal()).await;
    assert_eq!(m.phase, Phase::Completed, "migration through the kill: {:?}", m.error);
    p.docker(&["start", &p.container(&format!("coord{victim}"))]);
    leader(&p, &token, &[1, 2, 3]).await;

    // (c) Rolling restart of every coordinator, with a change between restarts.
    for n in 1..=3u64 {
        p.docker(&["restart", "-t", "10", &p.container(&format!("coord{n}"))]);
        eprintln!("(c) coord{n} restarted");
        leader(&p, &token, &[1, 2, 3]).await;
        let body = json!({"memory_mib": 2048 + n * 512, "request_id": format!("c{n}")});
        eventually("a change after a restart", Duration::from_secs(60), || async {
            all.patch::<_, WriteResponse>("/v1/guests/g3", &body).await.ok()
        })
        .await;
    }

    // (d) The source agent's container killed mid-migration, then started again.
    let owner = all.get::<Read<Guest>>("/v1/guests/g3").await.unwrap().items.owner;
    let target = if owner.as_str() == "h1" { "h2" } else { "h1" };
    let m3 = MigrationId(
        write(&all, "/v1/migrations", json!({"guest": "g3", "target": target, "request_id": "d1"}))
            .await
            .first_revision,
    );
    wait_migration(&all, m3, |m| m.phase >= Phase::Transferring).await;
    p.docker(&["kill", &p.container(&format!("agent-{owner}"))]);
    eprintln!("(d) source agent {owner} killed during migration {m3}");
    p.docker(&["start", &p.container(&format!("agent-{owner}"))]);
    let m = wait_migration(&all, m3, |m| m.phase.is_terminal()).await;
    eprintln!("migration {m3} ended {} after the agent kill", m.phase);

    // Every invariant at every revision; every agent holds the cluster's configuration.
    let events = history(&all).await;
    check_history(&events, true);
    eprintln!("{} events checked revision by revision", events.len());
    eventually("every agent to hold the cluster's configuration", Duration::from_secs(60), || async {
        let st: Read<FullState> = all.get("/v1/state").await.ok()?;
        for h in ["h1", "h2", "h3"] {
            let dir = tmp.path().join(format!("agent-{h}/data/guests"));
            let mut files: Vec<Guest> = std::fs::read_dir(&dir)
                .ok()?
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
                .collect();
            files.sort_by(|a, b| a.name.cmp(&b.name));
            if files != st.items.guests {
                return None;
            }
        }
        Some(())
    })
    .await;
}
