//! Hosts: register, list, show, modify, remove, maintenance, and agents' reports (held by the
//! leader: only reachability transitions reach the log).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use switchyard_protocol::api::*;
use switchyard_protocol::{ClusterState, Command, DrainOutcome, Host, Name, Rejection};

use super::{body, name, page, query, read_page, read_simple, submit, submit_body, Api, ApiError, Caller, Q, S};
use crate::config::Role;

/// Host views with their sync status (known on the leader only).
pub(super) fn host_views<'a>(s: &Api, st: &ClusterState, hosts: impl Iterator<Item = &'a Host>) -> Vec<HostView> {
    let digest = s.node.is_leader().then(|| st.config_digest());
    let timeout = Duration::from_millis(s.node.config.api.host_report_timeout_ms);
    hosts
        .map(|h| HostView {
            host: h.clone(),
            state: st.host_state(h),
            drain: st.drain(&h.spec.name).map(|d| DrainView {
                drain: d.clone(),
                guests_left: st.guests_on(&d.host).count(),
                moving: st.in_flight_migrations().filter(|m| m.source == d.host || m.target == d.host).count(),
            }),
            sync: digest.map(|d| s.node.liveness.sync(h, st, d, timeout)),
            committed: st.committed_resources(&h.spec.name),
        })
        .collect()
}

/// An agent token acts for the one host it is bound to.
fn own_host(c: &Caller, host: &Name, what: &str) -> Result<(), ApiError> {
    if c.host.as_ref() == Some(host) {
        return Ok(());
    }
    let bound = c.host.as_ref().map_or("no host".to_string(), |h| format!("host {h}"));
    Err(ApiError::Forbidden(format!("this token is bound to {bound} and may not {what} for host {host}")))
}

/// The host a path names, which an agent token may act for only if it is bound to it.
fn agent_own_host(c: &Caller, n: &str, what: &str) -> Result<Name, ApiError> {
    let host = name(n)?;
    if c.role == Role::Agent {
        own_host(c, &host, what)?;
    }
    Ok(host)
}

/// An agent reports what it has applied. Only for its own host, and only to the leader (a
/// follower forwards it).
#[utoipa::path(post, path = "/v1/hosts/{name}/report", tag = "hosts", params(("name" = String, Path, description = "The agent's own host")), request_body = HostReport, responses((status = 200, body = ReportRecorded), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn report(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    raw: Bytes,
) -> Result<Json<ReportRecorded>, ApiError> {
    let host = name(&n)?;
    if c.role != Role::Agent {
        return Err(ApiError::Forbidden(format!("only host {host}'s agent token may report for it")));
    }
    own_host(&c, &host, "report")?;
    let r: HostReport = body(&raw)?;
    if s.node.sm.read(|st| st.host(&host).is_none()) {
        return Err(ApiError::Rejected(Rejection::UnknownHost { host }));
    }
    if !s.node.is_leader() {
        return Err(s.node.not_leader().into());
    }
    // The report renews the host's lease only once a quorum has confirmed this node still
    // leads: a deposed leader that has not noticed yet must not extend a lease the new leader
    // does not know of (the timing argument in ARCHITECTURE.md, "Failover and fencing").
    s.node.read_barrier(false).await?;
    let declaring = s.node.liveness.record(&host, &r);
    let failed = declaring || s.node.sm.read(|st| st.host_failure(&host).is_some());
    let lease = LeaseGrant { fence_after_ms: s.node.config.ha.fence_after_ms(), failed };
    Ok(Json(ReportRecorded { recorded: host, lease: Some(lease) }))
}

#[utoipa::path(post, path = "/v1/hosts/{name}/repairs", tag = "hosts", params(("name" = String, Path, description = "The agent's own host")), request_body = RepairRequest, responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn record_repair(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let host = agent_own_host(&c, &n, "record repairs")?;
    submit_body(&s, &c, &raw, |r: RepairRequest| (host, r)).await
}

/// A failover target's agent reports how its attempt to start the guest ended.
#[utoipa::path(post, path = "/v1/hosts/{name}/failovers", tag = "hosts", params(("name" = String, Path, description = "The agent's own host")), request_body = FailoverReportRequest, responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn report_failover(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let host = agent_own_host(&c, &n, "report failovers")?;
    submit_body(&s, &c, &raw, |r: FailoverReportRequest| (host, r)).await
}

/// Failed hosts, failovers in flight, and the guests of failed hosts left down, with why.
#[utoipa::path(get, path = "/v1/ha", tag = "hosts", params(ReadParams), responses((status = 200, body = Read<HaStatus>), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn ha_status(State(s): S, q: Q<ReadParams>) -> Result<Json<Read<HaStatus>>, ApiError> {
    read_simple(&s, q, |st| Ok(ha_status_of(st))).await
}

