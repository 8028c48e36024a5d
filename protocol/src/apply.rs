//! The pure state-machine step: `apply(state, proposal, term) -> events | rejection`.
//!
//! Each command has one `apply_<command>` that reads the state, checks every rule, and returns the
//! events to commit. Nothing here reads a clock, draws a random number or touches I/O: time,
//! actor and request id come from the [`Proposal`]. Events are folded into the state by
//! [`ClusterState::evolve`] only after every check passed, so a rejected command leaves the state
//! exactly as it was.

use serde::{Deserialize, Serialize};

use crate::command::{Command, GuestPatch, HostPatch, Proposal};
use crate::event::{Event, EventPayload};
use crate::ha::Candidate;
use crate::limits::*;
use crate::model::{BlockedGuest, Drain, DrainOutcome};
use crate::model::{
    ClusterId, Failover, FencingToken, Guest, GuestSpec, Host, HostSpec, HostState, ImportProgress, Migration,
    MigrationId, MigrationKind, Phase, PhaseRecord, RestoredFrom, Revision, RunState,
};
use crate::name::Name;
use crate::rejection::Rejection;
use crate::state::{ClusterState, RevisionRange};

/// The answer to an accepted (or already applied) proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The revisions the request produced. For a migration request, `first` is the migration id.
    pub revisions: RevisionRange,
    /// True when this request id had already been applied: nothing new was committed and
    /// `revisions` are those of the first application.
    pub duplicate: bool,
}

/// What the replicated state machine answers for one proposal.
pub type ApplyResult = Result<Applied, Rejection>;

/// Applies one proposal committed in Raft term `term` (from the log entry's id, so every replica
/// stamps the same value): checks it against the state, and on success folds its events into the
/// state and returns them. On rejection the state is unchanged.
pub fn apply(state: &mut ClusterState, proposal: &Proposal, term: u64) -> Result<(Applied, Vec<Event>), Rejection> {
    if let Some(revisions) = state.applied_request(&proposal.actor, proposal.request_id) {
        return Ok((Applied { revisions, duplicate: true }, Vec::new()));
    }
    if let Command::ImportEvents { cluster, chain, events } = &proposal.command {
        return import(state, cluster, chain, events);
    }
    let payloads = decide(state, proposal)?;
    assert!(!payloads.is_empty(), "an accepted command yields at least one event");
    // Stamped terms continue above every imported one in a restored cluster (see `RestoredFrom`).
    let term = term
        + match &proposal.command {
            Command::CreateCluster { restored_from: Some(from), .. } => from.term_base,
            _ => state.term_base(),
        };
    let first = state.revision() + 1;
    let mut events = Vec::with_capacity(payloads.len());
    for (i, payload) in payloads.into_iter().enumerate() {
        let event = Event {
            revision: first + i as Revision,
            term,
            time: proposal.time,
            actor: proposal.actor.clone(),
            request_id: proposal.request_id,
            payload,
        };
        state.evolve(&event);
        events.push(event);
    }
    let revisions = RevisionRange { first, last: state.revision() };
    Ok((Applied { revisions, duplicate: false }, events))
}

/// Folds the next chunk of an imported history (`log restore`) as it is. Every event is checked
/// with [`ClusterState::foldable`] on a scratch copy, and the invariants after the chunk, so a
/// damaged or hostile chunk is refused whole and changes nothing. The copy holds only what the
/// chunk can read or change ([`ClusterState::scoped_copy`]): checking a chunk costs the same with
/// 100 000 guests as with ten.
fn import(
    state: &mut ClusterState,
    cluster: &Option<ClusterId>,
    chain: &str,
    events: &[Event],
) -> Result<(Applied, Vec<Event>), Rejection> {
    let refuse = |reason: String| Rejection::ImportRefused { reason };
    if events.is_empty() || events.len() > IMPORT_EVENTS_MAX {
        return Err(refuse(format!("a chunk holds 1 to {IMPORT_EVENTS_MAX} events, not {}", events.len())));
    }
    if chain.len() != 64 || !chain.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refuse("the chain value is not 64 hex digits".into()));
    }
    match (state.importing(), state.identity()) {
        (Some(p), _) if &p.cluster != cluster => {
            return Err(refuse(format!(
                "this cluster is restoring the export of cluster {}, the chunk comes from cluster {}",
                show_cluster(&p.cluster),
                show_cluster(cluster)
            )))
        }
        (Some(_), _) => {}
        (None, Some(id)) => return Err(Rejection::ClusterExists { cluster: id.id.clone() }),
        (None, None) if state.revision() > 0 => {
            return Err(refuse(format!(
                "the cluster already holds {} events of its own; restore seeds a brand-new cluster",
                state.revision()
            )))
        }
        (None, None) => {}
    }
    let verdict = check_chunk(state.scoped_copy(events), events);
    // Tests and debug builds check the scoped copy against a whole one (O(state) per chunk).
    #[cfg(debug_assertions)]
    {
        let whole = check_chunk(state.clone(), events);
        assert_eq!(verdict.is_ok(), whole.is_ok(), "scoped and whole import checks differ: {verdict:?} vs {whole:?}");
    }
    verdict.map_err(refuse)?;
    // The events fold on the scoped copy, so they fold on the whole state (a superset of it
    // with the same values), where `evolve` then cannot fail.
    for e in events {
        state.evolve(e);
    }
    let revisions = RevisionRange { first: events[0].revision, last: state.revision() };
    state.set_importing(ImportProgress {
        cluster: cluster.clone(),
        through_revision: state.revision(),
        chain: chain.to_ascii_lowercase(),
    });
    Ok((Applied { revisions, duplicate: false }, events.to_vec()))
}

