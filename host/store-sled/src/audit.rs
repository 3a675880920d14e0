//! [`SledAudit`]: the audit chain of one host in a sled database.
//!
//! The layout is the one Airlock has always written, so existing audit
//! directories open as they are: one tree, `audit`, holding
//!
//! | key | value |
//! | --- | --- |
//! | `r` ‖ seq (u64 big-endian) | the sealed record's bytes |
//! | `c` ‖ seq (u64 big-endian) | the checkpoint signed at `seq` (JSON) |
//! | `o` ‖ call id | the seq of the call's intent (u64 big-endian): the call is in flight |
//!
//! The layout has no room for an origin: a sled store holds one chain, the
//! host's own, and the origin is the name the store is opened with (it only
//! labels the chain). Writes to any other origin are refused
//! ([`ErrorKind::Conflict`]); reads of another origin find nothing.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use airlock_store::{AuditStore, AuditWrite, ErrorKind, Marker, Result, StoreError};

/// Key prefix of records: `r` ‖ seq (u64 big-endian).
const RECORD: u8 = b'r';
/// Key prefix of checkpoints: `c` ‖ seq (u64 big-endian).
const CHECKPOINT: u8 = b'c';
/// Key prefix of calls in flight: `o` ‖ call id → intent seq.
const OPEN_CALL: u8 = b'o';
/// The tree everything is in.
const TREE: &str = "audit";

/// How [`SledAudit::open`] opens its database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledAuditOptions {
    /// sled flushes its writes to disk this often (group commit), ms;
    /// [`AuditStore::flush`] flushes at once. `None`: only on `flush`.
    pub flush_every_ms: Option<u64>,
    /// How long to wait for another process to release the database
    /// before reporting it [`ErrorKind::Locked`].
    pub lock_wait: Duration,
}

impl Default for SledAuditOptions {
    fn default() -> SledAuditOptions {
        SledAuditOptions {
            flush_every_ms: Some(50),
            lock_wait: Duration::from_secs(3),
        }
    }
}

/// One host's audit chain in sled (see the [module](self) for the layout).
///
/// Cheap to share behind an `Arc`; sled admits one process per database, so
/// every handle on the chain lives in this process and appends are checked
/// against a head kept in memory.
#[derive(Debug)]
pub struct SledAudit {
    db: sled::Db,
    tree: sled::Tree,
    origin: String,
    /// The seq of the last stored record, held while a write checks and
    /// extends it.
    head: Mutex<u64>,
    /// What the store is, for messages.
    what: String,
}

