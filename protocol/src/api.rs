//! Messages of the operator HTTP/JSON API, shared by the coordinator (server) and the CLI and
//! tools (clients). Requests refuse unknown fields, so a typo is an error instead of a silently
//! ignored setting. Names are validated while decoding (see [`Name`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::model::{
    Actor, AntiAffinity, Drain, FailbackPolicy, Failover, FailoverPolicy, FencingToken, Guest, Host, HostFailure,
    HostState, Migration, MigrationId, Package, Phase, Resources, Revision, RunState, Timestamp, TransferStats,
};
use crate::name::Name;
use crate::rejection::Rejection;

pub mod query;
pub mod write;
pub use query::*;
pub use write::*;

/// The body of every error answer: a stable code to match on and a message for people.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    /// For `not_leader`: the leader's API address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

impl From<&Rejection> for ErrorBody {
    fn from(r: &Rejection) -> Self {
        ErrorBody { code: r.code().to_string(), message: r.to_string(), leader: None }
    }
}

/// Answer to every accepted write.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResponse {
    pub request_id: String,
    pub first_revision: Revision,
    pub last_revision: Revision,
    /// True when the request id had been applied before: nothing new was committed.
    pub duplicate: bool,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterHostRequest {
    pub name: Name,
    pub address: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub hardware_family: String,
    pub hypervisor_version: String,
    /// Where the host stands (`{"rack": "r12"}`): what anti-affinity groups spread by.
    #[serde(default)]
    pub labels: BTreeMap<Name, Name>,
    #[serde(default)]
    pub request_id: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    pub maintenance: bool,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// An agent's record of a repair: it put the log's state of `guest` back on its hypervisor
/// (`POST /v1/hosts/{name}/repairs`, committed as a `GuestRepaired` event).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairRequest {
    pub guest: Name,
    /// What the agent did: `define`, `undefine`, `start`, `stop`.
    pub action: String,
    /// What it found, in words.
    pub reason: String,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// `GET /v1/packages/{name}`: a package, where its guest runs, its failover in flight, and
/// every node of its list with why it could not take the guest now.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageView {
    #[serde(flatten)]
    pub package: Package,
    pub owner: Name,
    pub failover: Option<Failover>,
    pub candidates: Vec<crate::ha::Candidate>,
}

/// `GET /v1/ha`: failed hosts, failovers in flight, and guests left down with why.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaStatus {
    pub failed_hosts: Vec<FailedHost>,
    pub failovers: Vec<Failover>,
    pub down: Vec<DownGuest>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedHost {
    pub host: Name,
    pub failure: HostFailure,
}

/// A guest of a failed host that runs nowhere, and why it is not failed over (yet).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownGuest {
    pub guest: Name,
    pub host: Name,
    pub why: String,
}

/// A failover target's agent says how its attempt ended (`POST /v1/hosts/{name}/failovers`,
/// committed as `FailoverCompleted` or `FailoverAttemptFailed`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverReportRequest {
    pub guest: Name,
    /// The token of the `FailoverStarted` that asked this host to start the guest.
    pub token: FencingToken,
    pub outcome: FailoverOutcome,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// How a failover attempt ended on its target.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FailoverOutcome {
    /// The guest runs here.
    Started,
    /// The guest could not be started here, and no copy of it runs here.
    Failed { error: String },
    /// The attempt here was ended by the leader (it waited too long), and no copy of the
    /// guest runs here: the next node may start it.
    Released,
}

/// `package modify`: the node list and the policies; an absent field stays as it is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModifyPackageRequest {
    #[serde(default)]
    pub nodes: Option<Vec<Name>>,
    #[serde(default)]
    pub failover_policy: Option<FailoverPolicy>,
    #[serde(default)]
    pub failback_policy: Option<FailbackPolicy>,
    #[serde(default)]
    pub request_id: Option<String>,
}

fn yes() -> bool {
    true
}

