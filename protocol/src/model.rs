//! The domain: hosts, guests, packages and migrations (SPEC §4), and the small value types they
//! are made of. Plain data, no behaviour beyond derived facts (`Phase::next`, `Host::state`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::name::Name;

/// Position in the cluster-wide event history: 1, 2, 3, … gap-free. 0 means "nothing yet".
pub type Revision = u64;

/// Milliseconds since the Unix epoch, read from the *proposer's* clock and carried in the log.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// A client-chosen id that makes a write idempotent: the state machine applies a request id once.
///
/// In JSON it is 32 hex digits, as clients send it (a 128-bit number is beyond what JSON readers
/// such as JavaScript or jq hold exactly); in the binary codec it stays a `u128`. JSON written
/// before accepted a number, which is still read.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, example = "0000000000000000000000000000002a"))]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u128);

impl RequestId {
    /// 1 to 32 hex digits (and nothing else: no sign, no spaces).
    pub fn parse_hex(s: &str) -> Option<RequestId> {
        if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(RequestId)
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u128(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RequestId, D::Error> {
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = RequestId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a request id: 1 to 32 hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RequestId, E> {
                RequestId::parse_hex(v).ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RequestId, E> {
                Ok(RequestId(v.into()))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<RequestId, E> {
                Ok(RequestId(v))
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(Hex)
        } else {
            u128::deserialize(d).map(RequestId)
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A migration's id: the revision of the event that recorded its request. Unique, ordered, and
/// chosen deterministically by the state machine, so no replica needs randomness.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct MigrationId(pub Revision);

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.0)
    }
}

/// Who asked for a change: an operator's user name, `agent:<host>`, or `driver:<node>`.
pub type Actor = String;

/// vCPUs and memory: a host's capacity or a guest's demand.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub vcpus: u32,
    pub memory_mib: u64,
}

impl Resources {
    pub fn saturating_add(self, o: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_add(o.vcpus),
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
        }
    }
    pub fn saturating_sub(self, o: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_sub(o.vcpus),
            memory_mib: self.memory_mib.saturating_sub(o.memory_mib),
        }
    }
    /// Whether `self` fits inside `cap`.
    pub fn fits_in(self, cap: Resources) -> bool {
        self.vcpus <= cap.vcpus && self.memory_mib <= cap.memory_mib
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} vCPU / {} MiB", self.vcpus, self.memory_mib)
    }
}

/// What an online move needs the source and target to share. Two hosts are compatible for an
/// online migration when both fields are equal.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompatProfile {
    /// Hardware family, e.g. `ia64-rx8640` or `x86_64-v3`.
    pub hardware_family: String,
    /// Hypervisor version, e.g. `hpvm-6.1` or `qemu-8.2`.
    pub hypervisor_version: String,
}

impl fmt::Display for CompatProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hardware_family, self.hypervisor_version)
    }
}

/// What an operator states when registering a host.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSpec {
    pub name: Name,
    /// How agents and operators reach the host (`host:port` or an IP); informational.
    pub address: String,
    pub capacity: Resources,
    pub profile: CompatProfile,
    /// Where the host stands, as `key: value` pairs an operator chooses (`rack: r12`,
    /// `zone: a`); what a guest's anti-affinity can spread its group by.
    #[serde(default)]
    pub labels: BTreeMap<Name, Name>,
}

/// A host's state as operators see it; derived from `maintenance` and `reachable`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    Active,
    Maintenance,
    Unreachable,
    /// Its lease expired and the leader declared it failed (`HostFailed`); it rejoins with
    /// `HostRecovered` once its agent reports again, caught up.
    Failed,
    /// Being emptied for maintenance (`host drain`): no new guests, no migration target.
    Draining,
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostState::Active => "active",
            HostState::Maintenance => "maintenance",
            HostState::Unreachable => "unreachable",
            HostState::Failed => "failed",
            HostState::Draining => "draining",
        })
    }
}

