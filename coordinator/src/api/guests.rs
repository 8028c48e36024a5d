//! Guests: create, modify, remove, show (with where its definition is current), list.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use switchyard_protocol::api::*;
use switchyard_protocol::{ClusterState, Guest};

use super::hosts::host_views;
use super::{
    name, page, query, read_page, read_simple, submit, submit_body, unknown_guest, Api, ApiError, Caller, Q, S,
};

fn guest_view(st: &ClusterState, g: &Guest) -> GuestView {
    GuestView {
        guest: g.clone(),
        package: g.spec.package.as_ref().and_then(|p| st.package(p)).cloned(),
        migration: st.in_flight(&g.name).cloned(),
        failover: st.failover(&g.name).cloned(),
        hosts: Vec::new(),
    }
}

/// Per host: does it hold `g`'s current configuration? (Leader only; empty elsewhere.)
fn guest_on_hosts(s: &Api, st: &ClusterState, g: &Guest) -> Vec<GuestOnHost> {
    host_views(s, st, st.hosts())
        .into_iter()
        .filter_map(|h| {
            let sync = h.sync?;
            let status = match sync.status {
                SyncStatus::Lagging { .. } if sync.applied_revision.is_some_and(|r| r >= g.version) => {
                    SyncStatus::InSync
                }
                other => other,
            };
            let hv = sync.hypervisor.as_ref();
            let drift = hv
                .and_then(|hv| hv.drift.iter().find(|d| d.guest == g.name))
                .map_or_else(Vec::new, |d| d.drift.clone());
            let pending = hv
                .and_then(|hv| hv.pending.iter().find(|p| p.guest == g.name))
                .map_or_else(Vec::new, |p| p.fields.clone());
            Some(GuestOnHost { host: h.host.spec.name, status, drift, pending })
        })
        .collect()
}

#[utoipa::path(get, path = "/v1/guests", tag = "guests", params(GuestQuery), responses((status = 200, description = "One page; `next_after` names the next", body = Read<Vec<GuestView>>), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn list(State(s): S, q: Q<GuestQuery>) -> Result<Json<Read<Vec<GuestView>>>, ApiError> {
    let q = query(q)?;
    read_page(&s, q.stale, |st| {
        let keep = |g: &&Guest| {
            q.owner.as_ref().is_none_or(|o| g.owner == *o)
                && q.package.as_ref().is_none_or(|p| g.spec.package.as_ref() == Some(p))
        };
        let (guests, next) = page(st.guests_after(q.after.as_ref()).filter(keep), q.limit, |g| &g.name)?;
        Ok((guests.into_iter().map(|g| guest_view(st, g)).collect(), next))
    })
    .await
}

#[utoipa::path(get, path = "/v1/guests/{name}", tag = "guests", params(("name" = String, Path), ReadParams), responses((status = 200, body = Read<GuestView>), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn show(
    State(s): S,
    Path(n): Path<String>,
    q: Q<ReadParams>,
) -> Result<Json<Read<GuestView>>, ApiError> {
    let n = name(&n)?;
    read_simple(&s, q, |st| {
        let g = st.guest(&n).ok_or_else(|| unknown_guest(&n))?;
        Ok(GuestView { hosts: guest_on_hosts(&s, st, g), ..guest_view(st, g) })
    })
    .await
}

#[utoipa::path(post, path = "/v1/guests", tag = "guests", request_body = CreateGuestRequest, responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn create(
    State(s): S,
    Extension(c): Extension<Caller>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    submit_body(&s, &c, &raw, |r: CreateGuestRequest| r).await
}

#[utoipa::path(patch, path = "/v1/guests/{name}", tag = "guests", params(("name" = String, Path)), request_body = ModifyGuestRequest, responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn modify(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let named = name(&n)?;
    submit_body(&s, &c, &raw, |r: ModifyGuestRequest| (named, r)).await
}

#[utoipa::path(delete, path = "/v1/guests/{name}", tag = "guests", params(("name" = String, Path), RemoveParams), responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn remove(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    q: Q<RemoveParams>,
) -> Result<Json<WriteResponse>, ApiError> {
    let p = query(q)?;
    let rid = p.request_id.clone();
    submit(&s, &c, rid.as_deref(), (name(&n)?, p)).await
}
