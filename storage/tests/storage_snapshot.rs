//! Restart, snapshot build and install, and the identity of a data directory.
mod common;
use common::*;

use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::RaftLogReader;
use switchyard_protocol::codec;
use switchyard_storage::{DataDir, StoreError, DISK_FORMAT_VERSION};

async fn filled(path: &std::path::Path) -> Vec<switchyard_storage::Entry> {
    let (mut log, mut sm) = switchyard_storage::open(path, 1).unwrap();
    let mut all = entries(1, workload(5));
    let next = all.len() as u64 + 1;
    // The request will be the event after the 2 hosts and 5 guests: revision 8.
    all.extend(entries(next, full_migration("g0", 8)));
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(all.clone()).await.unwrap();
    sm.apply(all.clone()).await.unwrap();
    all
}

/// A leader's data directory, filled, keeping 3 revisions of history, compacted by a snapshot
/// build; answers its entries, the state and events they make, and its open state machine.
async fn compacted_leader(
    path: &std::path::Path,
) -> (
    Vec<switchyard_storage::Entry>,
    switchyard_protocol::ClusterState,
    Vec<switchyard_protocol::Event>,
    switchyard_storage::StateMachineStore,
) {
    let all = filled(path).await;
    let (want_state, want_events) = reference(&all);
    let (_, mut leader) = switchyard_storage::open(path, 1).unwrap();
    leader.set_retention(3);
    leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    (all, want_state, want_events, leader)
}

