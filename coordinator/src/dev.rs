//! `switchyard dev`: a complete local cluster for a first try — three `switchyard-coordinator`
//! processes and three `switchyard-agent` processes (hosts h1..h3, simulated hypervisor) on
//! loopback, everything in one local folder: configs, data, one log per process, generated
//! tokens. It writes `cli.toml` there, which the CLI reads when no endpoints or token are given,
//! so `switchyard ...` just works from the same directory. Running it again resumes the same
//! cluster from the same data; Ctrl-C stops every process cleanly.
//!
//! Real processes rather than tasks in one process: the demo (`--demo`) kills the leader the way
//! a machine loss would, and each process has its own log to read.
//!
//! The children are started with a parent-death signal, so a `dev` that is itself killed does
//! not leave coordinators holding the ports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use switchyard_protocol::api::{InitRequest, MemberSpec, NodeStatus, Read, WriteResponse};
use switchyard_protocol::{Migration, Phase};

use crate::client::{Client, ClientError};

const NODES: u64 = 3;

/// Prints a line to standard output, ignoring a closed pipe (`switchyard dev | head`, or a
/// reader that went away): the cluster must keep running when nobody reads its banner.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

/// What `dev` keeps between runs, in `<dir>/dev.toml`.
#[derive(Serialize, Deserialize)]
struct DevState {
    cluster_secret: String,
    admin_token: String,
    operator_token: String,
    /// host name → agent token
    #[serde(default)]
    agent_tokens: BTreeMap<String, String>,
    /// node id → (raft address, api address)
    nodes: BTreeMap<String, (SocketAddr, SocketAddr)>,
}

/// Where the CLI finds a dev cluster without flags (`<dir>/cli.toml`).
#[derive(Serialize, Deserialize)]
pub struct CliDefaults {
    pub endpoints: Vec<String>,
    pub token: String,
}

/// The dev folder the CLI looks in by default.
pub const DEFAULT_DIR: &str = "switchyard-dev";

impl CliDefaults {
    /// Reads `<DEFAULT_DIR>/cli.toml` from the current directory, if there is one.
    pub fn find() -> Option<CliDefaults> {
        let text = std::fs::read_to_string(Path::new(DEFAULT_DIR).join("cli.toml")).ok()?;
        toml::from_str(&text).ok()
    }
}

fn secret() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn load_or_create(dir: &Path, base_port: u16) -> anyhow::Result<DevState> {
    let path = dir.join("dev.toml");
    let mut state = if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?
    } else {
        let mut nodes = BTreeMap::new();
        for id in 1..=NODES {
            let addrs = if base_port == 0 {
                (free_addr()?, free_addr()?)
            } else {
                let p = |off: u64| SocketAddr::from(([127, 0, 0, 1], base_port + off as u16));
                (p(id), p(100 + id))
            };
            nodes.insert(id.to_string(), addrs);
        }
        DevState {
            cluster_secret: secret(),
            admin_token: secret(),
            operator_token: secret(),
            agent_tokens: BTreeMap::new(),
            nodes,
        }
    };
    for h in HOSTS {
        state.agent_tokens.entry(h.to_string()).or_insert_with(secret);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(&path, toml::to_string(&state)?).with_context(|| format!("write {}", path.display()))?;
    Ok(state)
}

/// The binary `name`: `$SWITCHYARD_<NAME>_BIN` if set, else next to this executable.
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let var = format!("SWITCHYARD_{}_BIN", name.trim_start_matches("switchyard-").to_uppercase());
    if let Some(p) = std::env::var_os(&var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("find this executable")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to {}; build it with `cargo build --workspace --bins` (or set {var})",
            name,
            exe.display()
        );
    }
    Ok(path)
}

/// One child process with its own log file.
struct Proc {
    name: String,
    program: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn new(name: String, program: PathBuf, config: PathBuf, log: PathBuf) -> Proc {
        Proc { name, program, config, log, child: None }
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let mut cmd = Command::new(&self.program);
        cmd.arg("--config").arg(&self.config).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,openraft=warn");
        }
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().with_context(|| format!("start {} ({})", self.name, self.program.display()))?);
        Ok(())
    }

    /// SIGKILL, as a machine loss would.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (graceful stop).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) with a pid we own and a valid signal number.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Makes a child process die with this one (Linux: PR_SET_PDEATHSIG), so a killed parent leaves
/// no process holding ports or data.
#[cfg(target_os = "linux")]
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and only sets a flag on the child being started.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_cmd: &mut Command) {}

/// What differs between the dev cluster and other local clusters (the benchmark's).
#[derive(Clone, Debug)]
pub struct LocalOpts {
    /// TOML appended to every coordinator's config (e.g. a `[raft]` section).
    pub coordinator_toml: String,
    /// How long the simulated hypervisor takes to move a guest.
    pub transfer_ms: u64,
}

