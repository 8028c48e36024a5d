//! `switchyard dev`: a complete local cluster for a first try — three coordinators in one
//! process on loopback, data in a local folder, tokens generated once and kept there. Running it
//! again resumes the same cluster from the same data.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use switchyard_protocol::api::{MemberSpec, NodeStatus};

use crate::client::Client;
use crate::config::{ApiConfig, Config, RaftConfig, Role, TokenConfig};
use crate::node::Coordinator;

const NODES: u64 = 3;

/// What `dev` keeps between runs, in `<dir>/dev.toml`.
#[derive(Serialize, Deserialize)]
struct DevState {
    cluster_secret: String,
    admin_token: String,
    operator_token: String,
    /// node id → (raft address, api address)
    nodes: BTreeMap<String, (SocketAddr, SocketAddr)>,
}

fn secret() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn load_or_create(dir: &Path, base_port: u16) -> anyhow::Result<DevState> {
    let path = dir.join("dev.toml");
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        return toml::from_str(&text).with_context(|| format!("parse {}", path.display()));
    }
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
    let state = DevState { cluster_secret: secret(), admin_token: secret(), operator_token: secret(), nodes };
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(&path, toml::to_string(&state)?).with_context(|| format!("write {}", path.display()))?;
    Ok(state)
}

/// Runs the dev cluster until Ctrl-C.
pub async fn run(dir: PathBuf, base_port: u16) -> anyhow::Result<()> {
    let state = load_or_create(&dir, base_port)?;
    let mut nodes = Vec::new();
    for (id, (raft, api)) in &state.nodes {
        let id: u64 = id.parse().context("node id in dev.toml")?;
        let config = Config {
            node_id: id,
            data_dir: dir.join(format!("node{id}")),
            raft_listen: *raft,
            api_listen: *api,
            raft_advertise: None,
            api_advertise: None,
            cluster_secret: state.cluster_secret.clone(),
            tokens: vec![
                TokenConfig {
                    token: state.admin_token.clone(),
                    role: Role::Admin,
                    host: None,
                    name: Some("dev-admin".into()),
                },
                TokenConfig { token: state.operator_token.clone(), role: Role::Operator, host: None, name: None },
            ],
            raft: RaftConfig::default(),
            api: ApiConfig::default(),
            history: Default::default(),
            migration: Default::default(),
        };
        nodes.push(Coordinator::start(config).await.with_context(|| format!("start coordinator {id}"))?);
    }
    let endpoints: Vec<String> = state.nodes.values().map(|(_, api)| api.to_string()).collect();
    if !nodes[0].raft.is_initialized().await? {
        let first = Client::new(vec![endpoints[0].clone()], state.admin_token.clone(), Duration::from_secs(30));
        let _: serde_json::Value = first.post("/v1/cluster/init", &serde_json::json!({})).await?;
        for (id, (raft, api)) in state.nodes.iter().skip(1) {
            let spec = MemberSpec { id: id.parse()?, raft_addr: raft.to_string(), api_addr: api.to_string() };
            let _: serde_json::Value = first.post("/v1/cluster/nodes", &spec).await?;
        }
    }
    let all = Client::new(endpoints.clone(), state.admin_token.clone(), Duration::from_secs(5));
    let status: NodeStatus = all.get("/v1/node/status").await?;
    println!("Switchyard dev cluster: {NODES} coordinators, data in {}", dir.display());
    println!("  leader: node {}", status.leader.map_or("-".into(), |l| l.to_string()));
    println!();
    println!("  export SWITCHYARD_ENDPOINTS={}", endpoints.join(","));
    println!("  export SWITCHYARD_TOKEN={}", state.admin_token);
    println!("  switchyard cluster status");
    println!();
    println!("Operator (read-only) token: {}. Ctrl-C stops; run again to resume.", state.operator_token);
    tokio::signal::ctrl_c().await?;
    for n in nodes {
        n.shutdown().await?;
    }
    Ok(())
}
