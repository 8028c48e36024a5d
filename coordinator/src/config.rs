//! Coordinator configuration: a TOML file plus command-line overrides, validated at start with
//! messages that say what to change.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use switchyard_protocol::secret::{self, Secret};
use switchyard_protocol::Name;

/// What a bearer token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// An operations team: reads everything and moves guests (migrate, abort, resolve),
    /// changes package switching and hosts' maintenance; never membership, tokens, snapshots,
    /// hosts' registration or the guests' and packages' configuration.
    Operations,
    /// Reads everything, changes nothing. `operator`, its earlier name, is still accepted.
    #[serde(alias = "operator")]
    ReadOnly,
    /// A VM-host agent, bound to one host.
    Agent,
}

impl Role {
    /// The role's name for people (pages, messages).
    pub fn label(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operations => "operations",
            Role::ReadOnly => "read-only",
            Role::Agent => "agent",
        }
    }
}

/// One accepted bearer token, by its hash: the configuration never holds a token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The SHA-256 (64 hex digits) of the token clients send as `Authorization: Bearer
    /// <token>`. `switchyard token new` makes a token and prints this line; the token itself is
    /// shown once, there.
    #[serde(default)]
    pub sha256: String,
    /// Refused: a token in plaintext (the refusal names the `sha256` line to put instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    pub role: Role,
    /// For `agent` tokens: the one host this agent may report for.
    #[serde(default)]
    pub host: Option<Name>,
    /// A name for logs and for the `actor` recorded with every change (defaults to the role).
    #[serde(default)]
    pub name: Option<String>,
}

/// A client certificate accepted as a credential of its own, without a token: a person's or
/// tool's certificate of the cluster's CA (`switchyard cert client NAME`, identity
/// `switchyard://client/NAME`). Such a caller signs in to the console with the certificate
/// alone, and the CLI or a script may call the API without a token. A token sent along still
/// decides who calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificateConfig {
    /// The NAME of the certificate's identity (`switchyard://client/NAME`); also the `actor`
    /// recorded with every change it makes.
    pub name: Name,
    /// Admin, operations or read-only (agents authenticate with their token and host
    /// certificate together).
    pub role: Role,
}

/// Raft timing and log-compaction settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// How often the leader sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader starts an election once the leader's lease (`max`) and
    /// then a random time in [min, max) have passed: [max + min, 2 max) after the last heartbeat.
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// Build a snapshot after this many applied entries since the last one (times 1 to 1.375 by
    /// node id, so the members build at different indexes).
    pub snapshot_logs_since_last: u64,
    /// Log entries kept behind the last snapshot (lagging followers catch up from the log,
    /// not a snapshot, while they are within this window).
    pub max_in_snapshot_log_to_keep: u64,
    /// Largest snapshot chunk sent in one RPC.
    pub snapshot_chunk_bytes_max: u64,
    /// Most proposals packed into one log entry by the batcher (1 turns batching off).
    pub proposal_batch_max: usize,
    /// How long a stopping leader waits for a follower to hold its whole log before it hands
    /// its leadership over (past it, it stops anyway and the others elect a leader as after a
    /// crash). 0 turns the handover off.
    pub handover_timeout_ms: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            // A follower campaigns [max + min, 2 max) = 450..600 ms after the last heartbeat
            // (openraft lets the leader's lease, `max`, run out first): failover well under a
            // second on a LAN, with heartbeats every 50 ms to keep a live leader's lease fresh.
            heartbeat_interval_ms: 50,
            election_timeout_ms_min: 150,
            election_timeout_ms_max: 300,
            snapshot_logs_since_last: 5000,
            max_in_snapshot_log_to_keep: 1000,
            snapshot_chunk_bytes_max: 4 << 20,
            proposal_batch_max: 256,
            handover_timeout_ms: 2000,
        }
    }
}

/// How much event history to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Keep at least this many latest revisions of event history (0, the default: keep
    /// everything). History after the latest snapshot is always kept. Subscribers asking for
    /// older revisions get a `compacted` answer and re-read full state.
    pub retain_revisions: u64,
}

