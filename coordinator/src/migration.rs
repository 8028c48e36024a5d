//! The migration driver: a migration is a saga of log commits (SPEC §5), and this is what moves
//! each in-flight migration from one commit to the next.
//!
//! It runs on every coordinator and acts only while that coordinator is the leader. It keeps no
//! state of its own that matters: what to do next is decided from the committed migration record
//! alone ([`next_step`]), so a new leader resumes every in-flight migration from the log. The one
//! thing held in memory is the agents' reports for the `transferring` phase ([`Reports`]). Every
//! coordinator keeps the reports it receives (agents send each one to all of them), so a new
//! leader usually holds them already and moves the migration on as soon as it is elected; if it
//! does not, the agents, which keep reporting until they see the phase change, tell it again.
//!
//! Every step is a command that names the phase it starts from, so a step proposed twice (by a
//! retrying or a deposed leader) is refused by the state machine instead of applied twice.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use switchyard_protocol::api::{MigrationReport, ReportOutcome};
use switchyard_protocol::{
    ClusterState, Command, FencingToken, HostState, Migration, MigrationId, Name, Phase, RequestId, TransferStats,
};
use tokio::sync::Notify;

use crate::config::MigrationConfig;

/// Why a report was not kept.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReportError {
    /// It answers a phase the migration is no longer in.
    #[error("{0}")]
    Stale(String),
    /// It is not this host's part, or the phase takes no report.
    #[error("{0}")]
    Invalid(String),
}

/// What the agents told the leader about the current phase of one migration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PhaseReports {
    /// The phase commit the reports answer.
    pub token: FencingToken,
    /// The source's transfer: done (with its freeze time) or failed.
    pub transfer: Option<Result<Option<u64>, String>>,
    /// The target saw the guest running.
    pub target_running: bool,
    /// What the source's hypervisor measured of the transfer, if it told.
    pub stats: Option<TransferStats>,
}

/// Agent reports, held in memory by every coordinator (only the leader's driver acts on them).
/// A report is a fact about one committed phase (it names the phase's fencing token), so one
/// received while following stays true after this node is elected.
#[derive(Default)]
pub struct Reports {
    by_migration: Mutex<HashMap<MigrationId, PhaseReports>>,
    /// Wakes the driver when a report arrives.
    pub arrived: Notify,
}

impl Reports {
    /// Checks a report from `host` against the migration's committed state and records it.
    pub fn record(&self, m: &Migration, host: &Name, r: &MigrationReport) -> Result<(), ReportError> {
        let current = m.current().token();
        if m.phase.is_terminal() || r.phase != m.phase || r.token != current {
            return Err(ReportError::Stale(format!(
                "the report answers phase {} (token {}), but migration {} is at phase {} (token {current})",
                r.phase, r.token, m.id, m.phase
            )));
        }
        if m.phase != Phase::Transferring {
            return Err(ReportError::Invalid(format!("phase {} takes no agent report", m.phase)));
        }
        let is_source = m.source == *host;
        let mut all = self.by_migration.lock().expect("reports lock");
        let entry = all.entry(m.id).or_default();
        if entry.token != current {
            *entry = PhaseReports { token: current, ..Default::default() };
        }
        match &r.outcome {
            ReportOutcome::TransferDone { freeze_time_ms, stats } if is_source => {
                entry.transfer = Some(Ok(*freeze_time_ms));
                entry.stats = *stats;
            }
            ReportOutcome::TransferFailed { error } if is_source => entry.transfer = Some(Err(error.clone())),
            ReportOutcome::GuestRunning if m.target == *host => entry.target_running = true,
            other => {
                return Err(ReportError::Invalid(format!(
                    "host {host} is not the one to report {other:?} for migration {}",
                    m.id
                )))
            }
        }
        drop(all);
        self.arrived.notify_one();
        Ok(())
    }

    /// The reports for the phase of `id` that `token` committed.
    pub fn get(&self, id: MigrationId, token: FencingToken) -> Option<PhaseReports> {
        self.by_migration.lock().expect("reports lock").get(&id).filter(|r| r.token == token).cloned()
    }

    /// Drops the reports of migrations no longer in flight.
    pub fn retain(&self, live: impl Fn(MigrationId) -> bool) {
        self.by_migration.lock().expect("reports lock").retain(|id, _| live(*id));
    }
}