/// A host being emptied for maintenance (`host drain`): the leader moves its guests to hosts the
/// placement rules allow (`placement::choose_target`), at most `max_parallel` at a time, then
/// commits the host's maintenance with the drain's end.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub host: Name,
    /// Revision of its `DrainStarted`.
    pub started: Revision,
    pub actor: Actor,
    /// Move guests that cannot move online (stopped ones, `online_migration=disabled`,
    /// cluster nodes) offline, stopping a running one on the source and starting it on the
    /// target; without it the drain stops before them and says which and why.
    pub allow_offline: bool,
    /// Migrations from this host in flight at once.
    pub max_parallel: u32,
}

/// How a drain ended.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainOutcome {
    /// Every guest moved; the host went into maintenance in the same commit.
    Completed,
    /// Some guests could not move (each named with why); the host stays as it was.
    Stopped,
    /// An operator ended it (`host undrain`); migrations in flight finish or roll back on
    /// their own, so every guest is where it was or fully moved.
    Aborted,
}

impl fmt::Display for DrainOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DrainOutcome::Completed => "completed",
            DrainOutcome::Stopped => "stopped",
            DrainOutcome::Aborted => "aborted",
        })
    }
}

/// A guest a drain could not move, and why.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedGuest {
    pub guest: Name,
    pub why: String,
}

/// A VM host, a node of the cluster.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub spec: HostSpec,
    /// Set by the operator (`host maintenance`).
    pub maintenance: bool,
    /// Set by the leader's liveness tracking; only transitions are logged.
    pub reachable: bool,
    /// Revision of the host's last change.
    pub version: Revision,
}

impl Host {
    pub fn state(&self) -> HostState {
        if !self.reachable {
            HostState::Unreachable
        } else if self.maintenance {
            HostState::Maintenance
        } else {
            HostState::Active
        }
    }
}

/// Whether a guest is meant to be running.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Stopped,
}

/// The operator-editable configuration of a distributed guest: what every host's copy of the
/// guest's configuration file holds.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GuestSpec {
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Disk attachments, as the hypervisor names them (e.g. `avio_stor:/dev/vg01/lvol1`).
    pub disks: Vec<String>,
    /// Network attachments (e.g. `avio_lan:vswitch0`).
    pub networks: Vec<String>,
    /// `online_migration=enabled|disabled`; disabled guests are never moved online.
    pub online_migration: bool,
    /// The guest itself runs cluster software: moving it online would get it evicted.
    pub cluster_node: bool,
    /// The failover package wrapping this guest, if any.
    pub package: Option<Name>,
    /// Guests of the same anti-affinity group never share a host (or, with `spread_by`, a
    /// value of that host label): no placement, migration, drain, rebalance or failover puts
    /// two of them together.
    #[serde(default)]
    pub anti_affinity: Option<AntiAffinity>,
}

/// A guest's anti-affinity: the group it belongs to and the failure domain the group spreads
/// over.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AntiAffinity {
    pub group: Name,
    /// A host label (e.g. `rack`): no two guests of the group on hosts with the same value of
    /// it. Absent: no two on the same host.
    #[serde(default)]
    pub spread_by: Option<Name>,
}

impl fmt::Display for AntiAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.spread_by {
            Some(l) => write!(f, "{} (spread by {l})", self.group),
            None => write!(f, "{} (spread by host)", self.group),
        }
    }
}

/// `clone_from` reuses the buffers of the record it overwrites: folding a guest change then
/// allocates nothing (what `log replay` of millions of events spends its time on otherwise).
impl Clone for GuestSpec {
    fn clone(&self) -> Self {
        GuestSpec {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            disks: self.disks.clone(),
            networks: self.networks.clone(),
            online_migration: self.online_migration,
            cluster_node: self.cluster_node,
            package: self.package.clone(),
            anti_affinity: self.anti_affinity.clone(),
        }
    }
    fn clone_from(&mut self, s: &Self) {
        self.vcpus = s.vcpus;
        self.memory_mib = s.memory_mib;
        self.disks.clone_from(&s.disks);
        self.networks.clone_from(&s.networks);
        self.online_migration = s.online_migration;
        self.cluster_node = s.cluster_node;
        self.package.clone_from(&s.package);
        self.anti_affinity.clone_from(&s.anti_affinity);
    }
}

