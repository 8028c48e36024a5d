//! The replicated state machine on RocksDB (openraft `RaftStateMachine`).
//!
//! The cluster state lives in memory; what is durable is the event history. Each `apply` call
//! runs the pure `switchyard_protocol::apply` on every entry, then writes the resulting events,
//! their index rows and the new last-applied log id in **one** atomic batch. On restart the state
//! is the last snapshot's state (or a newer state checkpoint, see [`crate::checkpoint`]) plus
//! the events after it, replayed from the history (no log replay needed, so log purges never
//! lose state). The apply batch is not fsynced on its own: if
//! it is lost in a crash, openraft re-applies the committed entries from the (synced) log and the
//! deterministic apply writes identical events again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use rocksdb::{IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};
use switchyard_protocol::codec::{self, RecordKind};
use switchyard_protocol::{ClusterState, Event, ImportProgress, Replay, Revision};
use tokio::io::AsyncSeekExt;
use tokio::sync::watch;

use crate::checkpoint;
use crate::db::{cf, key, DataDir};
use crate::error::StoreError;
use crate::history::{migrations_at, write_event, write_migration, History};
use crate::snapshot::{self, SnapshotHeader, SnapshotReader};
use crate::types::{Entry, LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// Events written per batch while installing a snapshot.
const INSTALL_BATCH_EVENTS: usize = 4096;

/// What the state machine has applied, persisted atomically with the events it produced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedMeta {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// Revision of the last event produced (equals the state's revision).
    pub revision: Revision,
}

/// Which snapshot file is current.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SnapshotPointer {
    meta: SnapshotMeta,
    file: String,
    /// Revision of the state in the snapshot: history before it may be compacted.
    revision: Revision,
}

struct Applied {
    meta: AppliedMeta,
    cluster: ClusterState,
}

struct Inner {
    dir: DataDir,
    applied: RwLock<Applied>,
    /// Serialises snapshot builds and installs with each other.
    snapshot_lock: tokio::sync::Mutex<()>,
    revision_tx: watch::Sender<Revision>,
    file_seq: AtomicU64,
    /// Keep at least this many latest revisions of history (0: keep everything).
    retain_revisions: AtomicU64,
    /// Events between two state checkpoints (0: none).
    checkpoint_every: AtomicU64,
    /// Revision of the newest base a restart could start from (checkpoint or snapshot).
    checkpoint_at: AtomicU64,
    /// A checkpoint is being written.
    checkpointing: AtomicBool,
    /// Revision of the state this node started from (snapshot or checkpoint) before replaying.
    restart_base: Revision,
}

/// The state machine of one node. Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

