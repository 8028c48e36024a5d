//! Starting and stopping one coordinator: storage, the Raft node, the Raft RPC server, the
//! operator API server, and the leader-only tasks (liveness, migration driver).
//!
//! A graceful stop ([`Coordinator::shutdown`]) keeps the cluster writable: the node refuses new
//! writes and ends its subscriptions (clients retry elsewhere with their request ids), and a
//! leader hands its leadership to an up-to-date follower before it stops (see [`handover`]).

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt as _;
use openraft::Raft;
use switchyard_storage::TypeConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::handover;
use crate::leader;
use crate::network::Network;
use crate::node::Node;
use crate::raft_server;

/// How long a graceful stop waits for the API's open requests to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// A running coordinator.
pub struct Coordinator {
    pub node: Arc<Node>,
    network: Network,
    api_stop: watch::Sender<bool>,
    raft_stop: watch::Sender<bool>,
    api_server: JoinHandle<std::io::Result<()>>,
    raft_server: JoinHandle<std::io::Result<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Coordinator {
    /// Opens storage, starts Raft and binds both listeners, with the system clock.
    pub async fn start(config: Config) -> anyhow::Result<Coordinator> {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Like [`Coordinator::start`], with the proposer's time and randomness from `clock`.
    pub async fn start_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Coordinator> {
        config.validate()?;
        let config = Arc::new(config);
        let raft_config = Arc::new(config.openraft()?);
        let (log, sm) = switchyard_storage::open(&config.data_dir, config.node_id)
            .with_context(|| format!("open data directory {}", config.data_dir.display()))?;
        sm.set_retention(config.history.retain_revisions);
        let heartbeat = Duration::from_millis(config.raft.heartbeat_interval_ms);
        let network = Network::new(config.cluster_secret.clone(), heartbeat);
        let raft: Raft<TypeConfig> =
            Raft::new(config.node_id, raft_config, network.clone(), log, sm.clone()).await.context("start raft")?;

        let raft_listener = tokio::net::TcpListener::bind(config.raft_listen)
            .await
            .with_context(|| format!("bind raft address {}", config.raft_listen))?;
        let api_listener = tokio::net::TcpListener::bind(config.api_listen)
            .await
            .with_context(|| format!("bind api address {}", config.api_listen))?;
        let node = Node::new(raft.clone(), sm, config.clone(), clock);
        let tasks = vec![
            tokio::spawn(leader::liveness::run(node.clone())),
            tokio::spawn(leader::driver::run(node.clone())),
            tokio::spawn(leader::failover::run(node.clone())),
        ];
        let raft_app = raft_server::router(config.node_id, config.cluster_secret.clone(), raft);
        let api_app = api::router(node.clone());
        let (api_stop, api_server) = serve(api_listener, api_app);
        let (raft_stop, raft_server) = serve(raft_listener, raft_app);
        tracing::info!(node = config.node_id, raft = %config.raft_listen, api = %config.api_listen, "coordinator started");
        Ok(Coordinator { node, network, api_stop, raft_stop, api_server, raft_server, tasks })
    }

    /// Stops gracefully: new writes are refused and subscriptions end, the API finishes its
    /// open requests, a leader hands over to an up-to-date follower, then Raft stops.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let node = &self.node;
        node.begin_stop();
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.api_stop.send(true);
        if tokio::time::timeout(DRAIN, self.api_server).await.is_err() {
            tracing::warn!("the API's open requests did not finish within {DRAIN:?}; closing them");
        }
        let timeout = Duration::from_millis(node.config.raft.handover_timeout_ms);
        match handover::hand_over(&node.raft, &self.network, timeout).await {
            Ok(Some(to)) => tracing::info!(node = node.id, to, "leadership handed over"),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(node = node.id, %e, "leadership not handed over; the others elect a leader when its lease runs out")
            }
        }
        node.raft.shutdown().await.map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
        let _ = self.raft_stop.send(true);
        let _ = tokio::time::timeout(DRAIN, self.raft_server).await;
        tracing::info!(node = node.id, "coordinator stopped");
        Ok(())
    }
}

/// Serves `app` on `listener` until the returned sender says stop.
fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
) -> (watch::Sender<bool>, JoinHandle<std::io::Result<()>>) {
    let (stop, mut stopped) = watch::channel(false);
    // TCP_NODELAY on every accepted connection (axum does not set it): a Raft reply or an
    // event of a subscription stream must not wait for the peer's delayed ACK of the
    // previous segment (Nagle), which stalls a small write for up to 40 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    (stop, tokio::spawn(server.into_future()))
}
