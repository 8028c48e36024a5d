//! The failover driver: on the leader, turns host failures into failovers, one log commit per
//! step, so a leader killed at any point leaves a saga the next leader resumes from the log.
//! The decisions are `switchyard_protocol::ha`'s ([`ha::plan_failovers`], [`ha::failbacks`]);
//! this task feeds them the state and its clock, and commits what they answer.
//!
//! - A guest owned by a failed host, running, with its package's switching enabled, and with no
//!   migration in flight: `StartFailover` to the node its package's policy picks
//!   ([`switchyard_protocol::ha::choose`]). With no eligible node the guest waits, down, until
//!   one becomes eligible (`ha status` says why).
//! - The target's agent commits `CompleteFailover` once the guest runs there, or
//!   `FailFailoverAttempt` once it has made sure no copy runs there. The driver fails an
//!   attempt itself when the target fails too, or when it has not started the guest within
//!   `ha.start_timeout_ms` (by this leader's clock, from when it first saw the attempt); a live
//!   target then stops any copy it started meanwhile and releases the attempt
//!   (`ReleaseFailoverAttempt`).
//! - A failed attempt goes to the next eligible node once it is released (or its target
//!   failed); when none is left, `AbandonFailover`.
//! - Automatic failback (a package with `failback_policy = automatic` and a node list): while
//!   its guest runs elsewhere than the list's first node and that node is eligible, the driver
//!   requests an online migration back to it, with every check a migration has, while the
//!   limits of moves the cluster starts itself allow (`[migration] max_in_flight_per_target`,
//!   `max_in_flight`, as for drains). A request
//!   refused, or a move that ends without the guest home, is tried again after
//!   [`FAILBACK_RETRY`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use switchyard_protocol::ha;
use switchyard_protocol::placement::MoveBudget;
use switchyard_protocol::{Command, FencingToken, Name};

use super::Pace;
use crate::node::Node;

/// How long after a failback attempt the driver tries again for the same guest.
pub const FAILBACK_RETRY: Duration = Duration::from_secs(60);

/// Runs on every coordinator; acts only while it is the leader.
pub async fn run(s: Arc<Node>) {
    let mut revision = s.sm.watch_revision();
    let mut metrics = s.raft.server_metrics();
    // When this leader first saw each attempt (the start timeout's origin).
    let mut seen: HashMap<FencingToken, Instant> = HashMap::new();
    // When this leader last requested each guest's failback.
    let mut failbacks: HashMap<Name, Instant> = HashMap::new();
    let timeout = Duration::from_millis(s.config.ha.start_timeout_ms);
    let limits = s.config.migration.move_limits();
    let mut pace = Pace::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            r = revision.changed() => if r.is_err() { return },
            m = metrics.changed() => if m.is_err() { return },
        }
        if metrics.borrow().state != ServerState::Leader {
            seen.clear();
            continue;
        }
        pace.wait(&mut revision).await;
        if s.sm.read(|st| st.importing().is_some()) {
            continue;
        }
        let commands = s.sm.read(|st| {
            failbacks.retain(|_, at| at.elapsed() < FAILBACK_RETRY);
            let mut commands = ha::plan_failovers(st, &mut seen, Instant::now(), timeout);
            // Failbacks are moves the cluster starts itself: held to the same limits as drains.
            let mut budget = MoveBudget::new(st, limits);
            for (guest, command) in ha::failbacks(st) {
                if failbacks.contains_key(&guest) {
                    continue;
                }
                if let Command::RequestMigration { target, .. } = &command {
                    if !budget.allows(target) {
                        continue;
                    }
                    budget.take(target);
                }
                failbacks.insert(guest.clone(), Instant::now());
                commands.push((guest, command));
            }
            commands
        });
        for (guest, command) in commands {
            let kind = command.kind();
            let actor = match command {
                Command::RequestMigration { .. } => format!("failback:{}", s.id),
                _ => format!("failover:{}", s.id),
            };
            match s.propose(s.clock().request_id(), actor, command).await {
                Ok(Ok(_)) => tracing::info!(%guest, kind, "failover step committed"),
                Ok(Err(r)) => tracing::debug!(%guest, kind, %r, "failover step refused"),
                Err(e) => {
                    tracing::debug!(%guest, kind, %e, "failover step not committed; will retry");
                    break;
                }
            }
        }
    }
}
