//! [`SledAudit`]: the audit chain of one host in a sled database.
//!
//! One tree, `audit`, holding
//!
//! | key | value |
//! | --- | --- |
//! | `s` ‖ first seq (u64 big-endian) | a segment: the sealed records from `first seq` on, consecutive, each as its length (u32 big-endian) and its bytes, after a format byte (1) |
//! | `r` ‖ seq (u64 big-endian) | one sealed record's bytes (the layout before segments, still read) |
//! | `r` ‖ u64::MAX | the fence: tells a version that knows only `r` records that this log is not for it |
//! | `c` ‖ seq (u64 big-endian) | the checkpoint signed at `seq` (JSON) |
//! | `o` ‖ call id | the seq of the call's intent (u64 big-endian): the call is in flight |
//!
//! **Segments.** A [`write`](AuditStore::write) packs its records into
//! segments of up to [`SEGMENT_BYTES`] (a record larger than that is a
//! segment of its own): one sled insert carries the records of many calls
//! instead of one each, and sled's cost is per insert far more than per
//! byte (each walks the tree, logs a fragment, and every sixteen entries
//! split a node). A segment is never extended after it is written, so a
//! crash keeps or loses it whole (sled recovers a prefix of its
//! operations). Records written one per key by earlier versions are read
//! as they are, before and beside segments, so existing audit directories
//! open unchanged; the fence, written with the first segment, makes an
//! earlier version refuse the log (its head does not parse) rather than
//! append to a chain whose newest records it cannot see.
//!
//! The layout has no room for an origin: a sled store holds one chain, the
//! host's own, and the origin is the name the store is opened with (it only
//! labels the chain). Writes to any other origin are refused
//! ([`ErrorKind::Conflict`]); reads of another origin find nothing.

use std::ops::Range;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use airlock_store::{AuditStore, AuditWrite, ErrorKind, Marker, Result, StoreError};

/// Key prefix of segments: `s` ‖ the seq of their first record (u64
/// big-endian).
const SEGMENT: u8 = b's';
/// The format byte a segment starts with.
const SEGMENT_FORMAT: u8 = 1;
/// Key prefix of records stored one per key (before segments): `r` ‖ seq
/// (u64 big-endian).
const RECORD: u8 = b'r';
/// The seq of the fence among `r` keys: no record has it.
const FENCE_SEQ: u64 = u64::MAX;
/// The fence's value: JSON without a `hash`, so an earlier version reads
/// it as its head record and refuses to open the log.
const FENCE: &[u8] = br#"{"airlock_audit_layout":"segments","note":"this audit log was written by a newer Airlock: its records are in s-keyed segments"}"#;
/// Key prefix of checkpoints: `c` ‖ seq (u64 big-endian).
const CHECKPOINT: u8 = b'c';
/// Key prefix of calls in flight: `o` ‖ call id → intent seq.
const OPEN_CALL: u8 = b'o';
/// The tree everything is in.
const TREE: &str = "audit";

/// A segment is closed before a record would take it past this many bytes
/// (a record larger than this is a segment of its own). sled writes a
/// page larger than a quarter of its log segments (128 KiB of 512) to a
/// file of its own, and splits a leaf at seventeen entries: segments of
/// up to 6 KiB keep a leaf of them under that, for records of the 1–2
/// KiB a call's intent and outcome take each.
pub const SEGMENT_BYTES: usize = 6 << 10;

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
    /// The last stored record, held while a write checks and extends it.
    head: Mutex<Head>,
    /// What the store is, for messages.
    what: String,
}