impl StateMachineStore {
    /// Opens the state machine, rebuilding the in-memory state from the current snapshot plus
    /// the retained events after it.
    pub fn open(dir: DataDir) -> Result<StateMachineStore, StoreError> {
        let mut meta: AppliedMeta =
            dir.get(cf::SM, key::APPLIED, RecordKind::AppliedState, "applied")?.unwrap_or_default();
        let pointer: Option<SnapshotPointer> =
            dir.get(cf::SM, key::SNAPSHOT, RecordKind::SnapshotPointer, "snapshot")?;
        let mut cluster = ClusterState::default();
        if let Some(p) = pointer {
            let path = dir.snapshot_dir().join(&p.file);
            if p.meta.last_log_id > meta.last_applied && dir.read_only {
                // An interrupted install, seen by a tool: the state it leads to, unwritten.
                cluster = SnapshotReader::open(&path)?.state()?;
                meta = AppliedMeta {
                    last_applied: p.meta.last_log_id,
                    membership: p.meta.last_membership.clone(),
                    revision: cluster.revision(),
                };
            } else if p.meta.last_log_id > meta.last_applied {
                // A directory whose install was interrupted after the pointer moved (as older
                // builds wrote them; installs now move it with the applied state): finish it.
                let (c, m) = install_from_file(&dir, &path, &p.meta, &p.file)?;
                cluster = c;
                meta = m;
            } else if let Some(newer) = checkpoint::newest(&dir, p.revision, meta.revision) {
                cluster = newer;
            } else {
                cluster = SnapshotReader::open(&path)?.state()?;
            }
        } else if let Some(newer) = checkpoint::newest(&dir, 0, meta.revision) {
            cluster = newer;
        }
        if cluster.revision() > meta.revision {
            return Err(StoreError::Inconsistent(format!(
                "snapshot state is at revision {}, beyond the applied revision {}",
                cluster.revision(),
                meta.revision
            )));
        }
        let base = cluster.revision();
        replay_events(&dir, &mut cluster, meta.revision)?;
        if let Some(p) = dir.get::<ImportProgress>(cf::SM, key::IMPORTING, RecordKind::ImportProgress, "importing")? {
            cluster.resume_import(p);
        }
        let (revision_tx, _) = watch::channel(meta.revision);
        tracing::info!(
            node = dir.node_id(),
            revision = meta.revision,
            replayed_from = base,
            last_applied = ?meta.last_applied,
            "state machine restored"
        );
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                dir,
                applied: RwLock::new(Applied { meta, cluster }),
                snapshot_lock: tokio::sync::Mutex::new(()),
                revision_tx,
                file_seq: AtomicU64::new(0),
                retain_revisions: AtomicU64::new(0),
                checkpoint_every: AtomicU64::new(checkpoint::DEFAULT_EVERY),
                checkpoint_at: AtomicU64::new(base),
                checkpointing: AtomicBool::new(false),
                restart_base: base,
            }),
        })
    }

    /// Runs `f` on the current cluster state (a consistent view; applies wait meanwhile).
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.inner.applied.read().expect("state lock poisoned").cluster)
    }

    /// What has been applied so far.
    pub fn applied_meta(&self) -> AppliedMeta {
        self.inner.applied.read().expect("state lock poisoned").meta.clone()
    }

    /// Follows the applied revision (for subscriptions and linearizable-read waits).
    pub fn watch_revision(&self) -> watch::Receiver<Revision> {
        self.inner.revision_tx.subscribe()
    }

    /// Sets how much history to retain: at least the latest `revisions` revisions, and always
    /// everything after the current snapshot (the state is rebuilt from it). 0 keeps everything.
    /// Compaction runs after each snapshot.
    pub fn set_retention(&self, revisions: u64) {
        self.inner.retain_revisions.store(revisions, Ordering::Relaxed);
    }

    /// Tells `observer` how long durable writes and snapshot builds take (the log store shares
    /// the data directory, so its writes are observed too). Set once; later calls are ignored.
    pub fn set_observer(&self, observer: Arc<dyn crate::Observer>) {
        let _ = self.inner.dir.observer.set(observer);
    }

    /// The revision of the base (snapshot or checkpoint state) this store was opened from; the
    /// events after it were replayed from the history.
    pub fn restart_base(&self) -> Revision {
        self.inner.restart_base
    }

    /// The revision of the newest base a restart could start from (checkpoint or snapshot).
    pub fn checkpoint_at(&self) -> Revision {
        self.inner.checkpoint_at.load(Ordering::Relaxed)
    }

    /// Sets how many events are applied between two state checkpoints (0: no checkpoints).
    pub fn set_checkpoint_every(&self, events: u64) {
        self.inner.checkpoint_every.store(events, Ordering::Relaxed);
    }

    /// Whether enough events were applied since the newest restart base for a checkpoint (and
    /// none is being written); claims the writing if so.
    fn checkpoint_due(&self, revision: Revision) -> bool {
        let every = self.inner.checkpoint_every.load(Ordering::Relaxed);
        every > 0
            && revision >= self.inner.checkpoint_at.load(Ordering::Relaxed).saturating_add(every)
            && !self.inner.checkpointing.swap(true, Ordering::AcqRel)
    }

    /// A newer restart base exists at `revision` (a checkpoint or a snapshot).
    fn based_at(&self, revision: Revision) {
        self.inner.checkpoint_at.fetch_max(revision, Ordering::Relaxed);
    }

    /// Writes a checkpoint of a copy of the state on the blocking pool.
    fn spawn_checkpoint(&self, meta: AppliedMeta, cluster: ClusterState) {
        let sm = self.clone();
        tokio::task::spawn_blocking(move || {
            let revision = cluster.revision();
            let t = std::time::Instant::now();
            match checkpoint::write(&sm.inner.dir, &meta, &cluster) {
                Ok(()) => tracing::info!(revision, ms = t.elapsed().as_millis() as u64, "wrote state checkpoint"),
                // Not fatal: the next start replays more events. Retried after as many events.
                Err(e) => tracing::warn!(revision, error = %e, "could not write a state checkpoint"),
            }
            // In this order, so that whoever sees the new base may also start the next one.
            sm.inner.checkpointing.store(false, Ordering::Release);
            sm.based_at(revision);
        });
    }

    /// Drops history the retention setting no longer asks for. Returns the first retained
    /// revision.
    pub fn compact_history(&self) -> Result<Revision, StoreError> {
        let history = self.history();
        let Some((first, _)) = history.bounds()? else { return Ok(1) };
        let retain = self.inner.retain_revisions.load(Ordering::Relaxed);
        let Some(pointer) = self.current_pointer()? else { return Ok(first) };
        if retain == 0 {
            return Ok(first);
        }
        let applied = self.applied_meta().revision;
        let floor = (applied.saturating_sub(retain) + 1).min(pointer.revision + 1);
        if floor <= first {
            return Ok(first);
        }
        let dir = &self.inner.dir;
        let mut b = WriteBatch::default();
        b.delete_range_cf(dir.cf(cf::EVENTS), &key::u64(0)[..], &key::u64(floor)[..]);
        dir.write(b, false, "compact event history")?;
        tracing::info!(first_retained = floor, "compacted event history");
        Ok(floor)
    }

    /// The first revision this node's history is meant to hold: 1, or the start of the
    /// retention window (compaction never deletes above it).
    pub fn history_floor(&self) -> Revision {
        match self.inner.retain_revisions.load(Ordering::Relaxed) {
            0 => 1,
            retain => self.applied_meta().revision.saturating_sub(retain) + 1,
        }
    }

    /// The first revision of the history held: the first stored event, or the one after the
    /// applied revision when none is (a snapshot was just installed).
    pub fn history_first(&self) -> Result<Revision, StoreError> {
        Ok(self.history().bounds()?.map_or(self.applied_meta().revision + 1, |(first, _)| first))
    }

    /// Stores history older than what this node holds — a node that installed a snapshot,
    /// which carries the state and not the history, fills its history from a peer's. `events`
    /// must be contiguous and end right before [`Self::history_first`]; answers the new first
    /// revision. Serialised with snapshot installs (which move the history's start) and builds
    /// (which compact it). Not synced: a batch lost in a crash is fetched again.
    pub async fn backfill(&self, events: Vec<Event>) -> Result<Revision, StoreError> {
        let _lock = self.inner.snapshot_lock.lock().await;
        let first = self.history_first()?;
        let Some(last) = events.last() else { return Ok(first) };
        let contiguous = events.windows(2).all(|w| w[1].revision == w[0].revision + 1);
        if !contiguous || last.revision + 1 != first || events[0].revision == 0 {
            return Err(StoreError::Inconsistent(format!(
                "history backfill of revisions {}..={} (contiguous: {contiguous}) does not end right before the first held revision {first}",
                events[0].revision, last.revision
            )));
        }
        let dir = self.inner.dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut batch = WriteBatch::default();
            for e in &events {
                write_event(&dir, &mut batch, e, None);
            }
            dir.write(batch, false, "backfill event history")?;
            Ok(events[0].revision)
        })
        .await
        .map_err(|e| StoreError::Inconsistent(format!("history backfill task failed: {e}")))?
    }

    /// Read access to the retained event history.
    pub fn history(&self) -> History {
        History::new(self.inner.dir.clone())
    }

    fn sm_err(e: StoreError, verb: ErrorVerb) -> StorageError {
        e.into_raft(ErrorSubject::StateMachine, verb)
    }

    fn next_file_name(&self, prefix: &str, meta_last: Option<LogId>, ext: &str) -> String {
        let seq = self.inner.file_seq.fetch_add(1, Ordering::Relaxed);
        let (term, index) = meta_last.map_or((0, 0), |l| (l.leader_id.term, l.index));
        format!("{prefix}-{term}-{index}-{seq}.{ext}")
    }

    /// Makes `file` the current snapshot and removes every other snapshot file.
    fn set_current(&self, meta: &SnapshotMeta, file: &str, revision: Revision) -> Result<(), StoreError> {
        let dir = &self.inner.dir;
        let mut b = WriteBatch::default();
        let pointer = SnapshotPointer { meta: meta.clone(), file: file.to_string(), revision };
        b.put_cf(dir.cf(cf::SM), key::SNAPSHOT, codec::seal(RecordKind::SnapshotPointer, &pointer));
        dir.write(b, true, "record current snapshot")?;
        self.remove_other_snapshots(file);
        Ok(())
    }

    /// Removes every snapshot file but `file` (best effort: a leftover is only wasted space,
    /// found again next time).
    fn remove_other_snapshots(&self, file: &str) {
        let dir = &self.inner.dir;
        if let Ok(entries) = std::fs::read_dir(dir.snapshot_dir()) {
            for e in entries.flatten() {
                let name = e.file_name();
                if name.to_str() != Some(file) {
                    if let Err(err) = std::fs::remove_file(e.path()) {
                        tracing::warn!(path = %e.path().display(), %err, "could not remove old snapshot file");
                    }
                }
            }
        }
    }

    fn current_pointer(&self) -> Result<Option<SnapshotPointer>, StoreError> {
        self.inner.dir.get(cf::SM, key::SNAPSHOT, RecordKind::SnapshotPointer, "snapshot")
    }
}

