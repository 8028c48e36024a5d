//! `switchyard-bench`: SPEC §8's figures, measured on real clusters of processes on loopback, with
//! etcd side by side when it is installed. Not a test: it prints figures (a markdown table and
//! JSON) and asserts nothing. See docs/benchmarks.md for what each figure means.
//!
//! ```text
//! cargo build --release --workspace --bins && ./target/release/switchyard-bench
//! ```

mod console;
mod drain;
mod plans;
mod profile;
mod scenarios;
mod sut;
mod vm;
mod wal;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use std::path::PathBuf;

use crate::sut::{Etcd, Sut, Switchyard, Timing};

#[derive(Parser, Debug)]
#[command(name = "switchyard-bench", about = "Switchyard side by side with etcd (SPEC §8)")]
pub struct Args {
    /// Concurrent clients of the throughput runs.
    #[arg(long, default_value = "1,16,64,256,1000", value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Subscriber counts of the fan-out runs.
    #[arg(long, default_value = "100,1000", value_delimiter = ',')]
    pub subscribers: Vec<usize>,
    /// Change rates (per second) of the fan-out runs.
    #[arg(long, default_value = "10,100", value_delimiter = ',')]
    pub rates: Vec<u64>,
    /// Leader kills of the write failover figure (per system).
    #[arg(long, default_value_t = 5)]
    pub failover_reps: usize,
    /// Leader kills of the migration failover figure (SPEC §8 asks for its p99: the max of 20
    /// kills bounds it from above).
    #[arg(long, default_value_t = 20)]
    pub migration_reps: usize,
    /// Writes the `steady` part makes (256 clients) before it times one and 16 clients again.
    /// 0: as many as Switchyard's members need to write their WAL over recycled files, as a
    /// node that has run a while does (100 000 at a time, at most 3 M), and as many for etcd.
    #[arg(long, default_value_t = 0)]
    pub steady_writes: u64,
    /// How far behind the catch-up subscriber starts.
    #[arg(long, default_value_t = 100_000)]
    pub catchup_events: u64,
    /// History sizes of the offline replay runs.
    #[arg(long, default_value = "1000000", value_delimiter = ',')]
    pub replay_events: Vec<u64>,
    /// Guests, hosts and history length of the scale run (a cluster of its own, seeded with
    /// `log restore`); the guests and hosts of the `plans` part too.
    #[arg(long, default_value_t = 100_000)]
    pub scale_guests: usize,
    #[arg(long, default_value_t = 1000)]
    pub scale_hosts: usize,
    #[arg(long, default_value_t = 10_000_000)]
    pub scale_events: u64,
    /// How the scale run's cluster gets its history: `seed` (one `log seed` for the three
    /// members, which share this machine, then `log restore` commits the identity), `seed-each`
    /// (a `log seed` per member at once, as on three machines) or `import` (every event through
    /// Raft).
    #[arg(long, value_enum, default_value = "seed")]
    pub scale_restore: sut::RestoreBy,
    /// Moves of a real QEMU VM, through Switchyard and by QMP directly (the `vm` part).
    #[arg(long, default_value_t = 10)]
    pub vm_reps: usize,
    /// Host kills of the `host-loss` part (a real VM failed over each time).
    #[arg(long, default_value_t = 10)]
    pub host_loss_reps: usize,
    /// Guests of the `drain` part, all on one host, drained to two others.
    #[arg(long, default_value_t = 100)]
    pub drain_guests: usize,
    /// The drain's migrations at once (`host drain --max-parallel`).
    #[arg(long, default_value_t = 4)]
    pub drain_parallel: u32,
    /// How long each simulated transfer of the `drain` part takes.
    #[arg(long, default_value_t = 1000)]
    pub drain_transfer_ms: u64,
    /// Run only these parts: throughput, steady, profile, fanout, failover, restart, catchup,
    /// replay, plans, wal, scale, vm, host-loss, drain, console.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Switchyard alone, even when etcd is installed.
    #[arg(long)]
    pub no_etcd: bool,
    /// Switchyard's links over TLS, as it is deployed (throughput, fan-out, failover, restart,
    /// catch-up; the harness trusts the cluster's CA). Off by default: etcd runs plaintext here.
    #[arg(long)]
    pub tls: bool,
    /// Switchyard's coordinators stop without handing leadership over (`raft.handover_timeout_ms
    /// = 0`): the rolling restart's figure as it would be without the handover.
    #[arg(long)]
    pub no_handover: bool,
    /// Rounds of the rolling restart (each restarts every member once).
    #[arg(long, default_value_t = 2)]
    pub restart_rounds: usize,
    /// Raft heartbeat interval of both systems (default: Switchyard's own default).
    #[arg(long, default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// etcd's `--election-timeout` (a whole number of heartbeats, as etcd rounds it down).
    /// Switchyard gets the election timeout whose first campaign after a leader loss comes as
    /// early on average (see `Timing`); for 400 that is 145..290 ms, next to its default 150..300.
    #[arg(long, default_value_t = 400)]
    pub election_ms: u64,
    /// How long a simulated transfer of a guest takes (the migration failover figure measures
    /// the failover, so the transfer is kept short).
    #[arg(long, default_value_t = 50)]
    pub transfer_ms: u64,
    /// Switchyard's `raft.proposal_batch_max` (1 turns batching off, for a before/after).
    #[arg(long, default_value_t = 256)]
    pub batch_max: usize,
    /// The agents' `jump_after_revisions` (0: never jump, for a before/after of the agents far
    /// behind).
    #[arg(long, default_value_t = 10_000)]
    pub agent_jump_after: u64,
    /// Keep the synthetic exports of the replay runs in `--dir` (to profile `log replay` by
    /// hand: `perf record switchyard log replay --digest FILE`).
    #[arg(long)]
    pub keep_exports: bool,
    /// Where the clusters keep their data (default: a temporary folder, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Args {
    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub figure: String,
    pub unit: &'static str,
    /// Whether a larger value is better (throughput) or a smaller one (latency).
    pub higher_is_better: bool,
    pub switchyard: Option<f64>,
    pub etcd: Option<f64>,
    pub note: String,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Tables printed after the main one (markdown), such as the one-client profile.
    pub sections: Vec<String>,
    /// How many writes the `steady` part made on the first system it ran on, for the next.
    pub steady_writes: Option<u64>,
}