/// Folds `events` on `scratch` one by one, each checked with [`ClusterState::foldable`], then
/// checks the invariants; answers why not if any of that fails.
fn check_chunk(mut scratch: ClusterState, events: &[Event]) -> Result<(), String> {
    for e in events {
        scratch.foldable(e).map_err(|why| format!("the event at revision {}: {why}", e.revision))?;
        scratch.evolve(e);
    }
    let bad = scratch.check_invariants();
    if !bad.is_empty() {
        return Err(format!("after revision {}: {}", scratch.revision(), bad.join("; ")));
    }
    Ok(())
}

fn show_cluster(c: &Option<ClusterId>) -> String {
    c.as_ref().map_or("(none)".into(), |c| c.to_string())
}

fn apply_create_cluster(
    state: &ClusterState,
    cluster: &ClusterId,
    restored_from: &Option<RestoredFrom>,
) -> Result<Vec<EventPayload>, Rejection> {
    if ClusterId::parse(&cluster.0).is_none() {
        return Err(Rejection::invalid("cluster", "8 to 64 characters of 0-9, a-f and -"));
    }
    let refuse = |reason: String| Rejection::ImportRefused { reason };
    match (state.importing(), restored_from) {
        (None, _) if state.identity().is_some() => {
            return Err(Rejection::ClusterExists { cluster: state.identity().expect("checked").id.clone() })
        }
        (None, None) => {}
        (None, Some(_)) => return Err(refuse("nothing has been imported: there is no restore to complete".into())),
        (Some(p), None) => return Err(Rejection::RestoreInProgress { through: p.through_revision }),
        (Some(p), Some(from)) => {
            if from.cluster != p.cluster || from.through_revision != p.through_revision || from.chain != p.chain {
                return Err(refuse(format!(
                    "the restore being completed (cluster {} through revision {}) is not the one imported (cluster {} through revision {})",
                    show_cluster(&from.cluster),
                    from.through_revision,
                    show_cluster(&p.cluster),
                    p.through_revision
                )));
            }
            if from.term_base != state.last_term() {
                return Err(refuse(format!(
                    "term_base is {}, the last imported event's term is {}",
                    from.term_base,
                    state.last_term()
                )));
            }
            if from.cluster.as_ref() == Some(cluster) {
                return Err(refuse(format!("a restored cluster needs a new id, not the exported cluster's {cluster}")));
            }
        }
    }
    Ok(vec![EventPayload::ClusterCreated { cluster: cluster.clone(), restored_from: restored_from.clone() }])
}