/// Writes a snapshot file at `path` of `cluster` (at its revision) with every migration record
/// as it was then and the stored events from `first_event` up to it.
pub(crate) fn write_snapshot_file(
    dir: &DataDir,
    path: &std::path::Path,
    meta: SnapshotMeta,
    cluster: &ClusterState,
    first_event: Revision,
) -> Result<(), StoreError> {
    let revision = cluster.revision();
    let migrations = migrations_at(dir, revision)?;
    let header = SnapshotHeader {
        meta,
        revision,
        first_event,
        event_count: revision + 1 - first_event,
        migration_count: migrations.len() as u64,
    };
    let events = dir
        .db
        .iterator_cf(dir.cf(cf::EVENTS), IteratorMode::From(&key::u64(first_event), rocksdb::Direction::Forward))
        .map(|item| -> Result<Event, StoreError> {
            let (k, v) = item.map_err(|e| StoreError::rocks("read events for snapshot", e))?;
            let rev = key::parse_u64(&k).unwrap_or(0);
            codec::open(RecordKind::Event, &v).map_err(|source| StoreError::Corrupt {
                cf: cf::EVENTS,
                key: format!("revision {rev}"),
                source,
            })
        })
        .take_while(|e| e.as_ref().map_or(true, |e| e.revision <= revision));
    snapshot::write_file(path, &header, cluster, &migrations, events)
}

