//! Events: what the log says happened. Each accepted command yields one or more events with
//! consecutive revisions; the cluster state is the fold of all events (see `state.rs`), which is
//! what lets recovery tooling rebuild state at any revision from the history alone.

use serde::{Deserialize, Serialize};

use crate::model::{
    Actor, BlockedGuest, ClusterId, Drain, DrainOutcome, FailbackPolicy, FailoverPolicy, FencingToken, Guest, Host,
    Migration, MigrationId, Phase, RequestId, RestoredFrom, Revision, Timestamp, TransferStats,
};
use crate::name::Name;

/// One entry of the cluster-wide event history.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: Revision,
    /// The Raft term of the log entry that committed this event. With the revision it forms the
    /// event's [`FencingToken`]: tokens only grow along the history.
    pub term: u64,
    /// The proposer's clock when the command was proposed.
    pub time: Timestamp,
    pub actor: Actor,
    pub request_id: RequestId,
    pub payload: EventPayload,
}

/// What changed. Guest and host events carry the whole new record, so a subscriber can apply
/// any one of them without knowing the ones before it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventPayload {
    /// The cluster's identity, committed once at `cluster init` (revision 1), or after the
    /// imported history when a cluster is restored from an export.
    ClusterCreated {
        cluster: ClusterId,
        restored_from: Option<RestoredFrom>,
    },
    HostRegistered {
        host: Host,
    },
    HostMaintenanceChanged {
        host: Name,
        maintenance: bool,
    },
    HostReachabilityChanged {
        host: Name,
        reachable: bool,
    },
    GuestCreated {
        guest: Guest,
    },
    /// The guest's new configuration (whole record).
    GuestModified {
        guest: Guest,
    },
    GuestRemoved {
        guest: Name,
    },
    /// A package's global (`node: None`) or per-node switching changed.
    PackageSwitchingChanged {
        package: Name,
        guest: Name,
        node: Option<Name>,
        enabled: bool,
        reason: Option<String>,
        migration: Option<MigrationId>,
    },
    MigrationRequested {
        migration: Migration,
    },
    MigrationPhaseChanged {
        id: MigrationId,
        guest: Name,
        phase: Phase,
        freeze_time_ms: Option<u64>,
        error: Option<String>,
    },
    /// The guest now runs on `to`. Emitted with the `owner_switched` phase.
    GuestOwnerChanged {
        guest: Name,
        from: Name,
        to: Name,
        migration: MigrationId,
    },
    /// `host`'s agent repaired its hypervisor's copy of the guest from the log.
    GuestRepaired {
        guest: Name,
        host: Name,
        action: String,
        reason: String,
    },
    /// What the hypervisor measured of the migration's transfer.
    MigrationTransferStats {
        id: MigrationId,
        guest: Name,
        stats: TransferStats,
    },
    /// The host's agent renewed a lease for the first time: the host is under failure detection.
    HostJoined {
        host: Name,
    },
    /// The host's lease expired by the leader's clock. `evidence` says by how much.
    HostFailed {
        host: Name,
        evidence: String,
    },
    /// A failed host's agent reported again, caught up with the log: it is eligible again.
    HostRecovered {
        host: Name,
    },
    /// The guest's owner moves from `from` to `to`, which is to start it: its host
    /// `failed_host` failed (or the attempt on `from` failed). The event's token fences it.
    FailoverStarted {
        guest: Name,
        package: Name,
        failed_host: Name,
        from: Name,
        to: Name,
        /// Why `to`: the policy and what was excluded.
        reason: String,
    },
    /// The guest runs on `host` again.
    FailoverCompleted {
        guest: Name,
        host: Name,
    },
    /// The attempt on `host` ended without the guest running there; `released` when `host`
    /// made sure no copy runs there.
    FailoverAttemptFailed {
        guest: Name,
        host: Name,
        /// The attempt's order (its `FailoverStarted`'s token).
        token: FencingToken,
        reason: String,
        released: bool,
    },
    /// `host`, whose attempt failed, made sure no copy of the guest runs there.
    FailoverAttemptReleased {
        guest: Name,
        host: Name,
    },
    /// No node could take the guest: it stays down.
    FailoverFailed {
        guest: Name,
        reason: String,
    },
    /// `package modify`: the package's node list and policies now.
    PackageModified {
        package: Name,
        guest: Name,
        nodes: Vec<Name>,
        failover_policy: FailoverPolicy,
        failback_policy: FailbackPolicy,
    },
    /// An operator resolved a migration stuck after its owner switch as `outcome`, with why;
    /// the phase change to `outcome` follows in the same commit.
    MigrationResolved {
        id: MigrationId,
        guest: Name,
        outcome: Phase,
        reason: String,
    },
    /// A host's new address, capacity or profile (whole record).
    HostModified {
        host: Host,
    },
    /// A host left the cluster (it owned no guest and no package named it).
    HostRemoved {
        host: Name,
    },
    DrainStarted {
        drain: Drain,
    },
    /// A drain ended; `completed` comes with the host's `HostMaintenanceChanged` in the same
    /// commit, `stopped` names the guests it could not move.
    DrainEnded {
        host: Name,
        outcome: DrainOutcome,
        reason: String,
        blocked: Vec<BlockedGuest>,
    },
    /// After online migration `id` failed or was aborted, its target `host` said whether the
    /// guest runs there. If it does, the target sends it back and the source gets ready to
    /// receive it. If not, the target has made sure no copy is left there and none can arrive,
    /// so the source may resume the copy a completed transfer left paused (libvirt's Confirm
    /// after a failed Finish). Only the first such event of a migration counts: a copy that
    /// ran on the target makes the source's paused one stale for good. Changes nothing in the
    /// state.
    MigrationTargetChecked {
        id: MigrationId,
        guest: Name,
        host: Name,
        runs_there: bool,
    },
}

