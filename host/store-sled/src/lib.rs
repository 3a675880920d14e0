//! Airlock's embedded storage backend: the traits of `airlock-store` over
//! sled databases in the host's data directory. One process holds a
//! database at a time (another one waits for its lock, then is told it is
//! [`Locked`](airlock_store::ErrorKind::Locked)); no server to run.

#![deny(missing_docs)]

mod audit;
pub mod open;

pub use audit::{SledAudit, SledAuditOptions};
