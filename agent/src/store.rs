//! The agent's applied state on disk: one file per guest under `<data_dir>/guests/`, the
//! cursor (last applied revision) in `<data_dir>/cursor`, and one journal file per migration this
//! host takes part in under `<data_dir>/migrations/` (what it did for which phase, so a restarted
//! agent neither repeats nor forgets a transfer).
//!
//! Every write is atomic and durable: write a temporary file, fsync it, rename it over the
//! target, fsync the directory. A kill at any point leaves either the old or the new file, never
//! a torn one. The cursor is written *after* the guest file, so after a crash the agent re-applies
//! at most the events after its cursor — which is harmless, because applying an event writes the
//! guest's whole record (idempotent).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use switchyard_protocol::hostconfig::{ConfigChange, HostConfig};
use switchyard_protocol::{ClusterId, FencingToken, Guest, MigrationId, Name, Revision};

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
        Ok(AgentStore { dir: dir.to_path_buf() })
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

    pub fn set_cursor(&self, revision: Revision) -> Result<(), StoreError> {
        atomic_write(&self.dir.join("cursor"), format!("{revision}\n").as_bytes())
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

    /// Makes one change durable on disk.
    pub fn write(&self, change: &ConfigChange) -> Result<(), StoreError> {
        match change {
            ConfigChange::Put(g) => atomic_write(&self.guest_path(&g.name), &HostConfig::render(g)),
            ConfigChange::Remove(n) => {
                let path = self.guest_path(n);
                match fs::remove_file(&path) {
                    Ok(()) => sync_dir(&self.guests_dir()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io(format!("remove {}", path.display()))(e)),
                }
            }
        }
    }

    /// Reads back everything applied so far.
    pub fn load(&self) -> Result<HostConfig, StoreError> {
        let mut guests = Vec::new();
        for (path, g) in read_json_files::<Guest>(&self.guests_dir())? {
            if self.guest_path(&g.name) != path {
                return Err(StoreError::Corrupt { path, reason: format!("holds guest {}", g.name) });
            }
            guests.push(g);
        }
        Ok(HostConfig::from_guests(guests))
    }

    /// Replaces everything with `config` (after a `compacted` answer): writes every guest and
    /// removes files of guests that no longer exist.
    pub fn replace_all(&self, config: &HostConfig) -> Result<(), StoreError> {
        let current = self.load()?;
        for g in config.guests() {
            self.write(&ConfigChange::Put(g.clone()))?;
        }
        for g in current.guests() {
            if !config.guests().any(|n| n.name == g.name) {
                self.write(&ConfigChange::Remove(g.name.clone()))?;
            }
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
    },
    Failed {
        error: String,
    },
}

/// Every `*.json` file of `dir`, decoded; a file that does not decode is named as corrupt.
fn read_json_files<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Vec<(PathBuf, T)>, StoreError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io(format!("list {}", dir.display())))?.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
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

/// Write to a temporary, fsync, rename over `path`, fsync the directory.
fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
    f.write_all(bytes).map_err(io(format!("write {}", tmp.display())))?;
    f.sync_all().map_err(io(format!("fsync {}", tmp.display())))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(format!("rename {} over {}", tmp.display(), path.display())))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

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
        s.write(&ConfigChange::Put(guest("vm1", 2))).unwrap();
        s.write(&ConfigChange::Put(guest("vm2", 4))).unwrap();
        s.write(&ConfigChange::Put(guest("vm1", 8))).unwrap();
        s.write(&ConfigChange::Remove(Name::new("vm2").unwrap())).unwrap();
        s.write(&ConfigChange::Remove(Name::new("vm2").unwrap())).unwrap(); // idempotent
        s.set_cursor(42).unwrap();
        let reopened = AgentStore::open(tmp.path()).unwrap();
        assert_eq!(reopened.cursor().unwrap(), 42);
        assert_eq!(reopened.load().unwrap(), HostConfig::from_guests([guest("vm1", 8)]));
    }

    #[test]
    fn leftover_temporaries_are_discarded_and_corrupt_files_named() {
        let tmp = tempfile::tempdir().unwrap();
        let s = AgentStore::open(tmp.path()).unwrap();
        s.write(&ConfigChange::Put(guest("vm1", 2))).unwrap();
        fs::write(tmp.path().join("guests/vm9.tmp"), b"{half").unwrap();
        let s = AgentStore::open(tmp.path()).unwrap();
        assert_eq!(s.load().unwrap().guests().count(), 1);
        fs::write(tmp.path().join("guests/vm1.json"), b"{half").unwrap();
        let err = s.load().unwrap_err().to_string();
        assert!(err.contains("corrupt file") && err.contains("vm1.json"), "{err}");
    }

    #[test]
    fn replace_all_converges_to_the_given_config() {
        let tmp = tempfile::tempdir().unwrap();
        let s = AgentStore::open(tmp.path()).unwrap();
        s.write(&ConfigChange::Put(guest("old", 1))).unwrap();
        s.write(&ConfigChange::Put(guest("kept", 1))).unwrap();
        let want = HostConfig::from_guests([guest("kept", 2), guest("new", 1)]);
        s.replace_all(&want).unwrap();
        assert_eq!(s.load().unwrap(), want);
    }
}