/// The kind of an event, for subscription filters.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    Cluster,
    Host,
    Guest,
    Package,
    Migration,
    /// Host failures, recoveries and failovers.
    Ha,
}

impl EventPayload {
    pub fn kind(&self) -> EventKind {
        use EventPayload::*;
        match self {
            ClusterCreated { .. } => EventKind::Cluster,
            HostRegistered { .. }
            | HostMaintenanceChanged { .. }
            | HostReachabilityChanged { .. }
            | HostModified { .. }
            | HostRemoved { .. }
            | DrainStarted { .. }
            | DrainEnded { .. } => EventKind::Host,
            GuestCreated { .. }
            | GuestModified { .. }
            | GuestRemoved { .. }
            | GuestOwnerChanged { .. }
            | GuestRepaired { .. } => EventKind::Guest,
            PackageSwitchingChanged { .. } => EventKind::Package,
            MigrationRequested { .. }
            | MigrationPhaseChanged { .. }
            | MigrationTransferStats { .. }
            | MigrationResolved { .. }
            | MigrationTargetChecked { .. } => EventKind::Migration,
            PackageModified { .. } => EventKind::Package,
            HostJoined { .. }
            | HostFailed { .. }
            | HostRecovered { .. }
            | FailoverStarted { .. }
            | FailoverCompleted { .. }
            | FailoverAttemptFailed { .. }
            | FailoverAttemptReleased { .. }
            | FailoverFailed { .. } => EventKind::Ha,
        }
    }

