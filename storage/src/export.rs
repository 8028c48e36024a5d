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
use switchyard_protocol::{ClusterId, ClusterState, Event, Replay, Revision, Timestamp};

use crate::db::{cf, key, DataDir};
use crate::error::StoreError;

/// The layout of the records (the encoding of events inside them): in the binary magic's last
/// byte and in the header, so that a JSON-lines export names it too.
/// 3: hosts carry labels, guests an anti-affinity group.
pub const EXPORT_FORMAT: u8 = 3;
pub const MAGIC: &[u8; 8] = b"SWYLOG\0\x03";

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
    /// [`EXPORT_FORMAT`] of the build that wrote it (absent, read as 0, before format 3).
    #[serde(default)]
    pub format: u8,
}

/// One record of an export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportRecord {
    Header(ExportHeader),
    Event { event: Box<Event>, chain: String },
    Trailer { last_revision: Revision, count: u64, chain: String },
}

fn hex(chain: &[u8; 32]) -> String {
    String::from_utf8(hex_digits(chain).to_vec()).expect("hex digits are ASCII")
}

/// A chain value as it is written: 64 lower-case hex digits.
fn hex_digits(chain: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in chain.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    out
}

fn chain_start(header: &ExportHeader) -> [u8; 32] {
    Sha256::new().chain_update(b"switchyard-export").chain_update(codec::encode(header)).finalize().into()
}

fn chain_next(prev: &[u8; 32], event: &Event) -> [u8; 32] {
    chain_next_encoded(prev, &codec::encode(event))
}

fn chain_next_encoded(prev: &[u8; 32], encoded_event: &[u8]) -> [u8; 32] {
    Sha256::new().chain_update(prev).chain_update(encoded_event).finalize().into()
}

/// The two parts of the payload of a binary `ExportRecord::Event` record, found without decoding
/// the record: the encoded event and the stated chain value. bincode writes the variant index (1:
/// one byte), the event, then the chain string (length 64: one byte, then 64 bytes). `None` when
/// the record does not have that shape (it is then decoded whole, and any damage reported as
/// usual).
fn event_parts(payload: &[u8]) -> Option<(&[u8], &[u8; 64])> {
    const TAIL: usize = 1 + 64;
    let (&variant, rest) = payload.split_first()?;
    let cut = rest.len().checked_sub(TAIL)?;
    let stated = rest[cut + 1..].try_into().expect("64 bytes");
    (variant == 1 && rest[cut] == 64).then_some((&rest[..cut], stated))
}

