//! A cluster of real coordinator and agent processes in one folder.
//!
//! Configs are the daemons' own types ([`Config`], [`AgentConfig`]) written with serde, so a
//! setting renamed in a daemon cannot silently go missing here; requests go through the typed
//! client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use switchyard_agent::daemon::AgentConfig;
use switchyard_agent::driver::qemu::{self, QemuConfig};
use switchyard_agent::driver::DriverConfig;
use switchyard_agent::metrics::MetricsConfig;
use switchyard_agent::watchdog::WatchdogConfig;
use switchyard_client::Client;
use switchyard_coordinator::config::{
    ApiConfig, Config, HaConfig, HistoryConfig, MigrationConfig, RaftConfig, Role, TokenConfig,
};
use switchyard_protocol::api::{InitRequest, MemberSpec, NodeStatus, RegisterHostRequest};
use switchyard_protocol::secret::{token_hash, Secret};
use switchyard_protocol::Name;
use switchyard_tls::issue::{self, Validity};
use switchyard_tls::{Identity, Tls, TlsConfig};

use crate::proc::{sibling_binary, Proc};
use crate::{eventually, wait_for};

/// The programs a cluster runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub coordinator: PathBuf,
    pub agent: PathBuf,
    /// The `switchyard` CLI, for [`Cluster::cli`].
    pub cli: Option<PathBuf>,
}

impl Binaries {
    /// The programs next to this executable (or named by `SWITCHYARD_<NAME>_BIN`).
    pub fn siblings() -> anyhow::Result<Binaries> {
        Ok(Binaries {
            coordinator: sibling_binary("switchyard-coordinator")?,
            agent: sibling_binary("switchyard-agent")?,
            cli: sibling_binary("switchyard").ok(),
        })
    }
}

/// The cluster secret and the tokens of every role.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Secrets {
    pub cluster_secret: String,
    pub admin_token: String,
    /// The admin token's name: the actor recorded with every change it makes.
    #[serde(default = "dev_admin")]
    pub admin_name: String,
    /// Read-only (`read_only` role).
    #[serde(alias = "operator_token")]
    pub read_only_token: String,
    /// Day-to-day operations (`operations` role).
    #[serde(default = "random_secret")]
    pub operations_token: String,
    /// host name → agent token
    #[serde(default)]
    pub agent_tokens: BTreeMap<String, String>,
}

fn dev_admin() -> String {
    "dev-admin".into()
}

/// 128 random bits as 32 hex digits.
pub fn random_secret() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Secrets {
    /// Fresh random secrets, with agent tokens for `hosts`; the admin acts as `admin_name`.
    pub fn random(admin_name: &str, hosts: &[&str]) -> Secrets {
        Secrets {
            cluster_secret: random_secret(),
            admin_token: random_secret(),
            admin_name: admin_name.into(),
            read_only_token: random_secret(),
            operations_token: random_secret(),
            agent_tokens: hosts.iter().map(|h| (h.to_string(), random_secret())).collect(),
        }
    }

    /// The tokens every coordinator accepts, as its config lists them (by hash).
    pub fn tokens(&self) -> Vec<TokenConfig> {
        let mut t = vec![
            TokenConfig {
                sha256: token_hash(&self.admin_token),
                token: None,
                role: Role::Admin,
                host: None,
                name: Some(self.admin_name.clone()),
            },
            TokenConfig {
                sha256: token_hash(&self.read_only_token),
                token: None,
                role: Role::ReadOnly,
                host: None,
                name: None,
            },
            TokenConfig {
                sha256: token_hash(&self.operations_token),
                token: None,
                role: Role::Operations,
                host: None,
                name: Some("operations".into()),
            },
        ];
        for (h, token) in &self.agent_tokens {
            let host = Name::new(h).expect("agent host names are valid");
            t.push(TokenConfig {
                sha256: token_hash(token),
                token: None,
                role: Role::Agent,
                host: Some(host),
                name: None,
            });
        }
        t
    }
}