/// What a write checks and extends.
#[derive(Debug, Default)]
struct Head {
    /// The seq of the last stored record.
    seq: u64,
    /// Whether the fence is stored.
    fenced: bool,
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

/// Pack `writes` (consecutive seqs) into segments: the writes each holds
/// and its value.
fn segments(writes: &[AuditWrite]) -> Vec<(Range<usize>, Vec<u8>)> {
    let mut out: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    for (i, write) in writes.iter().enumerate() {
        let framed = 4 + write.bytes.len();
        let fits = matches!(out.last(), Some((_, value)) if value.len() + framed <= SEGMENT_BYTES);
        if !fits {
            out.push((i..i, vec![SEGMENT_FORMAT]));
        }
        let Some((part, value)) = out.last_mut() else {
            continue;
        };
        // A record is at most a few MiB (the log caps what it copies into
        // one); a length past u32 cannot be framed, and saturating makes
        // the segment unreadable rather than wrong.
        let len = u32::try_from(write.bytes.len()).unwrap_or(u32::MAX);
        value.extend_from_slice(&len.to_be_bytes());
        value.extend_from_slice(&write.bytes);
        part.end = i + 1;
    }
    out
}

/// The records of the segment stored at `first`: each seq and its bytes.
/// A segment that does not parse yields what parses of it, then the rest
/// as one record at the next seq, so verification names where it breaks.
fn unpack(first: u64, value: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let Some((&SEGMENT_FORMAT, mut rest)) = value.split_first() else {
        return vec![(first, value.to_vec())];
    };
    let mut seq = first;
    while !rest.is_empty() {
        let framed = rest
            .get(..4)
            .and_then(|len| len.try_into().ok())
            .map(|len| u32::from_be_bytes(len) as usize)
            .and_then(|len| rest.get(4..4 + len).map(|bytes| (len, bytes)));
        let Some((len, bytes)) = framed else {
            out.push((seq, rest.to_vec()));
            break;
        };
        out.push((seq, bytes.to_vec()));
        rest = &rest[4 + len..];
        seq = seq.saturating_add(1);
    }
    out
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
        let mut store = SledAudit {
            db,
            tree,
            origin: origin.to_owned(),
            head: Mutex::new(Head::default()),
            what,
        };
        let fenced = store
            .tree
            .contains_key(key(RECORD, FENCE_SEQ))
            .map_err(store.failed("read the layout fence"))?;
        let seq = store.last()?.map_or(0, |(seq, _)| seq);
        *store.head.get_mut().unwrap_or_else(PoisonError::into_inner) = Head { seq, fenced };
        Ok(store)
    }

    /// The origin whose chain this is.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn lock_head(&self) -> MutexGuard<'_, Head> {
        // Plain values, set after what they describe is stored: consistent
        // whatever panicked while holding them.
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

    /// One segment of `part`'s records and their marker changes, as
    /// ordered single-key writes rather than a sled batch: sled writes every
    /// batch out to disk at once (it rolls its log buffer before and after
    /// one), which made each write a disk write of its own and defeated the
    /// group commit. Markers of intents go in before the segment, and those
    /// of outcomes go out after it. sled recovers a prefix of its writes, so
    /// a crash between them leaves a marker whose intent is missing or whose
    /// call has its outcome, and the log's recovery tells both apart from a
    /// call that was in flight.
    fn write_segment(&self, part: &[AuditWrite], value: Vec<u8>) -> Result<()> {
        let Some(first) = part.first() else {
            return Ok(());
        };
        let failed = self.failed("write records");
        let mut opened = Vec::new();
        for write in part {
            if let Marker::Open(call_id) = &write.marker {
                let marker = open_call_key(call_id);
                if let Err(e) = self.tree.insert(&marker, &write.seq.to_be_bytes()) {
                    self.forget(&opened);
                    return Err(failed(e));
                }
                opened.push(marker);
            }
        }
        if let Err(e) = self.tree.insert(key(SEGMENT, first.seq), value) {
            self.forget(&opened);
            return Err(failed(e));
        }
        for write in part {
            if let Marker::Close(call_id) = &write.marker
                && let Err(e) = self.tree.remove(open_call_key(call_id))
            {
                // The record is written; recovery drops a marker whose
                // call has its outcome.
                tracing::error!(error = %e, seq = write.seq, "cannot clear a finished call's in-flight marker");
            }
        }
        Ok(())
    }

