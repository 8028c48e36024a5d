//! Commands: what a client asks the cluster to do. A command travels inside a [`Proposal`] that
//! carries everything apply must not read from its surroundings: the request id (idempotency),
//! the actor, and the proposer's clock.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::model::{
    Actor, AntiAffinity, BlockedGuest, ClusterId, DrainOutcome, FailbackPolicy, FailoverPolicy, FencingToken,
    GuestSpec, HostSpec, MigrationId, MigrationKind, Phase, RequestId, RestoredFrom, Revision, RunState, Timestamp,
    TransferStats,
};
use crate::name::Name;

/// One replicated write: a command plus the context chosen by the proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub request_id: RequestId,
    pub actor: Actor,
    /// The proposer's wall clock; apply never reads a clock of its own.
    pub time: Timestamp,
    pub command: Command,
}

/// Every change the cluster accepts (SPEC §4–§5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Commit the cluster's identity: at `cluster init`, or to end a restore (`restored_from`
    /// names the imported export). Accepted once.
    CreateCluster {
        cluster: ClusterId,
        restored_from: Option<RestoredFrom>,
    },
    /// `log restore`: the next chunk of an exported history, folded as it is (original revisions,
    /// terms, times and actors). Accepted only by a cluster that has committed nothing else.
    ImportEvents {
        /// The exported cluster's id, from the export header; every chunk must name the same.
        cluster: Option<ClusterId>,
        /// The export's hash chain after the chunk's last event.
        chain: String,
        events: Vec<Event>,
    },
    RegisterHost(HostSpec),
    /// Operator: put a host into maintenance (no new guests, no migration target) or take it out.
    SetHostMaintenance {
        host: Name,
        maintenance: bool,
    },
    /// Leader's liveness tracking: a host became unreachable or reachable again.
    SetHostReachable {
        host: Name,
        reachable: bool,
    },
    CreateGuest {
        name: Name,
        spec: GuestSpec,
        owner: Name,
        run_state: RunState,
    },
    ModifyGuest {
        name: Name,
        patch: GuestPatch,
        expect_version: Option<Revision>,
    },
    RemoveGuest {
        name: Name,
        expect_version: Option<Revision>,
    },
    /// `package enable|disable [--node HOST]`: global switching when `node` is `None`, otherwise
    /// the per-node switch.
    SetPackageSwitching {
        package: Name,
        node: Option<Name>,
        enabled: bool,
        reason: Option<String>,
    },
    /// Commit a migration's intent. `source` is where the proposer believes the guest runs; apply
    /// refuses the request if that is no longer true.
    RequestMigration {
        guest: Name,
        source: Name,
        target: Name,
        kind: MigrationKind,
        reason: Option<String>,
    },
    /// The driver moves a migration one phase forward. `from` makes the step idempotent and
    /// fenced: a step proposed from a stale view is refused.
    AdvanceMigration {
        id: MigrationId,
        from: Phase,
        to: Phase,
        freeze_time_ms: Option<u64>,
    },
    /// The driver gives up on a migration (agent error, phase timeout): roll back, then `failed`.
    FailMigration {
        id: MigrationId,
        error: String,
    },
    /// An operator cancels a migration: roll back, then `aborted`.
    AbortMigration {
        id: MigrationId,
        reason: Option<String>,
    },
    /// A host's agent put the log's state of a guest back on its hypervisor (which had drifted:
    /// a VM killed or a definition changed behind its back). Changes nothing in the state; the
    /// guest's history shows the repair and why.
    RecordRepair {
        host: Name,
        guest: Name,
        /// What the agent did (`start`, `define`, `stop`, …).
        action: String,
        reason: String,
    },
    /// The driver records what the hypervisor measured of a migration's transfer (before it
    /// moves the migration on from `transferring`). Changes nothing in the state.
    RecordTransferStats {
        id: MigrationId,
        stats: TransferStats,
    },
    /// Leader: a host's agent renewed its lease. A host that is not yet under failure detection
    /// joins it (`HostJoined`); a failed host whose agent has caught up with the log rejoins
    /// (`HostRecovered`).
    AdmitHost {
        host: Name,
    },
    /// Leader: a member host's lease expired by the leader's clock.
    DeclareHostFailed {
        host: Name,
        evidence: String,
    },
    /// Leader: start the guest of a failed host (or of a failover whose attempt failed) on
    /// `to`, an eligible node of its package. The owner moves to `to` in the same commit.
    StartFailover {
        guest: Name,
        to: Name,
    },
    /// The target's agent started the guest on the order committed at `token`.
    CompleteFailover {
        guest: Name,
        host: Name,
        token: FencingToken,
    },
    /// The target's agent could not start the guest (`released`: it has made sure no copy
    /// runs there), or the leader gave up waiting for it (not released).
    FailFailoverAttempt {
        guest: Name,
        host: Name,
        token: FencingToken,
        reason: String,
        released: bool,
    },
    /// Leader: no eligible node is left for an in-flight failover; the guest stays down.
    AbandonFailover {
        guest: Name,
        reason: String,
    },
    /// The target of a failed attempt confirms that no copy of the guest runs there.
    ReleaseFailoverAttempt {
        guest: Name,
        host: Name,
        token: FencingToken,
    },
    /// `package modify`: the node list and the policies (`None` leaves one as it is).
    ModifyPackage {
        package: Name,
        nodes: Option<Vec<Name>>,
        failover_policy: Option<FailoverPolicy>,
        failback_policy: Option<FailbackPolicy>,
    },
    /// An operator ends a migration stuck after its owner switch (it cannot roll back):
    /// `completed` or `failed`, with why.
    ResolveMigration {
        id: MigrationId,
        outcome: Phase,
        reason: String,
    },
    /// `host modify`: a host's address, capacity or compatibility profile (after a hypervisor
    /// upgrade, say), each `None` left as it is.
    ModifyHost {
        host: Name,
        patch: HostPatch,
        expect_version: Option<Revision>,
    },
    /// `host remove`: a decommissioned host leaves the cluster. Refused while it owns guests,
    /// is named by a package or has migrations heading to or from it.
    RemoveHost {
        host: Name,
        expect_version: Option<Revision>,
    },
    /// `host drain`: empty the host for maintenance (see [`crate::model::Drain`]).
    StartDrain {
        host: Name,
        allow_offline: bool,
        max_parallel: u32,
    },
    /// The leader ends a drain (`completed`: the host owns nothing and goes into maintenance;
    /// `stopped`: the guests left cannot move), or an operator aborts it.
    EndDrain {
        host: Name,
        outcome: DrainOutcome,
        reason: String,
        blocked: Vec<BlockedGuest>,
    },
    /// The target's agent of a failed or aborted online migration says whether the guest runs
    /// there (`token` is the terminal phase's). Only its first word counts (see
    /// [`crate::EventPayload::MigrationTargetChecked`]).
    CheckMigrationTarget {
        id: MigrationId,
        host: Name,
        token: FencingToken,
        runs_there: bool,
    },
}

