//! Packages: list (filtered to the unprotected ones on request), show, switching.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use switchyard_protocol::api::*;
use switchyard_protocol::{ha, Package, Rejection};

use super::{name, page, query, read_page, read_simple, submit_body, ApiError, Caller, Q, S};

#[utoipa::path(get, path = "/v1/packages", tag = "packages", params(PackageQuery), responses((status = 200, description = "One page; `next_after` names the next", body = Read<Vec<Package>>), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn list(State(s): S, q: Q<PackageQuery>) -> Result<Json<Read<Vec<Package>>>, ApiError> {
    let q = query(q)?;
    read_page(&s, q.stale, |st| {
        let packages = st.packages_after(q.after.as_ref()).filter(|p| !q.unprotected || !p.switching_enabled);
        let (packages, next) = page(packages, q.limit, |p| &p.name)?;
        Ok((packages.into_iter().cloned().collect(), next))
    })
    .await
}

/// A package with the nodes it could fail over to now and why each other node is excluded.
#[utoipa::path(get, path = "/v1/packages/{name}", tag = "packages", params(("name" = String, Path), ReadParams), responses((status = 200, body = Read<PackageView>), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn show(
    State(s): S,
    Path(n): Path<String>,
    q: Q<ReadParams>,
) -> Result<Json<Read<PackageView>>, ApiError> {
    let n = name(&n)?;
    read_simple(&s, q, |st| {
        let package =
            st.package(&n).cloned().ok_or(ApiError::Rejected(Rejection::UnknownPackage { package: n.clone() }))?;
        let guest = st.guest(&package.guest).expect("a package's guest exists");
        let candidates = ha::candidates(st, guest, &package, &[]);
        Ok(PackageView {
            owner: guest.owner.clone(),
            failover: st.failover(&package.guest).cloned(),
            package,
            candidates,
        })
    })
    .await
}

#[utoipa::path(post, path = "/v1/packages/{name}", tag = "packages", params(("name" = String, Path)), request_body = ModifyPackageRequest, responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn modify(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let named = name(&n)?;
    submit_body(&s, &c, &raw, |r: ModifyPackageRequest| (named, r)).await
}

#[utoipa::path(post, path = "/v1/packages/{name}/switching", tag = "packages", params(("name" = String, Path)), request_body = SwitchingRequest, responses((status = 200, description = "Committed (or a duplicate of an earlier request id)", body = WriteResponse), (status = "default", description = "An error: a stable `code` and a message", body = ErrorBody)))]
pub(super) async fn set_switching(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(n): Path<String>,
    raw: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let named = name(&n)?;
    submit_body(&s, &c, &raw, |r: SwitchingRequest| (named, r)).await
}
