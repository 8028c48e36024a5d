//! The `switchyard-agent` daemon: follow the event history from the durable cursor, apply each
//! event to this host's guest configuration files, re-sync from full state after a `compacted`
//! answer, report (applied revision, digest) to the leader, and hand migration events to the
//! migration worker ([`crate::migrations`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde::{Deserialize, Serialize};
use switchyard_client::{Client, ClientError, EventQuery, MAX_BATCH};
use switchyard_protocol::api::{FullState, HostReport, HypervisorReport, Read, StreamItem};
use switchyard_protocol::hostconfig::{ConfigChange, HostConfig};
use switchyard_protocol::secret::Secret;
use switchyard_protocol::{ClusterId, EventKind, EventPayload, Guest, GuestSpec, Name, Revision};
use switchyard_tls::{Identity, Tls, TlsConfig};
use tokio::sync::watch;

use crate::driver::timed::Timed;
use crate::driver::{DriverConfig, HypervisorDriver};
use crate::lease::{Fence, Lease};
use crate::metrics::{Metrics, MetricsConfig};
use crate::migrations::{Input, Worker};
use crate::reconcile::runtime::{Feed, Runtime};
use crate::store::AgentStore;
use crate::watchdog::{Watchdog, WatchdogConfig};

/// How often the staged guest files and the cursor are made durable while events stream in
/// (one group commit, see [`AgentStore`]).
const CURSOR_SYNC: Duration = Duration::from_millis(200);

/// Answers that retrying cannot fix.
const FATAL: [&str; 4] = ["unauthenticated", "forbidden", "unknown_host", "bad_request"];

/// Agent configuration (TOML).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The host this agent runs on; its token must be bound to it.
    pub host: Name,
    /// Coordinator API endpoints, tried in turn.
    pub endpoints: Vec<String>,
    /// An `agent` token bound to `host` (this file must not be readable by others).
    pub token: Secret,
    /// Where the applied guest configurations and the cursor live.
    pub data_dir: PathBuf,
    /// How often to report to the leader.
    #[serde(default = "default_report_ms")]
    pub report_interval_ms: u64,
    /// How often the agent reads its hypervisor and repairs what differs from the log (drivers
    /// that manage the guests' lifecycle: `qemu`).
    #[serde(default = "default_reconcile_ms")]
    pub reconcile_interval_ms: u64,
    /// How many revisions behind the cluster the agent may be and still apply every event on
    /// (re)connecting; further behind, it jumps: it takes the desired state at the current
    /// revision (writing only the guests that differ) and follows from there. 0: never jump.
    #[serde(default = "default_jump_after")]
    pub jump_after_revisions: u64,
    /// The hypervisor driver (`kind = "qemu"`, `"command"` or `"simulated"`).
    pub driver: DriverConfig,
    /// The host watchdog (see [`crate::watchdog`]); without one, a hung agent cannot fence
    /// its packaged guests.
    #[serde(default)]
    pub watchdog: Option<WatchdogConfig>,
    /// TLS to the coordinators: the cluster's CA and this host's certificate (`switchyard cert
    /// host NAME`), which the coordinators require with the agent's token; or `insecure = true`.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Where the agent serves its metrics (none without this section).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

fn default_report_ms() -> u64 {
    1000
}
fn default_reconcile_ms() -> u64 {
    2000
}
fn default_jump_after() -> u64 {
    10_000
}

