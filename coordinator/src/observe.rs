//! Counts, for `/metrics`, what this node sees happen: leader changes (from Raft's metrics),
//! and — from the events it applies, read back from its own history — migrations finishing
//! and the time each spent in each phase, failovers, and host failures. Every node counts
//! the same events, so any coordinator's `/metrics` tells the cluster's story; the counts
//! start at zero when the process starts, as Prometheus counters do.

use std::collections::BTreeMap;
use std::sync::Arc;

use switchyard_protocol::{Event, EventPayload, MigrationId, Phase, Timestamp};

use crate::metrics::{Metrics, OutcomeLabel, PhaseLabel};
use crate::node::Node;

/// Events read from the history per step.
const PAGE_EVENTS: usize = 512;

/// Runs until the node stops.
pub async fn run(node: Arc<Node>) {
    let m = node.metrics.clone();
    // Leadership only: the full metrics change at every write.
    let mut raft = node.raft.server_metrics();
    let mut leader = raft.borrow().current_leader;
    if leader.is_some() {
        m.leader_changes.inc();
    }
    let history = node.sm.history();
    let mut applied_rx = node.sm.watch_revision();
    let mut next = node.sm.applied_meta().revision + 1;
    // Where each migration this node saw start is, and since when (commit time).
    let mut phases: BTreeMap<MigrationId, (Phase, Timestamp)> = BTreeMap::new();
    loop {
        tokio::select! {
            changed = raft.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = raft.borrow_and_update().current_leader;
                if now.is_some() && now != leader {
                    m.leader_changes.inc();
                }
                if now.is_some() {
                    leader = now;
                }
            }
            changed = applied_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let applied = *applied_rx.borrow_and_update();
                while next <= applied {
                    match history.events_from(next, PAGE_EVENTS) {
                        Ok(page) if !page.is_empty() => {
                            for e in &page {
                                count(&m, &mut phases, e);
                                next = e.revision + 1;
                            }
                        }
                        // Compacted away (or a read error): those events are not counted.
                        _ => next = applied + 1,
                    }
                }
            }
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