fn running() -> RunState {
    RunState::Running
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGuestRequest {
    pub name: Name,
    /// The host the guest runs on.
    pub owner: Name,
    pub vcpus: u32,
    pub memory_mib: u64,
    #[serde(default)]
    pub disks: Vec<String>,
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default = "yes")]
    pub online_migration: bool,
    #[serde(default)]
    pub cluster_node: bool,
    #[serde(default)]
    pub package: Option<Name>,
    /// The anti-affinity group the guest belongs to, and what it spreads by.
    #[serde(default)]
    pub anti_affinity: Option<AntiAffinity>,
    #[serde(default = "running")]
    pub run_state: RunState,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// A drain under way and how far it is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainView {
    #[serde(flatten)]
    pub drain: Drain,
    /// Guests the host still owns (moving ones included).
    pub guests_left: usize,
    /// Migrations from (or to) the host in flight.
    pub moving: usize,
}

/// `POST /v1/hosts/{name}/drain`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Move guests that cannot move online offline (a running one is stopped on the source and
    /// started on the target); without it the drain stops before them and says why.
    #[serde(default)]
    pub allow_offline: bool,
    /// Migrations from the host at once (the coordinators' `migration.drain_max_parallel`
    /// when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `POST /v1/hosts/{name}/undrain`: end the drain under way; its migrations in flight finish or
/// roll back on their own, so every guest is where it was or fully moved.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UndrainRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `PATCH /v1/hosts/{name}`: what changes (the rest stays).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModifyHostRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_family: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor_version: Option<String>,
    /// Labels to set (added, or given a new value); the others stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<Name, Name>>,
    /// Labels to remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_labels: Option<Vec<Name>>,
    /// Refuse the change unless the host is still at this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_version: Option<Revision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModifyGuestRequest {
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub disks: Option<Vec<String>>,
    #[serde(default)]
    pub networks: Option<Vec<String>>,
    #[serde(default)]
    pub online_migration: Option<bool>,
    #[serde(default)]
    pub cluster_node: Option<bool>,
    /// Wrap the guest in this package (replacing any other).
    #[serde(default)]
    pub package: Option<Name>,
    /// Remove the guest's package.
    #[serde(default)]
    pub remove_package: bool,
    /// Put the guest in this anti-affinity group (replacing any other).
    #[serde(default)]
    pub anti_affinity: Option<AntiAffinity>,
    /// Take the guest out of its anti-affinity group.
    #[serde(default)]
    pub remove_anti_affinity: bool,
    #[serde(default)]
    pub run_state: Option<RunState>,
    /// Refuse the change unless the guest is still at this version.
    #[serde(default)]
    pub expect_version: Option<Revision>,
    #[serde(default)]
    pub request_id: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchingRequest {
    pub enabled: bool,
    /// Per-node switching of this host instead of the package's global switch.
    #[serde(default)]
    pub node: Option<Name>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// A host with its derived state.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    #[serde(flatten)]
    pub host: Host,
    pub state: HostState,
    /// The drain under way, with its progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainView>,
    /// How the host's applied configuration compares with the cluster's, from its agent's last
    /// report to the leader. `None` when this node is not the leader (reports live there).
    #[serde(default)]
    pub sync: Option<HostSync>,
    /// Resources committed on the host: its guests' and those of migrations heading there.
    #[serde(default)]
    pub committed: Resources,
}

/// An agent's report: what it has applied (`POST /v1/hosts/{name}/report`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostReport {
    pub applied_revision: Revision,
    /// `HostConfig::digest` of the applied configuration.
    pub digest: u64,
    /// What the host's hypervisor holds against the log, from agents whose driver manages the
    /// guests' lifecycle (the qemu driver); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<HypervisorReport>,
}

/// Longest list of drifted or pending guests one report carries; the totals count them all.
pub const HYPERVISOR_REPORT_GUESTS_MAX: usize = 1000;

