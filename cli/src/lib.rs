//! # switchyard-cli
//!
//! `switchyard`, the operator and recovery CLI (in the spirit of etcdctl next to etcdutl): one
//! module per noun ([`cluster`], [`host`], [`guest`], [`package`], [`migration`], [`events`]),
//! the offline recovery tools ([`log`]), the local cluster for a first try ([`dev`]), and shell
//! completions and man pages generated from the same definitions ([`docs`]). Every table and
//! every JSON answer is made by [`render`].
//!
//! Writes carry a request id (the operator's `--request-id`, or one made here) and are sent
//! again with it while the cluster has no leader or a coordinator is unreachable, until
//! `--timeout`: a write sent just after a leader loss is acknowledged once a new leader is
//! elected, and never applied twice.

pub mod cert;
pub mod cluster;
pub mod dev;
pub mod docs;
pub mod events;
pub mod guest;
pub mod ha;
pub mod host;
pub mod log;
pub mod migration;
pub mod package;
pub mod rebalance;
pub mod render;
pub use switchyard_protocol::timefmt;
pub mod token;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use switchyard_client::{Client, ClientError};
use switchyard_protocol::Name;
use switchyard_testkit::local::{CliDefaults, DEFAULT_DIR};

#[derive(Parser, Debug)]
#[command(name = "switchyard", version, about = "Operate a Switchyard cluster", propagate_version = true)]
pub struct Cli {
    /// Coordinator API endpoints (host:port), comma separated; tried in order. Default: those of
    /// `./switchyard-dev/cli.toml` (written by `switchyard dev`), else 127.0.0.1:7201.
    #[arg(long, env = "SWITCHYARD_ENDPOINTS", value_delimiter = ',', global = true)]
    endpoints: Vec<String>,
    /// Bearer token. Default: the one in `./switchyard-dev/cli.toml`, unless --cert is given
    /// (then the certificate is the credential, when the coordinators list it in
    /// `client_certificates`).
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The cluster CA's certificate: coordinators must present a certificate it signed.
    /// Default: the one in `./switchyard-dev/cli.toml`.
    #[arg(long, env = "SWITCHYARD_CA", global = true)]
    ca: Option<std::path::PathBuf>,
    /// A client certificate to present (with --key), from `switchyard cert client NAME`.
    #[arg(long, env = "SWITCHYARD_CERT", global = true, requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// The key of --cert.
    #[arg(long, env = "SWITCHYARD_KEY", global = true, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// Plaintext HTTP, for a cluster running with `tls.insecure = true`.
    #[arg(long, env = "SWITCHYARD_INSECURE", global = true, conflicts_with = "ca")]
    insecure: bool,
    /// Output: `table` for people, `json` for tools (JSON only on standard output).
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: Output,
    /// Serve reads from the contacted coordinator without confirming leadership (may be stale).
    #[arg(long, global = true)]
    stale: bool,
    /// Seconds a request may take; writes are retried (with their request id) while the
    /// cluster has no leader, until this runs out.
    #[arg(long, default_value_t = 30, global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// Cluster membership and health.
    #[command(subcommand)]
    Cluster(cluster::Verb),
    /// VM hosts.
    #[command(subcommand)]
    Host(host::Verb),
    /// Distributed guests.
    #[command(subcommand)]
    Guest(guest::Verb),
    /// Failover packages and their switching.
    #[command(subcommand)]
    Package(package::Verb),
    /// Host failures and failovers: what is down and why, and the failover history.
    #[command(subcommand)]
    Ha(ha::Verb),
    /// Print events: new ones as they commit (like `etcdctl watch`), or the history from a
    /// revision with --from.
    Events(events::Args),
    /// Move a guest to another host: online (live) unless --offline.
    Migrate(migration::MigrateArgs),
    /// Migration history, details and abort.
    #[command(subcommand)]
    Migration(migration::Verb),
    /// Even out the hosts' static load (memory and vCPU against capacity): the plan, each move
    /// explained, and with --apply the moves as ordinary online migrations.
    Rebalance(rebalance::RebalanceArgs),
    /// Recovery: export, verify, replay, restore and seed the event history (live, or offline from a
    /// stopped coordinator's data directory or an export file).
    #[command(subcommand)]
    Log(log::Verb),
    /// Start a complete local cluster (3 coordinators, 3 agents on a simulated hypervisor) with
    /// configs, data and logs in a local folder.
    Dev(dev::Args),
    /// The cluster's certificate authority: make the CA and the certificates of coordinators,
    /// agents and clients; show a certificate.
    #[command(subcommand)]
    Cert(cert::Verb),
    /// Is the coordinator ready (a member of a cluster with a leader)? Exit 0 when it is, 1
    /// otherwise: for container health checks and scripts. Needs no token.
    Health {
        /// Only whether the process answers (`/healthz`), not whether it is ready.
        #[arg(long)]
        live: bool,
    },
    /// Bearer tokens: make one (shown once, with the hash entry coordinators keep), or hash one.
    #[command(subcommand)]
    Token(token::Verb),
    /// Print a shell completion script (e.g. `switchyard completion bash > /etc/bash_completion.d/switchyard`).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages for switchyard and each of its commands into a folder.
    Man {
        /// Where to write the pages (created if missing).
        #[arg(long, default_value = "man")]
        dir: std::path::PathBuf,
    },
}

