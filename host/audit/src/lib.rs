//! Airlock's audit log: a tamper-evident record of every tool call.
//!
//! Records are appended to a chain with a gap-free sequence number, kept
//! in an [`AuditStore`](airlock_store::AuditStore): by default an embedded
//! [sled](https://docs.rs/sled) database in the audit directory
//! ([`AuditLog::open`], feature `sled`), or any other backend
//! ([`AuditLog::with_store`]). Every host (origin) appends to its own
//! chain with its own key; a log reads and verifies every chain in its
//! store ([`AuditLog::verify_all`], [`AuditLog::query_all`],
//! [`AuditLog::export_all`]). Each record's hash covers the
//! previous record's hash and the record's canonical encoding
//! ([`canonical`]), so changing, removing or reordering any record breaks
//! the chain. Every so often (and at shutdown) the host signs a
//! [`Checkpoint`] — (sequence, head hash) — with its Ed25519 key; a
//! checkpoint kept elsewhere (an export) also catches a history that was
//! rewritten and re-hashed. Secrets are redacted ([`Redactor`]) before
//! anything is written.
//!
//! This crate does not depend on the WebAssembly runtime: reviewers can
//! verify an export with it alone ([`verify_export`]), and the format is
//! specified in `docs/audit-log.md` for verifiers in other languages.
//!
//! Two small helpers every Airlock crate above this one shares live here
//! because this is the one they all depend on: [`text`] cuts text to a byte
//! bound on a character boundary, [`token`] checks a bearer token against
//! its configured SHA-256 in constant time.
//!
//! # Example
//! ```
//! use airlock_audit::{AuditConfig, AuditLog, Durability, Entry, Event};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let log = AuditLog::open(dir.path(), AuditConfig::default())?;
//!
//! let mut entry = Entry::new(Event::CallStarted);
//! entry.call_id = Some("call-1".into());
//! entry.tool = Some("refund".into());
//! // Secrets never reach the disk: redact copies before appending them.
//! let args = serde_json::json!({"account": "9182", "password": "hunter2"});
//! let redacted = log.redactor().redact(&args, &[], &[]);
//! entry.args = Some(redacted.value.to_string());
//! let record = log.append(entry, Durability::Flushed)?;
//! assert_eq!(record.seq, 1);
//!
//! log.checkpoint()?;
//! let report = log.verify(&[])?.expect("an untouched log verifies");
//! assert_eq!(report.records, 1);
//! # Ok(())
//! # }
//! ```

pub mod canonical;
mod checkpoint;
mod error;
mod keys;
mod log;
mod origins;
mod record;
mod redact;
pub mod text;
pub mod token;
mod verify;

/// Opening a sled database another process may hold (in
/// `airlock-store-sled`; re-exported for the host's other sled stores).
#[cfg(feature = "sled")]
pub use airlock_store_sled::open as sled_open;
pub use checkpoint::{CHECKPOINT_DOMAIN, Checkpoint};
pub use error::{Error, Result};
pub use keys::{create_signing_key, parse_public_key, read_signing_key};
pub use log::{
    AuditConfig, AuditHealth, AuditLog, DB_DIR, DEFAULT_ORIGIN, Durability, Export, ExportSummary,
    Filter, HOLD_RELEASE_WAIT, Hold, KEYS_DIR, PUBLIC_KEY_FILE, REDACTION_KEY_FILE,
    SIGNING_KEY_FILE, check_origin, read_export, verify_export,
};
pub use origins::{
    ChainQuery, ChainRecord, ChainSummary, ChainVerification, EXPORT_VERSION_CHAINS, ExportChain,
    KeyRing, KeySource, read_export_chains, verify_export_chains,
};
pub use record::{Entry, Event, GENESIS_HASH, OUTCOME_UNKNOWN, Record, chain_hash, sha256_hex};
pub use redact::{
    KEYED_DIGEST_PREFIX, KnownSecrets, Redacted, RedactionRules, Redactor, capped_json,
    shows_redaction,
};
pub use verify::{Problem, VerifyFailure, VerifyReport};
