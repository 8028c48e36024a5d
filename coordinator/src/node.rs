//! The node: one coordinator's service context. Everything the API, the event streams, the
//! liveness tracker and the migration driver share — the Raft handle, the state machine, the
//! proposer, the proposer's clock, agents' reports and the recent event frames — lives here, so
//! the leader's tasks and the HTTP layer both depend on this module and never on each other.
//!
//! Its errors ([`NodeError`]) say what went wrong in Raft terms (not the leader, no quorum,
//! stopping); the API maps them to HTTP answers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use openraft::error::{CheckIsLeaderError, ForwardToLeader, RaftError};
use openraft::{Raft, ServerState};
use switchyard_protocol::api::NodeStatus;
use switchyard_protocol::{ApplyResult, Command, Proposal, RequestId, Revision};
use switchyard_storage::{NodeId, NodeInfo, StateMachineStore, TypeConfig};

use crate::clock::Clock;
use crate::config::Config;
use crate::liveness::Liveness;
use crate::metrics::{HostLabel, HostStateLabel, Metrics, PackageLabel, PhaseLabel};
use crate::migration::Reports;
use crate::proposer::{ProposeError, Proposer};
use crate::stream::RecentFrames;

/// Why this node could not do what was asked (nothing was changed).
#[derive(Clone, Debug, thiserror::Error)]
pub enum NodeError {
    #[error("this node is not the leader{}", .leader.as_ref().map(|l| format!("; the leader is at {l}")).unwrap_or_else(|| " and no leader is known yet; retry shortly".into()))]
    NotLeader { leader: Option<String> },
    /// No quorum, Raft stopped, or the node is stopping: retry (elsewhere).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl NodeError {
    fn forward(f: &ForwardToLeader<NodeId, NodeInfo>) -> NodeError {
        NodeError::NotLeader { leader: f.leader_node.as_ref().map(|n| n.api_addr.clone()) }
    }
}

impl From<RaftError<NodeId, CheckIsLeaderError<NodeId, NodeInfo>>> for NodeError {
    fn from(e: RaftError<NodeId, CheckIsLeaderError<NodeId, NodeInfo>>) -> Self {
        match &e {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => NodeError::forward(f),
            RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => {
                NodeError::Unavailable(format!("leadership not confirmed by a quorum: {q}"))
            }
            RaftError::Fatal(f) => NodeError::Unavailable(format!("raft stopped: {f}")),
        }
    }
}

impl From<ProposeError> for NodeError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader { leader } => NodeError::NotLeader { leader },
            ProposeError::Unavailable(m) => NodeError::Unavailable(m),
            ProposeError::Internal(m) => NodeError::Internal(m),
        }
    }
}

impl From<switchyard_storage::StoreError> for NodeError {
    fn from(e: switchyard_storage::StoreError) -> Self {
        NodeError::Internal(format!("storage: {e}"))
    }
}

/// The leader this node last heard from over Raft RPC: the newest committed vote an append
/// request carried. A node whose Raft stopped on a storage error learns no leader from Raft any
/// more, but the leader keeps trying to replicate to it; from this it still forwards requests
/// it cannot serve itself (writes, linearizable reads, agents' lease renewals) to the leader.
#[derive(Default)]
pub struct HeardLeader(std::sync::Mutex<Option<(u64, NodeId)>>);

impl HeardLeader {
    pub fn note(&self, term: u64, leader: NodeId) {
        let mut heard = self.0.lock().expect("heard leader lock");
        if heard.is_none_or(|(t, _)| term >= t) {
            *heard = Some((term, leader));
        }
    }

    pub fn get(&self) -> Option<NodeId> {
        self.0.lock().expect("heard leader lock").map(|(_, id)| id)
    }
}

/// One coordinator's shared context.
pub struct Node {
    pub id: NodeId,
    pub raft: Raft<TypeConfig>,
    pub sm: StateMachineStore,
    pub config: Arc<Config>,
    clock: Arc<dyn Clock>,
    /// Every write of this node goes through it into Raft.
    pub proposer: Proposer,
    /// Agent reports (meaningful on the leader).
    pub liveness: Liveness,
    /// Agents' migration reports, read by the migration driver (kept on every node).
    pub reports: Reports,
    /// Recent events' encoded frames, shared by the subscribers.
    pub frames: RecentFrames,
    /// What `/metrics` serves.
    pub metrics: Arc<Metrics>,
    /// Set once a graceful stop began: new writes are refused as unavailable (clients retry
    /// them on the next leader), subscriptions end.
    stopping: AtomicBool,
    stop_signal: tokio::sync::watch::Sender<bool>,
    /// Why Raft stopped on its own (its storage failed: a full or failing disk), once it did.
    /// The node then refuses writes naming it and serves reads from the state as it was,
    /// until the daemon starts the coordinator again on a data directory that takes writes
    /// (`server::wait_writable`).
    fault: tokio::sync::watch::Sender<Option<String>>,
    /// Set by the Raft RPC server (see [`HeardLeader`]).
    pub heard: Arc<HeardLeader>,
    /// The history start before which every peer answered that it holds nothing either (see
    /// `backfill.rs`); 0 while not known. Revisions this node lacks after a snapshot install
    /// are missing only here, and subscribers asking for them are sent to another coordinator,
    /// unless the whole cluster has let them go.
    held_nowhere_before: AtomicU64,
}

