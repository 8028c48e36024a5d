//! Every durability point of the openraft storage contract fsyncs RocksDB's write-ahead log
//! before it returns (RAFT_STORAGE_RULES §1, §2, §6). A SIGKILL test cannot show this (the page
//! cache survives a killed process), so the WAL-sync counter is checked around each call.

mod common;
use common::*;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
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

#[tokio::test]
async fn an_append_is_readable_at_once_and_flushed_only_after_a_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
    log.hold_flushes(true);
    let before = log.data_dir().wal_syncs();
    let appended = {
        let mut log = log.clone();
        tokio::spawn(async move { log.blocking_append(entries(1, workload(3))).await })
    };
    // Readable while its flush is still held back...
    let mut reader = log.get_log_reader().await;
    loop {
        if reader.try_get_log_entries(1..6).await.unwrap().len() == 5 {
            break;
        }
        tokio::task::yield_now().await;
    }
    // ...but not reported durable, and not synced.
    assert!(!appended.is_finished(), "the flush was reported before the WAL was synced");
    assert_eq!(log.data_dir().wal_syncs(), before);
    log.hold_flushes(false);
    appended.await.unwrap().unwrap();
    assert!(log.data_dir().wal_syncs() > before, "append reported entries flushed before syncing them");
}

#[tokio::test]
async fn appends_that_queue_during_a_sync_all_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
    log.hold_flushes(true);
    // One append at a time (openraft never overlaps two), each handing its callback over.
    let mut done = Vec::new();
    for i in 0..20u64 {
        let mut l = log.clone();
        let e = entries(1 + i, workload(0).into_iter().take(1).collect());
        // Submit and wait until written (readable), leaving the flush pending.
        done.push(tokio::spawn(async move { l.blocking_append(e).await }));
        let mut reader = log.clone();
        while reader.try_get_log_entries(1 + i..2 + i).await.unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    }
    let before = log.data_dir().wal_syncs();
    log.hold_flushes(false);
    for d in done {
        d.await.unwrap().unwrap();
    }
    let syncs = log.data_dir().wal_syncs() - before;
    assert!((1..20).contains(&syncs), "20 queued appends took {syncs} syncs: expected them to share");
}

#[tokio::test]
async fn a_dropped_store_can_be_reopened_at_once() {
    // The sync thread must not keep RocksDB (and its lock) alive after the stores are dropped.
    let tmp = tempfile::tempdir().unwrap();
    for round in 0..5u64 {
        let (mut log, sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
        log.blocking_append(entries(1 + round, workload(0).into_iter().take(1).collect())).await.unwrap();
        drop((log, sm));
    }
    let (mut log, _sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
    assert_eq!(log.get_log_state().await.unwrap().last_log_id.map(|l| l.index), Some(5));
}

/// The patched openraft core (vendor/openraft/SWITCHYARD.md) sends a leader's entries before its
/// own flush completes; the leader's copy must still count toward a commit only once flushed. On
/// a single-node cluster the leader's copy is the whole quorum, so nothing may commit while its
/// flushes are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_counts_its_own_copy_only_once_flushed() {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;
    use switchyard_protocol::{Proposal, RequestId, Timestamp};
    use switchyard_storage::{NodeInfo, Proposals};

    let tmp = tempfile::tempdir().unwrap();
    let (log, sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
    let config = Arc::new(openraft::Config::default().validate().unwrap());
    let raft = openraft::Raft::new(1, config, NoPeers, log.clone(), sm).await.unwrap();
    raft.initialize(BTreeMap::from([(1, NodeInfo::default())])).await.unwrap();
    let t = Some(Duration::from_secs(30));
    let m = raft
        .wait(t)
        .metrics(|m| m.current_leader == Some(1) && m.last_applied.map(|l| l.index) == m.last_log_index, "leading")
        .await
        .unwrap();
    let next = m.last_log_index.unwrap() + 1;

    log.hold_flushes(true);
    let write = {
        let raft = raft.clone();
        let proposal = Proposal {
            request_id: RequestId(7),
            actor: "test".into(),
            time: Timestamp(1),
            command: workload(0).remove(0),
        };
        tokio::spawn(async move { raft.client_write(Proposals(vec![proposal])).await })
    };
    raft.wait(t).metrics(|m| m.last_log_index == Some(next), "appended").await.unwrap();
    // What the leader holds committed now (a linearizable read waits for it to be applied).
    let committed = raft.ensure_linearizable().await.unwrap().map(|l| l.index);
    assert!(committed < Some(next), "committed entry {next} on the leader's unflushed copy");
    assert!(!write.is_finished());

    log.hold_flushes(false);
    write.await.unwrap().expect("the write commits once the leader's log is flushed");
    raft.shutdown().await.unwrap();
}

/// A network for a single-node cluster: there is never anyone to call.
struct NoPeers;

impl openraft::network::RaftNetworkFactory<switchyard_storage::TypeConfig> for NoPeers {
    type Network = NoPeers;
    async fn new_client(&mut self, _: u64, _: &switchyard_storage::NodeInfo) -> NoPeers {
        NoPeers
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, openraft::error::RPCError<u64, switchyard_storage::NodeInfo, openraft::error::RaftError<u64, E>>>;

// The error type is openraft's (what `RaftNetwork` must return), not ours to shrink.
#[allow(clippy::result_large_err)]
fn unreachable<T, E: std::error::Error>() -> RpcResult<T, E> {
    Err(openraft::error::RPCError::Unreachable(openraft::error::Unreachable::new(&std::io::Error::other(
        "single-node test cluster",
    ))))
}

impl openraft::network::RaftNetwork<switchyard_storage::TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _: openraft::raft::AppendEntriesRequest<switchyard_storage::TypeConfig>,
        _: openraft::network::RPCOption,
    ) -> RpcResult<openraft::raft::AppendEntriesResponse<u64>> {
        unreachable()
    }
    async fn install_snapshot(
        &mut self,
        _: openraft::raft::InstallSnapshotRequest<switchyard_storage::TypeConfig>,
        _: openraft::network::RPCOption,
    ) -> RpcResult<openraft::raft::InstallSnapshotResponse<u64>, openraft::error::InstallSnapshotError> {
        unreachable()
    }
    async fn vote(
        &mut self,
        _: openraft::raft::VoteRequest<u64>,
        _: openraft::network::RPCOption,
    ) -> RpcResult<openraft::raft::VoteResponse<u64>> {
        unreachable()
    }
}