/// The driver's next move for one migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Advance {
        to: Phase,
        freeze_time_ms: Option<u64>,
    },
    Fail(String),
    /// Nothing to do yet; look again after at most this long.
    Wait(Duration),
}

/// Decides the next step of an in-flight migration from its committed record, the cluster state,
/// the agents' reports for its current phase, and `in_phase`: how long this leader has seen the
/// migration in its current phase, on its own monotonic clock. (Not the phase's commit time
/// against this node's wall clock: the commit may have been stamped by another coordinator,
/// whose clock may differ, and a wall clock jumps.) Pure, so it is tested directly.
pub fn next_step(
    m: &Migration,
    state: &ClusterState,
    reports: Option<&PhaseReports>,
    in_phase: Duration,
    config: &MigrationConfig,
) -> Step {
    let elapsed = u64::try_from(in_phase.as_millis()).unwrap_or(u64::MAX);
    let next = m.phase.next(m.has_package());
    match m.phase {
        Phase::Requested | Phase::SwitchingDisabled => {
            // Before anything moves, both ends must still be usable.
            for (role, host) in [("source", &m.source), ("target", &m.target)] {
                match state.host(host).map(|h| state.host_state(h)) {
                    None => return Step::Fail(format!("{role} host {host} is no longer registered")),
                    Some(HostState::Failed) => {
                        return Step::Fail(format!("{role} host {host} failed (its lease expired)"))
                    }
                    Some(HostState::Unreachable) => {
                        return Step::Fail(format!("{role} host {host} is unreachable (its agent stopped reporting)"))
                    }
                    Some(HostState::Maintenance) if role == "target" => {
                        return Step::Fail(format!("target host {host} went into maintenance"))
                    }
                    Some(HostState::Draining) if role == "target" => {
                        return Step::Fail(format!("target host {host} is being drained"))
                    }
                    _ => {}
                }
            }
            paced(m, next, elapsed, config)
        }
        Phase::Transferring => {
            // A failed end cannot finish the move: fail now (switching is restored in the same
            // commit) so that the guest's failover can begin, instead of waiting out the timeout.
            for (role, host) in [("source", &m.source), ("target", &m.target)] {
                if let Some(f) = state.host_failure(host) {
                    return Step::Fail(format!("{role} host {host} failed at revision {}: {}", f.revision, f.evidence));
                }
            }
            let r = reports.cloned().unwrap_or_default();
            match r.transfer {
                Some(Err(e)) => return Step::Fail(format!("transfer failed on {}: {e}", m.source)),
                Some(Ok(freeze_time_ms)) if r.target_running => {
                    return Step::Advance { to: Phase::TargetRunning, freeze_time_ms }
                }
                _ => {}
            }
            if elapsed >= config.transferring_timeout_ms {
                let waiting = match (&r.transfer, r.target_running) {
                    (None, false) => {
                        format!("source {} to finish the transfer and target {} to confirm", m.source, m.target)
                    }
                    (None, true) => format!("source {} to finish the transfer", m.source),
                    (Some(_), _) => format!("target {} to confirm the guest runs there", m.target),
                };
                return Step::Fail(format!(
                    "timed out after {} ms in phase transferring, waiting for {waiting}",
                    config.transferring_timeout_ms
                ));
            }
            Step::Wait(Duration::from_millis(config.transferring_timeout_ms - elapsed))
        }
        Phase::TargetRunning | Phase::OwnerSwitched | Phase::SwitchingEnabled => paced(m, next, elapsed, config),
        Phase::Completed | Phase::Failed | Phase::Aborted => Step::Wait(Duration::from_secs(3600)),
    }
}

/// The next step of a phase the driver ends itself: after the pause `step_delay_ms`, advance.
/// Past the phase's timeout (its advance refused or never committed) a migration that can still
/// roll back fails; one past the owner switch keeps advancing, and [`stuck`] reports it.
fn paced(m: &Migration, next: Option<Phase>, elapsed: u64, config: &MigrationConfig) -> Step {
    let Some(to) = next else { return Step::Wait(Duration::from_secs(3600)) };
    if let Some(timeout) = config.timeout_ms(m.phase).filter(|t| elapsed >= *t) {
        if m.phase.can_roll_back() {
            return Step::Fail(format!(
                "timed out after {timeout} ms in phase {}: its step to {to} did not take effect",
                m.phase
            ));
        }
    }
    if elapsed < config.step_delay_ms {
        return Step::Wait(Duration::from_millis(config.step_delay_ms - elapsed));
    }
    Step::Advance { to, freeze_time_ms: None }
}

