//! Query parameters of the API's reads and subscriptions, and the small answers that used to be
//! ad-hoc JSON. The coordinator decodes these from the query string and the typed client encodes
//! them, so a parameter means the same on both sides. Unknown parameters are refused.

use super::*;
use crate::model::ClusterId;

/// Largest page of a list (`limit`): no answer carries 100 000 guests at once.
pub const PAGE_MAX: usize = 10_000;
/// A list's page when the caller names no `limit`.
pub const PAGE_DEFAULT: usize = 1000;
/// Largest page of migration history.
pub const MIGRATION_PAGE_MAX: usize = 1000;

/// `?stale=true`: answer from this coordinator's applied state without confirming leadership.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

/// `GET /v1/rebalance`: a plan that evens out the active hosts' static load.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebalanceQuery {
    /// No moves while the most and the least loaded active host are at most this many
    /// percentage points apart (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_pct: Option<u32>,
    /// At most this many moves (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_moves: Option<usize>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

impl RebalanceQuery {
    pub const THRESHOLD_PCT_DEFAULT: u32 = 10;
    pub const MAX_MOVES_DEFAULT: usize = 100;
    pub const MAX_MOVES_MAX: usize = 1000;
}

/// `GET /v1/hosts`: hosts in name order, paged.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostQuery {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// Only hosts in this state: active, maintenance or unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<HostState>,
    /// Only names after this one (the previous page's `next_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Name>,
    /// At most this many (1 to [`PAGE_MAX`], default [`PAGE_DEFAULT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `GET /v1/guests`: guests in name order, filtered and paged.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestQuery {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// Only guests owned by (running on) this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Name>,
    /// Only the guest of this package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `GET /v1/packages`: packages in name order, paged.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageQuery {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// Only packages whose global switching is disabled (guests unprotected now).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unprotected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Which end of the history a list starts at.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Newest first (the default: what an operator looks for).
    #[default]
    Newest,
    /// Oldest first (a tool reading the whole history forward).
    Oldest,
}

/// `GET /v1/migrations`: migration history, filtered and paged.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationQuery {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Name>,
    /// Migrations from or to this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Name>,
    /// A phase, or `in_flight` / `finished`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Requested at or after (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Requested before (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// `newest` (default) or `oldest` first.
    #[serde(default)]
    pub order: Order,
    /// Only ids after this one in the listing order (the previous page's `next_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// At most this many (1 to [`MIGRATION_PAGE_MAX`], default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// The query of `DELETE /v1/guests/{name}` and `DELETE /v1/hosts/{name}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveParams {
    /// Refuse unless the guest (host) is still at this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_version: Option<Revision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `GET /v1/events`: a subscription.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// First revision wanted (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Revision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Comma-separated kinds: cluster, host, guest, package, migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Keep the stream open and follow new events.
    #[serde(default)]
    pub follow: bool,
    /// `jsonl` (default) or `binary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Interval of progress marks while following (100 to 60000 ms, default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_ms: Option<u64>,
    /// The cluster id the subscriber follows. A coordinator of another cluster answers
    /// `cluster_mismatch` (re-sync from `GET /v1/state`); one that has not applied that identity
    /// yet, or is being restored, answers `unavailable` (retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// `POST /v1/cluster/init`'s answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitResponse {
    /// The initial members' ids.
    pub initialized: Vec<u64>,
    /// The identity committed at revision 1 (absent for `for_restore`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterId>,
    #[serde(default)]
    pub for_restore: bool,
}

/// `POST /v1/cluster/identity`'s answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityResponse {
    pub cluster: Option<ClusterId>,
    /// The revision of the identity's commit (absent when it was committed before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<Revision>,
    pub duplicate: bool,
}

/// `POST /v1/cluster/nodes`'s answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAdded {
    pub added: u64,
}

/// `DELETE /v1/cluster/nodes/{id}`'s answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRemoved {
    pub removed: u64,
}

/// `POST /v1/node/snapshot`'s answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBuilt {
    pub snapshot_index: Option<u64>,
    pub revision: Revision,
    pub build_ms: u64,
}

/// `POST /v1/hosts/{name}/report`'s answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRecorded {
    pub recorded: Name,
    /// The lease this report renewed, when the leader confirmed its leadership before answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseGrant>,
}

/// A renewed host lease, as the agent must keep it (see the coordinator's `ha` configuration).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// The agent fences itself (stops its packaged guests hard) once this long has passed since
    /// it sent the renewal, unless a later renewal was acknowledged.
    pub fence_after_ms: u64,
    /// The log says the host failed: its packaged guests may be running elsewhere, so the agent
    /// keeps them stopped until the leader readmits the host (`HostRecovered`).
    pub failed: bool,
}