/// The content type of a `/metrics` answer (coordinators' and agents').
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How a host's hypervisor differs from the log, as its agent read it last.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HypervisorReport {
    /// Guests that differ (at most [`HYPERVISOR_REPORT_GUESTS_MAX`], by name).
    pub drift: Vec<GuestDrift>,
    pub drift_total: u64,
    /// Changes waiting for their guest's next start (Proxmox's "pending changes").
    pub pending: Vec<PendingChange>,
    pub pending_total: u64,
    /// Repairs the agent made since it started: the log's state put back on the hypervisor.
    pub repairs: u64,
}

/// One guest that differs from the log on a host, and how.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestDrift {
    pub guest: Name,
    pub drift: Vec<Drift>,
}

/// How a guest on a host differs from the log.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Drift {
    /// The log has the guest; the host has no definition of it.
    Missing,
    /// The host's definition differs from the log's in these fields.
    Differs { fields: Vec<String> },
    /// The guest should run on this host and does not; its state there.
    NotRunning { state: String },
    /// A copy is live on this host and the log says it should not be.
    RunningHere { state: String },
    /// The hypervisor holds a guest the log does not know (reported, never touched).
    Unknown,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Missing => f.write_str("not defined here"),
            Drift::Differs { fields } => write!(f, "definition differs in {}", fields.join(", ")),
            Drift::NotRunning { state } => write!(f, "should run here, is {state}"),
            Drift::RunningHere { state } => write!(f, "{state} here, should not be"),
            Drift::Unknown => f.write_str("unknown to the log"),
        }
    }
}

/// A change to a running guest that applies at its next start.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChange {
    pub guest: Name,
    pub fields: Vec<String>,
}

/// Sync status of one host.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    /// Same revision, same digest.
    InSync,
    /// Behind by `behind` revisions.
    Lagging { behind: Revision },
    /// Same revision, different digest: the host's files differ from the cluster's.
    Diverged,
    /// No report for longer than the report timeout.
    Silent,
    /// No report since this leader took over.
    Unknown,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSync {
    pub status: SyncStatus,
    pub applied_revision: Option<Revision>,
    /// Milliseconds since the last report, if any.
    pub last_report_ms_ago: Option<u64>,
    /// The hypervisor's drift and pending changes, from the last report that carried them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<HypervisorReport>,
}

/// A guest with its package, and the in-flight migration if any.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestView {
    #[serde(flatten)]
    pub guest: Guest,
    pub package: Option<Package>,
    pub migration: Option<Migration>,
    /// The guest's failover in flight, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
    /// `guest show` on the leader: whether each host holds this guest's current configuration
    /// (`in_sync` once the host applied the guest's version, even if it lags on other guests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<GuestOnHost>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestOnHost {
    pub host: Name,
    pub status: SyncStatus,
    /// How the host's hypervisor differs from the log for this guest, from its agent's last
    /// reading (agents whose driver manages the lifecycle; capped like the report).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<Drift>,
    /// Fields changed while the guest runs on this host, applied at its next start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
}

/// A read answer: the value and the revision it was read at.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read<T> {
    pub revision: Revision,
    pub items: T,
    /// A paged list that has more: pass this as `after` to read the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

impl<T> Read<T> {
    /// A whole answer (not a page of a longer list).
    pub fn new(revision: Revision, items: T) -> Read<T> {
        Read { revision, items, next_after: None }
    }
}

/// One coordinator in `cluster init` / `cluster add-node`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    pub id: u64,
    pub raft_addr: String,
    pub api_addr: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    /// The initial members; empty means "this node alone".
    #[serde(default)]
    pub members: Vec<MemberSpec>,
    /// Leave the cluster without an identity, ready for `switchyard log restore` to import an
    /// export and then commit a new identity. Otherwise init commits a fresh identity at
    /// revision 1 before it answers.
    #[serde(default)]
    pub for_restore: bool,
}