/// Checks a proposal against the state and returns the events it would commit.
pub fn decide(state: &ClusterState, p: &Proposal) -> Result<Vec<EventPayload>, Rejection> {
    check_text("actor", &p.actor, ACTOR_LEN_MAX)?;
    let next = state.revision() + 1;
    if let Some(progress) = state.importing() {
        if !matches!(p.command, Command::CreateCluster { .. }) {
            return Err(Rejection::RestoreInProgress { through: progress.through_revision });
        }
    }
    match &p.command {
        Command::CreateCluster { cluster, restored_from } => apply_create_cluster(state, cluster, restored_from),
        Command::ImportEvents { .. } => Err(Rejection::ImportRefused { reason: "imports are folded by apply".into() }),
        Command::RegisterHost(spec) => apply_register_host(state, spec, next),
        Command::SetHostMaintenance { host, maintenance } => apply_set_host_maintenance(state, host, *maintenance),
        Command::SetHostReachable { host, reachable } => apply_set_host_reachable(state, host, *reachable),
        Command::CreateGuest { name, spec, owner, run_state } => {
            apply_create_guest(state, name, spec, owner, *run_state, next)
        }
        Command::ModifyGuest { name, patch, expect_version } => {
            apply_modify_guest(state, name, patch, *expect_version, next)
        }
        Command::RemoveGuest { name, expect_version } => apply_remove_guest(state, name, *expect_version),
        Command::SetPackageSwitching { package, node, enabled, reason } => {
            apply_set_package_switching(state, package, node.as_ref(), *enabled, reason)
        }
        Command::RequestMigration { guest, source, target, kind, reason } => {
            apply_request_migration(state, p, guest, source, target, *kind, reason, next)
        }
        Command::AdvanceMigration { id, from, to, freeze_time_ms } => {
            apply_advance_migration(state, *id, *from, *to, *freeze_time_ms)
        }
        Command::FailMigration { id, error } => {
            check_text("error", error, TEXT_LEN_MAX)?;
            apply_end_migration(state, *id, Phase::Failed, Some(error.clone()))
        }
        Command::AbortMigration { id, reason } => {
            check_opt_text("reason", reason)?;
            let why = Some(reason.clone().unwrap_or_else(|| "aborted by operator".into()));
            apply_end_migration(state, *id, Phase::Aborted, why)
        }
        Command::ResolveMigration { id, outcome, reason } => apply_resolve_migration(state, *id, *outcome, reason),
        Command::ModifyHost { host, patch, expect_version } => {
            apply_modify_host(state, host, patch, *expect_version, next)
        }
        Command::RemoveHost { host, expect_version } => apply_remove_host(state, host, *expect_version),
        Command::StartDrain { host, allow_offline, max_parallel } => {
            apply_start_drain(state, p, host, *allow_offline, *max_parallel, next)
        }
        Command::EndDrain { host, outcome, reason, blocked } => apply_end_drain(state, host, *outcome, reason, blocked),
        Command::RecordRepair { host, guest, action, reason } => {
            check_token("action", action, PROFILE_FIELD_LEN_MAX)?;
            check_text("reason", reason, TEXT_LEN_MAX)?;
            known_host(state, host)?;
            if state.guest(guest).is_none() {
                return Err(Rejection::UnknownGuest { guest: guest.clone() });
            }
            Ok(vec![EventPayload::GuestRepaired {
                guest: guest.clone(),
                host: host.clone(),
                action: action.clone(),
                reason: reason.clone(),
            }])
        }
        Command::RecordTransferStats { id, stats } => {
            let m = live_migration(state, *id)?;
            if m.phase != Phase::Transferring {
                return Err(Rejection::invalid("stats", "only recorded while the migration is transferring"));
            }
            check_range("stats.total_time_ms", stats.total_time_ms, 0, TRANSFER_TIME_MS_MAX)?;
            Ok(vec![EventPayload::MigrationTransferStats { id: *id, guest: m.guest.clone(), stats: *stats }])
        }
        Command::CheckMigrationTarget { id, host, token, runs_there } => {
            let m = state.migration(*id).ok_or(Rejection::UnknownMigration { id: *id })?;
            if !matches!(m.phase, Phase::Failed | Phase::Aborted) || m.kind != MigrationKind::Online {
                return Err(Rejection::invalid(
                    "id",
                    format!(
                        "migration {id} is {} {}: only a failed or aborted online migration's target is checked",
                        m.kind, m.phase
                    ),
                ));
            }
            if m.target != *host {
                return Err(Rejection::invalid("host", format!("host {host} is not the target of migration {id}")));
            }
            if *token != m.current().token() {
                return Err(Rejection::invalid(
                    "token",
                    format!(
                        "token {token} is not the one of migration {id}'s {} phase ({})",
                        m.phase,
                        m.current().token()
                    ),
                ));
            }
            Ok(vec![EventPayload::MigrationTargetChecked {
                id: *id,
                guest: m.guest.clone(),
                host: host.clone(),
                runs_there: *runs_there,
            }])
        }
        Command::AdmitHost { host } => {
            known_host(state, host)?;
            match state.member(host) {
                None => Ok(vec![EventPayload::HostJoined { host: host.clone() }]),
                Some(m) if m.failure.is_some() => Ok(vec![EventPayload::HostRecovered { host: host.clone() }]),
                Some(_) => Err(Rejection::invalid("host", format!("host {host} is a live member already"))),
            }
        }
        Command::DeclareHostFailed { host, evidence } => {
            check_text("evidence", evidence, TEXT_LEN_MAX)?;
            known_host(state, host)?;
            match state.member(host) {
                Some(m) if m.failure.is_none() => {
                    Ok(vec![EventPayload::HostFailed { host: host.clone(), evidence: evidence.clone() }])
                }
                Some(_) => Err(Rejection::invalid("host", format!("host {host} is failed already"))),
                None => Err(Rejection::invalid("host", format!("host {host} is not under failure detection"))),
            }
        }
        Command::StartFailover { guest, to } => apply_start_failover(state, guest, to),
        Command::CompleteFailover { guest, host, token } => {
            current_attempt(state, guest, host, *token)?;
            Ok(vec![EventPayload::FailoverCompleted { guest: guest.clone(), host: host.clone() }])
        }
        Command::FailFailoverAttempt { guest, host, token, reason, released } => {
            check_text("reason", reason, TEXT_LEN_MAX)?;
            let f = current_attempt(state, guest, host, *token)?;
            if f.attempt_failed.is_some() {
                return Err(refuse_failover(guest, "the current attempt already failed"));
            }
            Ok(vec![EventPayload::FailoverAttemptFailed {
                guest: guest.clone(),
                host: host.clone(),
                token: *token,
                reason: reason.clone(),
                released: *released,
            }])
        }
        Command::ReleaseFailoverAttempt { guest, host, token } => {
            let f = current_attempt(state, guest, host, *token)?;
            if f.attempt_failed.is_none() || f.released {
                return Err(refuse_failover(guest, "no failed attempt waits for its release"));
            }
            Ok(vec![EventPayload::FailoverAttemptReleased { guest: guest.clone(), host: host.clone() }])
        }
        Command::AbandonFailover { guest, reason } => {
            check_text("reason", reason, TEXT_LEN_MAX)?;
            if state.failover(guest).is_none() {
                return Err(refuse_failover(guest, "no failover is in flight"));
            }
            Ok(vec![EventPayload::FailoverFailed { guest: guest.clone(), reason: reason.clone() }])
        }
        Command::ModifyPackage { package, nodes, failover_policy, failback_policy } => {
            let pkg = state.package(package).ok_or_else(|| Rejection::UnknownPackage { package: package.clone() })?;
            if nodes.is_none() && failover_policy.is_none() && failback_policy.is_none() {
                return Err(Rejection::invalid("patch", "nothing to change"));
            }
            if let Some(nodes) = nodes {
                if nodes.len() > PACKAGE_NODES_MAX {
                    return Err(Rejection::invalid(
                        "nodes",
                        format!("{} nodes; at most {PACKAGE_NODES_MAX} are allowed", nodes.len()),
                    ));
                }
                let mut seen = std::collections::BTreeSet::new();
                for n in nodes {
                    known_host(state, n)?;
                    if !seen.insert(n) {
                        return Err(Rejection::invalid("nodes", format!("host {n} is listed twice")));
                    }
                }
            }
            Ok(vec![EventPayload::PackageModified {
                package: package.clone(),
                guest: pkg.guest.clone(),
                nodes: nodes.clone().unwrap_or_else(|| pkg.nodes.clone()),
                failover_policy: failover_policy.unwrap_or(pkg.failover_policy),
                failback_policy: failback_policy.unwrap_or(pkg.failback_policy),
            }])
        }
    }
}

fn refuse_failover(guest: &Name, reason: impl Into<String>) -> Rejection {
    Rejection::FailoverRefused { guest: guest.clone(), reason: reason.into() }
}

/// The in-flight failover of `guest` whose current attempt is `host`'s, on the order `token`.
fn current_attempt<'a>(
    state: &'a ClusterState,
    guest: &Name,
    host: &Name,
    token: FencingToken,
) -> Result<&'a Failover, Rejection> {
    known_guest(state, guest)?;
    let f = state.failover(guest).ok_or_else(|| refuse_failover(guest, "no failover is in flight"))?;
    if f.target != *host || f.token != token {
        return Err(refuse_failover(
            guest,
            format!(
                "the current attempt is host {}'s on order {}, not host {host}'s on order {token}",
                f.target, f.token
            ),
        ));
    }
    Ok(f)
}

