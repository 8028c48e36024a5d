//! Recovery tooling on a history of more than 100 000 events made by a real 3-coordinator
//! cluster: `log export` (live, binary and JSON lines; and offline from a stopped coordinator's
//! data directory) → `log verify` → `log replay` gives the live cluster's state digest at the
//! same revision, and `--diff` finds no difference. Damaged exports — truncated, a flipped byte,
//! two records swapped, a record from another export — are each reported with their location.
mod common;

use std::sync::Arc;
use std::time::Instant;

use common::cluster::*;
use serde_json::json;
use switchyard_protocol::api::{FullState, Read};
use switchyard_storage::export::{ExportHeader, ExportRecord, ExportWriter, Format};

const EVENTS: u64 = 100_000;

/// The frames of a binary export: (offset, bytes including the length prefix).
fn frames(bytes: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 8;
    while at + 4 <= bytes.len() {
        let n = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        out.push((at, bytes[at..at + 4 + n].to_vec()));
        at += 4 + n;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_verify_replay_a_100k_history_and_report_damage() {
    let mut cluster = TestCluster::start(3, ClusterOpts::default()).await;
    let admin = Arc::new(cluster.client(&[1, 2, 3]));
    for h in ["h1", "h2"] {
        write_until_acked(&admin, "/v1/hosts", &big_host(h)).await;
    }
    // 32 writers: each creates guests and then keeps modifying them.
    let started = Instant::now();
    let per_writer = EVENTS / 32 + 1;
    let mut tasks = Vec::new();
    for w in 0..32u64 {
        let c = admin.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let g = format!("w{w}g{}", i % 20);
                let r = if i < 20 {
                    c.post::<_, serde_json::Value>(
                        "/v1/guests",
                        &json!({"name": g, "owner": "h1", "vcpus": 1, "memory_mib": 256}),
                    )
                    .await
                } else {
                    c.patch::<_, serde_json::Value>(&format!("/v1/guests/{g}"), &json!({"vcpus": 1 + i % 8})).await
                };
                r.unwrap_or_else(|e| panic!("write {w}/{i}: {e}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let live: Read<FullState> = admin.get("/v1/state").await.unwrap();
    assert!(live.revision >= EVENTS, "only {} events", live.revision);
    eprintln!("{} events written in {:?}", live.revision, started.elapsed());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("history.swylog");
    let f = file.to_str().unwrap();

    let cli = |args: &[&str]| cluster.cli(&[1, 2, 3], ADMIN_TOKEN, args);
    let t = Instant::now();
    let (code, out, err) = cli(&["log", "export", "-f", f]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("revisions 1..={}", live.revision)), "{out}");
    eprintln!("export: {:?}, {} bytes", t.elapsed(), std::fs::metadata(&file).unwrap().len());
    let t = Instant::now();
    let (code, out, err) = cli(&["log", "verify", f]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("clean") && out.contains(&live.items.digest()), "{out}");
    eprintln!("verify: {:?}", t.elapsed());
    let (code, out, _) = cli(&["log", "replay", f, "--digest"]);
    assert_eq!((code, out.trim()), (0, live.items.digest().as_str()), "replayed digest differs from the live state");
    let (code, out, err) = cli(&["log", "replay", f, "--diff"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("identical"), "{out}");
    let (code, out, _) = cli(&["log", "replay", f, "--until", "10"]);
    assert_eq!(code, 0);
    assert!(out.contains("state at revision 10"), "{out}");

    let jsonl = dir.path().join("history.jsonl");
    let (code, _, err) = cli(&["log", "export", "--format", "jsonl", "-f", jsonl.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&["log", "verify", jsonl.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");

    // Offline: a stopped coordinator's data directory.
    cluster.terminate(3);
    let cli = |args: &[&str]| cluster.cli(&[1, 2], ADMIN_TOKEN, args);
    let data = cluster.node(3).dir.join("data");
    let (code, out, err) = cli(&["log", "verify", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&live.items.digest()), "{out}");
    let offline = dir.path().join("offline.swylog");
    let (code, _, err) = cli(&["log", "export", "--data-dir", data.to_str().unwrap(), "-f", offline.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cli(&["log", "replay", offline.to_str().unwrap(), "--digest"]);
    assert_eq!((code, out.trim()), (0, live.items.digest().as_str()));
    // A running coordinator's directory is refused with a hint, not read half-way.
    let running = cluster.node(1).dir.join("data");
    let (code, _, err) = cli(&["log", "verify", running.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("still running"), "{err}");

    // Damage, each reported with its location.
    let bytes = std::fs::read(&file).unwrap();
    let fr = frames(&bytes);
    let damaged = |name: &str, b: &[u8], want: &[&str]| {
        let p = dir.path().join(name);
        std::fs::write(&p, b).unwrap();
        let (code, out, err) = cli(&["log", "verify", p.to_str().unwrap()]);
        assert_eq!(code, 1, "{name}: {out}{err}");
        for w in want {
            assert!(out.contains(w), "{name}: report lacks {w:?}:\n{out}");
        }
        // Written for people: no Rust debug formatting, and no digest of a partial state.
        assert!(!out.contains("Some(") && !out.contains("None"), "{name}: debug formatting in\n{out}");
        assert!(!out.contains("state digest ") && out.contains("no state digest"), "{name}: {out}");
    };
    // Truncated in the middle of a record.
    let cut = fr[fr.len() / 2].0 + 7;
    damaged(
        "truncated",
        &bytes[..cut],
        &["truncated", &format!("byte {}", fr[fr.len() / 2].0), "without a trailer", "ends after revision "],
    );
    // One flipped byte inside record 5000.
    let (at, _) = fr[5000];
    let mut flipped = bytes.clone();
    flipped[at + 20] ^= 0x40;
    damaged("flipped", &flipped, &[&format!("PROBLEM at byte {at}: record damaged")]);
    // Two records swapped.
    let (a, b) = (&fr[100], &fr[101]);
    let mut swapped = bytes[..a.0].to_vec();
    swapped.extend_from_slice(&b.1);
    swapped.extend_from_slice(&a.1);
    swapped.extend_from_slice(&bytes[b.0 + b.1.len()..]);
    damaged("swapped", &swapped, &["out of order", "hash chain broken", &format!("byte {}", a.0)]);
    // A record of another export (same revision, valid checksum, other chain) spliced in.
    let other = {
        let mut buf = Vec::new();
        let header = ExportHeader {
            source: "another cluster".into(),
            cluster: None,
            first_revision: 1,
            last_revision: 1,
            exported_at: switchyard_protocol::Timestamp(1),
            format: switchyard_storage::export::EXPORT_FORMAT,
        };
        let ExportRecord::Event { event, .. } = switchyard_protocol::codec::open::<ExportRecord>(
            switchyard_protocol::codec::RecordKind::Export,
            &fr[1].1[4..],
        )
        .unwrap() else {
            panic!("frame 1 is an event")
        };
        let mut w = ExportWriter::new(&mut buf, Format::Binary, &header).unwrap();
        w.push(&event).unwrap();
        w.finish().unwrap();
        frames(&buf)[1].1.clone()
    };
    let mut spliced = bytes[..fr[1].0].to_vec();
    spliced.extend_from_slice(&other);
    spliced.extend_from_slice(&bytes[fr[1].0 + fr[1].1.len()..]);
    damaged("spliced", &spliced, &[&format!("PROBLEM at byte {}: hash chain broken at revision 1", fr[1].0)]);
}
