//! The frames of a Raft stream between coordinators (the coordinator's `network.rs` says why
//! streams): a little-endian `u32` length, then that many bytes: a kind byte and a body (a
//! bincode request or answer, the same bodies as the plain requests and their answers).
//!
//! The client sends a request frame and reads one answer frame before it sends the next. The
//! server answers [`REFUSED`] (with a message) to a frame it cannot take (an unknown kind, a
//! body that does not decode, a length past the limit) and closes the stream.
//!
//! Here is the format alone, without I/O: the coordinator reads a frame's header, checks it with
//! [`body_len`] before it reads (or allocates) anything more, then reads the rest. [`split`]
//! takes frames off a buffer with the same checks, for tests and fuzzing.

/// An `AppendEntriesRequest`.
pub const APPEND: u8 = 1;
/// A `VoteRequest`.
pub const VOTE: u8 = 2;
/// An `InstallSnapshotRequest` (one chunk).
pub const SNAPSHOT: u8 = 3;
/// The answer to a request: the encoded `Result` Raft answered.
pub const ANSWER: u8 = 0x80;
/// The request was not taken; the body says why, and the stream ends.
pub const REFUSED: u8 = 0x81;

/// Largest body of a frame: a batch of entries or one snapshot chunk, as for plain requests.
pub const BODY_MAX: usize = 64 << 20;

/// Bytes of a frame's header (its length).
pub const HEADER: usize = 4;

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header announces no kind byte, or a body past the limit.
    #[error("a frame of {len} bytes (the most is {} and at least 1)", max + 1)]
    Length { len: usize, max: usize },
    /// A body too large to send.
    #[error("a frame body of {0} bytes is too large")]
    TooLarge(usize),
}

/// One frame's bytes: header, kind, body.
pub fn encode(kind: u8, body: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = u32::try_from(body.len() + 1)
        .ok()
        .filter(|_| body.len() <= BODY_MAX)
        .ok_or(FrameError::TooLarge(body.len()))?;
    let mut buf = Vec::with_capacity(HEADER + 1 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(body);
    Ok(buf)
}

/// The length of the body a frame's header announces, checked: at least the kind byte, and a
/// body of at most `max` bytes. A reader calls it before it reads or allocates the body.
pub fn body_len(header: [u8; HEADER], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len == 0 || len - 1 > max {
        return Err(FrameError::Length { len, max });
    }
    Ok(len - 1)
}

/// A frame taken off a buffer ([`split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: u8,
    pub body: &'a [u8],
    /// Bytes of the buffer it took: header, kind and body.
    pub len: usize,
}

/// Takes the first frame off `buf`, or `None` while `buf` holds no whole frame yet. A header
/// that [`body_len`] refuses is an error however little follows it.
pub fn split(buf: &[u8], max: usize) -> Result<Option<Frame<'_>>, FrameError> {
    let Some(header) = buf.first_chunk::<HEADER>() else { return Ok(None) };
    let body = body_len(*header, max)?;
    let len = HEADER + 1 + body;
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(Frame { kind: buf[HEADER], body: &buf[HEADER + 1..len], len }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_as_they_were_encoded_and_a_part_is_not_yet_a_frame() {
        let mut buf = encode(VOTE, b"body").unwrap();
        buf.extend(encode(ANSWER, b"").unwrap());
        let first = split(&buf, 16).unwrap().unwrap();
        assert_eq!((first.kind, first.body), (VOTE, &b"body"[..]));
        let second = split(&buf[first.len..], 16).unwrap().unwrap();
        assert_eq!((second.kind, second.body, first.len + second.len), (ANSWER, &b""[..], buf.len()));
        for cut in 0..first.len {
            assert_eq!(split(&buf[..cut], 16).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn a_length_of_nothing_or_past_the_limit_is_refused_from_the_header() {
        let buf = encode(APPEND, &[7; 17]).unwrap();
        assert_eq!(split(&buf[..HEADER], 16), Err(FrameError::Length { len: 18, max: 16 }));
        assert_eq!(split(&buf, 17).unwrap().map(|f| f.body.len()), Some(17));
        assert!(matches!(body_len([0xff; 4], BODY_MAX), Err(FrameError::Length { .. })));
        assert!(matches!(body_len([0; 4], BODY_MAX), Err(FrameError::Length { len: 0, .. })));
        assert_eq!(body_len([1, 0, 0, 0], BODY_MAX), Ok(0));
        assert_eq!(encode(ANSWER, &vec![0; BODY_MAX + 1]), Err(FrameError::TooLarge(BODY_MAX + 1)));
    }
}
