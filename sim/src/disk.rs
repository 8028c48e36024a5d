//! The storage double: a node's disk as the simulation sees it, and the openraft log store and
//! state machine over it.
//!
//! RocksDB's own I/O is invisible to a simulator (its threads, its fsyncs), so the simulated node
//! keeps its data here instead, with the real store's write discipline (storage/OVERVIEW.md):
//!
//! - one ordered stream of writes, like RocksDB's write-ahead log shared by every column family:
//!   log appends, the applied state with its events (one atomic batch per apply), the vote, the
//!   snapshot pointer;
//! - a write is visible at once and durable only once a sync covers it. Appends are synced by a
//!   flush a little later (the log store's syncer thread), whose completion is what tells
//!   openraft the entries are on disk; the vote, truncation, purge and snapshot install are
//!   written synced, as in the real store;
//! - a **crash** (the process dies, the machine stays up) keeps every write: the page cache
//!   survives. A **power loss** keeps the synced writes and a random prefix of the rest, the way a
//!   log file loses its unsynced tail.
//!
//! Each incarnation of a node holds its disk with an epoch; after a crash the old incarnation's
//! pending flushes and calls are refused, as if its process were gone.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, RaftLogReader, RaftSnapshotBuilder,
    StorageIOError,
};
use serde::{Deserialize, Serialize};
use switchyard_protocol::entry::Response;
use switchyard_protocol::{codec, ClusterState, Event};

use crate::Lock;
use crate::StorageError;

use crate::runtime::with_rng;
use crate::{Entry, LogId, SimConfig, SnapshotMeta, StoredMembership, Vote};

/// What a state machine holds: the folded state and the events it applied, in order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub cluster: ClusterState,
    pub history: Vec<Event>,
}

/// A built or received snapshot: its meta and its bytes (an encoded [`Applied`]).
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    pub meta: SnapshotMeta,
    pub data: Arc<Vec<u8>>,
}

/// A node's data as it stands after some writes.
#[derive(Clone, Debug, Default)]
pub struct Image {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub log: BTreeMap<u64, Entry>,
    pub purged: Option<LogId>,
    pub sm: Arc<Applied>,
    pub snapshot: Option<SnapshotFile>,
}

/// One write, in the order the node issued it.
#[derive(Clone, Debug)]
enum Write {
    Vote(Vote),
    Committed(Option<LogId>),
    Append(Vec<Entry>),
    /// Deletes the entries from this index on.
    Truncate(u64),
    Purge(LogId),
    /// The applied state after a batch of entries, its events included (one batch).
    Apply(Arc<Applied>),
    /// A snapshot built or installed; `install` replaces the applied state with its content.
    Snapshot {
        file: SnapshotFile,
        install: Option<Arc<Applied>>,
    },
}

impl Image {
    fn write(&mut self, w: &Write) {
        match w {
            Write::Vote(v) => self.vote = Some(*v),
            Write::Committed(c) => self.committed = *c,
            Write::Append(entries) => {
                for e in entries {
                    self.log.insert(e.log_id.index, e.clone());
                }
            }
            Write::Truncate(from) => {
                self.log.split_off(from);
            }
            Write::Purge(upto) => {
                self.log = self.log.split_off(&(upto.index + 1));
                self.purged = Some(*upto);
            }
            Write::Apply(sm) => self.sm = sm.clone(),
            Write::Snapshot { file, install } => {
                self.snapshot = Some(file.clone());
                if let Some(sm) = install {
                    self.sm = sm.clone();
                }
            }
        }
    }
}

/// How the double misbehaves on purpose, to show that the checkers catch a broken store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Bug {
    #[default]
    None,
    /// The log store reports appended entries flushed before they are (a follower acknowledging
    /// before its fsync): a power loss then loses entries a quorum acknowledged.
    AckBeforeFlush,
    /// The vote is written without a sync: a power loss can take back a vote already given.
    VoteNotSynced,
    /// A host's agent acts as if its lease always held: it neither fences its packaged guests
    /// nor lets the watchdog fire.
    NoFence,
    /// A hung agent's host has no watchdog: its guests run on, unfenced.
    NoWatchdog,
}

