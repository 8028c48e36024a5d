//! The agent's applied state on disk: one file per guest under `<data_dir>/guests/`, the
//! cursor (last applied revision) in `<data_dir>/cursor`, and one journal file per migration this
//! host takes part in under `<data_dir>/migrations/` (what it did for which phase, so a restarted
//! agent neither repeats nor forgets a transfer).
//!
//! Every write is atomic: write a temporary file, rename it over the target. A killed agent
//! leaves either the old or the new file, never a torn one. Guest files are *group-committed*:
//! [`AgentStore::stage`] records a change in memory, where a later change of the same guest
//! replaces it; [`AgentStore::flush`] writes and renames what is staged without waiting for the
//! disk (one file per guest, however many events changed it since the last flush: an agent
//! catching up on a long history writes each guest once per batch, not once per event); and
//! [`AgentStore::commit`] flushes, then makes every written file and the directory durable with
//! one round of fsyncs before it writes the cursor (itself atomic and durable). So the cursor
//! never covers a change that is not on disk, and after a crash of the machine the agent
//! re-applies from its cursor — harmless, because applying an event writes the guest's whole
//! record (idempotent).
//! One fsync round per batch instead of two per event is what lets an agent keep up with a
//! bulk change (hundreds of events per second on a disk where a sync takes milliseconds).
//!
//! A machine crash can still leave a staged file empty or partly written (its rename reached
//! the disk, its data did not). [`AgentStore::load`] moves such a file aside (`*.damaged`) and
//! says so, and the agent then re-syncs from the coordinators' full state. Journals and the
//! cluster id are written durably one by one (they change rarely).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use switchyard_protocol::hostconfig::{ConfigChange, HostConfig};
use switchyard_protocol::{ClusterId, FencingToken, Guest, MigrationId, Name, Revision, TransferStats};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("corrupt file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// An agent's data directory.
pub struct AgentStore {
    dir: PathBuf,
    /// Guest files staged since the last commit (not yet known to be on disk), and whether a
    /// guest file was removed (any staged change means the directory must be synced).
    staged: Mutex<Staged>,
}

#[derive(Default)]
struct Staged {
    /// Changes not yet written, the latest per guest file.
    pending: BTreeMap<PathBuf, ConfigChange>,
    /// Files written since the last commit, not yet known to be on disk.
    files: BTreeSet<PathBuf>,
    dir: bool,
}

/// What [`AgentStore::load`] found.
#[derive(Debug)]
pub struct Loaded {
    pub config: HostConfig,
    /// Guest files that could not be read back, now renamed `*.damaged`.
    pub damaged: Vec<PathBuf>,
}

impl AgentStore {
    pub fn open(dir: &Path) -> Result<AgentStore, StoreError> {
        for sub in ["guests", "migrations"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io(format!("create {}", d.display())))?;
            // Leftover temporaries of a write that was killed are never valid state.
            for e in fs::read_dir(&d).map_err(io(format!("list {}", d.display())))?.flatten() {
                if e.path().extension().is_some_and(|x| x == "tmp") {
                    fs::remove_file(e.path()).map_err(io(format!("remove {}", e.path().display())))?;
                }
            }
        }
        Ok(AgentStore { dir: dir.to_path_buf(), staged: Mutex::new(Staged::default()) })
    }

    fn journal_path(&self, id: MigrationId) -> PathBuf {
        self.dir.join("migrations").join(format!("{}.json", id.0))
    }

    /// Records durably what this host did for a migration.
    pub fn put_journal(&self, j: &Journal) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(j).expect("a journal entry always serialises");
        atomic_write(&self.journal_path(j.migration), &bytes)
    }

    pub fn remove_journal(&self, id: MigrationId) -> Result<(), StoreError> {
        let path = self.journal_path(id);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir.join("migrations")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("remove {}", path.display()))(e)),
        }
    }

    /// Every journal entry, by migration id.
    pub fn journals(&self) -> Result<Vec<Journal>, StoreError> {
        let mut out: Vec<Journal> =
            read_json_files(&self.dir.join("migrations"))?.into_iter().map(|(_, j)| j).collect();
        out.sort_by_key(|j| j.migration);
        Ok(out)
    }

    fn guests_dir(&self) -> PathBuf {
        self.dir.join("guests")
    }

    /// The file of one guest. A `Name` can never escape the directory (no separators, no `..`).
    pub fn guest_path(&self, name: &Name) -> PathBuf {
        self.guests_dir().join(format!("{name}.json"))
    }

    /// Last applied revision (0 before the first).
    pub fn cursor(&self) -> Result<Revision, StoreError> {
        let path = self.dir.join("cursor");
        match fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|e| StoreError::Corrupt { path, reason: format!("{e}") }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io(format!("read {}", path.display()))(e)),
        }
    }

    /// Makes every staged change durable, then the cursor: after this, a restart resumes after
    /// `revision`.
    pub fn commit(&self, revision: Revision) -> Result<(), StoreError> {
        self.flush()?;
        let staged = std::mem::take(&mut *self.staged.lock().expect("staged lock"));
        if staged.files.len() > SYNCFS_AFTER {
            // Thousands of files (a jump or a bulk change): one sync of the file system costs
            // less than an fsync each, and covers the directory too.
            return sync_fs(&self.guests_dir())
                .and_then(|()| atomic_write(&self.dir.join("cursor"), format!("{revision}\n").as_bytes()));
        }
        for path in &staged.files {
            match File::open(path) {
                Ok(f) => f.sync_all().map_err(io(format!("fsync {}", path.display())))?,
                // Removed again after it was staged: the directory sync below covers it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("open {}", path.display()))(e)),
            }
        }
        if staged.dir || !staged.files.is_empty() {
            sync_dir(&self.guests_dir())?;
        }
        atomic_write(&self.dir.join("cursor"), format!("{revision}\n").as_bytes())
    }

    /// The newest order (fencing token) each guest was started on here, as the reconciler
    /// keeps it ([`crate::reconcile::Reconciler::started`]).
    pub fn started(&self) -> Result<BTreeMap<Name, FencingToken>, StoreError> {
        let path = self.dir.join("started.json");
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                path,
                reason: format!("{e}; it only guards against starting a guest on an old order: remove it if damaged"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io(format!("read {}", path.display()))(e)),
        }
    }

    pub fn put_started(&self, started: &BTreeMap<Name, FencingToken>) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(started).expect("tokens always serialise");
        atomic_write(&self.dir.join("started.json"), &bytes)
    }

    /// The id of the cluster this agent follows (`None` before it has seen one).
    pub fn cluster(&self) -> Result<Option<ClusterId>, StoreError> {
        let path = self.dir.join("cluster");
        match fs::read_to_string(&path) {
            Ok(s) => ClusterId::parse(s.trim()).map(Some).ok_or_else(|| StoreError::Corrupt {
                path,
                reason: "not a cluster id; remove the file and the agent re-syncs".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("read {}", path.display()))(e)),
        }
    }

    pub fn set_cluster(&self, id: &ClusterId) -> Result<(), StoreError> {
        atomic_write(&self.dir.join("cluster"), format!("{id}\n").as_bytes())
    }

    /// Stages one change: on disk (atomically) at the next [`AgentStore::flush`], durable at the
    /// next [`AgentStore::commit`]. A later change of the same guest replaces this one.
    pub fn stage(&self, change: &ConfigChange) -> Result<(), StoreError> {
        let name = match change {
            ConfigChange::Put(g) => &g.name,
            ConfigChange::Remove(n) => n,
        };
        self.staged.lock().expect("staged lock").pending.insert(self.guest_path(name), change.clone());
        Ok(())
    }

    /// Writes every staged change to its guest file (atomically, not yet durably).
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut staged = self.staged.lock().expect("staged lock");
        let staged = &mut *staged;
        while let Some((path, change)) = staged.pending.pop_first() {
            match change {
                ConfigChange::Put(g) => {
                    replace_file(&path, &HostConfig::render(&g))?;
                    staged.files.insert(path);
                }
                ConfigChange::Remove(_) => match fs::remove_file(&path) {
                    Ok(()) => staged.dir = true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(format!("remove {}", path.display()))(e)),
                },
            }
        }
        Ok(())
    }

    /// Whether the data directory takes writes again (after a full disk, say): a probe file
    /// written, synced and removed.
    pub fn probe(&self) -> Result<(), StoreError> {
        let path = self.dir.join("write-probe");
        let written = write_temporary(&path, &vec![0u8; PROBE_BYTES])
            .and_then(|(tmp, f)| f.sync_all().map_err(io(format!("fsync {}", tmp.display()))));
        let _ = fs::remove_file(path.with_extension("tmp"));
        written
    }

    /// Forgets what is staged and not yet durable: after a failed write, the agent starts
    /// again from what is on disk ([`AgentStore::load`], [`AgentStore::cursor`]).
    pub fn discard_staged(&self) {
        *self.staged.lock().expect("staged lock") = Staged::default();
    }

    /// Reads back everything applied so far. A guest file that does not decode, or holds
    /// another guest than its name says, is renamed `*.damaged` and listed in
    /// [`Loaded::damaged`]: the applied state is then incomplete and must be re-synced.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let dir = self.guests_dir();
        let mut guests = Vec::new();
        let mut damaged = Vec::new();
        for path in json_files(&dir)? {
            let bytes = fs::read(&path).map_err(io(format!("read {}", path.display())))?;
            match serde_json::from_slice::<Guest>(&bytes) {
                Ok(g) if self.guest_path(&g.name) == path => guests.push(g),
                Ok(g) => damaged.push((path, format!("holds guest {}", g.name))),
                Err(e) => damaged.push((path, e.to_string())),
            }
        }
        for (path, reason) in &damaged {
            let aside = path.with_extension("damaged");
            tracing::warn!(path = %path.display(), %reason, aside = %aside.display(), "damaged guest file set aside");
            fs::rename(path, &aside).map_err(io(format!("rename {} to {}", path.display(), aside.display())))?;
        }
        if !damaged.is_empty() {
            sync_dir(&dir)?;
        }
        Ok(Loaded { config: HostConfig::from_guests(guests), damaged: damaged.into_iter().map(|(p, _)| p).collect() })
    }

    /// Stages `config` as the whole applied state (a re-sync or a jump to a revision), given
    /// `applied`, the state this store holds (on disk or staged): writes the guests that differ
    /// from it and removes the files of guests that no longer exist. An agent far behind thus
    /// writes what changed, not every guest again. Durable at the next [`AgentStore::commit`].
    pub fn replace_all(&self, config: &HostConfig, applied: &HostConfig) -> Result<(), StoreError> {
        // What is staged reaches the files first, so the files hold `applied` and only the
        // differences need writing.
        self.flush()?;
        let dir = self.guests_dir();
        let wanted: BTreeSet<PathBuf> = config.guests().map(|g| self.guest_path(&g.name)).collect();
        for path in json_files(&dir)? {
            if !wanted.contains(&path) {
                fs::remove_file(&path).map_err(io(format!("remove {}", path.display())))?;
                self.staged.lock().expect("staged lock").dir = true;
            }
        }
        for g in config.guests().filter(|g| applied.guest(&g.name) != Some(*g)) {
            self.stage(&ConfigChange::Put(g.clone()))?;
        }
        Ok(())
    }
}