/// What differs between clusters: the coordinators' settings, the simulated hypervisor's
/// timing, the agents' report interval, the processes' log filter.
#[derive(Clone, Debug)]
pub struct Settings {
    pub raft: RaftConfig,
    pub api: ApiConfig,
    pub history: HistoryConfig,
    pub migration: MigrationConfig,
    pub ha: HaConfig,
    /// How long the simulated hypervisor takes to move a guest.
    pub sim_transfer_ms: u64,
    pub sim_freeze_ms: u64,
    pub report_interval_ms: u64,
    /// The agents' hypervisor: simulated, or real QEMU guests.
    pub hypervisor: Hypervisor,
    /// How often a reconciling agent (qemu) reads its hypervisor.
    pub reconcile_interval_ms: u64,
    /// QEMU's live-migration bandwidth limit (KiB/s), to make transfers last.
    pub qemu_bandwidth_kib: Option<u64>,
    /// MiB of random data loaded into every QEMU guest's memory when it starts (0: none). A
    /// guest without an operating system leaves its memory zero, and QEMU sends a zero page as
    /// a few bytes, so a 32 MiB guest moves in milliseconds whatever the bandwidth limit; with
    /// data it moves at the limit's pace, as a guest whose OS uses its memory does, and a test
    /// can act while the transfer is under way.
    pub qemu_guest_data_mib: u32,
    /// How far behind an agent jumps to the current state instead of applying every event
    /// (the agents' `jump_after_revisions`; 0: never).
    pub jump_after_revisions: u64,
    /// `RUST_LOG` of every process (unless the environment sets one).
    pub rust_log: String,
    /// TLS on every link (the default), under a CA made in the cluster's folder (`tls/`);
    /// `false`: plaintext (`tls.insecure`).
    pub tls: bool,
}

/// Which driver the cluster's agents use.
#[derive(Clone, Debug)]
pub enum Hypervisor {
    /// One simulated hypervisor shared by all hosts ([`Cluster::sim_dir`]).
    Simulated,
    /// Each agent manages real QEMU guests in `agent-<host>/qemu/` (killed when the cluster is
    /// dropped); incoming live migrations listen on one port of the cluster's own.
    Qemu,
    /// The operator's tools from templates (the tests' fake platform tools). Each agent gets a
    /// copy with its lifecycle records in `agent-<host>/records/` and `{host}` in the values of
    /// `env` replaced by its host name.
    Command(Box<switchyard_agent::driver::command::CommandConfig>),
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            raft: RaftConfig::default(),
            api: ApiConfig::default(),
            history: HistoryConfig::default(),
            migration: MigrationConfig::default(),
            ha: HaConfig::default(),
            sim_transfer_ms: 3000,
            sim_freeze_ms: 120,
            report_interval_ms: 1000,
            hypervisor: Hypervisor::Simulated,
            reconcile_interval_ms: 1000,
            qemu_bandwidth_kib: None,
            qemu_guest_data_mib: 0,
            jump_after_revisions: 10_000,
            rust_log: "info,openraft=warn".into(),
            tls: true,
        }
    }
}

/// One coordinator process.
pub struct NodeProc {
    pub id: u64,
    pub raft_addr: String,
    pub api_addr: String,
    /// Its folder: `coordinator.toml`, `coordinator.log`, `data/`.
    pub dir: PathBuf,
    pub proc: Proc,
}

impl NodeProc {
    /// Starts the coordinator; the first time (no data yet) as the operator of a cluster the
    /// kit creates would: `--initial-state new` (a member to be initialized, or one to be
    /// added under an id never used).
    pub fn start(&mut self) -> anyhow::Result<()> {
        if switchyard_coordinator::server::holds_data(&self.dir.join("data")) {
            self.proc.start()
        } else {
            self.proc.start_with(&["--initial-state", "new"])
        }
    }
}

/// One agent process.
pub struct AgentProc {
    pub host: String,
    /// Its folder: `agent.toml`, `agent.log`, `data/`.
    pub dir: PathBuf,
    pub proc: Proc,
    /// Where it serves its metrics (TLS when the cluster has TLS).
    pub metrics: SocketAddr,
}

/// How many ports a test cluster's agents take incoming live migrations on.
pub const MIGRATION_PORTS: u16 = 16;

/// The first of `n` consecutive ports that were free when asked and that no other caller in
/// this process was given.
///
/// The block is sought below Linux's default ephemeral range (32768–60999): the kernel hands
/// ports of that range to outgoing connections, and after a run with thousands of connections
/// (the benchmark's 10 000 subscribers) nearly every block there holds a port in TIME_WAIT,
/// which a listener cannot bind. Gives up with an error after a bounded search.
pub fn free_ports(n: u16) -> anyhow::Result<u16> {
    const LOW: u16 = 10_000;
    const HIGH: u16 = 32_768;
    const ATTEMPTS: usize = 2_000;
    anyhow::ensure!((1..=HIGH - LOW).contains(&n), "cannot look for {n} consecutive ports");
    for _ in 0..ATTEMPTS {
        let first = rand::Rng::gen_range(&mut rand::thread_rng(), LOW..=HIGH - n);
        let block = first..first + n;
        let mut given = FREE_PORTS_GIVEN.lock().expect("port set lock");
        if block.clone().all(|p| !given.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            given.extend(block);
            return Ok(first);
        }
    }
    anyhow::bail!("found no {n} consecutive free ports between {LOW} and {HIGH} in {ATTEMPTS} tries")
}

