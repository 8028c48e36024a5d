//! Secrets as the configuration holds them: bearer tokens by their SHA-256 only (a stolen or
//! shared configuration file gives no token away), compared in constant time; the shared
//! cluster secret (which coordinators send, so they keep it) checked for length and for the
//! placeholders of the examples; and [`Secret`], a string that never shows in `Debug` output
//! or logs.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Fewest characters of a token or the cluster secret.
pub const SECRET_LEN_MIN: usize = 24;

/// The command that makes a good secret (named in every refusal).
pub const MAKE_ONE: &str = "switchyard token new";

/// A token's SHA-256, as the configuration lists it (64 hex digits).
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// The SHA-256 of a presented token, raw, for a lookup among the configured hashes. Hashing
/// first makes the lookup's timing depend on the hash, which tells an attacker nothing about
/// the token.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Reads a configured hash (64 hex digits).
pub fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets in a time that depends only on their lengths, not on where they differ.
pub fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Why a plaintext secret (the cluster secret, a token being made) is too weak, if it is:
/// too short, an example's placeholder, or hardly random.
pub fn weakness(s: &str) -> Option<String> {
    let lower = s.to_ascii_lowercase();
    if ["change-me", "changeme", "example", "placeholder", "secret-here", "xxxx"].iter().any(|p| lower.contains(p)) {
        return Some(format!("is a placeholder; make a real one with `{MAKE_ONE}`"));
    }
    if s.len() < SECRET_LEN_MIN {
        return Some(format!("is shorter than {SECRET_LEN_MIN} characters; make one with `{MAKE_ONE}`"));
    }
    let mut distinct: Vec<char> = s.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 8 {
        return Some(format!("has fewer than 8 different characters; make one with `{MAKE_ONE}`"));
    }
    None
}

/// A secret string: serialized as itself, shown as `<redacted>`.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_and_secrets_compare_by_value() {
        let h = token_hash("a-token");
        assert_eq!(parse_hash(&h), Some(token_digest("a-token")));
        for bad in ["", "00", &"g".repeat(64), &"0".repeat(63), &"é".repeat(32)] {
            assert_eq!(parse_hash(bad), None, "{bad}");
        }
        assert!(secret_eq(b"abc", b"abc"));
        assert!(!secret_eq(b"abc", b"abd"));
        assert!(!secret_eq(b"abc", b"abcd"));
    }

    #[test]
    fn placeholders_and_short_or_repetitive_secrets_are_weak() {
        for weak in [
            "change-me-to-a-long-random-secret",
            "short",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "CHANGEME0123456789abcdefgh",
        ] {
            assert!(weakness(weak).is_some(), "{weak}");
        }
        assert_eq!(weakness("7f3a9c0e5b2d4816a0c3e9f1b7d25a64"), None);
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "<redacted>");
    }
}