/// Where a record is: a byte offset in a binary export, a line in a JSON-lines one. Formatted
/// only when a problem is reported.
#[derive(Clone, Copy, Debug)]
enum Location {
    Byte(u64),
    Line(u64),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Byte(b) => write!(f, "byte {b}"),
            Location::Line(l) => write!(f, "line {l}"),
        }
    }
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

    /// Folds one event into `fold` (which becomes `state` at the end of the read), checking
    /// contiguity with the previous one.
    fn event(&mut self, location: &dyn std::fmt::Display, e: &Event, until: &Until, fold: &mut Replay) {
        if let Some(last) = self.last_revision {
            if e.revision != last + 1 {
                self.problem(
                    location.to_string(),
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
        // Folded only while everything before was sound, and only what the state machine can
        // take: a record altered and re-chained (the chain has no key) is reported, never
        // folded into a state that cannot hold it.
        if self.problems.is_empty() && until.includes(e) && e.revision == fold.revision() + 1 {
            if let Err(why) = fold.fold_checked(e) {
                self.problem(
                    location.to_string(),
                    format!("revision {} cannot follow the events before it: {why}", e.revision),
                );
            }
        }
    }
}

/// Reads and checks a whole export (binary or JSON lines, told apart by the magic), folding its
/// events up to `until`. `progress` is called with the bytes read so far.
pub fn read_export(input: impl BufRead + Send, until: Until, progress: impl FnMut(u64)) -> std::io::Result<Report> {
    read_export_with(input, until, progress, |_, _| {})
}

/// One event record of an export as [`read_export_with`] hands it on.
pub struct EventRecord<'a> {
    pub event: &'a Event,
    /// The event's encoded bytes (`codec::encode`): those the record holds in a binary export,
    /// those the chain was checked over in either.
    pub encoded: &'a [u8],
    /// The chain value the record states: 64 lower-case hex digits when the chain holds.
    pub chain: &'a [u8; 64],
}

/// [`read_export`], handing every event record to `on_event` ([`EventRecord`]) with the state
/// folded so far (the event in it while no problem was found), in file order (what `log restore` imports and `log seed`
/// stores; both act only if the whole read found no problem).
///
/// Two threads share the work (the replay speed of SPEC §8 needs both cores): a reading thread
/// frames, checksums and decodes the records and checks the hash chain (each record's check
/// needs only the previous record's stated value), and hands them over in batches; this thread
/// checks their order and folds them. Problems are reported in file order either way. Folded
/// batches go back to the reading thread, which decodes the next records into them, each event
/// into the one it replaces: the strings of an event are allocated once and reused, not freed on
/// the folding thread (a free from another thread costs the allocator several times a local one:
/// about a fifth of the folding thread's time went to those, with the fresh pages they made the
/// reading thread take) nor allocated again for every event.
pub fn read_export_with(
    input: impl BufRead + Send,
    until: Until,
    mut progress: impl FnMut(u64),
    mut on_event: impl FnMut(EventRecord<'_>, &ClusterState),
) -> std::io::Result<Report> {
    let mut r = Report::default();
    let mut fold = Replay::default();
    let mut trailer_seen = false;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Decoded>>(8);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Vec<Decoded>>();
    let end = std::thread::scope(|scope| {
        let reader = scope.spawn(move || decode_records(input, tx, done_rx));
        for batch in rx {
            for d in &batch {
                progress(d.end);
                let location = d.location;
                if let Item::Damaged(problem) = &d.item {
                    r.problem(location.to_string(), problem.as_str());
                    continue;
                }
                if trailer_seen {
                    r.problem(location.to_string(), "data after the trailer");
                }
                match &d.item {
                    Item::Damaged(_) => {}
                    Item::Header(h) => {
                        if r.header.is_some() || r.events > 0 {
                            r.problem(location.to_string(), "a second header: records from another export spliced in");
                        }
                        r.header = Some(h.clone());
                    }
                    Item::Event { event, encoded, stated, chain } => {
                        match chain {
                            Chain::NoHeader => {
                                r.problem(location.to_string(), "event before any header");
                                continue;
                            }
                            Chain::Broken => r.problem(
                                location.to_string(),
                                format!(
                                    "hash chain broken at revision {}: the record was altered, reordered or comes from another export",
                                    event.revision
                                ),
                            ),
                            Chain::Holds => {}
                        }
                        r.event(&location, event, &until, &mut fold);
                        on_event(EventRecord { event, encoded, chain: stated }, fold.state());
                    }
                    Item::Trailer { last_revision, count, chain } => {
                        trailer_seen = true;
                        if Some(*last_revision) != r.last_revision || *count != r.events {
                            r.problem(
                                location.to_string(),
                                format!(
                                    "trailer says {count} events up to revision {last_revision}, the file holds {} up to {}",
                                    r.events,
                                    revision_or_none(r.last_revision)
                                ),
                            );
                        }
                        if *chain != Chain::Holds {
                            r.problem(location.to_string(), "trailer's chain value differs from the records'");
                        }
                    }
                }
            }
            // The reading thread has ended when this fails; the batch is then dropped here.
            let _ = done_tx.send(batch);
        }
        reader.join().expect("the export reading thread does not panic")
    })?;
    r.state = fold.finish();
    let Some(end) = end else {
        // Not an export this build can read; the one problem says so.
        return Ok(r);
    };
    if r.header.is_none() {
        r.problem("start", "no header: not a Switchyard export");
    }
    if !trailer_seen {
        r.problem(
            end.to_string(),
            match r.last_revision {
                Some(last) => format!("truncated: the file ends after revision {last} without a trailer"),
                None => "truncated: the file ends before any event, without a trailer".to_string(),
            },
        );
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

/// What an export says of itself at both ends, read without its events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ends {
    pub header: ExportHeader,
    pub last_revision: Revision,
    pub count: u64,
    /// The chain value the trailer states.
    pub chain: String,
    /// The record before the trailer: the last event.
    pub last_event: Option<Event>,
}

/// The header and the trailer of the export file at `path`, found without decoding its events
/// (a binary export's frames are skipped by their lengths; a JSON-lines export's first and last
/// lines are read). Not a check of the file: the trailer only *states* the chain, so whoever
/// relies on it compares it with a chain computed from the events, as a seeded cluster's is.
/// `None` when either end is missing or unreadable.
pub fn read_ends(path: &Path) -> std::io::Result<Option<Ends>> {
    use std::io::{Seek, SeekFrom};
    let mut input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let record = |bytes: &[u8]| -> Option<ExportRecord> {
        codec::open_payload(RecordKind::Export, bytes).ok().and_then(|p| codec::decode::<ExportRecord>(p).ok())
    };
    let (first, previous, last) = if input.fill_buf()?.starts_with(&MAGIC[..6]) {
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Ok(None);
        }
        let mut first: Option<Vec<u8>> = None;
        let mut offset = 8u64;
        // (start, length) of the last two frames' bodies.
        let (mut before_last, mut last_frame) = ((0u64, 0usize), (0u64, 0usize));
        loop {
            let mut len = [0u8; 4];
            if read_full(&mut input, &mut len)? < 4 {
                break;
            }
            let n = u32::from_be_bytes(len) as usize;
            if n > 64 << 20 {
                return Ok(None);
            }
            if first.is_none() {
                let mut bytes = vec![0u8; n];
                input.read_exact(&mut bytes)?;
                first = Some(bytes);
            } else {
                input.seek_relative(n as i64)?;
            }
            before_last = last_frame;
            last_frame = (offset + 4, n);
            offset += 4 + n as u64;
        }
        let Some(first) = first else { return Ok(None) };
        let mut at = |(start, len): (u64, usize)| -> std::io::Result<Option<ExportRecord>> {
            input.seek(SeekFrom::Start(start))?;
            let mut bytes = vec![0u8; len];
            input.read_exact(&mut bytes)?;
            Ok(record(&bytes))
        };
        let previous = if before_last.0 > 8 + 4 { at(before_last)? } else { None };
        (record(&first), previous, at(last_frame)?)
    } else {
        let (mut first, mut previous, mut last, mut line) =
            (String::new(), String::new(), String::new(), String::new());
        while input.read_line(&mut line)? > 0 {
            if first.is_empty() {
                first = line.clone();
            }
            std::mem::swap(&mut previous, &mut last);
            std::mem::swap(&mut last, &mut line);
            line.clear();
        }
        let json = |l: &str| serde_json::from_str::<ExportRecord>(l.trim_end()).ok();
        (json(&first), json(&previous), json(&last))
    };
    Ok(match (first, last) {
        (Some(ExportRecord::Header(header)), Some(ExportRecord::Trailer { last_revision, count, chain })) => {
            let last_event = match previous {
                Some(ExportRecord::Event { event, .. }) => Some(*event),
                _ => None,
            };
            Some(Ends { header, last_revision, count, chain: chain.to_ascii_lowercase(), last_event })
        }
        _ => None,
    })
}

/// One record as the reading thread hands it over.
struct Decoded {
    location: Location,
    /// Bytes read up to the end of this record.
    end: u64,
    item: Item,
}

/// A record, decoded and chain-checked.
// Nearly every item is an event, held inline: boxing it would cost an allocation per event,
// which this layout exists to avoid.
#[allow(clippy::large_enum_variant)]
enum Item {
    Header(ExportHeader),
    Event {
        event: Event,
        /// The event's encoded bytes, as the chain covers them (a buffer reused like the event's).
        encoded: Vec<u8>,
        /// The chain value the record states: 64 hex digits when well formed (a value of
        /// another length is cut or padded here, after the check found it broken).
        stated: [u8; 64],
        chain: Chain,
    },
    Trailer {
        last_revision: Revision,
        count: u64,
        chain: Chain,
    },
    /// A record that could not be read (cut, checksum, not a record), with the problem.
    Damaged(String),
}

/// What the hash chain says about a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chain {
    Holds,
    /// An event whose stated value is not the hash of the previous value and its bytes, or a
    /// trailer whose value is not the last event's.
    Broken,
    /// An event before any header: nothing to chain from.
    NoHeader,
}

/// The running chain value while reading, and the check of each record against it.
#[derive(Default)]
struct ChainCheck(Option<[u8; 32]>);

impl ChainCheck {
    fn header(&mut self, h: &ExportHeader) {
        self.0 = Some(chain_start(h));
    }

    /// `encoded`: the event's encoded bytes.
    fn event(&mut self, encoded: &[u8], stated: &[u8]) -> Chain {
        let Some(prev) = self.0 else { return Chain::NoHeader };
        let next = chain_next_encoded(&prev, encoded);
        if stated == hex_digits(&next) {
            self.0 = Some(next);
            return Chain::Holds;
        }
        // Continue from the stated value so one bad record is reported once.
        self.0 = Some(parse_hex(stated).unwrap_or(next));
        Chain::Broken
    }

    fn trailer(&self, stated: &[u8]) -> Chain {
        if self.0.is_some() && self.0 == parse_hex(stated) {
            Chain::Holds
        } else {
            Chain::Broken
        }
    }

    /// Checks a whole decoded record.
    fn item(&mut self, rec: ExportRecord) -> Item {
        match rec {
            ExportRecord::Header(h) if h.format != EXPORT_FORMAT => Item::Damaged(format!(
                "export format {} (before 3 when 0); this build reads format {EXPORT_FORMAT}: read it with the build that wrote it",
                h.format
            )),
            ExportRecord::Header(h) => {
                self.header(&h);
                Item::Header(h)
            }
            ExportRecord::Event { event, chain: stated } => {
                let encoded = codec::encode(&*event);
                let chain = self.event(&encoded, stated.as_bytes());
                let mut fixed = [0u8; 64];
                let n = stated.len().min(64);
                fixed[..n].copy_from_slice(&stated.as_bytes()[..n]);
                Item::Event { event: *event, encoded, stated: fixed, chain }
            }
            ExportRecord::Trailer { last_revision, count, chain: stated } => {
                Item::Trailer { last_revision, count, chain: self.trailer(stated.as_bytes()) }
            }
        }
    }
}

const BATCH: usize = 1024;

/// The reading thread's side of the batches: the one being filled, and the channels. A batch
/// that comes back keeps its records, and each is overwritten in its slot: an event is decoded
/// into the event it replaces, reusing its strings (`codec::decode_event_into`), so the reading
/// thread allocates and frees nothing per event once the first batches are out.
struct Batches {
    tx: std::sync::mpsc::SyncSender<Vec<Decoded>>,
    done: std::sync::mpsc::Receiver<Vec<Decoded>>,
    batch: Vec<Decoded>,
    /// Slots of `batch` filled with this batch's records; the rest hold an earlier batch's.
    filled: usize,
}

impl Batches {
    /// Adds a record made elsewhere (damage, a JSON line).
    fn push(&mut self, d: Decoded) {
        *self.next_slot() = d;
        self.filled += 1;
        self.send_if_full();
    }

    /// Adds the record of a binary frame, decoded into the slot it goes to.
    fn push_frame(&mut self, location: Location, end: u64, frame: &[u8], check: &mut ChainCheck) {
        let slot = self.next_slot();
        slot.location = location;
        slot.end = end;
        decode_frame(frame, check, &mut slot.item);
        self.filled += 1;
        self.send_if_full();
    }

    /// The slot the next record goes to: an earlier batch's record, or a new placeholder.
    fn next_slot(&mut self) -> &mut Decoded {
        if self.filled == self.batch.len() {
            self.batch.push(Decoded { location: Location::Byte(0), end: 0, item: Item::Damaged(String::new()) });
        }
        &mut self.batch[self.filled]
    }

    fn send_if_full(&mut self) {
        if self.filled >= BATCH {
            self.send();
        }
    }

    /// Sends the filled records and takes a folded batch back (or a new one) to fill next.
    fn send(&mut self) {
        self.batch.truncate(self.filled);
        let next = self.done.try_recv().unwrap_or_else(|_| Vec::with_capacity(BATCH));
        // The receiver only goes away when it panicked; nothing left to do then.
        let _ = self.tx.send(std::mem::replace(&mut self.batch, next));
        self.filled = 0;
    }
}

/// The reading thread: frames, checksums, decodes and chain-checks every record, in batches
/// sent on `tx`; folded batches come back on `done` to be filled again. Answers where the file
/// ended (for a missing trailer), or `None` for an unknown format version (reported as a
/// `Damaged` item).
fn decode_records(
    mut input: impl BufRead,
    tx: std::sync::mpsc::SyncSender<Vec<Decoded>>,
    done: std::sync::mpsc::Receiver<Vec<Decoded>>,
) -> std::io::Result<Option<Location>> {
    let mut out = Batches { tx, done, batch: Vec::with_capacity(BATCH), filled: 0 };
    let mut check = ChainCheck::default();
    let binary = input.fill_buf()?.starts_with(&MAGIC[..6]);
    let end = if binary {
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            let item = Item::Damaged("unknown export format version".into());
            out.push(Decoded { location: Location::Byte(0), end: 8, item });
            out.send();
            return Ok(None);
        }
        let mut offset: u64 = 8;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let location = Location::Byte(offset);
            let mut len = [0u8; 4];
            let damaged = |problem: String| Decoded { location, end: offset, item: Item::Damaged(problem) };
            match read_full(&mut input, &mut len)? {
                0 => break,
                4 => {}
                n => {
                    out.push(damaged(format!("truncated: a frame length is cut after {n} of 4 bytes")));
                    break;
                }
            }
            let n = u32::from_be_bytes(len) as usize;
            if n > 64 << 20 {
                out.push(damaged(format!("frame length {n} is not plausible: the file is damaged here")));
                break;
            }
            // The frame where it sits in the read buffer, or (when it spans a refill) copied out.
            let buffered = input.fill_buf()?.len() >= n;
            if !buffered {
                buf.clear();
                buf.resize(n, 0);
                let got = read_full(&mut input, &mut buf)?;
                if got < n {
                    out.push(damaged(format!("truncated: a record is cut after {got} of {n} bytes")));
                    offset += 4 + got as u64;
                    break;
                }
            }
            let end = offset + 4 + n as u64;
            let frame: &[u8] = if buffered { &input.fill_buf()?[..n] } else { &buf };
            out.push_frame(location, end, frame, &mut check);
            if buffered {
                input.consume(n);
            }
            offset = end;
        }
        Location::Byte(offset)
    } else {
        let (mut offset, mut line) = (0u64, 0u64);
        let mut text = String::new();
        loop {
            text.clear();
            if input.read_line(&mut text)? == 0 {
                break;
            }
            line += 1;
            offset += text.len() as u64;
            let location = Location::Line(line);
            if !text.ends_with('\n') {
                let item = Item::Damaged("truncated: the last line has no end".into());
                out.push(Decoded { location, end: offset, item });
            }
            let item = match serde_json::from_str::<ExportRecord>(text.trim_end()) {
                Ok(rec) => check.item(rec),
                Err(e) => Item::Damaged(format!("not a record: {e}")),
            };
            out.push(Decoded { location, end: offset, item });
        }
        Location::Line(line + 1)
    };
    out.send();
    Ok(Some(end))
}