/// The fields of a host a `ModifyHost` may change; `None` leaves one as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPatch {
    pub address: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub hardware_family: Option<String>,
    pub hypervisor_version: Option<String>,
    /// Labels set (added or given a new value).
    pub set_labels: BTreeMap<Name, Name>,
    /// Labels removed (after those set).
    pub remove_labels: BTreeSet<Name>,
}

impl HostPatch {
    pub fn is_empty(&self) -> bool {
        *self == HostPatch::default()
    }

    /// The spec `spec` becomes under this patch.
    pub fn applied_to(&self, spec: &HostSpec) -> HostSpec {
        let mut s = spec.clone();
        if let Some(a) = &self.address {
            s.address = a.clone();
        }
        if let Some(v) = self.vcpus {
            s.capacity.vcpus = v;
        }
        if let Some(m) = self.memory_mib {
            s.capacity.memory_mib = m;
        }
        if let Some(f) = &self.hardware_family {
            s.profile.hardware_family = f.clone();
        }
        if let Some(v) = &self.hypervisor_version {
            s.profile.hypervisor_version = v.clone();
        }
        s.labels.extend(self.set_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        s.labels.retain(|k, _| !self.remove_labels.contains(k));
        s
    }
}

impl Command {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateCluster { .. } => "create_cluster",
            Command::ImportEvents { .. } => "import_events",
            Command::RegisterHost(_) => "register_host",
            Command::SetHostMaintenance { .. } => "set_host_maintenance",
            Command::SetHostReachable { .. } => "set_host_reachable",
            Command::CreateGuest { .. } => "create_guest",
            Command::ModifyGuest { .. } => "modify_guest",
            Command::RemoveGuest { .. } => "remove_guest",
            Command::SetPackageSwitching { .. } => "set_package_switching",
            Command::RequestMigration { .. } => "request_migration",
            Command::AdvanceMigration { .. } => "advance_migration",
            Command::FailMigration { .. } => "fail_migration",
            Command::AbortMigration { .. } => "abort_migration",
            Command::RecordRepair { .. } => "record_repair",
            Command::RecordTransferStats { .. } => "record_transfer_stats",
            Command::AdmitHost { .. } => "admit_host",
            Command::DeclareHostFailed { .. } => "declare_host_failed",
            Command::StartFailover { .. } => "start_failover",
            Command::CompleteFailover { .. } => "complete_failover",
            Command::FailFailoverAttempt { .. } => "fail_failover_attempt",
            Command::AbandonFailover { .. } => "abandon_failover",
            Command::ModifyPackage { .. } => "modify_package",
            Command::ReleaseFailoverAttempt { .. } => "release_failover_attempt",
            Command::ResolveMigration { .. } => "resolve_migration",
            Command::ModifyHost { .. } => "modify_host",
            Command::RemoveHost { .. } => "remove_host",
            Command::StartDrain { .. } => "start_drain",
            Command::EndDrain { .. } => "end_drain",
            Command::CheckMigrationTarget { .. } => "check_migration_target",
        }
    }
}

/// A partial change of a guest's configuration; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestPatch {
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub disks: Option<Vec<String>>,
    pub networks: Option<Vec<String>>,
    pub online_migration: Option<bool>,
    pub cluster_node: Option<bool>,
    /// `Some(None)` removes the package, `Some(Some(p))` sets it.
    pub package: Option<Option<Name>>,
    pub run_state: Option<RunState>,
    /// `Some(None)` takes the guest out of its anti-affinity group, `Some(Some(a))` sets it.
    pub anti_affinity: Option<Option<AntiAffinity>>,
}

impl GuestPatch {
    /// The spec after the patch.
    pub fn applied_to(&self, spec: &GuestSpec) -> GuestSpec {
        let mut s = spec.clone();
        if let Some(v) = self.vcpus {
            s.vcpus = v;
        }
        if let Some(v) = self.memory_mib {
            s.memory_mib = v;
        }
        if let Some(v) = &self.disks {
            s.disks = v.clone();
        }
        if let Some(v) = &self.networks {
            s.networks = v.clone();
        }
        if let Some(v) = self.online_migration {
            s.online_migration = v;
        }
        if let Some(v) = self.cluster_node {
            s.cluster_node = v;
        }
        if let Some(v) = &self.package {
            s.package = v.clone();
        }
        if let Some(v) = &self.anti_affinity {
            s.anti_affinity = v.clone();
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        *self == GuestPatch::default()
    }
}