impl GuestSpec {
    pub fn demand(&self) -> Resources {
        Resources { vcpus: self.vcpus, memory_mib: self.memory_mib }
    }
}

/// A distributed guest.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Guest {
    pub name: Name,
    pub spec: GuestSpec,
    /// The one host the guest runs on (or would run on, when stopped).
    pub owner: Name,
    pub run_state: RunState,
    /// Revision of the guest's last change; what optimistic concurrency compares against.
    pub version: Revision,
}

/// `clone_from` reuses buffers, as for [`GuestSpec`].
impl Clone for Guest {
    fn clone(&self) -> Self {
        Guest {
            name: self.name.clone(),
            spec: self.spec.clone(),
            owner: self.owner.clone(),
            run_state: self.run_state,
            version: self.version,
        }
    }
    fn clone_from(&mut self, s: &Self) {
        self.name.clone_from(&s.name);
        self.spec.clone_from(&s.spec);
        self.owner.clone_from(&s.owner);
        self.run_state = s.run_state;
        self.version = s.version;
    }
}

/// A failover package and its switching state.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub name: Name,
    pub guest: Name,
    /// Global switching: may the cluster fail this package over at all?
    pub switching_enabled: bool,
    /// Nodes excluded from failover for this package (per-node switching disabled).
    pub disabled_nodes: BTreeSet<Name>,
    /// When, by whom and why global switching last changed: the unprotected window's story.
    pub switching_changed: SwitchingChange,
    /// The package's node list in order (Serviceguard's `node_name`s): the primary node first,
    /// then the adoptive nodes. Empty: every host, in name order.
    pub nodes: Vec<Name>,
    pub failover_policy: FailoverPolicy,
    pub failback_policy: FailbackPolicy,
}

/// How a failover chooses among the eligible nodes (Serviceguard's `failover_policy`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverPolicy {
    /// The first eligible node in the package's node list.
    #[default]
    ConfiguredNode,
    /// The eligible node running the fewest packages (ties: node-list order).
    MinPackageNode,
}

/// What happens when a package's primary node returns (Serviceguard's `failback_policy`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailbackPolicy {
    /// The guest stays where it failed over to until an operator moves it.
    #[default]
    Manual,
    /// The guest moves back online, through a normal migration, once its primary node is back.
    Automatic,
}

impl fmt::Display for FailoverPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailoverPolicy::ConfiguredNode => "configured_node",
            FailoverPolicy::MinPackageNode => "min_package_node",
        })
    }
}

impl fmt::Display for FailbackPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailbackPolicy::Manual => "manual",
            FailbackPolicy::Automatic => "automatic",
        })
    }
}

/// A host under the cluster's failure detection: it joined when its agent first renewed a lease
/// with a leader.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Revision of its `HostJoined`.
    pub joined: Revision,
    /// Set while the host is failed.
    pub failure: Option<HostFailure>,
}

/// Why and when the leader declared a host failed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFailure {
    pub at: Timestamp,
    pub revision: Revision,
    /// The leader's evidence (how long the lease had been expired, by whose clock).
    pub evidence: String,
}