impl Node {
    /// `metrics` is shared with the Raft network, which times replication into it.
    pub fn new(
        raft: Raft<TypeConfig>,
        sm: StateMachineStore,
        config: Arc<Config>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Arc<Node> {
        let proposer = Proposer::start(raft.clone(), config.raft.proposal_batch_max, metrics.clone());
        Arc::new(Node {
            id: config.node_id,
            raft,
            sm,
            config,
            clock,
            proposer,
            liveness: Liveness::default(),
            reports: Reports::default(),
            frames: RecentFrames::default(),
            metrics,
            stopping: AtomicBool::new(false),
            stop_signal: tokio::sync::watch::channel(false).0,
            fault: tokio::sync::watch::channel(None).0,
            heard: Arc::default(),
            held_nowhere_before: AtomicU64::new(0),
        })
    }

    /// Whether the history this node lacks before `first` (its history's start) is known to be
    /// held by no peer either: a subscriber asking for it is told `compacted`, not sent on.
    pub fn history_held_nowhere_before(&self, first: Revision) -> bool {
        self.held_nowhere_before.load(Ordering::Relaxed) == first
    }

    /// Records that every peer answered without the history before `first`.
    pub fn set_history_held_nowhere_before(&self, first: Revision) {
        self.held_nowhere_before.store(first, Ordering::Relaxed);
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The leader's API address, when a leader is known: Raft's, or, once Raft stopped on a
    /// storage error, the one this node last heard from.
    pub fn leader_api(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let leader = match self.fault() {
            None => m.current_leader?,
            Some(_) => self.heard.get().filter(|l| *l != self.id)?,
        };
        let addr = m.membership_config.nodes().find(|(id, _)| **id == leader).map(|(_, n)| n.api_addr.clone());
        addr
    }

    /// `NotLeader` naming the leader, for requests only the leader may serve.
    pub fn not_leader(&self) -> NodeError {
        NodeError::NotLeader { leader: self.leader_api() }
    }

    /// What this node says about itself.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        NodeStatus {
            id: self.id,
            role: role.into(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            revision: self.sm.applied_meta().revision,
            history_first: self.sm.history_first().unwrap_or_default(),
            importing: self.sm.read(|st| st.importing().cloned()),
            fault: self.fault(),
        }
    }

    /// The `/metrics` text: the counted metrics, and the gauges set now from Raft, the state
    /// and (on the leader) the agents' reports.
    pub fn metrics_text(&self) -> String {
        let m = &self.metrics;
        let r = self.raft.metrics().borrow().clone();
        m.term.set(r.current_term as i64);
        m.is_leader.set(i64::from(r.state == ServerState::Leader));
        m.last_log_index.set(r.last_log_index.unwrap_or(0) as i64);
        m.applied_index.set(r.last_applied.map_or(0, |l| l.index) as i64);
        m.revision.set(self.sm.applied_meta().revision as i64);
        m.raft_fault.set(i64::from(self.fault().is_some()));
        for f in [&m.host_applied_revision, &m.host_lag, &m.host_in_sync] {
            f.clear();
        }
        m.host_last_report_seconds.clear();
        m.host_state.clear();
        m.reset_in_flight();
        m.package_switching_disabled_seconds.clear();
        let leader = r.state == ServerState::Leader;
        let timeout = std::time::Duration::from_millis(self.config.api.host_report_timeout_ms);
        let now_ms = self.clock.now().0;
        self.sm.read(|st| {
            let digest = st.config_digest();
            for h in st.hosts() {
                let host = HostLabel { host: h.spec.name.to_string() };
                let state = st.host_state(h).to_string();
                m.host_state.get_or_create(&HostStateLabel { host: host.host.clone(), state }).set(1);
                if leader {
                    let sync = self.liveness.sync(h, st, digest, timeout);
                    if let Some(rev) = sync.applied_revision {
                        m.host_applied_revision.get_or_create(&host).set(rev as i64);
                        m.host_lag.get_or_create(&host).set(st.revision().saturating_sub(rev) as i64);
                    }
                    if let Some(ago) = sync.last_report_ms_ago {
                        m.host_last_report_seconds.get_or_create(&host).set(ago as f64 / 1000.0);
                    }
                    let in_sync = matches!(sync.status, switchyard_protocol::api::SyncStatus::InSync);
                    m.host_in_sync.get_or_create(&host).set(i64::from(in_sync));
                }
            }
            for mig in st.in_flight_migrations() {
                m.migrations_in_flight.get_or_create(&PhaseLabel { phase: mig.phase.as_str().into() }).inc();
            }
            let mut disabled = 0;
            for p in st.packages().filter(|p| !p.switching_enabled) {
                disabled += 1;
                let since = now_ms.saturating_sub(p.switching_changed.at.0);
                m.package_switching_disabled_seconds
                    .get_or_create(&PackageLabel { package: p.name.to_string() })
                    .set(since as f64 / 1000.0);
            }
            m.packages_switching_disabled.set(disabled);
            m.failovers_in_flight.set(st.failovers().count() as i64);
        });
        m.encode()
    }

    /// Proposes a command through Raft and waits for its apply result.
    pub async fn propose(
        &self,
        request_id: RequestId,
        actor: String,
        command: Command,
    ) -> Result<ApplyResult, NodeError> {
        if self.is_stopping() {
            return Err(NodeError::Unavailable("this coordinator is stopping; retry on another".into()));
        }
        if let Some(fault) = self.fault() {
            return Err(self.faulted_error(&fault));
        }
        let proposal = Proposal { request_id, actor, time: self.clock.now(), command };
        Ok(self.proposer.propose(proposal).await?)
    }

    /// Waits until this node may answer a linearizable read (at once for a stale one).
    pub async fn read_barrier(&self, stale: bool) -> Result<(), NodeError> {
        if stale {
            return Ok(());
        }
        if let Some(fault) = self.fault() {
            return Err(self.faulted_error(&fault));
        }
        // openraft confirms leadership with one round of heartbeats, each allowed one heartbeat
        // interval: on a loaded machine a round can miss its quorum while the leader is sound.
        // A later round is as good a read point (it is taken after the request arrived), so a
        // missed round is tried again for up to five election timeouts before the client hears 503.
        let interval = std::time::Duration::from_millis(self.config.raft.heartbeat_interval_ms);
        let budget = std::time::Duration::from_millis(self.config.raft.election_timeout_ms_max.max(1) * 5);
        let started = std::time::Instant::now();
        loop {
            match self.raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) if started.elapsed() < budget => {
                    tracing::debug!(got = ?q.got, "a leadership confirmation round missed its quorum; trying again");
                    tokio::time::sleep(interval).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// What a node whose Raft stopped answers a request only Raft can serve: the leader it
    /// last heard from, for the API to forward the request to, or why it cannot.
    fn faulted_error(&self, fault: &str) -> NodeError {
        match self.leader_api() {
            Some(leader) => NodeError::NotLeader { leader: Some(leader) },
            None => NodeError::Unavailable(format!(
                "this coordinator cannot write: {fault}; it serves stale reads (?stale=true) and recovers by itself once its data directory takes writes again; no leader has reached it since, so retry on another coordinator"
            )),
        }
    }

    /// Begins a graceful stop: no new writes, streams end.
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop_signal.send(true);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Why Raft stopped on its own, if it did (see [`Node::watch_raft`]).
    pub fn fault(&self) -> Option<String> {
        self.fault.borrow().clone()
    }

    /// Resolves with the fault once Raft stopped on its own.
    pub async fn faulted(&self) -> String {
        let mut rx = self.fault.subscribe();
        let fault = rx.wait_for(|f| f.is_some()).await.map(|f| f.clone()).ok().flatten();
        match fault {
            Some(f) => f,
            // The sender lives as long as the node.
            None => std::future::pending().await,
        }
    }

    /// Watches Raft until it stops. Stopping on an error (openraft stops its core when a
    /// storage call fails: RocksDB refuses every write after a failed one, a full disk among
    /// them) sets the node's fault; a stop asked for does not.
    pub async fn watch_raft(self: Arc<Node>) {
        // Raft's core holds the server metrics' sender until it has stopped and set its
        // running state; waiting for that end, rather than for every change of the full metrics
        // (several per write), costs the writes nothing.
        let mut server = self.raft.server_metrics();
        while server.changed().await.is_ok() {}
        let Err(fatal) = self.raft.metrics().borrow().running_state.clone() else { return };
        if matches!(fatal, openraft::error::Fatal::Stopped) || self.is_stopping() {
            return;
        }
        let fault = match fatal {
            openraft::error::Fatal::StorageError(e) => format!("its storage failed: {e}"),
            other => format!("raft stopped: {other}"),
        };
        tracing::error!(node = self.id, %fault, "raft stopped; writes are refused and reads served from the state as it was until the data directory takes writes again");
        self.fault.send_replace(Some(fault));
    }

    /// Resolves once a graceful stop began (for long-lived tasks such as subscriptions).
    pub async fn stopped(&self) {
        let mut rx = self.stop_signal.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}