/// A failover starts when the guest's owner failed (the first attempt) or the in-flight
/// failover's attempt failed (the next one); `to` must be eligible now.
fn apply_start_failover(state: &ClusterState, guest_name: &Name, to: &Name) -> Result<Vec<EventPayload>, Rejection> {
    let guest = known_guest(state, guest_name)?;
    known_host(state, to)?;
    no_migration_in_flight(state, guest_name)?;
    let (failed_host, tried) = match state.failover(guest_name) {
        Some(f) if f.attempt_failed.is_none() => {
            return Err(refuse_failover(guest_name, format!("its attempt on {} is still under way", f.target)))
        }
        Some(f) if !f.released && state.host_failure(&f.target).is_none() => {
            return Err(refuse_failover(
                guest_name,
                format!("{} has not confirmed that no copy runs there since its attempt failed", f.target),
            ))
        }
        Some(f) => {
            let mut tried: Vec<Name> = f.tried.iter().map(|(h, _)| h.clone()).collect();
            tried.push(f.target.clone());
            (f.failed_host.clone(), tried)
        }
        None => {
            if state.host_failure(&guest.owner).is_none() {
                return Err(refuse_failover(guest_name, format!("its host {} has not failed", guest.owner)));
            }
            if let Some(why) = crate::ha::unprotected(state, guest) {
                return Err(refuse_failover(guest_name, why));
            }
            if let Some(target) = crate::ha::copy_left_by_move(state, guest_name).filter(|t| *t != to) {
                return Err(refuse_failover(
                    guest_name,
                    format!("it may run on {target}, where its migration from {} ended after that host failed: the failover goes there first", guest.owner),
                ));
            }
            (guest.owner.clone(), Vec::new())
        }
    };
    let package_name = guest.spec.package.clone().expect("a protected guest has a package");
    let package = state.package(&package_name).expect("a guest's package exists");
    let candidate = crate::ha::candidates(state, guest, package, &tried).into_iter().find(|c| c.host == *to);
    let reason = match candidate {
        None => return Err(refuse_failover(guest_name, format!("{to} is not a node of package {package_name}"))),
        Some(Candidate { excluded: Some(why), .. }) => {
            return Err(refuse_failover(guest_name, format!("{to} is not eligible: {why}")))
        }
        Some(_) => crate::ha::choose(state, guest, package, &tried)
            .ok()
            .filter(|(h, _)| h == to)
            .map_or_else(|| format!("{to} chosen by the leader among the eligible nodes"), |(_, why)| why),
    };
    Ok(vec![EventPayload::FailoverStarted {
        guest: guest_name.clone(),
        package: package_name,
        failed_host,
        from: guest.owner.clone(),
        to: to.clone(),
        reason,
    }])
}

fn check_host_spec(spec: &HostSpec) -> Result<(), Rejection> {
    check_text("address", &spec.address, ADDRESS_LEN_MAX)?;
    check_token("profile.hardware_family", &spec.profile.hardware_family, PROFILE_FIELD_LEN_MAX)?;
    check_token("profile.hypervisor_version", &spec.profile.hypervisor_version, PROFILE_FIELD_LEN_MAX)?;
    check_range("capacity.vcpus", spec.capacity.vcpus as u64, 1, HOST_VCPUS_MAX as u64)?;
    check_range("capacity.memory_mib", spec.capacity.memory_mib, 1, HOST_MEMORY_MIB_MAX)?;
    if spec.labels.len() > HOST_LABELS_MAX {
        return Err(Rejection::invalid(
            "labels",
            format!("{} labels; at most {HOST_LABELS_MAX} are allowed", spec.labels.len()),
        ));
    }
    Ok(())
}

fn apply_register_host(state: &ClusterState, spec: &HostSpec, next: Revision) -> Result<Vec<EventPayload>, Rejection> {
    check_host_spec(spec)?;
    if state.host(&spec.name).is_some() {
        return Err(Rejection::HostExists { host: spec.name.clone() });
    }
    let host = Host { spec: spec.clone(), maintenance: false, reachable: true, version: next };
    Ok(vec![EventPayload::HostRegistered { host }])
}

fn apply_modify_host(
    state: &ClusterState,
    name: &Name,
    patch: &HostPatch,
    expect_version: Option<Revision>,
    next: Revision,
) -> Result<Vec<EventPayload>, Rejection> {
    if patch.is_empty() {
        return Err(Rejection::invalid("patch", "nothing to change"));
    }
    let old = host_at_version(state, name, expect_version)?;
    let spec = patch.applied_to(&old.spec);
    check_host_spec(&spec)?;
    let committed = state.committed_resources(name);
    if !committed.fits_in(spec.capacity) {
        return Err(Rejection::CapacityBelowCommitted { host: name.clone(), committed, requested: spec.capacity });
    }
    // A migration checked the two ends' profiles when it was requested: it must not end between
    // hosts that no longer match.
    if spec.profile != old.spec.profile {
        if let Some(m) = migrations_naming(state, name).next() {
            return Err(Rejection::HostInUse {
                host: name.clone(),
                why: format!("is an end of migration {} (of {}), checked against its current profile", m.id, m.guest),
                fix: format!(
                    "wait for it to end or abort it (switchyard migration abort {}), then change the profile",
                    m.id
                ),
            });
        }
    }
    let host = Host { spec, version: next, ..old.clone() };
    Ok(vec![EventPayload::HostModified { host }])
}