/// Records a seeded data directory's base in one synced batch (`crate::seed`): the applied
/// state at `meta`'s log id, the snapshot file `file` of `cluster` as current, the restore in
/// progress, and the log purged up to that log id, so that a member without the seed is sent
/// the snapshot instead of a log that does not hold it.
pub(crate) fn commit_seed(
    dir: &DataDir,
    meta: &SnapshotMeta,
    file: &str,
    cluster: &ClusterState,
) -> Result<(), StoreError> {
    let revision = cluster.revision();
    let applied = AppliedMeta { last_applied: meta.last_log_id, membership: meta.last_membership.clone(), revision };
    let mut batch = WriteBatch::default();
    batch.put_cf(dir.cf(cf::SM), key::APPLIED, codec::seal(RecordKind::AppliedState, &applied));
    record_import(dir, &mut batch, cluster);
    let pointer = SnapshotPointer { meta: meta.clone(), file: file.to_string(), revision };
    batch.put_cf(dir.cf(cf::SM), key::SNAPSHOT, codec::seal(RecordKind::SnapshotPointer, &pointer));
    if let Some(log_id) = &meta.last_log_id {
        batch.put_cf(dir.cf(cf::META), key::LAST_PURGED, codec::seal(RecordKind::LogId, log_id));
        batch.put_cf(dir.cf(cf::META), key::COMMITTED, codec::seal(RecordKind::LogId, &meta.last_log_id));
    }
    dir.write(batch, true, "record the seeded base")
}

