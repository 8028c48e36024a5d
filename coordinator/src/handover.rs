//! Handing leadership over before a leader stops, so a graceful stop (a rolling restart, an
//! upgrade) costs the cluster one election round trip of write unavailability instead of a
//! leader lease plus an election timeout (≈ 0.5–1 s with the defaults). etcd does the same on a
//! graceful stop.
//!
//! The leader (already refusing new writes):
//! 1. picks the voter whose log matches its own last entry, waiting for one to catch up;
//! 2. stops its Raft node, so no heartbeat renews its lease on the followers any more;
//! 3. tells every other voter that it hands over (`POST /raft/handover`): each ends its lease
//!    of this leader (openraft patch 7, `Trigger::expire_leader_lease`), so it grants its vote
//!    to an up-to-date candidate at once (a heartbeat this leader sent before it stopped and
//!    that arrives after the notice does not renew the lease);
//! 4. tells the chosen one, last, to campaign.
//!
//! Why it is safe: only Raft's votes and terms decide an election, and they are untouched; the
//! lease only keeps a healthy leader from being deposed, and this leader is leaving. The target
//! holds every entry the leader had, so it wins, and it commits the old leader's uncommitted
//! tail with its first entry. If anything fails (no follower caught up, a message lost), the
//! followers elect a leader as they would after a crash.

use std::time::Duration;

use openraft::{Raft, ServerState};
use switchyard_storage::{NodeId, NodeInfo, TypeConfig};

use crate::network::{Handover, Network};

/// Hands leadership over if this node leads (and `wait` is not zero, which turns the handover
/// off). Answers the node it handed over to (`None` when it did not). Stops this node's Raft
/// node when it handed over.
pub async fn hand_over(raft: &Raft<TypeConfig>, network: &Network, wait: Duration) -> anyhow::Result<Option<NodeId>> {
    let m = raft.metrics().borrow().clone();
    if m.state != ServerState::Leader || wait.is_zero() {
        return Ok(None);
    }
    let me = m.id;
    let voters: Vec<(NodeId, NodeInfo)> = m
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != me)
        .filter_map(|id| m.membership_config.nodes().find(|(n, _)| **n == id).map(|(n, info)| (*n, info.clone())))
        .collect();
    if voters.is_empty() {
        return Ok(None);
    }
    // 1. A voter that holds our last entry (waiting for the log to settle).
    let caught_up = raft
        .wait(Some(wait))
        .metrics(
            |m| {
                let last = m.last_log_index;
                m.replication
                    .as_ref()
                    .is_some_and(|r| voters.iter().any(|(id, _)| r.get(id).is_some_and(|l| l.map(|l| l.index) == last)))
            },
            "a follower to hold the leader's last entry",
        )
        .await
        .map_err(|e| anyhow::anyhow!("no follower caught up within {wait:?}: {e}"))?;
    let last = caught_up.last_log_index;
    let replication = caught_up.replication.clone().unwrap_or_default();
    let (target, target_info) = voters
        .iter()
        .find(|(id, _)| replication.get(id).is_some_and(|l| l.map(|l| l.index) == last))
        .cloned()
        .expect("the wait found one");
    let vote = caught_up.vote;
    // 2. Stop heartbeating: from here on nothing renews our lease on the followers.
    raft.shutdown().await.map_err(|e| anyhow::anyhow!("stop raft: {e}"))?;
    // 3. Every other voter ends its lease of us, then 4. the target campaigns.
    let others = voters.iter().filter(|(id, _)| *id != target).map(|(id, info)| {
        let msg = Handover { vote, elect: false };
        async move { (id, network.handover(*id, info, &msg).await) }
    });
    for (id, r) in futures_util::future::join_all(others).await {
        if let Err(e) = r {
            tracing::warn!(node = id, %e, "handover notice not delivered");
        }
    }
    network
        .handover(target, &target_info, &Handover { vote, elect: true })
        .await
        .map_err(|e| anyhow::anyhow!("node {target} did not take the handover: {e}"))?;
    Ok(Some(target))
}

/// A follower's side: end the lease of the leader of `h.vote`, and campaign if asked to.
pub async fn take(raft: &Raft<TypeConfig>, h: Handover) -> Result<(), String> {
    raft.trigger().expire_leader_lease(h.vote).await.map_err(|e| e.to_string())?;
    if h.elect {
        raft.trigger().elect().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
