//! Airlock's PostgreSQL store: every trait of the storage seam
//! ([`airlock_store`]) on one database, shared by any number of hosts.
//!
//! [`open`] connects with a [`PostgresConfig`] (the `[store]` section with
//! `backend = "postgres"`), brings the schema up to date (embedded,
//! versioned migrations; a database from a newer Airlock is refused), and
//! returns the [`Stores`] a host runs on. Across hosts sharing the
//! database: an idempotency key is claimed once, an approval is decided
//! once and consumed once, rate-limit buckets and the host mode are
//! shared, workspace quotas hold, and each host appends to its own audit
//! chain, which never forks.
//!
//! The SQL is kept portable to PostgreSQL-compatible distributed engines
//! (CockroachDB, YugabyteDB): standard types, no LISTEN/NOTIFY, no stored
//! procedures, no advisory locks but the one claiming a host's origin
//! (`pg_try_advisory_lock`, with `pg_stat_activity` and
//! `pg_terminate_backend` to end a stale claim: an engine without them
//! needs another guard against two processes on one origin); READ
//! COMMITTED is enough, and transactions a serializable engine rolls back
//! are retried. What each operation relies on and costs is in
//! docs/scaling.md.
//!
//! The seam is synchronous; the backend owns a small tokio runtime and
//! waits for its work there, so it may be called from plain threads or
//! from inside any tokio runtime.
//!
//! # Example
//!
//! ```no_run
//! use airlock_store::{KeyRef, Ledger, Claim};
//! use airlock_store_postgres::{PostgresConfig, open};
//! use std::time::Duration;
//!
//! let stores = open(&PostgresConfig::new("postgres://airlock:secret@db.internal/airlock"))?;
//! let ledger = Ledger::new(stores.ledger.clone());
//! let key = KeyRef::new("agent", "billing", "refund", "order-17");
//! let claim = ledger.claim(&key, "digest", ("call-1", "host-a"), 0, Duration::from_secs(86_400))?;
//! assert_eq!(claim, Claim::Claimed);
//! # Ok::<(), airlock_store::StoreError>(())
//! ```

#![deny(missing_docs)]

mod config;
mod db;
mod schema;
mod store;

use airlock_store::{StoreError, Stores};

pub use config::{MAX_POOL_SIZE, MAX_TIMEOUT_MS, PostgresConfig, TlsMode};
pub use schema::SCHEMA_VERSION;

/// Connect to the database `config` names, apply the schema migrations
/// this build carries, and return its stores.
///
/// # Errors
/// - [`ErrorKind::Config`](airlock_store::ErrorKind::Config): a URL that
///   does not parse, a bad setting, a wrong password or unknown user, a
///   database that does not exist, a user without the right to create the
///   schema, an unreadable `ca_file`;
/// - [`ErrorKind::Incompatible`](airlock_store::ErrorKind::Incompatible):
///   the database's schema is newer than this build (both versions named);
/// - [`ErrorKind::Unavailable`](airlock_store::ErrorKind::Unavailable):
///   the server cannot be reached or does not answer in time.
pub fn open(config: &PostgresConfig) -> Result<Stores, StoreError> {
    let db = db::Db::new(config)?;
    db.run(|shared| async move { schema::migrate(&shared).await })?;
    tracing::debug!(store = %db.shared.description, "opened the PostgreSQL store");
    Ok(store::stores(store::PostgresStore::new(db)))
}
