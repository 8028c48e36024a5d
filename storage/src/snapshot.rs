//! Snapshot files.
//!
//! A snapshot carries the cluster state at its revision and every migration record as it was
//! then; the ones this build writes carry no events (`event_count` 0), so their size and build
//! time follow the state, not the length of the history. A node that installs one holds the
//! history from the snapshot's revision on and fills in the older part from a peer's
//! (`StateMachineStore::backfill`, the coordinator's `backfill` task); its history stays one
//! range throughout (a subscriber from before it is told `compacted`, never led into a hole).
//! Files with events (written by older builds) are still read and installed.
//!
//! Layout: the magic `SWYDSNAP`, then frames of `[u32 big-endian length][sealed record]`:
//! a header, the state, exactly `header.migration_count` migration records (as they were at the
//! snapshot's revision: the history of migrations whose events were compacted away), then
//! exactly `header.event_count` events in revision order. Every frame
//! is checksummed; a short or corrupt file is an error naming the byte offset.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use switchyard_protocol::codec::{self, RecordKind, DECODE_LIMIT_BYTES};
use switchyard_protocol::{ClusterState, Event, Migration, Revision};

use crate::error::StoreError;
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"SWYDSNAP";

/// First frame of a snapshot file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub meta: SnapshotMeta,
    /// Revision of the state in the snapshot.
    pub revision: Revision,
    /// First revision of the history carried (1 unless older events were compacted).
    pub first_event: Revision,
    pub event_count: u64,
    pub migration_count: u64,
}