/// Adds to `batch` the restore in progress `cluster` holds (or its absence). It is not part of
/// the history, so a restart, which rebuilds the state from a base and the events after it,
/// takes it from here; written in the batch of the applied state it belongs to.
pub(crate) fn record_import(dir: &DataDir, batch: &mut WriteBatch, cluster: &ClusterState) {
    match cluster.importing() {
        Some(p) => batch.put_cf(dir.cf(cf::SM), key::IMPORTING, codec::seal(RecordKind::ImportProgress, p)),
        None => batch.delete_cf(dir.cf(cf::SM), key::IMPORTING),
    }
}

/// Folds the stored events after `cluster.revision()` up to `up_to` into `cluster`.
fn replay_events(dir: &DataDir, cluster: &mut ClusterState, up_to: Revision) -> Result<(), StoreError> {
    let mut fold = Replay::from(std::mem::take(cluster));
    let folded = fold_stored_events(dir, &mut fold, up_to);
    *cluster = fold.finish();
    folded
}

fn fold_stored_events(dir: &DataDir, cluster: &mut Replay, up_to: Revision) -> Result<(), StoreError> {
    let history = History::new(dir.clone());
    while cluster.revision() < up_to {
        let from = cluster.revision() + 1;
        let batch = history.events_from(from, 4096)?;
        if batch.is_empty() {
            return Err(StoreError::MissingEvent { revision: from, up_to });
        }
        for e in batch {
            if e.revision > up_to {
                return Ok(());
            }
            if e.revision != cluster.revision() + 1 {
                return Err(StoreError::MissingEvent { revision: cluster.revision() + 1, up_to });
            }
            cluster.evolve(&e);
        }
    }
    Ok(())
}