/// A guest being started on an adoptive host after its host failed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    pub guest: Name,
    pub package: Name,
    /// The host whose failure started the failover.
    pub failed_host: Name,
    /// The host asked to start the guest now (the guest's owner).
    pub target: Name,
    /// The commit that asked `target` to start it: a report names it, so a stale one is refused.
    pub token: FencingToken,
    /// When the failover began (its first `FailoverStarted`).
    pub started_at: Timestamp,
    /// Hosts tried before `target`, with why each attempt ended.
    pub tried: Vec<(Name, String)>,
    /// Set when the current attempt failed; the leader then tries the next node, once the
    /// attempt is released.
    pub attempt_failed: Option<String>,
    /// The failed attempt's target confirmed that no copy of the guest runs there (or it
    /// reported the failure itself, which it does only then). Until this, or the target's own
    /// failure, the next node is not asked.
    pub released: bool,
}

/// What the hypervisor measured of a live migration's transfer (QEMU's `query-migrate`: the
/// whole transfer's time and the bytes sent). Kept in the migration's history as a
/// `MigrationTransferStats` event.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferStats {
    pub total_time_ms: u64,
    pub transferred_bytes: u64,
}

/// The record of the last global switching change of a package.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchingChange {
    pub at: Timestamp,
    pub revision: Revision,
    pub actor: Actor,
    pub reason: Option<String>,
    /// Set when a migration changed it (disabled for the move, or restored afterwards).
    pub migration: Option<MigrationId>,
}

/// Online (running guest, live transfer), offline (guest moved while down), or offline with
/// a stop: a running guest is stopped on the source, moved, and started on the target (the log
/// still says it runs; the target's agent starts it once it owns it).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationKind {
    Online,
    Offline,
    /// `migrate --offline --allow-stop`. (Appended: the codec numbers variants by position.)
    OfflineStop,
}

impl MigrationKind {
    /// Moved while down (the guest does not run during the move).
    pub fn is_offline(self) -> bool {
        matches!(self, MigrationKind::Offline | MigrationKind::OfflineStop)
    }
}

impl fmt::Display for MigrationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MigrationKind::Online => "online",
            MigrationKind::Offline => "offline",
            MigrationKind::OfflineStop => "offline_stop",
        })
    }
}

/// A migration's phase (SPEC §5). Each phase is entered by one committed event.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Requested,
    SwitchingDisabled,
    Transferring,
    TargetRunning,
    OwnerSwitched,
    SwitchingEnabled,
    Completed,
    Failed,
    Aborted,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Requested,
        Phase::SwitchingDisabled,
        Phase::Transferring,
        Phase::TargetRunning,
        Phase::OwnerSwitched,
        Phase::SwitchingEnabled,
        Phase::Completed,
        Phase::Failed,
        Phase::Aborted,
    ];

    /// The next phase on the success path; guests without a package skip the switching phases.
    pub fn next(self, has_package: bool) -> Option<Phase> {
        use Phase::*;
        match self {
            Requested if has_package => Some(SwitchingDisabled),
            Requested => Some(Transferring),
            SwitchingDisabled => Some(Transferring),
            Transferring => Some(TargetRunning),
            TargetRunning => Some(OwnerSwitched),
            OwnerSwitched if has_package => Some(SwitchingEnabled),
            OwnerSwitched => Some(Completed),
            SwitchingEnabled => Some(Completed),
            Completed | Failed | Aborted => None,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Aborted)
    }

    /// Before the owner switch a migration can still be rolled back; from it on it can only
    /// complete.
    pub fn can_roll_back(self) -> bool {
        self < Phase::OwnerSwitched
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Requested => "requested",
            Phase::SwitchingDisabled => "switching_disabled",
            Phase::Transferring => "transferring",
            Phase::TargetRunning => "target_running",
            Phase::OwnerSwitched => "owner_switched",
            Phase::SwitchingEnabled => "switching_enabled",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::Aborted => "aborted",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a migration entered one of its phases.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub phase: Phase,
    pub at: Timestamp,
    pub revision: Revision,
    /// Raft term of the commit that entered the phase.
    pub term: u64,
}

impl PhaseRecord {
    pub fn token(&self) -> FencingToken {
        FencingToken { term: self.term, revision: self.revision }
    }
}