#[tokio::test]
async fn restart_restores_state_from_snapshot_plus_history() {
    let tmp = tempfile::tempdir().unwrap();
    let mut all = filled(tmp.path()).await;
    {
        let (mut log, mut sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        // More history after the snapshot.
        let more = entries(all.len() as u64 + 1, full_migration("g1", 18));
        use openraft::storage::RaftLogStorageExt;
        log.blocking_append(more.clone()).await.unwrap();
        sm.apply(more.clone()).await.unwrap();
        all.extend(more);
        // The log can be purged up to the snapshot without losing anything.
        log.purge(all[all.len() - 8].log_id).await.unwrap();
    }
    let (mut log, sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
    let (want_state, want_events) = reference(&all);
    assert_eq!(sm.read(codec::encode), codec::encode(&want_state));
    // The indexes too (the encoding leaves them out): the remembered request ids that make a
    // retried request after the restart an answer, not a second commit.
    assert_eq!(sm.read(|s| s.clone()), want_state);
    assert_eq!(sm.history().events_from(1, usize::MAX).unwrap(), want_events);
    assert_eq!(sm.applied_meta().last_applied, Some(all.last().unwrap().log_id));
    assert_eq!(log.try_get_log_entries(0..).await.unwrap().len(), 7, "purged entries stay purged");
    // Migration history is indexed and survives.
    let ids = sm.history().migrations_of_guest(&n("g1"), 10).unwrap();
    assert_eq!(ids.len(), 1);
    let m = sm.history().migration(ids[0]).unwrap().unwrap();
    assert_eq!(m.phase, switchyard_protocol::Phase::Completed);
    assert_eq!(m.history.len(), 7);
    assert_eq!(sm.history().migrations_of_host(&n("h2"), 10).unwrap().len(), 2);
}

#[tokio::test]
async fn installed_snapshot_gives_a_follower_state_then_the_history_is_backfilled() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let all = filled(leader_dir.path()).await;
    let (_, mut leader) = switchyard_storage::open(leader_dir.path(), 1).unwrap();
    let snap = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let meta = snap.meta.clone();
    let (want_state, want_events) = reference(&all);
    let last = want_events.last().unwrap().revision;

    // The snapshot holds the state and the migration records, not the history.
    let file = std::fs::read_dir(leader_dir.path().join("snapshots")).unwrap().next().unwrap().unwrap().path();
    let mut r = switchyard_storage::snapshot::SnapshotReader::open(&file).unwrap();
    assert_eq!((r.header.event_count, r.header.first_event, r.header.migration_count), (0, last + 1, 1));
    r.state().unwrap();
    assert!(r.next_migration().unwrap().is_some());

    let (_, mut follower) = switchyard_storage::open(follower_dir.path(), 2).unwrap();
    transfer(snap, &mut follower).await;
    assert_eq!(follower.read(codec::encode), codec::encode(&want_state));
    assert_eq!(follower.history().migrations_of_guest(&n("g0"), 10).unwrap().len(), 1);
    assert_eq!(follower.history().bounds().unwrap(), None, "no history yet");
    assert_eq!((follower.history_first().unwrap(), follower.history_floor()), (last + 1, 1));

    // Backfilled from the leader's history, newest first: refused unless it ends right before
    // the history held and is contiguous.
    let leaders = leader.history().events_from(1, usize::MAX).unwrap();
    assert!(follower.backfill(leaders[..leaders.len() - 1].to_vec()).await.is_err(), "a gap before the held history");
    let mut holed = leaders[leaders.len() - 6..].to_vec();
    holed.remove(2);
    assert!(follower.backfill(holed).await.is_err(), "a hole inside");
    let tail = leaders.len() - 5;
    assert_eq!(follower.backfill(leaders[tail..].to_vec()).await.unwrap(), leaders[tail].revision);
    assert_eq!(follower.backfill(leaders[..tail].to_vec()).await.unwrap(), 1);
    assert_eq!(follower.history().events_from(1, usize::MAX).unwrap(), want_events);
    assert_eq!(follower.history_first().unwrap(), 1);
    let current = follower.get_current_snapshot().await.unwrap().expect("kept");
    assert_eq!(current.meta, meta);
    drop(follower);

    // And it survives a restart of the follower.
    let (_, follower) = switchyard_storage::open(follower_dir.path(), 2).unwrap();
    assert_eq!(follower.read(codec::encode), codec::encode(&want_state));
    assert_eq!(follower.applied_meta().last_applied, meta.last_log_id);
    // Only the current snapshot file is kept.
    let files: Vec<_> = std::fs::read_dir(follower_dir.path().join("snapshots")).unwrap().collect();
    assert_eq!(files.len(), 1, "{files:?}");
}

#[test]
fn data_directory_is_bound_to_its_node_id() {
    let tmp = tempfile::tempdir().unwrap();
    drop(DataDir::open(tmp.path(), 1).unwrap());
    let err = DataDir::open(tmp.path(), 2).unwrap_err();
    assert!(matches!(err, StoreError::NodeIdMismatch { found: 1, expected: 2, .. }), "{err}");
    assert!(err.to_string().contains("belongs to node 1, not node 2"), "{err}");
    DataDir::open(tmp.path(), 1).expect("the owner may reopen it");
}

#[test]
fn unknown_format_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(DataDir::open(tmp.path(), 1).unwrap());
    {
        let db = raw_db(tmp.path());
        let meta = db.cf_handle("meta").unwrap();
        db.put_cf(meta, b"format_version", codec::seal(codec::RecordKind::FormatVersion, &99u32)).unwrap();
    }
    let err = DataDir::open(tmp.path(), 1).unwrap_err();
    assert!(
        matches!(err, StoreError::UnsupportedFormat { found: 99, supported, .. } if supported == DISK_FORMAT_VERSION),
        "{err}"
    );
}

