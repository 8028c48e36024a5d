//! The Raft log on RocksDB (openraft `RaftLogStorage`, storage v2).
//!
//! Durability points (RAFT_STORAGE_RULES.md): `save_vote`, `truncate` and `purge` each write one
//! batch with `sync = true`, so they are on disk before they return. A leader's `append` writes
//! its batch *without* syncing, so the entries are readable at once, and hands the flush
//! callback to the [`WalSyncer`] thread, which fsyncs the WAL and only then reports the entries
//! flushed (§2). Why: the (patched, see `vendor/openraft/SWITCHYARD.md`) openraft core lets a
//! leader replicate entries while its own disk syncs, which takes the leader's fsync off a
//! commit's critical path; and appends that queue up during one fsync share the next (group
//! commit). A follower's `append`, whose flush openraft's core waits for before it answers the
//! leader (`LogFlushed::is_awaited`, patch 9), is one synced write completed in the call. The
//! last purged log id is written in the same batch as the purge. openraft awaits each call
//! before making the next, and RocksDB has one WAL, so writes land in the order they were
//! issued and a crash loses at most a suffix of unsynced appends, never a middle part (§3, §4).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc, Condvar, Mutex, Weak};
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogId};
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};
use switchyard_protocol::codec::{self, RecordKind};

use crate::db::{cf, key, DataDir};
use crate::error::StoreError;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The Raft log of one node. Cheap to clone: clones share the database, the WAL syncer and the
/// tail of recent entries.
#[derive(Clone, Debug)]
pub struct LogStore {
    dir: DataDir,
    syncer: Arc<WalSyncer>,
    tail: Arc<Mutex<Tail>>,
}

/// Entries the tail holds at most, and their stored bytes at most.
const TAIL_ENTRIES: usize = 1024;
const TAIL_BYTES: usize = 8 << 20;

/// The latest appended entries, in memory, as they were written: a leader reads every entry
/// back once per follower to replicate it, and every node once more to apply it, right after
/// appending it. Served from here, those reads cost a clone instead of a RocksDB iterator and a
/// decode each, on the commit's critical path. RocksDB stays the only truth: the tail holds a
/// contiguous run of indexes ending at the log's last entry, is cut *before* the log is
/// truncated or purged, and a read it cannot answer whole goes to RocksDB.
#[derive(Debug, Default)]
struct Tail {
    /// Consecutive indexes: each entry with its stored size.
    entries: std::collections::VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Tail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.get_log_id().index)
    }

    /// Adds entries just written (in order, consecutive); a gap before them starts the tail over.
    fn push(&mut self, entries: Vec<(Entry, usize)>) {
        for (e, size) in entries {
            let index = e.get_log_id().index;
            self.cut_from(index);
            if self.entries.back().is_some_and(|(last, _)| last.get_log_id().index.checked_add(1) != Some(index)) {
                self.clear();
            }
            self.bytes += size;
            self.entries.push_back((e, size));
            while self.entries.len() > TAIL_ENTRIES || (self.bytes > TAIL_BYTES && self.entries.len() > 1) {
                self.pop_front();
            }
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Forgets the entries from `index` on (a truncation).
    fn cut_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(e, _)| e.get_log_id().index >= index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Forgets the entries up to `index` (a purge).
    fn cut_through(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            self.pop_front();
        }
    }

    /// The entries `start..end`, stopping before the one that would take their stored size
    /// past `bytes_max` (the first always comes); `None` unless the tail holds them all.
    fn read(&self, start: u64, end: u64, bytes_max: usize) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = first + self.entries.len() as u64 - 1;
        if start < first || end > last.saturating_add(1) || start >= end {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (e, size) in self.entries.range((start - first) as usize..(end - first) as usize) {
            if !out.is_empty() && bytes.saturating_add(*size) > bytes_max {
                break;
            }
            bytes += size;
            out.push(e.clone());
        }
        Some(out)
    }
}

impl LogStore {
    pub fn new(dir: DataDir) -> LogStore {
        let syncer = Arc::new(WalSyncer::start(&dir));
        LogStore { dir, syncer, tail: Arc::default() }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.dir
    }

    /// For tests: while held, appends are written but their flush callbacks are not completed
    /// (as if the disk took that long to sync), so a test can watch what openraft does with
    /// entries that are readable but not yet durable.
    #[doc(hidden)]
    pub fn hold_flushes(&self, hold: bool) {
        let (flag, released) = &*self.syncer.held;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = hold;
        released.notify_all();
    }

    fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, StoreError> {
        codec::open(RecordKind::LogEntry, bytes).map_err(|source| StoreError::Corrupt {
            cf: cf::LOG,
            key: format!("index {index}"),
            source,
        })
    }

    /// Reads the entries in `range`, in order. A corrupt entry is an error naming its index.
    pub fn read_range(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, StoreError> {
        self.read_range_limited(range, usize::MAX)
    }

    /// The entries in `range`, stopping before the one that would take their stored size past
    /// `bytes_max` (the first entry always comes, whatever its size).
    fn read_range_limited(&self, range: impl RangeBounds<u64>, bytes_max: usize) -> Result<Vec<Entry>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.checked_add(1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if let Some(entries) = end.and_then(|end| self.tail().read(start, end, bytes_max)) {
            return Ok(entries);
        }
        let from = key::u64(start);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in self.dir.db.iterator_cf(self.dir.cf(cf::LOG), IteratorMode::From(&from, Direction::Forward)) {
            let (k, v) = item.map_err(|e| StoreError::rocks("iterate raft log", e))?;
            let index = key::parse_u64(&k)
                .ok_or_else(|| StoreError::Inconsistent(format!("raft log key {k:?} is not 8 bytes")))?;
            if !range.contains(&index) || (!out.is_empty() && bytes.saturating_add(v.len()) > bytes_max) {
                break;
            }
            bytes += v.len();
            out.push(Self::decode_entry(index, &v)?);
        }
        Ok(out)
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StoreError> {
        let mut it = self.dir.db.iterator_cf(self.dir.cf(cf::LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(|e| StoreError::rocks("read last raft log entry", e))?;
                let index = key::parse_u64(&k).unwrap_or(0);
                Ok(Some(*Self::decode_entry(index, &v)?.get_log_id()))
            }
        }
    }

    fn last_purged(&self) -> Result<Option<LogId>, StoreError> {
        self.dir.get(cf::META, key::LAST_PURGED, RecordKind::LogId, "last_purged")
    }

    /// Writes a batch durably on the blocking pool, so an fsync never stalls the async workers.
    async fn write_synced(&self, batch: WriteBatch, what: &'static str) -> Result<(), StoreError> {
        self.write_on_pool(batch, true, what).await
    }

    /// Writes a batch on the blocking pool (an fsync, or a large copy, off the async workers).
    async fn write_on_pool(&self, batch: WriteBatch, sync: bool, what: &'static str) -> Result<(), StoreError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || dir.write(batch, sync, what))
            .await
            .map_err(|e| StoreError::Inconsistent(format!("{what}: writer task failed: {e}")))?
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_range(range).map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Read))
    }