/// Opens, decodes and chain-checks one frame of a binary export into `item`. An event goes into
/// the event `item` holds, if it holds one, reusing its buffers.
fn decode_frame(frame: &[u8], check: &mut ChainCheck, item: &mut Item) {
    let payload = match codec::open_payload(RecordKind::Export, frame) {
        Ok(payload) => payload,
        Err(e) => {
            *item = Item::Damaged(format!("record damaged: {e}"));
            return;
        }
    };
    // Nearly every record: the event is decoded alone and its stated chain value taken from the
    // bytes as they are.
    let Some((encoded, stated)) = event_parts(payload) else {
        *item = match codec::decode::<ExportRecord>(payload) {
            Ok(rec) => check.item(rec),
            Err(e) => Item::Damaged(format!("record damaged: {e}")),
        };
        return;
    };
    let decoded = match item {
        Item::Event { event, .. } => codec::decode_event_into(encoded, event),
        _ => codec::decode::<Event>(encoded)
            .map(|event| *item = Item::Event { event, encoded: Vec::new(), stated: *stated, chain: Chain::NoHeader }),
    };
    if let Err(e) = decoded {
        *item = Item::Damaged(format!("record damaged: {e}"));
    } else if let Item::Event { encoded: bytes, stated: s, chain, .. } = item {
        bytes.clear();
        bytes.extend_from_slice(encoded);
        *s = *stated;
        *chain = check.event(encoded, stated);
    }
}

