//! What `/metrics` serves (Prometheus/OpenMetrics text, `prometheus-client`): the metrics the
//! node's parts count as they work (commits, fsyncs, batches, snapshots, subscribers, and the
//! events the node applies: migrations' outcomes and phase durations, failovers, host
//! failures), and gauges set from the node's state when scraped (Raft, hosts, migrations in
//! flight, packages left unprotected). Names follow Prometheus conventions: a `switchyard_`
//! prefix, base units (seconds), `_total` counters.
//!
//! The node's parts hold an `Arc<Metrics>` and update the instrumented ones; the scrape-time
//! gauges are filled by `Node::metrics_text`, which knows the state.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostStateLabel {
    pub host: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// A stage of a write's way through the coordinators ([`Metrics::write_stage_seconds`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

/// The stages a write is timed in, each on the node where it happens. A stage's time includes
/// the stages it waits for: `api` ⊃ `proposer_queue` + `proposal_commit` (its own metric) ⊃
/// `replicate_rpc` ⊃ `follower_append` ⊃ the follower's `log_durable`.
pub mod stage {
    /// Leader: an API write request, from its parsed body to its answer.
    pub const API: &str = "api";
    /// Leader: a proposal waiting in the batcher for a free commit slot.
    pub const PROPOSER_QUEUE: &str = "proposer_queue";
    /// Leader: one append-entries RPC that carries entries, sent → answered.
    pub const REPLICATE_RPC: &str = "replicate_rpc";
    /// Follower: an append-entries request that carries entries, received → answer ready
    /// (includes its log write and fsync).
    pub const FOLLOWER_APPEND: &str = "follower_append";
    /// Leader: writing appended entries to the log store (not synced; a follower writes and
    /// syncs in one call, timed as `log_durable`).
    pub const LOG_APPEND: &str = "log_append";
    /// Any node: appended entries written → on disk (waiting for and doing the WAL fsync); on a
    /// follower, the one synced write of its append.
    pub const LOG_DURABLE: &str = "log_durable";
    /// Any node: applying committed entries to the state machine.
    pub const APPLY: &str = "apply";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PackageLabel {
    pub package: String,
}

type FGauge = Gauge<f64, AtomicU64>;

fn latency() -> Histogram {
    // 50 µs .. ~13 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

fn stage_time() -> Histogram {
    // 10 µs .. ~1.3 s, 1.5× apart: a single write's stages are tens to hundreds of µs.
    Histogram::new(exponential_buckets(0.000_01, 1.5, 30))
}

fn phase_time() -> Histogram {
    // 1 ms .. ~9 min.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// Every metric of one coordinator.
pub struct Metrics {
    registry: Registry,
    // Counted as the node works.
    pub leader_changes: Counter,
    pub commit_seconds: Histogram,
    pub batch_size: Histogram,
    pub fsync_seconds: Histogram,
    /// Where a write's time goes, by [`stage`].
    pub write_stage_seconds: Family<StageLabel, Histogram, fn() -> Histogram>,
    pub snapshot_builds: Counter,
    pub snapshot_build_seconds: Histogram,
    pub subscribers: Gauge,
    pub events_streamed: Counter,
    pub migrations_finished: Family<OutcomeLabel, Counter>,
    pub migration_phase_seconds: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    pub failovers: Family<OutcomeLabel, Counter>,
    pub hosts_failed: Counter,
    // Set from the state when scraped.
    pub term: Gauge,
    pub is_leader: Gauge,
    pub raft_fault: Gauge,
    pub last_log_index: Gauge,
    pub applied_index: Gauge,
    pub revision: Gauge,
    pub host_applied_revision: Family<HostLabel, Gauge>,
    pub host_lag: Family<HostLabel, Gauge>,
    pub host_in_sync: Family<HostLabel, Gauge>,
    pub host_last_report_seconds: Family<HostLabel, FGauge>,
    pub host_state: Family<HostStateLabel, Gauge>,
    pub migrations_in_flight: Family<PhaseLabel, Gauge>,
    /// Set by the leader's migration driver (0 elsewhere).
    pub migrations_stuck: Gauge,
    pub packages_switching_disabled: Gauge,
    pub package_switching_disabled_seconds: Family<PackageLabel, FGauge>,
    pub failovers_in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("switchyard");
        let m = Metrics {
            leader_changes: Counter::default(),
            commit_seconds: latency(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            fsync_seconds: latency(),
            write_stage_seconds: Family::new_with_constructor(stage_time as fn() -> Histogram),
            snapshot_builds: Counter::default(),
            snapshot_build_seconds: phase_time(),
            subscribers: Gauge::default(),
            events_streamed: Counter::default(),
            migrations_finished: Family::default(),
            migration_phase_seconds: Family::new_with_constructor(phase_time as fn() -> Histogram),
            failovers: Family::default(),
            hosts_failed: Counter::default(),
            term: Gauge::default(),
            is_leader: Gauge::default(),
            raft_fault: Gauge::default(),
            last_log_index: Gauge::default(),
            applied_index: Gauge::default(),
            revision: Gauge::default(),
            host_applied_revision: Family::default(),
            host_lag: Family::default(),
            host_in_sync: Family::default(),
            host_last_report_seconds: Family::default(),
            host_state: Family::default(),
            migrations_in_flight: Family::default(),
            migrations_stuck: Gauge::default(),
            packages_switching_disabled: Gauge::default(),
            package_switching_disabled_seconds: Family::default(),
            failovers_in_flight: Gauge::default(),
            registry: Registry::default(),
        };
        r.register("raft_leader_changes", "Leader changes this node saw", m.leader_changes.clone());
        r.register("raft_term", "Current Raft term", m.term.clone());
        r.register("raft_is_leader", "1 while this node leads", m.is_leader.clone());
        r.register(
            "raft_fault",
            "1 while Raft is stopped on a storage error (a full or failing disk): writes are refused, stale reads served",
            m.raft_fault.clone(),
        );
        r.register("raft_last_log_index", "Index of the last entry in this node's log", m.last_log_index.clone());
        r.register("raft_applied_index", "Index of the last entry applied here", m.applied_index.clone());
        r.register("applied_revision", "Revision of the last event applied here", m.revision.clone());
        r.register_with_unit(
            "proposal_commit",
            "Time from a batch's proposal to its commit and apply",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        r.register("proposal_batch_size", "Proposals packed into one log entry", m.batch_size.clone());
        r.register_with_unit(
            "log_fsync",
            "Duration of durable (fsynced) writes to the log store",
            Unit::Seconds,
            m.fsync_seconds.clone(),
        );
        r.register_with_unit(
            "write_stage",
            "Time a write spends in each stage on this node (api, proposer_queue, replicate_rpc, follower_append, log_append, log_durable, apply)",
            Unit::Seconds,
            m.write_stage_seconds.clone(),
        );
        r.register("snapshot_builds", "Snapshots built by this node", m.snapshot_builds.clone());
        r.register_with_unit("snapshot_build", "Snapshot build time", Unit::Seconds, m.snapshot_build_seconds.clone());
        r.register("subscribers", "Event subscriptions open on this node", m.subscribers.clone());
        r.register("events_streamed", "Events sent to subscribers by this node", m.events_streamed.clone());
        r.register("migrations_finished", "Migrations finished, by outcome", m.migrations_finished.clone());
        r.register_with_unit(
            "migration_phase",
            "Time a migration spent in a phase (by commit times)",
            Unit::Seconds,
            m.migration_phase_seconds.clone(),
        );
        r.register("migrations_in_flight", "Migrations in flight, by phase", m.migrations_in_flight.clone());
        r.register(
            "migrations_stuck",
            "Migrations past their phase's timeout after the owner switch, which cannot roll back (leader only)",
            m.migrations_stuck.clone(),
        );
        r.register(
            "failovers",
            "Failover events, by outcome (started, completed, attempt_failed, failed)",
            m.failovers.clone(),
        );
        r.register("failovers_in_flight", "Failovers under way", m.failovers_in_flight.clone());
        r.register("hosts_failed", "Hosts declared failed", m.hosts_failed.clone());
        r.register(
            "host_applied_revision",
            "Revision a host's agent last reported applied (leader only)",
            m.host_applied_revision.clone(),
        );
        r.register("host_lag_revisions", "How far a host's agent is behind the log (leader only)", m.host_lag.clone());
        r.register(
            "host_in_sync",
            "1 when a host's agent holds the log's configuration (leader only)",
            m.host_in_sync.clone(),
        );
        r.register_with_unit(
            "host_last_report_age",
            "Time since a host's agent last reported (leader only)",
            Unit::Seconds,
            m.host_last_report_seconds.clone(),
        );
        r.register(
            "host_state",
            "1 for each host's state (active, maintenance, unreachable, failed)",
            m.host_state.clone(),
        );
        r.register(
            "packages_switching_disabled",
            "Packages whose global switching is disabled: their guests are not protected",
            m.packages_switching_disabled.clone(),
        );
        r.register_with_unit(
            "package_switching_disabled",
            "How long a package's global switching has been disabled",
            Unit::Seconds,
            m.package_switching_disabled_seconds.clone(),
        );
        // Every outcome shows from the start (at 0), so a rate or an alert has a series to
        // read before the first one happens.
        for o in ["completed", "failed", "aborted"] {
            let _ = m.migrations_finished.get_or_create(&OutcomeLabel { outcome: o.into() });
        }
        for o in ["started", "completed", "attempt_failed", "failed"] {
            let _ = m.failovers.get_or_create(&OutcomeLabel { outcome: o.into() });
        }
        Metrics { registry: r, ..m }
    }

    /// Sets the in-flight count of every phase to 0 (a scrape then counts the migrations).
    pub fn reset_in_flight(&self) {
        self.migrations_in_flight.clear();
        for p in switchyard_protocol::Phase::ALL.iter().filter(|p| !p.is_terminal()) {
            self.migrations_in_flight.get_or_create(&PhaseLabel { phase: p.as_str().into() }).set(0);
        }
    }

    /// Notes `took` for a write's `stage` (one of [`stage`]).
    pub fn stage(&self, stage: &'static str, took: Duration) {
        self.write_stage_seconds.get_or_create(&StageLabel { stage }).observe(took.as_secs_f64());
    }

    /// The text a scrape gets.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String never fails");
        out
    }
}

/// Keeps [`Metrics::subscribers`] counting one open subscription while it lives.
pub struct Subscribed(Gauge);

impl Subscribed {
    pub fn new(g: &Gauge) -> Subscribed {
        g.inc();
        Subscribed(g.clone())
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.dec();
    }
}
