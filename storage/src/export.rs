//! Portable exports of the event history, and the checks recovery tooling runs on exports and
//! on data directories (`switchyard log export|verify|replay`).
//!
//! An export is self-describing and tamper-evident:
//!
//! ```text
//! magic "SWYLOG\0" + format u8
//! frame*   where frame = u32 big-endian length + sealed record (codec: version, kind, CRC-32C)
//!          records: Header, then Event* (revisions contiguous), then Trailer
//! ```
//!
//! Every event record carries a running SHA-256 chain: `chain(i) = sha256(chain(i-1) ||
//! encode(event i))`, starting from the header's own bytes; the trailer repeats the last chain
//! value and the count. A flipped byte fails a record's checksum, a dropped, duplicated or
//! reordered record breaks contiguity and the chain, a record spliced in from another export
//! breaks the chain, and a cut file has no trailer. Every problem is reported with its byte
//! offset; nothing is skipped silently.
//!
//! The same records can be written as JSON lines (`--format jsonl`) for people and scripts; those
//! carry the same chain and are verified the same way, with line numbers as locations.

use std::io::{BufRead, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use switchyard_protocol::codec::{self, RecordKind};
use switchyard_protocol::{ClusterId, ClusterState, Event, Revision, Timestamp};

use crate::db::{cf, key, DataDir};
use crate::error::StoreError;

pub const MAGIC: &[u8; 8] = b"SWYLOG\0\x02";

/// What an export says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHeader {
    /// Where the history came from (cluster endpoints or data directory and node id).
    pub source: String,
    /// The exported cluster's identity (`None` if it had none at export time).
    pub cluster: Option<ClusterId>,
    pub first_revision: Revision,
    /// The revision the export is consistent at.
    pub last_revision: Revision,
    pub exported_at: Timestamp,
}

/// One record of an export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportRecord {
    Header(ExportHeader),
    Event { event: Box<Event>, chain: String },
    Trailer { last_revision: Revision, count: u64, chain: String },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn chain_start(header: &ExportHeader) -> [u8; 32] {
    Sha256::new().chain_update(b"switchyard-export").chain_update(codec::encode(header)).finalize().into()
}

fn chain_next(prev: &[u8; 32], event: &Event) -> [u8; 32] {
    Sha256::new().chain_update(prev).chain_update(codec::encode(event)).finalize().into()
}

/// Output format of an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Binary,
    JsonLines,
}

/// Writes an export, checking as it goes that revisions are contiguous.
pub struct ExportWriter<W: Write> {
    out: W,
    format: Format,
    chain: [u8; 32],
    next: Revision,
    count: u64,
}

impl<W: Write> ExportWriter<W> {
    pub fn new(mut out: W, format: Format, header: &ExportHeader) -> std::io::Result<ExportWriter<W>> {
        if format == Format::Binary {
            out.write_all(MAGIC)?;
        }
        let mut w = ExportWriter { out, format, chain: chain_start(header), next: header.first_revision, count: 0 };
        w.record(&ExportRecord::Header(header.clone()))?;
        Ok(w)
    }

    fn record(&mut self, r: &ExportRecord) -> std::io::Result<()> {
        match self.format {
            Format::Binary => {
                let sealed = codec::seal(RecordKind::Export, r);
                self.out.write_all(&(sealed.len() as u32).to_be_bytes())?;
                self.out.write_all(&sealed)
            }
            Format::JsonLines => {
                serde_json::to_writer(&mut self.out, r)?;
                self.out.write_all(b"\n")
            }
        }
    }

    /// Appends the next event; it must carry the next revision.
    pub fn push(&mut self, event: &Event) -> std::io::Result<()> {
        if event.revision != self.next {
            return Err(std::io::Error::other(format!(
                "the source skipped from revision {} to {}: refusing to write an export with a hole",
                self.next.saturating_sub(1),
                event.revision
            )));
        }
        self.chain = chain_next(&self.chain, event);
        self.record(&ExportRecord::Event { event: Box::new(event.clone()), chain: hex(&self.chain) })?;
        self.next += 1;
        self.count += 1;
        Ok(())
    }

    /// Writes the trailer and flushes; returns how many events were written.
    pub fn finish(mut self) -> std::io::Result<u64> {
        let t = ExportRecord::Trailer { last_revision: self.next - 1, count: self.count, chain: hex(&self.chain) };
        self.record(&t)?;
        self.out.flush()?;
        Ok(self.count)
    }
}

/// A problem found, with where it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub location: String,
    pub problem: String,
}

/// Where a replay stops.
#[derive(Clone, Copy, Debug, Default)]
pub struct Until {
    pub revision: Option<Revision>,
    pub time: Option<Timestamp>,
}

impl Until {
    fn includes(&self, e: &Event) -> bool {
        self.revision.is_none_or(|r| e.revision <= r) && self.time.is_none_or(|t| e.time <= t)
    }
}

