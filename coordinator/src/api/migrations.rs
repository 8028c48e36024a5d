//! Migrations: request, abort, agents' reports on the current phase, show, the history list
//! (filtered, paged, newest first unless asked otherwise), and the rebalance plan.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use switchyard_protocol::api::*;
use switchyard_protocol::placement::{plan_rebalance, RebalancePlan};
use switchyard_protocol::{Migration, MigrationId, Name, Phase, Rejection};

use super::{body, body_or_default, query, read_state, submit, submit_body, unknown_guest, ApiError, Caller, Q, S};
use crate::config::Role;

fn migration_id(s: &str) -> Result<MigrationId, ApiError> {
    s.parse().map(MigrationId).map_err(|_| ApiError::BadRequest(format!("migration id {s:?} is not a number")))
}

/// The host of an agent's token: only an agent bound to a host may `what` (about its own part).
fn agent_host(c: &Caller, what: &str) -> Result<Name, ApiError> {
    match (c.role, &c.host) {
        (Role::Agent, Some(host)) => Ok(host.clone()),
        _ => Err(ApiError::Forbidden(format!("only an agent token bound to a host may {what}"))),
    }
}

fn unknown(id: MigrationId) -> ApiError {
    ApiError::Rejected(Rejection::UnknownMigration { id })
}

/// `rebalance --plan`: the moves that would even out the active hosts' static load, each
/// explained, computed from the state read linearizably (unless `stale`). Planning changes
/// nothing; the moves are requested as ordinary migrations.
#[utoipa::path(get, path = "/v1/rebalance", tag = "migrations", params(RebalanceQuery), responses((status = 200, body = Read<RebalancePlan>), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn rebalance(State(s): S, q: Q<RebalanceQuery>) -> Result<Json<Read<RebalancePlan>>, ApiError> {
    let q = query(q)?;
    let threshold_pct = q.threshold_pct.unwrap_or(RebalanceQuery::THRESHOLD_PCT_DEFAULT);
    if threshold_pct > 100 {
        return Err(ApiError::BadRequest(format!("threshold_pct {threshold_pct} is above 100")));
    }
    let max_moves = q.max_moves.unwrap_or(RebalanceQuery::MAX_MOVES_DEFAULT);
    if max_moves > RebalanceQuery::MAX_MOVES_MAX {
        return Err(ApiError::BadRequest(format!("max_moves {max_moves} is above {}", RebalanceQuery::MAX_MOVES_MAX)));
    }
    let threshold = u64::from(threshold_pct) * 10_000;
    let limits = s.node.config.migration.move_limits();
    read_state(&s, q.stale, |st| Ok(RebalancePlan { limits: Some(limits), ..plan_rebalance(st, threshold, max_moves) }))
        .await
}

/// `migrate GUEST --to HOST`: the source is where the guest runs now; the state machine checks
/// every rule again when the request commits.
#[utoipa::path(post, path = "/v1/migrations", tag = "migrations", request_body = MigrateRequest, responses((status = 200, description = "Requested: the migration id is `first_revision`", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn request(
    State(s): S,
    Extension(c): Extension<Caller>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let r: MigrateRequest = body(&raw)?;
    // The source is read from the state: only the leader's is sure to hold every acknowledged
    // write (a lagging follower would answer "unknown guest" for a guest just created).
    if !s.node.is_leader() {
        return Err(s.node.not_leader().into());
    }
    let source =
        s.node.sm.read(|st| st.guest(&r.guest).map(|g| g.owner.clone())).ok_or_else(|| unknown_guest(&r.guest))?;
    let rid = r.request_id.clone();
    submit(&s, &c, rid.as_deref(), r.into_command(source)?).await
}

#[utoipa::path(post, path = "/v1/migrations/{id}/abort", tag = "migrations", params(("id" = u64, Path, description = "The migration id")), request_body = AbortRequest, responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn abort(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let id = migration_id(&id)?;
    let r: AbortRequest = body_or_default(&raw)?;
    let rid = r.request_id.clone();
    submit(&s, &c, rid.as_deref(), (id, r)).await
}

/// Ends a migration stuck after its owner switch (it cannot roll back) as `completed` or
/// `failed`, with a reason kept in its history.
#[utoipa::path(post, path = "/v1/migrations/{id}/resolve", tag = "migrations", params(("id" = u64, Path, description = "The migration id")), request_body = ResolveRequest, responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn resolve(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let id = migration_id(&id)?;
    submit_body(&s, &c, &raw, |r: ResolveRequest| (id, r)).await
}

/// An agent reports its part of the current phase of a migration it takes part in. Held in
/// memory for the driver by every coordinator that receives it and whose applied state has the
/// migration at that phase; a follower then forwards it to the leader, whose answer (with its
/// term) the agent gets. Agents send each report to every coordinator they know, so the one that
/// wins the next election already holds it and moves the migration on at once.
#[utoipa::path(post, path = "/v1/migrations/{id}/report", tag = "migrations", params(("id" = u64, Path)), request_body = MigrationReport, responses((status = 200, body = ReportAck), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn report(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<ReportAck>, ApiError> {
    let id = migration_id(&id)?;
    let r: MigrationReport = body(&raw)?;
    let host = &agent_host(&c, "report on a migration")?;
    let node = &s.node;
    let leader = node.is_leader();
    let m = node.sm.read(|st| st.migration(id).cloned());
    let m = match m {
        Some(m) => Some(m),
        None if leader => node.sm.history().migration(id)?,
        None => None,
    };
    if !leader {
        // Keep what this node can check against its own applied state (it may be the next
        // leader); the leader's answer decides.
        if let Some(m) = m.filter(|m| m.involves(host)) {
            if let Err(e) = node.reports.record(&m, host, &r) {
                tracing::debug!(migration = %id, %e, "report not kept on this follower");
            }
        }
        return Err(node.not_leader().into());
    }
    let m = m.ok_or(unknown(id))?;
    if !m.involves(host) {
        return Err(ApiError::Forbidden(format!(
            "host {host} takes no part in migration {id} ({} to {})",
            m.source, m.target
        )));
    }
    node.reports.record(&m, host, &r)?;
    // In the terms events carry (see `RestoredFrom::term_base`), so agents can compare them.
    let term = node.raft.metrics().borrow().current_term + node.sm.read(|st| st.term_base());
    Ok(Json(ReportAck { migration: id, phase: m.phase, term }))
}