static FREE_PORTS_GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A port nothing listens on, never the same twice in this process: tests of one binary run
/// in parallel, each starting clusters, and the kernel may hand a port just released to the
/// next `bind(0)` — two clusters then shared a node's address, and one test initialized the
/// other's cluster.
pub fn free_port() -> u16 {
    loop {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("addr").port();
        if FREE_PORTS_GIVEN.lock().expect("port set lock").insert(port) {
            return port;
        }
    }
}

/// Kills every QEMU process the agents of the cluster in `dir` started: every process whose
/// command line names a guest folder below `dir` (`agent-*/qemu/*/`). What a test or
/// `switchyard dev` must do when it stops, since guests outlive their agents.
pub fn kill_vms_in(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    kill_qemu_naming(&format!("{}/agent-", dir.display()));
}

/// Kills the QEMU processes whose command line names `marker` (and a `/qemu/` guest folder);
/// answers how many. Processes are found in `/proc` rather than from pid files, so a VM an agent
/// was launching as it died is found too: the scan repeats until a pass finds none (up to about
/// a second).
pub fn kill_qemu_naming(marker: &str) -> usize {
    let mut killed = 0;
    for _ in 0..20 {
        let mut found = false;
        let Ok(procs) = std::fs::read_dir("/proc") else { return killed };
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else { continue };
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("qemu") && cmdline.contains(marker) && cmdline.contains("/qemu/") {
                found = true;
                // SAFETY: kill(2) of a QEMU process started for this cluster's guests.
                if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                    killed += 1;
                }
            }
        }
        if !found {
            return killed;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    killed
}

/// Two free loopback addresses: (Raft, API).
pub fn free_addrs() -> (SocketAddr, SocketAddr) {
    (SocketAddr::from(([127, 0, 0, 1], free_port())), SocketAddr::from(([127, 0, 0, 1], free_port())))
}

