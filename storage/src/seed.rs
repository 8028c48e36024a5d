//! Seeding a member's data directory from an export, offline (`switchyard log seed`): the fast
//! half of a restore.
//!
//! `log restore` alone pushes every event of an export through Raft in import chunks, so a
//! restore runs at the speed of replicated writes (≈ 57 000 events/s here). A seed instead folds
//! the export once on the member's own machine, as `log replay` does, and writes what applying
//! those imports would have written: every event with its index rows, every migration's record
//! after the event that changed it, and the state — with the restore in progress at the
//! export's last revision, exactly as the last import chunk leaves it. The members then start
//! already holding the history, and `log restore` only checks that they all hold this export
//! and commits the new cluster id (etcd's `etcdutl snapshot restore` works the same way: each
//! member's directory is built offline, with the initial membership).
//!
//! How it fits Raft: the seed is a snapshot at the very first log id (the one `cluster init`
//! gives its membership entry) carrying the membership of `--member` and the state, and the log
//! counts as purged up to that id. So the members start initialized (they elect a leader at
//! once, no `cluster init`), and a member whose directory was not seeded — or one added later —
//! gets the seed as a snapshot from the leader instead of a log that does not hold it.
//!
//! Bad input changes nothing: the directory is built beside the target under a temporary name
//! and renamed into place only when the whole export was read clean, started at revision 1 and
//! its state holds every invariant. The events, which the export holds in key order, are written
//! as sorted table files and ingested whole into the bottom level ([`TableFiles`]), each event's
//! row sealed from the very bytes the export holds (and its chain covers) rather than encoded
//! again; the guest index is gathered per guest and written as sorted table files too
//! ([`GuestIndex`]); the migration records skip RocksDB's write-ahead log (the directory is not
//! in use) and are flushed to table files before the one synced batch that records the base.
//! Folding and writing overlap: the thread that folds the export seals each event's rows into
//! chunks, and a writing thread puts them into the table files and the database
//! ([`write_chunks`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use openraft::{LogId, Membership};
use rocksdb::{Options, SstFileWriter, WriteBatch};
use switchyard_protocol::{ClusterState, ImportProgress, Migration, Revision};

use crate::db::{cf, cf_options, key, DataDir};
use crate::error::StoreError;
use crate::export::{self, EventRecord, ExportHeader, Problem, Until};
use crate::history::{event_value_encoded_into, write_migration};
use crate::snapshot;
use crate::state_machine::{commit_seed, write_snapshot_file};
use crate::types::{NodeId, NodeInfo, SnapshotMeta, StoredMembership};

/// Events per unlogged write while seeding (one chunk from the folding thread to the writing
/// thread).
const BATCH_EVENTS: u64 = 16_384;
/// Chunks the folding thread may have ahead of the writing thread.
const CHUNKS_IN_FLIGHT: usize = 4;
/// Events per table file of the events column family (tens of MiB each).
const EVENTS_PER_TABLE: u64 = 1 << 18;
/// Guest index rows gathered before they are written as one table file ([`GuestIndex`]): about
/// 32 MiB of revisions, and a table file per 4 M events at most.
const GUEST_ROWS_PER_RUN: u64 = 1 << 22;

