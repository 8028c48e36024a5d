//! Opening a data directory: the RocksDB instance, its column families, the on-disk format
//! version and the node id the directory belongs to.
//!
//! Architecture invariant: a data directory is bound to one node id for life. Opening it as
//! another node is refused (a wiped or copied directory must never rejoin under a wrong id,
//! RAFT_STORAGE_RULES §9).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use switchyard_protocol::codec::{self, RecordKind};

use crate::error::StoreError;

/// Version of the on-disk layout (column families, keys, snapshot files). Bump on any change
/// that an older build could misread.
/// 2: events carry the Raft term of their entry; phase records carry it too.
/// 5: the state holds host members and failovers, packages their node lists and policies.
/// 6: the state remembers requests by (actor, request id) (`ClusterState::applied_request`).
/// 7: the state holds the drains under way.
/// 8: hosts carry labels, guests an anti-affinity group (log entries, events, snapshots).
pub const DISK_FORMAT_VERSION: u32 = 8;

/// Column families. Keys are big-endian integers or `name \0 big-endian integer`.
pub mod cf {
    /// Format version, node id, vote, committed and last-purged log ids.
    pub const META: &str = "meta";
    /// Raft log: index → entry.
    pub const LOG: &str = "log";
    /// State-machine bookkeeping: last applied log id, membership, revision, snapshot pointer.
    pub const SM: &str = "sm";
    /// The retained event history: revision → event.
    pub const EVENTS: &str = "events";
    /// guest name \0 revision → (): events about a guest.
    pub const GUEST_EVENTS: &str = "guest_events";
    /// migration id → latest migration record.
    pub const MIGRATIONS: &str = "migrations";
    /// guest name \0 migration id → ().
    pub const MIGRATIONS_BY_GUEST: &str = "migrations_by_guest";
    /// host name \0 migration id → (); the host is the source or the target.
    pub const MIGRATIONS_BY_HOST: &str = "migrations_by_host";

    pub const ALL: [&str; 8] =
        [META, LOG, SM, EVENTS, GUEST_EVENTS, MIGRATIONS, MIGRATIONS_BY_GUEST, MIGRATIONS_BY_HOST];
}

pub(crate) mod key {
    pub const FORMAT_VERSION: &[u8] = b"format_version";
    pub const NODE_ID: &[u8] = b"node_id";
    pub const VOTE: &[u8] = b"vote";
    pub const COMMITTED: &[u8] = b"committed";
    pub const LAST_PURGED: &[u8] = b"last_purged";
    pub const APPLIED: &[u8] = b"applied";
    pub const SNAPSHOT: &[u8] = b"snapshot";
    /// The restore in progress (`ImportProgress`), written with the applied state that set it.
    pub const IMPORTING: &[u8] = b"importing";

    pub fn u64(i: u64) -> [u8; 8] {
        i.to_be_bytes()
    }

    pub fn parse_u64(k: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(k.try_into().ok()?))
    }

    /// `name \0 big-endian n`: names never contain NUL, so prefixes never collide.
    pub fn named(name: &str, n: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(name.len() + 9);
        named_into(&mut k, name, n);
        k
    }

    /// [`named`] written into `k` (cleared first), reusing its allocation.
    pub fn named_into(k: &mut Vec<u8>, name: &str, n: u64) {
        k.clear();
        k.extend_from_slice(name.as_bytes());
        k.push(0);
        k.extend_from_slice(&n.to_be_bytes());
    }

    pub fn name_prefix(name: &str) -> Vec<u8> {
        let mut k = name.as_bytes().to_vec();
        k.push(0);
        k
    }
}

/// An open data directory.
#[derive(Clone)]
pub struct DataDir {
    pub(crate) db: Arc<DB>,
    /// Kept for its statistics (WAL syncs and other RocksDB counters).
    opts: Arc<Options>,
    pub(crate) path: PathBuf,
    pub(crate) node_id: u64,
    /// Told how long each durable write and snapshot build took (metrics), once set.
    pub(crate) observer: Arc<std::sync::OnceLock<Arc<dyn crate::Observer>>>,
    /// Opened for inspection ([`DataDir::open_read_only`]): nothing may be written.
    pub(crate) read_only: bool,
    /// Where a read-only open keeps RocksDB's info log (outside the data directory); removed
    /// when the last handle goes.
    _scratch: Option<Arc<Scratch>>,
}

/// A folder of this process's own, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir").field("path", &self.path).field("node_id", &self.node_id).finish()
    }
}