/// Installs a snapshot file into the database: its events and their index rows, then (synced)
/// the applied meta. Returns the state it carries.
///
/// Atomic across a crash: the snapshot's migrations and events are written first (not yet
/// visible: nothing reads history past the applied revision), then one synced batch moves the
/// applied state and the snapshot pointer together and drops the stored events the snapshot's
/// history does not continue (those before its first event, which the leader compacted, and
/// any past its revision), so the history stays one contiguous range: a subscriber from before
/// it is told `compacted`, never meets a hole. A crash before that batch leaves the previous
/// state, pointer and history whole.
fn install_from_file(
    dir: &DataDir,
    path: &std::path::Path,
    meta: &SnapshotMeta,
    file: &str,
) -> Result<(ClusterState, AppliedMeta), StoreError> {
    let mut r = SnapshotReader::open(path)?;
    if r.header.meta.last_log_id != meta.last_log_id || r.header.meta.last_membership != meta.last_membership {
        return Err(StoreError::CorruptSnapshot {
            path: path.to_path_buf(),
            offset: 8,
            reason: format!("file is for {:?}, expected {:?}", r.header.meta.last_log_id, meta.last_log_id),
        });
    }
    let cluster = r.state()?;
    let mut batch = WriteBatch::default();
    let mut in_batch = 0;
    while let Some(m) = r.next_migration()? {
        write_migration(dir, &mut batch, &m);
        in_batch += 1;
        if in_batch == INSTALL_BATCH_EVENTS {
            dir.write(std::mem::take(&mut batch), false, "install snapshot migrations")?;
            in_batch = 0;
        }
    }
    while let Some(event) = r.next_event()? {
        write_event(dir, &mut batch, &event, None);
        in_batch += 1;
        if in_batch == INSTALL_BATCH_EVENTS {
            dir.write(std::mem::take(&mut batch), false, "install snapshot events")?;
            in_batch = 0;
        }
    }
    let revision = cluster.revision();
    let applied = AppliedMeta { last_applied: meta.last_log_id, membership: meta.last_membership.clone(), revision };
    let keep_from = if r.header.event_count > 0 { r.header.first_event } else { revision + 1 };
    let events = dir.cf(cf::EVENTS);
    batch.delete_range_cf(events, &key::u64(0)[..], &key::u64(keep_from)[..]);
    batch.delete_range_cf(events, &key::u64(revision + 1)[..], &key::u64(u64::MAX)[..]);
    batch.put_cf(dir.cf(cf::SM), key::APPLIED, codec::seal(RecordKind::AppliedState, &applied));
    record_import(dir, &mut batch, &cluster);
    let pointer = SnapshotPointer { meta: meta.clone(), file: file.to_string(), revision };
    batch.put_cf(dir.cf(cf::SM), key::SNAPSHOT, codec::seal(RecordKind::SnapshotPointer, &pointer));
    dir.write(batch, true, "install snapshot")?;
    Ok((cluster, applied))
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let m = self.applied_meta();
        Ok((m.last_applied, m.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let started = std::time::Instant::now();
        let dir = &self.inner.dir;
        let mut responses = Vec::new();
        let mut batch = WriteBatch::default();
        let mut applied_events = Vec::new();
        let revision = {
            let mut guard = self.inner.applied.write().expect("state lock poisoned");
            let applied = &mut *guard;
            let importing = applied.cluster.importing().cloned();
            for entry in entries {
                let mut results = Vec::new();
                match &entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(proposals) => {
                        for proposal in &proposals.0 {
                            let _span = tracing::debug_span!(
                                "apply",
                                index = entry.log_id.index,
                                command = proposal.command.kind()
                            )
                            .entered();
                            let outcome =
                                switchyard_protocol::apply(&mut applied.cluster, proposal, entry.log_id.leader_id.term);
                            results.push(outcome.map(|(answer, events)| {
                                for event in &events {
                                    let record = event.payload.migration().and_then(|id| applied.cluster.migration(id));
                                    write_event(dir, &mut batch, event, record);
                                }
                                applied_events.extend(events);
                                answer
                            }));
                        }
                    }
                    EntryPayload::Membership(m) => {
                        applied.meta.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    }
                }
                applied.meta.last_applied = Some(entry.log_id);
                responses.push(Response { results });
            }
            applied.meta.revision = applied.cluster.revision();
            if applied.cluster.importing() != importing.as_ref() {
                record_import(dir, &mut batch, &applied.cluster);
            }
            batch.put_cf(dir.cf(cf::SM), key::APPLIED, codec::seal(RecordKind::AppliedState, &applied.meta));
            dir.write(batch, false, "apply entries").map_err(|e| Self::sm_err(e, ErrorVerb::Write))?;
            let revision = applied.meta.revision;
            // The copy is taken between two applies, like a snapshot builder's.
            if self.checkpoint_due(revision) {
                self.spawn_checkpoint(applied.meta.clone(), applied.cluster.clone());
            }
            revision
        };
        if let Some(obs) = dir.observer.get() {
            obs.applied(started.elapsed(), &applied_events);
        }
        self.inner.revision_tx.send_replace(revision);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let g = self.inner.applied.read().expect("state lock poisoned");
        SnapshotBuilder { sm: self.clone(), meta: g.meta.clone(), cluster: g.cluster.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.inner.dir.snapshot_dir().join(self.next_file_name("incoming", None, "part"));
        let file =
            tokio::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .await
                .map_err(|e| Self::sm_err(StoreError::io(format!("create {}", path.display()), e), ErrorVerb::Write))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let err = |e: StoreError| e.into_raft(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write);
        let _lock = self.inner.snapshot_lock.lock().await;
        // Keep our own durable copy: the handle may point at a temporary or at a peer's file.
        let name = self.next_file_name("snap", meta.last_log_id, "bin");
        let path: PathBuf = self.inner.dir.snapshot_dir().join(&name);
        let tmp = path.with_extension("tmp");
        let copy = async {
            snapshot.seek(std::io::SeekFrom::Start(0)).await?;
            let mut out = tokio::fs::File::create(&tmp).await?;
            tokio::io::copy(&mut snapshot, &mut out).await?;
            out.sync_all().await?;
            tokio::fs::rename(&tmp, &path).await
        };
        copy.await.map_err(|e| err(StoreError::io(format!("store received snapshot as {}", path.display()), e)))?;
        let dir = self.inner.dir.clone();
        let (m, p, file) = (meta.clone(), path.clone(), name.clone());
        let (cluster, applied) = tokio::task::spawn_blocking(move || {
            snapshot::sync_dir(&dir.snapshot_dir())?;
            install_from_file(&dir, &p, &m, &file)
        })
        .await
        .map_err(|e| err(StoreError::Inconsistent(format!("snapshot install task failed: {e}"))))?
        .map_err(err)?;
        let revision = applied.revision;
        {
            let mut g = self.inner.applied.write().expect("state lock poisoned");
            *g = Applied { meta: applied, cluster };
        }
        self.remove_other_snapshots(&name);
        self.based_at(revision);
        self.inner.revision_tx.send_replace(revision);
        tracing::info!(revision, last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let err = |e: StoreError| e.into_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read);
        let Some(p) = self.current_pointer().map_err(err)? else {
            return Ok(None);
        };
        let path = self.inner.dir.snapshot_dir().join(&p.file);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| err(StoreError::io(format!("open snapshot {}", path.display()), e)))?;
        Ok(Some(Snapshot { meta: p.meta, snapshot: Box::new(file) }))
    }
}