/// Why a seed was refused; nothing was written at the target in any case.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{0}")]
    Refused(String),
    #[error("the export is damaged ({} problems): nothing was seeded", .0.len())]
    Damaged(Vec<Problem>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a seed wrote.
#[derive(Debug)]
pub struct Seeded {
    pub header: ExportHeader,
    /// The export's last revision: the seeded state's.
    pub revision: Revision,
    /// The export's chain value after its last event (64 hex digits).
    pub chain: String,
    /// The state the member starts from.
    pub state: ClusterState,
}

/// Builds the data directory of every member in `targets` (node id, directory: absent or empty)
/// from the export read from `input`, for a cluster of `members` (which must hold every target's
/// node id). `progress` is called with the bytes read so far.
///
/// The export is read and folded once, into the first target; each further target (members
/// that share one machine) is a RocksDB checkpoint of it, whose table files are hard links
/// where the file system allows (copies otherwise), stamped with its own node id. Table files
/// are never changed once written, so sharing them is safe, as between a checkpoint and its
/// database: each member's compactions write new files and drop only its own links.
pub fn seed(
    targets: &[(NodeId, PathBuf)],
    members: BTreeMap<NodeId, NodeInfo>,
    input: impl BufRead + Send,
    progress: impl FnMut(u64),
) -> Result<Seeded, SeedError> {
    let Some(((first_id, _), _)) = targets.split_first() else {
        return Err(SeedError::Refused("no member's directory to seed".into()));
    };
    let mut building = Vec::with_capacity(targets.len());
    for (i, (node_id, data_dir)) in targets.iter().enumerate() {
        if !members.contains_key(node_id) {
            return Err(SeedError::Refused(format!(
                "node {node_id} is not among the members {:?}: every member's directory is seeded with the same member list",
                members.keys().collect::<Vec<_>>()
            )));
        }
        if let Some((other, _)) = targets[..i].iter().find(|(id, dir)| id == node_id || dir == data_dir) {
            return Err(SeedError::Refused(format!(
                "node {node_id} at {} and node {other} name the same member or the same directory",
                data_dir.display()
            )));
        }
        if std::fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(SeedError::Refused(format!(
                "{} is not empty: a seed builds a brand-new member's directory (move the old one away first)",
                data_dir.display()
            )));
        }
        let path = building_path(data_dir)?;
        if path.exists() {
            // What an interrupted seed left: never pointed at, so never used.
            std::fs::remove_dir_all(&path)
                .map_err(|e| StoreError::io(format!("remove the unfinished seed {}", path.display()), e))?;
        }
        building.push(path);
    }
    let copies: Vec<(NodeId, &Path)> =
        targets[1..].iter().map(|(id, _)| *id).zip(building[1..].iter().map(PathBuf::as_path)).collect();
    let built = build(&building[0], *first_id, &copies, members, input, progress);
    let seeded = match built {
        Ok(s) => s,
        Err(e) => {
            for path in &building {
                let _ = std::fs::remove_dir_all(path);
            }
            return Err(e);
        }
    };
    for ((_, data_dir), path) in targets.iter().zip(&building) {
        if data_dir.exists() {
            std::fs::remove_dir(data_dir).map_err(|e| StoreError::io(format!("replace {}", data_dir.display()), e))?;
        }
        std::fs::rename(path, data_dir)
            .map_err(|e| StoreError::io(format!("move the seeded directory into {}", data_dir.display()), e))?;
    }
    // The renames are durable once each folder holding a target is synced (once, however many
    // targets it holds).
    let parents: BTreeSet<&Path> = targets.iter().map(|(_, d)| folder_of(d)).collect();
    for parent in parents {
        snapshot::sync_dir(parent)?;
    }
    Ok(seeded)
}

/// The folder that holds `path`: the current one for a bare name (whose `parent` is empty).
fn folder_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// `.NAME.seeding` beside `data_dir`: on the same file system, so the final rename is atomic.
fn building_path(data_dir: &Path) -> Result<PathBuf, SeedError> {
    let name = data_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| SeedError::Refused(format!("{} does not name a directory", data_dir.display())))?;
    Ok(data_dir.with_file_name(format!(".{name}.seeding")))
}

