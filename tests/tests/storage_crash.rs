//! Crash safety of the Raft log and the state machine under SIGKILL.
//!
//! A child process appends and applies workload entries; the parent kills it with SIGKILL at
//! random moments, many times. After every kill the data directory is reopened and checked:
//! every entry whose append was acknowledged is present and intact, the log has no hole, and the
//! state machine reopens to a consistent revision. At the end the recovered state and history are
//! compared byte for byte with a pure in-memory run of the same workload.
//!
//! The child flushes its memtables every few entries, so its write-ahead log moves on to new
//! files and then to recycled ones (`storage/src/db.rs`, `WAL_RECYCLED`): kills land in WAL
//! files that still hold an earlier file's records past the new ones, and recovery must stop
//! where the new records end. The test checks from RocksDB's own log that files were recycled.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::EntryPayload;
use switchyard_protocol::{codec, ClusterState};
use switchyard_testkit::rng::{seed, Lcg};
use switchyard_tests::fixtures::{workload_entry, workload_proposal};

const LAST_INDEX: u64 = 3000;
const ROUNDS: usize = 25;

fn run_child_until_killed(dir: &std::path::Path, rng: &mut Lcg) -> u64 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_log_append_child"))
        .arg(dir)
        .arg(LAST_INDEX.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Kill after a random number of acknowledged appends (0: during start-up and recovery), at
    // a random point in the step after it.
    let kill_after = rng.next(25);
    let mut acked = 0u64;
    let mut seen = 0u64;
    while seen < kill_after {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                if let Some(n) = line.strip_prefix("appended ") {
                    acked = n.parse().expect("index");
                    seen += 1;
                }
            }
            Err(_) => break, // child finished the workload (or died on its own)
        }
    }
    if rng.next(2) == 0 {
        std::thread::yield_now();
    }
    let _ = child.kill(); // SIGKILL on Unix
    let _ = child.wait();
    // Acks that raced with the kill still count: they were printed after a durable append.
    while let Ok(line) = rx.try_recv() {
        if let Some(n) = line.strip_prefix("appended ") {
            acked = acked.max(n.parse().expect("index"));
        }
    }
    reader.join().expect("reader thread");
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_entries_survive_sigkill() {
    let mut rng = Lcg(seed("acknowledged_entries_survive_sigkill"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node1");
    let mut acked_max = 0;
    for round in 0..ROUNDS {
        let acked = run_child_until_killed(&dir, &mut rng);
        acked_max = acked_max.max(acked);
        let (mut log, mut sm) =
            switchyard_storage::open(&dir, 1).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let state = log.get_log_state().await.unwrap();
        let last = state.last_log_id.map_or(0, |l| l.index);
        assert!(last >= acked_max, "round {round}: acknowledged entry {acked_max} lost, log ends at {last}");
        let entries = log.read_range(1..=last).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(entries.len() as u64, last, "round {round}: hole in the log");
        for (i, e) in entries.iter().enumerate() {
            let want = workload_entry(i as u64 + 1);
            assert_eq!(e.log_id, want.log_id, "round {round}");
            match (&e.payload, &want.payload) {
                (EntryPayload::Normal(a), EntryPayload::Normal(b)) => {
                    assert_eq!(a, b, "round {round}: entry {} differs", i + 1)
                }
                _ => panic!("round {round}: entry {} has the wrong kind", i + 1),
            }
        }
        let applied = sm.applied_state().await.unwrap().0.map_or(0, |l| l.index);
        println!("round {round}: acknowledged {acked}, log ends at {last}, applied {applied}");
        assert!(applied <= last, "round {round}: applied {applied} beyond the log end {last}");
        if acked_max >= LAST_INDEX {
            break;
        }
    }

    // Finish the workload without faults, then compare with a pure run.
    let (mut log, mut sm) = switchyard_storage::open(&dir, 1).unwrap();
    let last = log.get_log_state().await.unwrap().last_log_id.map_or(0, |l| l.index);
    let applied = sm.applied_state().await.unwrap().0.map_or(0, |l| l.index);
    sm.apply(log.read_range(applied + 1..=last).unwrap()).await.unwrap();
    let mut reference = ClusterState::default();
    let mut reference_events = Vec::new();
    for i in 1..=last {
        if let Ok((_, evs)) = switchyard_protocol::apply(&mut reference, &workload_proposal(i), 1) {
            reference_events.extend(evs);
        }
    }
    let recovered = sm.read(codec::encode);
    assert_eq!(recovered, codec::encode(&reference), "recovered state differs from a fault-free run");
    let history = sm.history().events_from(1, usize::MAX).unwrap();
    assert_eq!(history, reference_events, "recovered history differs from a fault-free run");
    assert!(!reference_events.is_empty());
    let reused = recycled_wal_files(&dir.join("db"));
    println!("WAL files written over a recycled file: {reused}");
    assert!(reused > 0, "no WAL file was recycled: the kills cannot have landed in one");
}

/// How many times RocksDB's info logs (the current one and those of earlier opens) say a WAL
/// file was made from a recycled one.
fn recycled_wal_files(db: &std::path::Path) -> usize {
    std::fs::read_dir(db)
        .expect("the database directory")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("LOG"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .map(|text| text.matches("from recycle list").count())
        .sum()
}
