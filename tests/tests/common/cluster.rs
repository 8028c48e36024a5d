//! A process-level test cluster: real `switchyard-coordinator` processes on free loopback ports,
//! one data directory each, that tests can kill (SIGKILL), restart and query. Every wait polls a
//! condition until a deadline; nothing sleeps for a fixed time and hopes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_coordinator::client::Client;
use switchyard_protocol::api::{MemberSpec, NodeStatus, WriteResponse};

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0001";
pub const OPERATOR_TOKEN: &str = "operator-token-for-tests-01";
pub const AGENT_TOKEN: &str = "agent-h1-token-for-tests-01";

/// The agent token of host `hN` (N in 1..=5; h1's is [`AGENT_TOKEN`]).
pub fn agent_token(n: u32) -> String {
    format!("agent-h{n}-token-for-tests-01")
}
const SECRET: &str = "cluster-secret-for-tests-0001";

/// Settings a test may change.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub snapshot_logs_since_last: u64,
    pub max_in_snapshot_log_to_keep: u64,
    /// `history.retain_revisions` (0 keeps everything).
    pub retain_revisions: u64,
    /// `api.host_report_timeout_ms`.
    pub host_report_timeout_ms: u64,
    /// `migration.transferring_timeout_ms`.
    pub transferring_timeout_ms: u64,
    /// `migration.step_delay_ms`.
    pub step_delay_ms: u64,
    /// The agents' simulated transfer time.
    pub sim_transfer_ms: u64,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            snapshot_logs_since_last: 5000,
            max_in_snapshot_log_to_keep: 1000,
            retain_revisions: 0,
            host_report_timeout_ms: 5000,
            transferring_timeout_ms: 30_000,
            step_delay_ms: 0,
            sim_transfer_ms: 500,
        }
    }
}

