//! The `switchyard-coordinator` command line: read the configuration, start, stop gracefully on
//! SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::config::Config;
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
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard-coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(a) = args.raft_listen {
        config.raft_listen = a;
    }
    if let Some(a) = args.api_listen {
        config.api_listen = a;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard-coordinator: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let node = Coordinator::start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    // A second signal stops at once.
    tokio::select! {
        r = node.shutdown() => r,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("stopped before the graceful stop completed"),
        _ = term.recv() => anyhow::bail!("stopped before the graceful stop completed"),
    }
}