fn apply_remove_host(
    state: &ClusterState,
    name: &Name,
    expect_version: Option<Revision>,
) -> Result<Vec<EventPayload>, Rejection> {
    host_at_version(state, name, expect_version)?;
    let in_use = |why: String, fix: String| Err(Rejection::HostInUse { host: name.clone(), why, fix });
    if state.drain(name).is_some() {
        return in_use("is being drained".into(), format!("end the drain first (switchyard host undrain {name})"));
    }
    let owned = guests_on(state, name);
    if !owned.is_empty() {
        return in_use(
            format!("still owns {}", listed("guest", &owned)),
            "move them to other hosts (switchyard migration request GUEST --to HOST) or remove them first".into(),
        );
    }
    if let Some(m) = migrations_naming(state, name).next() {
        return in_use(
            format!("is an end of migration {} (of {})", m.id, m.guest),
            format!("wait for it to end or abort it (switchyard migration abort {})", m.id),
        );
    }
    let naming: Vec<&Name> = state
        .packages()
        .filter(|p| p.nodes.contains(name) || p.disabled_nodes.contains(name))
        .map(|p| &p.name)
        .collect();
    if let Some(p) = naming.first() {
        return in_use(
            format!("is named by {}", listed("package", &naming)),
            format!(
                "take it out of their node lists first (switchyard package modify {p} --nodes ...; a per-node switch: switchyard package enable {p} --node {name})"
            ),
        );
    }
    Ok(vec![EventPayload::HostRemoved { host: name.clone() }])
}

fn apply_set_host_maintenance(
    state: &ClusterState,
    host: &Name,
    maintenance: bool,
) -> Result<Vec<EventPayload>, Rejection> {
    let h = known_host(state, host)?;
    // Maintenance means the host can be worked on: nothing of the cluster's may still run there.
    // A failed host is the exception: its guests cannot be moved online, and the operator may
    // need it in maintenance to repair it.
    if maintenance && !h.maintenance && state.host_failure(host).is_none() {
        let owned = guests_on(state, host);
        if !owned.is_empty() {
            return Err(Rejection::HostInUse {
                host: host.clone(),
                why: format!("still owns {}", listed("guest", &owned)),
                fix: format!(
                    "drain it instead: switchyard host drain {host} (moves them, then puts it in maintenance)"
                ),
            });
        }
    }
    Ok(vec![EventPayload::HostMaintenanceChanged { host: host.clone(), maintenance }])
}

fn apply_start_drain(
    state: &ClusterState,
    p: &Proposal,
    host: &Name,
    allow_offline: bool,
    max_parallel: u32,
    next: Revision,
) -> Result<Vec<EventPayload>, Rejection> {
    check_range("max_parallel", max_parallel as u64, 1, DRAIN_PARALLEL_MAX as u64)?;
    let h = known_host(state, host)?;
    let refuse = |why: &str| Err(Rejection::DrainRefused { host: host.clone(), why: why.into() });
    match state.host_state(h) {
        HostState::Draining => return refuse("a drain is under way (host show shows its progress)"),
        HostState::Failed => {
            return refuse("it has failed: its packaged guests fail over, the others wait for it (ha status)")
        }
        HostState::Unreachable => return refuse("its agent stopped reporting, so nothing can move from it online"),
        HostState::Active | HostState::Maintenance => {}
    }
    let drain = Drain { host: host.clone(), started: next, actor: p.actor.clone(), allow_offline, max_parallel };
    Ok(vec![EventPayload::DrainStarted { drain }])
}

fn apply_end_drain(
    state: &ClusterState,
    host: &Name,
    outcome: DrainOutcome,
    reason: &str,
    blocked: &[BlockedGuest],
) -> Result<Vec<EventPayload>, Rejection> {
    check_text("reason", reason, TEXT_LEN_MAX)?;
    if blocked.len() > BLOCKED_GUESTS_MAX {
        return Err(Rejection::invalid("blocked", format!("{} entries; at most {BLOCKED_GUESTS_MAX}", blocked.len())));
    }
    for b in blocked {
        check_text("blocked.why", &b.why, TEXT_LEN_MAX)?;
    }
    let h = known_host(state, host)?;
    if state.drain(host).is_none() {
        return Err(Rejection::DrainRefused { host: host.clone(), why: "no drain is under way".into() });
    }
    let ended =
        EventPayload::DrainEnded { host: host.clone(), outcome, reason: reason.to_string(), blocked: blocked.to_vec() };
    if outcome != DrainOutcome::Completed {
        return Ok(vec![ended]);
    }
    // Completed: nothing of the cluster's is left there, and the host goes into maintenance in
    // the same commit.
    let owned = guests_on(state, host);
    if !owned.is_empty() {
        return Err(Rejection::HostInUse {
            host: host.clone(),
            why: format!("still owns {}", listed("guest", &owned)),
            fix: "the drain completes once they have moved".into(),
        });
    }
    if let Some(m) = migrations_naming(state, host).next() {
        return Err(Rejection::HostInUse {
            host: host.clone(),
            why: format!("is an end of migration {} (of {})", m.id, m.guest),
            fix: "the drain completes once it has ended".into(),
        });
    }
    let mut events = vec![ended];
    if !h.maintenance {
        events.push(EventPayload::HostMaintenanceChanged { host: host.clone(), maintenance: true });
    }
    Ok(events)
}

/// The guests `host` owns, in name order.
fn guests_on<'a>(state: &'a ClusterState, host: &Name) -> Vec<&'a Name> {
    state.guests_on(host).map(|g| &g.name).collect()
}

/// In-flight migrations from or to `host`.
fn migrations_naming<'a>(state: &'a ClusterState, host: &'a Name) -> impl Iterator<Item = &'a Migration> + 'a {
    state.in_flight_migrations().filter(move |m| m.source == *host || m.target == *host)
}