/// `POST /v1/cluster/identity`: commit the cluster's identity (`cluster init` does it; `log
/// restore` does it to finish a restore, with `restored_from`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRequest {
    pub request_id: Option<String>,
    /// The id to commit; a fresh random one when absent.
    pub cluster: Option<crate::model::ClusterId>,
    pub restored_from: Option<crate::model::RestoredFrom>,
}

/// `GET /v1/cluster/identity`: the identity, and a restore in progress if any.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityView {
    pub identity: Option<crate::model::ClusterIdentity>,
    pub importing: Option<crate::model::ImportProgress>,
}

/// `POST /v1/cluster/import`: the next chunk of an export (`log restore`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub request_id: Option<String>,
    /// The exported cluster's id, from the export header.
    pub cluster: Option<crate::model::ClusterId>,
    /// The export's hash chain after the chunk's last event.
    pub chain: String,
    pub events: Vec<crate::event::Event>,
}

/// What one coordinator says about itself.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u64,
    /// leader, follower, candidate or learner.
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Last log index covered by this node's current snapshot.
    #[serde(default)]
    pub snapshot_index: Option<u64>,
    /// Last log index this node has purged from its log.
    #[serde(default)]
    pub purged_index: Option<u64>,
    pub revision: Revision,
    /// The first revision of this node's history: 1 (or the retention window's start) once it
    /// is whole; higher while a node that installed a snapshot fetches the older part.
    #[serde(default)]
    pub history_first: Revision,
    /// The restore this node holds in progress (`log restore` checks every member holds the
    /// same one before committing the new identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importing: Option<crate::model::ImportProgress>,
    /// Set while this node's Raft is stopped on an error (its storage failed: a full or
    /// failing disk): it refuses writes and serves stale reads until it recovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
}

/// One member as `cluster status` shows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: u64,
    pub raft_addr: String,
    pub api_addr: String,
    pub voter: bool,
    /// `None` when the member did not answer.
    pub status: Option<NodeStatus>,
    /// How many log entries the member's applied index is behind the leader's last log index.
    pub lag: Option<u64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub leader: Option<u64>,
    pub members: Vec<MemberStatus>,
}

/// One item of an event subscription (`GET /v1/events`). The same type travels as JSON lines
/// (`format=jsonl`, for tools and `curl`) or as length-prefixed binary frames (`format=binary`,
/// for agents): a big-endian `u32` length, then the item encoded by `codec::encode`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamItem {
    /// The next matching event. Revisions strictly increase within a stream.
    Event(Box<Event>),
    /// Every matching event up to `revision` has been sent: an idle subscriber may advance its
    /// cursor to here and resume from `revision + 1`.
    Progress { revision: Revision },
    /// The requested start is older than the retained history. Re-read full state (at
    /// `snapshot_revision` or later) and resume from `first_retained`.
    Compacted { first_retained: Revision, snapshot_revision: Revision },
}

/// The whole desired configuration at one revision (`GET /v1/state`): what a subscriber re-reads
/// after a `compacted` answer before resuming from `revision + 1`, and what recovery tooling
/// compares (`log replay --diff`, [`FullState::digest`]).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullState {
    /// The cluster this state belongs to (`None` before `cluster init` committed an identity).
    /// A subscriber that finds another id than the one it follows re-syncs from this state.
    pub cluster: Option<crate::model::ClusterIdentity>,
    pub hosts: Vec<Host>,
    pub guests: Vec<Guest>,
    pub packages: Vec<Package>,
    /// Migrations in flight.
    pub migrations: Vec<Migration>,
}

impl FullState {
    /// The configuration held by `state` (one home for the API and the recovery tools).
    pub fn of(state: &crate::state::ClusterState) -> FullState {
        FullState {
            cluster: state.identity().cloned(),
            hosts: state.hosts().cloned().collect(),
            guests: state.guests().cloned().collect(),
            packages: state.packages().cloned().collect(),
            migrations: state.in_flight_migrations().cloned().collect(),
        }
    }