/// What this host has done for one migration: the source's transfer, keyed by the fencing token
/// of the `transferring` commit it acted on. De-duplicates by (migration, phase): a transfer is
/// started once per token, and a restart finds out from here whether one was under way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub migration: MigrationId,
    pub guest: Name,
    /// The commit this host acted on (the highest token it has obeyed for this migration).
    pub token: FencingToken,
    pub transfer: TransferState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    /// Target: a transfer to this host is under way. Kept until the migration ends (and, after
    /// a rollback, until the guest is known not to be here), so a restarted target re-checks.
    Receiving,
    /// Started and not known to have ended: after a restart, ask the driver where the guest is.
    Started,
    Done {
        freeze_time_ms: Option<u64>,
        /// What the hypervisor measured of the transfer (absent in journals of older agents).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stats: Option<TransferStats>,
    },
    Failed {
        error: String,
    },
}

/// Every `*.json` file of `dir`.
fn json_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io(format!("list {}", dir.display())))?.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "json") {
            out.push(path);
        }
    }
    Ok(out)
}

/// Every `*.json` file of `dir`, decoded; a file that does not decode is named as corrupt.
fn read_json_files<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Vec<(PathBuf, T)>, StoreError> {
    let mut out = Vec::new();
    for path in json_files(dir)? {
        let bytes = fs::read(&path).map_err(io(format!("read {}", path.display())))?;
        let v = serde_json::from_slice(&bytes)
            .map_err(|err| StoreError::Corrupt { path: path.clone(), reason: err.to_string() })?;
        out.push((path, v));
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(format!("fsync directory {}", dir.display())))
}