/// A chain value as written (64 lower-case hex digits); anything else is `None`.
fn parse_hex(s: &[u8]) -> Option<[u8; 32]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = (digit(s[2 * i])? << 4) | digit(s[2 * i + 1])?;
    }
    Some(out)
}

/// A revision for an operator: its number, or "none".
fn revision_or_none(r: Option<Revision>) -> String {
    r.map_or_else(|| "none".to_string(), |r| r.to_string())
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
    let dir = DataDir::open_read_only(path)?;
    let mut r = Report::default();
    let mut fold = Replay::default();
    for item in dir.db.iterator_cf(dir.cf(cf::EVENTS), rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(|e| StoreError::rocks("iterate events", e))?;
        let rev = key::parse_u64(&k);
        let location = EventKey(rev, &k);
        match codec::open::<Event>(RecordKind::Event, &v) {
            Ok(e) if Some(e.revision) != rev => {
                r.problem(location.to_string(), format!("holds the event of revision {}", e.revision))
            }
            Ok(e) => r.event(&location, &e, &until, &mut fold),
            Err(e) => r.problem(location.to_string(), format!("record damaged: {e}")),
        }
        if r.events % 10_000 == 0 {
            progress(r.events);
        }
    }
    r.state = fold.finish();
    for item in dir.db.iterator_cf(dir.cf(cf::MIGRATIONS), rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(|e| StoreError::rocks("iterate migrations", e))?;
        if let Err(e) = codec::open::<switchyard_protocol::Migration>(RecordKind::Migration, &v) {
            r.problem(
                match key::parse_u64(&k) {
                    Some(id) => format!("column family migrations, key m{id}"),
                    None => format!("column family migrations, a key of {} bytes (not a migration id)", k.len()),
                },
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

/// Where an event record is in a data directory (formatted only for a problem).
struct EventKey<'a>(Option<u64>, &'a [u8]);

impl std::fmt::Display for EventKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(r) => write!(f, "column family events, key revision {r}"),
            None => {
                let hex: String = self.1.iter().take(32).map(|b| format!("{b:02x}")).collect();
                write!(f, "column family events, a key of {} bytes (not a revision: {hex})", self.1.len())
            }
        }
    }
}

