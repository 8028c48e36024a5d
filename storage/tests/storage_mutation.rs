//! The readers of files that cross a trust boundary — snapshot files (a peer's, or one copied
//! in by an operator) and exports (`log verify|replay|restore`) — fed valid files mutated at
//! random: bytes flipped, runs overwritten, the file cut short, a chunk repeated, a length
//! field set huge. Every mutation must end in a value or a clear error, never a panic or an
//! allocation the file cannot back. (The decoders without RocksDB are fuzzed, coverage-guided,
//! in `fuzz/`; these two live in the store and get this instead: docs/fuzzing.md.)
//! `SWITCHYARD_SEED` replays the mutations.
mod common;
use common::*;

use switchyard_storage::export::{read_export, ExportHeader, ExportWriter, Format, Until};
use switchyard_storage::snapshot::SnapshotReader;

/// One random mutation of `bytes`, and what it was.
fn mutate(bytes: &[u8], r: &mut Lcg) -> (Vec<u8>, String) {
    let mut b = bytes.to_vec();
    let len = b.len() as u64;
    let at = r.below(len) as usize;
    let what = match r.below(6) {
        0 => {
            b[at] ^= 1 << r.below(8);
            format!("bit flipped at {at}")
        }
        1 => {
            let n = (1 + r.below(16)) as usize;
            for x in b.iter_mut().skip(at).take(n) {
                *x = r.below(256) as u8;
            }
            format!("{n} bytes overwritten at {at}")
        }
        2 => {
            b.truncate(at);
            format!("cut at {at}")
        }
        3 => {
            let n = (1 + r.below(64)) as usize;
            let chunk: Vec<u8> = b.iter().skip(at).take(n).copied().collect();
            let to = r.below(len) as usize;
            b.splice(to..to, chunk);
            format!("{n} bytes from {at} repeated at {to}")
        }
        4 => {
            let end = (at + 4).min(b.len());
            for x in &mut b[at..end] {
                *x = 0xff;
            }
            format!("a length-sized field at {at} set to 0xffffffff")
        }
        _ => {
            let n = (1 + r.below(32)) as usize;
            let end = (at + n).min(b.len());
            b.drain(at..end);
            format!("{n} bytes removed at {at}")
        }
    };
    (b, what)
}

/// Runs `read` on `rounds` mutations of `valid`; a panic fails with the seed and the mutation.
fn never_panics(test: &str, valid: &[u8], rounds: u32, read: impl Fn(&[u8])) {
    let mut r = Lcg(seed(test));
    for round in 0..rounds {
        let (bytes, what) = mutate(valid, &mut r);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&bytes)));
        assert!(
            outcome.is_ok(),
            "{test}: round {round}: the reader panicked, or let a change through unreported, on a file with {what}"
        );
    }
}

#[tokio::test]
async fn mutated_snapshot_files_are_refused_or_read_never_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = with_snapshot(tmp.path()).await;
    let valid = std::fs::read(&snap).unwrap();
    let scratch = tmp.path().join("mutated.bin");
    let read_all = |bytes: &[u8]| {
        std::fs::write(&scratch, bytes).unwrap();
        let Ok(mut reader) = SnapshotReader::open(&scratch) else { return };
        if reader.state().is_err() {
            return;
        }
        while let Ok(Some(_)) = reader.next_migration() {}
        while let Ok(Some(_)) = reader.next_event() {}
    };
    read_all(&valid);
    never_panics("mutated_snapshot_files", &valid, 400, read_all);
}

#[test]
fn mutated_exports_are_reported_never_a_panic() {
    let (_, events) = reference(&entries(1, workload(8)));
    for format in [Format::Binary, Format::JsonLines] {
        let header = ExportHeader {
            source: "test".into(),
            cluster: None,
            first_revision: 1,
            last_revision: events.len() as u64,
            exported_at: switchyard_protocol::model::Timestamp(1),
            format: switchyard_storage::export::EXPORT_FORMAT,
        };
        let mut valid = Vec::new();
        let mut w = ExportWriter::new(&mut valid, format, &header).unwrap();
        for e in &events {
            w.push(e).unwrap();
        }
        w.finish().unwrap();
        let clean = read_export(std::io::Cursor::new(&valid), Until::default(), |_| {}).unwrap();
        assert!(clean.problems.is_empty(), "{:?}", clean.problems);
        // A mutation the reader does not report must have left the history as it was (a JSON
        // export may take a changed space; a binary one's checksums and chain see every byte).
        never_panics("mutated_exports", &valid, 600, |bytes| {
            if let Ok(r) = read_export(std::io::Cursor::new(bytes), Until::default(), |_| {}) {
                if r.problems.is_empty() {
                    assert_eq!(
                        (r.events, &r.state),
                        (clean.events, &clean.state),
                        "an unreported change of the history"
                    );
                }
            }
        });
    }
}
