//! # switchyard-sim
//!
//! Deterministic simulation of a coordinator cluster. Five coordinators run the patched openraft
//! (`vendor/openraft`) with the real state-machine step (`switchyard_protocol::apply`) and the
//! real codec on every Raft message, over a simulated network ([`net`]) and a simulated disk
//! ([`disk`]) that loses unsynced writes on power loss, on one paused-clock runtime
//! ([`runtime`]). Faults are drawn from one seed; clients, subscribers, a migration driver and
//! three VM hosts (leases, the real reconciler over simulated hypervisors, failovers, the
//! watchdog) work meanwhile; every run ends healed and settled, and checkers ([`check`],
//! [`record`]) read what it recorded: Raft safety, linearizability of guest reads and writes
//! (CAS included), the watch properties of the event history, the domain invariants at every
//! applied state, and never two running copies of a guest.
//!
//! Everything in a run is a function of its seed: `SWITCHYARD_SIM_SEED=<seed> cargo test -p
//! switchyard-sim --test sim` replays one exactly (the same trace, byte for byte), and
//! `switchyard-sim --seeds N` runs many (docs/simulation.md).
//!
//! What is not simulated: the coordinators' HTTP edges and proposer, the agents' event streams
//! and stores, live migration's transfer, and RocksDB's own I/O (the real store keeps its
//! conformance, crash and corruption tests; the agent its process and QEMU tests).

pub mod check;
pub mod disk;
pub mod net;
pub mod record;
pub mod runtime;
mod world;

use std::collections::BTreeMap;
use std::io::Cursor;

use switchyard_protocol::entry::{NodeInfo, Proposals, Response};

pub use disk::Bug;
pub use world::{Options, REGISTERS};

openraft::declare_raft_types!(
    /// The coordinators' Raft types, with snapshots in memory and the simulation's runtime.
    pub SimConfig:
        D = Proposals,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<SimConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = runtime::SimRuntime,
);

pub type LogId = openraft::LogId<u64>;
pub type Entry = openraft::Entry<SimConfig>;
pub type Vote = openraft::Vote<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, NodeInfo>;

/// What one run found.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    /// Digest of the trace: equal for two runs of one seed.
    pub digest: u64,
    pub trace: Vec<String>,
    pub violations: Vec<String>,
    pub faults: BTreeMap<&'static str, u64>,
    /// Client operations checked for linearizability.
    pub ops: usize,
    /// Events in the final history.
    pub events: usize,
    pub deliveries: usize,
    /// Guest starts checked for a second running copy.
    pub starts: u64,
    pub failovers: u64,
}

/// Runs one simulation.
pub fn run(opts: &Options) -> Report {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time().start_paused(true);
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&opts.seed.to_le_bytes()));
    let rt = builder.build().expect("a current-thread runtime builds");
    runtime::seed_thread(opts.seed);
    runtime::record_panics();
    let world = world::World::new(opts.clone());
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            runtime::start_clocks();
            world.run().await;
        })
    }));
    let history = world.final_history();
    rt.shutdown_background();
    let mut rec = std::mem::take(&mut *world.rec.locked());
    for p in runtime::take_panics() {
        rec.violation(format!("panic: {p}"));
    }
    if ran.is_err() {
        rec.violation("the run ended in a panic".into());
    }
    finish(opts.seed, &mut rec, &history)
}