/// Operator API limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Largest accepted request body.
    pub request_body_bytes_max: usize,
    /// Timeout of a request forwarded to the leader or sent to a peer for status.
    pub peer_timeout_ms: u64,
    /// How long `cluster add-node` waits for the new node to catch up as a learner before it
    /// gives up (the node stays a learner; retry once it is reachable).
    pub join_timeout_ms: u64,
    /// An agent that has not reported for this long makes its host `unreachable` (logged once,
    /// by the leader); its next report makes it reachable again.
    pub host_report_timeout_ms: u64,
    /// Most client connections open at once; more wait in the kernel's backlog.
    pub connections_max: usize,
    /// Most event subscriptions one token may hold open on this coordinator at once; more are
    /// refused (`too_many_streams`). An agent holds one.
    pub streams_per_token_max: usize,
    /// A client that takes nothing for this long while an answer waits for it (in practice a
    /// stalled or abandoned event subscriber) has its connection ended; a subscriber resumes from
    /// its cursor when it reconnects.
    pub stream_stall_timeout_ms: u64,
    /// A console session unused for this long ends (the browser signs in again).
    pub console_session_idle_ms: u64,
    /// A console session ends this long after sign-in, however much it is used.
    pub console_session_max_ms: u64,
    /// Most console sessions open at once on this coordinator; the least recently used one
    /// ends to make room.
    pub console_sessions_max: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            request_body_bytes_max: 64 * 1024,
            peer_timeout_ms: 5000,
            join_timeout_ms: 60_000,
            host_report_timeout_ms: 5000,
            connections_max: 4096,
            streams_per_token_max: 64,
            stream_stall_timeout_ms: 60_000,
            console_session_idle_ms: 30 * 60 * 1000,
            console_session_max_ms: 12 * 60 * 60 * 1000,
            console_sessions_max: 1000,
        }
    }
}

/// The migration driver (leader only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationConfig {
    /// How long the `transferring` phase may last: the source agent's transfer plus the target
    /// agent's confirmation that the guest runs there. Past it, the driver fails the migration
    /// (rolling back, switching restored). This is the one phase that waits on agents.
    pub transferring_timeout_ms: u64,
    /// How long each of the other phases may last. The driver commits their next step itself,
    /// in milliseconds when the cluster is healthy; a phase that outlasts its timeout (its next
    /// step refused or never committed) fails the migration while it can still roll back, and
    /// after the owner switch is reported stuck for an operator to resolve.
    pub phase_timeouts_ms: PhaseTimeouts,
    /// A pause before each step the driver takes itself (0, the default: none). For demos and
    /// fault drills that want to watch, or act at, a given phase.
    pub step_delay_ms: u64,
    /// Moves the cluster starts itself (drains) wait while this many migrations head to their
    /// target: a host's network and memory copy are not saturated by parallel transfers.
    pub max_in_flight_per_target: u32,
    /// ... and while this many migrations are in flight in the whole cluster.
    pub max_in_flight: u32,
    /// A drain's migrations from its host at once, when `host drain` does not say.
    pub drain_max_parallel: u32,
}

impl MigrationConfig {
    /// The limits of moves the cluster starts itself (drains, failbacks, `rebalance --apply`).
    pub fn move_limits(&self) -> switchyard_protocol::placement::MoveLimits {
        switchyard_protocol::placement::MoveLimits {
            per_target: self.max_in_flight_per_target,
            cluster: self.max_in_flight,
        }
    }
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            transferring_timeout_ms: 600_000,
            phase_timeouts_ms: PhaseTimeouts::default(),
            step_delay_ms: 0,
            max_in_flight_per_target: 2,
            max_in_flight: 8,
            drain_max_parallel: 2,
        }
    }
}

/// `[migration.phase_timeouts_ms]`: the timeout of each phase the driver ends itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhaseTimeouts {
    pub requested: u64,
    pub switching_disabled: u64,
    pub target_running: u64,
    pub owner_switched: u64,
    pub switching_enabled: u64,
}

impl Default for PhaseTimeouts {
    fn default() -> Self {
        let t = 60_000;
        PhaseTimeouts {
            requested: t,
            switching_disabled: t,
            target_running: t,
            owner_switched: t,
            switching_enabled: t,
        }
    }
}

