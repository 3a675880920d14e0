//! The crate's error type.

use std::path::PathBuf;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the audit log could not do what was asked.
///
/// Every variant means "nothing was recorded": callers must treat it as a
/// refusal to run the call (fail closed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database is held by another process (sled allows one).
    #[error(
        "the audit log at {} is in use by another airlock process; stop it or point this one at another data directory",
        path.display()
    )]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// The database could not be opened, read or written.
    #[error("audit log at {}: {message}", path.display())]
    Store {
        /// The database directory.
        path: PathBuf,
        /// What the store reported.
        message: String,
    },
    /// A key file is missing, unreadable, exposed or corrupt.
    #[error("key file {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The log holds data this version cannot read.
    #[error("audit log at {}: record {seq} is unreadable: {reason}; run `airlock audit verify`", path.display())]
    Corrupt {
        /// The database directory.
        path: PathBuf,
        /// The record.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The log fails verification where the host would extend it.
    #[error(
        "audit log at {} fails verification at {failure}; the host will not extend or sign it. Run `airlock audit verify` and move the log aside after investigating",
        path.display()
    )]
    Tampered {
        /// The audit directory.
        path: PathBuf,
        /// The first bad record.
        failure: crate::verify::VerifyFailure,
    },
    /// A file (export, checkpoint file) could not be read or written.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The log was closed.
    #[error("the audit log is closed")]
    Closed,
    /// An origin id that cannot name a chain (or its key file).
    #[error(
        "invalid audit origin {origin:?}: 1 to 64 ASCII letters, digits, '.', '_' or '-', not starting with '.' or '-'"
    )]
    InvalidOrigin {
        /// The id given.
        origin: String,
    },
}

impl Error {
    pub(crate) fn store(path: &std::path::Path, e: impl std::fmt::Display) -> Error {
        Error::Store {
            path: path.to_owned(),
            message: e.to_string(),
        }
    }
}

impl Error {
    /// The audit log's error for a failure of its store at `path`
    /// ([`Error::Locked`] when another process holds it).
    pub fn from_store(path: &std::path::Path, e: &airlock_store::StoreError) -> Error {
        crate::log::store_error(path, e)
    }
}