/// Writes a snapshot file at `path` (via a temporary file, fsync, rename, fsync of the directory).
pub fn write_file(
    path: &Path,
    header: &SnapshotHeader,
    state: &ClusterState,
    migrations: &[Migration],
    events: impl Iterator<Item = Result<Event, StoreError>>,
) -> Result<(), StoreError> {
    assert_eq!(migrations.len() as u64, header.migration_count, "header counts the migrations written");
    let tmp = path.with_extension("tmp");
    let ctx = |what: &str| format!("{what} snapshot file {}", tmp.display());
    let file = File::create(&tmp).map_err(|e| StoreError::io(ctx("create"), e))?;
    let mut w = BufWriter::new(file);
    w.write_all(MAGIC).map_err(|e| StoreError::io(ctx("write"), e))?;
    write_frame(&mut w, &codec::seal(RecordKind::SnapshotHeader, header))
        .map_err(|e| StoreError::io(ctx("write"), e))?;
    write_frame(&mut w, &codec::seal(RecordKind::ClusterState, state)).map_err(|e| StoreError::io(ctx("write"), e))?;
    for m in migrations {
        write_frame(&mut w, &codec::seal(RecordKind::Migration, m)).map_err(|e| StoreError::io(ctx("write"), e))?;
    }
    let mut written = 0u64;
    for event in events {
        let event = event?;
        let expected = header.first_event + written;
        if event.revision != expected {
            return Err(StoreError::MissingEvent { revision: expected, up_to: header.revision });
        }
        write_frame(&mut w, &codec::seal(RecordKind::Event, &event)).map_err(|e| StoreError::io(ctx("write"), e))?;
        written += 1;
    }
    if written != header.event_count {
        return Err(StoreError::MissingEvent { revision: header.first_event + written, up_to: header.revision });
    }
    let file = w.into_inner().map_err(|e| StoreError::io(ctx("flush"), e.into_error()))?;
    file.sync_all().map_err(|e| StoreError::io(ctx("fsync"), e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io(format!("rename snapshot into {}", path.display()), e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn write_frame(w: &mut impl Write, sealed: &[u8]) -> std::io::Result<()> {
    w.write_all(&(sealed.len() as u32).to_be_bytes())?;
    w.write_all(sealed)
}

/// fsyncs a directory so a rename or a new file in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("fsync directory {}", dir.display()), e))
}

/// Sequential reader of a snapshot file.
pub struct SnapshotReader {
    path: PathBuf,
    r: BufReader<File>,
    offset: u64,
    pub header: SnapshotHeader,
    /// The file's size: no frame may claim more than what is left of it.
    size: u64,
    migrations_read: u64,
    events_read: u64,
}

impl SnapshotReader {
    /// Opens a snapshot file and reads its header.
    pub fn open(path: &Path) -> Result<SnapshotReader, StoreError> {
        let file = File::open(path).map_err(|e| StoreError::io(format!("open snapshot {}", path.display()), e))?;
        Self::from_file(path.to_path_buf(), file)
    }

    pub(crate) fn from_file(path: PathBuf, file: File) -> Result<SnapshotReader, StoreError> {
        let size = file
            .metadata()
            .map_err(|e| StoreError::io(format!("read the size of snapshot {}", path.display()), e))?
            .len();
        let mut r = BufReader::new(file);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(|e| StoreError::CorruptSnapshot {
            path: path.clone(),
            offset: 0,
            reason: e.to_string(),
        })?;
        if &magic != MAGIC {
            return Err(StoreError::CorruptSnapshot {
                path,
                offset: 0,
                reason: "not a Switchyard snapshot (bad magic)".into(),
            });
        }
        let placeholder = SnapshotHeader {
            meta: Default::default(),
            revision: 0,
            first_event: 0,
            event_count: 0,
            migration_count: 0,
        };
        let mut s =
            SnapshotReader { path, r, offset: 8, header: placeholder, size, migrations_read: 0, events_read: 0 };
        s.header = s.frame(RecordKind::SnapshotHeader)?;
        Ok(s)
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> StoreError {
        StoreError::CorruptSnapshot { path: self.path.clone(), offset, reason: reason.into() }
    }

    fn frame<T: serde::de::DeserializeOwned>(&mut self, kind: RecordKind) -> Result<T, StoreError> {
        let at = self.offset;
        let mut len = [0u8; 4];
        self.r.read_exact(&mut len).map_err(|e| self.corrupt(at, format!("reading frame length: {e}")))?;
        let len = u32::from_be_bytes(len) as usize;
        if len > DECODE_LIMIT_BYTES {
            return Err(self.corrupt(at, format!("frame length {len} exceeds the limit")));
        }
        // Checked before the buffer is allocated: a damaged length must not cost memory.
        let left = self.size.saturating_sub(at + 4);
        if len as u64 > left {
            return Err(
                self.corrupt(at, format!("frame length {len} runs past the end of the file ({left} bytes left)"))
            );
        }
        let mut buf = vec![0u8; len];
        self.r.read_exact(&mut buf).map_err(|e| self.corrupt(at, format!("reading {len}-byte {kind:?} frame: {e}")))?;
        self.offset += 4 + len as u64;
        codec::open(kind, &buf).map_err(|e| self.corrupt(at, format!("{kind:?} frame: {e}")))
    }

    /// Reads the state (the frame after the header).
    pub fn state(&mut self) -> Result<ClusterState, StoreError> {
        let mut s: ClusterState = self.frame(RecordKind::ClusterState)?;
        s.rebuild_indexes();
        if s.revision() != self.header.revision {
            return Err(self.corrupt(
                self.offset,
                format!("state is at revision {}, header says {}", s.revision(), self.header.revision),
            ));
        }
        Ok(s)
    }

    /// Reads the next migration record (after the state); `None` after the last one.
    pub fn next_migration(&mut self) -> Result<Option<Migration>, StoreError> {
        if self.migrations_read == self.header.migration_count {
            return Ok(None);
        }
        self.migrations_read += 1;
        self.frame(RecordKind::Migration).map(Some)
    }

    /// Reads the next event (after the migrations); `None` after the last one (and checks
    /// nothing follows it).
    pub fn next_event(&mut self) -> Result<Option<Event>, StoreError> {
        assert_eq!(self.migrations_read, self.header.migration_count, "read the migrations before the events");
        if self.events_read == self.header.event_count {
            let mut probe = [0u8; 1];
            return match self.r.read(&mut probe) {
                Ok(0) => Ok(None),
                Ok(_) => Err(self.corrupt(self.offset, "unexpected bytes after the last event")),
                Err(e) => Err(self.corrupt(self.offset, e.to_string())),
            };
        }
        let e: Event = self.frame(RecordKind::Event)?;
        let expected = self.header.first_event + self.events_read;
        if e.revision != expected {
            return Err(self.corrupt(self.offset, format!("event has revision {}, expected {expected}", e.revision)));
        }
        self.events_read += 1;
        Ok(Some(e))
    }
}