/// Writes the retained history of a stopped coordinator's data directory as an export.
pub fn export_data_dir(
    path: &Path,
    out: impl Write,
    format: Format,
    exported_at: Timestamp,
    mut progress: impl FnMut(u64),
) -> Result<(ExportHeader, u64), StoreError> {
    let dir = DataDir::open_read_only(path)?;
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
        format: EXPORT_FORMAT,
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

#[cfg(test)]
mod tests {
    use switchyard_protocol::{Actor, EventPayload, Name, RequestId};

    use super::*;

    /// The header of a test export of revisions 1 to `last_revision`.
    fn test_header(last_revision: Revision) -> ExportHeader {
        ExportHeader {
            source: "test".into(),
            cluster: None,
            first_revision: 1,
            last_revision,
            exported_at: Timestamp(0),
            format: EXPORT_FORMAT,
        }
    }

    fn event(revision: Revision, host: &str) -> Event {
        Event {
            revision,
            term: 3,
            time: Timestamp(1_700_000_000_000 + revision),
            actor: Actor::from("admin"),
            request_id: RequestId(u128::MAX - revision as u128),
            payload: EventPayload::HostMaintenanceChanged { host: Name::new(host).unwrap(), maintenance: true },
        }
    }

    #[test]
    fn the_event_bytes_found_in_a_record_are_its_own_encoding() {
        for (rev, host) in [(1, "h"), (300, "a-much-longer-host-name-of-sixty-characters-or-so-0123456789")] {
            let e = event(rev, host);
            let rec = ExportRecord::Event { event: Box::new(e.clone()), chain: hex(&[7u8; 32]) };
            let payload = codec::encode(&rec);
            assert_eq!(event_parts(&payload), Some((&codec::encode(&e)[..], &hex_digits(&[7u8; 32]))));
        }
        let header = ExportRecord::Trailer { last_revision: 1, count: 1, chain: hex(&[7u8; 32]) };
        assert_eq!(event_parts(&codec::encode(&header)), None);
        assert_eq!(event_parts(&[1]), None);
    }

    #[test]
    fn chain_values_round_trip_and_only_lower_case_hex_is_accepted() {
        let v: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(parse_hex(hex(&v).as_bytes()), Some(v));
        assert_eq!(parse_hex(hex(&v).to_uppercase().as_bytes()), None);
        assert_eq!(parse_hex(&hex(&v).as_bytes()[1..]), None);
        assert_eq!(parse_hex(format!("{}g", &hex(&v)[1..]).as_bytes()), None);
    }

    #[test]
    fn an_export_reads_back_clean_and_a_changed_byte_is_located() {
        let header = test_header(3);
        let bytes = w_bytes(header);
        // Read and checked, not folded (the events name a host no event registered).
        let until = Until { revision: Some(0), time: None };
        let r = read_export(&bytes[..], until, |_| {}).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!((r.events, r.last_revision), (3, Some(3)));
        // Flip a byte inside the second event's host name: its checksum fails, at its offset.
        let mut bad = bytes.clone();
        let at = bad.windows(2).enumerate().filter(|(_, w)| w == b"h1").nth(1).unwrap().0;
        bad[at + 1] = b'2';
        let r = read_export(&bad[..], until, |_| {}).unwrap();
        assert!(
            r.problems.iter().any(|p| p.location.starts_with("byte ") && p.problem.contains("damaged")),
            "{:?}",
            r.problems
        );
    }

    /// Longer than a few of the reader's batches (which go back and forth between its threads),
    /// in both formats: every event reaches the caller in order with its encoded bytes and the
    /// chain value written for it, and a changed chain value (under a valid checksum) is located.
    #[test]
    fn a_long_export_reads_the_same_in_both_formats_and_a_changed_chain_value_is_located() {
        let n: u64 = 2 * BATCH as u64 + 500;
        let header = test_header(n);
        let write = |format| {
            let mut out = Vec::new();
            let mut w = ExportWriter::new(&mut out, format, &header).unwrap();
            for rev in 1..=n {
                w.push(&event(rev, "h1")).unwrap();
            }
            w.finish().unwrap();
            out
        };
        let until = Until { revision: Some(0), time: None };
        let read = |bytes: &[u8]| {
            let mut seen: Vec<(Revision, String)> = Vec::new();
            let r = read_export_with(
                bytes,
                until,
                |_| {},
                |rec, _| {
                    assert_eq!(rec.encoded, codec::encode(rec.event), "the encoded bytes are the event's");
                    seen.push((rec.event.revision, String::from_utf8(rec.chain.to_vec()).unwrap()))
                },
            )
            .unwrap();
            (r, seen)
        };
        let binary = write(Format::Binary);
        let (r, seen) = read(&binary);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(seen.iter().map(|(rev, _)| *rev).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
        assert!(seen.iter().all(|(_, c)| parse_hex(c.as_bytes()).is_some()));
        let (rj, seen_json) = read(&write(Format::JsonLines));
        assert!(rj.problems.is_empty(), "{:?}", rj.problems);
        assert_eq!(seen_json, seen);

        // Re-seal one event record with another chain value: the checksum holds, the chain not.
        let mut bad = binary.clone();
        let (mut at, mut index) = (MAGIC.len(), 0u64);
        let target = 1_500; // records: the header, then events 1.. (event 1 500 is record 1 500)
        while index < target {
            let len = u32::from_be_bytes(bad[at..at + 4].try_into().unwrap()) as usize;
            at += 4 + len;
            index += 1;
        }
        let len = u32::from_be_bytes(bad[at..at + 4].try_into().unwrap()) as usize;
        let frame = &bad[at + 4..at + 4 + len];
        let ExportRecord::Event { event: e, .. } = codec::open::<ExportRecord>(RecordKind::Export, frame).unwrap()
        else {
            panic!("record {target} is an event");
        };
        assert_eq!(e.revision, target);
        let resealed = codec::seal(RecordKind::Export, &ExportRecord::Event { event: e, chain: hex(&[9u8; 32]) });
        assert_eq!(resealed.len(), len);
        bad[at + 4..at + 4 + len].copy_from_slice(&resealed);
        let (r, _) = read(&bad);
        let first = r.problems.first().expect("the changed chain value is found");
        assert_eq!(first.location, format!("byte {at}"));
        assert!(first.problem.contains(&format!("hash chain broken at revision {target}")), "{:?}", r.problems);
    }

    /// An export whose chain holds but whose events the state machine cannot take (edited,
    /// then re-chained: the chain has no key) is reported, not folded (which panicked).
    #[test]
    fn events_the_state_cannot_take_are_reported_not_folded() {
        let header = test_header(3);
        let r = read_export(&w_bytes(header)[..], Until::default(), |_| {}).unwrap();
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        let p = &r.problems[0];
        assert!(p.problem.contains("revision 1 cannot follow") && p.problem.contains("unknown host h1"), "{p:?}");
        assert_eq!((r.events, r.state.revision()), (3, 0), "read whole, nothing folded");
    }

    fn w_bytes(header: ExportHeader) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = ExportWriter::new(&mut out, Format::Binary, &header).unwrap();
        for rev in 1..=3 {
            w.push(&event(rev, "h1")).unwrap();
        }
        w.finish().unwrap();
        out
    }
}
