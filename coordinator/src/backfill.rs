//! Filling this node's event history after a snapshot install.
//!
//! Snapshots carry the state, not the history (their size and build time follow the state, not
//! the length of the history). A node that installs one — a member that fell behind the
//! leader's log, a new member, one left out of a seed — holds the history from the snapshot's
//! revision on; this task fetches the older part from its peers (`/raft/history`), newest first,
//! down to the node's history floor (revision 1, or the retention window's start). The history
//! stays one contiguous range throughout, so a subscriber is never led into a hole: one asking
//! for revisions not yet fetched is answered `unavailable` and its client subscribes through
//! another coordinator, unless every peer has let them go too (then `compacted`, and it
//! re-reads the full state).
//!
//! Why the history is not lost when the snapshot carries none: every committed entry is in the
//! log of a majority, and a node applies what its own log holds, so each event is in the history
//! of every node of the majority that committed it. A node only installs a snapshot for entries
//! its log never had.

use std::sync::Arc;
use std::time::Duration;

use crate::network::Network;
use crate::node::Node;

/// How often the history's start is checked while there is nothing to fetch.
const IDLE: Duration = Duration::from_secs(1);

/// Runs until the node stops.
pub async fn run(node: Arc<Node>, network: Network) {
    let mut reported: Option<u64> = None;
    loop {
        let fetched = tokio::select! {
            f = step(&node, &network) => f,
            _ = node.stopped() => return,
        };
        match fetched {
            Step::Fetched { first } => {
                if reported.is_none() {
                    tracing::info!(first, "filling the event history from peers after a snapshot install");
                }
                reported = Some(first);
                continue;
            }
            Step::Whole => {
                if let Some(first) = reported.take() {
                    tracing::info!(first, "the event history is whole again");
                }
            }
            Step::NoSource { first } => {
                tracing::debug!(first, "no peer holds the history before this node's; asking again later");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(IDLE) => {}
            _ = node.stopped() => return,
        }
    }
}

enum Step {
    /// Events were stored; the history now starts at `first`.
    Fetched { first: u64 },
    /// The history reaches its floor.
    Whole,
    /// No peer answered with the events before `first`.
    NoSource { first: u64 },
}

async fn step(node: &Node, network: &Network) -> Step {
    let first = match node.sm.history_first() {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(%e, "read the event history's start");
            return Step::NoSource { first: 0 };
        }
    };
    if first <= node.sm.history_floor() {
        return Step::Whole;
    }
    // The leader first: it never installs snapshots, so it holds what it has not compacted.
    let (leader, members) = {
        let m = node.raft.metrics();
        let m = m.borrow();
        let members: Vec<_> = m.membership_config.nodes().map(|(id, n)| (*id, n.clone())).collect();
        (m.current_leader, members)
    };
    let mut peers: Vec<_> = members.into_iter().filter(|(id, _)| *id != node.id).collect();
    peers.sort_by_key(|(id, _)| Some(*id) != leader);
    let mut all_answered = true;
    for (id, info) in peers {
        let events = match network.history(id, &info, first).await {
            Ok(events) => events,
            Err(e) => {
                tracing::debug!(peer = id, %e, "history backfill");
                all_answered = false;
                continue;
            }
        };
        if events.last().map(|e| e.revision + 1) != Some(first) {
            continue;
        }
        match node.sm.backfill(events).await {
            Ok(first) => return Step::Fetched { first },
            // The start moved meanwhile (a snapshot installed): look again.
            Err(e) => {
                tracing::info!(peer = id, %e, "history backfill");
                return Step::NoSource { first };
            }
        }
    }
    // Every peer answered (or there is none) and none holds it (retention let it go everywhere,
    // say after the window was widened): subscribers asking for it are told `compacted`. A peer
    // that did not answer may hold it, so then they are sent on meanwhile.
    if all_answered {
        node.set_history_held_nowhere_before(first);
    }
    Step::NoSource { first }
}
