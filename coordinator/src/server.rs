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
use openraft::Raft;
use switchyard_storage::TypeConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::handover;
use crate::leader;
use crate::listener::{incoming, Admission, Incoming, Peer};
use crate::metrics::Metrics;
use crate::network::Network;
use crate::node::Node;
use crate::raft_server;

/// How long a graceful stop waits for the API's open requests to finish.
const DRAIN: Duration = Duration::from_secs(5);
/// Most Raft connections open at once: a few per peer (appends, votes and a snapshot may run
/// at once), for the largest cluster.
const RAFT_CONNECTIONS_MAX: usize = 64;

/// A running coordinator.
pub struct Coordinator {
    pub node: Arc<Node>,
    credentials: api::Credentials,
    tls: Option<switchyard_tls::Tls>,
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
        check_data_dir(&config)?;
        let tls = load_tls(&config)?;
        let config = Arc::new(config);
        let raft_config = Arc::new(config.openraft()?);
        let (log, sm) = switchyard_storage::open(&config.data_dir, config.node_id)
            .with_context(|| format!("open data directory {}", config.data_dir.display()))?;
        sm.set_retention(config.history.retain_revisions);
        let heartbeat = Duration::from_millis(config.raft.heartbeat_interval_ms);
        let metrics = Arc::new(Metrics::new());
        // The store tells the metrics its stages' times and the events it applies.
        sm.set_observer(Arc::new(crate::observe::Observed::new(metrics.clone())));
        let network =
            Network::new(config.cluster_secret.expose().to_string(), heartbeat, tls.as_ref(), metrics.clone());
        let raft: Raft<TypeConfig> =
            Raft::new(config.node_id, raft_config, network.clone(), log, sm.clone()).await.context("start raft")?;

        let raft_listener = tokio::net::TcpListener::bind(config.raft_listen)
            .await
            .with_context(|| format!("bind raft address {}", config.raft_listen))?;
        let api_listener = tokio::net::TcpListener::bind(config.api_listen)
            .await
            .with_context(|| format!("bind api address {}", config.api_listen))?;
        let node = Node::new(raft.clone(), sm, config.clone(), clock, metrics);
        let tasks = vec![
            tokio::spawn(leader::liveness::run(node.clone())),
            tokio::spawn(leader::driver::run(node.clone())),
            tokio::spawn(leader::failover::run(node.clone())),
            tokio::spawn(leader::drain::run(node.clone())),
            tokio::spawn(crate::observe::run(node.clone())),
            tokio::spawn(node.clone().watch_raft()),
            tokio::spawn(crate::backfill::run(node.clone(), network.clone())),
        ];
        let (raft_stop, raft_stopped) = watch::channel(false);
        let raft_app = raft_server::router(&node, tls.is_some(), raft_stopped.clone());
        let credentials = api::Credentials::new(&config);
        let api_app = api::router(node.clone(), tls.clone(), credentials.clone());
        let api_app =
            api_app.clone().merge(crate::ui::router(node.clone(), api_app, credentials.clone(), tls.is_some()));
        let raft_listener = incoming(
            raft_listener,
            Admission {
                tls: tls.clone(),
                clients_required: true,
                connections_max: RAFT_CONNECTIONS_MAX,
                write_stall: None,
                what: "raft",
            },
        )?;
        let api_listener = incoming(
            api_listener,
            Admission {
                tls: tls.clone(),
                clients_required: false,
                connections_max: config.api.connections_max,
                write_stall: Some(Duration::from_millis(config.api.stream_stall_timeout_ms)),
                what: "api",
            },
        )?;
        let (api_stop, api_stopped) = watch::channel(false);
        let api_server = serve(api_listener, api_app, api_stopped);
        let raft_server = serve(raft_listener, raft_app, raft_stopped);
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(node = config.node_id, raft = %config.raft_listen, api = %config.api_listen, scheme, "coordinator started");
        Ok(Coordinator { node, credentials, tls, network, api_stop, raft_stop, api_server, raft_server, tasks })
    }

    /// Takes what can change without a restart from a reloaded (validated) configuration: the
    /// tokens and client certificates, and the TLS files read again now. Answers what was done, and which other
    /// changes wait for a restart.
    pub fn reload(&self, new: &Config) -> Vec<String> {
        let mut notes = Vec::new();
        let r = self.credentials.replace(new);
        notes.push(format!(
            "tokens reloaded: {} accepted ({} added, {} removed)",
            new.tokens.len(),
            r.tokens_added,
            r.tokens_removed
        ));
        if r.certificates_added + r.certificates_removed > 0 || !new.client_certificates.is_empty() {
            notes.push(format!(
                "client certificates reloaded: {} accepted ({} added, {} removed)",
                new.client_certificates.len(),
                r.certificates_added,
                r.certificates_removed
            ));
        }
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => notes.push("TLS certificates read again".into()),
                Err(e) => notes.push(format!("TLS certificates not reloaded, the previous ones stay: {e}")),
            }
        }
        let old = &self.node.config;
        let mut same = new.clone();
        same.tokens = old.tokens.clone();
        same.client_certificates = old.client_certificates.clone();
        same.initial_state = old.initial_state;
        if &same != old.as_ref() {
            notes.push("other settings changed; they take effect at the next restart".into());
        }
        notes
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
        // A node whose Raft stopped on a storage error leads no one any more.
        let timeout = match node.fault() {
            Some(_) => Duration::ZERO,
            None => Duration::from_millis(node.config.raft.handover_timeout_ms),
        };
        match handover::hand_over(&node.raft, &self.network, timeout).await {
            Ok(Some(to)) => tracing::info!(node = node.id, to, "leadership handed over"),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(node = node.id, %e, "leadership not handed over; the others elect a leader when its lease runs out")
            }
        }
        // The Raft server stops even when Raft's did not stop cleanly, so the process can
        // bind its address again (a restart after a storage failure).
        let stopped = node.raft.shutdown().await.map_err(|e| anyhow::anyhow!("raft shutdown: {e}"));
        let _ = self.raft_stop.send(true);
        let _ = tokio::time::timeout(DRAIN, self.raft_server).await;
        tracing::info!(node = node.id, "coordinator stopped");
        stopped
    }
}

