//! Child process for the storage crash test: opens a data directory, catches the state machine up
//! with the log (as openraft does after a restart), then appends and applies workload entries up
//! to a limit, printing `appended N` once entry N is durable and `applied N` once applied.
//! Every [`FLUSH_EVERY`] entries it flushes the memtables, which moves the write-ahead log on
//! to another file: from the second move on RocksDB writes over a file it recycled, so kills
//! also land in WAL files that still hold older records past the new ones.
//! The parent kills it with SIGKILL at random moments.

use std::io::Write;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use switchyard_tests::fixtures::workload_entry;

/// Entries between two memtable flushes (WAL switches).
const FLUSH_EVERY: u64 = 8;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: log_append_child DIR LAST_INDEX");
    let last: u64 = args.next().expect("LAST_INDEX").parse()?;
    let (mut log, mut sm) = switchyard_storage::open(std::path::Path::new(&dir), 1)?;
    let stored = log.get_log_state().await?.last_log_id.map_or(0, |l| l.index);
    let applied = sm.applied_state().await?.0.map_or(0, |l| l.index);
    let pending = log.read_range(applied + 1..=stored)?;
    sm.apply(pending).await?;
    let mut out = std::io::stdout().lock();
    let mut next = stored + 1;
    while next <= last {
        // Batches of 1 to 4 entries, so a kill can land inside a multi-entry append.
        let size = (next % 4 + 1).min(last - next + 1);
        let batch: Vec<_> = (next..next + size).map(workload_entry).collect();
        log.blocking_append(batch.clone()).await?;
        writeln!(out, "appended {}", next + size - 1)?;
        out.flush()?;
        sm.apply(batch).await?;
        writeln!(out, "applied {}", next + size - 1)?;
        out.flush()?;
        if next / FLUSH_EVERY != (next + size) / FLUSH_EVERY {
            log.data_dir().flush_all()?;
        }
        next += size;
    }
    Ok(())
}