#[derive(Parser, Debug)]
#[command(name = "switchyard-agent", version, about = "Switchyard VM-host agent")]
struct Args {
    #[arg(long, short = 'c', env = "SWITCHYARD_AGENT_CONFIG")]
    config: PathBuf,
    /// Log lines as text for people, or as one JSON object per line for a log pipeline.
    #[arg(long, value_enum, default_value = "text", env = "SWITCHYARD_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    if let Err(e) = switchyard_tls::private_file(&args.config, "the agent's token") {
        eprintln!("switchyard-agent: {e}");
        return ExitCode::from(2);
    }
    let config = match std::fs::read_to_string(&args.config)
        .with_context(|| format!("read {}", args.config.display()))
        .and_then(|t| toml::from_str::<AgentConfig>(&t).with_context(|| format!("parse {}", args.config.display())))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    // Every problem of the configuration at once, with exit status 2 (no restart loop).
    let problems = config.problems();
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("switchyard-agent: invalid configuration: {p}");
        }
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = run(config) => r,
            // A stop: what is applied is on disk up to the cursor (re-applying from it is
            // harmless); the VMs keep running, and the watchdog, if armed, keeps counting.
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping");
                Ok(())
            }
            r = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted: stopping");
                r.map_err(anyhow::Error::from)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<ConfigError>() => {
            eprintln!("switchyard-agent: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("switchyard-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Why the agent re-syncs from the coordinators' full state: a metric's label, and in words.
struct Resync {
    reason: &'static str,
    why: String,
}

/// A configuration the agent cannot run with (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl AgentConfig {
    /// Every problem of this configuration that can be seen without building anything.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.endpoints.is_empty() {
            out.push("endpoints is empty".to_string());
        }
        if self.report_interval_ms == 0 {
            out.push("report_interval_ms must be at least 1".to_string());
        }
        if self.reconcile_interval_ms == 0 {
            out.push("reconcile_interval_ms must be at least 1".to_string());
        }
        out.extend(self.tls.problems(true));
        if let Some(w) = &self.watchdog {
            if !(100..=60_000).contains(&w.timeout_ms) {
                out.push("watchdog.timeout_ms must be within 100..=60000".to_string());
            }
            if let Err(e) = std::fs::metadata(&w.device) {
                out.push(format!("watchdog.device {}: {e}", w.device.display()));
            }
        }
        out
    }
}

