//! openraft's storage conformance suite against the real RocksDB store, and the log's tail of
//! recent entries against RocksDB.

mod common;
use common::*;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, LogId};
use switchyard_storage::{LogStore, StateMachineStore, StorageError, TypeConfig};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let (log, sm) = switchyard_storage::open(dir.path(), 1).expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(RocksBuilder).expect("conformance suite");
}

/// The store answers reads of recent entries from a tail it keeps in memory. Through random
/// appends, truncations, purges and restarts (a new store over the same data directory starts
/// with an empty tail), every read — whole ranges and replication's limited ones, inside,
/// across and outside the tail — must give what a store reading RocksDB alone gives.
#[tokio::test]
async fn the_tail_of_recent_entries_reads_as_rocksdb_does() {
    let mut r = Lcg(seed("the_tail_of_recent_entries_reads_as_rocksdb_does"));
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
    let mut rocks = LogStore::new(log.data_dir().clone());
    let commands = workload(4);
    let id = |index: u64| LogId::new(CommittedLeaderId::new(1, 1), index);
    let (mut purged, mut next) = (0u64, 1u64);
    for step in 0..400 {
        let held = next - purged - 1;
        match r.below(20) {
            0 if held > 0 => {
                let at = purged + 1 + r.below(held);
                log.truncate(id(at)).await.unwrap();
                next = at;
            }
            1 if held > 0 => {
                let through = purged + 1 + r.below(held);
                log.purge(id(through)).await.unwrap();
                purged = through;
            }
            2 => log = LogStore::new(log.data_dir().clone()),
            _ => {
                let k = 1 + r.below(8) as usize;
                let from = r.below(commands.len() as u64) as usize;
                let batch: Vec<_> = commands.iter().cycle().skip(from).take(k).cloned().collect();
                log.blocking_append(entries(next, batch)).await.unwrap();
                next += k as u64;
            }
        }
        for _ in 0..4 {
            let a = 1 + r.below(next + 2);
            let b = a + r.below(next + 4 - a);
            let got = log.read_range(a..b).unwrap();
            let want = rocks.read_range(a..b).unwrap();
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "step {step}: read_range({a}..{b})");
            let got = log.limited_get_log_entries(a, b).await.unwrap();
            let want = rocks.limited_get_log_entries(a, b).await.unwrap();
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "step {step}: limited_get_log_entries({a}, {b})");
        }
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index).unwrap_or(0), if next - 1 > purged { next - 1 } else { purged });
    }
}
