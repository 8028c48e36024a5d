//! The tests' view of the test kit (`switchyard-testkit`): real coordinator and agent processes
//! (this package's `coordinator_proc`, `agent_proc` and `cli_proc`, the same code as the real
//! binaries) on free loopback ports in a temporary folder, with fixed tokens and Raft timing
//! for tests. Every wait polls a condition until a deadline; nothing sleeps for a fixed time.

use std::time::{Duration, Instant};

use switchyard_client::Client;
use switchyard_coordinator::config::{ApiConfig, HaConfig, HistoryConfig, MigrationConfig, RaftConfig};
use switchyard_protocol::api::WriteResponse;
pub use switchyard_testkit::{eventually, AgentProc, Binaries, Cluster, Hypervisor, Secrets, Settings};

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0001";
pub const READ_ONLY_TOKEN: &str = "read-only-token-for-tests-1";
pub const OPERATIONS_TOKEN: &str = "operations-token-for-tests1";
pub const AGENT_TOKEN: &str = "agent-h1-token-for-tests-01";

/// The agent token of host `hN` (N in 1..=5; h1's is [`AGENT_TOKEN`]).
pub fn agent_token(n: u32) -> String {
    format!("agent-h{n}-token-for-tests-01")
}
const SECRET: &str = "cluster-secret-for-tests-0001";

/// Settings a test may change.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub snapshot_logs_since_last: u64,
    pub max_in_snapshot_log_to_keep: u64,
    /// `history.retain_revisions` (0 keeps everything).
    pub retain_revisions: u64,
    /// `api.host_report_timeout_ms`.
    pub host_report_timeout_ms: u64,
    /// `migration.transferring_timeout_ms`.
    pub transferring_timeout_ms: u64,
    /// `migration.step_delay_ms`.
    pub step_delay_ms: u64,
    /// The agents' simulated transfer time.
    pub sim_transfer_ms: u64,
    /// The agents' hypervisor.
    pub hypervisor: Hypervisor,
    /// QEMU's live-migration bandwidth limit (KiB/s).
    pub qemu_bandwidth_kib: Option<u64>,
    /// MiB of data in every QEMU guest's memory, loaded at 16 MiB (guests need at least 16 +
    /// this much memory): without it a diskless guest's memory is zero pages, which move in
    /// milliseconds whatever the bandwidth limit.
    pub qemu_guest_data_mib: u32,
    /// `ha.lease_ms` (the product's default unless a test leaves agents down for longer on
    /// purpose, and is not about host failure).
    pub lease_ms: u64,
    /// `ha.start_timeout_ms`.
    pub start_timeout_ms: u64,
    /// `api.streams_per_token_max`.
    pub streams_per_token_max: usize,
    /// `api.stream_stall_timeout_ms`.
    pub stream_stall_timeout_ms: u64,
    /// The agents' `jump_after_revisions`.
    pub jump_after_revisions: u64,
    /// The agents' `report_interval_ms` (each report renews the host's lease).
    pub report_interval_ms: u64,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            snapshot_logs_since_last: 5000,
            max_in_snapshot_log_to_keep: 1000,
            retain_revisions: 0,
            host_report_timeout_ms: 5000,
            transferring_timeout_ms: 30_000,
            step_delay_ms: 0,
            sim_transfer_ms: 500,
            hypervisor: Hypervisor::Simulated,
            qemu_bandwidth_kib: None,
            qemu_guest_data_mib: 0,
            lease_ms: HaConfig::default().lease_ms,
            start_timeout_ms: HaConfig::default().start_timeout_ms,
            streams_per_token_max: ApiConfig::default().streams_per_token_max,
            stream_stall_timeout_ms: ApiConfig::default().stream_stall_timeout_ms,
            jump_after_revisions: 10_000,
            report_interval_ms: 200,
        }
    }
}

