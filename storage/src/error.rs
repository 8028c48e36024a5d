//! Storage errors. Each names what failed and where (column family and key, or file), so an
//! operator can find a corrupt record instead of guessing.

use std::path::PathBuf;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use switchyard_protocol::codec::CodecError;

use crate::types::{NodeId, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{context}: {source}")]
    Rocks { context: String, source: rocksdb::Error },
    #[error("corrupt record in column family `{cf}` at {key}: {source}")]
    Corrupt { cf: &'static str, key: String, source: CodecError },
    #[error("corrupt snapshot file {path} at byte {offset}: {reason}")]
    CorruptSnapshot { path: PathBuf, offset: u64, reason: String },
    #[error("data directory {path} belongs to node {found}, not node {expected}; a node's data must never be reused under another id (add the node as a new member instead)")]
    NodeIdMismatch { path: PathBuf, found: u64, expected: u64 },
    #[error("data directory {path} has on-disk format version {found}; this build reads version {supported}. The event history is portable across versions: export it with the build that wrote it (`switchyard log export`) and seed a new cluster from the export with this one (`switchyard log restore`)")]
    UnsupportedFormat { path: PathBuf, found: u32, supported: u32 },
    #[error("event history is missing revision {revision} (needed to rebuild state up to revision {up_to})")]
    MissingEvent { revision: u64, up_to: u64 },
    #[error("{0}")]
    Inconsistent(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { context: context.into(), source }
    }
    pub(crate) fn rocks(context: impl Into<String>, source: rocksdb::Error) -> Self {
        StoreError::Rocks { context: context.into(), source }
    }

    /// Wraps this error for openraft, naming the subject and the operation that failed. The
    /// message already holds its causes (`context: source`), so it is carried as text: wrapped
    /// as an error it would name its Rust type and repeat its source.
    pub(crate) fn into_raft(self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> StorageError {
        StorageIOError::new(subject, verb, AnyError::error(&self)).into()
    }
}
