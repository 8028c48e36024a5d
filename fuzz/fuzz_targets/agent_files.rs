//! An agent's data directory after a crash, a bad disk or a hostile edit: a guest file, a
//! migration journal, the cursor, the started-guests record and the cluster id hold the fuzzed
//! bytes. Loading must report or move the damage aside, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_agent::store::AgentStore;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    let dir = tempfile::tempdir().expect("a scratch directory");
    let store = AgentStore::open(dir.path()).expect("a fresh store opens");
    let path = match which % 5 {
        0 => dir.path().join("guests").join("g1.json"),
        1 => dir.path().join("migrations").join("4.json"),
        2 => dir.path().join("cursor"),
        3 => dir.path().join("started.json"),
        _ => dir.path().join("cluster"),
    };
    std::fs::write(&path, bytes).expect("write the fuzzed file");
    let _ = store.load();
    let _ = store.journals();
    let _ = store.cursor();
    let _ = store.started();
    let _ = store.cluster();
});
