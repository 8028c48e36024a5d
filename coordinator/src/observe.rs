//! Counts, for `/metrics`, what this node sees happen: leader changes (from Raft's metrics),
//! and — from the events it applies, as the store applies them ([`Observed`]) — migrations
//! finishing and the time each spent in each phase, failovers, and host failures. Every node
//! counts the same events, so any coordinator's `/metrics` tells the cluster's story; the
//! counts start at zero when the process starts, as Prometheus counters do.
//!
//! The events are counted as the store hands them over after writing them, not read back from
//! the history: a read at every applied revision cost each node a history iterator and a decode
//! per write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_protocol::{Event, EventPayload, MigrationId, Phase, Timestamp};

use crate::metrics::{stage, Metrics, OutcomeLabel, PhaseLabel};
use crate::node::Node;

/// Counts leader changes until the node stops.
pub async fn run(node: Arc<Node>) {
    let m = node.metrics.clone();
    // Leadership only: the full metrics change at every write.
    let mut raft = node.raft.server_metrics();
    let mut leader = raft.borrow().current_leader;
    if leader.is_some() {
        m.leader_changes.inc();
    }
    while raft.changed().await.is_ok() {
        let now = raft.borrow_and_update().current_leader;
        if now.is_some() && now != leader {
            m.leader_changes.inc();
        }
        if now.is_some() {
            leader = now;
        }
    }
}

/// What the store tells this node's metrics ([`switchyard_storage::Observer`]): the storage
/// stages of a write, fsyncs, snapshot builds, and the events applied.
pub struct Observed {
    metrics: Arc<Metrics>,
    /// Where each migration this node saw start is, and since when (commit time).
    phases: Mutex<BTreeMap<MigrationId, (Phase, Timestamp)>>,
}

impl Observed {
    pub fn new(metrics: Arc<Metrics>) -> Observed {
        Observed { metrics, phases: Mutex::default() }
    }
}

impl switchyard_storage::Observer for Observed {
    fn synced(&self, took: Duration) {
        self.metrics.fsync_seconds.observe(took.as_secs_f64());
    }

    fn snapshot_built(&self, took: Duration) {
        self.metrics.snapshot_builds.inc();
        self.metrics.snapshot_build_seconds.observe(took.as_secs_f64());
    }

    fn appended(&self, took: Duration) {
        self.metrics.stage(stage::LOG_APPEND, took);
    }

    fn durable(&self, took: Duration) {
        self.metrics.stage(stage::LOG_DURABLE, took);
    }

    fn applied(&self, took: Duration, events: &[Event]) {
        self.metrics.stage(stage::APPLY, took);
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            count(&self.metrics, &mut phases, e);
        }
    }
}

fn count(m: &Metrics, phases: &mut BTreeMap<MigrationId, (Phase, Timestamp)>, e: &Event) {
    let outcome = |o: &str| OutcomeLabel { outcome: o.into() };
    match &e.payload {
        EventPayload::MigrationRequested { migration } => {
            phases.insert(migration.id, (migration.phase, e.time));
        }
        EventPayload::MigrationPhaseChanged { id, phase, .. } => {
            if let Some((was, since)) = phases.get(id) {
                let secs = e.time.0.saturating_sub(since.0) as f64 / 1000.0;
                m.migration_phase_seconds.get_or_create(&PhaseLabel { phase: was.as_str().into() }).observe(secs);
            }
            if phase.is_terminal() {
                m.migrations_finished.get_or_create(&outcome(phase.as_str())).inc();
                phases.remove(id);
            } else {
                phases.insert(*id, (*phase, e.time));
            }
        }
        EventPayload::HostFailed { .. } => {
            m.hosts_failed.inc();
        }
        EventPayload::FailoverStarted { .. } => {
            m.failovers.get_or_create(&outcome("started")).inc();
        }
        EventPayload::FailoverCompleted { .. } => {
            m.failovers.get_or_create(&outcome("completed")).inc();
        }
        EventPayload::FailoverAttemptFailed { .. } => {
            m.failovers.get_or_create(&outcome("attempt_failed")).inc();
        }
        EventPayload::FailoverFailed { .. } => {
            m.failovers.get_or_create(&outcome("failed")).inc();
        }
        _ => {}
    }
}
