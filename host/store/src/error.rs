//! The seam's one error type.

use std::fmt;

/// A `Result` with the seam's [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What kind of failure a backend reports; callers branch on this, never
/// on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The backend cannot be reached or did not answer in time (connection
    /// refused or cut, pool exhausted, disk failing). Retrying later may
    /// work; nothing was changed.
    Unavailable,
    /// A write lost a race the caller cannot settle by re-reading (an audit
    /// append whose expected chain head moved, an id that already exists).
    Conflict,
    /// Stored data cannot be read (undecodable record, broken invariant).
    Corrupt,
    /// Another process holds the store exclusively (an embedded database).
    Locked,
    /// The store was written by a version of Airlock with another layout or
    /// schema, newer or older than this one understands.
    Incompatible,
    /// The configuration names a store that cannot be used (bad URL, wrong
    /// password, missing database).
    Config,
}

impl ErrorKind {
    /// The snake_case name, as in error JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Locked => "locked",
            ErrorKind::Incompatible => "incompatible",
            ErrorKind::Config => "config",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend failure: its [`ErrorKind`], what was being done, and the
/// backend's own error as the source.
#[derive(Debug, thiserror::Error)]
#[error("{context}")]
pub struct StoreError {
    kind: ErrorKind,
    context: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StoreError {
    /// A failure of `kind` described by `context`.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            context: context.into(),
            source: None,
        }
    }

    /// A failure of `kind` described by `context`, caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> StoreError {
        StoreError {
            kind,
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// [`ErrorKind::Unavailable`] caused by `source`.
    pub fn unavailable(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> StoreError {
        StoreError::with_source(ErrorKind::Unavailable, context, source)
    }

    /// [`ErrorKind::Corrupt`]: `context` says what cannot be read.
    pub fn corrupt(context: impl Into<String>) -> StoreError {
        StoreError::new(ErrorKind::Corrupt, context)
    }

    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What was being done, without the source.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The message with every source, `: `-separated — what a person reads.
    pub fn chain(&self) -> String {
        let mut out = self.context.clone();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }
}