fn build(
    path: &Path,
    node_id: NodeId,
    copies: &[(NodeId, &Path)],
    members: BTreeMap<NodeId, NodeInfo>,
    input: impl BufRead + Send,
    progress: impl FnMut(u64),
) -> Result<Seeded, SeedError> {
    let dir = DataDir::open_for_bulk_load(path, node_id)?;
    let (event_opts, index_opts) = (cf_options(cf::EVENTS), cf_options(cf::GUEST_EVENTS));
    let folder = path.join("ingest");
    std::fs::create_dir_all(&folder).map_err(|e| StoreError::io(format!("create {}", folder.display()), e))?;
    let tables = (
        TableFiles::new(&event_opts, folder.clone(), cf::EVENTS, EVENTS_PER_TABLE),
        GuestIndex::new(&index_opts, folder.clone(), GUEST_ROWS_PER_RUN),
    );
    // The folding thread seals each event's rows into a chunk; a writing thread puts them into
    // the table files and the database, and hands the emptied chunk back for reuse.
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Chunk>(CHUNKS_IN_FLIGHT);
    let (free_tx, free_rx) = std::sync::mpsc::channel::<Chunk>();
    let (report, written) = std::thread::scope(|scope| {
        let dir = &dir;
        let writer = scope.spawn(move || write_chunks(dir, tables, full_rx, free_tx));
        let mut chunk = Chunk::default();
        let mut chain = [0u8; 64];
        // Set once the writing thread stopped taking chunks (it failed: its error is joined).
        let mut stopped = false;
        let report = export::read_export_with(input, Until::default(), progress, |record, state| {
            if stopped {
                return;
            }
            let migration = record.event.payload.migration().and_then(|id| state.migration(id));
            chunk.push(dir, &record, migration);
            chain = *record.chain;
            if chunk.len() == BATCH_EVENTS {
                let next = free_rx.try_recv().unwrap_or_default();
                stopped = full_tx.send(std::mem::replace(&mut chunk, next)).is_err();
            }
        });
        if !stopped && chunk.len() > 0 {
            let _ = full_tx.send(chunk);
        }
        drop(full_tx);
        let written = writer.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (report.map(|r| (r, chain)), written)
    });
    let (report, chain) = report.map_err(|e| StoreError::io("read the export", e))?;
    if !report.problems.is_empty() {
        return Err(SeedError::Damaged(report.problems));
    }
    let (events, index) = written?;
    events.ingest_into(&dir, cf::EVENTS, false)?;
    index.ingest_into(&dir)?;
    std::fs::remove_dir_all(&folder).map_err(|e| StoreError::io(format!("remove {}", folder.display()), e))?;
    let header = report.header.clone().ok_or_else(|| SeedError::Refused("the export has no header".into()))?;
    if header.first_revision != 1 {
        return Err(SeedError::Refused(format!(
            "the export starts at revision {}: a cluster can only be seeded from a whole history (revision 1 on)",
            header.first_revision
        )));
    }
    let Some(revision) = report.last_revision else {
        return Err(SeedError::Refused("the export holds no events: there is nothing to seed".into()));
    };
    let mut state = report.state;
    let bad = state.check_invariants();
    if !bad.is_empty() {
        return Err(SeedError::Refused(format!(
            "the state at revision {revision} breaks invariants: {}",
            bad.join("; ")
        )));
    }
    let chain = String::from_utf8_lossy(&chain).to_ascii_lowercase();
    state.resume_import(ImportProgress {
        cluster: header.cluster.clone(),
        through_revision: revision,
        chain: chain.clone(),
    });
    dir.flush_all()?;

    // The base: a snapshot at the first log id, as `cluster init` would have made it.
    let first = LogId::<NodeId>::default();
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let membership = StoredMembership::new(Some(first), Membership::new(vec![voters], members));
    let file = format!("seed-{revision}.bin");
    let meta =
        SnapshotMeta { last_log_id: Some(first), last_membership: membership, snapshot_id: format!("seed-{revision}") };
    // The state and the migration records: the history is in the tables, and a member that
    // gets this as a snapshot fetches it from its peers.
    write_snapshot_file(&dir, &dir.snapshot_dir().join(&file), meta.clone(), &state, revision + 1)?;
    commit_seed(&dir, &meta, &file, &state)?;
    for (copy_id, copy) in copies {
        copy_member(&dir, copy, *copy_id)?;
    }
    drop(dir);
    Ok(Seeded { header, revision, chain, state })
}

/// Makes `target` the directory of member `node_id`, holding what `dir` holds: its database as
/// a checkpoint and its snapshot files (the seed's), linked or copied.
fn copy_member(dir: &DataDir, target: &Path, node_id: NodeId) -> Result<(), StoreError> {
    dir.checkpoint_as(target, node_id)?;
    let (from, to) = (dir.snapshot_dir(), target.join("snapshots"));
    std::fs::create_dir_all(&to).map_err(|e| StoreError::io(format!("create {}", to.display()), e))?;
    let entries = std::fs::read_dir(&from).map_err(|e| StoreError::io(format!("list {}", from.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("list {}", from.display()), e))?;
        let dest = to.join(entry.file_name());
        if std::fs::hard_link(entry.path(), &dest).is_err() {
            std::fs::copy(entry.path(), &dest)
                .and_then(|_| std::fs::File::open(&dest)?.sync_all())
                .map_err(|e| StoreError::io(format!("copy {} to {}", entry.path().display(), dest.display()), e))?;
        }
    }
    snapshot::sync_dir(&to)
}

