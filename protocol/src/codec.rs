//! The one home of binary encoding. Everything that crosses a process boundary or reaches disk in
//! binary form goes through here, so bincode (pinned 2.x) can be swapped in one place.
//!
//! Stored records are *sealed*: a one-byte format version, a one-byte record kind, a CRC-32C of
//! the payload, then the payload. [`open`] refuses a record whose version is unknown, whose kind
//! is not the expected one, or whose checksum does not match, so a flipped byte on disk is
//! reported instead of decoded as garbage.

use serde::de::DeserializeOwned;
use serde::Serialize;

mod in_place;
pub use in_place::decode_event_into;

/// Version of the sealed record layout and of the encodings inside it.
pub const FORMAT_VERSION: u8 = 1;

/// Largest payload [`decode`] accepts: bounds the allocation a corrupt length prefix can cause.
pub const DECODE_LIMIT_BYTES: usize = 1 << 30;

const HEADER_LEN: usize = 6;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>()
}

/// What a sealed record holds; checked on open so one kind is never decoded as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    LogEntry = 1,
    Vote = 2,
    LogId = 3,
    NodeId = 4,
    AppliedState = 5,
    Event = 6,
    Migration = 7,
    ClusterState = 8,
    SnapshotHeader = 9,
    SnapshotPointer = 10,
    FormatVersion = 11,
    Export = 12,
    ImportProgress = 13,
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<RecordKind> {
        use RecordKind::*;
        [
            LogEntry,
            Vote,
            LogId,
            NodeId,
            AppliedState,
            Event,
            Migration,
            ClusterState,
            SnapshotHeader,
            SnapshotPointer,
            FormatVersion,
            Export,
            ImportProgress,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
    }
}

/// Why bytes could not be turned back into a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("record is {len} bytes, shorter than its {HEADER_LEN}-byte header")]
    Truncated { len: usize },
    #[error("record has format version {found}; this build reads version {FORMAT_VERSION}")]
    UnknownVersion { found: u8 },
    #[error("record kind byte {found} where a {expected:?} was expected")]
    WrongKind { expected: RecordKind, found: u8 },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("{extra} unexpected trailing bytes after the payload")]
    Trailing { extra: usize },
}

/// Encodes a value (bincode, standard configuration).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Encoding into a Vec only fails for types serde cannot represent (e.g. maps with non-string
    // keys in some formats); bincode supports all of ours, so failure is a programming error.
    bincode::serde::encode_to_vec(value, config()).expect("bincode encodes every protocol type")
}

/// Encodes a sequence from its items' encodings, exactly as [`encode`] encodes a `Vec` of the
/// items (bincode writes a sequence as its length, then each item): for an answer trimmed by
/// the size of its items, which then need encoding once, not twice.
pub fn encode_seq_of_encoded(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = encode(&(items.len() as u64));
    out.reserve(items.iter().map(Vec::len).sum());
    items.iter().for_each(|i| out.extend_from_slice(i));
    out
}

/// Decodes a value that must fill `bytes` exactly.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing { extra: bytes.len() - used });
    }
    Ok(value)
}

/// Encodes and seals a value as a stored record of `kind`.
pub fn seal<T: Serialize + ?Sized>(kind: RecordKind, value: &T) -> Vec<u8> {
    let payload = encode(value);
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    seal_encoded_into(&mut out, kind, &payload);
    out
}

/// Appends to `out` the sealed record of `kind` whose payload is `encoded`: a value's
/// [`encode`]d bytes, as another record held them (an export's event is stored as it was
/// exported, without encoding it again). The bytes are taken as they are.
pub fn seal_encoded_into(out: &mut Vec<u8>, kind: RecordKind, encoded: &[u8]) {
    out.reserve(HEADER_LEN + encoded.len());
    out.push(FORMAT_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&crc32c::crc32c(encoded).to_be_bytes());
    out.extend_from_slice(encoded);
}

/// Checks a sealed record's header and checksum and decodes its payload.
pub fn open<T: DeserializeOwned>(kind: RecordKind, bytes: &[u8]) -> Result<T, CodecError> {
    decode(open_payload(kind, bytes)?)
}

/// Checks a sealed record's header and checksum and returns the raw payload.
pub fn open_payload(kind: RecordKind, bytes: &[u8]) -> Result<&[u8], CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::Truncated { len: bytes.len() });
    }
    if bytes[0] != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion { found: bytes[0] });
    }
    if RecordKind::from_u8(bytes[1]) != Some(kind) {
        return Err(CodecError::WrongKind { expected: kind, found: bytes[1] });
    }
    let stored = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    let payload = &bytes[HEADER_LEN..];
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record sealed from a value's encoded bytes is the record sealed from the value, and
    /// appending leaves what the buffer held before.
    #[test]
    fn sealing_encoded_bytes_seals_the_value() {
        let value = (42u64, "guest-7".to_string(), vec![1u8, 2, 3]);
        let mut out = b"before".to_vec();
        seal_encoded_into(&mut out, RecordKind::Event, &encode(&value));
        assert_eq!(&out[..6], b"before");
        assert_eq!(out[6..], seal(RecordKind::Event, &value));
        assert_eq!(open::<(u64, String, Vec<u8>)>(RecordKind::Event, &out[6..]).unwrap(), value);
    }

    /// Lengths on each side of the varint's width steps (one byte below 251, then 3 bytes).
    #[test]
    fn a_sequence_of_encoded_items_is_the_encoded_sequence() {
        for n in [0usize, 1, 250, 251, 300, 70_000] {
            let items: Vec<(u64, String)> = (0..n).map(|i| (i as u64 * 977, format!("item {i}"))).collect();
            let encoded: Vec<Vec<u8>> = items.iter().map(encode).collect();
            assert_eq!(encode_seq_of_encoded(&encoded), encode(&items), "{n} items");
        }
    }

    #[test]
    fn sealed_round_trip() {
        let v = (42u64, "hello".to_string(), vec![1u8, 2, 3]);
        let rec = seal(RecordKind::Event, &v);
        assert_eq!(open::<(u64, String, Vec<u8>)>(RecordKind::Event, &rec).unwrap(), v);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let rec = seal(RecordKind::Event, &(7u64, "payload".to_string()));
        for i in 0..rec.len() {
            for bit in 0..8 {
                let mut bad = rec.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    open::<(u64, String)>(RecordKind::Event, &bad).is_err(),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn wrong_kind_version_and_truncation_are_named() {
        let rec = seal(RecordKind::Vote, &1u64);
        assert_eq!(
            open::<u64>(RecordKind::Event, &rec),
            Err(CodecError::WrongKind { expected: RecordKind::Event, found: 2 })
        );
        let mut v2 = rec.clone();
        v2[0] = 2;
        assert_eq!(open::<u64>(RecordKind::Vote, &v2), Err(CodecError::UnknownVersion { found: 2 }));
        assert_eq!(open::<u64>(RecordKind::Vote, &rec[..3]), Err(CodecError::Truncated { len: 3 }));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&5u32);
        bytes.push(0);
        assert_eq!(decode::<u32>(&bytes), Err(CodecError::Trailing { extra: 1 }));
    }
}
