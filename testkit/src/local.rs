//! The persistent dev folder (`switchyard dev`, the benchmark): a [`Cluster`] whose secrets and
//! ports are kept in `<dir>/dev.toml`, so running it again resumes the same cluster from the
//! same data, and whose `cli.toml` lets the CLI find it from the same directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use switchyard_protocol::api::RegisterHostRequest;
use switchyard_protocol::Name;

use crate::cluster::{free_addrs, write_toml, Binaries, Cluster, Secrets, Settings};

/// The dev folder the CLI looks in by default.
pub const DEFAULT_DIR: &str = "switchyard-dev";
/// The hosts a dev cluster's agents run (on the simulated hypervisor).
pub const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
/// Coordinators of a dev cluster.
pub const NODES: u64 = 3;

/// What the folder keeps between runs, in `<dir>/dev.toml`.
#[derive(Serialize, Deserialize)]
struct DevState {
    #[serde(flatten)]
    secrets: Secrets,
    /// node id → (raft address, api address)
    nodes: BTreeMap<String, (SocketAddr, SocketAddr)>,
}

/// Where the CLI finds a dev cluster without flags (`<dir>/cli.toml`).
#[derive(Serialize, Deserialize)]
pub struct CliDefaults {
    pub endpoints: Vec<String>,
    pub token: String,
    /// The cluster's CA, for the CLI to check the coordinators with.
    #[serde(default)]
    pub tls: switchyard_tls::TlsConfig,
}

impl CliDefaults {
    /// Reads `<DEFAULT_DIR>/cli.toml` from the current directory, if there is one.
    pub fn find() -> Option<CliDefaults> {
        let text = std::fs::read_to_string(Path::new(DEFAULT_DIR).join("cli.toml")).ok()?;
        toml::from_str(&text).ok()
    }
}

/// Opens (or creates) the folder: three coordinators on `base_port`+1..3 (Raft) and
/// `base_port`+101..103 (API), or free ports when `base_port` is 0, agents for [`HOSTS`], the
/// programs next to this executable. Nothing is started.
pub fn open(dir: &Path, base_port: u16, settings: Settings) -> anyhow::Result<Cluster> {
    let path = dir.join("dev.toml");
    let mut state: DevState = if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?
    } else {
        let nodes = (1..=NODES)
            .map(|id| {
                let addrs = if base_port == 0 {
                    free_addrs()
                } else {
                    let p = |off: u64| SocketAddr::from(([127, 0, 0, 1], base_port + off as u16));
                    (p(id), p(100 + id))
                };
                (id.to_string(), addrs)
            })
            .collect();
        DevState { secrets: Secrets::random("dev-admin", &[]), nodes }
    };
    for h in HOSTS {
        state.secrets.agent_tokens.entry(h.to_string()).or_insert_with(crate::cluster::random_secret);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    write_toml(&path, &state)?;
    let mut cluster = Cluster::new(Some(dir), Binaries::siblings()?, state.secrets, settings)?;
    for (id, addrs) in &state.nodes {
        cluster.add_node(id.parse().context("node id in dev.toml")?, *addrs)?;
    }
    let cli = CliDefaults {
        endpoints: cluster.endpoints(),
        token: cluster.secrets.admin_token.clone(),
        tls: cluster.tls_config(None)?,
    };
    write_toml(&dir.join("cli.toml"), &cli)?;
    Ok(cluster)
}

/// The hosts of a dev cluster ([`HOSTS`]), as an operator would register them.
pub fn hosts() -> Vec<RegisterHostRequest> {
    HOSTS
        .iter()
        .enumerate()
        .map(|(i, h)| RegisterHostRequest {
            name: Name::new(*h).expect("a valid host name"),
            address: format!("127.0.0.1:{}", 7300 + i),
            vcpus: 64,
            memory_mib: 262_144,
            hardware_family: "ia64".into(),
            hypervisor_version: "hpvm-6.1".into(),
            request_id: None,
            labels: Default::default(),
        })
        .collect()
}

/// Starts the coordinators, initializes the cluster the first time (all three voters) and
/// registers [`hosts`]; agents are started separately ([`Cluster::start_agents`]).
pub async fn start(cluster: &mut Cluster) -> anyhow::Result<()> {
    cluster.start_nodes()?;
    cluster.bootstrap().await?;
    cluster.register_hosts(&hosts()).await
}