/// The rows of up to [`BATCH_EVENTS`] consecutive events: each event's own row, its guest
/// index entry, and a write batch of the migration records the events changed.
#[derive(Default)]
struct Chunk {
    /// Each event's revision and where its row's value ends in `values`.
    events: Vec<(Revision, usize)>,
    /// The events' sealed rows, one after the other.
    values: Vec<u8>,
    /// The guest of each event that concerns one, each name followed by a NUL (names never
    /// hold one), and that event's revision in `guest_revisions`: one buffer, not a string per
    /// event.
    guests: String,
    guest_revisions: Vec<Revision>,
    migrations: WriteBatch,
}

impl Chunk {
    fn push(&mut self, dir: &DataDir, record: &EventRecord<'_>, migration: Option<&Migration>) {
        let event = record.event;
        event_value_encoded_into(&mut self.values, record.encoded);
        self.events.push((event.revision, self.values.len()));
        if let Some(g) = event.payload.guest() {
            self.guests.push_str(g.as_str());
            self.guests.push('\0');
            self.guest_revisions.push(event.revision);
        }
        if let Some(m) = migration {
            write_migration(dir, &mut self.migrations, m);
        }
    }

    fn len(&self) -> u64 {
        self.events.len() as u64
    }

    /// Empties the chunk, keeping its buffers for the next events.
    fn clear(&mut self) {
        self.events.clear();
        self.values.clear();
        self.guests.clear();
        self.guest_revisions.clear();
        self.migrations.clear();
    }
}

/// The writing thread of a seed: puts every chunk's event rows into the events' table files,
/// its guest index entries into the guest index, and its migration records into the database,
/// in the order the chunks come, and sends each chunk back emptied. Answers the table files and
/// the index once the chunks end; on an error it stops taking chunks, which the folding thread
/// notices.
fn write_chunks<'a>(
    dir: &DataDir,
    (mut events, mut index): (TableFiles<'a>, GuestIndex<'a>),
    full: std::sync::mpsc::Receiver<Chunk>,
    free: std::sync::mpsc::Sender<Chunk>,
) -> Result<(TableFiles<'a>, GuestIndex<'a>), StoreError> {
    for mut chunk in full {
        let mut start = 0;
        for &(revision, end) in &chunk.events {
            events.put(&key::u64(revision), &chunk.values[start..end])?;
            start = end;
        }
        for (guest, revision) in chunk.guests.split_terminator('\0').zip(&chunk.guest_revisions) {
            index.add(guest, *revision)?;
        }
        if !chunk.migrations.is_empty() {
            dir.write_unlogged(std::mem::take(&mut chunk.migrations), "write seeded migration records")?;
        }
        chunk.clear();
        let _ = free.send(chunk);
    }
    Ok((events, index))
}

/// Rows of one column family written as table files outside the database, then ingested.
///
/// Why: rows written through the memtable were each inserted, sorted at flush, compressed and
/// compacted again (more than half of a seed's time at 10 M events went to the events' rows
/// alone). A table file written in key order goes into the database whole, with no memtable,
/// flush or compaction touching its rows.
struct TableFiles<'a> {
    opts: &'a Options,
    folder: PathBuf,
    /// The files' names begin with it (the family's name).
    name: &'static str,
    writer: Option<SstFileWriter<'a>>,
    per_table: u64,
    in_table: u64,
    /// Every table file opened so far, the one being written last.
    files: Vec<PathBuf>,
}