/// One node's disk, shared by the node's successive incarnations.
#[derive(Debug, Default)]
pub struct Disk {
    durable: Image,
    live: Image,
    unsynced: Vec<Write>,
    epoch: u64,
    pub bug: Bug,
}

impl Disk {
    fn push(&mut self, w: Write) {
        self.live.write(&w);
        self.unsynced.push(w);
    }

    fn sync(&mut self) {
        for w in self.unsynced.drain(..) {
            self.durable.write(&w);
        }
    }

    /// The process died: every write survives (the page cache does); the incarnation is gone.
    pub fn crash(&mut self) {
        self.sync();
        self.live = self.durable.clone();
        self.epoch += 1;
    }

    /// Power loss: the synced writes survive and `keep` of the unsynced ones (a prefix).
    /// Returns how many unsynced writes were lost.
    pub fn power_loss(&mut self, keep: usize) -> usize {
        let lost = self.unsynced.len().saturating_sub(keep);
        let kept: Vec<Write> = self.unsynced.drain(..).take(keep).collect();
        for w in &kept {
            self.durable.write(w);
        }
        self.live = self.durable.clone();
        self.epoch += 1;
        lost
    }

    pub fn unsynced(&self) -> usize {
        self.unsynced.len()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The data as the running node sees it.
    pub fn live(&self) -> &Image {
        &self.live
    }
}

pub type SharedDisk = Arc<Mutex<Disk>>;

fn gone(subject: ErrorSubject<u64>, verb: ErrorVerb) -> StorageError {
    let e = std::io::Error::other("this node incarnation crashed; its disk is gone");
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// One incarnation's handle on its disk.
#[derive(Clone, Debug)]
pub struct Store {
    disk: SharedDisk,
    epoch: u64,
}

impl Store {
    pub fn open(disk: SharedDisk) -> Store {
        let epoch = disk.locked().epoch;
        Store { disk, epoch }
    }

    /// Runs `f` on the disk if this incarnation still owns it. (The error is openraft's own
    /// type, which every storage method returns.)
    #[allow(clippy::result_large_err)]
    fn with<R>(
        &self,
        subject: ErrorSubject<u64>,
        verb: ErrorVerb,
        f: impl FnOnce(&mut Disk) -> R,
    ) -> Result<R, StorageError> {
        let mut d = self.disk.locked();
        if d.epoch != self.epoch {
            return Err(gone(subject, verb));
        }
        Ok(f(&mut d))
    }
}

impl RaftLogReader<SimConfig> for Store {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        use std::ops::Bound::*;
        let start = match range.start_bound() {
            Included(&s) => s,
            Excluded(&s) => s.saturating_add(1),
            Unbounded => 0,
        };
        let end = match range.end_bound() {
            Included(&e) => e.saturating_add(1),
            Excluded(&e) => e,
            Unbounded => u64::MAX,
        };
        // An empty or inverted range reads nothing, as an iterator over the real store does.
        self.with(ErrorSubject::Logs, ErrorVerb::Read, |d| {
            if start >= end {
                return Vec::new();
            }
            d.live.log.range(start..end).map(|(_, e)| e.clone()).collect()
        })
    }
}

impl RaftLogStorage<SimConfig> for Store {
    type LogReader = Store;

