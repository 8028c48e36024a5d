//! Inspecting a stopped coordinator's data directory (`log verify`, `log export --data-dir`)
//! changes nothing in it: not its files, not their bytes. A directory missing a column family
//! is refused with what is wrong, and left as it was.
mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;

use openraft::storage::RaftStateMachine;
use switchyard_storage::export::{self, Until};
use switchyard_storage::DataDir;

/// Every file under `dir` with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn reading_a_data_directory_changes_nothing_in_it() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (mut log, mut sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
        let all = entries(1, workload(5));
        use openraft::storage::RaftLogStorageExt;
        log.blocking_append(all.clone()).await.unwrap();
        sm.apply(all).await.unwrap();
        // Closed with the writes in the write-ahead log only: a read-write open would replay
        // them into new table files and a new manifest.
    }
    let before = tree(tmp.path());
    let (report, loaded) = export::read_data_dir(tmp.path(), Until::default(), |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(loaded.expect("the stored state loads").revision(), report.state.revision());
    assert!(report.state.revision() > 0);
    let after = tree(tmp.path());
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>(), "files were added or removed");
    for (name, bytes) in &before {
        assert!(after[name] == *bytes, "{name} changed");
    }
}

/// (A running coordinator's directory is refused too: `tests/tests/recovery_log.rs` shows it
/// with a real coordinator process, since a process does not see its own locks.)
#[test]
fn a_directory_missing_a_column_family_is_reported_not_completed() {
    let bare = tempfile::tempdir().unwrap();
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        drop(rocksdb::DB::open(&opts, bare.path().join("db")).unwrap());
    }
    let err = DataDir::open_read_only(bare.path()).unwrap_err().to_string();
    assert!(err.contains("has no column family"), "{err}");
    assert_eq!(rocksdb::DB::list_cf(&rocksdb::Options::default(), bare.path().join("db")).unwrap(), ["default"]);
    assert!(!bare.path().join("snapshots").exists(), "nothing is created");
}