impl Report {
    pub fn add(&mut self, figure: impl Into<String>, unit: &'static str, higher_is_better: bool, system: &str, v: f64) {
        let figure = figure.into();
        let i = match self.rows.iter().position(|r| r.figure == figure) {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    figure,
                    unit,
                    higher_is_better,
                    switchyard: None,
                    etcd: None,
                    note: String::new(),
                });
                self.rows.len() - 1
            }
        };
        let row = &mut self.rows[i];
        match system {
            "etcd" => row.etcd = Some(v),
            _ => row.switchyard = Some(v),
        }
        eprintln!("  {system:>10}  {:<58} {}", row.figure, fmt(v, unit));
    }

    pub fn section(&mut self, markdown: String) {
        self.sections.push(markdown);
    }

    pub fn note(&mut self, figure: &str, note: impl Into<String>) {
        if let Some(r) = self.rows.iter_mut().find(|r| r.figure == figure) {
            r.note = note.into();
        }
    }

    fn markdown(&self) -> String {
        let mut s =
            String::from("| figure | Switchyard | etcd | Switchyard vs etcd | note |\n|---|---:|---:|---:|---|\n");
        for r in &self.rows {
            let ratio = match (r.switchyard, r.etcd) {
                (Some(a), Some(b)) if a > 0.0 && b > 0.0 => {
                    let x = if r.higher_is_better { a / b } else { b / a };
                    format!("{x:.2}× {}", if x >= 1.0 { "better" } else { "worse" })
                }
                _ => "–".into(),
            };
            let v = |x: Option<f64>| x.map_or("–".into(), |x| fmt(x, r.unit));
            s.push_str(&format!("| {} | {} | {} | {ratio} | {} |\n", r.figure, v(r.switchyard), v(r.etcd), r.note));
        }
        s
    }
}

fn fmt(v: f64, unit: &str) -> String {
    match unit {
        "ms" if v < 10.0 => format!("{v:.2} ms"),
        "ms" => format!("{v:.0} ms"),
        "MiB" => format!("{v:.1} MiB"),
        _ if v >= 100.0 => format!("{v:.0} {unit}"),
        _ => format!("{v:.1} {unit}"),
    }
}