    /// SHA-256 of the canonical encoding, as hex: equal digests mean equal configurations.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let bytes = crate::codec::encode(self);
        sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
    }
}

// ---- migrations ----

/// `POST /v1/migrations`: move `guest` from where it runs now to `target`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    pub guest: Name,
    pub target: Name,
    /// Move the guest while it is down instead of live.
    #[serde(default)]
    pub offline: bool,
    /// With `offline`: a running guest may be stopped on the source for the move (and is
    /// started on the target). Without it, an offline move of a running guest is refused.
    #[serde(default)]
    pub allow_stop: bool,
    pub reason: Option<String>,
    pub request_id: Option<String>,
}

/// `POST /v1/migrations/{id}/abort`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortRequest {
    pub reason: Option<String>,
    pub request_id: Option<String>,
}

/// `POST /v1/migrations/{id}/resolve`: an operator ends a migration stuck after its owner
/// switch as `completed` or `failed` (the guest stays with its new owner either way), with why.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// `completed` or `failed`.
    pub outcome: Phase,
    pub reason: String,
    pub request_id: Option<String>,
}

/// `POST /v1/migrations/{id}/target`: the target's agent of a failed or aborted online
/// migration says whether the guest runs there (committed as `MigrationTargetChecked`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetCheckRequest {
    /// The token of the migration's terminal phase.
    pub token: FencingToken,
    /// True: the guest runs there and goes back to the source. False: no copy is left there
    /// and none can arrive, so the source may resume the copy it holds paused.
    pub runs_there: bool,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// `POST /v1/migrations/{id}/report`: an agent tells the leader what it did for the phase whose
/// commit carried `token`. Only the migration's source or target may report, each only its own
/// part: the source reports the transfer's end, the target that the guest runs there.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationReport {
    pub phase: Phase,
    pub token: FencingToken,
    pub outcome: ReportOutcome,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ReportOutcome {
    /// Source: the transfer finished; the guest was frozen for `freeze_time_ms` (unknown when
    /// the agent restarted and found the guest already moved).
    TransferDone {
        freeze_time_ms: Option<u64>,
        /// What the hypervisor measured of the transfer, when it tells (QEMU does).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stats: Option<TransferStats>,
    },
    /// Source: the hypervisor refused or failed the transfer; the guest still runs on the source.
    TransferFailed { error: String },
    /// Target: the guest runs here.
    GuestRunning,
}

impl ReportOutcome {
    /// The outcome's name, without its details (a metric's label).
    pub fn kind(&self) -> &'static str {
        match self {
            ReportOutcome::TransferDone { .. } => "transfer_done",
            ReportOutcome::TransferFailed { .. } => "transfer_failed",
            ReportOutcome::GuestRunning => "guest_running",
        }
    }
}

/// The leader's answer to a report: its term lets the agent refuse answers from a deposed leader.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAck {
    pub migration: MigrationId,
    pub phase: Phase,
    pub term: u64,
}

/// `GET /v1/migrations`: one page of migration history, oldest first. Pass `next_after` as
/// `after` to read the next page.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationPage {
    pub migrations: Vec<Migration>,
    pub next_after: Option<MigrationId>,
}

/// One migration as `GET /v1/migrations/{id}` shows it: its record, and what the hypervisor
/// measured of its transfer while the history still holds that.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationDetail {
    #[serde(flatten)]
    pub migration: Migration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferStats>,
    /// How an operator resolved it, when it was stuck after its owner switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<MigrationResolution>,
    /// After it failed or was aborted: whether the guest ran on its target, by the target's
    /// first word (`MigrationTargetChecked`), while the history holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_runs: Option<bool>,
}

/// An operator's resolution of a migration stuck after its owner switch.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationResolution {
    pub outcome: Phase,
    pub reason: String,
    pub by: Actor,
    pub at: Timestamp,
}
