//! Size bounds on everything a client can put into the log. They are part of the replicated
//! contract (apply checks them), so changing one is a protocol change.

/// Longest host address.
pub const ADDRESS_LEN_MAX: usize = 255;
/// Longest disk or network attachment string.
pub const ATTACHMENT_LEN_MAX: usize = 255;
pub const DISKS_MAX: usize = 64;
pub const NETWORKS_MAX: usize = 32;
/// Labels on one host.
pub const HOST_LABELS_MAX: usize = 32;
/// Nodes in a package's node list.
pub const PACKAGE_NODES_MAX: usize = 64;
/// Longest compatibility-profile field.
pub const PROFILE_FIELD_LEN_MAX: usize = 64;
/// Longest operator reason or driver error message.
pub const TEXT_LEN_MAX: usize = 1024;
/// Longest actor name.
pub const ACTOR_LEN_MAX: usize = 128;
pub const GUEST_VCPUS_MAX: u32 = 4096;
/// 64 TiB.
pub const GUEST_MEMORY_MIB_MAX: u64 = 64 << 20;
pub const HOST_VCPUS_MAX: u32 = 1 << 16;
/// 1 PiB.
pub const HOST_MEMORY_MIB_MAX: u64 = 1 << 30;
/// Longest freeze time a source may report (one hour).
pub const FREEZE_TIME_MS_MAX: u64 = 3_600_000;
/// Longest transfer time a migration's stats may carry (a week: a transfer is bounded by the
/// `transferring` timeout, far below this).
pub const TRANSFER_TIME_MS_MAX: u64 = 7 * 24 * 3_600_000;
/// How many recent request ids the state machine remembers for de-duplication. A client retrying
/// after more than this many later writes is no longer recognised as a retry.
pub const REQUEST_IDS_RETAINED: usize = 100_000;
/// How many finished migrations the in-memory state keeps (for `abort` answers and quick
/// reads); the full history lives in the event store.
pub const FINISHED_MIGRATIONS_RETAINED: usize = 1024;
/// Most events in one imported chunk (`log restore`).
pub const IMPORT_EVENTS_MAX: usize = 5000;
/// Migrations from one draining host in flight at once (`host drain --max-parallel`).
pub const DRAIN_PARALLEL_MAX: u32 = 16;
/// Guests a stopped drain names as blocked (more are summed up in its reason).
pub const BLOCKED_GUESTS_MAX: usize = 1000;
