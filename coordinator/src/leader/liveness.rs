//! The leader's liveness task: host leases and reachability, from the agents' reports held in
//! [`crate::liveness`].
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
use switchyard_protocol::{Command, Host};

use crate::node::Node;

/// Runs on every coordinator; acts only while it is the leader.
pub async fn run(s: Arc<Node>) {
    let liveness = &s.liveness;
    let timeout = Duration::from_millis(s.config.api.host_report_timeout_ms);
    let lease = Duration::from_millis(s.config.ha.lease_ms);
    let expiry = lease + Duration::from_millis(s.config.ha.grace_ms);
    // Failure is detected within a quarter of a second of the expiry.
    let mut tick = tokio::time::interval(Duration::from_millis(250).min(timeout / 4));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut metrics = s.raft.metrics();
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
        let hosts: Vec<(Host, Option<(bool, u64)>)> = s.sm.read(|st| {
            st.hosts()
                .map(|h| {
                    let member = st
                        .member(&h.spec.name)
                        .map(|m| (m.failure.is_some(), m.failure.as_ref().map_or(0, |f| f.revision)));
                    (h.clone(), member)
                })
                .collect()
        });
        for (h, member) in hosts {
            let name = &h.spec.name;
            let Some(seen) = liveness.last_seen(name) else { continue };
            // A report this leader received within the lease: the agent is alive now.
            let fresh = liveness.last_report(name).filter(|r| r.at.elapsed() < lease);
            let command = match member {
                None if fresh.is_some() => Some(Command::AdmitHost { host: name.clone() }),
                Some((false, _)) if seen.at.elapsed() > expiry => {
                    let since = seen.at.elapsed().as_millis();
                    let what = if seen.report.is_some() { "its last lease renewal" } else { "this leader took office" };
                    Some(Command::DeclareHostFailed {
                        host: name.clone(),
                        evidence: format!(
                            "no lease renewal for {since} ms since {what} (lease {} ms + grace {} ms, by coordinator {}'s monotonic clock)",
                            s.config.ha.lease_ms, s.config.ha.grace_ms, s.id
                        ),
                    })
                }
                Some((true, failed_at)) => match fresh.and_then(|r| r.report) {
                    Some((applied, _)) if applied >= failed_at => Some(Command::AdmitHost { host: name.clone() }),
                    _ => None,
                },
                _ => None,
            };
            let failed =
                matches!(member, Some((true, _))) || matches!(command, Some(Command::DeclareHostFailed { .. }));
            let reachability = if failed {
                None
            } else {
                let silent = seen.at.elapsed() > timeout;
                let reported = seen.report.is_some() && !silent;
                match (h.reachable, silent, reported) {
                    (true, true, _) => Some(Command::SetHostReachable { host: name.clone(), reachable: false }),
                    (false, _, true) => Some(Command::SetHostReachable { host: name.clone(), reachable: true }),
                    _ => None,
                }
            };
            for command in command.into_iter().chain(reachability) {
                let kind = command.kind();
                match s.propose(s.clock().request_id(), format!("leader:{}", s.id), command).await {
                    Ok(Ok(_)) => tracing::info!(host = %name, kind, "host liveness recorded"),
                    Ok(Err(r)) => tracing::debug!(host = %name, kind, %r, "host liveness change refused"),
                    Err(e) => tracing::warn!(host = %name, kind, %e, "could not record host liveness"),
                }
            }
        }
    }
}