    /// Remove the markers of intents that were not written (best effort:
    /// recovery drops a marker without its intent; a retry writes both
    /// again).
    fn forget(&self, markers: &[Vec<u8>]) {
        for marker in markers {
            let _ = self.tree.remove(marker);
        }
    }

    /// The newest stored record, in a segment or stored alone.
    fn last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let failed = self.failed("read the head record");
        let alone = self
            .tree
            .range(key_range_alone(0))
            .next_back()
            .transpose()
            .map_err(&failed)?
            .map(|(k, v)| (seq_of(&k), v.to_vec()));
        let segment = self
            .tree
            .scan_prefix([SEGMENT])
            .next_back()
            .transpose()
            .map_err(&failed)?
            .and_then(|(k, v)| unpack(seq_of(&k), &v).pop());
        Ok(match (alone, segment) {
            (Some(alone), Some(segment)) if alone.0 > segment.0 => Some(alone),
            (alone, segment) => segment.or(alone),
        })
    }
}

/// The keys of records stored alone from `from` on (the fence excluded).
fn key_range_alone(from: u64) -> Range<[u8; 9]> {
    key(RECORD, from)..key(RECORD, FENCE_SEQ)
}

impl AuditStore for SledAudit {
    fn head(&self, origin: &str) -> Result<Option<(u64, Vec<u8>)>> {
        if origin != self.origin {
            return Ok(None);
        }
        self.last()
    }

    fn write(&self, origin: &str, writes: &[AuditWrite]) -> Result<()> {
        self.own(origin)?;
        let mut head = self.lock_head();
        // The records that follow the head; the first that does not is a
        // conflict, after those before it are stored.
        let follow = writes
            .iter()
            .zip(head.seq + 1..)
            .take_while(|(write, seq)| write.seq == *seq)
            .count();
        let (follow, rest) = writes.split_at(follow);
        if !follow.is_empty() && !head.fenced {
            self.tree
                .insert(key(RECORD, FENCE_SEQ), FENCE)
                .map_err(self.failed("write the layout fence"))?;
            head.fenced = true;
        }
        for (part, value) in segments(follow) {
            let part = &follow[part];
            self.write_segment(part, value)?;
            head.seq = part.last().map_or(head.seq, |write| write.seq);
        }
        if let Some(write) = rest.first() {
            return Err(StoreError::new(
                ErrorKind::Conflict,
                format!(
                    "audit chain {origin:?}: record {} does not follow the stored head {}",
                    write.seq, head.seq
                ),
            ));
        }
        Ok(())
    }