pub struct NodeProc {
    pub id: u64,
    pub raft_addr: String,
    pub api_addr: String,
    pub dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

pub struct TestCluster {
    pub nodes: Vec<NodeProc>,
    opts: ClusterOpts,
    _tmp: tempfile::TempDir,
}

/// A port nothing listens on, never the same twice in this process: the tests of one binary
/// run in parallel, each starting clusters, and the kernel may hand a port just released to
/// the next `bind(0)` — two clusters then shared a node's address, and one test initialized
/// the other's cluster.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("addr").port();
        if GIVEN.lock().expect("port set lock").insert(port) {
            return port;
        }
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl TestCluster {
    /// Starts `n` coordinators, bootstraps the cluster on node 1 and adds the others as voters.
    pub async fn start(n: usize, opts: ClusterOpts) -> TestCluster {
        let mut c = TestCluster::empty(opts);
        for id in 1..=n as u64 {
            c.spawn_new_node(id);
        }
        let admin = c.client_for(&[1], ADMIN_TOKEN);
        eventually("node 1 to answer", Duration::from_secs(20), || async {
            admin.get::<NodeStatus>("/v1/node/status").await.ok()
        })
        .await;
        admin.post::<_, serde_json::Value>("/v1/cluster/init", &serde_json::json!({})).await.expect("init");
        c.wait_leader(&[1]).await;
        for id in 2..=n as u64 {
            c.add_voter(id).await;
        }
        c
    }

    /// A cluster with no node yet; add nodes with [`TestCluster::spawn_new_node`].
    /// Set `SWITCHYARD_KEEP_TEST_DIRS=1` to keep the data and logs of every process after the
    /// test (the path is printed).
    pub fn empty(opts: ClusterOpts) -> TestCluster {
        let mut tmp = tempfile::tempdir().expect("temp dir");
        if std::env::var_os("SWITCHYARD_KEEP_TEST_DIRS").is_some() {
            tmp.disable_cleanup(true);
            eprintln!("keeping test data and logs in {}", tmp.path().display());
        }
        TestCluster { nodes: Vec::new(), opts, _tmp: tmp }
    }

    /// Creates the directory and config of a new node and starts it (not yet a member).
    pub fn spawn_new_node(&mut self, id: u64) -> &NodeProc {
        let dir = self._tmp.path().join(format!("node{id}"));
        std::fs::create_dir_all(&dir).expect("node dir");
        let (raft_port, api_port) = (free_port(), free_port());
        let config = dir.join("coordinator.toml");
        let text = format!(
            r#"node_id = {id}
data_dir = "{data}"
raft_listen = "127.0.0.1:{raft_port}"
api_listen = "127.0.0.1:{api_port}"
cluster_secret = "{SECRET}"

[[tokens]]
token = "{ADMIN_TOKEN}"
role = "admin"
name = "test-admin"

[[tokens]]
token = "{OPERATOR_TOKEN}"
role = "operator"

{agents}
[raft]
heartbeat_interval_ms = 100
election_timeout_ms_min = 500
election_timeout_ms_max = 1000
snapshot_logs_since_last = {snap}
max_in_snapshot_log_to_keep = {keep}

[api]
join_timeout_ms = 5000
host_report_timeout_ms = {report}

[history]
retain_revisions = {retain}

[migration]
transferring_timeout_ms = {transferring}
step_delay_ms = {step_delay}
"#,
            data = dir.join("data").display(),
            snap = self.opts.snapshot_logs_since_last,
            keep = self.opts.max_in_snapshot_log_to_keep,
            retain = self.opts.retain_revisions,
            report = self.opts.host_report_timeout_ms,
            transferring = self.opts.transferring_timeout_ms,
            step_delay = self.opts.step_delay_ms,
            agents = (1..=5)
                .map(|n| format!("[[tokens]]\ntoken = \"{}\"\nrole = \"agent\"\nhost = \"h{n}\"\n\n", agent_token(n)))
                .collect::<String>(),
        );
        std::fs::write(&config, text).expect("write config");
        let mut node = NodeProc {
            id,
            raft_addr: format!("127.0.0.1:{raft_port}"),
            api_addr: format!("127.0.0.1:{api_port}"),
            dir,
            config,
            child: None,
        };
        node.child = Some(spawn(&node));
        self.nodes.push(node);
        self.nodes.last().expect("just pushed")
    }

    pub async fn add_voter(&self, id: u64) {
        let n = self.node(id);
        let spec = MemberSpec { id, raft_addr: n.raft_addr.clone(), api_addr: n.api_addr.clone() };
        let admin = self.client(&self.alive_ids());
        eventually(&format!("node {id} to join"), Duration::from_secs(30), || async {
            match admin.post::<_, serde_json::Value>("/v1/cluster/nodes", &spec).await {
                Ok(_) => Some(()),
                Err(e) => {
                    eprintln!("add node {id}: {e}");
                    None
                }
            }
        })
        .await;
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn alive_ids(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.id).collect()
    }

    /// An admin client over the API endpoints of `ids`.
    pub fn client(&self, ids: &[u64]) -> Client {
        self.client_for(ids, ADMIN_TOKEN)
    }

    pub fn client_for(&self, ids: &[u64], token: &str) -> Client {
        let eps = ids.iter().map(|id| self.node(*id).api_addr.clone()).collect();
        Client::new(eps, token.to_string(), Duration::from_secs(10))
    }

    /// Kills a node with SIGKILL.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.node_mut(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops a node gracefully with SIGTERM and returns its exit status.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        let mut c = self.node_mut(id).child.take().expect("node is running");
        let sent = Command::new("kill").args(["-TERM", &c.id().to_string()]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        c.wait().expect("wait for coordinator")
    }

    /// Restarts a killed node on the same ports and data directory.
    pub fn restart(&mut self, id: u64) {
        let n = self.node_mut(id);
        assert!(n.child.is_none(), "node {id} is running");
        n.child = Some(spawn(n));
    }

    /// Deletes a stopped node's data directory: restarted, it is a brand-new coordinator on the
    /// same addresses (what replacing a lost machine looks like to agents).
    pub fn wipe(&mut self, id: u64) {
        let n = self.node(id);
        assert!(n.child.is_none(), "node {id} is running");
        std::fs::remove_dir_all(n.dir.join("data")).expect("remove the data directory");
    }

    pub async fn status(&self, id: u64) -> Option<NodeStatus> {
        self.client(&[id]).get::<NodeStatus>("/v1/node/status").await.ok()
    }

    /// Waits until the given nodes all answer and agree on one leader among them.
    pub async fn wait_leader(&self, among: &[u64]) -> u64 {
        eventually(&format!("a leader among {among:?}"), Duration::from_secs(30), || async {
            let mut leader = None;
            for id in among {
                let st = self.status(*id).await?;
                let l = st.leader?;
                if !among.contains(&l) || leader.is_some_and(|x| x != l) {
                    return None;
                }
                leader = Some(l);
            }
            let l = leader?;
            (self.status(l).await?.role == "leader").then_some(l)
        })
        .await
    }

    /// Waits until node `id` has applied at least `revision`.
    pub async fn wait_revision(&self, id: u64, revision: u64) -> NodeStatus {
        eventually(&format!("node {id} to reach revision {revision}"), Duration::from_secs(60), || async {
            self.status(id).await.filter(|s| s.revision >= revision)
        })
        .await
    }

    /// Runs the CLI against the given nodes with a token; returns (exit code, stdout, stderr).
    pub fn cli(&self, ids: &[u64], token: &str, args: &[&str]) -> (i32, String, String) {
        let eps: Vec<String> = ids.iter().map(|id| self.node(*id).api_addr.clone()).collect();
        let out = Command::new(env!("CARGO_BIN_EXE_cli_proc"))
            .args(args)
            .env("SWITCHYARD_ENDPOINTS", eps.join(","))
            .env("SWITCHYARD_TOKEN", token)
            .output()
            .expect("run cli");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// The state directory shared by the agents' simulated hypervisors.
    pub fn sim_dir(&self) -> PathBuf {
        self._tmp.path().join("simulated-hypervisor")
    }

    /// Stops every node (SIGKILL) so their data directories can be inspected.
    pub fn kill_all(&mut self) {
        for id in self.alive_ids() {
            self.kill(id);
        }
    }
}

fn spawn(n: &NodeProc) -> Child {
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(n.dir.join("coordinator.log")).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_coordinator_proc"))
        .arg("--config")
        .arg(&n.config)
        .env("RUST_LOG", "info,openraft=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn coordinator")
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A host with room for any test workload.
pub fn big_host(name: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "address": format!("{name}:7100"), "vcpus": 4096, "memory_mib": 1_048_576,
                       "hardware_family": "ia64", "hypervisor_version": "hpvm-6.1"})
}

/// Sends a write until it is acknowledged, always with the same body (and so the same request
/// id, if the body carries one): the way a careful client rides out a leader change.
pub async fn write_until_acked(c: &Client, path: &str, body: &serde_json::Value) -> WriteResponse {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match c.post::<_, WriteResponse>(path, body).await {
            Ok(r) => return r,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{path}: {e}; retrying with the same request");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{path} never succeeded: {e}"),
        }
    }
}

