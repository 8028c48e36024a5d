//! Why the state machine refused a command. Every variant has a stable machine-readable code
//! ([`Rejection::code`]) for the wire and a human message (its `Display`) that says what to do.
//! A rejected command yields no event and changes nothing.

use serde::{Deserialize, Serialize};

use crate::model::{ClusterId, HostState, MigrationId, Phase, Resources, Revision};
use crate::name::Name;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("host {host} is already registered")]
    HostExists { host: Name },
    #[error("unknown host {host}")]
    UnknownHost { host: Name },
    #[error("guest {guest} already exists")]
    GuestExists { guest: Name },
    #[error("unknown guest {guest}")]
    UnknownGuest { guest: Name },
    #[error("package {package} already wraps guest {guest}")]
    PackageExists { package: Name, guest: Name },
    #[error("unknown package {package}")]
    UnknownPackage { package: Name },
    #[error("unknown migration {id}")]
    UnknownMigration { id: MigrationId },
    #[error("guest {guest} is at version {actual}, not the expected {expected}; re-read it and retry")]
    VersionConflict { guest: Name, expected: Revision, actual: Revision },
    #[error("host {host} lacks capacity: needs {need}, has {free} free")]
    InsufficientCapacity { host: Name, need: Resources, free: Resources },
    #[error("host {host} is {state}; only an active host can take guests")]
    HostNotActive { host: Name, state: HostState },
    #[error("guest {guest} runs on {actual}, not on {stated}")]
    WrongSource { guest: Name, stated: Name, actual: Name },
    #[error("guest {guest} already runs on {host}; pick another target")]
    SameSourceAndTarget { guest: Name, host: Name },
    #[error("hosts {source_host} ({source_profile}) and {target} ({target_profile}) are not compatible for an online move; use --offline or pick a compatible target")]
    IncompatibleProfiles { source_host: Name, source_profile: String, target: Name, target_profile: String },
    #[error("guest {guest} has online_migration=disabled and cannot be moved online; to allow it run `{fix}`, or move it with --offline")]
    OnlineMigrationDisabled { guest: Name, fix: String },
    #[error("guest {guest} is a cluster node and would be evicted by an online move; move it with --offline, or if it no longer runs cluster software run `{fix}`")]
    GuestIsClusterNode { guest: Name, fix: String },
    #[error("guest {guest} is not running; an online move needs a running guest (use --offline)")]
    GuestNotRunning { guest: Name },
    #[error("guest {guest} has migration {id} in flight; wait for it or abort it first")]
    MigrationInFlight { guest: Name, id: MigrationId },
    #[error("migration {id} is at phase {actual}, not {expected}")]
    PhaseConflict { id: MigrationId, expected: Phase, actual: Phase },
    #[error("migration {id} cannot go from {from} to {to}")]
    InvalidTransition { id: MigrationId, from: Phase, to: Phase },
    #[error("migration {id} already finished as {phase}")]
    MigrationFinished { id: MigrationId, phase: Phase },
    #[error("this cluster already has identity {cluster}; restore seeds a brand-new cluster: start coordinators on empty data directories and run `switchyard cluster init --for-restore`")]
    ClusterExists { cluster: ClusterId },
    #[error("a restore is in progress (imported through revision {through}): finish it with `switchyard log restore` before making changes")]
    RestoreInProgress { through: Revision },
    #[error("import refused: {reason}")]
    ImportRefused { reason: String },
    #[error("migration {id} is past the owner switch (phase {phase}): it can only complete, not be rolled back")]
    PastOwnerSwitch { id: MigrationId, phase: Phase },
    #[error("guest {guest} is running; an offline move stops it on the source and starts it on the target: to allow that run `{fix}`")]
    GuestRunning { guest: Name, fix: String },
    #[error("failover of guest {guest} refused: {reason}")]
    FailoverRefused { guest: Name, reason: String },
    #[error("host {host} is at version {actual}, not the expected {expected}; re-read it and retry")]
    HostVersionConflict { host: Name, expected: Revision, actual: Revision },
    /// A host change that would strand what the host holds: `why` says what, `fix` what to do.
    #[error("host {host} {why}; {fix}")]
    HostInUse { host: Name, why: String, fix: String },
    #[error("cannot drain host {host}: {why}")]
    DrainRefused { host: Name, why: String },
    #[error("host {host} has {committed} committed (its guests and the migrations heading there); a capacity of {requested} cannot hold it: move guests off first, or ask for at least {committed}")]
    CapacityBelowCommitted { host: Name, committed: Resources, requested: Resources },
    /// A placement that would put two guests of an anti-affinity group in one failure domain.
    #[error("guest {guest} cannot be placed on {host}: {why}; pick another host, or move the other guest first")]
    AntiAffinity { guest: Name, host: Name, why: String },
}

impl Rejection {
    /// The stable code clients match on. Never change a published code.
    pub fn code(&self) -> &'static str {
        use Rejection::*;
        match self {
            InvalidArgument { .. } => "invalid_argument",
            HostExists { .. } => "host_exists",
            UnknownHost { .. } => "unknown_host",
            GuestExists { .. } => "guest_exists",
            UnknownGuest { .. } => "unknown_guest",
            PackageExists { .. } => "package_exists",
            UnknownPackage { .. } => "unknown_package",
            UnknownMigration { .. } => "unknown_migration",
            VersionConflict { .. } => "version_conflict",
            InsufficientCapacity { .. } => "insufficient_capacity",
            HostNotActive { .. } => "host_not_active",
            WrongSource { .. } => "wrong_source",
            SameSourceAndTarget { .. } => "same_source_and_target",
            IncompatibleProfiles { .. } => "incompatible_profiles",
            OnlineMigrationDisabled { .. } => "online_migration_disabled",
            GuestIsClusterNode { .. } => "guest_is_cluster_node",
            GuestNotRunning { .. } => "guest_not_running",
            MigrationInFlight { .. } => "migration_in_flight",
            PhaseConflict { .. } => "phase_conflict",
            InvalidTransition { .. } => "invalid_transition",
            MigrationFinished { .. } => "migration_finished",
            GuestRunning { .. } => "guest_running",
            PastOwnerSwitch { .. } => "migration_past_owner_switch",
            ClusterExists { .. } => "cluster_exists",
            RestoreInProgress { .. } => "restore_in_progress",
            ImportRefused { .. } => "import_refused",
            FailoverRefused { .. } => "failover_refused",
            HostVersionConflict { .. } => "version_conflict",
            HostInUse { .. } => "host_in_use",
            CapacityBelowCommitted { .. } => "capacity_below_committed",
            DrainRefused { .. } => "drain_refused",
            AntiAffinity { .. } => "anti_affinity",
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Rejection::InvalidArgument { field: field.into(), reason: reason.into() }
    }
}
