//! The leader's liveness task: host leases and reachability, from the agents' reports held in
//! [`crate::liveness`], decided by [`ha::liveness_commands`]:
//!
//! - A host joins failure detection (`HostJoined`) with its agent's first report to a leader.
//! - A member host whose lease has expired by this leader's monotonic clock, plus the grace, is
//!   declared failed (`HostFailed`, with the evidence). A new leader counts its own start of
//!   leadership as every host's last renewal, so it gives every host a full lease first.
//! - A failed host rejoins (`HostRecovered`) once its agent reports again having applied the
//!   log past its failure: it has learned where its guests went before it is eligible again.
//! - Reachability (`unreachable` after `api.host_report_timeout_ms` of silence) is logged as
//!   before, for hosts that are not failed.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use switchyard_protocol::{ha, Command};

use crate::node::Node;

/// Runs on every coordinator; acts only while it is the leader.
pub async fn run(s: Arc<Node>) {
    let liveness = &s.liveness;
    let timeout = Duration::from_millis(s.config.api.host_report_timeout_ms);
    let times = ha::LivenessTimes {
        lease: Duration::from_millis(s.config.ha.lease_ms),
        grace: Duration::from_millis(s.config.ha.grace_ms),
        report_timeout: timeout,
    };
    // Failure is detected within a quarter of a second of the expiry.
    let mut tick = tokio::time::interval(Duration::from_millis(250).min(timeout / 4));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut metrics = s.raft.server_metrics();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = metrics.changed() => if changed.is_err() { return },
        }
        let leader = metrics.borrow().state == ServerState::Leader;
        liveness.set_leader(leader);
        if !leader || s.sm.read(|st| st.importing().is_some()) {
            continue;
        }
        // Decided under the state's read lock and the leases' lock together: a renewal lands
        // either before the decision or after it (and is then answered `failed`).
        let commands = s.sm.read(|st| liveness.decide(st, &times, s.id));
        for command in commands {
            let (host, declares) = match &command {
                Command::DeclareHostFailed { host, .. } => (host.clone(), true),
                Command::AdmitHost { host } | Command::SetHostReachable { host, .. } => (host.clone(), false),
                _ => continue, // `liveness_commands` decides nothing else
            };
            let kind = command.kind();
            match s.propose(s.clock().request_id(), format!("leader:{}", s.id), command).await {
                Ok(Ok(_)) => tracing::info!(%host, kind, "host liveness recorded"),
                Ok(Err(r)) => {
                    if declares {
                        liveness.refused(&host);
                    }
                    tracing::debug!(%host, kind, %r, "host liveness change refused")
                }
                Err(e) => tracing::warn!(%host, kind, %e, "could not record host liveness"),
            }
        }
    }
}