/// An agent process for one host.
pub struct AgentProc {
    pub host: String,
    pub dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl AgentProc {
    /// Writes the agent's config (endpoints of `ids`) and starts it.
    pub fn start(cluster: &TestCluster, host: &str, token: &str, ids: &[u64]) -> AgentProc {
        let dir = cluster._tmp.path().join(format!("agent-{host}"));
        std::fs::create_dir_all(&dir).expect("agent dir");
        let eps: Vec<String> = ids.iter().map(|id| format!("\"{}\"", cluster.node(*id).api_addr)).collect();
        let config = dir.join("agent.toml");
        let text = format!(
            "host = \"{host}\"\nendpoints = [{}]\ntoken = \"{token}\"\ndata_dir = \"{}\"\nreport_interval_ms = 200\n\n\
             [driver]\nkind = \"simulated\"\nstate_dir = \"{}\"\ntransfer_ms = {}\nfreeze_ms = 40\n",
            eps.join(", "),
            dir.join("data").display(),
            cluster.sim_dir().display(),
            cluster.opts.sim_transfer_ms,
        );
        std::fs::write(&config, text).expect("write agent config");
        let mut a = AgentProc { host: host.into(), dir, config, child: None };
        a.restart();
        a
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "agent {} is running", self.host);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("agent.log")).expect("log");
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_agent_proc"))
                .arg("--config")
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn agent"),
        );
    }

    /// Whether the process is still running (false once it exited on its own).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// SIGSTOP: the process stays, frozen (its connections stay open), until `resume`.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("agent is running").id().to_string();
        let sent = Command::new("kill").args([sig, &pid]).status().expect("run kill");
        assert!(sent.success(), "kill {sig} {pid} failed");
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The guests this agent has applied, read from its files, with its cursor.
    pub fn applied(&self) -> (u64, Vec<switchyard_protocol::Guest>) {
        let data = self.dir.join("data");
        let cursor = std::fs::read_to_string(data.join("cursor")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let mut guests = Vec::new();
        if let Ok(rd) = std::fs::read_dir(data.join("guests")) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "json") {
                    // A damaged file (set aside by the agent when it starts, so it may be gone
                    // by now) is left out: the applied state differs from the cluster's until
                    // the agent has repaired it.
                    let Ok(bytes) = std::fs::read(e.path()) else { continue };
                    if let Ok(g) = serde_json::from_slice(&bytes) {
                        guests.push(g);
                    }
                }
            }
        }
        guests.sort_by(|a: &switchyard_protocol::Guest, b| a.name.cmp(&b.name));
        (cursor, guests)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}
