//! What making one appended log entry durable costs in a fresh write-ahead log file and in one
//! written over a recycled file (`storage/src/db.rs`, `WAL_RECYCLED`). A coordinator starts with
//! fresh WAL files and recycles from its first WAL switch on, so the short throughput runs of a
//! fresh cluster see only the first case and a long-lived node mostly the second. Measured in
//! process through the real log store: entries of a proposal's size appended one at a time, each
//! waited for until it is durable, as a follower's is before it answers (one synced write; see
//! `LogFlushed::is_awaited`); then the memtables are flushed twice (the second switch takes a
//! recycled file) and the same appends are timed again. No cluster runs.

use std::time::{Duration, Instant};

use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use switchyard_protocol::{Command, GuestPatch, Name, Proposal, RequestId, Timestamp};
use switchyard_storage::{Proposals, TypeConfig};

use crate::Report;

/// Appends timed in each kind of file.
const APPENDS: u64 = 2000;

pub async fn wal(dir: &std::path::Path, report: &mut Report) -> anyhow::Result<()> {
    let data = dir.join("wal");
    let (mut log, _sm) = switchyard_storage::open(&data, 1)?;
    let fresh = time_appends(&mut log, 1).await?;
    // The file the fresh appends went to becomes obsolete once every memtable with rows in it is
    // flushed, and the next WAL switch writes over it: switch (one entry, then a flush) until
    // RocksDB's info log says so, then time the same appends in it.
    let db = data.join("db");
    let first = wal_files(&db)?.into_iter().max().ok_or_else(|| anyhow::anyhow!("no WAL file in {}", db.display()))?;
    let reused = format!("reusing log {first} from recycle list");
    let mut next = APPENDS + 1;
    while !std::fs::read_to_string(db.join("LOG"))?.contains(&reused) {
        anyhow::ensure!(next <= APPENDS + 10, "RocksDB did not write over WAL file {first} after 10 switches");
        log.blocking_append([entry(next)]).await?;
        log.data_dir().flush_all()?;
        next += 1;
    }
    let recycled = time_appends(&mut log, next).await?;
    for (what, mut took) in [("a fresh WAL file", fresh), ("a recycled WAL file", recycled)] {
        took.sort();
        let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
        report.add(format!("log append → durable, one entry, into {what}, p50"), "µs", false, "switchyard", at(0.5));
        report.add(format!("log append → durable, one entry, into {what}, p99"), "µs", false, "switchyard", at(0.99));
    }
    drop(log);
    std::fs::remove_dir_all(&data)?;
    Ok(())
}

/// How many times RocksDB took a WAL file from its recycle list in database directory `db`, by
/// its info logs (`LOG` and the rolled `LOG.old.*`).
pub(crate) fn recycled_wal_files(db: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::Context;
    let mut n = 0;
    for e in std::fs::read_dir(db).with_context(|| format!("read {}", db.display()))? {
        let path = e?.path();
        if path.file_name().and_then(|f| f.to_str()).is_some_and(|f| f.starts_with("LOG")) {
            let text = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            n += String::from_utf8_lossy(&text).matches("from recycle list").count();
        }
    }
    Ok(n)
}

/// The numbers of the WAL files in database directory `db`.
fn wal_files(db: &std::path::Path) -> anyhow::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for e in std::fs::read_dir(db)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_suffix(".log").and_then(|n| n.parse().ok()) {
            numbers.push(n);
        }
    }
    Ok(numbers)
}

/// Appends [`APPENDS`] entries from index `first` one at a time, each awaited until durable.
async fn time_appends(log: &mut switchyard_storage::LogStore, first: u64) -> anyhow::Result<Vec<Duration>> {
    let mut took = Vec::with_capacity(APPENDS as usize);
    for index in first..first + APPENDS {
        let entry = entry(index);
        let started = Instant::now();
        log.blocking_append([entry]).await?;
        took.push(started.elapsed());
    }
    Ok(took)
}

/// An entry of one proposal carrying about as many bytes as the throughput runs' guest changes.
fn entry(index: u64) -> Entry<TypeConfig> {
    let proposal = Proposal {
        request_id: RequestId(index as u128),
        actor: "bench".into(),
        time: Timestamp(1_700_000_000_000 + index),
        command: Command::ModifyGuest {
            name: Name::new("g0000001").expect("a valid guest name"),
            patch: GuestPatch { disks: Some(vec!["d".repeat(256)]), ..GuestPatch::default() },
            expect_version: None,
        },
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposals(vec![proposal])),
    }
}