/// "guest vm1", "guests vm1, vm2, vm3 and 4 more": a list an operator can read in one line.
fn listed(what: &str, names: &[&Name]) -> String {
    const SHOWN: usize = 5;
    let shown: Vec<&str> = names.iter().take(SHOWN).map(|n| n.as_str()).collect();
    let more = names.len().saturating_sub(SHOWN);
    let plural = if names.len() == 1 { "" } else { "s" };
    match more {
        0 => format!("{what}{plural} {}", shown.join(", ")),
        _ => format!("{what}{plural} {} and {more} more", shown.join(", ")),
    }
}

fn apply_set_host_reachable(
    state: &ClusterState,
    host: &Name,
    reachable: bool,
) -> Result<Vec<EventPayload>, Rejection> {
    known_host(state, host)?;
    Ok(vec![EventPayload::HostReachabilityChanged { host: host.clone(), reachable }])
}

fn apply_create_guest(
    state: &ClusterState,
    name: &Name,
    spec: &GuestSpec,
    owner: &Name,
    run_state: RunState,
    next: Revision,
) -> Result<Vec<EventPayload>, Rejection> {
    check_guest_spec(spec)?;
    if state.guest(name).is_some() {
        return Err(Rejection::GuestExists { guest: name.clone() });
    }
    let host = known_host(state, owner)?;
    if host.state() != HostState::Active || state.drain(owner).is_some() {
        return Err(Rejection::HostNotActive { host: owner.clone(), state: state.host_state(host) });
    }
    if let Some(p) = &spec.package {
        if let Some(existing) = state.package(p) {
            return Err(Rejection::PackageExists { package: p.clone(), guest: existing.guest.clone() });
        }
    }
    check_capacity(state, host, spec.demand(), crate::model::Resources::default())?;
    check_anti_affinity(state, name, spec, host)?;
    let guest = Guest { name: name.clone(), spec: spec.clone(), owner: owner.clone(), run_state, version: next };
    Ok(vec![EventPayload::GuestCreated { guest }])
}

fn apply_modify_guest(
    state: &ClusterState,
    name: &Name,
    patch: &GuestPatch,
    expect_version: Option<Revision>,
    next: Revision,
) -> Result<Vec<EventPayload>, Rejection> {
    if patch.is_empty() {
        return Err(Rejection::invalid("patch", "nothing to change"));
    }
    let old = guest_at_version(state, name, expect_version)?;
    no_migration_in_flight(state, name)?;
    let spec = patch.applied_to(&old.spec);
    check_guest_spec(&spec)?;
    if let Some(p) = &spec.package {
        if let Some(existing) = state.package(p) {
            if existing.guest != *name {
                return Err(Rejection::PackageExists { package: p.clone(), guest: existing.guest.clone() });
            }
        }
    }
    let host = known_host(state, &old.owner)?;
    check_capacity(state, host, spec.demand(), old.spec.demand())?;
    if spec.anti_affinity != old.spec.anti_affinity {
        check_anti_affinity(state, name, &spec, host)?;
    }
    let guest = Guest {
        name: name.clone(),
        spec,
        owner: old.owner.clone(),
        run_state: patch.run_state.unwrap_or(old.run_state),
        version: next,
    };
    Ok(vec![EventPayload::GuestModified { guest }])
}

fn apply_remove_guest(
    state: &ClusterState,
    name: &Name,
    expect_version: Option<Revision>,
) -> Result<Vec<EventPayload>, Rejection> {
    guest_at_version(state, name, expect_version)?;
    no_migration_in_flight(state, name)?;
    Ok(vec![EventPayload::GuestRemoved { guest: name.clone() }])
}

fn apply_set_package_switching(
    state: &ClusterState,
    package: &Name,
    node: Option<&Name>,
    enabled: bool,
    reason: &Option<String>,
) -> Result<Vec<EventPayload>, Rejection> {
    check_opt_text("reason", reason)?;
    let pkg = state.package(package).ok_or_else(|| Rejection::UnknownPackage { package: package.clone() })?;
    if let Some(n) = node {
        known_host(state, n)?;
    }
    // While a migration runs it owns the package's switching; an operator change now would be
    // overwritten by the migration's restore step.
    no_migration_in_flight(state, &pkg.guest)?;
    Ok(vec![EventPayload::PackageSwitchingChanged {
        package: package.clone(),
        guest: pkg.guest.clone(),
        node: node.cloned(),
        enabled,
        reason: reason.clone(),
        migration: None,
    }])
}