impl ClusterOpts {
    /// The test kit's settings: Raft timing slow enough for a loaded test machine (heartbeats
    /// every 100 ms, elections after 0.5–1 s), agents reporting every 200 ms unless told.
    fn settings(&self) -> Settings {
        Settings {
            raft: RaftConfig {
                heartbeat_interval_ms: 100,
                election_timeout_ms_min: 500,
                election_timeout_ms_max: 1000,
                snapshot_logs_since_last: self.snapshot_logs_since_last,
                max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
                ..RaftConfig::default()
            },
            api: ApiConfig {
                join_timeout_ms: 5000,
                host_report_timeout_ms: self.host_report_timeout_ms,
                streams_per_token_max: self.streams_per_token_max,
                stream_stall_timeout_ms: self.stream_stall_timeout_ms,
                ..ApiConfig::default()
            },
            history: HistoryConfig { retain_revisions: self.retain_revisions },
            migration: MigrationConfig {
                transferring_timeout_ms: self.transferring_timeout_ms,
                step_delay_ms: self.step_delay_ms,
                ..MigrationConfig::default()
            },
            ha: HaConfig { lease_ms: self.lease_ms, start_timeout_ms: self.start_timeout_ms, ..HaConfig::default() },
            sim_transfer_ms: self.sim_transfer_ms,
            sim_freeze_ms: 40,
            report_interval_ms: self.report_interval_ms,
            hypervisor: self.hypervisor.clone(),
            reconcile_interval_ms: 300,
            qemu_bandwidth_kib: self.qemu_bandwidth_kib,
            qemu_guest_data_mib: self.qemu_guest_data_mib,
            jump_after_revisions: self.jump_after_revisions,
            rust_log: "info,openraft=warn".into(),
            // Every test runs the default: TLS on every link.
            tls: true,
        }
    }
}

/// The programs this package builds.
pub fn binaries() -> Binaries {
    Binaries {
        coordinator: env!("CARGO_BIN_EXE_coordinator_proc").into(),
        agent: env!("CARGO_BIN_EXE_agent_proc").into(),
        cli: Some(env!("CARGO_BIN_EXE_cli_proc").into()),
    }
}

fn secrets() -> Secrets {
    Secrets {
        cluster_secret: SECRET.into(),
        admin_token: ADMIN_TOKEN.into(),
        admin_name: "test-admin".into(),
        read_only_token: READ_ONLY_TOKEN.into(),
        operations_token: OPERATIONS_TOKEN.into(),
        agent_tokens: (1..=5).map(|n| (format!("h{n}"), agent_token(n))).collect(),
    }
}

/// A test cluster: the kit's [`Cluster`] in a temporary folder, with the tests' tokens and timing.
pub struct TestCluster(Cluster);

impl std::ops::Deref for TestCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl std::ops::DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.0
    }
}

impl TestCluster {
    /// Starts `n` coordinators, bootstraps the cluster on node 1 and adds the others as voters.
    pub async fn start(n: usize, opts: ClusterOpts) -> TestCluster {
        let mut c = TestCluster::empty(opts);
        c.0.start(n as u64).await.expect("start a test cluster");
        c
    }

    /// A cluster with no node yet; add nodes with [`Cluster::spawn_new_node`]. Set
    /// `SWITCHYARD_KEEP_TEST_DIRS=1` to keep the data and logs of every process after the test
    /// (the path is printed).
    pub fn empty(opts: ClusterOpts) -> TestCluster {
        TestCluster(Cluster::new(None, binaries(), secrets(), opts.settings()).expect("a test cluster's folder"))
    }
}

/// A host with room for any test workload.
pub fn big_host(name: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "address": format!("{name}:7100"), "vcpus": 4096, "memory_mib": 1_048_576,
                       "hardware_family": "ia64", "hypervisor_version": "hpvm-6.1"})
}

/// Sends a write until it is acknowledged, always with the same body (and so the same request
/// id, if the body carries one): the way a careful client rides out a leader change.
pub async fn write_until_acked(c: &Client, path: &str, body: &serde_json::Value) -> WriteResponse {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match c.post::<_, WriteResponse>(path, body).await {
            Ok(r) => return r,
            // A request that can never succeed is a bug in the test: say so at once.
            Err(e)
                if matches!(e.code(), Some("bad_request" | "invalid_argument" | "forbidden" | "unauthenticated")) =>
            {
                panic!("{path} refused: {e}")
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("{path}: {e}; retrying with the same request");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{path} never succeeded: {e}"),
        }
    }
}