pub use switchyard_storage::holds_data;

/// Space a data directory must take before a coordinator whose storage failed starts again:
/// enough for RocksDB to replay its write-ahead log and write a memtable or two, so the restart
/// does not fail at once on the same full disk.
pub const RECOVERY_PROBE_BYTES: usize = 8 << 20;

/// Waits until `dir` takes writes again: a probe file of [`RECOVERY_PROBE_BYTES`] written,
/// synced and removed, tried every `every` (a full disk, a read-only remount after I/O errors
/// and a failing device all fail it). Answers the last error while it still fails, through
/// `still_failing`, once a minute.
pub async fn wait_writable(dir: &std::path::Path, every: Duration, mut still_failing: impl FnMut(&std::io::Error)) {
    let probe = dir.join("write-probe.tmp");
    let mut last_said = None::<std::time::Instant>;
    loop {
        let path = probe.clone();
        let tried = tokio::task::spawn_blocking(move || {
            let r = (|| {
                use std::io::Write;
                let mut f = std::fs::File::create(&path)?;
                f.write_all(&vec![0u8; RECOVERY_PROBE_BYTES])?;
                f.sync_all()
            })();
            let _ = std::fs::remove_file(&path);
            r
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match tried {
            Ok(()) => return,
            Err(e) => {
                if last_said.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    still_failing(&e);
                    last_said = Some(std::time::Instant::now());
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Refuses an empty data directory unless the operator said what it is for: a coordinator that
/// lost its disk (replaced, wiped, or a path whose volume is not mounted) would otherwise stamp
/// a new one and rejoin under its old node id, voting and counting toward quorums without the
/// log entries it acknowledged, which can lose committed writes.
pub fn check_data_dir(config: &Config) -> Result<(), ConfigError> {
    let dir = &config.data_dir;
    if switchyard_storage::holds_data(dir) {
        return Ok(());
    }
    match config.initial_state {
        Some(state) => {
            tracing::info!(node = config.node_id, data_dir = %dir.display(), ?state, "starting with an empty data directory");
            Ok(())
        }
        None => Err(ConfigError(format!(
            "the data directory {} holds no data. If this is a new coordinator, say which: \
             --initial-state new (a member of a cluster about to be initialized with `switchyard cluster init`) \
             or --initial-state join (a new member for `switchyard cluster add-node`). If node {} had data here, \
             do not start it empty under its old id: mount or restore its disk, or remove node {} from the \
             cluster (`switchyard cluster remove-node {}`) and add this machine back under a new node id",
            dir.display(),
            config.node_id,
            config.node_id,
            config.node_id
        ))),
    }
}

/// The coordinator's TLS material (its certificate must name its node id), or `None` when the
/// configuration says `insecure`.
pub fn load_tls(config: &Config) -> Result<Option<switchyard_tls::Tls>, ConfigError> {
    switchyard_tls::Tls::from_config(&config.tls, Some(switchyard_tls::Identity::Node(config.node_id)), "coordinator")
        .map_err(|e| ConfigError(format!("tls: {e}")))
}

/// Serves `app` on `listener` until `stopped` says stop; handlers see the connection's
/// [`Peer`].
fn serve(listener: Incoming, app: axum::Router, mut stopped: watch::Receiver<bool>) -> JoinHandle<std::io::Result<()>> {
    let server =
        axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
    tokio::spawn(server.into_future())
}
