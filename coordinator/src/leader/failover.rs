//! The failover driver: on the leader, turns host failures into failovers, one log commit per
//! step, so a leader killed at any point leaves a saga the next leader resumes from the log.
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
//!   requests an online migration back to it, with every check a migration has. A request
//!   refused, or a move that ends without the guest home, is tried again after
//!   [`FAILBACK_RETRY`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use switchyard_protocol::ha;
use switchyard_protocol::limits::TEXT_LEN_MAX;
use switchyard_protocol::{
    ClusterState, Command, FailbackPolicy, FailoverPolicy, FencingToken, MigrationKind, Name, RunState,
};

use crate::node::Node;

/// How long after a failback attempt the driver tries again for the same guest.
pub const FAILBACK_RETRY: Duration = Duration::from_secs(60);

/// Runs on every coordinator; acts only while it is the leader.
pub async fn run(s: Arc<Node>) {
    let mut revision = s.sm.watch_revision();
    let mut metrics = s.raft.metrics();
    // When this leader first saw each attempt (the start timeout's origin).
    let mut seen: HashMap<FencingToken, Instant> = HashMap::new();
    // When this leader last requested each guest's failback.
    let mut failbacks: HashMap<Name, Instant> = HashMap::new();
    let timeout = Duration::from_millis(s.config.ha.start_timeout_ms);
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
        if s.sm.read(|st| st.importing().is_some()) {
            continue;
        }
        let commands = s.sm.read(|st| {
            seen.retain(|token, _| st.failovers().any(|f| f.token == *token));
            failbacks.retain(|_, at| at.elapsed() < FAILBACK_RETRY);
            let mut commands = plan(st, &mut seen, timeout);
            for (guest, command) in failback(st) {
                if !failbacks.contains_key(&guest) {
                    failbacks.insert(guest.clone(), Instant::now());
                    commands.push((guest, command));
                }
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

/// The next step of every failover the state calls for.
fn plan(st: &ClusterState, seen: &mut HashMap<FencingToken, Instant>, timeout: Duration) -> Vec<(Name, Command)> {
    let mut out = Vec::new();
    // Attempts under way: end those whose target failed or that took too long; go on from
    // those that failed.
    for f in st.failovers() {
        let guest = f.guest.clone();
        if f.attempt_failed.is_some() {
            // The next node only once no copy can run on the last one: it confirmed, or failed.
            if !f.released && st.host_failure(&f.target).is_none() {
                continue;
            }
            let (Some(g), Some(p)) = (st.guest(&f.guest), st.package(&f.package)) else { continue };
            let mut tried: Vec<Name> = f.tried.iter().map(|(h, _)| h.clone()).collect();
            tried.push(f.target.clone());
            out.push(match ha::choose(st, g, p, &tried) {
                Ok((to, _)) => (guest, Command::StartFailover { guest: f.guest.clone(), to }),
                Err(why) => (guest, Command::AbandonFailover { guest: f.guest.clone(), reason: clip(why) }),
            });
            continue;
        }
        let since = *seen.entry(f.token).or_insert_with(Instant::now);
        let reason = if let Some(failure) = st.host_failure(&f.target) {
            Some(format!("target {} failed at revision {}", f.target, failure.revision))
        } else if since.elapsed() > timeout {
            Some(format!("target {} did not start the guest within {} ms", f.target, timeout.as_millis()))
        } else {
            None
        };
        if let Some(reason) = reason {
            let command = Command::FailFailoverAttempt {
                guest: f.guest.clone(),
                host: f.target.clone(),
                token: f.token,
                reason,
                released: false,
            };
            out.push((guest, command));
        }
    }
    // Guests of failed hosts that no failover holds yet. A `min_package_node` choice counts the
    // packages each node runs, which this pass's own starts do not change yet: one such start
    // per pass, the next decided once it has committed.
    let mut counted_start = false;
    for g in st.guests() {
        if st.host_failure(&g.owner).is_none() || st.failover(&g.name).is_some() || st.in_flight(&g.name).is_some() {
            continue;
        }
        if ha::unprotected(st, g).is_some() {
            continue;
        }
        let Some(p) = g.spec.package.as_ref().and_then(|p| st.package(p)) else { continue };
        let counts = p.failover_policy == FailoverPolicy::MinPackageNode;
        if counts && counted_start {
            continue;
        }
        if let Ok((to, _)) = ha::choose(st, g, p, &[]) {
            counted_start |= counts;
            out.push((g.name.clone(), Command::StartFailover { guest: g.name.clone(), to }));
        }
    }
    out
}

/// Online moves home for the guests of automatic-failback packages whose primary node (the
/// first of the node list) is eligible again.
fn failback(st: &ClusterState) -> Vec<(Name, Command)> {
    let mut out = Vec::new();
    for p in st.packages() {
        if p.failback_policy != FailbackPolicy::Automatic {
            continue;
        }
        let (Some(primary), Some(g)) = (p.nodes.first(), st.guest(&p.guest)) else { continue };
        if g.owner == *primary
            || g.run_state != RunState::Running
            || st.failover(&g.name).is_some()
            || st.in_flight(&g.name).is_some()
            || st.host_failure(&g.owner).is_some()
        {
            continue;
        }
        let home = ha::candidates(st, g, p, &[]).into_iter().find(|c| c.host == *primary);
        if home.is_some_and(|c| c.excluded.is_none()) {
            out.push((
                g.name.clone(),
                Command::RequestMigration {
                    guest: g.name.clone(),
                    source: g.owner.clone(),
                    target: primary.clone(),
                    kind: MigrationKind::Online,
                    reason: Some(format!("automatic failback of package {} to its primary node", p.name)),
                },
            ));
        }
    }
    out
}

/// A reason cut to what the log accepts.
fn clip(mut s: String) -> String {
    if s.len() > TEXT_LEN_MAX {
        let mut end = TEXT_LEN_MAX - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}