impl MigrationConfig {
    /// The timeout of `phase` in milliseconds (`None` for the terminal phases).
    pub fn timeout_ms(&self, phase: switchyard_protocol::Phase) -> Option<u64> {
        use switchyard_protocol::Phase as P;
        let t = &self.phase_timeouts_ms;
        match phase {
            P::Requested => Some(t.requested),
            P::SwitchingDisabled => Some(t.switching_disabled),
            P::Transferring => Some(self.transferring_timeout_ms),
            P::TargetRunning => Some(t.target_running),
            P::OwnerSwitched => Some(t.owner_switched),
            P::SwitchingEnabled => Some(t.switching_enabled),
            P::Completed | P::Failed | P::Aborted => None,
        }
    }
}

/// The whole coordinator configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This coordinator's Raft node id (> 0), unique in the cluster and bound to `data_dir`.
    pub node_id: u64,
    /// Where the log, event history and snapshots live.
    pub data_dir: PathBuf,
    /// Listen address of the Raft RPC server.
    pub raft_listen: SocketAddr,
    /// Listen address of the operator API.
    pub api_listen: SocketAddr,
    /// Address peers use to reach the Raft server (default: `raft_listen`).
    #[serde(default)]
    pub raft_advertise: Option<String>,
    /// Address clients and peers use to reach the API (default: `api_listen`).
    #[serde(default)]
    pub api_advertise: Option<String>,
    /// Secret shared by all coordinators; authenticates Raft RPC (with the coordinators'
    /// certificates). At least 24 characters, random (`switchyard token new`).
    pub cluster_secret: Secret,
    pub tokens: Vec<TokenConfig>,
    /// Client certificates accepted without a token (TLS only), with their roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_certificates: Vec<ClientCertificateConfig>,
    #[serde(default)]
    pub raft: RaftConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub history: HistoryConfig,
    #[serde(default)]
    pub migration: MigrationConfig,
    #[serde(default)]
    pub ha: HaConfig,
    /// TLS of both listeners and of calls to peers: the cluster's CA and this coordinator's
    /// certificate (`switchyard cert node ID`), or `insecure = true`.
    #[serde(default)]
    pub tls: switchyard_tls::TlsConfig,
    /// What an empty data directory is for (`--initial-state`, first start only): a
    /// coordinator refuses to start on one otherwise. Not read from the file, where it would
    /// stay and let a wiped disk come back silently.
    #[serde(skip)]
    pub initial_state: Option<InitialState>,
}

/// Why a coordinator may start with no data (etcd's `--initial-cluster-state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialState {
    /// One of the members of a cluster about to be created (`switchyard cluster init`).
    New,
    /// A new member, to be added to a running cluster (`switchyard cluster add-node`) under a
    /// node id the cluster has never had.
    Join,
}

/// Host failure detection and failover (leader only). The timing argument that makes these
/// safe is in ARCHITECTURE.md ("Failover and fencing").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    /// A host's lease: how long an acknowledged renewal keeps it alive. Every agent renewal the
    /// leader acknowledges (after confirming it still leads) extends it.
    pub lease_ms: u64,
    /// How much earlier than the lease an agent fences itself: it stops its packaged guests
    /// once `lease_ms - fence_margin_ms` has passed since it *sent* its last acknowledged
    /// renewal. Covers the agent's hard stop and clock-rate differences.
    pub fence_margin_ms: u64,
    /// How long past the lease the leader waits before it declares a host failed.
    pub grace_ms: u64,
    /// How long a failover target may take to start the guest before the leader tries the
    /// next node.
    pub start_timeout_ms: u64,
}

impl HaConfig {
    /// How long an acknowledged renewal keeps an agent's lease on its side: `lease_ms -
    /// fence_margin_ms` (validation keeps it at least 500).
    pub fn fence_after_ms(&self) -> u64 {
        self.lease_ms - self.fence_margin_ms
    }
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig { lease_ms: 4000, fence_margin_ms: 1000, grace_ms: 1000, start_timeout_ms: 60_000 }
    }
}