/// What reading an export (or a data directory's history) found.
#[derive(Debug, Default)]
pub struct Report {
    pub header: Option<ExportHeader>,
    pub events: u64,
    pub first_revision: Option<Revision>,
    pub last_revision: Option<Revision>,
    /// The state folded from the events (up to `Until`); meaningful only when the history
    /// starts at revision 1 and `problems` is empty.
    pub state: ClusterState,
    pub problems: Vec<Problem>,
}

impl Report {
    fn problem(&mut self, location: impl Into<String>, problem: impl Into<String>) {
        self.problems.push(Problem { location: location.into(), problem: problem.into() });
    }

    /// Folds one event, checking contiguity with the previous one.
    fn event(&mut self, location: &str, e: &Event, until: &Until) {
        if let Some(last) = self.last_revision {
            if e.revision != last + 1 {
                self.problem(
                    location,
                    format!(
                        "revision {} follows revision {last}: records are missing, duplicated or out of order",
                        e.revision
                    ),
                );
            }
        }
        self.first_revision.get_or_insert(e.revision);
        self.last_revision = Some(e.revision);
        self.events += 1;
        if until.includes(e) && e.revision == self.state.revision() + 1 {
            self.state.evolve(e);
        }
    }
}

/// Reads and checks a whole export (binary or JSON lines, told apart by the magic), folding its
/// events up to `until`. `progress` is called with the bytes read so far.
pub fn read_export(input: impl BufRead, until: Until, progress: impl FnMut(u64)) -> std::io::Result<Report> {
    read_export_with(input, until, progress, |_, _| {})
}

