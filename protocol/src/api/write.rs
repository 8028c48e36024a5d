//! Writes: request ids, and what each write request asks the state machine to do.
//!
//! One home for turning an API request into a [`Command`], so the coordinator's handlers stay a
//! few lines each (parse, convert, propose) and the CLI, the tests and the server agree on what a
//! request means. Conversions that can fail say why in words an operator can act on; every rule
//! that needs the cluster's state is checked again by `apply` when the command commits.

use super::*;
use crate::command::{Command, GuestPatch, HostPatch};
use crate::model::{CompatProfile, GuestSpec, HostSpec, MigrationKind, RequestId, Resources};

/// A request id as clients send it: 1 to 32 hex digits.
pub fn parse_request_id(s: &str) -> Result<RequestId, String> {
    RequestId::parse_hex(s).ok_or_else(|| format!("request_id {s:?} is not 1 to 32 hex digits"))
}

/// Every write request carries an optional request id: the idempotency key that makes a retry
/// safe. A client that leaves it empty gets one chosen by the coordinator, and cannot retry.
pub trait WriteRequest {
    fn request_id(&self) -> Option<&str>;
    fn set_request_id(&mut self, id: String);
}

macro_rules! write_request {
    ($($t:ty),* $(,)?) => {$(
        impl WriteRequest for $t {
            fn request_id(&self) -> Option<&str> {
                self.request_id.as_deref()
            }
            fn set_request_id(&mut self, id: String) {
                self.request_id = Some(id);
            }
        }
    )*};
}

write_request!(
    RegisterHostRequest,
    MaintenanceRequest,
    RepairRequest,
    FailoverReportRequest,
    ModifyPackageRequest,
    CreateGuestRequest,
    ModifyGuestRequest,
    ModifyHostRequest,
    DrainRequest,
    UndrainRequest,
    RemoveParams,
    SwitchingRequest,
    MigrateRequest,
    AbortRequest,
    ResolveRequest,
    TargetCheckRequest,
    IdentityRequest,
    ImportRequest,
);

/// A request that cannot become a command, whatever the cluster's state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRequest(pub String);

impl From<RegisterHostRequest> for Command {
    fn from(r: RegisterHostRequest) -> Command {
        Command::RegisterHost(HostSpec {
            name: r.name,
            address: r.address,
            capacity: Resources { vcpus: r.vcpus, memory_mib: r.memory_mib },
            profile: CompatProfile { hardware_family: r.hardware_family, hypervisor_version: r.hypervisor_version },
            labels: r.labels,
        })
    }
}

impl From<(Name, MaintenanceRequest)> for Command {
    fn from((host, r): (Name, MaintenanceRequest)) -> Command {
        Command::SetHostMaintenance { host, maintenance: r.maintenance }
    }
}

impl From<(Name, ModifyHostRequest)> for Command {
    fn from((host, r): (Name, ModifyHostRequest)) -> Command {
        let patch = HostPatch {
            address: r.address,
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            hardware_family: r.hardware_family,
            hypervisor_version: r.hypervisor_version,
            set_labels: r.labels.unwrap_or_default(),
            remove_labels: r.remove_labels.unwrap_or_default().into_iter().collect(),
        };
        Command::ModifyHost { host, patch, expect_version: r.expect_version }
    }
}

impl From<(Name, RepairRequest)> for Command {
    fn from((host, r): (Name, RepairRequest)) -> Command {
        Command::RecordRepair { host, guest: r.guest, action: r.action, reason: r.reason }
    }
}

impl From<(Name, FailoverReportRequest)> for Command {
    fn from((host, r): (Name, FailoverReportRequest)) -> Command {
        let (guest, token) = (r.guest, r.token);
        match r.outcome {
            FailoverOutcome::Started => Command::CompleteFailover { guest, host, token },
            FailoverOutcome::Failed { error } => {
                Command::FailFailoverAttempt { guest, host, token, reason: error, released: true }
            }
            FailoverOutcome::Released => Command::ReleaseFailoverAttempt { guest, host, token },
        }
    }
}

impl From<(MigrationId, Name, TargetCheckRequest)> for Command {
    fn from((id, host, r): (MigrationId, Name, TargetCheckRequest)) -> Command {
        Command::CheckMigrationTarget { id, host, token: r.token, runs_there: r.runs_there }
    }
}

impl From<(Name, ModifyPackageRequest)> for Command {
    fn from((package, r): (Name, ModifyPackageRequest)) -> Command {
        Command::ModifyPackage {
            package,
            nodes: r.nodes,
            failover_policy: r.failover_policy,
            failback_policy: r.failback_policy,
        }
    }
}

impl CreateGuestRequest {
    /// A request to create `name` on `owner` with `spec`, running, without a request id.
    pub fn new(name: Name, owner: Name, spec: GuestSpec) -> CreateGuestRequest {
        CreateGuestRequest {
            name,
            owner,
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            disks: spec.disks,
            networks: spec.networks,
            online_migration: spec.online_migration,
            cluster_node: spec.cluster_node,
            package: spec.package,
            anti_affinity: spec.anti_affinity,
            run_state: RunState::Running,
            request_id: None,
        }
    }
}

