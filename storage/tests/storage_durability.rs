//! Every durability point of the openraft storage contract fsyncs RocksDB's write-ahead log
//! before it returns (RAFT_STORAGE_RULES §1, §2, §6). A SIGKILL test cannot show this (the page
//! cache survives a killed process), so the WAL-sync counter is checked around each call.

mod common;
use common::*;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, LogId, Vote};

#[tokio::test]
async fn vote_append_truncate_and_purge_sync_the_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
    let syncs = |log: &switchyard_storage::LogStore| log.data_dir().wal_syncs();

    let before = syncs(&log);
    log.save_vote(&Vote::new(2, 1)).await.unwrap();
    assert!(syncs(&log) > before, "save_vote returned before the vote was synced");

    let before = syncs(&log);
    log.blocking_append(entries(1, workload(8))).await.unwrap();
    assert!(syncs(&log) > before, "append reported entries flushed before syncing them");

    let before = syncs(&log);
    log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 8)).await.unwrap();
    assert!(syncs(&log) > before, "truncate returned before syncing");

    let before = syncs(&log);
    log.purge(LogId::new(CommittedLeaderId::new(1, 1), 3)).await.unwrap();
    assert!(syncs(&log) > before, "purge returned before syncing");

    // And the results are what the contract says.
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(7));
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
}

#[tokio::test]
async fn the_counter_can_tell_an_unsynced_write() {
    // Guards the test above: a write that is not synced must not move the counter.
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
    let before = log.data_dir().wal_syncs();
    log.save_committed(Some(LogId::new(CommittedLeaderId::new(1, 1), 1))).await.unwrap();
    assert_eq!(log.data_dir().wal_syncs(), before);
}