/// [`read_export`], handing every event record to `on_event` with its stated chain value, in
/// file order (what `log restore` imports; it acts only if the whole read found no problem).
pub fn read_export_with(
    mut input: impl BufRead,
    until: Until,
    mut progress: impl FnMut(u64),
    mut on_event: impl FnMut(&Event, &str),
) -> std::io::Result<Report> {
    let mut r = Report::default();
    let binary = input.fill_buf()?.starts_with(&MAGIC[..6]);
    let mut chain: Option<[u8; 32]> = None;
    let mut trailer_seen = false;
    let mut offset: u64 = 0;
    let mut line: u64 = 0;
    let mut handle = |rec: ExportRecord, location: String, r: &mut Report, trailer_seen: &mut bool| {
        if *trailer_seen {
            r.problem(&location, "data after the trailer");
        }
        match rec {
            ExportRecord::Header(h) => {
                if r.header.is_some() || r.events > 0 {
                    r.problem(&location, "a second header: records from another export spliced in");
                }
                chain = Some(chain_start(&h));
                r.header = Some(h);
            }
            ExportRecord::Event { event, chain: stated } => {
                let Some(prev) = chain else {
                    r.problem(&location, "event before any header");
                    return;
                };
                let next = chain_next(&prev, &event);
                if hex(&next) != stated {
                    r.problem(
                        &location,
                        format!(
                            "hash chain broken at revision {}: the record was altered, reordered or comes from another export",
                            event.revision
                        ),
                    );
                }
                // Continue from the stated value so one bad record is reported once.
                chain = Some(parse_hex(&stated).unwrap_or(next));
                r.event(&location, &event, &until);
                on_event(&event, &stated);
            }
            ExportRecord::Trailer { last_revision, count, chain: stated } => {
                *trailer_seen = true;
                if Some(last_revision) != r.last_revision || count != r.events {
                    r.problem(
                        &location,
                        format!(
                            "trailer says {count} events up to revision {last_revision}, the file holds {} up to {:?}",
                            r.events, r.last_revision
                        ),
                    );
                }
                if chain.map(|c| hex(&c)) != Some(stated) {
                    r.problem(&location, "trailer's chain value differs from the records'");
                }
            }
        }
    };
    if binary {
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            r.problem("byte 0", "unknown export format version");
            return Ok(r);
        }
        offset = 8;
        loop {
            let mut len = [0u8; 4];
            match read_full(&mut input, &mut len)? {
                0 => break,
                4 => {}
                n => {
                    r.problem(
                        format!("byte {offset}"),
                        format!("truncated: a frame length is cut after {n} of 4 bytes"),
                    );
                    break;
                }
            }
            let n = u32::from_be_bytes(len) as usize;
            if n > 64 << 20 {
                r.problem(
                    format!("byte {offset}"),
                    format!("frame length {n} is not plausible: the file is damaged here"),
                );
                break;
            }
            let mut buf = vec![0u8; n];
            let got = read_full(&mut input, &mut buf)?;
            let location = format!("byte {offset}");
            if got < n {
                r.problem(location, format!("truncated: a record is cut after {got} of {n} bytes"));
                offset += 4 + got as u64;
                break;
            }
            offset += 4 + n as u64;
            progress(offset);
            match codec::open::<ExportRecord>(RecordKind::Export, &buf) {
                Ok(rec) => handle(rec, location, &mut r, &mut trailer_seen),
                Err(e) => r.problem(location, format!("record damaged: {e}")),
            }
        }
    } else {
        let mut text = String::new();
        loop {
            text.clear();
            if input.read_line(&mut text)? == 0 {
                break;
            }
            line += 1;
            offset += text.len() as u64;
            progress(offset);
            let location = format!("line {line}");
            if !text.ends_with('\n') {
                r.problem(&location, "truncated: the last line has no end");
            }
            match serde_json::from_str::<ExportRecord>(text.trim_end()) {
                Ok(rec) => handle(rec, location, &mut r, &mut trailer_seen),
                Err(e) => r.problem(location, format!("not a record: {e}")),
            }
        }
    }
    if r.header.is_none() {
        r.problem("start", "no header: not a Switchyard export");
    }
    if !trailer_seen {
        let at = if binary { format!("byte {offset}") } else { format!("line {}", line + 1) };
        r.problem(at, format!("truncated: the file ends after revision {:?} without a trailer", r.last_revision));
    }
    if let (Some(h), Some(first), Some(last)) = (r.header.clone(), r.first_revision, r.last_revision) {
        if h.first_revision != first || h.last_revision != last {
            r.problem(
                "header",
                format!(
                    "header says revisions {}..={}, the records hold {first}..={last}",
                    h.first_revision, h.last_revision
                ),
            );
        }
    }
    Ok(r)
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Reads and checks the history of a stopped coordinator's data directory: every event record's
/// checksum, contiguous revisions, every migration record; folds the events up to `until`; and,
/// when the history starts at revision 1 and nothing is wrong, compares the fold with the state
/// the coordinator itself would load (snapshot + later events).
pub fn read_data_dir(
    path: &Path,
    until: Until,
    mut progress: impl FnMut(u64),
) -> Result<(Report, Option<ClusterState>), StoreError> {
    let dir = DataDir::open_existing(path)?;
    let mut r = Report::default();
    for item in dir.db.iterator_cf(dir.cf(cf::EVENTS), rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(|e| StoreError::rocks("iterate events", e))?;
        let rev = key::parse_u64(&k);
        let location =
            format!("column family events, key {}", rev.map_or(format!("{k:?}"), |r| format!("revision {r}")));
        match codec::open::<Event>(RecordKind::Event, &v) {
            Ok(e) if Some(e.revision) != rev => {
                r.problem(location, format!("holds the event of revision {}", e.revision))
            }
            Ok(e) => r.event(&location, &e, &until),
            Err(e) => r.problem(location, format!("record damaged: {e}")),
        }
        if r.events % 10_000 == 0 {
            progress(r.events);
        }
    }
    for item in dir.db.iterator_cf(dir.cf(cf::MIGRATIONS), rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(|e| StoreError::rocks("iterate migrations", e))?;
        if let Err(e) = codec::open::<switchyard_protocol::Migration>(RecordKind::Migration, &v) {
            r.problem(
                format!("column family migrations, key {:?}", key::parse_u64(&k)),
                format!("record damaged: {e}"),
            );
        }
    }
    // The state the coordinator would start with, to compare with the fold.
    let dir_path = dir.path.clone();
    let loaded = match crate::state_machine::StateMachineStore::open(dir) {
        Ok(sm) => Some(sm.read(|s| s.clone())),
        Err(e) => {
            r.problem(
                format!("data directory {}", dir_path.display()),
                format!("the coordinator could not load its state: {e}"),
            );
            None
        }
    };
    Ok((r, loaded))
}

/// Writes the retained history of a stopped coordinator's data directory as an export.
pub fn export_data_dir(
    path: &Path,
    out: impl Write,
    format: Format,
    exported_at: Timestamp,
    mut progress: impl FnMut(u64),
) -> Result<(ExportHeader, u64), StoreError> {
    let dir = DataDir::open_existing(path)?;
    let history = crate::history::History::new(dir.clone());
    let (first, last) = history.bounds()?.unwrap_or((1, 0));
    let node_id = dir.node_id;
    let cluster = crate::state_machine::StateMachineStore::open(dir)?.read(|s| s.identity().map(|i| i.id.clone()));
    let header = ExportHeader {
        source: format!("data directory {} (node {node_id})", path.display()),
        cluster,
        first_revision: first,
        last_revision: last,
        exported_at,
    };
    let io = |e: std::io::Error| StoreError::io("write the export", e);
    let mut w = ExportWriter::new(out, format, &header).map_err(io)?;
    let mut next = first;
    while next <= last {
        let batch = history.events_from(next, 10_000)?;
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            w.push(e).map_err(io)?;
        }
        next = batch.last().map_or(last + 1, |e| e.revision + 1);
        progress(next - first);
    }
    let n = w.finish().map_err(io)?;
    Ok((header, n))
}