/// Runs until the process is stopped.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let problems = config.problems();
    if !problems.is_empty() {
        return Err(ConfigError(problems.join("; ")).into());
    }
    let tls = Tls::from_config(&config.tls, Some(Identity::Host(config.host.clone())), "agent")
        .map_err(|e| ConfigError(format!("tls: {e}")))?;
    let metrics = Arc::new(Metrics::new());
    let driver: Arc<dyn HypervisorDriver> = Arc::new(Timed::new(
        config.driver.build(&config.host).map_err(|e| ConfigError(format!("driver: {e}")))?,
        metrics.clone(),
    ));
    if let Some(m) = &config.metrics {
        let listener = tokio::net::TcpListener::bind(m.listen)
            .await
            .with_context(|| format!("metrics.listen: cannot listen on {}", m.listen))?;
        tracing::info!(listen = %m.listen, tls = tls.is_some(), "serving metrics");
        tokio::spawn(crate::metrics::serve(listener, tls.clone(), metrics.clone()));
    }
    let store = Arc::new(AgentStore::open(&config.data_dir)?);
    let loaded = store.load()?;
    let mut applied = loaded.config;
    let mut cursor = store.cursor()?;
    // Damaged guest files (a machine crash before a group commit, or a bad disk): the applied
    // state is incomplete, so start from the coordinators' full state.
    let mut resync: Option<Resync> = (!loaded.damaged.is_empty()).then(|| Resync {
        reason: "damaged_files",
        why: format!("{} guest file(s) were damaged and set aside", loaded.damaged.len()),
    });
    // Each host starts at its own coordinator (a stable choice from its name).
    let spread = config.host.as_str().bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)));
    let client =
        Client::new(config.endpoints.clone(), config.token.expose().to_string(), Duration::from_secs(10), tls.as_ref())
            .rotated(spread);
    // A token for another host, an unknown host or a bad token never get better by retrying:
    // say so and stop, instead of logging the same refusal forever.
    let first = HostReport { applied_revision: cursor, digest: applied.digest(), hypervisor: None };
    match client.report_host(&config.host, &first).await {
        Err(e @ ClientError::Api { .. }) if FATAL.contains(&e.code().unwrap_or_default()) => {
            let hint = match e.code() {
                Some("unknown_host") => format!("; register it first: switchyard host register {} ...", config.host),
                _ => format!("; the token must be an agent token bound to host {}", config.host),
            };
            anyhow::bail!("the coordinators refuse this agent: {e}{hint}");
        }
        _ => {}
    }
    metrics.applied(cursor);
    let (progress_tx, progress_rx) = watch::channel((cursor, applied.digest()));
    let (hypervisor_tx, hypervisor_rx) = watch::channel(None);
    let (lease_tx, lease_rx) = watch::channel(Lease::new(Instant::now()));
    tokio::spawn(report_loop(
        client.clone(),
        config.host.clone(),
        progress_rx,
        hypervisor_rx,
        config.report_interval_ms,
        lease_tx,
        metrics.clone(),
    ));
    // The watchdog (checked with the configuration) is armed while a packaged guest runs or is
    // to run here (see fence_loop).
    let (protects_tx, protects_rx) = watch::channel(false);
    // Drivers that manage the guests' lifecycle get a reconciler: the hypervisor is made to
    // hold what the log says, and read back every reconcile_interval.
    let (fence_tx, fence_rx) = watch::channel(Fence::Unknown);
    let reconciler = driver.lifecycle().is_some().then(|| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let runtime = Runtime {
            host: config.host.clone(),
            driver: driver.clone(),
            client: client.clone(),
            store: store.clone(),
            interval: Duration::from_millis(config.reconcile_interval_ms),
            lease: lease_rx.clone(),
            protects: protects_tx,
            fence: fence_tx,
            metrics: metrics.clone(),
        };
        tokio::spawn(runtime.run(rx, hypervisor_tx));
        let _ = tx.send(Feed::Reset { guests: applied.guests().cloned().collect() });
        tx
    });
    tokio::spawn(fence_loop(
        config.host.clone(),
        lease_rx,
        protects_rx,
        reconciler.clone(),
        config.watchdog.clone(),
        metrics.clone(),
    ));
    let (to_worker, worker_rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = Worker::new(
        config.host.clone(),
        client.clone(),
        driver.clone(),
        store.clone(),
        reconciler.clone().map(|feed| (feed, fence_rx)),
        metrics.clone(),
    );
    tokio::spawn(worker.run(worker_rx));
    let mut cluster = store.cluster()?;
    let mut synced_at = std::time::Instant::now();
    tracing::info!(host = %config.host, cursor, cluster = ?cluster.as_ref().map(|c| c.to_string()), "agent started");
    loop {
        // Set when events cannot be applied from the cursor: the history was compacted past it,
        // the coordinators belong to another cluster than the one the agent followed, or the
        // applied state on disk was damaged.
        if let Some(Resync { reason, why }) = resync.take() {
            metrics.resync(reason);
            tracing::info!(%why, "re-syncing from full state");
            let state: Read<FullState> = loop {
                match client.full_state().await {
                    Ok(s) => break s,
                    Err(e) if FATAL.contains(&e.code().unwrap_or_default()) => {
                        return Err(anyhow::Error::new(e).context("read full state to re-sync"))
                    }
                    Err(e) => {
                        tracing::warn!(%e, %why, "cannot read full state to re-sync yet; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            };
            let now = state.items.cluster.as_ref().map(|c| c.id.clone());
            let config = HostConfig::from_guests(state.items.guests);
            let other = now.is_some() && now != cluster;
            let written =
                store.replace_all(&config, &applied).and_then(|()| store.commit(state.revision)).and_then(|()| {
                    match &now {
                        Some(id) => store.set_cluster(id),
                        None => Ok(()),
                    }
                });
            if let Err(e) = written {
                let durable = recover_store(&store, &anyhow::Error::new(e).context("re-sync"), &metrics).await?;
                (applied, cursor, cluster) = (durable.config, durable.cursor, durable.cluster);
                resync = Some(Resync { reason, why });
                continue;
            }
            if let Some(r) = &reconciler {
                let _ = r.send(Feed::Reset { guests: config.guests().cloned().collect() });
            }
            (applied, cursor) = (config, state.revision);
            metrics.announced(cursor);
            metrics.applied(cursor);
            let _ = progress_tx.send((cursor, applied.digest()));
            let _ = to_worker.send(if other { Input::Reset } else { Input::Reload });
            tracing::info!(revision = state.revision, cluster = ?now.as_ref().map(|c| c.to_string()), %why, "re-synced from full state");
            cluster = now;
        }
        // Far behind (a host back from a long outage, a new host in a large cluster): the
        // reconciler needs only the final desired state, so take it instead of every event.
        if config.jump_after_revisions > 0 {
            if let Ok(head) = client.host(&config.host).await.map(|r| r.revision) {
                if head.saturating_sub(cursor) > config.jump_after_revisions {
                    resync = Some(Resync {
                        reason: "far_behind",
                        why: format!("{} revisions behind (at {cursor}, the cluster at {head})", head - cursor),
                    });
                    continue;
                }
            }
        }
        let mut failure: Option<anyhow::Error> = None;
        let mut adopted = false;
        let q = EventQuery {
            from: cursor + 1,
            follow: true,
            cluster: cluster.as_ref().map(|c| c.to_string()),
            ..Default::default()
        };
        // Events come in batches (one event at a time when keeping up, thousands when catching
        // up): every change of a batch is staged, each guest file is written once per batch,
        // and the applied revision is reported once the batch is on disk.
        metrics.subscribed.set(1);
        let result = client
            .event_batches(&q, |batch| {
                let mut step = || -> anyhow::Result<bool> {
                    for item in batch {
                        match item {
                            StreamItem::Event(e) if e.revision <= cursor => {}
                            StreamItem::Event(e) => {
                                metrics.announced(e.revision);
                                metrics.events_applied.inc();
                                if let EventPayload::ClusterCreated { cluster: id, .. } = &e.payload {
                                    match &cluster {
                                        Some(c) if c != id => {
                                            resync = Some(Resync {
                                                reason: "cluster_changed",
                                                why: format!("the history names cluster {id}, not {c}"),
                                            });
                                            return Ok(false);
                                        }
                                        Some(_) => {}
                                        None => {
                                            store.set_cluster(id)?;
                                            cluster = Some(id.clone());
                                            // Subscribe again naming the cluster, so a reconnect
                                            // to another cluster's coordinators is refused.
                                            adopted = true;
                                        }
                                    }
                                }
                                // Failover starts too: a target holding a guest whose source
                                // failed keeps it until the failover gives it to this host.
                                if e.payload.kind() == EventKind::Migration
                                    || matches!(e.payload, EventPayload::FailoverStarted { .. })
                                {
                                    let _ = to_worker.send(Input::Event(e.clone()));
                                }
                                if let (Some(r), EventPayload::PackageSwitchingChanged { package, .. }) =
                                    (&reconciler, &e.payload)
                                {
                                    let _ = r.send(Feed::Package { name: package.clone(), revision: e.revision });
                                }
                                match (&reconciler, &e.payload) {
                                    (Some(r), EventPayload::FailoverStarted { guest, to, .. })
                                        if *to == config.host =>
                                    {
                                        let _ = r.send(Feed::Failover { guest: guest.clone(), token: e.token() });
                                    }
                                    (
                                        Some(r),
                                        EventPayload::FailoverAttemptFailed {
                                            guest, host, token, released: false, ..
                                        },
                                    ) if *host == config.host => {
                                        let _ = r.send(Feed::AttemptEnded { guest: guest.clone(), token: *token });
                                    }
                                    _ => {}
                                }
                                if let Some(change) = applied.change_for(e) {
                                    store.stage(&change)?;
                                    if let Some(r) = &reconciler {
                                        let _ = r.send(match &change {
                                            ConfigChange::Put(g) => Feed::Guest { guest: g.clone(), token: e.token() },
                                            ConfigChange::Remove(name) => Feed::Removed { name: name.clone() },
                                        });
                                        if let ConfigChange::Put(Guest {
                                            spec: GuestSpec { package: Some(p), .. },
                                            ..
                                        }) = &change
                                        {
                                            let _ = r.send(Feed::Package { name: p.clone(), revision: e.revision });
                                        }
                                    }
                                    applied.record(change);
                                }
                                cursor = e.revision;
                                if adopted {
                                    break;
                                }
                            }
                            StreamItem::Progress { revision } => {
                                metrics.announced(*revision);
                                cursor = cursor.max(*revision);
                                store.commit(cursor)?;
                                synced_at = std::time::Instant::now();
                            }
                            StreamItem::Compacted { .. } => {
                                resync = Some(Resync {
                                    reason: "compacted",
                                    why: "the history was compacted past the cursor".into(),
                                });
                                return Ok(false);
                            }
                        }
                    }
                    // Staged files and the cursor are made durable together at most every
                    // CURSOR_SYNC (fsyncs per event would cap the agent at a few hundred events
                    // a second): after a crash the agent re-applies from an older cursor, which
                    // is harmless because every apply writes a guest's whole record. In between,
                    // the files are written when the stream has nothing more ready; a full
                    // batch means the agent is catching up, and it keeps staging (each guest is
                    // then written once per CURSOR_SYNC, however often it changed).
                    let caught_up = batch.len() < MAX_BATCH;
                    if synced_at.elapsed() >= CURSOR_SYNC {
                        store.commit(cursor)?;
                        synced_at = std::time::Instant::now();
                    } else if caught_up {
                        store.flush()?;
                    } else {
                        return Ok(!adopted);
                    }
                    // Reported once on disk.
                    metrics.applied(cursor);
                    let _ = progress_tx.send((cursor, applied.digest()));
                    Ok(!adopted)
                };
                step().unwrap_or_else(|e| {
                    failure = Some(e);
                    false
                })
            })
            .await;
        metrics.subscribed.set(0);
        if failure.is_none() {
            match store.commit(cursor) {
                Ok(()) => metrics.applied(cursor),
                Err(e) => failure = Some(e.into()),
            }
        }
        if let Some(e) = failure {
            // The data directory refused a write: start again from what is on disk once it
            // takes writes, re-applying the events after its cursor.
            let durable = recover_store(&store, &e.context("apply an event"), &metrics).await?;
            (applied, cursor, cluster) = (durable.config, durable.cursor, durable.cluster);
            if !durable.damaged.is_empty() {
                resync = Some(Resync {
                    reason: "damaged_files",
                    why: format!("{} guest file(s) were damaged and set aside", durable.damaged.len()),
                });
            }
            if let Some(r) = &reconciler {
                let _ = r.send(Feed::Reset { guests: applied.guests().cloned().collect() });
            }
            metrics.applied(cursor);
            let _ = progress_tx.send((cursor, applied.digest()));
            continue;
        }
        if let Err(e) = &result {
            if e.code() == Some("cluster_mismatch") {
                resync = Some(Resync { reason: "cluster_changed", why: e.to_string() });
            }
        }
        if resync.is_some() {
            continue;
        }
        if let Err(e) = result {
            if FATAL.contains(&e.code().unwrap_or_default()) {
                return Err(anyhow::anyhow!("the coordinators refuse this agent's subscription: {e}"));
            }
            tracing::warn!(%e, "subscription ended; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// What is on disk after a failed write: the applied state, its cursor and cluster.
struct Durable {
    config: HostConfig,
    cursor: Revision,
    cluster: Option<ClusterId>,
    damaged: Vec<std::path::PathBuf>,
}

/// How often an agent whose data directory refused a write tries it again.
const STORE_PROBE_EVERY: Duration = Duration::from_secs(1);

/// After a write to the data directory failed (a full disk, a read-only remount, a failing
/// device): the agent keeps running — its lease, reports and the reconciler go on from what it
/// applied before, and the coordinators see it lag — and waits until the directory takes writes
/// again, then answers what is durable there, from which it applies again. An error here is one
/// of reading the directory back, which the agent cannot run without.
async fn recover_store(store: &AgentStore, error: &anyhow::Error, metrics: &Metrics) -> anyhow::Result<Durable> {
    metrics.store_failed.set(1);
    tracing::error!(
        error = format!("{error:#}"),
        "the data directory refused a write; applying waits until it takes writes again"
    );
    let mut said = Instant::now();
    while let Err(e) = store.probe() {
        if said.elapsed() >= Duration::from_secs(60) {
            tracing::warn!(%e, "the data directory still refuses writes");
            said = Instant::now();
        }
        tokio::time::sleep(STORE_PROBE_EVERY).await;
    }
    store.discard_staged();
    let loaded = store.load()?;
    let durable =
        Durable { config: loaded.config, cursor: store.cursor()?, cluster: store.cluster()?, damaged: loaded.damaged };
    metrics.store_failed.set(0);
    tracing::info!(cursor = durable.cursor, "the data directory takes writes again; applying from its cursor");
    Ok(durable)
}

/// Reports to the leader every `interval_ms`; each report renews this host's lease. Reports
/// go out on schedule even while an earlier one waits for its answer (one stuck on a dead
/// coordinator must not hold back the renewals), and each answer counts from when its report
/// was sent.
async fn report_loop(
    client: Client,
    host: Name,
    progress: watch::Receiver<(Revision, u64)>,
    hypervisor: watch::Receiver<Option<HypervisorReport>>,
    interval_ms: u64,
    lease: watch::Sender<Lease>,
    metrics: Arc<Metrics>,
) {
    let lease = Arc::new(lease);
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(4));
    loop {
        tick.tick().await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            tracing::warn!("four reports are waiting for answers; skipping one");
            continue;
        };
        let (revision, digest) = *progress.borrow();
        let report = HostReport { applied_revision: revision, digest, hypervisor: hypervisor.borrow().clone() };
        let (client, host, lease, metrics) = (client.clone(), host.clone(), lease.clone(), metrics.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let answer = client.report_host(&host, &report).await;
            metrics.report(answer.is_ok());
            match answer {
                Ok(answer) => {
                    if let Some(grant) = answer.lease {
                        lease.send_modify(|l| l.renewed(sent, grant));
                    }
                }
                Err(e) => tracing::warn!(%e, "report failed"),
            }
            drop(permit);
        });
    }
}

/// Turns the lease into the reconciler's fence, and pets (or disarms) the watchdog.
async fn fence_loop(
    host: Name,
    mut lease: watch::Receiver<Lease>,
    mut protects: watch::Receiver<bool>,
    reconciler: Option<tokio::sync::mpsc::UnboundedSender<Feed>>,
    watchdog_config: Option<WatchdogConfig>,
    metrics: Arc<Metrics>,
) {
    let mut watchdog: Option<Watchdog> = None;
    let mut fence = Fence::Unknown;
    // Without a reconciler nothing says what runs here: the watchdog is never armed.
    let mut protects_open = reconciler.is_some();
    loop {
        let now = Instant::now();
        let l = *lease.borrow();
        let f = l.fence(now);
        if f != fence {
            match f {
                Fence::Lost => tracing::warn!(%host, "lease lost: fencing this host's packaged guests"),
                Fence::Held => tracing::info!(%host, "lease held"),
                Fence::Unknown => {}
            }
            fence = f;
            metrics.lease_held.set(i64::from(f == Fence::Held));
            if let Some(r) = &reconciler {
                let _ = r.send(Feed::Fence(f));
            }
        }
        let mut wake = l.next_change(now).map_or(Duration::from_secs(1), |at| at - now).min(Duration::from_secs(1));
        if let Some(cfg) = &watchdog_config {
            let guarding = protects_open && *protects.borrow();
            match watchdog.take() {
                Some(w) if !guarding => {
                    if let Err(e) = w.disarm() {
                        tracing::warn!(%e, "cannot disarm the watchdog");
                    }
                    tracing::info!("no packaged guest here: watchdog disarmed");
                }
                Some(mut w) => {
                    // Petted only while the lease outlasts the watchdog: if the agent hangs
                    // now, the watchdog fires before the lease would have fenced the guests.
                    if l.remaining(now) >= w.timeout {
                        if let Err(e) = w.pet() {
                            tracing::error!(%e, "cannot pet the watchdog");
                        }
                    }
                    wake = wake.min(w.timeout / 4);
                    watchdog = Some(w);
                }
                None if guarding => match Watchdog::open(cfg) {
                    Ok(w) => {
                        tracing::info!(device = %cfg.device.display(), "a packaged guest is here: watchdog armed");
                        wake = Duration::ZERO;
                        watchdog = Some(w);
                    }
                    Err(e) => {
                        tracing::error!(device = %cfg.device.display(), %e, "cannot arm the watchdog");
                        wake = wake.min(Duration::from_millis(250));
                    }
                },
                None => {}
            }
        }
        metrics.watchdog_armed.set(i64::from(watchdog.is_some()));
        tokio::select! {
            _ = tokio::time::sleep(wake) => {}
            r = lease.changed() => if r.is_err() { return },
            r = protects.changed(), if protects_open => protects_open = r.is_ok(),
        }
    }
}