/// Write to a temporary, rename over `path`: atomic, not yet durable.
/// How many written files a commit fsyncs one by one; above it, it syncs the file system.
const SYNCFS_AFTER: usize = 256;

/// Makes everything written to the file system holding `dir` durable (syncfs(2), which also
/// reports a writeback error of any file written since the last sync).
fn sync_fs(dir: &Path) -> Result<(), StoreError> {
    use std::os::fd::AsRawFd;
    let d = File::open(dir).map_err(io(format!("open {}", dir.display())))?;
    // SAFETY: syncfs takes a file descriptor, which `d` keeps open for the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(io(format!("syncfs {}", dir.display()))(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = write_temporary(path, bytes)?.0;
    fs::rename(&tmp, path).map_err(io(format!("rename {} over {}", tmp.display(), path.display())))
}

/// Write to a temporary, fsync, rename over `path`, fsync the directory: atomic and durable.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let (tmp, f) = write_temporary(path, bytes)?;
    f.sync_all().map_err(io(format!("fsync {}", tmp.display())))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(format!("rename {} over {}", tmp.display(), path.display())))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn write_temporary(path: &Path, bytes: &[u8]) -> Result<(PathBuf, File), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
    if let Err(e) = f.write_all(bytes) {
        // A partial temporary (a full disk) only holds space the agent needs to recover.
        let _ = fs::remove_file(&tmp);
        return Err(io(format!("write {}", tmp.display()))(e));
    }
    Ok((tmp, f))
}

