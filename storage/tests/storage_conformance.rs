//! openraft's storage conformance suite against the real RocksDB store.

use openraft::testing::{StoreBuilder, Suite};
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