impl Default for LocalOpts {
    fn default() -> Self {
        LocalOpts { coordinator_toml: String::new(), transfer_ms: 3000 }
    }
}

/// A local cluster of coordinator and agent processes, everything in one folder: what `switchyard
/// dev` runs, and what the benchmark harness (`switchyard-bench`) measures.
pub struct LocalCluster {
    dir: PathBuf,
    state: DevState,
    opts: LocalOpts,
    coordinators: Vec<Proc>,
    agents: Vec<Proc>,
}

impl LocalCluster {
    /// Loads (or creates) the folder's state and writes every process's config.
    pub fn prepare(dir: &Path, base_port: u16, opts: LocalOpts) -> anyhow::Result<LocalCluster> {
        let state = load_or_create(dir, base_port)?;
        let mut c = LocalCluster { dir: dir.to_path_buf(), state, opts, coordinators: Vec::new(), agents: Vec::new() };
        c.write_configs()?;
        Ok(c)
    }

    /// Starts the coordinators and initializes the cluster (first time) with h1..h3 registered.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let first = self.start_coordinators().await?;
        self.bootstrap(&first).await
    }

    /// Starts every coordinator; answers a client of coordinator 1 once it answers.
    async fn start_coordinators(&mut self) -> anyhow::Result<Client> {
        for p in &mut self.coordinators {
            p.start()?;
        }
        let first =
            Client::new(vec![self.endpoints()[0].clone()], self.state.admin_token.clone(), Duration::from_secs(30));
        wait_for("coordinator 1 to answer", Duration::from_secs(30), || async {
            first.get::<NodeStatus>("/v1/node/status").await.ok()
        })
        .await?;
        Ok(first)
    }

    /// Starts the coordinators and initializes the cluster (all members at once) without an
    /// identity, ready for `switchyard log restore` (the benchmark seeds large histories so).
    pub async fn start_for_restore(&mut self) -> anyhow::Result<()> {
        let first = self.start_coordinators().await?;
        let members = self
            .state
            .nodes
            .iter()
            .map(|(id, (raft, api))| {
                Ok(MemberSpec { id: id.parse()?, raft_addr: raft.to_string(), api_addr: api.to_string() })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let _: serde_json::Value = first
            .post("/v1/cluster/init", &InitRequest { members, for_restore: true })
            .await
            .context("initialize the cluster for a restore")?;
        Ok(())
    }

    /// Starts the agents that are not running.
    pub fn start_agents(&mut self) -> anyhow::Result<()> {
        for p in self.agents.iter_mut().filter(|p| p.child.is_none()) {
            p.start()?;
        }
        Ok(())
    }

    /// Stops the agents gracefully; started again, they resume from their cursors.
    pub fn stop_agents(&mut self) {
        for p in &mut self.agents {
            p.stop();
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.state.nodes.values().map(|(_, api)| api.to_string()).collect()
    }

    /// The API address of coordinator `id` (1-based).
    pub fn endpoint(&self, id: u64) -> String {
        self.state.nodes[&id.to_string()].1.to_string()
    }

    pub fn admin_token(&self) -> &str {
        &self.state.admin_token
    }

    pub fn admin(&self, timeout: Duration) -> Client {
        Client::new(self.endpoints(), self.state.admin_token.clone(), timeout)
    }

    /// SIGKILL coordinator `id`, as a machine loss would.
    pub fn kill_coordinator(&mut self, id: u64) {
        self.coordinators[(id - 1) as usize].kill();
    }

    pub fn start_coordinator(&mut self, id: u64) -> anyhow::Result<()> {
        self.coordinators[(id - 1) as usize].start()
    }

    pub fn coordinator_pid(&self, id: u64) -> Option<u32> {
        self.coordinators[(id - 1) as usize].child.as_ref().map(|c| c.id())
    }

    /// Coordinator `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}")).join("data")
    }

    fn write_configs(&mut self) -> anyhow::Result<()> {
        let coordinator = binary("switchyard-coordinator")?;
        let agent = binary("switchyard-agent")?;
        let s = &self.state;
        for (id, (raft, api)) in &s.nodes {
            let d = self.dir.join(format!("node{id}"));
            std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
            let mut text = format!(
                "node_id = {id}\ndata_dir = {:?}\nraft_listen = \"{raft}\"\napi_listen = \"{api}\"\ncluster_secret = \"{}\"\n\n\
                 [[tokens]]\ntoken = \"{}\"\nrole = \"admin\"\nname = \"dev-admin\"\n\n\
                 [[tokens]]\ntoken = \"{}\"\nrole = \"operator\"\n\n",
                d.join("data").display().to_string(),
                s.cluster_secret,
                s.admin_token,
                s.operator_token
            );
            for (h, t) in &s.agent_tokens {
                text.push_str(&format!("[[tokens]]\ntoken = \"{t}\"\nrole = \"agent\"\nhost = \"{h}\"\n\n"));
            }
            text.push_str(&self.opts.coordinator_toml);
            let config = d.join("coordinator.toml");
            std::fs::write(&config, text).with_context(|| format!("write {}", config.display()))?;
            self.coordinators.push(Proc::new(
                format!("coordinator {id}"),
                coordinator.clone(),
                config,
                d.join("coordinator.log"),
            ));
        }
        let sim = self.dir.join("simulated-hypervisor");
        let endpoints: Vec<String> = self.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
        for (h, t) in &s.agent_tokens {
            let d = self.dir.join(format!("agent-{h}"));
            std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
            let text = format!(
                "host = \"{h}\"\nendpoints = [{}]\ntoken = \"{t}\"\ndata_dir = {:?}\nreport_interval_ms = 1000\n\n\
                 [driver]\nkind = \"simulated\"\nstate_dir = {:?}\ntransfer_ms = {}\nfreeze_ms = 120\n",
                endpoints.join(", "),
                d.join("data").display().to_string(),
                sim.display().to_string(),
                self.opts.transfer_ms
            );
            let config = d.join("agent.toml");
            std::fs::write(&config, text).with_context(|| format!("write {}", config.display()))?;
            self.agents.push(Proc::new(format!("agent {h}"), agent.clone(), config, d.join("agent.log")));
        }
        let cli = CliDefaults { endpoints: self.endpoints(), token: s.admin_token.clone() };
        std::fs::write(self.dir.join("cli.toml"), toml::to_string(&cli)?).context("write cli.toml")?;
        Ok(())
    }

    /// Bootstraps the cluster the first time, then makes sure h1..h3 are registered.
    async fn bootstrap(&self, first: &Client) -> anyhow::Result<()> {
        match first.post::<_, serde_json::Value>("/v1/cluster/init", &serde_json::json!({})).await {
            Ok(_) => {
                for (id, (raft, api)) in self.state.nodes.iter().skip(1) {
                    let spec = serde_json::json!({"id": id.parse::<u64>()?, "raft_addr": raft.to_string(), "api_addr": api.to_string()});
                    let _: serde_json::Value = first.post("/v1/cluster/nodes", &spec).await?;
                }
            }
            Err(ClientError::Api { code, .. }) if code == "conflict" => {} // initialized before
            Err(e) => return Err(e).context("initialize the cluster"),
        }
        let admin = self.admin(Duration::from_secs(5));
        for (i, h) in HOSTS.iter().enumerate() {
            let registered = wait_for("a leader", Duration::from_secs(30), || async {
                match admin.get::<serde_json::Value>(&format!("/v1/hosts/{h}")).await {
                    Ok(_) => Some(true),
                    Err(ClientError::Api { code, .. }) if code == "unknown_host" => Some(false),
                    Err(_) => None,
                }
            })
            .await?;
            if !registered {
                let body = serde_json::json!({"name": h, "address": format!("127.0.0.1:{}", 7300 + i), "vcpus": 64,
                    "memory_mib": 262_144, "hardware_family": "ia64", "hypervisor_version": "hpvm-6.1"});
                let _: WriteResponse = admin.post("/v1/hosts", &body).await.context("register host")?;
            }
        }
        Ok(())
    }

    /// Stops every process gracefully.
    pub fn stop_all(&mut self) {
        for p in self.agents.iter_mut().chain(self.coordinators.iter_mut()) {
            p.stop();
        }
    }
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the dev cluster until Ctrl-C (or SIGTERM); with `demo`, plays the seed scenario first.
pub async fn run(dir: PathBuf, base_port: u16, demo: bool) -> anyhow::Result<()> {
    let mut dev = LocalCluster::prepare(&dir, base_port, LocalOpts::default())?;
    let result = async {
        dev.start().await?;
        dev.start_agents()?;
        let endpoints = dev.endpoints();
        let status: NodeStatus = dev.admin(Duration::from_secs(5)).get("/v1/node/status").await?;
        out!(
            "Switchyard dev cluster: {NODES} coordinators, agents for {}, data and logs in {}",
            HOSTS.join(", "),
            dir.display()
        );
        out!("  leader: node {}", status.leader.map_or("-".into(), |l| l.to_string()));
        out!();
        out!("  export SWITCHYARD_ENDPOINTS={}", endpoints.join(","));
        out!("  export SWITCHYARD_TOKEN={}", dev.state.admin_token);
        out!("  switchyard cluster status    # from this directory, the CLI also finds {}/cli.toml", dir.display());
        out!();
        out!("Operator (read-only) token: {}. Ctrl-C stops everything; run again to resume.", dev.state.operator_token);
        if demo {
            demo_scenario(&mut dev).await?;
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    }
    .await;
    dev.stop_all();
    result
}

/// The seed scenario: a packaged guest moved online while its leader coordinator is killed, and a
/// cluster-node guest refused.
async fn demo_scenario(dev: &mut LocalCluster) -> anyhow::Result<()> {
    let admin = dev.admin(Duration::from_secs(10));
    let say = |s: &str| out!("\n== {s}");
    say("demo: a distributed guest in a failover package, and a guest that is itself a cluster node");
    for body in [
        serde_json::json!({"name": "web1", "owner": "h1", "vcpus": 4, "memory_mib": 8192, "package": "pkg-web1",
                           "disks": ["avio_stor:/dev/vg01/web1"], "networks": ["avio_lan:vswitch0"]}),
        serde_json::json!({"name": "sgnode1", "owner": "h2", "vcpus": 2, "memory_mib": 4096, "cluster_node": true,
                           "disks": ["avio_stor:/dev/vg02/sgnode1"], "networks": ["avio_lan:vswitch0"]}),
    ] {
        match admin.post::<_, WriteResponse>("/v1/guests", &body).await {
            Ok(w) => out!("created guest {} (revision {})", body["name"], w.first_revision),
            Err(ClientError::Api { code, .. }) if code == "guest_exists" => {
                out!("guest {} already exists", body["name"])
            }
            Err(e) => return Err(e).context("create demo guest"),
        }
    }
    say("moving the cluster-node guest online is refused:");
    match admin
        .post::<_, WriteResponse>("/v1/migrations", &serde_json::json!({"guest": "sgnode1", "target": "h3"}))
        .await
    {
        Err(e) => out!("refused: {e}"),
        Ok(w) => out!("unexpectedly accepted at revision {}", w.first_revision),
    }
    let owner: Read<serde_json::Value> = admin.get("/v1/guests/web1").await?;
    let from = owner.items["owner"].as_str().unwrap_or("h1").to_string();
    let to = if from == "h1" { "h2" } else { "h1" };
    say(&format!("online migration of web1 from {from} to {to}"));
    let w: WriteResponse = admin
        .post(
            "/v1/migrations",
            &serde_json::json!({"guest": "web1", "target": to, "reason": "demo: patch the source host"}),
        )
        .await
        .context("request the migration")?;
    let id = w.first_revision;
    let read = |admin: Client| async move {
        admin.get::<Read<Migration>>(&format!("/v1/migrations/{id}?stale=true")).await.ok().map(|r| r.items)
    };
    let mut seen = Phase::Requested;
    out!("migration {id}: {seen}");
    let m = wait_for("the transfer to start", Duration::from_secs(60), || {
        let a = admin.clone();
        async move { read(a).await.filter(|m| m.phase >= Phase::Transferring) }
    })
    .await?;
    for r in m.history.iter().skip(1) {
        out!("migration {id}: {}", r.phase);
        seen = r.phase;
    }
    let leader = admin.get::<NodeStatus>("/v1/node/status").await?.leader.context("no leader")?;
    say(&format!("killing the leader, coordinator {leader} (SIGKILL), in the middle of the transfer"));
    dev.coordinators[(leader - 1) as usize].kill();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let m = loop {
        if let Some(m) = read(admin.clone()).await {
            for r in m.history.iter().filter(|r| r.phase > seen) {
                out!("migration {id}: {} ({:.1}s after the kill)", r.phase, started.elapsed().as_secs_f64());
            }
            seen = m.phase;
            if m.phase.is_terminal() {
                break m;
            }
        }
        if Instant::now() > deadline {
            bail!("migration {id} did not end within two minutes; see the logs in {}", dev.dir.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    say(&format!("migration {id} ended {}; its history:", m.phase));
    out!("{}", crate::cli::migration_detail(&m).trim_end());
    let pkg: Read<serde_json::Value> = admin.get("/v1/packages").await?;
    let web = pkg.items.as_array().and_then(|ps| ps.iter().find(|p| p["name"] == "pkg-web1")).cloned();
    out!(
        "package pkg-web1 switching: {}",
        web.map_or("?".into(), |p| if p["switching_enabled"] == true {
            "enabled (protected again)".to_string()
        } else {
            "DISABLED".into()
        })
    );
    say("the guest's full event history:");
    let q = crate::client::EventQuery { from: 1, guest: Some("web1".into()), ..Default::default() };
    admin
        .events(&q, |item| {
            if let switchyard_protocol::api::StreamItem::Event(e) = item {
                out!("  {}  {}  {}", e.revision, crate::timefmt::format(e.time), crate::cli::describe(&e.payload));
            }
            true
        })
        .await?;
    say(&format!("restarting coordinator {leader}; it catches up from the others"));
    dev.coordinators[(leader - 1) as usize].start()?;
    out!("try: switchyard migration list; switchyard events --guest web1");
    Ok(())
}
