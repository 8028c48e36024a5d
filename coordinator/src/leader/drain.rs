//! The drain driver: on the leader, moves the guests of every host being drained
//! (`host drain`) as ordinary migrations, within the drain's own limit and the cluster's
//! (`[migration] max_in_flight_per_target`, `max_in_flight`), and ends each drain when its host
//! owns nothing (into maintenance, in the same commit) or only guests that cannot move. The
//! decisions are `switchyard_protocol::placement::drain_steps`, from the committed state alone
//! (read after a read barrier, so that a new leader counts its predecessor's last steps): a
//! leader killed between two steps leaves the next one the same decision, and a request
//! committed twice is refused the second time (the guest is already moving).

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use switchyard_protocol::placement::drain_steps;

use super::Pace;
use crate::node::Node;

/// Runs on every coordinator; acts only while it is the leader.
pub async fn run(s: Arc<Node>) {
    let mut revision = s.sm.watch_revision();
    let mut metrics = s.raft.server_metrics();
    let limits = s.config.migration.move_limits();
    let mut pace = Pace::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            r = revision.changed() => if r.is_err() { return },
            m = metrics.changed() => if m.is_err() { return },
        }
        if metrics.borrow().state != ServerState::Leader {
            continue;
        }
        // No drain, no work: the read barrier below costs a heartbeat round.
        if s.sm.read(|st| st.drains().next().is_none()) {
            continue;
        }
        pace.wait(&mut revision).await;
        // Decide only from a state that holds everything committed so far (a new leader may not
        // have applied its predecessor's last steps yet): the limits count them.
        if s.read_barrier(false).await.is_err() {
            continue;
        }
        let commands = s.sm.read(|st| if st.importing().is_some() { Vec::new() } else { drain_steps(st, limits) });
        for command in commands {
            let kind = command.kind();
            match s.propose(s.clock().request_id(), format!("drain:{}", s.id), command).await {
                Ok(Ok(_)) => tracing::info!(kind, "drain step committed"),
                Ok(Err(r)) => tracing::debug!(kind, %r, "drain step refused"),
                Err(e) => {
                    tracing::debug!(kind, %e, "drain step not committed; will retry");
                    break;
                }
            }
        }
    }
}