    /// What replication sends in one AppendEntries: at most [`APPEND_BYTES_MAX`] of entries.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        self.read_range_limited(start..end, APPEND_BYTES_MAX)
            .map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

/// An append batch at least this large is written on the blocking pool.
const BLOCKING_WRITE_BYTES: usize = 64 << 10;

/// Stored bytes of log entries one AppendEntries RPC carries at most (one entry always goes,
/// whatever its size). openraft 0.9 gives an AppendEntries one heartbeat interval (50 ms by
/// default) to complete, whatever it carries, and sends up to `max_payload_entries` (300)
/// entries at once; a follower lagging behind entries of hundreds of KiB (batches of
/// proposals, `log restore` import chunks) was sent more than it could take in that time, timed
/// out, and was sent the same again. 512 KiB crosses loopback and a follower's fsync in a few
/// milliseconds.
pub const APPEND_BYTES_MAX: usize = 512 << 10;

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged = self.last_purged().map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Read))?;
        let last = self.last_entry_id().map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Read))?;
        Ok(LogState { last_purged_log_id: purged, last_log_id: last.or(purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut b = WriteBatch::default();
        b.put_cf(self.dir.cf(cf::META), key::VOTE, codec::seal(RecordKind::Vote, vote));
        self.write_synced(b, "save vote").await.map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.dir
            .get(cf::META, key::VOTE, RecordKind::Vote, "vote")
            .map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Read))
    }

    /// The committed id is a hint for re-applying after restart; it need not be synced (a stale
    /// value only means re-learning the commit index from the leader).
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut b = WriteBatch::default();
        b.put_cf(self.dir.cf(cf::META), key::COMMITTED, codec::seal(RecordKind::LogId, &committed));
        self.dir.write(b, false, "save committed").map_err(|e| e.into_raft(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let c: Option<Option<LogId>> = self
            .dir
            .get(cf::META, key::COMMITTED, RecordKind::LogId, "committed")
            .map_err(|e| e.into_raft(ErrorSubject::Store, ErrorVerb::Read))?;
        Ok(c.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = Instant::now();
        let mut b = WriteBatch::default();
        let log = self.dir.cf(cf::LOG);
        let mut written_entries = Vec::new();
        for e in entries {
            let sealed = codec::seal(RecordKind::LogEntry, &e);
            b.put_cf(log, key::u64(e.get_log_id().index), &sealed);
            written_entries.push((e, sealed.len()));
        }
        // A flush the caller waits for before anything else (a follower's append: openraft's
        // core must not answer the leader before its copy is durable) is made here, in one
        // synced write: handing it to the syncer and back would add two thread wake-ups to the
        // commit's critical path, and the core would wait through them anyway. A leader's own
        // append is not waited for (patch 1 in vendor/openraft/SWITCHYARD.md): it is written
        // unsynced, readable now, durable when the syncer's fsync covers it. Held flushes
        // (tests) always go to the syncer.
        let sync = callback.is_awaited() && !self.syncer.is_held();
        // A large batch (import chunks, big proposal batches) is written on the blocking pool so
        // that copying it does not hold up an async worker; a small one costs less than the hop.
        let written = if b.size_in_bytes() >= BLOCKING_WRITE_BYTES {
            self.write_on_pool(b, sync, "append raft log entries").await
        } else {
            self.dir.write(b, sync, "append raft log entries")
        };
        match written {
            Ok(()) => {
                // Readable from the tail once readable from RocksDB, before openraft asks.
                self.tail().push(written_entries);
                if let Some(obs) = self.dir.observer.get() {
                    if sync {
                        obs.durable(started.elapsed());
                    } else {
                        obs.appended(started.elapsed());
                    }
                }
                if sync {
                    callback.log_io_completed(Ok(()));
                } else {
                    self.syncer.flush(callback);
                }
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e.into_raft(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.tail().cut_from(log_id.index);
        let mut b = WriteBatch::default();
        // Keys are 8 bytes; a 9-byte 0xff key sorts after all of them.
        b.delete_range_cf(self.dir.cf(cf::LOG), &key::u64(log_id.index)[..], &[0xffu8; 9][..]);
        self.write_synced(b, "truncate raft log").await.map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.tail().cut_through(log_id.index);
        let mut b = WriteBatch::default();
        b.put_cf(self.dir.cf(cf::META), key::LAST_PURGED, codec::seal(RecordKind::LogId, &log_id));
        b.delete_range_cf(self.dir.cf(cf::LOG), key::u64(0), key::u64(log_id.index.saturating_add(1)));
        if log_id.index == u64::MAX {
            b.delete_cf(self.dir.cf(cf::LOG), key::u64(u64::MAX));
        }
        self.write_synced(b, "purge raft log").await.map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}

/// Group commit of appends: a thread that fsyncs the WAL (`flush_wal(true)`) once for every
/// flush callback queued since its last fsync, then completes them. A callback is queued after
/// its batch is written, so the fsync that follows covers it. An fsync failure fails every
/// waiting callback, which stops openraft (a failed fsync cannot be retried safely).
///
/// The thread holds the database weakly: it must not keep RocksDB open (and its lock held)
/// after the node drops its stores.
#[derive(Debug)]
struct WalSyncer {
    /// Each callback with the time its entries were written.
    tx: mpsc::Sender<(LogFlushed<TypeConfig>, Instant)>,
    /// Set by [`LogStore::hold_flushes`] (tests): callbacks wait while it is true.
    held: Arc<(Mutex<bool>, Condvar)>,
}

impl WalSyncer {
    fn start(dir: &DataDir) -> WalSyncer {
        let (tx, rx) = mpsc::channel::<(LogFlushed<TypeConfig>, Instant)>();
        let held = Arc::new((Mutex::new(false), Condvar::new()));
        let db: Weak<DB> = Arc::downgrade(&dir.db);
        let observer = dir.observer.clone();
        let path = dir.path().display().to_string();
        let hold = held.clone();
        let spawned = std::thread::Builder::new().name("wal-sync".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let (flag, released) = &*hold;
                drop(released.wait_while(flag.lock().unwrap_or_else(|p| p.into_inner()), |held| *held));
                let waiting: Vec<_> = std::iter::once(first).chain(rx.try_iter()).collect();
                let started = Instant::now();
                let synced = match db.upgrade() {
                    Some(db) => db.flush_wal(true).map_err(|e| format!("fsync the write-ahead log in {path}: {e}")),
                    None => Err(format!("the database in {path} was closed before the log was synced")),
                };
                let obs = observer.get().filter(|_| synced.is_ok());
                if let Some(obs) = obs {
                    obs.synced(started.elapsed());
                }
                for (callback, written) in waiting {
                    if let Some(obs) = obs {
                        obs.durable(written.elapsed());
                    }
                    callback.log_io_completed(synced.clone().map_err(std::io::Error::other));
                }
            }
        });
        if let Err(e) = spawned {
            // Without the thread every flush fails (below), which stops the node with this cause.
            tracing::error!("cannot start the WAL sync thread for {}: {e}", dir.path().display());
        }
        WalSyncer { tx, held }
    }

    /// Whether a test holds flushes back ([`LogStore::hold_flushes`]).
    fn is_held(&self) -> bool {
        *self.held.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Completes `callback` once everything written so far is on disk.
    fn flush(&self, callback: LogFlushed<TypeConfig>) {
        if let Err(mpsc::SendError((callback, _))) = self.tx.send((callback, Instant::now())) {
            callback.log_io_completed(Err(std::io::Error::other("the WAL sync thread is not running")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn blank(index: u64) -> Entry {
        Entry { log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn the_tail_answers_only_what_it_holds_whole_within_the_byte_limit() {
        let mut t = Tail::default();
        t.push((5..=9).map(|i| (blank(i), 100)).collect());
        assert_eq!(t.read(5, 10, usize::MAX).map(|e| indexes(&e)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(t.read(7, 9, usize::MAX).map(|e| indexes(&e)), Some(vec![7, 8]));
        // Not held whole: before its start, past its end, or empty.
        assert!(t.read(4, 6, usize::MAX).is_none());
        assert!(t.read(8, 11, usize::MAX).is_none());
        assert!(t.read(7, 7, usize::MAX).is_none());
        // The byte limit, as RocksDB reads apply it: the first entry always comes.
        assert_eq!(t.read(5, 10, 250).map(|e| indexes(&e)), Some(vec![5, 6]));
        assert_eq!(t.read(5, 10, 10).map(|e| indexes(&e)), Some(vec![5]));
    }

    #[test]
    fn the_tail_follows_truncations_purges_gaps_and_its_bounds() {
        let mut t = Tail::default();
        t.push((1..=10).map(|i| (blank(i), 10)).collect());
        t.cut_from(8);
        assert!(t.read(7, 9, usize::MAX).is_none());
        // Entries after a truncation continue it; a gap starts it over.
        t.push(vec![(blank(8), 10)]);
        assert_eq!(t.read(1, 9, usize::MAX).map(|e| e.len()), Some(8));
        t.cut_through(3);
        assert!(t.read(3, 5, usize::MAX).is_none());
        assert_eq!(t.first_index(), Some(4));
        t.push(vec![(blank(20), 10)]);
        assert_eq!((t.first_index(), t.entries.len(), t.bytes), (Some(20), 1, 10));
        // Rewriting an index it holds drops that index and everything after it first.
        t.push((21..=25).map(|i| (blank(i), 10)).collect());
        t.push(vec![(blank(22), 10)]);
        assert_eq!(t.read(20, 23, usize::MAX).map(|e| indexes(&e)), Some(vec![20, 21, 22]));
        assert!(t.read(23, 24, usize::MAX).is_none());
        // Bounded by count and by bytes (one entry stays, however large).
        t.push((23..23 + TAIL_ENTRIES as u64).map(|i| (blank(i), 1)).collect());
        assert_eq!(t.entries.len(), TAIL_ENTRIES);
        t.push(vec![(blank(23 + TAIL_ENTRIES as u64), TAIL_BYTES * 2)]);
        assert_eq!((t.entries.len(), t.bytes), (1, TAIL_BYTES * 2));
    }
}
