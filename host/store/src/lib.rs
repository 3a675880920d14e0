//! Airlock's storage seam.
//!
//! Everything an Airlock host keeps between calls goes through the traits
//! of this crate, so a deployment chooses where its state lives: sled in
//! the data directory (one host, no server; crate `airlock-store-sled`),
//! PostgreSQL (any number of hosts on one database; crate
//! `airlock-store-postgres`), or memory (tests; [`MemoryStore`]).
//!
//! | trait | what | shared by hosts as |
//! | --- | --- | --- |
//! | [`AuditStore`] | hash chains of sealed records, checkpoints, calls in flight | one chain per host (origin), all readable |
//! | [`LedgerStore`] | approvals and idempotency keys, versioned, compare-and-swap | one truth: decided and consumed once |
//! | [`WorkspaceStore`] | plugin keys and blobs, usage updated with each write | quotas hold across hosts |
//! | [`RateLimitStore`] | token buckets | every host draws from the same bucket |
//! | [`ModeStore`] | normal or read-only | one switch flips every host |
//! | [`PluginStore`] | installed plugin versions (files by digest) and rollouts | one set of versions, one rollout per plugin |
//!
//! The crate knows no engine and no database: backends implement the
//! traits, and [`Ledger`] and [`Workspace`] write the state machines and
//! input checks once, on top. Every backend runs the same conformance
//! suite (feature `conformance`).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use airlock_store::{Claim, KeyRef, Ledger, MemoryStore};
//! use std::time::Duration;
//!
//! let ledger = Ledger::new(Arc::new(MemoryStore::new()));
//! let key = KeyRef::new("agent", "billing", "refund", "order-17");
//! let day = Duration::from_secs(86_400);
//! // The first call with the key claims it; a retry finds it held.
//! assert_eq!(ledger.claim(&key, "digest", ("call-1", "host-a"), 0, day)?, Claim::Claimed);
//! assert!(matches!(
//!     ledger.claim(&key, "digest", ("call-2", "host-b"), 5, day)?,
//!     Claim::Existing(_)
//! ));
//! # Ok::<(), airlock_store::StoreError>(())
//! ```

#![deny(missing_docs)]

mod audit;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod error;
pub mod file;
mod ledger;
mod limits;
mod memory;
mod mode;
mod plugins;
mod workspace;

use std::sync::Arc;

pub use audit::{AuditStore, AuditWrite, Marker};
pub use error::{ErrorKind, Result, StoreError};
pub use ledger::{
    Approval, ApprovalKind, ApprovalListing, ApprovalState, Approvals, Claim, EXPIRY,
    IdempotencyEntry, IdempotencyState, KeyHead, KeyHeads, KeyListing, KeyRef, Ledger, LedgerStore,
    Recovery, SweepReport, Transition, Version, Versioned,
};
pub use limits::{Bucket, MAX_CLOCK_AHEAD_MS, MemoryBuckets, Rate, RateLimitStore};
pub use memory::MemoryStore;
pub use mode::{Mode, ModeStore};
pub use plugins::{
    Canary, Changed, Installed, InstalledVersion, MAX_PLUGIN_NAME_BYTES, MAX_VERSION_BYTES,
    PluginStore, Releases, Rollout, RolloutAction, RolloutChange, Sticky, VersionFiles,
    canary_bucket, check_digest, check_file_name, check_plugin_name, check_version, digest_of,
};
pub use workspace::{
    BLOB_REF_PREFIX, KeyEntry, KeyOwner, KeyScope, MAX_KEY_BYTES, MAX_LIST, MAX_SESSION_BYTES,
    MAX_VALUE_BYTES, Quota, Usage, Workspace, WorkspaceError, WorkspaceStore, blob_ref,
    check_session,
};

/// One backend's stores, as a host uses them.
#[derive(Debug, Clone)]
pub struct Stores {
    /// What the backend is, for messages (`sled at /var/lib/airlock`,
    /// `postgres at db.internal:5432/airlock`).
    pub description: String,
    /// Audit chains.
    pub audit: Arc<dyn AuditStore>,
    /// Approvals and idempotency keys.
    pub ledger: Arc<dyn LedgerStore>,
    /// Plugin keys and blobs.
    pub workspace: Arc<dyn WorkspaceStore>,
    /// Rate-limit buckets.
    pub limits: Arc<dyn RateLimitStore>,
    /// The host mode.
    pub mode: Arc<dyn ModeStore>,
    /// Installed plugin versions and their rollouts.
    pub plugins: Arc<dyn PluginStore>,
}

impl Stores {
    /// Every store in this process's memory.
    pub fn memory() -> Stores {
        let store = Arc::new(MemoryStore::new());
        Stores {
            description: "memory".to_owned(),
            audit: store.clone(),
            ledger: store.clone(),
            workspace: store.clone(),
            limits: Arc::new(MemoryBuckets::default()),
            mode: store.clone(),
            plugins: store,
        }
    }
}