/// The target's agent of a failed or aborted online migration says whether the guest runs
/// there: the source resumes the copy it holds paused, or gets ready to receive the guest back,
/// on the first word committed. Only the migration's target may say it.
#[utoipa::path(post, path = "/v1/migrations/{id}/target", tag = "migrations", params(("id" = u64, Path)), request_body = TargetCheckRequest, responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn check_target(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let id = migration_id(&id)?;
    let host = agent_host(&c, "check a migration's target")?;
    submit_body(&s, &c, &raw, |r: TargetCheckRequest| (id, host, r)).await
}

#[utoipa::path(get, path = "/v1/migrations/{id}", tag = "migrations", params(("id" = u64, Path), ReadParams), responses((status = 200, body = Read<MigrationDetail>), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn show(
    State(s): S,
    Path(id): Path<String>,
    q: Q<ReadParams>,
) -> Result<Json<Read<MigrationDetail>>, ApiError> {
    let id = migration_id(&id)?;
    s.node.read_barrier(query(q)?.stale).await?;
    let revision = s.node.sm.applied_meta().revision;
    let history = s.node.sm.history();
    let migration = history.migration(id)?.ok_or(unknown(id))?;
    Ok(Json(Read::new(revision, history.migration_detail(migration)?)))
}

/// Which phases a list keeps.
type PhaseFilter = Box<dyn Fn(Phase) -> bool + Send>;

/// A phase filter: a phase's name, `in_flight` or `finished`.
fn phase_filter(p: Option<&str>) -> Result<Option<PhaseFilter>, ApiError> {
    Ok(match p {
        None => None,
        Some("in_flight") => Some(Box::new(|p: Phase| !p.is_terminal())),
        Some("finished") => Some(Box::new(|p: Phase| p.is_terminal())),
        Some(x) => {
            let want = Phase::ALL.into_iter().find(|p| p.as_str() == x).ok_or_else(|| {
                ApiError::BadRequest(format!("unknown phase {x:?}; use a phase name, in_flight or finished"))
            })?;
            Some(Box::new(move |p: Phase| p == want))
        }
    })
}

/// Migration history, filtered and paged, newest first unless `order=oldest`; retained across
/// snapshots and log purges (it lives in the event store, not in the Raft log).
#[utoipa::path(get, path = "/v1/migrations", tag = "migrations", params(MigrationQuery), responses((status = 200, body = Read<MigrationPage>), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn list(State(s): S, q: Q<MigrationQuery>) -> Result<Json<Read<MigrationPage>>, ApiError> {
    let q = query(q)?;
    s.node.read_barrier(q.stale).await?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MIGRATION_PAGE_MAX {
        return Err(ApiError::BadRequest(format!("limit must be 1 to {MIGRATION_PAGE_MAX}")));
    }
    let phase = phase_filter(q.phase.as_deref())?;
    let keep = |m: &Migration| {
        let requested = m.history.first().map_or(0, |r| r.at.0);
        q.guest.as_ref().is_none_or(|g| m.guest == *g)
            && q.host.as_ref().is_none_or(|h| m.involves(h))
            && phase.as_ref().is_none_or(|f| f(m.phase))
            && q.since.is_none_or(|t| requested >= t)
            && q.until.is_none_or(|t| requested < t)
    };
    let history = s.node.sm.history();
    let revision = s.node.sm.applied_meta().revision;
    let newest = q.order == Order::Newest;
    // Ids past the cursor in the listing order.
    let past = |id: u64| match (q.after, newest) {
        (None, _) => true,
        (Some(a), true) => id < a,
        (Some(a), false) => id > a,
    };
    let mut migrations = Vec::new();
    let mut more = false;
    let mut take = |m: Migration| {
        if !keep(&m) {
            return true;
        }
        if migrations.len() == limit {
            more = true;
            return false;
        }
        migrations.push(m);
        true
    };
    // A guest or host filter reads its index; otherwise scan the records in id order.
    let ids = match (&q.guest, &q.host) {
        (Some(g), _) => Some(history.migrations_of_guest(g, usize::MAX)?),
        (None, Some(h)) => Some(history.migrations_of_host(h, usize::MAX)?),
        _ => None,
    };
    match ids {
        Some(mut ids) => {
            if newest {
                ids.reverse();
            }
            for id in ids.into_iter().filter(|id| past(id.0)) {
                if let Some(m) = history.migration(id)? {
                    if !take(m) {
                        break;
                    }
                }
            }
        }
        None if newest => history.scan_migrations_back(q.after.unwrap_or(u64::MAX), take)?,
        None => {
            let from = q.after.unwrap_or(0).checked_add(1).ok_or_else(|| {
                ApiError::BadRequest(format!("after must be below {} (the largest migration id)", u64::MAX))
            })?;
            history.scan_migrations(from, take)?
        }
    }
    let next_after = more.then(|| migrations.last().map(|m| m.id)).flatten();
    Ok(Json(Read::new(revision, MigrationPage { migrations, next_after })))
}