/// Why a migration past the owner switch is stuck (it has outlasted its phase's timeout, and
/// cannot roll back), for the driver to report; `None` when it is not.
pub fn stuck(m: &Migration, in_phase: Duration, config: &MigrationConfig) -> Option<String> {
    let elapsed = u64::try_from(in_phase.as_millis()).unwrap_or(u64::MAX);
    let timeout = config.timeout_ms(m.phase)?;
    (!m.phase.can_roll_back() && elapsed >= timeout).then(|| {
        format!(
            "migration {} of {} has been in phase {} for {elapsed} ms (timeout {timeout} ms) and cannot roll back after the owner switch",
            m.id, m.guest, m.phase
        )
    })
}

/// The command for a step, with a request id derived from (migration, target phase): the same
/// step proposed again is recognised as a duplicate.
pub fn command_for(m: &Migration, step: &Step) -> Option<(RequestId, Command)> {
    let rid = |p: Phase| RequestId((1u128 << 127) | ((m.id.0 as u128) << 8) | p as u128);
    match step {
        Step::Advance { to, freeze_time_ms } => Some((
            rid(*to),
            Command::AdvanceMigration { id: m.id, from: m.phase, to: *to, freeze_time_ms: *freeze_time_ms },
        )),
        Step::Fail(error) => Some((rid(Phase::Failed), Command::FailMigration { id: m.id, error: error.clone() })),
        Step::Wait(_) => None,
    }
}

/// The command recording the transfer's figures, proposed just before a migration moves on
/// from `transferring` (its own request id, so proposing it again is a duplicate).
pub fn stats_command(m: &Migration, step: &Step, reports: Option<&PhaseReports>) -> Option<(RequestId, Command)> {
    let stats = reports?.stats?;
    if m.phase != Phase::Transferring || !matches!(step, Step::Advance { .. }) {
        return None;
    }
    let rid = RequestId((1u128 << 127) | ((m.id.0 as u128) << 8) | 0xff);
    Some((rid, Command::RecordTransferStats { id: m.id, stats }))
}

#[cfg(test)]
mod tests {
    use switchyard_protocol::{Actor, MigrationKind, PhaseRecord, Timestamp};

    use super::*;

    fn migration(phase: Phase, at: u64, package: bool) -> Migration {
        let n = |s: &str| Name::new(s).unwrap();
        Migration {
            id: MigrationId(7),
            guest: n("g1"),
            source: n("h1"),
            target: n("h2"),
            kind: MigrationKind::Online,
            requested_by: Actor::from("admin"),
            reason: None,
            package: package.then(|| n("p1")),
            switching_before: package.then_some(true),
            phase,
            history: vec![PhaseRecord { phase, at: Timestamp(at), revision: 9, term: 2 }],
            freeze_time_ms: None,
            error: None,
        }
    }

    fn config() -> MigrationConfig {
        MigrationConfig { transferring_timeout_ms: 5_000, ..MigrationConfig::default() }
    }

    #[test]
    fn driver_steps_skip_switching_phases_without_a_package() {
        let st = ClusterState::default();
        // Hosts unknown to an empty state: a requested migration fails cleanly.
        let s = next_step(&migration(Phase::Requested, 0, true), &st, None, Duration::ZERO, &config());
        assert!(matches!(s, Step::Fail(e) if e.contains("no longer registered")));
        for (phase, package, want) in [
            (Phase::TargetRunning, true, Phase::OwnerSwitched),
            (Phase::OwnerSwitched, true, Phase::SwitchingEnabled),
            (Phase::OwnerSwitched, false, Phase::Completed),
            (Phase::SwitchingEnabled, true, Phase::Completed),
        ] {
            let s = next_step(&migration(phase, 0, package), &st, None, Duration::ZERO, &config());
            assert_eq!(s, Step::Advance { to: want, freeze_time_ms: None }, "{phase}");
        }
    }