impl From<CreateGuestRequest> for Command {
    fn from(r: CreateGuestRequest) -> Command {
        let spec = GuestSpec {
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            disks: r.disks,
            networks: r.networks,
            online_migration: r.online_migration,
            cluster_node: r.cluster_node,
            package: r.package,
            anti_affinity: r.anti_affinity,
        };
        Command::CreateGuest { name: r.name, spec, owner: r.owner, run_state: r.run_state }
    }
}

impl TryFrom<(Name, ModifyGuestRequest)> for Command {
    type Error = InvalidRequest;

    fn try_from((name, r): (Name, ModifyGuestRequest)) -> Result<Command, InvalidRequest> {
        if r.remove_package && r.package.is_some() {
            return Err(InvalidRequest("package and remove_package exclude each other".into()));
        }
        if r.remove_anti_affinity && r.anti_affinity.is_some() {
            return Err(InvalidRequest("anti_affinity and remove_anti_affinity exclude each other".into()));
        }
        let patch = GuestPatch {
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            disks: r.disks,
            networks: r.networks,
            online_migration: r.online_migration,
            cluster_node: r.cluster_node,
            package: if r.remove_package { Some(None) } else { r.package.map(Some) },
            run_state: r.run_state,
            anti_affinity: if r.remove_anti_affinity { Some(None) } else { r.anti_affinity.map(Some) },
        };
        Ok(Command::ModifyGuest { name, patch, expect_version: r.expect_version })
    }
}

impl From<(Name, RemoveParams)> for Command {
    fn from((name, r): (Name, RemoveParams)) -> Command {
        Command::RemoveGuest { name, expect_version: r.expect_version }
    }
}

impl From<(Name, SwitchingRequest)> for Command {
    fn from((package, r): (Name, SwitchingRequest)) -> Command {
        Command::SetPackageSwitching { package, node: r.node, enabled: r.enabled, reason: r.reason }
    }
}

impl MigrateRequest {
    /// The command, with the source the proposer read from its state (where the guest runs now;
    /// `apply` refuses it if that is no longer true when the request commits).
    pub fn into_command(self, source: Name) -> Result<Command, InvalidRequest> {
        let kind = match (self.offline, self.allow_stop) {
            (false, false) => MigrationKind::Online,
            (true, false) => MigrationKind::Offline,
            (true, true) => MigrationKind::OfflineStop,
            (false, true) => {
                return Err(InvalidRequest(
                    "allow_stop applies to an offline move: add --offline (an online move never stops the guest)"
                        .into(),
                ))
            }
        };
        Ok(Command::RequestMigration { guest: self.guest, source, target: self.target, kind, reason: self.reason })
    }
}

impl From<(MigrationId, AbortRequest)> for Command {
    fn from((id, r): (MigrationId, AbortRequest)) -> Command {
        Command::AbortMigration { id, reason: r.reason }
    }
}

impl From<(MigrationId, ResolveRequest)> for Command {
    fn from((id, r): (MigrationId, ResolveRequest)) -> Command {
        Command::ResolveMigration { id, outcome: r.outcome, reason: r.reason }
    }
}

impl From<ImportRequest> for Command {
    fn from(r: ImportRequest) -> Command {
        Command::ImportEvents { cluster: r.cluster, chain: r.chain, events: r.events }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_one_to_32_hex_digits() {
        assert_eq!(parse_request_id("1"), Ok(RequestId(1)));
        assert_eq!(parse_request_id(&"f".repeat(32)), Ok(RequestId(u128::MAX)));
        for bad in ["", "x1", &"1".repeat(33), "-1", "+1", " 1"] {
            assert!(parse_request_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_ids_are_hex_strings_in_json_and_u128_in_the_codec() {
        let id = RequestId((1u128 << 127) | 0x2a);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<RequestId>(&json).unwrap(), id);
        // JSON written when it was a number is still read.
        assert_eq!(serde_json::from_str::<RequestId>("42").unwrap(), RequestId(42));
        assert!(serde_json::from_str::<RequestId>("\"+1\"").is_err());
        // The codec's bytes are a plain u128's: stored data and exports keep their format.
        assert_eq!(crate::codec::encode(&id), crate::codec::encode(&id.0));
        assert_eq!(crate::codec::decode::<RequestId>(&crate::codec::encode(&id.0)).unwrap(), id);
    }

    #[test]
    fn modify_refuses_a_package_and_its_removal_together() {
        let g = Name::new("g1").unwrap();
        let both =
            ModifyGuestRequest { package: Some(Name::new("p").unwrap()), remove_package: true, ..Default::default() };
        assert!(Command::try_from((g.clone(), both)).is_err());
        let remove = ModifyGuestRequest { remove_package: true, ..Default::default() };
        let Command::ModifyGuest { patch, .. } = Command::try_from((g, remove)).unwrap() else { panic!() };
        assert_eq!(patch.package, Some(None));
    }
}
