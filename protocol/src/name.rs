//! Validated names for hosts, guests and packages.
//!
//! Names travel from the operator's keyboard into the replicated log and end up as file names in
//! every agent's data directory, so they are checked once, at construction, against a strict
//! character set. A [`Name`] that exists is safe to use as a path component: it cannot be empty,
//! `.` or `..`, cannot contain a separator or NUL, and is short. Deserialisation validates too, so
//! a name decoded from the wire or from disk is held to the same rule.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest name accepted, in bytes. Short enough for every file system and for a hostname label.
pub const NAME_LEN_MAX: usize = 63;

/// A host, guest or package name: 1 to 63 bytes of `[A-Za-z0-9._-]`, starting with a letter or a
/// digit.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

/// Byte-wise order, as for `str`, with a fast path: the state keeps guests, hosts and packages
/// in ordered maps by name, and a lookup among 10 000 guests compares some 30 names. The first
/// eight bytes of each (zero-padded) are compared as one big-endian number, which orders them as
/// the bytes do whenever the numbers differ (padding is below every byte a name can hold, and a
/// name that ends first is the smaller); only equal prefixes need the whole comparison.
impl Ord for Name {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        fn prefix(s: &[u8]) -> u64 {
            let n = s.len();
            if let Some(word) = s.first_chunk::<8>() {
                return u64::from_be_bytes(*word);
            }
            // Shorter: two loads that may overlap (the overlapping bytes land in the same place),
            // not a copy of a variable length, which would be a call to `memcpy`.
            let (hi, lo) = if n >= 4 {
                let first = u32::from_be_bytes(s[..4].try_into().expect("4 bytes"));
                let last = u32::from_be_bytes(s[n - 4..].try_into().expect("4 bytes"));
                (u64::from(first) << 32, u64::from(last) << (64 - 8 * n))
            } else {
                let x = s.iter().enumerate().fold(0, |x, (i, b)| x | (u64::from(*b) << (56 - 8 * i)));
                (x, 0)
            };
            hi | lo
        }
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        prefix(a).cmp(&prefix(b)).then_with(|| a.cmp(b))
    }
}

impl PartialOrd for Name {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Clone for Name {
    fn clone(&self) -> Self {
        Name(self.0.clone())
    }
    /// Reuses this name's buffer (the state machine overwrites guest records in place).
    fn clone_from(&mut self, source: &Self) {
        self.0.clone_from(&source.0)
    }
}

/// Why a string is not a valid [`Name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {len} bytes long; at most {NAME_LEN_MAX} are allowed")]
    TooLong { len: usize },
    #[error("name must start with a letter or a digit")]
    BadStart,
    #[error("name contains {found:?} at byte {at}; only letters, digits, '.', '_' and '-' are allowed")]
    BadChar { found: char, at: usize },
}

impl Name {
    /// Checks `s` against the name rules.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        Self::check(&s)?;
        Ok(Name(s))
    }

    fn check(s: &str) -> Result<(), NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > NAME_LEN_MAX {
            return Err(NameError::TooLong { len: s.len() });
        }
        for (at, c) in s.char_indices() {
            let ok = c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if !ok {
                return Err(NameError::BadChar { found: c, at });
            }
        }
        if !s.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(NameError::BadStart);
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Makes this name `s`, if `s` is a valid name, in the buffer it already has (the codec's
    /// in-place decoding).
    pub(crate) fn overwrite(&mut self, s: &str) -> Result<(), NameError> {
        Self::check(s)?;
        self.0.clear();
        self.0.push_str(s);
        Ok(())
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Name::new(s)
    }
}

impl TryFrom<&str> for Name {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Name::new(s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["vm1", "db-01.prod", "A_b-c.d", "9lives", &"x".repeat(NAME_LEN_MAX)] {
            assert!(Name::new(ok).is_ok(), "{ok:?} should be accepted");
        }
    }

    #[test]
    fn refuses_hostile_names() {
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            ("..", NameError::BadStart),
            (".", NameError::BadStart),
            (".hidden", NameError::BadStart),
            ("-rf", NameError::BadStart),
            ("../x", NameError::BadChar { found: '/', at: 2 }),
            ("/etc/passwd", NameError::BadChar { found: '/', at: 0 }),
            ("a\0b", NameError::BadChar { found: '\0', at: 1 }),
            ("a b", NameError::BadChar { found: ' ', at: 1 }),
            ("a\\b", NameError::BadChar { found: '\\', at: 1 }),
            ("gäst", NameError::BadChar { found: 'ä', at: 1 }),
        ];
        for (input, want) in cases {
            assert_eq!(Name::new(*input).unwrap_err(), *want, "input {input:?}");
        }
        assert_eq!(Name::new("x".repeat(NAME_LEN_MAX + 1)).unwrap_err(), NameError::TooLong { len: NAME_LEN_MAX + 1 });
    }

    proptest::proptest! {
        /// The fast path of `Ord` orders names exactly as their bytes: the maps keyed by name
        /// (and every listing and snapshot built from them) keep the order they always had.
        #[test]
        fn names_order_as_their_bytes(a in "[A-Za-z0-9][A-Za-z0-9._-]{0,20}", b in "[A-Za-z0-9][A-Za-z0-9._-]{0,20}") {
            let (x, y) = (Name::new(a.clone()).unwrap(), Name::new(b.clone()).unwrap());
            proptest::prop_assert_eq!(x.cmp(&y), a.as_bytes().cmp(b.as_bytes()));
            proptest::prop_assert_eq!(x.cmp(&x.clone()), std::cmp::Ordering::Equal);
            // Names that share a prefix of any length, the case the fast path cannot decide.
            let ab = format!("{a}{b}");
            proptest::prop_assert_eq!(x.cmp(&Name::new(ab.clone()).unwrap()), a.as_bytes().cmp(ab.as_bytes()));
            proptest::prop_assert_eq!(Name::new(ab.clone()).unwrap().cmp(&y), ab.as_bytes().cmp(b.as_bytes()));
        }
    }

    #[test]
    fn names_sharing_a_long_prefix_order_by_the_rest() {
        let n = |s: &str| Name::new(s).unwrap();
        assert!(n("guest-000001") < n("guest-000002"));
        assert!(n("guest-00") < n("guest-000"));
        assert!(n("a") < n("a0") && n("A") < n("a") && n("9") < n("A"));
        assert_eq!(n("guest-000001").cmp(&n("guest-000001")), std::cmp::Ordering::Equal);
    }

    #[test]
    fn decoding_validates() {
        let bytes = crate::codec::encode(&"../escape".to_string());
        assert!(crate::codec::decode::<Name>(&bytes).is_err());
    }
}