    fn record(&self, origin: &str, seq: u64) -> Result<Option<Vec<u8>>> {
        if origin != self.origin || seq == FENCE_SEQ {
            return Ok(None);
        }
        let failed = self.failed("read a record");
        if let Some(alone) = self.tree.get(key(RECORD, seq)).map_err(&failed)? {
            return Ok(Some(alone.to_vec()));
        }
        let Some((k, v)) = self
            .tree
            .range(key(SEGMENT, 0)..=key(SEGMENT, seq))
            .next_back()
            .transpose()
            .map_err(&failed)?
        else {
            return Ok(None);
        };
        Ok(unpack(seq_of(&k), &v)
            .into_iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, bytes)| bytes))
    }

    fn records(&self, origin: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        if origin != self.origin || limit == 0 {
            return Ok(Vec::new());
        }
        let failed = self.failed("read records");
        // Every key of records stored alone from `from` on, malformed ones
        // included: verification names what is stored where.
        let alone = self
            .tree
            .range(key_range_alone(from))
            .take(limit)
            .map(|item| {
                let (k, v) = item.map_err(&failed)?;
                Ok((seq_of(&k), v.to_vec()))
            })
            .collect::<Result<Vec<_>>>()?;
        // The segment holding `from`, then those after it.
        let start = self
            .tree
            .range(key(SEGMENT, 0)..=key(SEGMENT, from))
            .next_back()
            .transpose()
            .map_err(&failed)?
            .map_or(key(SEGMENT, from), |(k, _)| {
                k.as_ref().try_into().unwrap_or(key(SEGMENT, from))
            });
        let mut packed = Vec::new();
        for item in self.tree.range(start..=key(SEGMENT, u64::MAX)) {
            let (k, v) = item.map_err(&failed)?;
            packed.extend(
                unpack(seq_of(&k), &v)
                    .into_iter()
                    .filter(|(s, _)| *s >= from),
            );
            if packed.len() >= limit {
                break;
            }
        }
        let mut records = if alone.is_empty() {
            packed
        } else if packed.is_empty() {
            alone
        } else {
            // Both (a log begun before segments): in seq order, records
            // stored alone first where a seq is in both (which verification
            // then reports).
            let mut both = alone;
            both.extend(packed);
            both.sort_by_key(|(seq, _)| *seq);
            both
        };
        records.truncate(limit);
        Ok(records)
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

    fn last_checkpoint(&self, origin: &str) -> Result<Option<(u64, Vec<u8>)>> {
        if origin != self.origin {
            return Ok(None);
        }
        self.tree
            .scan_prefix([CHECKPOINT])
            .next_back()
            .map(|item| {
                let (k, v) = item.map_err(self.failed("read the last checkpoint"))?;
                Ok((seq_of(&k), v.to_vec()))
            })
            .transpose()
    }

    fn open_calls(&self, origin: &str) -> Result<Vec<(String, u64)>> {
        if origin != self.origin {
            return Ok(Vec::new());
        }
        self.tree
            .scan_prefix([OPEN_CALL])
            .map(|item| {
                let (k, v) = item.map_err(self.failed("read the calls in flight"))?;
                let call_id = crate::stored_str(|| "a call in flight's id".to_owned(), &k[1..])?;
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
        Ok(if self.last()?.is_some() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, len: usize) -> AuditWrite {
        AuditWrite {
            seq,
            bytes: vec![b'x'; len],
            marker: Marker::None,
        }
    }

    /// The writes each segment holds.
    fn parts(packed: &[(Range<usize>, Vec<u8>)]) -> Vec<Range<usize>> {
        packed.iter().map(|(part, _)| part.clone()).collect()
    }

    #[test]
    fn segments_hold_consecutive_records_up_to_their_size() {
        // 1 KiB records: five fit in 6 KiB with their frames, a sixth not.
        let writes: Vec<_> = (1..=12).map(|seq| record(seq, 1024)).collect();
        let packed = segments(&writes);
        assert_eq!(parts(&packed), [0..5, 5..10, 10..12]);
        assert!(packed.iter().all(|(_, v)| v.len() <= SEGMENT_BYTES));
        let mut seqs = Vec::new();
        for (part, value) in &packed {
            for (seq, bytes) in unpack(writes[part.start].seq, value) {
                assert_eq!(bytes, writes[(seq - 1) as usize].bytes);
                seqs.push(seq);
            }
        }
        assert_eq!(seqs, (1..=12).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_larger_than_a_segment_is_a_segment_of_its_own() {
        let writes = [record(1, 10), record(2, SEGMENT_BYTES * 3), record(3, 10)];
        let packed = segments(&writes);
        assert_eq!(parts(&packed), [0..1, 1..2, 2..3]);
        assert_eq!(unpack(2, &packed[1].1), [(2, writes[1].bytes.clone())]);
    }

    #[test]
    fn a_segment_that_does_not_parse_yields_the_rest_as_one_record() {
        let packed = segments(&[record(7, 3), record(8, 3)]);
        let mut value = packed[0].1.clone();
        // The second frame claims more bytes than there are.
        value[1 + 4 + 3 + 3] = 200;
        let records = unpack(7, &value);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0], (7, b"xxx".to_vec()));
        assert_eq!(records[1].0, 8);
        assert_eq!(records[1].1, value[1 + 4 + 3..].to_vec());
        // An unknown format byte: the whole value is one record.
        assert_eq!(unpack(7, b"\x09abc"), [(7, b"\x09abc".to_vec())]);
        assert_eq!(unpack(7, b""), [(7, Vec::new())]);
    }
}