/// Bytes [`AgentStore::probe`] writes: a few batches' worth of guest files.
const PROBE_BYTES: usize = 256 << 10;

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_protocol::{GuestSpec, RunState};

    fn guest(name: &str, vcpus: u32) -> Guest {
        Guest {
            name: Name::new(name).unwrap(),
            spec: GuestSpec {
                vcpus,
                memory_mib: 512,
                disks: vec!["avio_stor:/dev/vg/lv".into()],
                networks: vec![],
                online_migration: true,
                cluster_node: false,
                package: None,
                anti_affinity: None,
            },
            owner: Name::new("h1").unwrap(),
            run_state: RunState::Running,
            version: 3,
        }
    }

    #[test]
    fn changes_round_trip_through_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let s = AgentStore::open(tmp.path()).unwrap();
        assert_eq!(s.cursor().unwrap(), 0);
        s.stage(&ConfigChange::Put(guest("vm1", 2))).unwrap();
        s.stage(&ConfigChange::Put(guest("vm2", 4))).unwrap();
        s.stage(&ConfigChange::Put(guest("vm1", 8))).unwrap();
        s.stage(&ConfigChange::Remove(Name::new("vm2").unwrap())).unwrap();
        s.stage(&ConfigChange::Remove(Name::new("vm2").unwrap())).unwrap(); // idempotent
        s.commit(42).unwrap();
        let reopened = AgentStore::open(tmp.path()).unwrap();
        assert_eq!(reopened.cursor().unwrap(), 42);
        assert_eq!(reopened.load().unwrap().config, HostConfig::from_guests([guest("vm1", 8)]));
    }

    #[test]
    fn staged_changes_coalesce_per_guest_and_reach_disk_at_flush() {
        let tmp = tempfile::tempdir().unwrap();
        let s = AgentStore::open(tmp.path()).unwrap();
        s.stage(&ConfigChange::Put(guest("vm1", 2))).unwrap();
        s.commit(1).unwrap();
        for vcpus in 3..50 {
            s.stage(&ConfigChange::Put(guest("vm1", vcpus))).unwrap();
        }
        s.stage(&ConfigChange::Put(guest("vm2", 1))).unwrap();
        s.stage(&ConfigChange::Remove(Name::new("vm2").unwrap())).unwrap();
        // Nothing is written before the flush...
        assert_eq!(s.load().unwrap().config, HostConfig::from_guests([guest("vm1", 2)]));
        s.flush().unwrap();
        // ...and then only the last change of each guest.
        assert_eq!(s.load().unwrap().config, HostConfig::from_guests([guest("vm1", 49)]));
        assert!(!tmp.path().join("guests/vm2.json").exists());
        assert_eq!(s.cursor().unwrap(), 1);
        s.commit(51).unwrap();
        assert_eq!(AgentStore::open(tmp.path()).unwrap().cursor().unwrap(), 51);
    }

    #[test]
    fn leftover_temporaries_are_discarded_and_corrupt_files_named() {
        let tmp = tempfile::tempdir().unwrap();
        let s = AgentStore::open(tmp.path()).unwrap();
        s.stage(&ConfigChange::Put(guest("vm1", 2))).unwrap();
        s.flush().unwrap();
        fs::write(tmp.path().join("guests/vm9.tmp"), b"{half").unwrap();
        let s = AgentStore::open(tmp.path()).unwrap();
        let loaded = s.load().unwrap();
        assert_eq!((loaded.config.guests().count(), loaded.damaged.len()), (1, 0));
        // A file left half written by a machine crash (or holding another guest) is set aside
        // and named, so the agent re-syncs instead of serving a partial configuration.
        fs::write(tmp.path().join("guests/vm1.json"), b"{half").unwrap();
        s.stage(&ConfigChange::Put(guest("vm2", 1))).unwrap();
        s.flush().unwrap();
        fs::copy(tmp.path().join("guests/vm2.json"), tmp.path().join("guests/vm3.json")).unwrap();
        let loaded = s.load().unwrap();
        assert_eq!(loaded.config, HostConfig::from_guests([guest("vm2", 1)]));
        let mut damaged: Vec<String> =
            loaded.damaged.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        damaged.sort();
        assert_eq!(damaged, ["vm1.json", "vm3.json"]);
        assert!(tmp.path().join("guests/vm1.damaged").exists() && !tmp.path().join("guests/vm1.json").exists());
        assert!(s.load().unwrap().damaged.is_empty());
    }

    #[test]
    fn replace_all_converges_to_the_given_config() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let s = AgentStore::open(tmp.path()).unwrap();
        for g in [guest("old", 1), guest("kept", 1), guest("same", 1)] {
            s.stage(&ConfigChange::Put(g)).unwrap();
        }
        s.flush().unwrap();
        // Staged but not flushed when the re-sync comes: reaches the file, then goes.
        s.stage(&ConfigChange::Put(guest("gone", 1))).unwrap();
        let applied = HostConfig::from_guests([guest("old", 1), guest("kept", 1), guest("same", 1), guest("gone", 1)]);
        let inode = |name: &str| fs::metadata(tmp.path().join(format!("guests/{name}.json"))).unwrap().ino();
        let same = inode("same");
        let want = HostConfig::from_guests([guest("kept", 2), guest("new", 1), guest("same", 1)]);
        s.replace_all(&want, &applied).unwrap();
        s.commit(7).unwrap();
        assert_eq!(s.load().unwrap().config, want);
        assert_eq!(s.cursor().unwrap(), 7);
        // A guest that did not change is not written again.
        assert_eq!(inode("same"), same);
    }
}