pub struct Cluster {
    dir: PathBuf,
    pub secrets: Secrets,
    pub binaries: Binaries,
    pub settings: Settings,
    pub nodes: Vec<NodeProc>,
    /// Agents the cluster itself runs (`switchyard dev`, the benchmark); tests may also hold
    /// their own [`AgentProc`]s.
    pub agents: Vec<AgentProc>,
    /// The first of [`MIGRATION_PORTS`] ports incoming live migrations listen on
    /// ([`Hypervisor::Qemu`]): several migrations into one host run at once, each on its own.
    pub migration_port: u16,
    /// What clients of the cluster (tests, the CLI) trust: its CA; `None` without TLS.
    pub client_tls: Option<Tls>,
    _tmp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// A cluster with no node yet, in `dir` (created), or in a temporary folder removed when the
    /// cluster is dropped. Set `SWITCHYARD_KEEP_TEST_DIRS=1` to keep a temporary folder (its
    /// path is printed) with the data and logs of every process.
    pub fn new(
        dir: Option<&Path>,
        binaries: Binaries,
        secrets: Secrets,
        settings: Settings,
    ) -> anyhow::Result<Cluster> {
        let (dir, tmp) = match dir {
            Some(d) => (d.to_path_buf(), None),
            None => {
                let mut tmp = tempfile::tempdir().context("create a temporary folder")?;
                if std::env::var_os("SWITCHYARD_KEEP_TEST_DIRS").is_some() {
                    tmp.disable_cleanup(true);
                    eprintln!("keeping test data and logs in {}", tmp.path().display());
                }
                (tmp.path().to_path_buf(), Some(tmp))
            }
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let client_tls = if settings.tls {
            let tls_dir = dir.join("tls");
            if !issue::paths(&tls_dir, issue::CA_STEM).0.exists() {
                let ca = issue::new_ca("Switchyard test cluster CA", Validity::days(issue::CA_DAYS))?;
                issue::write(&tls_dir, issue::CA_STEM, &ca)?;
            }
            Some(Tls::load(
                &TlsConfig { ca: Some(issue::paths(&tls_dir, issue::CA_STEM).0), ..TlsConfig::default() },
                None,
            )?)
        } else {
            None
        };
        Ok(Cluster {
            dir,
            secrets,
            binaries,
            settings,
            nodes: Vec::new(),
            agents: Vec::new(),
            migration_port: free_ports(MIGRATION_PORTS)?,
            client_tls,
            _tmp: tmp,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the cluster's CA and certificates are (`<dir>/tls`).
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// The cluster's CA (certificate and key).
    pub fn ca(&self) -> issue::Pair {
        issue::read(&self.tls_dir(), issue::CA_STEM).expect("the cluster's CA")
    }

    /// The `[tls]` section of a party with `identity` (`None`: a client with the CA only):
    /// its certificate made the first time it is asked for, kept after.
    pub fn tls_config(&self, identity: Option<&Identity>) -> anyhow::Result<TlsConfig> {
        if !self.settings.tls {
            return Ok(TlsConfig::insecure());
        }
        let dir = self.tls_dir();
        let ca = issue::paths(&dir, issue::CA_STEM).0;
        let Some(identity) = identity else {
            return Ok(TlsConfig { ca: Some(ca), ..TlsConfig::default() });
        };
        let stem = issue::stem(identity);
        let (cert, key) = issue::paths(&dir, &stem);
        if !cert.exists() || !key.exists() {
            issue::write(&dir, &stem, &issue::issue(&self.ca(), identity, &[], Validity::days(issue::DEFAULT_DAYS))?)?;
        }
        Ok(TlsConfig::files(&ca, &cert, &key))
    }

    /// Writes the config of coordinator `id` listening on `addrs` (Raft, API); not started.
    pub fn add_node(&mut self, id: u64, (raft, api): (SocketAddr, SocketAddr)) -> anyhow::Result<&mut NodeProc> {
        let dir = self.dir.join(format!("node{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let config = Config {
            node_id: id,
            data_dir: dir.join("data"),
            raft_listen: raft,
            api_listen: api,
            raft_advertise: None,
            api_advertise: None,
            cluster_secret: Secret(self.secrets.cluster_secret.clone()),
            tokens: self.secrets.tokens(),
            client_certificates: Vec::new(),
            raft: self.settings.raft.clone(),
            api: self.settings.api.clone(),
            history: self.settings.history.clone(),
            migration: self.settings.migration.clone(),
            ha: self.settings.ha.clone(),
            tls: self.tls_config(Some(&Identity::Node(id)))?,
            initial_state: None,
        };
        config.validate()?;
        let path = dir.join("coordinator.toml");
        write_toml(&path, &config)?;
        let args = vec!["--config".to_string(), path.display().to_string()];
        let proc = Proc::new(
            format!("coordinator {id}"),
            self.binaries.coordinator.clone(),
            args,
            dir.join("coordinator.log"),
            &self.settings.rust_log,
        );
        self.nodes.push(NodeProc { id, raft_addr: raft.to_string(), api_addr: api.to_string(), dir, proc });
        Ok(self.nodes.last_mut().expect("just pushed"))
    }

    /// Creates coordinator `id` on free ports and starts it (not yet a member).
    pub fn spawn_new_node(&mut self, id: u64) -> &NodeProc {
        let n = self.add_node(id, free_addrs()).expect("configure a coordinator");
        n.start().expect("start a coordinator");
        n
    }

    /// Starts every coordinator that is not running.
    pub fn start_nodes(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            if !n.proc.running() {
                n.start()?;
            }
        }
        Ok(())
    }

    /// Starts `n` coordinators on free ports, bootstraps the cluster on node 1 and adds the
    /// others as voters (learners first, as an operator would).
    pub async fn start(&mut self, n: u64) -> anyhow::Result<()> {
        for id in 1..=n {
            self.spawn_new_node(id);
        }
        self.bootstrap().await
    }

    /// Initializes the cluster on node 1 and adds every other configured node as a voter.
    /// Answers `conflict`-free on a cluster that was initialized before (a restarted dev folder).
    pub async fn bootstrap(&self) -> anyhow::Result<()> {
        let first = self.client(&[self.nodes[0].id]);
        wait_for("coordinator 1 to answer", Duration::from_secs(30), || async { first.node_status().await.ok() })
            .await?;
        match first.init(&InitRequest::default()).await {
            Ok(_) => {}
            Err(e) if e.code() == Some("conflict") => return Ok(()),
            Err(e) => return Err(e).context("initialize the cluster"),
        }
        let first_id = self.nodes[0].id;
        self.leader_among(&[first_id]).await?;
        for n in self.nodes.iter().skip(1) {
            self.add_voter(n.id).await?;
        }
        Ok(())
    }

    /// Initializes the cluster with every node at once and no identity, ready for
    /// `switchyard log restore`.
    pub async fn bootstrap_for_restore(&self) -> anyhow::Result<()> {
        let first = self.client(&[self.nodes[0].id]);
        wait_for("coordinator 1 to answer", Duration::from_secs(30), || async { first.node_status().await.ok() })
            .await?;
        let members = self
            .nodes
            .iter()
            .map(|n| MemberSpec { id: n.id, raft_addr: n.raft_addr.clone(), api_addr: n.api_addr.clone() })
            .collect();
        first
            .init(&InitRequest { members, for_restore: true })
            .await
            .context("initialize the cluster for a restore")?;
        Ok(())
    }

    /// Adds coordinator `id` as a voter, retrying until it has caught up and joined.
    pub async fn add_voter(&self, id: u64) -> anyhow::Result<()> {
        let n = self.node(id);
        let spec = MemberSpec { id, raft_addr: n.raft_addr.clone(), api_addr: n.api_addr.clone() };
        let admin = self.client(&self.alive_ids());
        wait_for(&format!("node {id} to join"), Duration::from_secs(30), || async {
            match admin.add_node(&spec).await {
                Ok(_) => Some(()),
                Err(e) => {
                    eprintln!("add node {id}: {e}");
                    None
                }
            }
        })
        .await
    }

    /// Registers hosts (skipping those registered before), riding out leader changes.
    pub async fn register_hosts(&self, hosts: &[RegisterHostRequest]) -> anyhow::Result<()> {
        let admin = self.admin(Duration::from_secs(10)).retrying_writes(Duration::from_secs(60));
        for h in hosts {
            match admin.register_host(h).await {
                Ok(_) => {}
                Err(e) if e.code() == Some("host_exists") => {}
                Err(e) => return Err(e).with_context(|| format!("register host {}", h.name)),
            }
        }
        Ok(())
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Ids of the coordinators that run.
    pub fn alive_ids(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.proc.pid().is_some()).map(|n| n.id).collect()
    }

    /// Every coordinator's API address, in node order.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.api_addr.clone()).collect()
    }

    /// The API address of coordinator `id`.
    pub fn endpoint(&self, id: u64) -> String {
        self.node(id).api_addr.clone()
    }

    /// Coordinator `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).dir.join("data")
    }

    /// An admin client over the API endpoints of `ids`.
    pub fn client(&self, ids: &[u64]) -> Client {
        self.client_for(ids, &self.secrets.admin_token)
    }

    /// A client with `token` over the endpoints of `ids`. An agent's token comes with its host's
    /// certificate, as the agent itself sends it.
    pub fn client_for(&self, ids: &[u64], token: &str) -> Client {
        let eps = ids.iter().map(|id| self.node(*id).api_addr.clone()).collect();
        let tls = self.tls_for(token);
        Client::new(eps, token.to_string(), Duration::from_secs(10), tls.as_ref())
    }

    /// What a client with `token` presents: the CA, and the host's certificate for an agent's
    /// token.
    fn tls_for(&self, token: &str) -> Option<Tls> {
        let host = self.secrets.agent_tokens.iter().find(|(_, t)| t.as_str() == token).map(|(h, _)| h);
        match host {
            Some(h) if self.settings.tls => {
                let identity = Identity::Host(Name::new(h).expect("agent host names are valid"));
                let config = self.tls_config(Some(&identity)).expect("the host's certificate");
                Some(Tls::load(&config, Some(identity)).expect("load the host's certificate"))
            }
            _ => self.client_tls.clone(),
        }
    }

    /// A raw HTTP client for requests the typed client cannot make (malformed ones, say),
    /// trusting the cluster's CA; use with [`Cluster::url`].
    pub fn http(&self) -> reqwest::Client {
        self.http_for("")
    }

    /// [`Cluster::http`] presenting what a client with `token` presents (see
    /// [`Cluster::client_for`]).
    pub fn http_for(&self, token: &str) -> reqwest::Client {
        switchyard_tls::http(reqwest::Client::builder(), self.tls_for(token).as_ref())
            .0
            .build()
            .expect("an HTTP client with a preconfigured TLS setup builds")
    }

    /// The URL of `path` on coordinator `id`'s API (`https://` unless the cluster is plaintext).
    pub fn url(&self, id: u64, path: &str) -> String {
        let scheme = if self.settings.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.node(id).api_addr)
    }

    /// An admin client over every coordinator.
    pub fn admin(&self, timeout: Duration) -> Client {
        Client::new(self.endpoints(), self.secrets.admin_token.clone(), timeout, self.client_tls.as_ref())
    }

    /// SIGKILL coordinator `id`, as a machine loss would.
    pub fn kill(&mut self, id: u64) {
        self.node_mut(id).proc.kill();
    }

    /// Stops coordinator `id` gracefully (SIGTERM) and waits up to `grace` for it to exit:
    /// answers its exit status and whether it exited within `grace` (SIGKILL after that).
    pub fn terminate_within(&mut self, id: u64, grace: Duration) -> (std::process::ExitStatus, bool) {
        self.node_mut(id).proc.terminate(grace).expect("node is running")
    }

    /// Stops coordinator `id` gracefully (SIGTERM) and returns its exit status.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        self.terminate_within(id, Duration::from_secs(60)).0
    }