impl<'a> TableFiles<'a> {
    /// Files in `folder` (which exists), `per_table` rows each at most.
    fn new(opts: &'a Options, folder: PathBuf, name: &'static str, per_table: u64) -> TableFiles<'a> {
        TableFiles { opts, folder, name, writer: None, per_table, in_table: 0, files: Vec::new() }
    }

    /// Adds the next row; keys must come in increasing order within a file.
    fn put(&mut self, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
        if self.writer.is_none() {
            let path = self.folder.join(format!("{}-{:05}.sst", self.name, self.files.len()));
            let w = SstFileWriter::create(self.opts);
            w.open(&path).map_err(|e| StoreError::rocks(format!("create table file {}", path.display()), e))?;
            self.writer = Some(w);
            self.files.push(path);
        }
        let w = self.writer.as_mut().expect("opened above");
        w.put(k, v)
            .map_err(|e| StoreError::rocks(format!("write a seeded row of {} to its table file", self.name), e))?;
        self.in_table += 1;
        if self.in_table == self.per_table {
            self.finish()?;
        }
        Ok(())
    }

    /// Finishes the file being written, if any: the next row begins a new one.
    fn finish(&mut self) -> Result<(), StoreError> {
        if let Some(mut w) = self.writer.take() {
            w.finish().map_err(|e| StoreError::rocks(format!("finish a table file of seeded {}", self.name), e))?;
        }
        self.in_table = 0;
        Ok(())
    }

    /// Finishes the last file and moves every file into `dir`'s family `cf`: all at once when
    /// their key ranges follow each other, one by one (each above the ones before) when they
    /// `overlap`, which one ingestion refuses.
    fn ingest_into(mut self, dir: &DataDir, cf: &'static str, overlap: bool) -> Result<(), StoreError> {
        self.finish()?;
        let files = std::mem::take(&mut self.files);
        if files.is_empty() {
            Ok(())
        } else if overlap {
            files.into_iter().try_for_each(|f| dir.ingest(cf, vec![f]))
        } else {
            dir.ingest(cf, files)
        }
    }
}

/// The guest index ([`cf::GUEST_EVENTS`]) of a seed, written as table files ("runs").
///
/// Its rows are keyed by guest, then revision, while the events come in revision order: they
/// cannot be written in key order as they come. Through the memtable, sorting them at each
/// flush and compacting the flushed files took about a third of a seed's time. Instead each
/// guest's revisions are gathered (they come in order), and every [`GUEST_ROWS_PER_RUN`] rows
/// the guests are written out in name order as one table file. The runs' key ranges overlap
/// (each holds most guests) but no key is in two runs, so each is ingested on its own, above
/// the ones before; reads see one index.
struct GuestIndex<'a> {
    revisions: HashMap<Box<str>, Vec<Revision>>,
    /// Rows gathered since the last run.
    rows: u64,
    per_run: u64,
    runs: TableFiles<'a>,
    /// The key being written (its allocation reused).
    row: Vec<u8>,
}