/// What is wrong with a configuration, phrased as what to change.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Reads and validates a configuration file, which must not be readable by others (it
    /// holds the cluster secret).
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        switchyard_tls::private_file(path, "the cluster secret").map_err(ConfigError)?;
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("read {}: {e}", path.display())))?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    pub fn raft_advertise(&self) -> String {
        self.raft_advertise.clone().unwrap_or_else(|| self.raft_listen.to_string())
    }

    pub fn api_advertise(&self) -> String {
        self.api_advertise.clone().unwrap_or_else(|| self.api_listen.to_string())
    }

    /// Checks every rule and says how to fix the first one broken.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Every problem at once, so one edit fixes the file.
        let mut problems: Vec<String> = Vec::new();
        let mut err = |m: String| problems.push(m);
        if self.node_id == 0 {
            err("node_id must be at least 1".into());
        }
        if let Some(w) = secret::weakness(self.cluster_secret.expose()) {
            err(format!("cluster_secret {w} (share the same value on every coordinator)"));
        }
        if self.tokens.is_empty() {
            err("tokens is empty: add at least one [[tokens]] entry with role = \"admin\"".into());
        }
        let mut seen = HashSet::new();
        let secret_hash = secret::token_hash(self.cluster_secret.expose());
        for (i, t) in self.tokens.iter().enumerate() {
            if let Some(plain) = &t.token {
                err(format!(
                    "tokens[{i}] holds a token in plaintext: the configuration keeps tokens as hashes; replace \
                     `token = ...` with `sha256 = \"{}\"`",
                    secret::token_hash(plain.expose())
                ));
            } else if secret::parse_hash(&t.sha256).is_none() {
                err(format!(
                    "tokens[{i}].sha256 must be the token's SHA-256, 64 hex digits: make a token with `{}`",
                    secret::MAKE_ONE
                ));
            }
            if t.sha256.eq_ignore_ascii_case(&secret_hash) {
                err(format!("tokens[{i}] is the cluster_secret; a token must differ from it"));
            }
            if !seen.insert(t.sha256.to_ascii_lowercase()) {
                err(format!("tokens[{i}] is listed twice; every token must be unique"));
            }
            match (t.role, &t.host) {
                (Role::Agent, None) => {
                    err(format!("tokens[{i}] has role agent but no host: set host = \"<host name>\""))
                }
                (Role::Admin | Role::Operations | Role::ReadOnly, Some(_)) => {
                    err(format!("tokens[{i}] sets host, which only agent tokens take"))
                }
                _ => {}
            }
        }
        let mut names = HashSet::new();
        for (i, c) in self.client_certificates.iter().enumerate() {
            if c.role == Role::Agent {
                err(format!(
                    "client_certificates[{i}] has role agent: an agent calls with its token and its host's \
                     certificate together; give a client certificate role admin, operations or read_only"
                ));
            }
            if !names.insert(c.name.clone()) {
                err(format!("client_certificates[{i}] names {} twice; every name must be unique", c.name));
            }
        }
        if !self.client_certificates.is_empty() && self.tls.insecure {
            err("client_certificates needs TLS: with tls.insecure = true no client presents a certificate".into());
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 {
            err("raft.heartbeat_interval_ms must be at least 1".into());
        }
        if r.election_timeout_ms_min <= r.heartbeat_interval_ms * 2 {
            err(format!(
                "raft.election_timeout_ms_min ({}) must be more than twice raft.heartbeat_interval_ms ({})",
                r.election_timeout_ms_min, r.heartbeat_interval_ms
            ));
        }
        if r.election_timeout_ms_max <= r.election_timeout_ms_min {
            err("raft.election_timeout_ms_max must be greater than raft.election_timeout_ms_min".into());
        }
        if r.snapshot_logs_since_last == 0 {
            err("raft.snapshot_logs_since_last must be at least 1".into());
        }
        if !(1..=4096).contains(&r.proposal_batch_max) {
            err("raft.proposal_batch_max must be within 1..=4096".into());
        }
        if r.snapshot_chunk_bytes_max < 1024 {
            err("raft.snapshot_chunk_bytes_max must be at least 1024".into());
        }
        if self.api.request_body_bytes_max < 1024 {
            err("api.request_body_bytes_max must be at least 1024".into());
        }
        if self.api.peer_timeout_ms == 0 {
            err("api.peer_timeout_ms must be at least 1".into());
        }
        if self.api.host_report_timeout_ms < 100 {
            err("api.host_report_timeout_ms must be at least 100".into());
        }
        if self.api.join_timeout_ms == 0 {
            err("api.join_timeout_ms must be at least 1".into());
        }
        if self.migration.transferring_timeout_ms < 100 {
            err("migration.transferring_timeout_ms must be at least 100".into());
        }
        for phase in switchyard_protocol::Phase::ALL {
            let Some(t) = self.migration.timeout_ms(phase) else { continue };
            if phase != switchyard_protocol::Phase::Transferring && t <= self.migration.step_delay_ms.max(99) {
                err(format!(
                    "migration.phase_timeouts_ms.{phase} must be at least 100 and longer than migration.step_delay_ms ({})",
                    self.migration.step_delay_ms
                ));
            }
        }
        let ha = &self.ha;
        if !(1000..=60_000).contains(&ha.lease_ms) {
            err("ha.lease_ms must be within 1000..=60000".into());
        }
        if ha.fence_margin_ms < 500 || ha.lease_ms < ha.fence_margin_ms + 500 {
            err("ha.fence_margin_ms must be at least 500 and leave at least 500 of ha.lease_ms".into());
        }
        if ha.grace_ms < 500 {
            err("ha.grace_ms must be at least 500".into());
        }
        if ha.start_timeout_ms < 1000 {
            err("ha.start_timeout_ms must be at least 1000".into());
        }
        if self.api.connections_max == 0 {
            err("api.connections_max must be at least 1".into());
        }
        if self.api.streams_per_token_max == 0 {
            err("api.streams_per_token_max must be at least 1".into());
        }
        if self.api.stream_stall_timeout_ms < 1000 {
            err("api.stream_stall_timeout_ms must be at least 1000".into());
        }
        for p in self.tls.problems(true) {
            err(p);
        }
        let m = &self.migration;
        for (field, v, max) in [
            ("max_in_flight_per_target", m.max_in_flight_per_target, 64),
            ("max_in_flight", m.max_in_flight, 1024),
            ("drain_max_parallel", m.drain_max_parallel, switchyard_protocol::limits::DRAIN_PARALLEL_MAX),
        ] {
            if v == 0 || v > max {
                err(format!("migration.{field} must be between 1 and {max}"));
            }
        }
        if self.migration.step_delay_ms > 3_600_000 {
            err("migration.step_delay_ms must be at most 3600000 (one hour)".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems.join("; ")))
        }
    }

    /// Entries between two of this node's snapshots: `raft.snapshot_logs_since_last` times 1,
    /// 1.125, 1.25 or 1.375 by node id, so that the members, which apply the same entries, do
    /// not all build a snapshot (disk and CPU) at the same index.
    pub fn snapshot_every(&self) -> u64 {
        let n = self.raft.snapshot_logs_since_last;
        n + n * (self.node_id % 4) / 8
    }

    /// The openraft configuration derived from this one.
    pub fn openraft(&self) -> Result<openraft::Config, ConfigError> {
        let c = openraft::Config {
            cluster_name: "switchyard".into(),
            heartbeat_interval: self.raft.heartbeat_interval_ms,
            election_timeout_min: self.raft.election_timeout_ms_min,
            election_timeout_max: self.raft.election_timeout_ms_max,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every()),
            max_in_snapshot_log_to_keep: self.raft.max_in_snapshot_log_to_keep,
            snapshot_max_chunk_size: self.raft.snapshot_chunk_bytes_max,
            ..Default::default()
        };
        c.validate().map_err(|e| ConfigError(format!("raft: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Config {
        toml::from_str(
            r#"
            node_id = 1
            data_dir = "data/n1"
            raft_listen = "127.0.0.1:7101"
            api_listen = "127.0.0.1:7201"
            cluster_secret = "7f3a9c0e5b2d4816a0c3e9f1b7d25a64"
            [[tokens]]
            sha256 = "2f2a1b5ad0c5a4c8e2f4f8a4d5c6b7a8e9f0a1b2c3d4e5f60718293a4b5c6d7e"
            role = "admin"
            [[tokens]]
            sha256 = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291807f6e5d4c3b2a1908f7e6d5c4b"
            role = "agent"
            host = "h1"
            [tls]
            insecure = true
            "#,
        )
        .unwrap()
    }

    #[test]
    fn sample_is_valid() {
        sample().validate().unwrap();
        sample().openraft().unwrap();
    }

    #[test]
    fn every_rule_names_the_setting() {
        type Mutation = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.node_id = 0), "node_id"),
            (Box::new(|c| c.cluster_secret = Secret("short".into())), "cluster_secret"),
            (Box::new(|c| c.cluster_secret = Secret("change-me-to-a-long-random-secret".into())), "placeholder"),
            (Box::new(|c| c.tokens.clear()), "tokens is empty"),
            (Box::new(|c| c.tokens[0].sha256 = "short".into()), "tokens[0].sha256"),
            (
                Box::new(|c| c.tokens[0].token = Some(Secret("plain-token".into()))),
                "tokens[0] holds a token in plaintext",
            ),
            (Box::new(|c| c.tokens[1].host = None), "no host"),
            (Box::new(|c| c.tokens[0].host = Some(Name::new("h1").unwrap())), "only agent tokens"),
            (Box::new(|c| c.tokens[1].sha256 = c.tokens[0].sha256.to_uppercase()), "listed twice"),
            (
                Box::new(|c| {
                    c.client_certificates =
                        vec![ClientCertificateConfig { name: Name::new("alice").unwrap(), role: Role::Operations }]
                }),
                "client_certificates needs TLS",
            ),
            (
                Box::new(|c| {
                    c.tls.insecure = false;
                    c.tls.ca = Some("ca.pem".into());
                    c.tls.cert = Some("n1.pem".into());
                    c.tls.key = Some("n1.key".into());
                    c.client_certificates =
                        vec![ClientCertificateConfig { name: Name::new("h1").unwrap(), role: Role::Agent }]
                }),
                "client_certificates[0] has role agent",
            ),
            (
                Box::new(|c| {
                    let alice = ClientCertificateConfig { name: Name::new("alice").unwrap(), role: Role::ReadOnly };
                    c.client_certificates = vec![alice.clone(), alice];
                }),
                "client_certificates[1] names alice twice",
            ),
            (Box::new(|c| c.raft.election_timeout_ms_min = 100), "more than twice"),
            (Box::new(|c| c.raft.election_timeout_ms_max = 100), "election_timeout_ms_max"),
            (Box::new(|c| c.raft.proposal_batch_max = 0), "proposal_batch_max"),
            (Box::new(|c| c.api.request_body_bytes_max = 10), "request_body_bytes_max"),
            (Box::new(|c| c.migration.transferring_timeout_ms = 5), "migration.transferring_timeout_ms"),
            (Box::new(|c| c.migration.max_in_flight = 0), "migration.max_in_flight"),
            (Box::new(|c| c.migration.drain_max_parallel = 99), "migration.drain_max_parallel"),
            (
                Box::new(|c| c.migration.phase_timeouts_ms.owner_switched = 50),
                "migration.phase_timeouts_ms.owner_switched",
            ),
            (Box::new(|c| c.migration.step_delay_ms = 60_000), "migration.phase_timeouts_ms.requested"),
            (Box::new(|c| c.ha.lease_ms = 70_000), "ha.lease_ms"),
            (Box::new(|c| c.ha.fence_margin_ms = 3_900), "ha.fence_margin_ms"),
            (Box::new(|c| c.ha.start_timeout_ms = 10), "ha.start_timeout_ms"),
            (Box::new(|c| c.tls = Default::default()), "tls.ca is missing"),
            (Box::new(|c| c.tls.ca = Some("ca.pem".into())), "insecure = true turns TLS off"),
            (Box::new(|c| c.api.connections_max = 0), "api.connections_max"),
        ];
        for (mutate, want) in cases {
            let mut c = sample();
            mutate(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e} should mention {want}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut c = sample();
        c.node_id = 0;
        c.ha.grace_ms = 1;
        c.migration.transferring_timeout_ms = 5;
        let e = c.validate().unwrap_err().to_string();
        for want in ["node_id", "ha.grace_ms", "migration.transferring_timeout_ms"] {
            assert!(e.contains(want), "{e} should mention {want}");
        }
    }

    #[test]
    fn unknown_settings_are_refused() {
        let e = toml::from_str::<Config>("node_id = 1\nnode_idd = 2").unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
    }
}