#[allow(clippy::too_many_arguments)]
fn apply_request_migration(
    state: &ClusterState,
    p: &Proposal,
    guest_name: &Name,
    source: &Name,
    target: &Name,
    kind: MigrationKind,
    reason: &Option<String>,
    next: Revision,
) -> Result<Vec<EventPayload>, Rejection> {
    check_opt_text("reason", reason)?;
    let guest = known_guest(state, guest_name)?;
    let source_host = known_host(state, source)?;
    let target_host = known_host(state, target)?;
    if guest.owner != *source {
        return Err(Rejection::WrongSource {
            guest: guest_name.clone(),
            stated: source.clone(),
            actual: guest.owner.clone(),
        });
    }
    if source == target {
        return Err(Rejection::SameSourceAndTarget { guest: guest_name.clone(), host: source.clone() });
    }
    no_migration_in_flight(state, guest_name)?;
    if state.host_state(target_host) != HostState::Active {
        return Err(Rejection::HostNotActive { host: target.clone(), state: state.host_state(target_host) });
    }
    if state.host_failure(source).is_some() {
        return Err(Rejection::HostNotActive { host: source.clone(), state: HostState::Failed });
    }
    if let Some(f) = state.failover(guest_name) {
        return Err(refuse_failover(
            guest_name,
            format!("it is being failed over to {}; migrate it afterwards", f.target),
        ));
    }
    if kind == MigrationKind::Online {
        if !guest.spec.online_migration {
            return Err(Rejection::OnlineMigrationDisabled {
                guest: guest_name.clone(),
                fix: format!("switchyard guest modify {guest_name} -x online_migration=enabled"),
            });
        }
        if guest.spec.cluster_node {
            return Err(Rejection::GuestIsClusterNode {
                guest: guest_name.clone(),
                fix: format!("switchyard guest modify {guest_name} --cluster-node=false"),
            });
        }
        if guest.run_state != RunState::Running {
            return Err(Rejection::GuestNotRunning { guest: guest_name.clone() });
        }
        if source_host.spec.profile != target_host.spec.profile {
            return Err(Rejection::IncompatibleProfiles {
                source_host: source.clone(),
                source_profile: source_host.spec.profile.to_string(),
                target: target.clone(),
                target_profile: target_host.spec.profile.to_string(),
            });
        }
    }
    if kind == MigrationKind::Offline && guest.run_state == RunState::Running {
        return Err(Rejection::GuestRunning {
            guest: guest_name.clone(),
            fix: format!("switchyard migrate {guest_name} --to {target} --offline --allow-stop"),
        });
    }
    check_capacity(state, target_host, guest.spec.demand(), crate::model::Resources::default())?;
    check_anti_affinity(state, guest_name, &guest.spec, target_host)?;
    let package = guest.spec.package.clone();
    let switching_before = package.as_ref().and_then(|p| state.package(p)).map(|p| p.switching_enabled);
    let migration = Migration {
        id: MigrationId(next),
        guest: guest_name.clone(),
        source: source.clone(),
        target: target.clone(),
        kind,
        requested_by: p.actor.clone(),
        reason: reason.clone(),
        package,
        switching_before,
        phase: Phase::Requested,
        history: vec![PhaseRecord { phase: Phase::Requested, at: p.time, revision: next, term: 0 }],
        freeze_time_ms: None,
        error: None,
    };
    Ok(vec![EventPayload::MigrationRequested { migration }])
}

fn apply_advance_migration(
    state: &ClusterState,
    id: MigrationId,
    from: Phase,
    to: Phase,
    freeze_time_ms: Option<u64>,
) -> Result<Vec<EventPayload>, Rejection> {
    let m = live_migration(state, id)?;
    if m.phase != from {
        return Err(Rejection::PhaseConflict { id, expected: from, actual: m.phase });
    }
    if from.next(m.has_package()) != Some(to) {
        return Err(Rejection::InvalidTransition { id, from, to });
    }
    if let Some(ms) = freeze_time_ms {
        if to != Phase::TargetRunning {
            return Err(Rejection::invalid("freeze_time_ms", "only reported when the target runs the guest"));
        }
        check_range("freeze_time_ms", ms, 0, FREEZE_TIME_MS_MAX)?;
    }
    let mut events = Vec::with_capacity(2);
    match to {
        Phase::SwitchingDisabled => events.push(migration_switching(m, false, "disabled for")),
        Phase::OwnerSwitched => events.push(EventPayload::GuestOwnerChanged {
            guest: m.guest.clone(),
            from: m.source.clone(),
            to: m.target.clone(),
            migration: id,
        }),
        Phase::SwitchingEnabled => {
            events.push(migration_switching(m, m.switching_before.unwrap_or(true), "restored after"))
        }
        _ => {}
    }
    events.push(EventPayload::MigrationPhaseChanged {
        id,
        guest: m.guest.clone(),
        phase: to,
        freeze_time_ms,
        error: None,
    });
    Ok(events)
}

/// Fail or abort: roll back (restore switching if this migration changed it; the guest stays on
/// its source), then enter the terminal phase, all in one atomic commit.
fn apply_end_migration(
    state: &ClusterState,
    id: MigrationId,
    phase: Phase,
    error: Option<String>,
) -> Result<Vec<EventPayload>, Rejection> {
    let m = live_migration(state, id)?;
    if !m.phase.can_roll_back() {
        return Err(Rejection::PastOwnerSwitch { id, phase: m.phase });
    }
    let mut events = Vec::with_capacity(2);
    if m.phase >= Phase::SwitchingDisabled && m.has_package() {
        events.push(migration_switching(m, m.switching_before.unwrap_or(true), "restored by rollback of"));
    }
    events.push(EventPayload::MigrationPhaseChanged { id, guest: m.guest.clone(), phase, freeze_time_ms: None, error });
    Ok(events)
}

/// An operator ends a migration stuck after its owner switch: the guest stays with its new
/// owner either way (the move cannot be undone), the package's switching goes back to what it
/// was before the migration, and the history says who resolved it, how and why.
fn apply_resolve_migration(
    state: &ClusterState,
    id: MigrationId,
    outcome: Phase,
    reason: &str,
) -> Result<Vec<EventPayload>, Rejection> {
    if !matches!(outcome, Phase::Completed | Phase::Failed) {
        return Err(Rejection::InvalidArgument {
            field: "outcome".into(),
            reason: format!("a migration is resolved as completed or failed, not {outcome}"),
        });
    }
    check_text("reason", reason, TEXT_LEN_MAX)?;
    if reason.trim().is_empty() {
        return Err(Rejection::InvalidArgument { field: "reason".into(), reason: "say why it is resolved".into() });
    }
    let m = live_migration(state, id)?;
    if m.phase.can_roll_back() {
        return Err(Rejection::InvalidArgument {
            field: "id".into(),
            reason: format!(
                "migration {id} is in phase {}, before the owner switch: abort it (`switchyard migration abort {id}`) or let its phase timeout fail it",
                m.phase
            ),
        });
    }
    let mut events =
        vec![EventPayload::MigrationResolved { id, guest: m.guest.clone(), outcome, reason: reason.to_string() }];
    if m.phase < Phase::SwitchingEnabled && m.has_package() {
        events.push(migration_switching(m, m.switching_before.unwrap_or(true), "restored by resolution of"));
    }
    let error = (outcome == Phase::Failed).then(|| format!("resolved as failed by an operator: {reason}"));
    events.push(EventPayload::MigrationPhaseChanged {
        id,
        guest: m.guest.clone(),
        phase: outcome,
        freeze_time_ms: None,
        error,
    });
    Ok(events)
}

