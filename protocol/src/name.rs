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
#[derive(PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

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

    #[test]
    fn decoding_validates() {
        let bytes = crate::codec::encode(&"../escape".to_string());
        assert!(crate::codec::decode::<Name>(&bytes).is_err());
    }
}