/// Builds a snapshot from a view of the state taken between two applies.
pub struct SnapshotBuilder {
    sm: StateMachineStore,
    meta: AppliedMeta,
    cluster: ClusterState,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let err = |e: StoreError| e.into_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write);
        let sm = self.sm.clone();
        let _lock = sm.inner.snapshot_lock.lock().await;
        let started = std::time::Instant::now();
        let built = self.build(err).await;
        if let (Ok(_), Some(obs)) = (&built, sm.inner.dir.observer.get()) {
            obs.snapshot_built(started.elapsed());
        }
        built
    }
}

impl SnapshotBuilder {
    /// [`RaftSnapshotBuilder::build_snapshot`] under the snapshot lock.
    async fn build(
        &mut self,
        err: impl Fn(StoreError) -> StorageError + Copy,
    ) -> Result<Snapshot<TypeConfig>, StorageError> {
        let name = self.sm.next_file_name("snap", self.meta.last_applied, "bin");
        let meta = SnapshotMeta {
            last_log_id: self.meta.last_applied,
            last_membership: self.meta.membership.clone(),
            snapshot_id: name.trim_end_matches(".bin").to_string(),
        };
        let revision = self.meta.revision;
        let dir = self.sm.inner.dir.clone();
        // The state and the migration records, not the history: a node that installs it fills
        // its history from a peer's (`History` backfill), so the snapshot's size and build time
        // follow the state, not the length of the history.
        let first_event = revision + 1;
        let path = dir.snapshot_dir().join(&name);
        let cluster = std::mem::take(&mut self.cluster);
        let p = path.clone();
        let header_meta = meta.clone();
        tokio::task::spawn_blocking(move || write_snapshot_file(&dir, &p, header_meta, &cluster, first_event))
            .await
            .map_err(|e| err(StoreError::Inconsistent(format!("snapshot build task failed: {e}"))))?
            .map_err(err)?;
        // Never move the pointer backwards: a newer snapshot may have been installed meanwhile.
        let current = self.sm.current_pointer().map_err(err)?;
        if current.as_ref().is_none_or(|c| c.meta.last_log_id <= meta.last_log_id) {
            self.sm.set_current(&meta, &name, revision).map_err(err)?;
            self.sm.based_at(revision);
            self.sm.compact_history().map_err(err)?;
        }
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| err(StoreError::io(format!("open snapshot {}", path.display()), e)))?;
        tracing::info!(revision, last_log_id = ?meta.last_log_id, "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}
