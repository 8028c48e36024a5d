//! The `switchyard-coordinator` command line: read the configuration, start, stop gracefully on
//! SIGINT or SIGTERM, reload tokens and certificates on SIGHUP, and start again in place once a
//! data directory that failed takes writes again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::config::{Config, InitialState};
use crate::server::Coordinator;

/// Switchyard coordinator daemon.
#[derive(Parser, Debug)]
#[command(name = "switchyard-coordinator", version)]
struct Args {
    /// Configuration file (TOML); see deploy/coordinator.example.toml.
    #[arg(long, short = 'c', env = "SWITCHYARD_CONFIG")]
    config: PathBuf,
    /// Override `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Override `raft_listen`.
    #[arg(long)]
    raft_listen: Option<std::net::SocketAddr>,
    /// Override `api_listen`.
    #[arg(long)]
    api_listen: Option<std::net::SocketAddr>,
    /// Allow an empty (or missing) data directory, on the first start only: `new` for a member
    /// of a cluster about to be initialized, `join` for a new member to be added to a running
    /// one. Without it, a coordinator refuses to start on an empty data directory: a replaced
    /// disk or an unmounted path must not come back under its old node id without the log it
    /// had promised to keep. Ignored when the directory holds data.
    /// (`new` or `join`; empty: not given, for container environments.)
    #[arg(long, env = "SWITCHYARD_INITIAL_STATE")]
    initial_state: Option<String>,
    /// Check the configuration (and the certificates it names) and exit: 0 when it can be
    /// used, 2 with every problem otherwise.
    #[arg(long)]
    check_config: bool,
    /// Log lines as text for people, or as one JSON object per line for a log pipeline.
    #[arg(long, value_enum, default_value = "text", env = "SWITCHYARD_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn initial_state(s: &str) -> Result<Option<InitialState>, String> {
    match s {
        "" => Ok(None),
        "new" => Ok(Some(InitialState::New)),
        "join" => Ok(Some(InitialState::Join)),
        other => Err(format!("{other:?} is neither new nor join")),
    }
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let initial_state = match initial_state(args.initial_state.as_deref().unwrap_or("")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard-coordinator: --initial-state: {e}");
            return ExitCode::from(2);
        }
    };
    let check_only = args.check_config;
    let load = move || -> Result<Config, crate::config::ConfigError> {
        let mut config = Config::load(&args.config)?;
        if let Some(d) = &args.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(a) = args.raft_listen {
            config.raft_listen = a;
        }
        if let Some(a) = args.api_listen {
            config.api_listen = a;
        }
        config.initial_state = initial_state;
        Ok(config)
    };
    let config = match load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard-coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        return match crate::server::load_tls(&config) {
            Ok(_) => {
                println!("configuration OK: node {}, data directory {}", config.node_id, config.data_dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchyard-coordinator: {e}");
                ExitCode::from(2)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard-coordinator: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(config, load)) {
        Ok(()) => ExitCode::SUCCESS,
        // A configuration (or data directory) it cannot run with: status 2, which the systemd
        // unit does not restart on.
        Err(e) if e.downcast_ref::<crate::config::ConfigError>().is_some() => {
            eprintln!("switchyard-coordinator: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("switchyard-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How often a coordinator whose storage failed checks whether its data directory takes writes.
const RECOVERY_POLL: Duration = Duration::from_secs(1);
/// Longest wait between attempts to start again after a storage failure.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);

enum Wake {
    Stop,
    Reload,
    Fault(String),
}

/// Runs the coordinator until SIGINT or SIGTERM. When its Raft stops on a storage error (a full
/// or failing disk), the coordinator keeps serving reads from the state as it was and refuses
/// writes naming the error, until the data directory takes writes again; then it stops and
/// starts again in this process, which reopens RocksDB (it refuses every write after a failed
/// one) and rejoins the cluster, catching up from the leader.
async fn run(mut config: Config, load: impl Fn() -> Result<Config, crate::config::ConfigError>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut node = Coordinator::start(config.clone()).await?;
    loop {
        let wake = tokio::select! {
            _ = tokio::signal::ctrl_c() => Wake::Stop,
            _ = term.recv() => Wake::Stop,
            _ = hup.recv() => Wake::Reload,
            fault = node.node.faulted() => Wake::Fault(fault),
        };
        match wake {
            Wake::Stop => break,
            Wake::Reload => match load() {
                Ok(new) => {
                    for note in node.reload(&new) {
                        tracing::info!("SIGHUP: {note}");
                    }
                    config = new;
                }
                Err(e) => tracing::warn!("SIGHUP: the configuration was not reloaded: {e}"),
            },
            Wake::Fault(fault) => {
                let dir = config.data_dir.clone();
                let writable = crate::server::wait_writable(
                    &dir,
                    RECOVERY_POLL,
                    |e| tracing::warn!(data_dir = %dir.display(), %e, %fault, "the data directory does not take writes yet; serving stale reads"),
                );
                tokio::select! {
                    _ = writable => {}
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                }
                tracing::info!(data_dir = %dir.display(), "the data directory takes writes again; starting the coordinator again");
                if let Err(e) = node.shutdown().await {
                    tracing::warn!("stopping the failed coordinator: {e:#}");
                }
                let mut backoff = Duration::from_millis(200);
                node = loop {
                    match Coordinator::start(config.clone()).await {
                        Ok(n) => break n,
                        Err(e) => {
                            tracing::error!("the coordinator did not start again: {e:#}; retrying in {backoff:?}")
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                        _ = term.recv() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                };
            }
        }
    }
    tracing::info!("shutting down");
    // A second signal stops at once.
    tokio::select! {
        r = node.shutdown() => r,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("stopped before the graceful stop completed"),
        _ = term.recv() => anyhow::bail!("stopped before the graceful stop completed"),
    }
}
