//! The migration driver's loop: on the leader, takes every in-flight migration's next step as
//! [`crate::migration::next_step`] decides it, and proposes it. Phase deadlines count on this
//! leader's monotonic clock from when it first saw each migration in its current phase: a new
//! leader gives a phase its whole timeout again (a timeout is about progress, never safety).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use switchyard_protocol::{FencingToken, Migration, MigrationId};

use crate::migration::{command_for, next_step, stats_command, stuck, Step};
use crate::node::Node;

/// Runs until the process stops; acts only while this coordinator leads.
pub async fn run(s: Arc<Node>) {
    let mut revision = s.sm.watch_revision();
    let mut metrics = s.raft.server_metrics();
    let mut wait = Duration::from_millis(200);
    // When this leader first saw each in-flight migration in its current phase (by the phase's
    // fencing token).
    let mut seen: HashMap<MigrationId, (FencingToken, Instant)> = HashMap::new();
    // Stuck migrations already reported, by their phase's token (reported once per phase).
    let mut reported_stuck: HashMap<MigrationId, FencingToken> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = revision.changed() => if r.is_err() { return },
            m = metrics.changed() => if m.is_err() { return },
            _ = s.reports.arrived.notified() => {}
        }
        wait = Duration::from_millis(1000);
        if metrics.borrow().state != ServerState::Leader {
            s.sm.read(|st| s.reports.retain(|id| st.migration(id).is_some_and(|m| !m.phase.is_terminal())));
            seen.clear();
            reported_stuck.clear();
            s.metrics.migrations_stuck.set(0);
            continue;
        }
        // While a restore imports history, every step would be refused: wait for its end.
        if s.sm.read(|st| st.importing().is_some()) {
            continue;
        }
        let now = Instant::now();
        let mut stuck_now = Vec::new();
        let steps: Vec<(Migration, Step, Option<_>)> = s.sm.read(|st| {
            s.reports.retain(|id| st.migration(id).is_some_and(|m| !m.phase.is_terminal()));
            seen.retain(|id, _| st.migration(*id).is_some_and(|m| !m.phase.is_terminal()));
            st.in_flight_migrations()
                .map(|m| {
                    let token = m.current().token();
                    let since = match seen.get(&m.id) {
                        Some((t, at)) if *t == token => *at,
                        _ => {
                            seen.insert(m.id, (token, now));
                            now
                        }
                    };
                    let reports = s.reports.get(m.id, token);
                    if let Some(why) = stuck(m, now - since, &s.config.migration) {
                        stuck_now.push((m.id, token, why));
                    }
                    let step = next_step(m, st, reports.as_ref(), now - since, &s.config.migration);
                    let stats = stats_command(m, &step, reports.as_ref());
                    (m.clone(), step, stats)
                })
                .collect()
        });
        s.metrics.migrations_stuck.set(stuck_now.len() as i64);
        reported_stuck.retain(|id, _| stuck_now.iter().any(|(s, _, _)| s == id));
        for (id, token, why) in stuck_now {
            if reported_stuck.insert(id, token) != Some(token) {
                tracing::warn!(migration = %id, "{why}: `switchyard migration show {id}` says where it stands");
            }
        }
        for (m, step, stats) in steps {
            if let Step::Wait(d) = step {
                wait = wait.min(d.max(Duration::from_millis(10)));
                continue;
            }
            // The figures go into the history first; a refusal (the migration moved on) or a
            // lost proposal costs only the figures, never the step.
            if let Some((request_id, command)) = stats {
                match s.propose(request_id, format!("driver:{}", s.id), command).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(r)) => tracing::debug!(migration = %m.id, %r, "transfer figures refused"),
                    Err(e) => tracing::debug!(migration = %m.id, %e, "transfer figures not committed"),
                }
            }
            let Some((request_id, command)) = command_for(&m, &step) else { continue };
            match s.propose(request_id, format!("driver:{}", s.id), command).await {
                Ok(r) => match r {
                    Ok(_) => match &step {
                        Step::Fail(e) => {
                            tracing::warn!(migration = %m.id, guest = %m.guest, error = %e, "migration failed")
                        }
                        Step::Advance { to, .. } => {
                            tracing::info!(migration = %m.id, guest = %m.guest, from = %m.phase, to = %to, "migration advanced")
                        }
                        Step::Wait(_) => {}
                    },
                    // Someone moved it first (an abort, or this step already applied).
                    Err(r) => tracing::debug!(migration = %m.id, %r, "migration step refused"),
                },
                Err(e) => {
                    tracing::debug!(migration = %m.id, %e, "migration step not committed; will retry");
                    break;
                }
            }
            wait = Duration::from_millis(10);
        }
    }
}
