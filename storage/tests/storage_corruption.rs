//! A flipped byte in any stored record is reported with what and where, never decoded as
//! garbage and never a panic.
mod common;
use common::*;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::RaftLogReader;
use switchyard_storage::{DataDir, LogStore, StateMachineStore};

/// Flips one bit in the middle of the value at `key` in column family `family`.
fn flip(path: &std::path::Path, family: &str, key: &[u8]) {
    let db = raw_db(path);
    let cf = db.cf_handle(family).unwrap();
    let mut v = db.get_cf(cf, key).unwrap().expect("record exists");
    let at = v.len() / 2;
    v[at] ^= 0x10;
    db.put_cf(cf, key, v).unwrap();
}

async fn filled(path: &std::path::Path) {
    let (mut log, mut sm) = switchyard_storage::open(path, 1).unwrap();
    let all = entries(1, workload(6));
    log.blocking_append(all.clone()).await.unwrap();
    sm.apply(all).await.unwrap();
    log.save_vote(&openraft::Vote::new(3, 1)).await.unwrap();
}

#[tokio::test]
async fn corrupt_log_entry_names_column_family_and_index() {
    let tmp = tempfile::tempdir().unwrap();
    filled(tmp.path()).await;
    flip(tmp.path(), "log", &3u64.to_be_bytes());
    let mut log = LogStore::new(DataDir::open(tmp.path(), 1).unwrap());
    let err = log.try_get_log_entries(1..=8).await.unwrap_err().to_string();
    assert!(err.contains("column family `log` at index 3") && err.contains("checksum mismatch"), "{err}");
    // Entries before the corrupt one are still readable, and nothing was changed.
    assert_eq!(log.try_get_log_entries(1..3).await.unwrap().len(), 2);
    assert!(log.try_get_log_entries(3..4).await.is_err());
}

#[tokio::test]
async fn corrupt_event_is_named_and_refuses_restart() {
    let tmp = tempfile::tempdir().unwrap();
    filled(tmp.path()).await;
    flip(tmp.path(), "events", &4u64.to_be_bytes());
    let err = match switchyard_storage::open(tmp.path(), 1) {
        Ok(_) => panic!("a corrupt history must not be replayed"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("column family `events` at revision 4"), "{err}");
}

#[tokio::test]
async fn corrupt_vote_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    filled(tmp.path()).await;
    flip(tmp.path(), "meta", b"vote");
    let mut log = LogStore::new(DataDir::open(tmp.path(), 1).unwrap());
    let err = log.read_vote().await.unwrap_err().to_string();
    assert!(err.contains("column family `meta` at vote"), "{err}");
}

#[tokio::test]
async fn corrupt_migration_record_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, mut sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
    let mut all = entries(1, workload(1));
    all.extend(entries(4, full_migration("g0", 4)));
    log.blocking_append(all.clone()).await.unwrap();
    sm.apply(all).await.unwrap();
    drop((log, sm));
    flip(tmp.path(), "migrations", &4u64.to_be_bytes());
    let sm = StateMachineStore::open(DataDir::open(tmp.path(), 1).unwrap()).unwrap();
    let err = sm.history().migration(switchyard_protocol::MigrationId(4)).unwrap_err().to_string();
    assert!(err.contains("column family `migrations` at migration m4"), "{err}");
}

#[tokio::test]
async fn corrupt_snapshot_file_names_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = with_snapshot(tmp.path()).await;
    let mut bytes = std::fs::read(&snap).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&snap, bytes).unwrap();
    let err = match switchyard_storage::open(tmp.path(), 1) {
        Ok(_) => panic!("a corrupt snapshot must not be loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("corrupt snapshot file")
            && err.contains(snap.file_name().unwrap().to_str().unwrap())
            && err.contains("at byte"),
        "{err}"
    );
}

#[tokio::test]
async fn a_snapshot_frame_claiming_more_than_the_file_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = with_snapshot(tmp.path()).await;
    let mut bytes = std::fs::read(&snap).unwrap();
    // The header frame's length (after the 8-byte magic) says almost 1 GiB: within the decode
    // limit, far past the file.
    bytes[8..12].copy_from_slice(&0x3fff_0000u32.to_be_bytes());
    std::fs::write(&snap, bytes).unwrap();
    let err = match switchyard_storage::open(tmp.path(), 1) {
        Ok(_) => panic!("a corrupt snapshot must not be loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("runs past the end of the file") && err.contains("at byte 8"), "{err}");
}
