//! The `switchyard` operator CLI (in the spirit of etcdctl): every verb is one API call, printed
//! as a table by default or as the API's JSON with `-o json`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use switchyard_protocol::api::*;
use switchyard_protocol::{Package, RunState};

use std::io::Write;

use switchyard_protocol::EventPayload;

use crate::client::{Client, ClientError, EventQuery};
use crate::clock::Clock;

#[derive(Parser, Debug)]
#[command(name = "switchyard", version, about = "Operate a Switchyard cluster")]
pub struct Cli {
    /// Coordinator API endpoints (host:port), comma separated; tried in order. Default: those of
    /// `./switchyard-dev/cli.toml` (written by `switchyard dev`), else 127.0.0.1:7201.
    #[arg(long, env = "SWITCHYARD_ENDPOINTS", value_delimiter = ',', global = true)]
    endpoints: Vec<String>,
    /// Bearer token. Default: the one in `./switchyard-dev/cli.toml`.
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: Output,
    /// Serve reads from the contacted node without confirming leadership (may be stale).
    #[arg(long, global = true)]
    stale: bool,
    /// Request timeout in seconds.
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
    Cluster(ClusterVerb),
    /// VM hosts.
    #[command(subcommand)]
    Host(HostVerb),
    /// Distributed guests.
    #[command(subcommand)]
    Guest(GuestVerb),
    /// Failover package switching.
    #[command(subcommand)]
    Package(PackageVerb),
    /// Print the event history from a revision, and follow new events with --follow.
    Events {
        /// First revision to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Keep following live events (resuming on another coordinator if one is lost).
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        guest: Option<String>,
        #[arg(long)]
        host: Option<String>,
        /// Comma-separated kinds: host, guest, package, migration.
        #[arg(long)]
        kind: Option<String>,
    },
    /// Move a guest to another host: online (live) unless --offline.
    Migrate {
        guest: String,
        #[arg(long)]
        to: String,
        /// Move the guest while it is down.
        #[arg(long)]
        offline: bool,
        /// Follow the phases live; exit non-zero unless the migration completes.
        #[arg(long)]
        wait: bool,
        /// Why (kept in the migration's history).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Migration history, details and abort.
    #[command(subcommand)]
    Migration(MigrationVerb),
    /// Recovery: export, verify and replay the event history (live, or offline from a stopped
    /// coordinator's data directory or an export file).
    #[command(subcommand)]
    Log(LogVerb),
    /// Start a complete local cluster (3 coordinators, 3 agents on a simulated hypervisor) with
    /// configs, data and logs in a local folder.
    Dev {
        /// Where the cluster keeps its configs, data, logs, tokens and ports.
        #[arg(long, default_value = crate::dev::DEFAULT_DIR)]
        dir: std::path::PathBuf,
        /// Raft ports are BASE+1..3, API ports BASE+101..103; 0 picks free ports.
        #[arg(long, default_value_t = 7100)]
        base_port: u16,
        /// Play the demo: a guest moved online while the leader coordinator is killed.
        #[arg(long)]
        demo: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterVerb {
    /// Every member: role, term, last log index, applied index, lag.
    Status,
    /// Bootstrap a new cluster on the contacted node (alone, or with --member entries).
    Init {
        /// ID=RAFT_ADDR,API_ADDR; repeat for each initial member.
        #[arg(long = "member")]
        members: Vec<String>,
        /// Leave the new cluster without an identity, for `switchyard log restore` to seed.
        #[arg(long)]
        for_restore: bool,
    },
    /// Add a coordinator: it joins as a learner, catches up, then becomes a voter.
    AddNode {
        id: u64,
        #[arg(long)]
        raft_addr: String,
        #[arg(long)]
        api_addr: String,
    },
    /// Remove a coordinator from the cluster.
    RemoveNode { id: u64 },
}

#[derive(Subcommand, Debug)]
enum HostVerb {
    Register {
        name: String,
        #[arg(long)]
        address: String,
        #[arg(long)]
        vcpus: u32,
        #[arg(long)]
        memory_mib: u64,
        #[arg(long)]
        hardware_family: String,
        #[arg(long)]
        hypervisor_version: String,
        #[command(flatten)]
        write: WriteOpts,
    },
    List,
    Show {
        name: String,
    },
    /// Put a host into maintenance (`on`) or take it out (`off`).
    Maintenance {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        write: WriteOpts,
    },
}

#[derive(Args, Debug)]
struct WriteOpts {
    /// Idempotency key (hex); retrying with the same id never applies a change twice.
    #[arg(long)]
    request_id: Option<String>,
}

#[derive(Subcommand, Debug)]
enum GuestVerb {
    Create {
        name: String,
        /// The host the guest runs on.
        #[arg(long)]
        owner: String,
        #[arg(long)]
        vcpus: u32,
        #[arg(long)]
        memory_mib: u64,
        #[arg(long = "disk")]
        disks: Vec<String>,
        #[arg(long = "network")]
        networks: Vec<String>,
        #[arg(long)]
        package: Option<String>,
        /// The guest runs cluster software (never moved online).
        #[arg(long)]
        cluster_node: bool,
        /// Create the guest stopped.
        #[arg(long)]
        stopped: bool,
        /// Attribute, as the hypervisor's tool takes it: online_migration=enabled|disabled.
        #[arg(short = 'x')]
        attrs: Vec<String>,
        #[command(flatten)]
        write: WriteOpts,
    },
    Modify {
        name: String,
        #[arg(long)]
        vcpus: Option<u32>,
        #[arg(long)]
        memory_mib: Option<u64>,
        /// Replace the disk list (repeat for several).
        #[arg(long = "disk")]
        disks: Vec<String>,
        /// Replace the network list (repeat for several).
        #[arg(long = "network")]
        networks: Vec<String>,
        #[arg(long, conflicts_with = "no_package")]
        package: Option<String>,
        #[arg(long)]
        no_package: bool,
        #[arg(long)]
        cluster_node: Option<bool>,
        #[arg(long, value_parser = ["running", "stopped"])]
        run_state: Option<String>,
        /// online_migration=enabled|disabled
        #[arg(short = 'x')]
        attrs: Vec<String>,
        /// Refuse unless the guest is still at this version.
        #[arg(long)]
        expect_version: Option<u64>,
        #[command(flatten)]
        write: WriteOpts,
    },
    Show {
        name: String,
    },
    List,
    Remove {
        name: String,
        #[arg(long)]
        expect_version: Option<u64>,
        #[command(flatten)]
        write: WriteOpts,
    },
}

#[derive(Subcommand, Debug)]
enum LogVerb {
    /// Write the event history to a portable file: checksummed records, a running SHA-256
    /// chain, a trailer. From the live cluster (consistent at the revision it states) unless
    /// --data-dir names a stopped coordinator's data directory.
    Export {
        /// Where to write ("-": standard output).
        #[arg(long, short = 'f')]
        file: std::path::PathBuf,
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// `binary` (default) or `jsonl` (JSON lines, for people and scripts).
        #[arg(long, default_value = "binary", value_parser = ["binary", "jsonl"])]
        format: String,
    },
    /// Check an export file or a data directory: checksums, contiguous revisions, the hash
    /// chain, and that replaying the events gives the stored state. Exit code 1 if not clean.
    Verify { source: std::path::PathBuf },
    /// Rebuild the state at a revision from the events alone and print it (or its digest, or its
    /// differences from the live cluster).
    Replay {
        /// An export file or a data directory.
        source: std::path::PathBuf,
        #[arg(long)]
        until: Option<u64>,
        /// A UTC date[-time], epoch ms, or an age like 2h.
        #[arg(long)]
        until_time: Option<String>,
        /// Print only the state digest.
        #[arg(long)]
        digest: bool,
        /// Compare with the live cluster's state at its current revision.
        #[arg(long, conflicts_with_all = ["until", "until_time"])]
        diff: bool,
    },
    /// Seed a brand-new cluster from an export: checks the whole file first, imports its events
    /// (original revisions, times and actors) into a cluster started with `cluster init
    /// --for-restore`, then commits a new cluster id. Agents of the old cluster notice the new id
    /// and re-sync. Safe to run again after an interruption: it resumes where the import stopped.
    Restore { file: std::path::PathBuf },
}

#[derive(Subcommand, Debug)]
enum MigrationVerb {
    /// Migrations, oldest first, filtered; --after pages on.
    List {
        #[arg(long)]
        guest: Option<String>,
        /// Migrations from or to this host.
        #[arg(long)]
        host: Option<String>,
        /// A phase (requested … completed, failed, aborted), in_flight or finished.
        #[arg(long)]
        phase: Option<String>,
        /// Requested at or after: a UTC date[-time], epoch ms, or an age like 2h.
        #[arg(long)]
        since: Option<String>,
        /// Requested before (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        /// Only migrations with a greater id (the next page).
        #[arg(long)]
        after: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Every phase with its time and duration, the freeze time, who asked, why, and the error.
    Show {
        #[arg(value_parser = migration_id)]
        id: u64,
    },
    /// Roll back a migration that has not switched owner yet.
    Abort {
        #[arg(value_parser = migration_id)]
        id: u64,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        write: WriteOpts,
    },
}

#[derive(Subcommand, Debug)]
enum PackageVerb {
    Enable(SwitchArgs),
    Disable(SwitchArgs),
    List,
}

#[derive(Args, Debug)]
struct SwitchArgs {
    package: String,
    /// Change only this node's switch.
    #[arg(long)]
    node: Option<String>,
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    write: WriteOpts,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Verb::Dev { dir, base_port, demo } = cli.command {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .with_writer(std::io::stderr)
            .init();
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("start runtime");
        return match rt.block_on(crate::dev::run(dir, base_port, demo)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
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

#[derive(Debug)]
enum CliError {
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

impl From<LogVerb> for crate::recovery::LogCommand {
    fn from(v: LogVerb) -> Self {
        use crate::recovery::LogCommand as L;
        match v {
            LogVerb::Export { file, data_dir, format } => L::Export { file, data_dir, jsonl: format == "jsonl" },
            LogVerb::Verify { source } => L::Verify { source },
            LogVerb::Replay { source, until, until_time, digest, diff } => {
                L::Replay { source, until, until_time, digest, diff }
            }
            LogVerb::Restore { file } => L::Restore { file },
        }
    }
}

/// A migration id as printed (`m42`) or bare (`42`).
fn migration_id(s: &str) -> Result<u64, String> {
    s.strip_prefix('m').unwrap_or(s).parse().map_err(|_| format!("{s:?} is not a migration id (like m42 or 42)"))
}

/// Parses `-x key=value` attributes; only `online_migration` is known.
fn online_migration_attr(attrs: &[String]) -> Result<Option<bool>, CliError> {
    let mut out = None;
    for a in attrs {
        match a.split_once('=') {
            Some(("online_migration", "enabled" | "true")) => out = Some(true),
            Some(("online_migration", "disabled" | "false")) => out = Some(false),
            Some(("online_migration", v)) => {
                return Err(CliError::Usage(format!("online_migration takes enabled or disabled, not {v:?}")))
            }
            _ => {
                return Err(CliError::Usage(format!(
                    "unknown attribute {a:?}; known: online_migration=enabled|disabled"
                )))
            }
        }
    }
    Ok(out)
}

fn name_path(s: &str) -> Result<String, CliError> {
    switchyard_protocol::Name::new(s)
        .map(|n| n.to_string())
        .map_err(|e| CliError::Usage(format!("invalid name {s:?}: {e}")))
}

/// Runs one verb and returns what to print.
async fn run(cli: Cli) -> Result<String, CliError> {
    // Flags and environment first; else the local dev cluster's `cli.toml`; else the defaults.
    let found = (cli.endpoints.is_empty() || cli.token.is_none()).then(crate::dev::CliDefaults::find).flatten();
    let endpoints = match (&cli.endpoints, &found) {
        (e, _) if !e.is_empty() => e.clone(),
        (_, Some(d)) => d.endpoints.clone(),
        _ => vec!["127.0.0.1:7201".to_string()],
    };
    let token = cli.token.clone().or(found.map(|d| d.token)).unwrap_or_default();
    let c = Client::new(endpoints, token, Duration::from_secs(cli.timeout));
    let json = cli.output == Output::Json;
    let q = if cli.stale { "?stale=true" } else { "" };
    match cli.command {
        Verb::Dev { .. } => unreachable!("handled in main"),
        Verb::Log(v) => crate::recovery::run(&c, json, v.into()).await.map_err(|e| match e {
            crate::recovery::RecoveryError::Usage(m) => CliError::Usage(m),
            crate::recovery::RecoveryError::Client(e) => CliError::Client(e),
            crate::recovery::RecoveryError::Failed(text, why) => CliError::Failed(text, why),
        }),
        Verb::Events { from, follow, guest, host, kind } => {
            for n in [&guest, &host].into_iter().flatten() {
                name_path(n)?;
            }
            let query = EventQuery { from, follow, guest, host, kind, cluster: None };
            let mut out = std::io::stdout();
            if !json {
                let _ = writeln!(out, "REV  TIME  ACTOR  EVENT");
            }
            c.events(&query, |item| {
                let line = match item {
                    StreamItem::Event(_) if json => serde_json::to_string(item).expect("JSON"),
                    StreamItem::Event(e) => format!("{}  {}  {}  {}", e.revision, e.time.0, e.actor, describe(&e.payload)),
                    StreamItem::Compacted { first_retained, snapshot_revision } => format!(
                        "history before revision {first_retained} is compacted; re-read state (at revision {snapshot_revision}) and resume from there"
                    ),
                    StreamItem::Progress { .. } if json => serde_json::to_string(item).expect("JSON"),
                    StreamItem::Progress { .. } => return true,
                };
                // A closed stdout (e.g. `| head`) ends the subscription.
                writeln!(out, "{line}").is_ok()
            })
            .await?;
            Ok(String::new())
        }
        Verb::Cluster(v) => match v {
            ClusterVerb::Status => {
                let s: ClusterStatus = c.get("/v1/cluster/status").await?;
                Ok(if json { to_json(&s) } else { cluster_table(&s) })
            }
            ClusterVerb::Init { members, for_restore } => {
                let members = members.iter().map(|m| parse_member(m)).collect::<Result<Vec<_>, _>>()?;
                let r: serde_json::Value = c.post("/v1/cluster/init", &InitRequest { members, for_restore }).await?;
                Ok(if json {
                    to_json(&r)
                } else if for_restore {
                    "cluster initialized without an identity; seed it with `switchyard log restore FILE`\n".into()
                } else {
                    format!("cluster {} initialized\n", r["cluster"].as_str().unwrap_or("?"))
                })
            }
            ClusterVerb::AddNode { id, raft_addr, api_addr } => {
                let r: serde_json::Value = c.post("/v1/cluster/nodes", &MemberSpec { id, raft_addr, api_addr }).await?;
                Ok(if json { to_json(&r) } else { format!("node {id} added as a voter\n") })
            }
            ClusterVerb::RemoveNode { id } => {
                let r: serde_json::Value = c.delete(&format!("/v1/cluster/nodes/{id}")).await?;
                Ok(if json { to_json(&r) } else { format!("node {id} removed\n") })
            }
        },
        Verb::Host(v) => match v {
            HostVerb::Register { name, address, vcpus, memory_mib, hardware_family, hypervisor_version, write } => {
                let name = switchyard_protocol::Name::new(&name)
                    .map_err(|e| CliError::Usage(format!("invalid name {name:?}: {e}")))?;
                let req = RegisterHostRequest {
                    name,
                    address,
                    vcpus,
                    memory_mib,
                    hardware_family,
                    hypervisor_version,
                    request_id: write.request_id,
                };
                written(json, c.post("/v1/hosts", &req).await?)
            }
            HostVerb::List => {
                let r: Read<Vec<HostView>> = c.get(&format!("/v1/hosts{q}")).await?;
                Ok(if json { to_json(&r) } else { hosts_table(&r.items) })
            }
            HostVerb::Show { name } => {
                let r: Read<HostView> = c.get(&format!("/v1/hosts/{}{q}", name_path(&name)?)).await?;
                Ok(if json { to_json(&r) } else { hosts_table(std::slice::from_ref(&r.items)) })
            }
            HostVerb::Maintenance { name, state, write } => {
                let req = MaintenanceRequest { maintenance: state == "on", request_id: write.request_id };
                written(json, c.post(&format!("/v1/hosts/{}/maintenance", name_path(&name)?), &req).await?)
            }
        },
        Verb::Guest(v) => match v {
            GuestVerb::Create {
                name,
                owner,
                vcpus,
                memory_mib,
                disks,
                networks,
                package,
                cluster_node,
                stopped,
                attrs,
                write,
            } => {
                let parse = |s: &str| {
                    switchyard_protocol::Name::new(s).map_err(|e| CliError::Usage(format!("invalid name {s:?}: {e}")))
                };
                let req = CreateGuestRequest {
                    name: parse(&name)?,
                    owner: parse(&owner)?,
                    vcpus,
                    memory_mib,
                    disks,
                    networks,
                    online_migration: online_migration_attr(&attrs)?.unwrap_or(true),
                    cluster_node,
                    package: package.as_deref().map(parse).transpose()?,
                    run_state: if stopped { RunState::Stopped } else { RunState::Running },
                    request_id: write.request_id,
                };
                written(json, c.post("/v1/guests", &req).await?)
            }
            GuestVerb::Modify {
                name,
                vcpus,
                memory_mib,
                disks,
                networks,
                package,
                no_package,
                cluster_node,
                run_state,
                attrs,
                expect_version,
                write,
            } => {
                let package = package
                    .as_deref()
                    .map(|p| {
                        switchyard_protocol::Name::new(p)
                            .map_err(|e| CliError::Usage(format!("invalid name {p:?}: {e}")))
                    })
                    .transpose()?;
                let req = ModifyGuestRequest {
                    vcpus,
                    memory_mib,
                    disks: (!disks.is_empty()).then_some(disks),
                    networks: (!networks.is_empty()).then_some(networks),
                    online_migration: online_migration_attr(&attrs)?,
                    cluster_node,
                    package,
                    remove_package: no_package,
                    run_state: run_state.map(|s| if s == "running" { RunState::Running } else { RunState::Stopped }),
                    expect_version,
                    request_id: write.request_id,
                };
                written(json, c.patch(&format!("/v1/guests/{}", name_path(&name)?), &req).await?)
            }
            GuestVerb::Show { name } => {
                let r: Read<GuestView> = c.get(&format!("/v1/guests/{}{q}", name_path(&name)?)).await?;
                if json {
                    return Ok(to_json(&r));
                }
                let g = &r.items;
                let mut out = guests_table(std::slice::from_ref(g));
                let now = crate::clock::SystemClock.now();
                if let Some(line) = g.package.as_ref().and_then(|p| unprotected(p, now)) {
                    out.push_str(&format!("\npackage {}: {line}\n", g.package.as_ref().expect("checked").name));
                }
                if let Some(m) = &g.migration {
                    out.push_str(&format!(
                        "migration {} in flight: {} -> {}, phase {} since {}\n",
                        m.id,
                        m.source,
                        m.target,
                        m.phase,
                        crate::timefmt::format(m.current().at)
                    ));
                }
                for h in &g.hosts {
                    out.push_str(&format!("host {}: {}\n", h.host, sync_text(&h.status)));
                }
                Ok(out)
            }
            GuestVerb::List => {
                let r: Read<Vec<GuestView>> = c.get(&format!("/v1/guests{q}")).await?;
                Ok(if json { to_json(&r) } else { guests_table(&r.items) })
            }
            GuestVerb::Remove { name, expect_version, write } => {
                let mut params = Vec::new();
                if let Some(v) = expect_version {
                    params.push(format!("expect_version={v}"));
                }
                if let Some(r) = &write.request_id {
                    params.push(format!("request_id={r}"));
                }
                let qs = if params.is_empty() { String::new() } else { format!("?{}", params.join("&")) };
                written(json, c.delete(&format!("/v1/guests/{}{qs}", name_path(&name)?)).await?)
            }
        },
        Verb::Migrate { guest, to, offline, wait, reason, write } => {
            let parse = |s: &str| {
                switchyard_protocol::Name::new(s).map_err(|e| CliError::Usage(format!("invalid name {s:?}: {e}")))
            };
            let req = MigrateRequest {
                guest: parse(&guest)?,
                target: parse(&to)?,
                offline,
                reason,
                request_id: write.request_id,
            };
            let r: WriteResponse = c.post("/v1/migrations", &req).await?;
            let id = r.first_revision;
            if !wait {
                return Ok(if json {
                    to_json(&r)
                } else {
                    format!("migration {id} of {guest} to {to} requested (follow it: switchyard migration show {id})\n")
                });
            }
            wait_migration(&c, json, &guest, id).await
        }
        Verb::Migration(v) => match v {
            MigrationVerb::List { guest, host, phase, since, until, after, limit } => {
                let now = crate::clock::SystemClock.now();
                let mut params = vec![format!("limit={limit}")];
                for (k, v) in [("guest", guest), ("host", host)] {
                    if let Some(v) = v {
                        params.push(format!("{k}={}", name_path(&v)?));
                    }
                }
                if let Some(p) = phase {
                    params.push(format!("phase={}", name_path(&p)?));
                }
                for (k, v) in [("since", since), ("until", until)] {
                    if let Some(v) = v {
                        let t = crate::timefmt::parse(&v, now).map_err(CliError::Usage)?;
                        params.push(format!("{k}={}", t.0));
                    }
                }
                if let Some(a) = after {
                    params.push(format!("after={a}"));
                }
                if cli.stale {
                    params.push("stale=true".into());
                }
                let r: Read<MigrationPage> = c.get(&format!("/v1/migrations?{}", params.join("&"))).await?;
                Ok(if json { to_json(&r) } else { migrations_table(&r.items) })
            }
            MigrationVerb::Show { id } => {
                let r: Read<switchyard_protocol::Migration> = c.get(&format!("/v1/migrations/{id}{q}")).await?;
                Ok(if json { to_json(&r) } else { migration_detail(&r.items) })
            }
            MigrationVerb::Abort { id, reason, write } => {
                let req = AbortRequest { reason, request_id: write.request_id };
                let r: WriteResponse = c.post(&format!("/v1/migrations/{id}/abort"), &req).await?;
                Ok(if json {
                    to_json(&r)
                } else {
                    format!("migration {id} aborted and rolled back (revision {})\n", r.last_revision)
                })
            }
        },
        Verb::Package(v) => match v {
            PackageVerb::List => {
                let r: Read<Vec<Package>> = c.get(&format!("/v1/packages{q}")).await?;
                Ok(if json { to_json(&r) } else { packages_table(&r.items) })
            }
            PackageVerb::Enable(a) => switching(&c, json, a, true).await,
            PackageVerb::Disable(a) => switching(&c, json, a, false).await,
        },
    }
}

async fn switching(c: &Client, json: bool, a: SwitchArgs, enabled: bool) -> Result<String, CliError> {
    let node = a
        .node
        .as_deref()
        .map(|n| switchyard_protocol::Name::new(n).map_err(|e| CliError::Usage(format!("invalid name {n:?}: {e}"))))
        .transpose()?;
    let req = SwitchingRequest { enabled, node, reason: a.reason, request_id: a.write.request_id };
    written(json, c.post(&format!("/v1/packages/{}/switching", name_path(&a.package)?), &req).await?)
}

fn parse_member(s: &str) -> Result<MemberSpec, CliError> {
    let bad = || CliError::Usage(format!("--member {s:?}: expected ID=RAFT_ADDR,API_ADDR"));
    let (id, addrs) = s.split_once('=').ok_or_else(bad)?;
    let (raft, api) = addrs.split_once(',').ok_or_else(bad)?;
    Ok(MemberSpec { id: id.parse().map_err(|_| bad())?, raft_addr: raft.into(), api_addr: api.into() })
}

fn written(json: bool, r: WriteResponse) -> Result<String, CliError> {
    Ok(if json {
        to_json(&r)
    } else if r.duplicate {
        format!("already applied at revision {} (request {})\n", r.first_revision, r.request_id)
    } else if r.first_revision == r.last_revision {
        format!("ok, revision {}\n", r.first_revision)
    } else {
        format!("ok, revisions {}-{}\n", r.first_revision, r.last_revision)
    })
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("API types serialise to JSON");
    s.push('\n');
    s
}

/// Renders rows as aligned columns.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect::<Vec<_>>().join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn cluster_table(s: &ClusterStatus) -> String {
    let rows = s
        .members
        .iter()
        .map(|m| {
            let st = m.status.as_ref();
            vec![
                m.id.to_string(),
                st.map_or("unreachable".into(), |s| s.role.clone()),
                if m.voter { "voter".into() } else { "learner".into() },
                opt(st.map(|s| s.term)),
                opt(st.and_then(|s| s.last_log_index)),
                opt(st.and_then(|s| s.applied_index)),
                opt(m.lag),
                m.api_addr.clone(),
            ]
        })
        .collect();
    table(&["ID", "ROLE", "MEMBER", "TERM", "LAST LOG", "APPLIED", "LAG", "API"], rows)
}

fn sync_text(s: &SyncStatus) -> String {
    match s {
        SyncStatus::InSync => "in sync".into(),
        SyncStatus::Lagging { behind } => format!("lagging by {behind}"),
        SyncStatus::Diverged => "DIVERGED".into(),
        SyncStatus::Silent => "silent".into(),
        SyncStatus::Unknown => "no report".into(),
    }
}

pub(crate) fn hosts_table(hosts: &[HostView]) -> String {
    let rows = hosts
        .iter()
        .map(|h| {
            let s = &h.host.spec;
            vec![
                s.name.to_string(),
                h.state.to_string(),
                s.capacity.vcpus.to_string(),
                s.capacity.memory_mib.to_string(),
                s.profile.to_string(),
                s.address.clone(),
                h.host.version.to_string(),
                h.sync.as_ref().map_or("-".into(), |y| sync_text(&y.status)),
            ]
        })
        .collect();
    table(&["NAME", "STATE", "VCPUS", "MEMORY MIB", "PROFILE", "ADDRESS", "VERSION", "SYNC"], rows)
}

pub(crate) fn guests_table(guests: &[GuestView]) -> String {
    let rows = guests
        .iter()
        .map(|g| {
            let s = &g.guest.spec;
            let switching = g.package.as_ref().map_or("-".to_string(), |p| {
                if p.switching_enabled {
                    "enabled".into()
                } else {
                    "DISABLED".into()
                }
            });
            vec![
                g.guest.name.to_string(),
                g.guest.owner.to_string(),
                format!("{:?}", g.guest.run_state).to_lowercase(),
                s.vcpus.to_string(),
                s.memory_mib.to_string(),
                if s.online_migration { "enabled".into() } else { "disabled".into() },
                s.cluster_node.to_string(),
                opt(s.package.as_ref()),
                switching,
                g.migration.as_ref().map_or("-".into(), |m| format!("{} {}", m.id, m.phase)),
                g.guest.version.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "OWNER",
            "RUN",
            "VCPUS",
            "MEMORY MIB",
            "ONLINE MIGRATION",
            "CLUSTER NODE",
            "PACKAGE",
            "SWITCHING",
            "MIGRATION",
            "VERSION",
        ],
        rows,
    )
}

pub(crate) fn packages_table(pkgs: &[Package]) -> String {
    let now = crate::clock::SystemClock.now();
    let rows = pkgs
        .iter()
        .map(|p| {
            let c = &p.switching_changed;
            vec![
                p.name.to_string(),
                p.guest.to_string(),
                if p.switching_enabled {
                    "enabled".into()
                } else {
                    format!("DISABLED for {}", crate::timefmt::duration(now.0.saturating_sub(c.at.0)))
                },
                if p.disabled_nodes.is_empty() {
                    "-".into()
                } else {
                    p.disabled_nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
                },
                format!("{} rev {} by {}", crate::timefmt::format(c.at), c.revision, c.actor),
                opt(c.migration),
                opt(c.reason.as_ref()),
            ]
        })
        .collect();
    table(&["PACKAGE", "GUEST", "SWITCHING", "NODES DISABLED", "CHANGED", "MIGRATION", "REASON"], rows)
}

/// Follows a migration's phases from the event history until it ends.
async fn wait_migration(c: &Client, json: bool, guest: &str, id: u64) -> Result<String, CliError> {
    let query = EventQuery {
        from: id,
        follow: true,
        guest: Some(guest.to_string()),
        host: None,
        kind: Some("migration".into()),
        cluster: None,
    };
    let mut out = std::io::stdout();
    let mut end: Option<(switchyard_protocol::Phase, Option<String>)> = None;
    c.events(&query, |item| {
        let StreamItem::Event(e) = item else { return true };
        if e.payload.migration() != Some(switchyard_protocol::MigrationId(id)) {
            return true;
        }
        let line = if json {
            serde_json::to_string(item).expect("JSON")
        } else {
            format!("{}  {}", crate::timefmt::format(e.time), describe(&e.payload))
        };
        let _ = writeln!(out, "{line}");
        if let EventPayload::MigrationPhaseChanged { phase, error, .. } = &e.payload {
            if phase.is_terminal() {
                end = Some((*phase, error.clone()));
                return false;
            }
        }
        true
    })
    .await?;
    match end {
        Some((switchyard_protocol::Phase::Completed, _)) => Ok(String::new()),
        Some((phase, error)) => Err(CliError::Failed(
            String::new(),
            format!("migration {id} {phase}: {}", error.unwrap_or_else(|| "no reason given".into())),
        )),
        None => Err(CliError::Failed(
            String::new(),
            format!("lost track of migration {id}; see: switchyard migration show {id}"),
        )),
    }
}

pub(crate) fn migrations_table(page: &MigrationPage) -> String {
    use crate::timefmt;
    let rows = page
        .migrations
        .iter()
        .map(|m| {
            let started = m.history.first().map_or(0, |r| r.at.0);
            let took = m.current().at.0.saturating_sub(started);
            vec![
                m.id.to_string(),
                m.guest.to_string(),
                m.source.to_string(),
                m.target.to_string(),
                m.kind.to_string(),
                m.phase.to_string(),
                timefmt::format(switchyard_protocol::Timestamp(started)),
                if m.phase.is_terminal() {
                    timefmt::duration(took)
                } else {
                    format!("{} so far", timefmt::duration(took))
                },
                opt(m.freeze_time_ms.map(timefmt::duration)),
                m.requested_by.clone(),
                opt(m.error.as_ref()),
            ]
        })
        .collect();
    let mut out =
        table(&["ID", "GUEST", "FROM", "TO", "KIND", "PHASE", "REQUESTED", "TOOK", "FREEZE", "BY", "ERROR"], rows);
    if let Some(next) = page.next_after {
        out.push_str(&format!("(more: --after {next})\n"));
    }
    out
}

pub(crate) fn migration_detail(m: &switchyard_protocol::Migration) -> String {
    use crate::timefmt;
    let mut s = format!(
        "migration {}: guest {} from {} to {} ({})\nrequested by {}{}\nphase {}{}\n",
        m.id,
        m.guest,
        m.source,
        m.target,
        m.kind,
        m.requested_by,
        m.reason.as_ref().map(|r| format!(", reason: {r}")).unwrap_or_default(),
        m.phase,
        m.error.as_ref().map(|e| format!(", error: {e}")).unwrap_or_default(),
    );
    if let Some(p) = &m.package {
        s.push_str(&format!(
            "package {p}, switching before: {}\n",
            opt(m.switching_before.map(|b| if b { "enabled" } else { "disabled" }))
        ));
    }
    if let Some(f) = m.freeze_time_ms {
        s.push_str(&format!("freeze time {}\n", timefmt::duration(f)));
    }
    let rows = m
        .history
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let lasted = m.history.get(i + 1).map(|n| timefmt::duration(n.at.0.saturating_sub(r.at.0)));
            vec![
                r.phase.to_string(),
                timefmt::format(r.at),
                r.revision.to_string(),
                r.term.to_string(),
                lasted.unwrap_or_else(|| if r.phase.is_terminal() { "-".into() } else { "(current)".into() }),
            ]
        })
        .collect();
    s.push('\n');
    s.push_str(&table(&["PHASE", "ENTERED", "REVISION", "TERM", "LASTED"], rows));
    s
}

/// When a package's switching is disabled: since when, for how long, by whom and why.
fn unprotected(p: &Package, now: switchyard_protocol::Timestamp) -> Option<String> {
    if p.switching_enabled {
        return None;
    }
    let c = &p.switching_changed;
    let by = c.migration.map(|m| format!("migration {m}")).unwrap_or_else(|| c.actor.clone());
    Some(format!(
        "switching DISABLED since {} (for {}) by {by}{}",
        crate::timefmt::format(c.at),
        crate::timefmt::duration(now.0.saturating_sub(c.at.0)),
        c.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
    ))
}

/// One line about an event, for the table output of `events`.
pub(crate) fn describe(p: &EventPayload) -> String {
    match p {
        EventPayload::ClusterCreated { cluster, restored_from: None } => format!("cluster {cluster} created"),
        EventPayload::ClusterCreated { cluster, restored_from: Some(from) } => format!(
            "cluster {cluster} created from the export of cluster {} through revision {}",
            from.cluster.as_ref().map_or("(no id)".into(), |c| c.to_string()),
            from.through_revision
        ),
        EventPayload::HostRegistered { host } => format!("host {} registered", host.spec.name),
        EventPayload::HostMaintenanceChanged { host, maintenance } => {
            format!("host {host} maintenance {}", if *maintenance { "on" } else { "off" })
        }
        EventPayload::HostReachabilityChanged { host, reachable } => {
            format!("host {host} {}", if *reachable { "reachable" } else { "unreachable" })
        }
        EventPayload::GuestCreated { guest } => format!("guest {} created on {}", guest.name, guest.owner),
        EventPayload::GuestModified { guest } => format!("guest {} modified (version {})", guest.name, guest.version),
        EventPayload::GuestRemoved { guest } => format!("guest {guest} removed"),
        EventPayload::PackageSwitchingChanged { package, node, enabled, .. } => format!(
            "package {package} switching {}{}",
            if *enabled { "enabled" } else { "disabled" },
            node.as_ref().map(|n| format!(" on node {n}")).unwrap_or_default()
        ),
        EventPayload::MigrationRequested { migration: m } => {
            format!("migration {} of {} requested: {} -> {} ({})", m.id, m.guest, m.source, m.target, m.kind)
        }
        EventPayload::MigrationPhaseChanged { id, guest, phase, .. } => format!("migration {id} of {guest}: {phase}"),
        EventPayload::GuestOwnerChanged { guest, from, to, .. } => {
            format!("guest {guest} now owned by {to} (was {from})")
        }
    }
}