    #[test]
    fn transferring_waits_for_both_agents_then_advances_with_the_freeze_time() {
        let st = ClusterState::default();
        let m = migration(Phase::Transferring, 1_000, true);
        let token = m.current().token();
        let stats = TransferStats { total_time_ms: 900, transferred_bytes: 1 << 25 };
        let only_source =
            PhaseReports { token, transfer: Some(Ok(Some(120))), target_running: false, stats: Some(stats) };
        assert!(matches!(next_step(&m, &st, Some(&only_source), ms(1_000), &config()), Step::Wait(_)));
        let both = PhaseReports { target_running: true, ..only_source.clone() };
        let step = next_step(&m, &st, Some(&both), ms(1_000), &config());
        assert_eq!(step, Step::Advance { to: Phase::TargetRunning, freeze_time_ms: Some(120) });
        // The figures are recorded just before that step, and at no other.
        let (_, cmd) = stats_command(&m, &step, Some(&both)).expect("the figures are recorded");
        assert_eq!(cmd, Command::RecordTransferStats { id: m.id, stats });
        assert!(stats_command(&m, &step, Some(&PhaseReports { stats: None, ..both.clone() })).is_none());
        let wait = next_step(&m, &st, Some(&only_source), ms(1_000), &config());
        assert!(stats_command(&m, &wait, Some(&only_source)).is_none());
        let failed =
            PhaseReports { token, transfer: Some(Err("disk busy".into())), target_running: false, stats: None };
        assert!(matches!(next_step(&m, &st, Some(&failed), ms(1_000), &config()),
            Step::Fail(e) if e.contains("disk busy")));
    }

    #[test]
    fn a_silent_agent_fails_the_migration_after_the_timeout() {
        let st = ClusterState::default();
        let m = migration(Phase::Transferring, 1_000, true);
        assert_eq!(next_step(&m, &st, None, ms(4_999), &config()), Step::Wait(Duration::from_millis(1)));
        let s = next_step(&m, &st, None, ms(5_000), &config());
        assert!(matches!(s, Step::Fail(e) if e.contains("timed out") && e.contains("h1") && e.contains("h2")));
    }

    /// The phase's commit time plays no part: a phase committed long ago by the clock of the
    /// coordinator that stamped it (or of a leader whose clock runs ahead) has not timed out
    /// until this leader has itself waited the timeout.
    #[test]
    fn the_timeout_counts_on_the_leaders_own_clock_not_the_commit_time() {
        let st = ClusterState::default();
        let stamped_long_ago = migration(Phase::Transferring, 0, true);
        assert_eq!(next_step(&stamped_long_ago, &st, None, ms(10), &config()), Step::Wait(ms(4_990)));
        let stamped_in_the_future = migration(Phase::Transferring, u64::MAX / 2, true);
        assert!(matches!(next_step(&stamped_in_the_future, &st, None, ms(5_000), &config()), Step::Fail(_)));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn every_phase_times_out_failing_before_the_owner_switch_and_stuck_after_it() {
        let st = ClusterState::default();
        let mut c = config();
        c.phase_timeouts_ms.target_running = 2_000;
        c.phase_timeouts_ms.owner_switched = 3_000;
        let running = migration(Phase::TargetRunning, 0, true);
        assert!(matches!(next_step(&running, &st, None, ms(1_999), &c), Step::Advance { .. }));
        let s = next_step(&running, &st, None, ms(2_000), &c);
        assert_eq!(
            s,
            Step::Fail(
                "timed out after 2000 ms in phase target_running: its step to owner_switched did not take effect"
                    .into()
            )
        );
        assert!(stuck(&running, ms(60_000), &c).is_none(), "it can still roll back");
        // After the owner switch a migration cannot fail: it keeps advancing and is reported.
        let switched = migration(Phase::OwnerSwitched, 0, true);
        assert!(stuck(&switched, ms(2_999), &c).is_none());
        assert!(matches!(next_step(&switched, &st, None, ms(5_000), &c), Step::Advance { .. }));
        let why = stuck(&switched, ms(3_000), &c).expect("stuck");
        assert!(why.contains("phase owner_switched") && why.contains("timeout 3000 ms"), "{why}");
        assert!(stuck(&migration(Phase::Completed, 0, true), ms(u64::MAX), &c).is_none());
    }

    #[test]
    fn step_delay_paces_the_driver_steps() {
        let st = ClusterState::default();
        let c = MigrationConfig { step_delay_ms: 500, ..config() };
        let m = migration(Phase::TargetRunning, 1_000, true);
        assert_eq!(next_step(&m, &st, None, ms(200), &c), Step::Wait(Duration::from_millis(300)));
        assert!(matches!(next_step(&m, &st, None, ms(500), &c), Step::Advance { .. }));
    }
}