fn key(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The seq of a record or checkpoint key; 0 for a key of another length
/// (which verification then reports where it stands).
fn seq_of(key: &[u8]) -> u64 {
    key.get(1..9)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn open_call_key(call_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + call_id.len());
    k.push(OPEN_CALL);
    k.extend_from_slice(call_id.as_bytes());
    k
}

impl SledAudit {
    /// Open (or create) the chain of `origin` in the sled database at
    /// `path` (an audit directory's `db`).
    ///
    /// # Errors
    /// [`ErrorKind::Locked`] when another process keeps it for
    /// `options.lock_wait`; [`ErrorKind::Unavailable`] when it cannot be
    /// created or opened.
    pub fn open(path: &Path, origin: &str, options: &SledAuditOptions) -> Result<SledAudit> {
        let what = format!("the audit log at {}", path.display());
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(crate::AUDIT_CACHE_BYTES)
            .flush_every_ms(options.flush_every_ms);
        let db = crate::open::open(&config, options.lock_wait, &what)?;
        SledAudit::from_db(db, origin, what)
    }

    /// A chain in a temporary database, removed when dropped (tests).
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when it cannot be created.
    pub fn temporary(origin: &str) -> Result<SledAudit> {
        let what = "a temporary audit log".to_owned();
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(crate::AUDIT_CACHE_BYTES)
            .flush_every_ms(SledAuditOptions::default().flush_every_ms)
            .open()
            .map_err(|e| StoreError::unavailable(format!("cannot create {what}"), e))?;
        SledAudit::from_db(db, origin, what)
    }

    fn from_db(db: sled::Db, origin: &str, what: String) -> Result<SledAudit> {
        let tree = db
            .open_tree(TREE)
            .map_err(|e| StoreError::unavailable(format!("cannot open {what}"), e))?;
        let head = tree
            .scan_prefix([RECORD])
            .next_back()
            .transpose()
            .map_err(|e| StoreError::unavailable(format!("cannot read {what}"), e))?
            .map_or(0, |(k, _)| seq_of(&k));
        Ok(SledAudit {
            db,
            tree,
            origin: origin.to_owned(),
            head: Mutex::new(head),
            what,
        })
    }

    /// The origin whose chain this is.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn lock_head(&self) -> MutexGuard<'_, u64> {
        // A plain number: consistent whatever panicked while holding it.
        self.head.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The error of a failed sled operation, described when it happens
    /// (not before: this runs for every record written).
    fn failed<'a>(&'a self, doing: &'a str) -> impl Fn(sled::Error) -> StoreError + 'a {
        move |e| StoreError::unavailable(format!("{}: cannot {doing}", self.what), e)
    }

    /// Refuse to write `origin` unless it is this store's.
    fn own(&self, origin: &str) -> Result<()> {
        if origin == self.origin {
            return Ok(());
        }
        Err(StoreError::new(
            ErrorKind::Conflict,
            format!(
                "{} holds the chain of origin {:?} only, not {origin:?} (a sled store is one host's; share chains through a database backend)",
                self.what, self.origin
            ),
        ))
    }

    /// One record and its marker change, as two ordered single-key writes
    /// rather than a sled batch: sled writes every batch out to disk at
    /// once (it rolls its log buffer before and after one), which made each
    /// record a disk write of its own and defeated the group commit. sled
    /// recovers a prefix of its writes, so a crash between the two leaves a
    /// marker whose intent is missing or whose call has its outcome, and
    /// the log's recovery tells both apart from a call that was in flight.
    fn write_one(&self, write: &AuditWrite) -> Result<()> {
        let record_key = key(RECORD, write.seq);
        let failed = self.failed("write a record");
        match &write.marker {
            Marker::Open(call_id) => {
                let marker = open_call_key(call_id);
                self.tree
                    .insert(&marker, &write.seq.to_be_bytes())
                    .map_err(&failed)?;
                if let Err(e) = self.tree.insert(record_key, write.bytes.as_slice()) {
                    // Best effort: recovery drops a marker without its
                    // intent; a retry writes both again.
                    let _ = self.tree.remove(&marker);
                    return Err(failed(e));
                }
            }
            Marker::Close(call_id) => {
                self.tree
                    .insert(record_key, write.bytes.as_slice())
                    .map_err(&failed)?;
                if let Err(e) = self.tree.remove(open_call_key(call_id)) {
                    // The record is written; recovery drops a marker whose
                    // call has its outcome.
                    tracing::error!(error = %e, seq = write.seq, "cannot clear a finished call's in-flight marker");
                }
            }
            Marker::None => {
                self.tree
                    .insert(record_key, write.bytes.as_slice())
                    .map_err(failed)?;
            }
        }
        Ok(())
    }
}

impl AuditStore for SledAudit {
    fn head(&self, origin: &str) -> Result<Option<(u64, Vec<u8>)>> {
        if origin != self.origin {
            return Ok(None);
        }
        Ok(self
            .tree
            .scan_prefix([RECORD])
            .next_back()
            .transpose()
            .map_err(self.failed("read the head record"))?
            .map(|(k, v)| (seq_of(&k), v.to_vec())))
    }

    fn write(&self, origin: &str, writes: &[AuditWrite]) -> Result<()> {
        self.own(origin)?;
        let mut head = self.lock_head();
        for write in writes {
            if write.seq != *head + 1 {
                return Err(StoreError::new(
                    ErrorKind::Conflict,
                    format!(
                        "audit chain {origin:?}: record {} does not follow the stored head {}",
                        write.seq, *head
                    ),
                ));
            }
            self.write_one(write)?;
            *head = write.seq;
        }
        Ok(())
    }

    fn record(&self, origin: &str, seq: u64) -> Result<Option<Vec<u8>>> {
        if origin != self.origin {
            return Ok(None);
        }
        Ok(self
            .tree
            .get(key(RECORD, seq))
            .map_err(self.failed("read a record"))?
            .map(|v| v.to_vec()))
    }

    fn records(&self, origin: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        if origin != self.origin || limit == 0 {
            return Ok(Vec::new());
        }
        // Every key of the record prefix from `from` on, malformed ones
        // included: verification names what is stored where.
        let start = key(RECORD, from);
        self.tree
            .range(start.as_slice()..[RECORD + 1].as_slice())
            .take(limit)
            .map(|item| {
                let (k, v) = item.map_err(self.failed("read records"))?;
                Ok((seq_of(&k), v.to_vec()))
            })
            .collect()
    }

    fn put_checkpoint(&self, origin: &str, seq: u64, bytes: &[u8]) -> Result<()> {
        self.own(origin)?;
        self.tree
            .insert(key(CHECKPOINT, seq), bytes)
            .map_err(self.failed("write a checkpoint"))?;
        Ok(())
    }

    fn checkpoints(&self, origin: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        if origin != self.origin {
            return Ok(Vec::new());
        }
        self.tree
            .scan_prefix([CHECKPOINT])
            .map(|item| {
                let (k, v) = item.map_err(self.failed("read checkpoints"))?;
                Ok((seq_of(&k), v.to_vec()))
            })
            .collect()
    }

    fn open_calls(&self, origin: &str) -> Result<Vec<(String, u64)>> {
        if origin != self.origin {
            return Ok(Vec::new());
        }
        self.tree
            .scan_prefix([OPEN_CALL])
            .map(|item| {
                let (k, v) = item.map_err(self.failed("read the calls in flight"))?;
                let call_id = String::from_utf8_lossy(&k[1..]).into_owned();
                // A malformed value names no intent: recovery finds none at
                // 0 and drops the marker.
                let seq = v.as_ref().try_into().map_or(0, u64::from_be_bytes);
                Ok((call_id, seq))
            })
            .collect()
    }

    fn clear_open_call(&self, origin: &str, call_id: &str) -> Result<()> {
        self.own(origin)?;
        self.tree
            .remove(open_call_key(call_id))
            .map_err(self.failed("clear a call in flight"))?;
        Ok(())
    }

    fn origins(&self) -> Result<Vec<String>> {
        let any = self
            .tree
            .scan_prefix([RECORD])
            .next()
            .transpose()
            .map_err(self.failed("read records"))?
            .is_some();
        Ok(if any {
            vec![self.origin.clone()]
        } else {
            Vec::new()
        })
    }

    fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .map(drop)
            .map_err(self.failed("flush to disk"))
    }
}
