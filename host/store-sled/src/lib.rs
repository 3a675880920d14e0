//! Airlock's embedded storage backend: the traits of `airlock-store` over
//! sled databases in the host's data directory, and the mode as a file
//! beside them. One process holds a database at a time (another one waits
//! for its lock, then is told it is
//! [`Locked`](airlock_store::ErrorKind::Locked)); no server to run.
//!
//! The layouts are the ones earlier versions wrote, so existing data
//! directories open as they are.

#![deny(missing_docs)]

mod audit;
mod ledger;
mod mode;
pub mod open;
mod plugins;
mod workspace;

pub use audit::{SEGMENT_BYTES, SledAudit, SledAuditOptions};

/// How much of the audit log's database sled keeps in memory (its page
/// cache, approximately). sled's default is 1 GiB, and a serving host
/// fills it with the records it appends (2–4 KiB a call, measured) and
/// rarely reads again; appends touch only the newest pages.
pub const AUDIT_CACHE_BYTES: u64 = 32 << 20;

/// The same for the ledger's and the workspace's databases (read by
/// calls, so kept larger).
pub const CACHE_BYTES: u64 = 64 << 20;
pub use ledger::SledLedger;
pub use mode::{FileMode, MODE_FILE};
pub use plugins::{FilePlugins, INSTALLED_DIR};
pub use workspace::{LAYOUT as WORKSPACE_LAYOUT, SledWorkspace};

/// Stored bytes that must be UTF-8 (a name in a key, a meta value), as a
/// string; [`Corrupt`](airlock_store::ErrorKind::Corrupt) naming `what`
/// when they are not. A lossy decoding would hand on another name than
/// the one stored (two damaged keys could even read as one).
fn stored_str(what: impl FnOnce() -> String, bytes: &[u8]) -> airlock_store::Result<String> {
    std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| {
        airlock_store::StoreError::with_source(
            airlock_store::ErrorKind::Corrupt,
            format!("{} is not UTF-8", what()),
            e,
        )
    })
}