    /// The guest this event is about, if any (the "events by guest" index and filter).
    pub fn guest(&self) -> Option<&Name> {
        use EventPayload::*;
        match self {
            ClusterCreated { .. } => None,
            HostRegistered { .. }
            | HostMaintenanceChanged { .. }
            | HostReachabilityChanged { .. }
            | HostModified { .. }
            | HostRemoved { .. }
            | DrainStarted { .. }
            | DrainEnded { .. } => None,
            GuestCreated { guest } | GuestModified { guest } => Some(&guest.name),
            GuestRemoved { guest } => Some(guest),
            PackageSwitchingChanged { guest, .. } => Some(guest),
            MigrationRequested { migration } => Some(&migration.guest),
            MigrationPhaseChanged { guest, .. } => Some(guest),
            GuestOwnerChanged { guest, .. } => Some(guest),
            GuestRepaired { guest, .. } => Some(guest),
            MigrationTransferStats { guest, .. }
            | MigrationResolved { guest, .. }
            | MigrationTargetChecked { guest, .. } => Some(guest),
            HostJoined { .. } | HostFailed { .. } | HostRecovered { .. } => None,
            FailoverStarted { guest, .. }
            | FailoverCompleted { guest, .. }
            | FailoverAttemptFailed { guest, .. }
            | FailoverAttemptReleased { guest, .. }
            | FailoverFailed { guest, .. }
            | PackageModified { guest, .. } => Some(guest),
        }
    }

    /// The hosts this event names directly (the "events by host" filter).
    pub fn hosts(&self) -> Vec<&Name> {
        use EventPayload::*;
        match self {
            HostRegistered { host } | HostModified { host } => vec![&host.spec.name],
            HostMaintenanceChanged { host, .. }
            | HostReachabilityChanged { host, .. }
            | HostRemoved { host }
            | DrainEnded { host, .. } => vec![host],
            DrainStarted { drain } => vec![&drain.host],
            GuestCreated { guest } | GuestModified { guest } => vec![&guest.owner],
            ClusterCreated { .. }
            | GuestRemoved { .. }
            | MigrationPhaseChanged { .. }
            | MigrationTransferStats { .. }
            | MigrationResolved { .. } => vec![],
            PackageSwitchingChanged { node, .. } => node.iter().collect(),
            MigrationRequested { migration } => vec![&migration.source, &migration.target],
            GuestOwnerChanged { from, to, .. } => vec![from, to],
            GuestRepaired { host, .. } | MigrationTargetChecked { host, .. } => vec![host],
            HostJoined { host } | HostFailed { host, .. } | HostRecovered { host } => vec![host],
            FailoverStarted { failed_host, from, to, .. } => {
                let mut hosts = vec![failed_host, from, to];
                hosts.dedup();
                hosts
            }
            FailoverCompleted { host, .. }
            | FailoverAttemptFailed { host, .. }
            | FailoverAttemptReleased { host, .. } => {
                vec![host]
            }
            FailoverFailed { .. } | PackageModified { .. } => vec![],
        }
    }

    /// The migration this event is about, if any.
    pub fn migration(&self) -> Option<MigrationId> {
        use EventPayload::*;
        match self {
            MigrationRequested { migration } => Some(migration.id),
            MigrationPhaseChanged { id, .. }
            | MigrationTransferStats { id, .. }
            | MigrationResolved { id, .. }
            | MigrationTargetChecked { id, .. } => Some(*id),
            GuestOwnerChanged { migration, .. } => Some(*migration),
            PackageSwitchingChanged { migration, .. } => *migration,
            _ => None,
        }
    }
}

impl Event {
    pub fn token(&self) -> FencingToken {
        FencingToken { term: self.term, revision: self.revision }
    }
}

impl Migration {
    /// Folds one event into a migration record. The same function serves the live state machine
    /// and anything that rebuilds migration history from the event log.
    pub fn evolve(&mut self, event: &Event) {
        if let EventPayload::MigrationPhaseChanged { id, phase, freeze_time_ms, error, .. } = &event.payload {
            debug_assert_eq!(*id, self.id);
            self.phase = *phase;
            self.history.push(crate::model::PhaseRecord {
                phase: *phase,
                at: event.time,
                revision: event.revision,
                term: event.term,
            });
            if freeze_time_ms.is_some() {
                self.freeze_time_ms = *freeze_time_ms;
            }
            if error.is_some() {
                self.error = error.clone();
            }
        }
    }
}