fn migration_switching(m: &Migration, enabled: bool, what: &str) -> EventPayload {
    let package = m.package.clone().expect("only called for migrations of packaged guests");
    EventPayload::PackageSwitchingChanged {
        package,
        guest: m.guest.clone(),
        node: None,
        enabled,
        reason: Some(format!("{what} migration {} to {}", m.id, m.target)),
        migration: Some(m.id),
    }
}

// ---- shared checks ----

fn known_host<'a>(state: &'a ClusterState, name: &Name) -> Result<&'a Host, Rejection> {
    state.host(name).ok_or_else(|| Rejection::UnknownHost { host: name.clone() })
}

fn known_guest<'a>(state: &'a ClusterState, name: &Name) -> Result<&'a Guest, Rejection> {
    state.guest(name).ok_or_else(|| Rejection::UnknownGuest { guest: name.clone() })
}

fn host_at_version<'a>(state: &'a ClusterState, name: &Name, expect: Option<Revision>) -> Result<&'a Host, Rejection> {
    let h = known_host(state, name)?;
    match expect {
        Some(expected) if expected != h.version => {
            Err(Rejection::HostVersionConflict { host: name.clone(), expected, actual: h.version })
        }
        _ => Ok(h),
    }
}

fn guest_at_version<'a>(
    state: &'a ClusterState,
    name: &Name,
    expect: Option<Revision>,
) -> Result<&'a Guest, Rejection> {
    let g = known_guest(state, name)?;
    match expect {
        Some(expected) if expected != g.version => {
            Err(Rejection::VersionConflict { guest: name.clone(), expected, actual: g.version })
        }
        _ => Ok(g),
    }
}

fn no_migration_in_flight(state: &ClusterState, guest: &Name) -> Result<(), Rejection> {
    match state.in_flight(guest) {
        Some(m) => Err(Rejection::MigrationInFlight { guest: guest.clone(), id: m.id }),
        None => Ok(()),
    }
}

/// An in-flight migration; a finished one is refused with its terminal phase.
fn live_migration(state: &ClusterState, id: MigrationId) -> Result<&Migration, Rejection> {
    let m = state.migration(id).ok_or(Rejection::UnknownMigration { id })?;
    if m.phase.is_terminal() {
        return Err(Rejection::MigrationFinished { id, phase: m.phase });
    }
    Ok(m)
}

/// Would `host` still fit everything if a demand of `old` were replaced by `new`?
fn check_capacity(
    state: &ClusterState,
    host: &Host,
    new: crate::model::Resources,
    old: crate::model::Resources,
) -> Result<(), Rejection> {
    let committed = state.committed_resources(&host.spec.name).saturating_sub(old);
    if committed.saturating_add(new).fits_in(host.spec.capacity) {
        return Ok(());
    }
    Err(Rejection::InsufficientCapacity {
        host: host.spec.name.clone(),
        need: new,
        free: host.spec.capacity.saturating_sub(committed),
    })
}

/// Would guest `name` on `host` share a failure domain with another guest of its group?
fn check_anti_affinity(state: &ClusterState, name: &Name, spec: &GuestSpec, host: &Host) -> Result<(), Rejection> {
    match crate::placement::anti_affinity_conflict(state, name, spec, host, &Default::default()) {
        Some(why) => Err(Rejection::AntiAffinity { guest: name.clone(), host: host.spec.name.clone(), why }),
        None => Ok(()),
    }
}

fn check_guest_spec(spec: &GuestSpec) -> Result<(), Rejection> {
    check_range("vcpus", spec.vcpus as u64, 1, GUEST_VCPUS_MAX as u64)?;
    check_range("memory_mib", spec.memory_mib, 1, GUEST_MEMORY_MIB_MAX)?;
    check_list("disks", &spec.disks, DISKS_MAX)?;
    check_list("networks", &spec.networks, NETWORKS_MAX)?;
    Ok(())
}

fn check_list(field: &str, items: &[String], max: usize) -> Result<(), Rejection> {
    if items.len() > max {
        return Err(Rejection::invalid(field, format!("{} entries; at most {max} are allowed", items.len())));
    }
    for (i, item) in items.iter().enumerate() {
        check_token(&format!("{field}[{i}]"), item, ATTACHMENT_LEN_MAX)?;
    }
    Ok(())
}

fn check_range(field: &str, v: u64, min: u64, max: u64) -> Result<(), Rejection> {
    if v < min || v > max {
        return Err(Rejection::invalid(field, format!("{v} is outside {min}..={max}")));
    }
    Ok(())
}

/// Non-empty printable ASCII without spaces: attachment specs, profile fields.
fn check_token(field: &str, s: &str, max: usize) -> Result<(), Rejection> {
    if s.is_empty() {
        return Err(Rejection::invalid(field, "must not be empty"));
    }
    if s.len() > max {
        return Err(Rejection::invalid(field, format!("{} bytes; at most {max} are allowed", s.len())));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(Rejection::invalid(
            field,
            format!("contains {c:?}; only printable ASCII without spaces is allowed"),
        ));
    }
    Ok(())
}

/// Free text: bounded, no control characters.
fn check_text(field: &str, s: &str, max: usize) -> Result<(), Rejection> {
    if s.len() > max {
        return Err(Rejection::invalid(field, format!("{} bytes; at most {max} are allowed", s.len())));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(Rejection::invalid(field, format!("contains control character {c:?}")));
    }
    Ok(())
}

fn check_opt_text(field: &str, s: &Option<String>) -> Result<(), Rejection> {
    s.as_deref().map_or(Ok(()), |s| check_text(field, s, TEXT_LEN_MAX))
}
