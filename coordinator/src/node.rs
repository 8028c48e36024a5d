//! Starting and stopping one coordinator: storage, the Raft node, the Raft RPC server, the
//! operator API server, and the leader-only tasks (liveness, migration driver).

use std::future::IntoFuture;
use std::sync::Arc;

use anyhow::Context;
use axum::serve::ListenerExt as _;
use openraft::Raft;
use switchyard_storage::{StateMachineStore, TypeConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, ApiState};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::network::Network;
use crate::raft_server;

/// A running coordinator.
pub struct Coordinator {
    pub raft: Raft<TypeConfig>,
    pub sm: StateMachineStore,
    pub config: Arc<Config>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<std::io::Result<()>>>,
    liveness: JoinHandle<()>,
    driver: JoinHandle<()>,
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
        let heartbeat = std::time::Duration::from_millis(config.raft.heartbeat_interval_ms);
        let network = Network::new(config.cluster_secret.clone(), heartbeat);
        let raft = Raft::new(config.node_id, raft_config, network, log, sm.clone()).await.context("start raft")?;

        let raft_listener = tokio::net::TcpListener::bind(config.raft_listen)
            .await
            .with_context(|| format!("bind raft address {}", config.raft_listen))?;
        let api_listener = tokio::net::TcpListener::bind(config.api_listen)
            .await
            .with_context(|| format!("bind api address {}", config.api_listen))?;
        let (stop, stopped) = watch::channel(false);
        let wait = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let raft_app = raft_server::router(config.node_id, config.cluster_secret.clone(), raft.clone());
        let api_state = ApiState::new(config.node_id, raft.clone(), sm.clone(), config.clone(), clock);
        let liveness = tokio::spawn(crate::liveness::run(api_state.clone(), api_state.liveness.clone()));
        let driver = tokio::spawn(crate::migration::run(api_state.clone()));
        let api_app = api::router(api_state);
        // TCP_NODELAY on every accepted connection (axum does not set it): a Raft reply or an
        // event of a subscription stream must not wait for the peer's delayed ACK of the
        // previous segment (Nagle), which stalls a small write for up to 40 ms.
        let nodelay = |l: tokio::net::TcpListener| {
            l.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::warn!(error = %e, "cannot set TCP_NODELAY on a connection");
                }
            })
        };
        let servers = vec![
            tokio::spawn(
                axum::serve(nodelay(raft_listener), raft_app)
                    .with_graceful_shutdown(wait(stopped.clone()))
                    .into_future(),
            ),
            tokio::spawn(
                axum::serve(nodelay(api_listener), api_app).with_graceful_shutdown(wait(stopped)).into_future(),
            ),
        ];
        tracing::info!(node = config.node_id, raft = %config.raft_listen, api = %config.api_listen, "coordinator started");
        Ok(Coordinator { raft, sm, config, stop, servers, liveness, driver })
    }

    /// Stops serving, then stops Raft.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.liveness.abort();
        self.driver.abort();
        for s in self.servers {
            s.await.context("join server task")?.context("serve")?;
        }
        self.raft.shutdown().await.map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
        tracing::info!(node = self.config.node_id, "coordinator stopped");
        Ok(())
    }
}