#[tokio::test]
async fn compacted_history_still_restarts_and_installs_with_migration_history() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let (_, want_state, want_events, leader) = compacted_leader(leader_dir.path()).await;
    let last = want_events.last().unwrap().revision;
    assert_eq!(leader.history().bounds().unwrap(), Some((last - 2, last)), "only the last 3 revisions kept");
    drop(leader);
    // Restart from snapshot + the retained tail.
    let (_, mut leader) = switchyard_storage::open(leader_dir.path(), 1).unwrap();
    assert_eq!(leader.read(codec::encode), codec::encode(&want_state));
    // A snapshot built now carries the compacted history plus the migration records.
    let snap = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let (_, mut follower) = switchyard_storage::open(follower_dir.path(), 2).unwrap();
    transfer(snap, &mut follower).await;
    assert_eq!(follower.read(codec::encode), codec::encode(&want_state));
    // What the leader retained is all a backfill finds.
    follower.backfill(leader.history().events_from(1, usize::MAX).unwrap()).await.unwrap();
    assert_eq!(follower.history().events_from(1, usize::MAX).unwrap(), want_events[want_events.len() - 3..].to_vec());
    let ids = follower.history().migrations_of_guest(&n("g0"), 10).unwrap();
    assert_eq!(ids.len(), 1, "the migration requested before the retained history is still known");
    let m = follower.history().migration(ids[0]).unwrap().unwrap();
    assert_eq!((m.phase, m.history.len()), (switchyard_protocol::Phase::Completed, 7));
    assert_eq!(follower.history().migrations_of_host(&n("h1"), 10).unwrap(), ids);
}

/// A follower that applied the start of the history installs a snapshot: its own older events
/// go, so its history is one range (a subscriber from before it is told `compacted`, not led
/// into a hole) until the backfill extends it downwards, and it restarts.
#[tokio::test]
async fn a_snapshot_installed_over_older_history_leaves_no_hole() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let (all, want_state, want_events, mut leader) = compacted_leader(leader_dir.path()).await;
    let last = want_events.last().unwrap().revision;
    // The first build compacted the history; the second carries only what is left.
    let snap = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    {
        let (mut log, mut follower) = switchyard_storage::open(follower_dir.path(), 2).unwrap();
        use openraft::storage::RaftLogStorageExt;
        log.blocking_append(all[..3].to_vec()).await.unwrap();
        follower.apply(all[..3].to_vec()).await.unwrap();
        assert_eq!(follower.history().bounds().unwrap().map(|(first, _)| first), Some(1));
        transfer(snap, &mut follower).await;
        assert_eq!(follower.history().bounds().unwrap(), None, "its own older events went");
        assert_eq!(follower.history_first().unwrap(), last + 1);
    }
    let (_, follower) = switchyard_storage::open(follower_dir.path(), 2).unwrap();
    assert_eq!(follower.read(codec::encode), codec::encode(&want_state));
    assert_eq!(follower.history().bounds().unwrap(), None);
    follower.backfill(want_events[want_events.len() - 3..].to_vec()).await.unwrap();
    assert_eq!(follower.history().bounds().unwrap(), Some((last - 2, last)));
}