/// Whether another process holds the lock RocksDB takes on `lock` (a POSIX record lock on the
/// whole file) while it has a database open for writing. Asked with `F_GETLK`, which changes
/// nothing.
fn locked(lock: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(lock) else { return false };
    // SAFETY: a zeroed flock is a valid value of the plain C struct, filled in below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl(2) F_GETLK on an open descriptor with a valid flock to fill in.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
    r == 0 && fl.l_type != libc::F_UNLCK as libc::c_short
}

/// The options of column family `name`: the large records' families are compressed. Table
/// files written outside the database for it (a seed's) are written with these.
pub(crate) fn cf_options(name: &str) -> Options {
    let mut o = Options::default();
    if name == cf::EVENTS || name == cf::MIGRATIONS {
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    }
    o
}

/// Write-ahead log kept before RocksDB flushes the column families that hold its oldest file.
const WAL_BYTES_MAX: u64 = 128 << 20;

/// Write-ahead log files kept, once obsolete, to be written over as later WAL files (RocksDB's
/// `recycle_log_file_num`). An fdatasync of records appended past a file's end must also write
/// the inode (its new size, and the extents that go from preallocated to written): two writes
/// to the device per commit. Over a recycled file's old records it writes the data alone. On
/// this project's test machine (ext4, virtio disk) a 300-byte write and its fdatasync took 117 µs
/// at the end of a file and 90 µs over earlier data (p50 of 2 000, 2026-12-07), and every Raft
/// commit waits for one. RocksDB reuses only files this process wrote, after the WAL switched
/// (a memtable flush), so a node starts with fresh files and recycles from its first switch on.
/// Its records carry their file's number, so point-in-time recovery (the default, which this
/// store relies on: `storage/OVERVIEW.md`) stops where the new records end and the old ones
/// begin. Costs up to this many obsolete WAL files on disk (at most a memtable's worth each).
/// A directory opened for a bulk load does not recycle: RocksDB refuses writes without the WAL
/// ([`DataDir::write_unlogged`], the seed's path) while recycling is on, and a seed commits
/// nothing through the WAL anyway.
const WAL_RECYCLED: usize = 2;

impl DataDir {
    /// Opens (creating if needed) the data directory of node `node_id`.
    pub fn open(path: &Path, node_id: u64) -> Result<DataDir, StoreError> {
        DataDir::open_with(path, node_id, false)
    }

    /// Opens a data directory that nothing else uses yet for one writer loading it in bulk (a
    /// seed): the memtables are plain vectors, sorted once when flushed, instead of skip lists
    /// each row is inserted into in key order. The migration records' index rows arrive in no
    /// key order (the guest index, which once went this way too, is written as table files).
    /// Reads of unflushed rows are slow in this mode: flush first. The next ordinary open uses
    /// the usual memtables.
    pub(crate) fn open_for_bulk_load(path: &Path, node_id: u64) -> Result<DataDir, StoreError> {
        DataDir::open_with(path, node_id, true)
    }