    async fn get_log_state(&mut self) -> Result<LogState<SimConfig>, StorageError> {
        self.with(ErrorSubject::Logs, ErrorVerb::Read, |d| {
            let last = d.live.log.values().next_back().map(|e| e.log_id).or(d.live.purged);
            LogState { last_purged_log_id: d.live.purged, last_log_id: last }
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.with(ErrorSubject::Vote, ErrorVerb::Write, |d| {
            d.push(Write::Vote(*vote));
            if d.bug != Bug::VoteNotSynced {
                d.sync();
            }
        })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.with(ErrorSubject::Vote, ErrorVerb::Read, |d| d.live.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.with(ErrorSubject::Store, ErrorVerb::Write, |d| d.push(Write::Committed(committed)))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.with(ErrorSubject::Store, ErrorVerb::Read, |d| d.live.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<SimConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let bug = self.with(ErrorSubject::Logs, ErrorVerb::Write, |d| {
            d.push(Write::Append(entries));
            d.bug
        })?;
        if bug == Bug::AckBeforeFlush {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        // The syncer's fsync comes a little later and covers every write made before it.
        let delay = with_rng(|r| Duration::from_micros(100 + r.below(2_000)));
        let store = self.clone();
        tokio::spawn(crate::runtime::as_node(crate::runtime::current_node(), async move {
            tokio::time::sleep(delay).await;
            if store.with(ErrorSubject::Logs, ErrorVerb::Write, |d| d.sync()).is_ok() {
                callback.log_io_completed(Ok(()));
            }
            // A crashed incarnation's callback is dropped: its core is gone.
        }));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.with(ErrorSubject::Logs, ErrorVerb::Delete, |d| {
            d.push(Write::Truncate(log_id.index));
            d.sync();
        })
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.with(ErrorSubject::Logs, ErrorVerb::Delete, |d| {
            d.push(Write::Purge(log_id));
            d.sync();
        })
    }
}

/// The simulation's probe: called with the applied state after every applied batch or
/// installed snapshot, the length its history had before, and the entries applied.
pub type Probe = Arc<dyn Fn(&Applied, usize, &[Entry]) + Send + Sync>;

/// The state machine: the real `switchyard_protocol::apply` over the double's applied state.
#[derive(Clone)]
pub struct StateMachine {
    store: Store,
    probe: Probe,
}

impl StateMachine {
    pub fn new(store: Store, probe: Probe) -> StateMachine {
        StateMachine { store, probe }
    }

    fn snapshot_of(sm: &Applied) -> SnapshotFile {
        let last = sm.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: sm.membership.clone(),
            snapshot_id: match last {
                Some(l) => format!("{}-{}", l.leader_id.term, l.index),
                None => "0-0".into(),
            },
        };
        SnapshotFile { meta, data: Arc::new(codec::encode(sm)) }
    }
}

impl RaftStateMachine<SimConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.store.with(ErrorSubject::StateMachine, ErrorVerb::Read, |d| {
            (d.live.sm.last_applied, d.live.sm.membership.clone())
        })
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let probe = self.probe.clone();
        self.store.with(ErrorSubject::StateMachine, ErrorVerb::Write, |d| {
            let mut sm = (*d.live.sm).clone();
            let before = sm.history.len();
            let mut responses = Vec::with_capacity(entries.len());
            for entry in &entries {
                let mut results = Vec::new();
                match &entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(proposals) => {
                        for p in &proposals.0 {
                            let outcome = switchyard_protocol::apply(&mut sm.cluster, p, entry.log_id.leader_id.term);
                            results.push(outcome.map(|(answer, events)| {
                                sm.history.extend(events);
                                answer
                            }));
                        }
                    }
                    EntryPayload::Membership(m) => {
                        sm.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    }
                }
                sm.last_applied = Some(*entry.get_log_id());
                responses.push(Response { results });
            }
            probe(&sm, before, &entries);
            d.push(Write::Apply(Arc::new(sm)));
            responses
        })
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let mut sm: Applied = codec::decode(&bytes).map_err(|e| {
            StorageError::from(StorageIOError::new(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                AnyError::new(&e),
            ))
        })?;
        // The derived indexes are not serialized (as in the real snapshot reader).
        sm.cluster.rebuild_indexes();
        let file = SnapshotFile { meta: meta.clone(), data: Arc::new(bytes) };
        let probe = self.probe.clone();
        self.store.with(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, |d| {
            probe(&sm, 0, &[]);
            d.push(Write::Snapshot { file, install: Some(Arc::new(sm)) });
            d.sync();
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<SimConfig>>, StorageError> {
        self.store.with(ErrorSubject::Snapshot(None), ErrorVerb::Read, |d| {
            d.live
                .snapshot
                .as_ref()
                .map(|f| Snapshot { meta: f.meta.clone(), snapshot: Box::new(Cursor::new(f.data.to_vec())) })
        })
    }
}

impl RaftSnapshotBuilder<SimConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<SimConfig>, StorageError> {
        self.store.with(ErrorSubject::Snapshot(None), ErrorVerb::Write, |d| {
            let file = StateMachine::snapshot_of(&d.live.sm);
            d.push(Write::Snapshot { file: file.clone(), install: None });
            d.sync();
            Snapshot { meta: file.meta, snapshot: Box::new(Cursor::new(file.data.to_vec())) }
        })
    }
}