impl<'a> GuestIndex<'a> {
    fn new(opts: &'a Options, folder: PathBuf, per_run: u64) -> GuestIndex<'a> {
        let runs = TableFiles::new(opts, folder, cf::GUEST_EVENTS, u64::MAX);
        GuestIndex { revisions: HashMap::new(), rows: 0, per_run, runs, row: Vec::new() }
    }

    /// Adds the row of `guest`'s event at `revision`; a guest's revisions must come in order.
    fn add(&mut self, guest: &str, revision: Revision) -> Result<(), StoreError> {
        match self.revisions.get_mut(guest) {
            Some(revisions) => revisions.push(revision),
            None => {
                self.revisions.insert(guest.into(), vec![revision]);
            }
        }
        self.rows += 1;
        if self.rows == self.per_run {
            self.write_run()?;
        }
        Ok(())
    }

    /// Writes the rows gathered since the last run as the next table file.
    fn write_run(&mut self) -> Result<(), StoreError> {
        let GuestIndex { revisions, rows, runs, row, .. } = self;
        if *rows == 0 {
            return Ok(());
        }
        // Name order is key order (`key::named`): the NUL after each name sorts before any byte
        // of a name.
        let mut guests: Vec<(&str, &mut Vec<Revision>)> =
            revisions.iter_mut().filter(|(_, r)| !r.is_empty()).map(|(g, r)| (&**g, r)).collect();
        guests.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (guest, revisions) in guests {
            for revision in revisions.drain(..) {
                key::named_into(row, guest, revision);
                runs.put(row, &[])?;
            }
        }
        runs.finish()?;
        *rows = 0;
        Ok(())
    }

    /// Writes the last run and moves every run into `dir`'s guest index.
    fn ingest_into(mut self, dir: &DataDir) -> Result<(), StoreError> {
        self.write_run()?;
        self.runs.ingest_into(dir, cf::GUEST_EVENTS, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory named relative to the current one (`--data-dir d1`) has its rename synced in
    /// the current folder, not in the empty path.
    #[test]
    fn the_folder_of_a_bare_name_is_the_current_one() {
        assert_eq!(folder_of(Path::new("d1")), Path::new("."));
        assert_eq!(folder_of(Path::new("a/d1")), Path::new("a"));
        assert_eq!(folder_of(Path::new("/srv/d1")), Path::new("/srv"));
        assert_eq!(folder_of(Path::new("/")), Path::new("."));
    }

    /// Every row of `family`, in key order.
    fn rows(dir: &DataDir, family: &'static str) -> Vec<(Vec<u8>, Vec<u8>)> {
        dir.db
            .iterator_cf(dir.cf(family), rocksdb::IteratorMode::Start)
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    /// Rows written across several table files come back whole and in order once ingested,
    /// beside rows the family already held.
    #[test]
    fn table_files_roll_over_and_ingest_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(&tmp.path().join("d"), 1).unwrap();
        dir.db.put_cf(dir.cf(cf::EVENTS), key::u64(100), b"row 100").unwrap();
        let opts = cf_options(cf::EVENTS);
        let mut tables = TableFiles::new(&opts, tmp.path().to_path_buf(), cf::EVENTS, 3);
        for i in 1..=10u64 {
            tables.put(&key::u64(i), format!("row {i}").as_bytes()).unwrap();
        }
        assert_eq!(tables.files.len(), 4, "10 rows at 3 per file");
        tables.ingest_into(&dir, cf::EVENTS, false).unwrap();
        let rows: Vec<(u64, String)> = rows(&dir, cf::EVENTS)
            .into_iter()
            .map(|(k, v)| (key::parse_u64(&k).unwrap(), String::from_utf8(v).unwrap()))
            .collect();
        let want: Vec<(u64, String)> = (1..=10).chain([100]).map(|i| (i, format!("row {i}"))).collect();
        assert_eq!(rows, want);
    }

    /// The guest index written in several runs, whose key ranges overlap (names that begin other
    /// names among them), reads back as one index holding every row once, beside rows it
    /// already held, through the reads the coordinators use.
    #[test]
    fn the_guest_index_is_written_in_runs_and_reads_back_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(&tmp.path().join("d"), 1).unwrap();
        let mut k = Vec::new();
        key::named_into(&mut k, "zz", 1_000);
        dir.db.put_cf(dir.cf(cf::GUEST_EVENTS), &k, []).unwrap();
        let opts = cf_options(cf::GUEST_EVENTS);
        let mut index = GuestIndex::new(&opts, tmp.path().to_path_buf(), 5);
        let guests = ["web", "web-1", "db", "w", "web"];
        let mut want: BTreeMap<&str, Vec<Revision>> = BTreeMap::from([("zz", vec![1_000])]);
        for revision in 1..=23u64 {
            let guest = guests[(revision as usize * 7) % guests.len()];
            index.add(guest, revision).unwrap();
            want.entry(guest).or_default().push(revision);
        }
        assert_eq!(index.runs.files.len(), 4, "23 rows at 5 per run, the last 3 still gathered");
        index.ingest_into(&dir).unwrap();
        let mut written: Vec<Vec<u8>> = Vec::new();
        for (guest, revisions) in &want {
            for r in revisions {
                key::named_into(&mut k, guest, *r);
                written.push(k.clone());
            }
        }
        written.sort();
        let keys: Vec<Vec<u8>> = rows(&dir, cf::GUEST_EVENTS).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, written, "every row once, in key order");
        let history = crate::history::History::new(dir.clone());
        for (guest, revisions) in &want {
            let name = switchyard_protocol::Name::new(*guest).unwrap();
            assert_eq!(&history.guest_revisions(&name, 0, 100).unwrap(), revisions, "{guest}");
        }
    }
}