fn timing_line(t: Timing) -> String {
    let (min, max) = t.switchyard_election();
    let (e, s) = (t.etcd_window(), t.switchyard_window());
    format!(
        "Both systems: 3 members on loopback, data on the same disk, log fsync on every commit, heartbeat {} ms. \
         A follower campaigns {}..{} ms after the last heartbeat in etcd (--election-timeout {}: {} ticks), \
         {}..{} ms in Switchyard (openraft election timeout {min}..{max} ms after a {max} ms leader lease); \
         the first of two followers campaigns {:.0} ms (etcd) and {:.0} ms (Switchyard) after it on average.",
        t.heartbeat_ms,
        e.0,
        e.1,
        t.election_ms,
        t.etcd_ticks(),
        s.0,
        s.1,
        Timing::mean_first_campaign_ms(e),
        Timing::mean_first_campaign_ms(s),
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0) >> 20)
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} GiB RAM, Linux {}", kernel.trim())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("switchyard-bench-").tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let timing = Timing { heartbeat_ms: args.heartbeat_ms, election_ms: args.election_ms };
    let etcd_program = if args.no_etcd { None } else { sut::etcd_program() };
    let mut report = Report::default();
    eprintln!("machine: {}", machine());
    eprintln!("{}", timing_line(timing));
    eprintln!("switchyard links: {}", if args.tls { "TLS (--tls)" } else { "plaintext" });
    match &etcd_program {
        Some(p) => eprintln!("etcd: {}", p.display()),
        None if args.no_etcd => eprintln!("etcd: skipped (--no-etcd)"),
        None => eprintln!(
            "etcd: not installed (apt-get install etcd-server, or set ETCD_BIN): printing Switchyard's figures alone"
        ),
    }

    // Offline first, on a quiet machine: right after a cluster stops (etcd's, in a full run) the
    // 1 M-event replay measured 0.5–0.66 M events/s instead of 1.3 M.
    if args.wants("replay") {
        scenarios::replay(&args, &dir, &mut report)?;
    }
    if args.wants("plans") {
        eprintln!("== the leader's plans at scale");
        plans::plans(&args, &mut report)?;
    }
    if args.wants("wal") {
        eprintln!("== a log append made durable, in a fresh and in a recycled WAL file");
        wal::wal(&dir, &mut report).await?;
    }
    if ["throughput", "steady", "profile", "fanout", "failover", "restart", "catchup"].iter().any(|p| args.wants(p)) {
        // One system at a time, each stopped before the next starts.
        eprintln!("== switchyard");
        let mut sut = Sut::Switchyard(Box::new(
            Switchyard::start(
                &dir.join("switchyard"),
                timing,
                args.batch_max,
                args.transfer_ms,
                args.no_handover,
                args.tls,
                args.agent_jump_after,
            )
            .await?,
        ));
        scenarios::run_all(&args, &mut sut, &mut report).await?;
        drop(sut);
        if let Some(p) = etcd_program.clone() {
            eprintln!("== etcd");
            let mut sut = Sut::Etcd(Etcd::launch(p, &dir.join("etcd"), timing).await?);
            scenarios::run_all(&args, &mut sut, &mut report).await?;
        }
    }
    if args.wants("vm") {
        vm::vm_migration(&args, &dir, timing, &mut report).await?;
    }
    if args.wants("host-loss") {
        vm::host_loss(&args, &dir, timing, &mut report).await?;
    }
    if args.wants("drain") {
        drain::drain(&args, &dir, timing, &mut report).await?;
    }
    if args.wants("console") {
        console::console(&args, &dir, timing, &mut report).await?;
    }
    if args.wants("scale") {
        eprintln!("== switchyard at scale");
        scenarios::scale(&args, &dir, timing, &mut report).await?;
    }

    let md = report.markdown();
    println!("Machine: {}", machine());
    println!("{}", timing_line(timing));
    println!("Switchyard's links: {}.\n", if args.tls { "TLS" } else { "plaintext" });
    println!("{md}");
    for section in &report.sections {
        println!("{section}");
    }
    let json = serde_json::json!({
        "machine": machine(),
        "timing": {"heartbeat_ms": timing.heartbeat_ms, "etcd_election_timeout_ms": timing.election_ms,
                   "etcd_campaign_window_ms": timing.etcd_window(),
                   "switchyard_election_timeout_ms": timing.switchyard_election(),
                   "switchyard_campaign_window_ms": timing.switchyard_window()},
        "etcd": etcd_program.map(|p| p.display().to_string()),
        "switchyard_tls": args.tls,
        "rows": report.rows,
        "sections": report.sections,
    });
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&json)?)?;
        eprintln!("JSON written to {}", p.display());
    } else {
        println!("```json\n{}\n```", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}