/// A fencing token: the (Raft term, revision) of the commit that gave an order. Tokens grow along
/// the history, so an agent that has acted on a token refuses any order carrying a smaller one
/// (a replay from a lagging coordinator, or a deposed leader's answer), and the leader refuses a
/// report whose token is not the one of the phase it answers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FencingToken {
    pub term: u64,
    pub revision: Revision,
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.term, self.revision)
    }
}

/// A migration of one guest from its source host to a target host.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub id: MigrationId,
    pub guest: Name,
    pub source: Name,
    pub target: Name,
    pub kind: MigrationKind,
    pub requested_by: Actor,
    pub reason: Option<String>,
    /// The guest's package when the migration began, if it had one.
    pub package: Option<Name>,
    /// The package's global switching before the migration began: what a terminal phase restores.
    pub switching_before: Option<bool>,
    pub phase: Phase,
    /// Every phase entered, in order, with its time and revision.
    pub history: Vec<PhaseRecord>,
    /// Freeze time the source reported for the final transfer step.
    pub freeze_time_ms: Option<u64>,
    /// Why it failed or was aborted.
    pub error: Option<String>,
}

impl Migration {
    pub fn has_package(&self) -> bool {
        self.package.is_some()
    }

    /// The record of the phase the migration is in.
    pub fn current(&self) -> &PhaseRecord {
        self.history.last().expect("a migration always has its requested phase")
    }

    /// Whether `host` takes part (as source or target).
    pub fn involves(&self, host: &Name) -> bool {
        self.source == *host || self.target == *host
    }

    /// The record as it was at `revision`: phases entered later are dropped (with the freeze time
    /// and error they brought). `None` if the migration was requested after `revision`.
    pub fn at_revision(&self, revision: Revision) -> Option<Migration> {
        if self.id.0 > revision {
            return None;
        }
        let mut m = self.clone();
        m.history.retain(|r| r.revision <= revision);
        m.phase = m.history.last().map_or(Phase::Requested, |r| r.phase);
        if m.phase < Phase::TargetRunning {
            m.freeze_time_ms = None;
        }
        if !m.phase.is_terminal() {
            m.error = None;
        }
        Some(m)
    }
}

/// A cluster's identity: chosen once, when the cluster is initialised (by the coordinator that
/// handles `cluster init`, so replicas need no randomness), and committed as the cluster's first
/// event. Subscribers remember it: a subscriber of one cluster pointed at another (a cluster
/// restored from an export, say) notices and re-syncs from full state instead of applying events
/// whose revisions mean something else.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct ClusterId(pub String);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ClusterId {
    /// 8 to 64 characters of `[0-9a-f-]`: what `cluster init` generates, and nothing that could
    /// smuggle text into a log line or a file name.
    pub fn parse(s: &str) -> Option<ClusterId> {
        let ok = (8..=64).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-');
        ok.then(|| ClusterId(s.to_string()))
    }
}

/// The identity a cluster committed, and where its history came from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    pub id: ClusterId,
    pub created_at: Timestamp,
    /// The revision of the event that committed this identity.
    pub revision: Revision,
    /// Set when the cluster was seeded from an export (`switchyard log restore`).
    pub restored_from: Option<RestoredFrom>,
}

/// The export a restored cluster was seeded from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredFrom {
    /// The exported cluster's id (`None` for a history that had none).
    pub cluster: Option<ClusterId>,
    /// The last imported revision: the new cluster's own events start right after it, so
    /// revisions never go backwards.
    pub through_revision: Revision,
    /// The export's hash chain at `through_revision`.
    pub chain: String,
    /// The largest imported term. The restored cluster's Raft terms start again from 1, so it
    /// stamps events with `term_base + term`: fencing tokens never go backwards.
    pub term_base: u64,
}

/// A restore in progress: what has been imported so far, and from where.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportProgress {
    pub cluster: Option<ClusterId>,
    pub through_revision: Revision,
    pub chain: String,
}