/// Waits until the data directory holds `count` checkpoints; answers them, newest first.
async fn checkpoints(path: &std::path::Path, count: usize) -> Vec<(u64, std::path::PathBuf)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let found = switchyard_storage::checkpoint::files(path);
        if found.len() >= count {
            return found;
        }
        assert!(std::time::Instant::now() < deadline, "{count} checkpoints never appeared: {found:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn restart_starts_from_the_newest_sound_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let all = {
        let (mut log, mut sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
        sm.set_checkpoint_every(4);
        let mut all = entries(1, workload(12));
        let next = all.len() as u64 + 1;
        all.extend(entries(next, full_migration("g0", 15)));
        use openraft::storage::RaftLogStorageExt;
        log.blocking_append(all.clone()).await.unwrap();
        // One entry at a time, each waiting for the checkpoint it started, so that a checkpoint
        // is taken every 4 events or so.
        let mut base = 0;
        for e in &all {
            sm.apply(vec![e.clone()]).await.unwrap();
            let rev = sm.applied_meta().revision;
            if rev >= base + 4 {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while sm.checkpoint_at() < rev {
                    assert!(std::time::Instant::now() < deadline, "no checkpoint at {rev}");
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                base = rev;
            }
        }
        all
    };
    let (want_state, want_events) = reference(&all);
    let found = checkpoints(tmp.path(), 2).await;
    assert_eq!(found.len(), 2, "only the newest two checkpoints are kept: {found:?}");
    let (newest, older) = (found[0].clone(), found[1].clone());
    assert!(newest.0 > older.0 && newest.0 <= want_state.revision());

    // A restart starts from the newest checkpoint and replays only what follows it.
    let (_, sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
    assert_eq!(sm.restart_base(), newest.0);
    assert_eq!(sm.read(codec::encode), codec::encode(&want_state));
    assert_eq!(sm.read(|s| s.clone()), want_state, "indexes included");
    assert_eq!(sm.history().events_from(1, usize::MAX).unwrap(), want_events);
    drop(sm);

    // A damaged newest checkpoint is skipped for the older one, with the same result.
    let mut bytes = std::fs::read(&newest.1).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&newest.1, bytes).unwrap();
    let (_, sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
    assert_eq!(sm.restart_base(), older.0);
    assert_eq!(sm.read(codec::encode), codec::encode(&want_state));
    drop(sm);

    // A checkpoint beyond what the applied meta says was applied (the unsynced apply batch lost
    // in a crash) is not used: the start replays from an older base instead.
    let ahead = tmp.path().join("checkpoints").join(format!("state-{:020}.bin", want_state.revision() + 100));
    std::fs::copy(&older.1, &ahead).unwrap();
    std::fs::remove_file(&older.1).unwrap();
    let (_, sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
    assert_eq!(sm.restart_base(), 0, "no sound checkpoint left: replay from the beginning");
    assert_eq!(sm.read(codec::encode), codec::encode(&want_state));
}

/// What replication sends in one AppendEntries is capped in bytes (openraft 0.9 gives the RPC
/// one heartbeat interval whatever it carries): large entries go a few at a time, a single entry
/// larger than the cap still goes alone, and successive reads cover the whole range in order.
#[tokio::test]
async fn replication_reads_are_capped_in_bytes() {
    use openraft::storage::RaftLogStorageExt;
    use switchyard_protocol::{Command, GuestSpec, RunState};
    use switchyard_storage::log_store::APPEND_BYTES_MAX;
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = switchyard_storage::open(tmp.path(), 1).unwrap();
    // Guests with ≈ 100 KiB of disk names each; one of ≈ 1 MiB, more than the cap on its own.
    let guest = |i: usize, disks: usize| Command::CreateGuest {
        name: n(&format!("big{i}")),
        spec: GuestSpec {
            vcpus: 1,
            memory_mib: 256,
            disks: (0..disks).map(|d| format!("avio_stor:/dev/vg{i:04}/lv{d:05}-{}", "x".repeat(80))).collect(),
            networks: vec![],
            online_migration: true,
            cluster_node: false,
            package: None,
            anti_affinity: None,
        },
        owner: n("h1"),
        run_state: RunState::Running,
    };
    let mut cmds: Vec<Command> = (0..30).map(|i| guest(i, 1000)).collect();
    cmds.insert(12, guest(99, 10_000));
    let all = entries(1, cmds);
    log.blocking_append(all.clone()).await.unwrap();
    let mut reader = log.get_log_reader().await;
    let (mut next, end) = (1u64, all.len() as u64 + 1);
    let mut reads = 0;
    while next < end {
        let got = reader.limited_get_log_entries(next, end).await.unwrap();
        assert!(!got.is_empty(), "a read of a non-empty range returns at least one entry");
        assert_eq!(got[0].log_id.index, next, "reads continue where the last one stopped");
        let bytes: usize = got.iter().map(|e| codec::encode(e).len()).sum();
        assert!(got.len() == 1 || bytes <= APPEND_BYTES_MAX + 1024, "{} entries, {bytes} bytes", got.len());
        next = got.last().unwrap().log_id.index + 1;
        reads += 1;
    }
    assert!(reads >= 7, "3 MiB of entries need several reads under a 512 KiB cap, took {reads}");
    // Without a cap in the way (the plain range read) everything comes at once.
    assert_eq!(reader.try_get_log_entries(1..end).await.unwrap().len(), all.len());
}
