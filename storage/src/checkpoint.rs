//! State checkpoints: the cluster state alone, written every so many events, so that a restart
//! replays a bounded number of events from the history.
//!
//! Why: the state is rebuilt at start from a base plus the events after it. The only base used
//! to be the Raft snapshot, which openraft takes every `snapshot_logs_since_last` *log entries*;
//! an entry may carry thousands of events (a batch of proposals, an import chunk of `log
//! restore`), so snapshots may be far apart in events. A checkpoint costs O(state): with
//! 100 000 guests it is ≈ 20 MiB written on a blocking thread, against a replay of ≈ 1 M
//! events/s it saves.
//!
//! A checkpoint is a snapshot file ([`crate::snapshot`], sealed frames) that carries no
//! migrations and no events, named after its revision in `<data_dir>/checkpoints/`. It is only a
//! shortcut, never the record: it is used at start if it is newer than the snapshot's state and
//! not newer than what the applied meta says was applied (the apply batch is not synced, so a
//! crash may leave the meta behind a checkpoint written after it; such a checkpoint is skipped).
//! A damaged one is logged and skipped, and the start falls back to an older base.

use std::path::{Path, PathBuf};

use switchyard_protocol::{ClusterState, Revision};

use crate::db::DataDir;
use crate::error::StoreError;
use crate::snapshot::{self, SnapshotHeader, SnapshotReader};
use crate::state_machine::AppliedMeta;
use crate::types::SnapshotMeta;

/// Events applied between two checkpoints, unless set otherwise
/// ([`crate::StateMachineStore::set_checkpoint_every`]).
pub const DEFAULT_EVERY: u64 = 500_000;

/// Checkpoints kept (the newest ones): an older one is the fallback if the newest is damaged.
const KEEP: usize = 2;

const PREFIX: &str = "state-";
const SUFFIX: &str = ".bin";

fn folder_of(data_dir: &Path) -> PathBuf {
    data_dir.join("checkpoints")
}

fn revision_of(name: &str) -> Option<Revision> {
    name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?.parse().ok()
}

/// The checkpoint files of the data directory at `data_dir`, with their revisions, newest first.
pub fn files(data_dir: &Path) -> Vec<(Revision, PathBuf)> {
    let mut found: Vec<(Revision, PathBuf)> = std::fs::read_dir(folder_of(data_dir))
        .map(|entries| {
            entries.flatten().filter_map(|e| Some((revision_of(e.file_name().to_str()?)?, e.path()))).collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found
}

/// Writes a checkpoint of `state` (applied as `meta` says) durably, then removes all but the
/// newest [`KEEP`] checkpoints.
pub(crate) fn write(dir: &DataDir, meta: &AppliedMeta, state: &ClusterState) -> Result<(), StoreError> {
    let folder = folder_of(dir.path());
    std::fs::create_dir_all(&folder)
        .map_err(|e| StoreError::io(format!("create checkpoint directory {}", folder.display()), e))?;
    let revision = state.revision();
    let header = SnapshotHeader {
        meta: SnapshotMeta {
            last_log_id: meta.last_applied,
            last_membership: meta.membership.clone(),
            snapshot_id: format!("checkpoint-{revision}"),
        },
        revision,
        first_event: revision + 1,
        event_count: 0,
        migration_count: 0,
    };
    let path = folder.join(format!("{PREFIX}{revision:020}{SUFFIX}"));
    snapshot::write_file(&path, &header, state, &[], std::iter::empty())?;
    for (_, old) in files(dir.path()).into_iter().skip(KEEP) {
        // Best effort: a leftover file is only wasted space, removed after the next checkpoint.
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::warn!(path = %old.display(), error = %e, "could not remove an old checkpoint");
        }
    }
    Ok(())
}

/// The newest readable checkpoint whose revision is in `(after, up_to]`, if any.
pub(crate) fn newest(dir: &DataDir, after: Revision, up_to: Revision) -> Option<ClusterState> {
    for (revision, path) in files(dir.path()) {
        if revision <= after {
            break;
        }
        if revision > up_to {
            tracing::info!(revision, applied = up_to, "skipping a checkpoint beyond the applied revision");
            continue;
        }
        match SnapshotReader::open(&path).and_then(|mut r| r.state()) {
            Ok(state) if state.revision() == revision => return Some(state),
            Ok(state) => tracing::warn!(
                path = %path.display(),
                revision = state.revision(),
                "checkpoint holds another revision than its name says; skipped"
            ),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "damaged checkpoint skipped"),
        }
    }
    None
}
