//! The leader's liveness task: proposes a host's reachability transitions when its agent goes
//! silent or comes back (held reports in [`crate::liveness`]).

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use switchyard_protocol::{Command, Host};

use crate::node::Node;

/// Runs on every coordinator; acts only while it is the leader: proposes reachability
/// transitions for hosts whose agents went silent or came back.
pub async fn run(s: Arc<Node>) {
    let liveness = &s.liveness;
    let timeout = Duration::from_millis(s.config.api.host_report_timeout_ms);
    let mut tick = tokio::time::interval(timeout / 4);
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
        let hosts: Vec<Host> = s.sm.read(|st| st.hosts().cloned().collect());
        for h in hosts {
            let name = &h.spec.name;
            let Some(seen) = liveness.last_seen(name) else { continue };
            let silent = seen.at.elapsed() > timeout;
            let reported = seen.report.is_some() && !silent;
            let change = if h.reachable && silent {
                Some(false)
            } else if !h.reachable && reported {
                Some(true)
            } else {
                None
            };
            if let Some(reachable) = change {
                let command = Command::SetHostReachable { host: name.clone(), reachable };
                match s.propose(s.clock().request_id(), format!("leader:{}", s.id), command).await {
                    Ok(_) => tracing::info!(host = %name, reachable, "host reachability changed"),
                    Err(e) => tracing::warn!(host = %name, %e, "could not record host reachability"),
                }
            }
        }
    }
}