/// `--request-id` of every write.
#[derive(Args, Debug, Clone)]
pub struct WriteOpts {
    /// Idempotency key (1 to 32 hex digits; made here when absent): the cluster applies a
    /// request id once, so the same write sent again with it never applies twice.
    #[arg(long)]
    request_id: Option<String>,
}

impl WriteOpts {
    /// The id this write is sent with (the operator's, or a fresh one), checked.
    pub fn id(&self) -> Result<String, CliError> {
        match &self.request_id {
            Some(id) => {
                switchyard_protocol::api::parse_request_id(id).map_err(CliError::Usage)?;
                Ok(id.clone())
            }
            None => Ok(switchyard_client::new_request_id()),
        }
    }
}

/// A name as a command-line value (validated as the cluster validates it).
pub fn name(s: &str) -> Result<Name, String> {
    Name::new(s).map_err(|e| format!("invalid name {s:?}: {e}"))
}

/// What every verb gets: the client and the output format.
pub struct Ctx {
    pub client: Client,
    pub json: bool,
}

impl Ctx {
    /// What a write did, or why it failed, naming its request id when a retry would be safe.
    pub fn written(
        &self,
        request_id: &str,
        r: Result<switchyard_protocol::api::WriteResponse, ClientError>,
    ) -> Result<String, CliError> {
        match r {
            Ok(w) => Ok(render::written(self.json, &w)),
            Err(e) if e.is_transient() => Err(CliError::Failed(
                String::new(),
                format!("{e}; the write may or may not have been applied: repeat it with --request-id {request_id} (never applied twice)"),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

#[derive(Debug)]
pub enum CliError {
    Usage(String),
    Client(ClientError),
    /// The call worked but the outcome is a failure (e.g. `migrate --wait` of a failed
    /// migration): print the text, then the reason, and exit non-zero.
    Failed(String, String),
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Client(e)
    }
}

pub type Out = Result<String, CliError>;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.output == Output::Json;
    match cli.command {
        Verb::Dev(args) => return dev::main(args),
        Verb::Cert(verb) => return finish(cert::run(json, verb)),
        Verb::Token(verb) => return finish(token::run(json, verb)),
        Verb::Completion { shell } => return docs::completion(shell),
        Verb::Man { dir } => return docs::man(&dir),
        _ => {}
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    finish(rt.block_on(run(cli)))
}

/// Prints what a verb answered and turns it into the exit status.
fn finish(out: Out) -> ExitCode {
    match out {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(CliError::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(CliError::Client(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Err(CliError::Failed(text, why)) => {
            print!("{text}");
            eprintln!("error: {why}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one verb and returns what to print.
async fn run(cli: Cli) -> Out {
    // Flags and environment first; else the local dev cluster's `cli.toml`; else the defaults.
    let found = (cli.endpoints.is_empty() || cli.token.is_none() || (cli.ca.is_none() && !cli.insecure))
        .then(CliDefaults::find)
        .flatten();
    let tls = transport(&cli, found.as_ref());
    let endpoints = match (&cli.endpoints, &found) {
        (e, _) if !e.is_empty() => e.clone(),
        (_, Some(d)) => d.endpoints.clone(),
        _ => vec!["127.0.0.1:7201".to_string()],
    };
    let token = match (&cli.token, &cli.cert) {
        (Some(t), _) => t.clone(),
        (None, Some(_)) => String::new(),
        (None, None) => found.map(|d| d.token).unwrap_or_default(),
    };
    let timeout = Duration::from_secs(cli.timeout);
    // Wrong TLS settings fail the verbs that need the cluster (with the reason), not the
    // offline ones (`log verify FILE`).
    let client = match tls {
        Ok(tls) => Client::new(endpoints, token, timeout, tls.as_ref())
            .stale(cli.stale)
            .retrying_writes(timeout)
            .retrying_reads(timeout),
        Err(why) => Client::unusable(why),
    };
    let ctx = Ctx { client, json: cli.output == Output::Json };
    match cli.command {
        Verb::Dev(_) | Verb::Cert(_) | Verb::Token(_) | Verb::Completion { .. } | Verb::Man { .. } => {
            unreachable!("handled in main")
        }
        Verb::Cluster(v) => cluster::run(&ctx, v).await,
        Verb::Host(v) => host::run(&ctx, v).await,
        Verb::Guest(v) => guest::run(&ctx, v).await,
        Verb::Package(v) => package::run(&ctx, v).await,
        Verb::Ha(v) => ha::run(&ctx, v).await,
        Verb::Events(a) => events::run(&ctx, a).await,
        Verb::Migrate(a) => migration::migrate(&ctx, a).await,
        Verb::Migration(v) => migration::run(&ctx, v).await,
        Verb::Rebalance(a) => rebalance::run(&ctx, a).await,
        Verb::Log(v) => log::run(&ctx, v).await,
        Verb::Health { live } => {
            let (status, text) = ctx.client.probe(if live { "/healthz" } else { "/readyz" }).await?;
            if status == 200 {
                Ok(text)
            } else {
                Err(CliError::Failed(text, format!("not ready (HTTP {status})")))
            }
        }
    }
}

/// How to reach the cluster: `--insecure`, else `--ca` (and `--cert`/`--key`), else the dev
/// cluster's `cli.toml`.
fn transport(cli: &Cli, found: Option<&CliDefaults>) -> Result<Option<switchyard_tls::Tls>, String> {
    let config = if cli.insecure {
        switchyard_tls::TlsConfig::insecure()
    } else if let Some(ca) = &cli.ca {
        switchyard_tls::TlsConfig {
            ca: Some(ca.clone()),
            cert: cli.cert.clone(),
            key: cli.key.clone(),
            insecure: false,
        }
    } else if let Some(d) = found {
        d.tls.clone()
    } else {
        return Err("no CA certificate to check the coordinators with: give --ca FILE (or SWITCHYARD_CA) with the \
                    cluster CA's certificate, or --insecure for a cluster running without TLS"
            .into());
    };
    let problems = config.problems(false);
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    switchyard_tls::Tls::from_config(&config, None, "switchyard").map_err(|e| format!("TLS: {e}"))
}

/// The `DEFAULT_DIR` the dev cluster and the CLI agree on.
pub const DEV_DIR: &str = DEFAULT_DIR;