fn ha_status_of(st: &ClusterState) -> HaStatus {
    let mut status = HaStatus::default();
    for h in st.hosts() {
        if let Some(f) = st.host_failure(&h.spec.name) {
            status.failed_hosts.push(FailedHost { host: h.spec.name.clone(), failure: f.clone() });
        }
    }
    status.failovers = st.failovers().cloned().collect();
    for g in st.guests() {
        if st.host_failure(&g.owner).is_none() || st.failover(&g.name).is_some() {
            continue;
        }
        let why = switchyard_protocol::ha::unprotected(st, g).unwrap_or_else(|| {
            if let Some(m) = st.in_flight(&g.name) {
                return format!("waiting for migration {} to end", m.id);
            }
            let p = g.spec.package.as_ref().and_then(|p| st.package(p)).expect("a protected guest has a package");
            match switchyard_protocol::ha::choose(st, g, p, &[]) {
                Ok((to, _)) => format!("failover to {to} about to start"),
                Err(why) => why,
            }
        });
        status.down.push(DownGuest { guest: g.name.clone(), host: g.owner.clone(), why });
    }
    status
}

#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", params(HostQuery), responses((status = 200, description = "One page; `next_after` names the next", body = Read<Vec<HostView>>), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn list(State(s): S, q: Q<HostQuery>) -> Result<Json<Read<Vec<HostView>>>, ApiError> {
    let q = query(q)?;
    read_page(&s, q.stale, |st| {
        let hosts = st.hosts_after(q.after.as_ref()).filter(|h| q.state.is_none_or(|want| st.host_state(h) == want));
        let (hosts, next) = page(hosts, q.limit, |h| &h.spec.name)?;
        Ok((host_views(&s, st, hosts.into_iter()), next))
    })
    .await
}

#[utoipa::path(get, path = "/v1/hosts/{name}", tag = "hosts", params(("name" = String, Path), ReadParams), responses((status = 200, body = Read<HostView>), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn show(
    State(s): S,
    Path(n): Path<String>,
    q: Q<ReadParams>,
) -> Result<Json<Read<HostView>>, ApiError> {
    let n = name(&n)?;
    read_simple(&s, q, |st| {
        let h = st.host(&n).ok_or(ApiError::Rejected(Rejection::UnknownHost { host: n.clone() }))?;
        Ok(host_views(&s, st, std::iter::once(h)).remove(0))
    })
    .await
}

#[utoipa::path(post, path = "/v1/hosts", tag = "hosts", request_body = RegisterHostRequest, responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn register(
    State(s): S,
    Extension(c): Extension<Caller>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    submit_body(&s, &c, &raw, |r: RegisterHostRequest| r).await
}

#[utoipa::path(patch, path = "/v1/hosts/{name}", tag = "hosts", params(("name" = String, Path)), request_body = ModifyHostRequest, responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn modify(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let named = name(&n)?;
    submit_body(&s, &c, &raw, |r: ModifyHostRequest| (named, r)).await
}

#[utoipa::path(delete, path = "/v1/hosts/{name}", tag = "hosts", params(("name" = String, Path), RemoveParams), responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn remove(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    q: Q<RemoveParams>,
) -> Result<Json<WriteResponse>, ApiError> {
    let p = query(q)?;
    let command = Command::RemoveHost { host: name(&n)?, expect_version: p.expect_version };
    submit(&s, &c, p.request_id.as_deref(), command).await
}

#[utoipa::path(post, path = "/v1/hosts/{name}/drain", tag = "hosts", params(("name" = String, Path)), request_body = DrainRequest, responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn drain(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let host = name(&n)?;
    let r: DrainRequest = body(&raw)?;
    let max_parallel = r.max_parallel.unwrap_or(s.node.config.migration.drain_max_parallel);
    let command = Command::StartDrain { host, allow_offline: r.allow_offline, max_parallel };
    submit(&s, &c, r.request_id.as_deref(), command).await
}

#[utoipa::path(post, path = "/v1/hosts/{name}/undrain", tag = "hosts", params(("name" = String, Path)), request_body = UndrainRequest, responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn undrain(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let host = name(&n)?;
    let r: UndrainRequest = body(&raw)?;
    let reason = r.reason.unwrap_or_else(|| format!("ended by {}", c.actor));
    let command = Command::EndDrain { host, outcome: DrainOutcome::Aborted, reason, blocked: Vec::new() };
    submit(&s, &c, r.request_id.as_deref(), command).await
}

#[utoipa::path(post, path = "/v1/hosts/{name}/maintenance", tag = "hosts", params(("name" = String, Path)), request_body = MaintenanceRequest, responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn set_maintenance(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let named = name(&n)?;
    submit_body(&s, &c, &raw, |r: MaintenanceRequest| (named, r)).await
}
