//! The audit log's store: hash chains of sealed records, one per origin
//! (host), with their signed checkpoints and the calls each host has in
//! flight.
//!
//! The log (crate `airlock-audit`) seals records — sequence number, chain
//! hash — and signs checkpoints; the store keeps bytes. It never forks a
//! chain: [`AuditStore::write`] succeeds only if the first record follows
//! the stored head of its origin, so two writers claiming one origin
//! cannot both extend it.

use std::fmt;

use crate::error::Result;

/// What a record does to its call's in-flight marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// Nothing.
    None,
    /// The intent of call `0`: it is in flight from this record on.
    Open(String),
    /// The outcome of call `0`: it is no longer in flight.
    Close(String),
}

/// One sealed record to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditWrite {
    /// Its sequence number in its origin's chain (the first is 1).
    pub seq: u64,
    /// The sealed record, as hashed.
    pub bytes: Vec<u8>,
    /// Its marker change.
    pub marker: Marker,
}

/// Where audit chains live.
///
/// Contract (checked by the conformance suite): records of an origin are
/// gap-free from 1; [`AuditStore::write`] stores its records in order and
/// fails with [`ErrorKind::Conflict`](crate::ErrorKind::Conflict),
/// storing nothing of the conflicting record, when a record's `seq` is not
/// the origin's head + 1; markers change with their record.
pub trait AuditStore: Send + Sync + fmt::Debug {
    /// The last record of `origin`: its seq and bytes.
    fn head(&self, origin: &str) -> Result<Option<(u64, Vec<u8>)>>;
    /// Append `writes` (consecutive seqs) to `origin`'s chain.
    fn write(&self, origin: &str, writes: &[AuditWrite]) -> Result<()>;
    /// The record `seq` of `origin`.
    fn record(&self, origin: &str, seq: u64) -> Result<Option<Vec<u8>>>;
    /// Records of `origin` from `from` on, in order, at most `limit`.
    fn records(&self, origin: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>>;
    /// Store the checkpoint signed at `seq` of `origin`.
    fn put_checkpoint(&self, origin: &str, seq: u64, bytes: &[u8]) -> Result<()>;
    /// Every checkpoint of `origin`, by seq.
    fn checkpoints(&self, origin: &str) -> Result<Vec<(u64, Vec<u8>)>>;
    /// The checkpoint of `origin` at the highest seq: what a log opening
    /// needs, read without the others (a chain signs one every thousand
    /// records or half minute, for as long as it lives). Backends
    /// override the default, which reads them all.
    fn last_checkpoint(&self, origin: &str) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self.checkpoints(origin)?.pop())
    }
    /// Calls of `origin` in flight: call id and the seq of its intent.
    fn open_calls(&self, origin: &str) -> Result<Vec<(String, u64)>>;
    /// Forget the in-flight marker of `call_id` (a call that never ran or
    /// whose outcome was recorded).
    fn clear_open_call(&self, origin: &str, call_id: &str) -> Result<()>;
    /// Every origin with records, by name.
    fn origins(&self) -> Result<Vec<String>>;
    /// Make every write so far durable (backends whose writes are durable
    /// when they return do nothing).
    fn flush(&self) -> Result<()>;
    /// Hold `origin` for this handle alone until it is dropped, waiting up
    /// to `wait` for another holder to let it go: one process appends to a
    /// chain, recovers its in-flight calls and idempotency keys. A backend
    /// that can be opened by one process only (sled's lock) holds it by
    /// being open, and does nothing here.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) naming the
    /// holder when another process holds `origin`; the backend's own.
    fn claim_origin(&self, origin: &str, wait: std::time::Duration) -> Result<()> {
        let _ = (origin, wait);
        Ok(())
    }
}
