//! The proposal batcher: every write of this coordinator (API requests, the liveness tracker, the
//! migration driver) goes through it into Raft.
//!
//! Why: openraft appends, fsyncs and replicates one log entry per `client_write`, so with one
//! proposal per entry a cluster commits about as many writes per second as its disk syncs. The
//! batcher packs the proposals that queue up while earlier entries are being committed into one
//! entry ([`Proposals`]), so one fsync and one replication round commit them all; under load the
//! batches grow by themselves, and a lone write still goes out at once (nothing waits for a
//! batch to fill). At most [`IN_FLIGHT`] entries are in flight, so a commit is always under way
//! while the next batch gathers.
//!
//! A write that finds the batcher idle (nothing queued, a slot free) does not queue: its caller
//! proposes it as an entry of its own at once, which spares a lone client's write the hops to
//! the batcher's task and back (two task wake-ups of its commit's critical path). As soon as
//! writes overlap, they queue and are batched as above.
//!
//! Semantics are unchanged: proposals are applied in order, each with its own request id and
//! result; a failed `client_write` (not the leader, shutting down) fails every proposal of the
//! batch with the same error, and clients retry with their request id as before.
//!
//! Every write of the node goes through `Node::propose`, which refuses new writes once a
//! graceful stop began.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::{stage, Metrics};
use openraft::Raft;
use switchyard_protocol::{ApplyResult, Proposal};
use switchyard_storage::{Proposals, TypeConfig};
use tokio::sync::{mpsc, oneshot, Semaphore};

use openraft::error::{ClientWriteError, RaftError};
use switchyard_storage::{NodeId, NodeInfo};

/// Why a proposal was not committed (nothing was applied; a client may retry it with its
/// request id).
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProposeError {
    /// Another node leads (its API address, when known).
    #[error("this node is not the leader")]
    NotLeader { leader: Option<String> },
    /// Raft stopped, or this node is stopping.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>> for ProposeError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> Self {
        match &e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                ProposeError::NotLeader { leader: f.leader_node.as_ref().map(|n| n.api_addr.clone()) }
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => ProposeError::Internal(c.to_string()),
            RaftError::Fatal(f) => ProposeError::Unavailable(format!("raft stopped: {f}")),
        }
    }
}

/// Entries being committed at once.
const IN_FLIGHT: usize = 2;

struct Pending {
    proposal: Proposal,
    reply: Reply,
    queued: Instant,
}

/// Queued proposals at most; past it, proposers wait for room.
const QUEUE: usize = 8192;

#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
    raft: Raft<TypeConfig>,
    /// Entries being committed (shared with the batcher).
    in_flight: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Proposer {
    /// Starts the batcher; `max_batch` proposals at most per entry (1: no batching).
    pub fn start(raft: Raft<TypeConfig>, max_batch: usize, metrics: Arc<Metrics>) -> Proposer {
        let (tx, rx) = mpsc::channel(QUEUE);
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(run(raft.clone(), rx, max_batch.max(1), in_flight.clone(), metrics.clone()));
        Proposer { tx, raft, in_flight, metrics }
    }

    /// Proposes one write and waits until it is committed and applied (or refused).
    pub async fn propose(&self, proposal: Proposal) -> Result<ApplyResult, ProposeError> {
        let stopping = || ProposeError::Unavailable("the coordinator is stopping".into());
        // The batcher idle: this write is an entry of its own, proposed from here. (A proposal
        // the batcher holds while it waits for a slot is not in the queue; taking the slot
        // first delays it by at most one commit.)
        if self.tx.capacity() == QUEUE {
            if let Ok(_permit) = self.in_flight.clone().try_acquire_owned() {
                self.metrics.stage(stage::PROPOSER_QUEUE, Duration::ZERO);
                let mut results = commit(&self.raft, &self.metrics, vec![proposal]).await;
                return results.pop().unwrap_or_else(|| Err(stopping()));
            }
        }
        let (reply, answer) = oneshot::channel();
        self.tx.send(Pending { proposal, reply, queued: Instant::now() }).await.map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }
}

type Reply = oneshot::Sender<Result<ApplyResult, ProposeError>>;

/// Commits `proposals` as one entry; answers each proposal's result, in order.
async fn commit(
    raft: &Raft<TypeConfig>,
    metrics: &Metrics,
    proposals: Vec<Proposal>,
) -> Vec<Result<ApplyResult, ProposeError>> {
    let n = proposals.len();
    metrics.batch_size.observe(n as f64);
    let started = Instant::now();
    let written = raft.client_write(Proposals(proposals)).await;
    if written.is_ok() {
        metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
    }
    let failed = |e: ProposeError| vec![Err(e); n];
    match written {
        Ok(resp) if resp.data.results.len() == n => resp.data.results.into_iter().map(Ok).collect(),
        Ok(resp) => failed(ProposeError::Internal(format!(
            "the state machine gave {} results for {n} proposals",
            resp.data.results.len()
        ))),
        Err(e) => failed(ProposeError::from(e)),
    }
}

async fn run(
    raft: Raft<TypeConfig>,
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
    in_flight: Arc<Semaphore>,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = rx.recv().await {
        // Wait for a free slot first: whatever queues meanwhile joins this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        for p in &batch {
            metrics.stage(stage::PROPOSER_QUEUE, p.queued.elapsed());
        }
        let raft = raft.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let (proposals, replies): (Vec<Proposal>, Vec<Reply>) =
                batch.into_iter().map(|p| (p.proposal, p.reply)).unzip();
            let results = commit(&raft, &metrics, proposals).await;
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
            drop(permit);
        });
    }
}