    /// Restarts a stopped coordinator on the same ports and data directory (panics on error:
    /// for tests).
    pub fn restart(&mut self, id: u64) {
        self.start_node(id).unwrap_or_else(|e| panic!("restart coordinator {id}: {e:#}"));
    }

    /// Starts a stopped coordinator on the same ports and data directory.
    pub fn start_node(&mut self, id: u64) -> anyhow::Result<()> {
        self.node_mut(id).start()
    }

    /// Deletes a stopped node's data directory: restarted, it is a brand-new coordinator on the
    /// same addresses (what replacing a lost machine looks like to agents).
    pub fn wipe(&mut self, id: u64) {
        let n = self.node(id);
        assert!(n.proc.pid().is_none(), "node {id} is running");
        std::fs::remove_dir_all(n.dir.join("data")).expect("remove the data directory");
    }

    pub async fn status(&self, id: u64) -> Option<NodeStatus> {
        self.client(&[id]).node_status().await.ok()
    }

    /// Waits until the given nodes all answer and agree on one leader among them (panics after
    /// 30 s: for tests).
    pub async fn wait_leader(&self, among: &[u64]) -> u64 {
        self.leader_among(among).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until the given nodes all answer and agree on one leader among them.
    pub async fn leader_among(&self, among: &[u64]) -> anyhow::Result<u64> {
        wait_for(&format!("a leader among {among:?}"), Duration::from_secs(30), || async {
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

    /// Runs the CLI against the given nodes with a token; answers (exit code, stdout, stderr).
    pub fn cli(&self, ids: &[u64], token: &str, args: &[&str]) -> (i32, String, String) {
        let out = self.cli_command(ids, token).args(args).output().expect("run cli");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// The CLI, set up (environment) to reach the given nodes with a token: endpoints, token,
    /// and the cluster's CA (or plaintext without TLS). Add the arguments.
    pub fn cli_command(&self, ids: &[u64], token: &str) -> Command {
        let eps: Vec<String> = ids.iter().map(|id| self.node(*id).api_addr.clone()).collect();
        let program = self.binaries.cli.as_ref().expect("this cluster was given no CLI binary");
        let mut cmd = Command::new(program);
        cmd.env("SWITCHYARD_ENDPOINTS", eps.join(",")).env("SWITCHYARD_TOKEN", token);
        match self.settings.tls {
            true => cmd.env("SWITCHYARD_CA", issue::paths(&self.tls_dir(), issue::CA_STEM).0),
            false => cmd.env("SWITCHYARD_INSECURE", "true"),
        };
        cmd
    }

    /// The state directory shared by the agents' simulated hypervisors.
    /// A program that runs `qemu` as it is asked, and when it starts a guest also loads
    /// [`Settings::qemu_guest_data_mib`] MiB of random data at 16 MiB into the guest's memory
    /// (QEMU's generic loader device). Made once in the cluster's folder; every host's guests
    /// get the same data, so source and target of a move start alike.
    fn qemu_with_guest_data(&self, qemu: &Path) -> anyhow::Result<PathBuf> {
        const AT: u64 = 16 << 20;
        let mib = self.settings.qemu_guest_data_mib;
        let (data, program) = (self.dir.join("qemu-guest-data.bin"), self.dir.join("qemu-with-guest-data"));
        if program.exists() {
            return Ok(program);
        }
        let mut bytes = vec![0u8; mib as usize * (1 << 20)];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
        std::fs::write(&data, bytes).with_context(|| format!("write {}", data.display()))?;
        let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
        let script = format!(
            "#!/bin/sh\n\
             # Starting a guest (-daemonize): also load the test data into its memory.\n\
             case \" $* \" in *\" -daemonize \"*) exec {qemu} \"$@\" -device loader,file={data},addr={AT:#x},force-raw=on ;; esac\n\
             exec {qemu} \"$@\"\n",
            qemu = quote(qemu),
            data = quote(&data),
        );
        std::fs::write(&program, script).with_context(|| format!("write {}", program.display()))?;
        let mut perms = std::fs::metadata(&program)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&program, perms).with_context(|| format!("make {} executable", program.display()))?;
        Ok(program)
    }

    pub fn sim_dir(&self) -> PathBuf {
        self.dir.join("simulated-hypervisor")
    }

    /// Where host `host`'s agent keeps its QEMU guests ([`Hypervisor::Qemu`]).
    pub fn qemu_dir(&self, host: &str) -> PathBuf {
        self.dir.join(format!("agent-{host}")).join("qemu")
    }

    /// Kills every QEMU process of this cluster's agents: they are daemons, and outlive the
    /// agents that started them (as VMs must).
    pub fn kill_vms(&self) {
        kill_vms_in(&self.dir);
    }

    /// Kills the QEMU processes of one host's guests (what a crash of that host does to them).
    pub fn kill_host_vms(&self, host: &str) -> usize {
        let dir = self.qemu_dir(host);
        let dir = dir.canonicalize().unwrap_or(dir);
        kill_qemu_naming(&format!("{}/", dir.display()))
    }

    /// Starts an agent for `host` (token from [`Secrets::agent_tokens`]) with the endpoints of
    /// the coordinators `ids`, on the cluster's hypervisor ([`Settings::hypervisor`]).
    pub fn start_agent(&self, host: &str, ids: &[u64]) -> anyhow::Result<AgentProc> {
        let token = self.secrets.agent_tokens.get(host).with_context(|| format!("no agent token for {host}"))?;
        AgentProc::configure(self, host, token, ids).and_then(|mut a| a.proc.start().map(|()| a))
    }

    /// Starts (again) the cluster's own agents, one per host of [`Secrets::agent_tokens`].
    pub fn start_agents(&mut self) -> anyhow::Result<()> {
        if self.agents.is_empty() {
            let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
            let hosts: Vec<String> = self.secrets.agent_tokens.keys().cloned().collect();
            for h in hosts {
                let token = self.secrets.agent_tokens[&h].clone();
                let a = AgentProc::configure(self, &h, &token, &ids)?;
                self.agents.push(a);
            }
        }
        for a in &mut self.agents {
            if !a.proc.running() {
                a.proc.start()?;
            }
        }
        Ok(())
    }

    /// Stops the cluster's own agents gracefully; started again, they resume from their cursors.
    pub fn stop_agents(&mut self) {
        for a in &mut self.agents {
            a.proc.terminate(Duration::from_secs(10));
        }
    }

    /// Stops every process gracefully (agents first).
    pub fn stop_all(&mut self) {
        self.stop_agents();
        for n in &mut self.nodes {
            n.proc.terminate(Duration::from_secs(10));
        }
    }

    /// SIGKILLs every coordinator, so their data directories can be inspected.
    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.proc.kill();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.proc.kill();
        }
        self.kill_all();
        self.kill_vms();
        // A failing test shows what its processes said last: the folder (with the whole logs)
        // is removed right after, unless SWITCHYARD_KEEP_TEST_DIRS is set.
        if std::thread::panicking() {
            eprint!("{}", log_tails(&self.dir, LOG_TAIL_LINES));
        }
    }
}

/// How many of each process's last log lines a failing test prints.
const LOG_TAIL_LINES: usize = 30;

/// The last `lines` lines of every process log in the cluster folder `dir` (each coordinator's
/// and agent's folder, one level down), each under its file's name.
fn log_tails(dir: &Path, lines: usize) -> String {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_dir(e.path()).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    let mut out = String::new();
    for log in logs {
        let text = std::fs::read(&log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        out.push_str(&format!("---- the last lines of {}\n", log.display()));
        for line in &all[all.len().saturating_sub(lines)..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

impl AgentProc {
    /// Writes the agent's config (endpoints of the coordinators `ids`); not started.
    pub fn configure(cluster: &Cluster, host: &str, token: &str, ids: &[u64]) -> anyhow::Result<AgentProc> {
        let endpoints = ids.iter().map(|id| cluster.node(*id).api_addr.clone()).collect();
        AgentProc::configure_with(cluster, host, token, endpoints, None)
    }

    /// Writes the agent's config with these endpoints (a test's proxies, say) and watchdog.
    pub fn configure_with(
        cluster: &Cluster,
        host: &str,
        token: &str,
        endpoints: Vec<String>,
        watchdog: Option<WatchdogConfig>,
    ) -> anyhow::Result<AgentProc> {
        let dir = cluster.dir.join(format!("agent-{host}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let host_name = Name::new(host).context("agent host name")?;
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = AgentConfig {
            metrics: Some(MetricsConfig { listen: metrics }),
            tls: cluster.tls_config(Some(&Identity::Host(host_name.clone())))?,
            host: host_name,
            endpoints,
            watchdog,
            token: Secret(token.to_string()),
            data_dir: dir.join("data"),
            report_interval_ms: cluster.settings.report_interval_ms,
            reconcile_interval_ms: cluster.settings.reconcile_interval_ms,
            jump_after_revisions: cluster.settings.jump_after_revisions,
            driver: match &cluster.settings.hypervisor {
                Hypervisor::Command(template) => {
                    let mut c = (**template).clone();
                    for v in c.env.values_mut() {
                        *v = v.replace("{host}", host);
                    }
                    if let Some(l) = c.lifecycle.as_mut() {
                        l.state_dir = dir.join("records");
                    }
                    DriverConfig::Command(Box::new(c))
                }
                Hypervisor::Simulated => DriverConfig::Simulated {
                    state_dir: cluster.sim_dir(),
                    transfer_ms: cluster.settings.sim_transfer_ms,
                    freeze_ms: cluster.settings.sim_freeze_ms,
                },
                Hypervisor::Qemu => {
                    let mut q = QemuConfig::new(dir.join("qemu"));
                    q.migration_ports = (cluster.migration_port, cluster.migration_port + MIGRATION_PORTS - 1);
                    q.powerdown_timeout_ms = 1000;
                    q.migrate_timeout_ms = 60_000;
                    q.migration_bandwidth_kib = cluster.settings.qemu_bandwidth_kib;
                    // Test and local guests have no disk: a firmware that does not probe for one.
                    q.firmware = qemu::light_firmware();
                    if cluster.settings.qemu_guest_data_mib > 0 {
                        q.binary = cluster.qemu_with_guest_data(&q.binary)?;
                    }
                    DriverConfig::Qemu(q)
                }
            },
        };
        let path = dir.join("agent.toml");
        write_toml(&path, &config)?;
        let args = vec!["--config".to_string(), path.display().to_string()];
        let proc =
            Proc::new(format!("agent {host}"), cluster.binaries.agent.clone(), args, dir.join("agent.log"), "info");
        Ok(AgentProc { host: host.into(), dir, proc, metrics })
    }

    /// Writes the agent's config and starts it.
    pub fn start(cluster: &Cluster, host: &str, token: &str, ids: &[u64]) -> AgentProc {
        let mut a = AgentProc::configure(cluster, host, token, ids).expect("configure an agent");
        a.proc.start().expect("start an agent");
        a
    }

    pub fn restart(&mut self) {
        assert!(self.proc.pid().is_none(), "agent {} is running", self.host);
        self.proc.start().expect("restart an agent");
    }

    /// Whether the process is still running (false once it exited on its own).
    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    /// SIGSTOP: the process stays, frozen (its connections stay open), until `resume`.
    pub fn pause(&self) {
        self.proc.pause();
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.proc.resume();
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.proc.kill();
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

/// A host with room for any test workload.
pub fn big_host(name: &str, address: &str) -> RegisterHostRequest {
    RegisterHostRequest {
        name: Name::new(name).expect("a valid host name"),
        address: address.into(),
        vcpus: 4096,
        memory_mib: 1_048_576,
        hardware_family: "ia64".into(),
        hypervisor_version: "hpvm-6.1".into(),
        request_id: None,
        labels: Default::default(),
    }
}

/// Writes `value` as TOML to `path`, readable by its owner only (configurations hold secrets,
/// and the daemons refuse them otherwise).
pub fn write_toml<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let text = toml::to_string(value).with_context(|| format!("encode {}", path.display()))?;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("write {}", path.display()))
}