    fn open_with(path: &Path, node_id: u64, bulk: bool) -> Result<DataDir, StoreError> {
        std::fs::create_dir_all(path)
            .map_err(|e| StoreError::io(format!("create data directory {}", path.display()), e))?;
        std::fs::create_dir_all(path.join("snapshots"))
            .map_err(|e| StoreError::io(format!("create snapshot directory in {}", path.display()), e))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        opts.enable_statistics();
        // Bounds the write-ahead log a start must replay. A WAL file lives until every column
        // family with data in it is flushed, and the small families (`meta`, `sm`) fill their
        // memtables slowly, so by default (4 × all write buffers) gigabytes of Raft log and event
        // writes accumulated, and a coordinator killed at 10 M events took 5–7 s to open. Past
        // this size the families holding the oldest WAL file are flushed.
        opts.set_max_total_wal_size(WAL_BYTES_MAX);
        if bulk {
            // A vector memtable takes one writer at a time.
            opts.set_allow_concurrent_memtable_write(false);
        } else {
            opts.set_recycle_log_file_num(WAL_RECYCLED);
        }
        let cfs = cf::ALL.iter().map(|name| {
            let mut o = cf_options(name);
            if bulk {
                o.set_memtable_factory(rocksdb::MemtableFactory::Vector);
            }
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&opts, path.join("db"), cfs)
            .map_err(|e| StoreError::rocks(format!("open rocksdb in {}", path.display()), e))?;
        let dir = DataDir {
            db: Arc::new(db),
            opts: Arc::new(opts),
            path: path.to_path_buf(),
            node_id,
            observer: Arc::default(),
            read_only: false,
            _scratch: None,
        };
        dir.check_identity()?;
        Ok(dir)
    }

    /// Opens a stopped coordinator's data directory for inspection (recovery tooling), as the
    /// node it belongs to, **read-only**: nothing in it is written, created, stamped, replayed
    /// into new files or rotated (RocksDB's info log goes to a folder outside it). Refuses a
    /// path that holds no Switchyard data, one a running coordinator holds open, a format this
    /// build does not read, and a directory missing a column family or its node id.
    pub fn open_read_only(path: &Path) -> Result<DataDir, StoreError> {
        if !crate::holds_data(path) {
            return Err(StoreError::Inconsistent(format!(
                "{} is not a coordinator's data directory (no db/ inside)",
                path.display()
            )));
        }
        let db_path = path.join("db");
        if locked(&db_path.join("LOCK")) {
            return Err(StoreError::Inconsistent(format!(
                "{} is open in a running coordinator (is the coordinator still running? stop it, or export from the \
                 live cluster)",
                path.display()
            )));
        }
        let scratch = std::env::temp_dir().join(format!(
            "switchyard-inspect-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&scratch)
            .map_err(|e| StoreError::io(format!("create scratch folder {}", scratch.display()), e))?;
        let scratch = Arc::new(Scratch(scratch));
        let mut opts = Options::default();
        opts.set_paranoid_checks(true);
        opts.set_db_log_dir(&scratch.0);
        let present = DB::list_cf(&opts, &db_path)
            .map_err(|e| StoreError::rocks(format!("list column families in {}", path.display()), e))?;
        if let Some(missing) = cf::ALL.iter().find(|name| !present.iter().any(|p| p == *name)) {
            return Err(StoreError::Inconsistent(format!(
                "{} has no column family {missing}: not a whole data directory of this format",
                path.display()
            )));
        }
        let db = DB::open_cf_for_read_only(&opts, &db_path, cf::ALL, false)
            .map_err(|e| StoreError::rocks(format!("open rocksdb read-only in {}", path.display()), e))?;
        let mut dir = DataDir {
            db: Arc::new(db),
            opts: Arc::new(opts),
            path: path.to_path_buf(),
            node_id: 0,
            observer: Arc::default(),
            read_only: true,
            _scratch: Some(scratch),
        };
        let version: Option<u32> =
            dir.get(cf::META, key::FORMAT_VERSION, RecordKind::FormatVersion, "format_version")?;
        match version {
            Some(v) if v == DISK_FORMAT_VERSION => {}
            Some(v) => {
                return Err(StoreError::UnsupportedFormat {
                    path: dir.path.clone(),
                    found: v,
                    supported: DISK_FORMAT_VERSION,
                })
            }
            None => {
                return Err(StoreError::Inconsistent(format!(
                    "{} has no format version: a coordinator never finished creating it",
                    path.display()
                )))
            }
        }
        dir.node_id = dir
            .get(cf::META, key::NODE_ID, RecordKind::NodeId, "node_id")?
            .ok_or_else(|| StoreError::Inconsistent(format!("{} names no node id", path.display())))?;
        Ok(dir)
    }

    /// Refuses a directory written by another format version or another node; stamps a new one.
    fn check_identity(&self) -> Result<(), StoreError> {
        let version: Option<u32> =
            self.get(cf::META, key::FORMAT_VERSION, RecordKind::FormatVersion, "format_version")?;
        let node: Option<u64> = self.get(cf::META, key::NODE_ID, RecordKind::NodeId, "node_id")?;
        match version {
            Some(v) if v != DISK_FORMAT_VERSION => {
                return Err(StoreError::UnsupportedFormat {
                    path: self.path.clone(),
                    found: v,
                    supported: DISK_FORMAT_VERSION,
                })
            }
            _ => {}
        }
        match node {
            Some(n) if n != self.node_id => {
                Err(StoreError::NodeIdMismatch { path: self.path.clone(), found: n, expected: self.node_id })
            }
            Some(_) => Ok(()),
            None => {
                let mut b = WriteBatch::default();
                b.put_cf(
                    self.cf(cf::META),
                    key::FORMAT_VERSION,
                    codec::seal(RecordKind::FormatVersion, &DISK_FORMAT_VERSION),
                );
                b.put_cf(self.cf(cf::META), key::NODE_ID, codec::seal(RecordKind::NodeId, &self.node_id));
                self.write(b, true, "stamp data directory identity")
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// How many times RocksDB has fsynced its write-ahead log since open: a metric, and the way
    /// tests check that every Raft durability point really syncs.
    pub fn wal_syncs(&self) -> u64 {
        self.opts.get_ticker_count(rocksdb::statistics::Ticker::WalFileSynced)
    }

    /// Writes a copy of this database into `target/db` as the directory of node `node_id`: a
    /// RocksDB checkpoint (every memtable flushed first; table files hard-linked where the file
    /// system allows, copied otherwise; the rest copied and synced), then stamped with its own
    /// node id. Only the database: what else the directory holds is the caller's to copy.
    pub(crate) fn checkpoint_as(&self, target: &Path, node_id: u64) -> Result<(), StoreError> {
        std::fs::create_dir_all(target).map_err(|e| StoreError::io(format!("create {}", target.display()), e))?;
        rocksdb::checkpoint::Checkpoint::new(&self.db).and_then(|c| c.create_checkpoint(target.join("db"))).map_err(
            |e| {
                StoreError::rocks(format!("write a checkpoint of {} into {}", self.path.display(), target.display()), e)
            },
        )?;
        let copy = DataDir::open(target, self.node_id)?;
        let mut b = WriteBatch::default();
        b.put_cf(copy.cf(cf::META), key::NODE_ID, codec::seal(RecordKind::NodeId, &node_id));
        copy.write(b, true, "stamp the copy's node id")
    }

    pub(crate) fn snapshot_dir(&self) -> PathBuf {
        self.path.join("snapshots")
    }

    pub(crate) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Every family in cf::ALL is created at open; a missing one is a programming error.
        self.db.cf_handle(name).unwrap_or_else(|| panic!("column family {name} is opened with the database"))
    }

    /// Reads and opens one sealed record. `what` names the key in error messages.
    pub(crate) fn get<T: serde::de::DeserializeOwned>(
        &self,
        family: &'static str,
        k: &[u8],
        kind: RecordKind,
        what: impl Into<String>,
    ) -> Result<Option<T>, StoreError> {
        let what = what.into();
        let Some(bytes) = self
            .db
            .get_pinned_cf(self.cf(family), k)
            .map_err(|e| StoreError::rocks(format!("read {what} from {family}"), e))?
        else {
            return Ok(None);
        };
        codec::open(kind, &bytes).map(Some).map_err(|source| StoreError::Corrupt { cf: family, key: what, source })
    }

    /// Writes a batch without the write-ahead log: for a directory being built offline
    /// (`crate::seed`), made durable by [`DataDir::flush_all`] before anything points at it.
    pub(crate) fn write_unlogged(&self, batch: WriteBatch, what: &str) -> Result<(), StoreError> {
        let mut o = WriteOptions::default();
        o.disable_wal(true);
        self.db.write_opt(batch, &o).map_err(|e| StoreError::rocks(what.to_string(), e))
    }

    /// Moves finished table files of column family `name` into the database (RocksDB's
    /// external file ingestion). Sorted files whose keys overlap nothing go to the bottom level
    /// whole: no memtable, flush or compaction touches their rows.
    pub(crate) fn ingest(&self, name: &'static str, files: Vec<PathBuf>) -> Result<(), StoreError> {
        let mut o = rocksdb::IngestExternalFileOptions::default();
        o.set_move_files(true);
        self.db
            .ingest_external_file_cf_opts(self.cf(name), &o, files)
            .map_err(|e| StoreError::rocks(format!("ingest table files into {name}"), e))
    }

    /// Flushes every column family's memtable to table files (fsynced by RocksDB), waiting
    /// for it. The write-ahead log moves on to another file (a recycled one once there is one).
    pub fn flush_all(&self) -> Result<(), StoreError> {
        for name in cf::ALL {
            self.db.flush_cf(self.cf(name)).map_err(|e| StoreError::rocks(format!("flush {name}"), e))?;
        }
        Ok(())
    }

    /// Writes a batch; `sync` makes it durable (fsync of the WAL) before returning.
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool, what: &str) -> Result<(), StoreError> {
        let mut o = WriteOptions::default();
        o.set_sync(sync);
        let started = std::time::Instant::now();
        let r = self.db.write_opt(batch, &o).map_err(|e| StoreError::rocks(what.to_string(), e));
        if sync {
            if let Some(obs) = self.observer.get() {
                obs.synced(started.elapsed());
            }
        }
        r
    }
}