/// The checks over the whole run, once it settled.
fn finish(seed: u64, rec: &mut record::Recorder, history: &[switchyard_protocol::Event]) -> Report {
    type Key = (String, u128);
    let by_rev: BTreeMap<u64, (Key, Vec<u8>)> = history
        .iter()
        .map(|e| (e.revision, ((e.actor.clone(), e.request_id.0), switchyard_protocol::codec::encode(e))))
        .collect();
    let mut last_of: BTreeMap<Key, u64> = BTreeMap::new();
    for e in history {
        last_of.insert((e.actor.clone(), e.request_id.0), e.revision);
    }
    // Every acknowledged write is in the final history where its answer said.
    for (actor, id, rev) in std::mem::take(&mut rec.acked) {
        match by_rev.get(&rev) {
            Some((k, _)) if *k == (actor.clone(), id.0) => {}
            _ => rec.violation(format!(
                "{actor}'s acknowledged request {} (revision {rev}) is not in the final history",
                id.0
            )),
        }
    }
    // A write whose answer was lost took effect if and only if the history holds its events.
    for (actor, id, key, call, invoke) in std::mem::take(&mut rec.pending) {
        let Some(&rev) = last_of.get(&(actor.clone(), id.0)) else { continue };
        let outcome = match call {
            check::Call::Remove { .. } => check::Outcome::Removed,
            _ => check::Outcome::Wrote { version: rev },
        };
        let client = actor.trim_start_matches("client-").parse().unwrap_or(0);
        rec.ops.push(check::Op { client, key, call, invoke, done: None, outcome });
    }
    for v in check::linearizable_all(&rec.ops) {
        rec.violation(v);
    }
    for v in check::watch(&rec.deliveries, &by_rev).into_iter().take(10) {
        rec.violation(v);
    }
    let mut all = String::new();
    for line in &rec.trace {
        all.push_str(line);
        all.push('\n');
    }
    Report {
        seed,
        digest: record::digest(all.as_bytes()),
        trace: std::mem::take(&mut rec.trace),
        violations: std::mem::take(&mut rec.violations),
        faults: std::mem::take(&mut rec.faults),
        ops: rec.ops.len(),
        events: history.len(),
        deliveries: rec.deliveries.len(),
        starts: rec.starts,
        failovers: rec.failovers,
    }
}
pub type StorageError = openraft::StorageError<u64>;

/// The outcome of many runs.
#[derive(Debug, Default)]
pub struct Summary {
    pub runs: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub ops: u64,
    pub events: u64,
    pub deliveries: u64,
    pub starts: u64,
    pub failovers: u64,
    /// The runs that found violations.
    pub failures: Vec<Report>,
    pub took: std::time::Duration,
}

impl Summary {
    pub fn failed(&self) -> usize {
        self.failures.len()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.failures {
            writeln!(f, "seed {} FAILED ({} violations):", r.seed, r.violations.len())?;
            for v in &r.violations {
                writeln!(f, "  {v}")?;
            }
            writeln!(f, "  the run's last lines:")?;
            for line in r.trace.iter().rev().take(25).rev() {
                writeln!(f, "    {line}")?;
            }
            writeln!(f, "  replay: SWITCHYARD_SIM_SEED={} cargo test -p switchyard-sim --test sim", r.seed)?;
        }
        let mix: Vec<String> = self.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(f, "fault mix: {}", mix.join(", "))?;
        writeln!(
            f,
            "{} seeds in {:.1} s: {} faults, {} client operations checked, {} events, {} deliveries checked, {} guest starts checked ({} failovers completed)",
            self.runs,
            self.took.as_secs_f64(),
            self.faults.values().sum::<u64>(),
            self.ops,
            self.events,
            self.deliveries,
            self.starts,
            self.failovers
        )?;
        let violations: usize = self.failures.iter().map(|r| r.violations.len()).sum();
        write!(f, "{violations} violations")
    }
}

/// Runs every option set on `threads` threads (one simulation per thread at a time).
pub fn run_many(runs: Vec<Options>, threads: usize) -> Summary {
    let started = std::time::Instant::now();
    let queue = std::sync::Mutex::new(runs.into_iter());
    let reports = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let Some(opts) = queue.locked().next() else { break };
                let r = run(&opts);
                reports.locked().push(r);
            });
        }
    });
    let mut reports = reports.into_inner().unwrap();
    reports.sort_by_key(|r| r.seed);
    let mut sum = Summary { runs: reports.len() as u64, ..Summary::default() };
    for r in reports {
        for (k, v) in &r.faults {
            *sum.faults.entry(k).or_default() += v;
        }
        sum.ops += r.ops as u64;
        sum.events += r.events as u64;
        sum.deliveries += r.deliveries as u64;
        sum.starts += r.starts;
        sum.failovers += r.failovers;
        if !r.violations.is_empty() {
            sum.failures.push(r);
        }
    }
    sum.took = started.elapsed();
    sum
}

/// Locks a mutex whatever happened to its last holder: a node task that panics while holding
/// one (a broken store under test can make openraft panic) is recorded as a violation, and the
/// run goes on to report it.
pub(crate) trait Lock<T> {
    fn locked(&self) -> std::sync::MutexGuard<'_, T>;
}

impl<T> Lock<T> for std::sync::Mutex<T> {
    fn locked(&self) -> std::sync::MutexGuard<'_, T> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
