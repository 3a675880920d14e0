//! [`AuditLog`]: the hash-chained, checkpointed log, over an
//! [`AuditStore`] (sled in the audit directory by default).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[cfg(not(feature = "sled"))]
use airlock_store::MemoryStore;
use airlock_store::{AuditStore, AuditWrite, ErrorKind, Marker, StoreError};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::keys;
use crate::record::{
    Entry, Event, GENESIS_HASH, Linked, OUTCOME_UNKNOWN, Prepared, Record, parse_hash,
};
use crate::redact::{RedactionRules, Redactor};
use crate::verify::{Verifier, VerifyFailure, VerifyReport};

/// The database directory, inside the audit directory.
pub const DB_DIR: &str = "db";
/// The checkpoint signing key (secret, mode 0600).
pub const SIGNING_KEY_FILE: &str = "signing.key";
/// The checkpoint signing key's public half, for verifiers.
pub const PUBLIC_KEY_FILE: &str = "signing.pub";
/// The redaction key (secret, mode 0600).
pub const REDACTION_KEY_FILE: &str = "redaction.key";
/// The directory, inside the audit directory, of origins' public keys:
/// `keys/<origin>.pub`, as [`AuditLog::verify_all`] looks them up.
pub const KEYS_DIR: &str = "keys";
/// The origin of a log opened without naming one: the chain of a host
/// with its own sled store ([`AuditLog::open`], [`AuditLog::temporary`]).
pub const DEFAULT_ORIGIN: &str = "local";
/// Records read from the store at a time.
pub(crate) const PAGE: usize = 256;

/// First line of an export.
pub(crate) const EXPORT_FORMAT: &str = "airlock-audit-export";
pub(crate) const EXPORT_VERSION: u64 = 1;
/// How a record line of an export starts; the stored bytes and `}` follow.
const RECORD_LINE_START: &str = "{\"record\":";

/// How an [`AuditLog`] behaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// How often batched records are flushed to disk (group commit), in
    /// milliseconds. Records appended with [`Durability::Flushed`] are on
    /// disk before `append` returns regardless.
    pub group_commit_ms: u64,
    /// Sign a checkpoint after this many records.
    pub checkpoint_every: u64,
    /// ... or after this many seconds with new records, whichever is first.
    pub checkpoint_interval_s: u64,
    /// Largest redacted copy of arguments or results kept in a record, bytes.
    pub max_copy_bytes: usize,
    /// How long to wait for another process (a short-lived `airlock`
    /// command) to release the database before reporting it in use, ms.
    pub lock_wait_ms: u64,
    /// Records sealed but not yet stored that the log holds while writing
    /// to the store fails (disk full, no file descriptors); past it,
    /// appends are refused until the store takes writes again.
    pub max_pending_records: usize,
    /// Hold the intent of a group-committed call (a `read` tool of a
    /// plugin that can only read) while it runs, for at most
    /// `group_commit_ms`: a call finished by then is recorded once, its
    /// outcome carrying its intent ([`Entry::carries_intent`]). Off, every
    /// intent is written before its call runs (two records a call). See
    /// docs/audit-log.md, "Held intents of `read` calls".
    pub hold_read_intents: bool,
    /// Operator-wide redaction rules.
    pub redaction: RedactionRules,
    /// Tools (`plugin/tool`) whose calls may be replayed (`airlock
    /// replay`): their intent records keep the redacted arguments up to the
    /// call's argument size cap instead of `max_copy_bytes`, and say
    /// whether redaction changed them (`args_redacted`). An opt-in: a
    /// complete copy of arguments is more of them on disk.
    pub replayable: Vec<String>,
}

impl Default for AuditConfig {
    fn default() -> AuditConfig {
        AuditConfig {
            group_commit_ms: 50,
            checkpoint_every: 1000,
            checkpoint_interval_s: 30,
            max_copy_bytes: 4096,
            lock_wait_ms: 3000,
            max_pending_records: 1024,
            hold_read_intents: true,
            redaction: RedactionRules::default(),
            replayable: Vec::new(),
        }
    }
}

/// When an appended record reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Before `append` returns (fsync). Used for every record of a call that
    /// is not read-only, so no side effect happens without its intent on disk.
    Flushed,
    /// With the next group commit (at most `group_commit_ms` later). A crash
    /// of the machine can lose the last batch; never a record in the middle.
    Batched,
}

/// The tamper-evident audit log.
///
/// It appends to one chain — its origin's, signed with its key — in an
/// [`AuditStore`]; the store may hold other hosts' chains too, which it
/// reads and verifies ([`AuditLog::verify_all`], [`AuditLog::query_all`]).
///
/// Cheap to clone: clones share one store. A sled audit directory can be
/// open in one process at a time ([`Error::Locked`] otherwise).
#[derive(Clone)]
pub struct AuditLog {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .field("origin", &self.inner.origin)
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    /// The audit directory, holding the keys (`<temporary>` for a
    /// temporary log).
    pub(crate) path: PathBuf,
    pub(crate) store: Arc<dyn AuditStore>,
    /// The chain this log appends to.
    pub(crate) origin: String,
    head: Mutex<Head>,
    /// The chain as far as it is sealed, held while queued records are
    /// sealed (in order, by whoever takes them first).
    chain: Mutex<Chain>,
    /// Records appended but not yet in the store, shared with the writer
    /// thread.
    queue: Arc<Queue>,
    /// Held while queued records go into the store: one writer at a time,
    /// so they go in sequence order.
    writing: Mutex<()>,
    /// The seq of the last record appended (queued, sealed or not, or
    /// stored).
    appended: AtomicU64,
    /// Group commit of flushed appends: how far the store is known to be
    /// on disk, and whether a flush is under way.
    durable: Mutex<Durable>,
    /// A flush ended (every appender waiting for one checks whether it
    /// covered its record).
    flushed: Condvar,
    signing: Signer,
    redactor: Redactor,
    config: AuditConfig,
    /// Records held back by their callers ([`AuditLog::hold`]), and
    /// whether the log is closing (no more are taken; [`close`] waits for
    /// those held to be appended).
    ///
    /// [`close`]: AuditLog::close
    holds: Holds,
    /// Test hook: how many of the next store writes fail, as a full disk
    /// would.
    #[cfg(test)]
    fail_writes: AtomicU64,
}

/// Records on their way into the store. Appending numbers a record (its
/// sequence number and time) under the head lock and queues it, encoded
/// but not yet sealed; the writer thread — or a flush, a read or a full
/// queue — seals what is queued (links each record to the one before and
/// hashes it, in order) and puts it into the store, as many records as
/// are queued in one [`AuditStore::write`]. The chain's hashing and the
/// store's own work (and its occasional stalls) thus stay off the
/// appending call's path.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
    /// The writer took what was queued (appenders waiting for room check
    /// again).
    drained: Condvar,
}

/// Where the group commit of flushed appends stands.
#[derive(Debug, Default)]
struct Durable {
    /// Every record up to this seq is on disk.
    seq: u64,
    /// A flush is under way: an appender whose record it may not cover
    /// waits for it to end, then flushes (or finds itself covered).
    flushing: bool,
    /// Flushes made for flushed appends and [`AuditLog::flush`].
    flushes: u64,
}

#[derive(Default)]
struct QueueState {
    /// Records numbered but not sealed, in seq order (all after those in
    /// `writes`).
    unsealed: VecDeque<Unsealed>,
    /// Sealed records, in seq order.
    writes: VecDeque<AuditWrite>,
    /// Why the last attempt to write queued records failed, while they
    /// still wait (the writer thread retries; the first success clears it).
    failing: Option<String>,
    /// Records taken from `writes` by the writer in progress (counted
    /// against `max_pending_records` with those still queued).
    taken: usize,
    /// Checkpoints signed but not yet stored: each goes into the store
    /// once every record it vouches for is there (signed under the head
    /// lock, stored off it).
    checkpoints: Vec<(u64, Vec<u8>)>,
    /// The log is gone: the writer thread exits.
    stop: bool,
    /// There is no writer thread: appenders write what they queue.
    inline: bool,
    /// The writer thread waits for records with none queued: the next
    /// appender wakes it. Otherwise it is writing or gathering a batch,
    /// and appenders do not signal it (a signal is a system call).
    writer_idle: bool,
    /// Appenders waiting for room in the queue (the writer signals
    /// `drained` only when there are some).
    waiting_for_room: usize,
    /// Failed attempts to write queued records, since the log was opened.
    write_failures: u64,
    /// A write failed and what the store kept of it is not known yet: the
    /// next writer asks the store for its head first.
    resync: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl QueueState {
    /// Records waiting for the store, sealed or not.
    fn queued(&self) -> usize {
        self.unsealed.len() + self.writes.len()
    }
}

/// A record numbered and encoded, waiting to be sealed.
struct Unsealed {
    seq: u64,
    time_ms: u64,
    prepared: Prepared,
    marker: Marker,
}

/// When an appended record is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seal {
    /// Before the append returns (its caller reads the record back).
    Now,
    /// By whoever writes the queue next.
    Later,
}

/// Queued writes beyond which an appender waits for the writer thread to
/// take them (the log's memory stays bounded when the store is slower
/// than the callers). Appenders never write to the store themselves.
const MAX_QUEUED: usize = 1024;

/// How long the writer thread, woken by a record, lets more gather before
/// it writes them (unless [`GATHER`] are queued first). Batched records
/// are promised to the disk only at the next group commit
/// (`audit.group_commit_ms`), and a flush or a reader writes the queue
/// itself, so the window delays nothing anyone waits for; it makes one
/// store write (and one wake-up) carry the records of many calls.
const GATHER_WINDOW: Duration = Duration::from_millis(1);

/// Queued records at which the writer thread stops gathering and writes.
const GATHER: usize = 256;

/// A call whose intent and outcome records go into the store in one
/// [`AuditStore::write`], at most this many records apart, gets no
/// in-flight marker (neither set nor cleared: two store operations
/// saved). A store keeps a prefix of its writes through a crash, so if the
/// outcome is lost the intent is among the last `ELIDE_SPAN` stored
/// records, and recovery looks there for intents without an outcome as
/// well as at the markers.
pub(crate) const ELIDE_SPAN: u64 = 1024;

/// How long an appender waits for room in the queue before writing the
/// queue itself (the writer thread is stuck or gone: never in a healthy
/// log).
const MAX_QUEUE_WAIT: Duration = Duration::from_secs(1);

/// The writer thread's first and longest wait between attempts while the
/// store fails.
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The checkpoint key: the secret one for a writing host, the public one
/// for a read-only opener.
enum Signer {
    Key(SigningKey),
    VerifyOnly(VerifyingKey),
}

impl Signer {
    fn public(&self) -> VerifyingKey {
        match self {
            Signer::Key(key) => key.verifying_key(),
            Signer::VerifyOnly(key) => *key,
        }
    }

    fn sign(&self, seq: u64, hash: &[u8; 32]) -> Option<Checkpoint> {
        match self {
            Signer::Key(key) => Some(Checkpoint::sign(key, seq, hash, now_ms())),
            Signer::VerifyOnly(_) => None,
        }
    }
}

/// The chain as appended: what numbering a record needs.
struct Head {
    /// The seq of the last record appended.
    seq: u64,
    closed: bool,
}

/// The chain as sealed: what linking a record and signing a checkpoint
/// need.
struct Chain {
    /// The seq of the last record sealed.
    seq: u64,
    /// Its hash.
    hash: [u8; 32],
    /// Records sealed since the last checkpoint.
    unsigned: u64,
    last_checkpoint: Instant,
}

/// How the log is doing, for metrics ([`AuditLog::health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditHealth {
    /// Records sealed but not yet in the store.
    pub queued: u64,
    /// Whether the last attempt to write queued records failed (they stay
    /// queued and are retried).
    pub failing: bool,
    /// Failed attempts to write queued records since the log was opened.
    pub write_failures: u64,
    /// Time since the last checkpoint was signed (or since the log was
    /// opened, when none was signed since).
    pub since_checkpoint: Duration,
    /// Flushes to disk made for flushed appends and [`AuditLog::flush`]
    /// since the log was opened: concurrent flushed appends share one
    /// (group commit), so under load this grows slower than they do.
    pub flushes: u64,
}

/// What [`AuditLog::export`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    /// Records written.
    pub records: u64,
    /// Checkpoints written.
    pub checkpoints: usize,
    /// The signer's public key, hex.
    pub public_key: String,
}

/// Which records [`AuditLog::query`] returns; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Plugin name.
    pub plugin: Option<String>,
    /// Tool name (without the plugin).
    pub tool: Option<String>,
    /// Principal.
    pub principal: Option<String>,
    /// Trace id.
    pub trace_id: Option<String>,
    /// Call id.
    pub call_id: Option<String>,
    /// Approval id: the approval's own records and those of every call
    /// made under it.
    pub approval_id: Option<String>,
    /// Outcome (`ok`, an error kind, `unknown`).
    pub outcome: Option<String>,
    /// The tool's risk class when recorded (`read`, `write`, `external`,
    /// `irreversible`); records of no call have none.
    pub risk: Option<String>,
    /// Event.
    pub event: Option<Event>,
    /// At or after, ms since the Unix epoch.
    pub since_ms: Option<u64>,
    /// Before, ms since the Unix epoch.
    pub until_ms: Option<u64>,
}

impl Filter {
    /// Whether `record` matches.
    pub fn matches(&self, record: &Record) -> bool {
        let e = &record.entry;
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        eq(&self.plugin, &e.plugin)
            && eq(&self.tool, &e.tool)
            && eq(&self.principal, &e.principal)
            && eq(&self.trace_id, &e.trace_id)
            && eq(&self.call_id, &e.call_id)
            && eq(&self.approval_id, &e.approval_id)
            && eq(&self.outcome, &e.outcome)
            && eq(&self.risk, &e.risk)
            && self.event.is_none_or(|ev| ev == e.event)
            && self.since_ms.is_none_or(|t| record.time_ms >= t)
            && self.until_ms.is_none_or(|t| record.time_ms < t)
    }
}

/// Check an origin id: it names a chain in a shared store and the file of
/// its public key (`keys/<origin>.pub`).
///
/// # Errors
/// [`Error::InvalidOrigin`] unless it is 1 to 64 ASCII letters, digits,
/// `.`, `_` or `-`, not starting with `.` or `-`.
pub fn check_origin(origin: &str) -> Result<()> {
    let ok = (1..=64).contains(&origin.len())
        && origin
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !origin.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidOrigin {
            origin: origin.to_owned(),
        })
    }
}

/// A store failure as this crate's error, for the log at `path`.
pub(crate) fn store_error(path: &Path, e: &StoreError) -> Error {
    if e.kind() == ErrorKind::Locked {
        return Error::Locked {
            path: path.to_owned(),
        };
    }
    Error::store(path, e.chain())
}

/// The records of `origin` from `from` on, in stored order, read a page at
/// a time: each with its position (the seq the store files it under).
pub(crate) fn chain_records<'a>(
    store: &'a dyn AuditStore,
    origin: &'a str,
    from: u64,
) -> impl Iterator<Item = std::result::Result<(u64, Vec<u8>), StoreError>> + 'a {
    let mut next = from;
    let mut page: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
    let mut done = false;
    std::iter::from_fn(move || {
        if let Some(item) = page.pop_front() {
            return Some(Ok(item));
        }
        if done {
            return None;
        }
        match store.records(origin, next, PAGE) {
            Err(e) => {
                done = true;
                Some(Err(e))
            }
            Ok(got) => {
                done = got.len() < PAGE;
                let last = got.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
                if last < next {
                    // No progress (a position the store cannot name): stop
                    // after this page rather than read it again.
                    done = true;
                }
                next = last.saturating_add(1).max(next);
                page = got.into();
                page.pop_front().map(Ok)
            }
        }
    })
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl AuditLog {
    /// Open (or create) the audit log in `dir`: the sled database in
    /// `dir/db` holding the chain of [`DEFAULT_ORIGIN`], keys beside it.
    /// Calls that were in flight when the host last stopped get an outcome
    /// record `unknown`.
    ///
    /// # Errors
    /// [`Error::Locked`] when another process has it open; [`Error::Store`]
    /// when the directory cannot be created or the database opened;
    /// [`Error::Key`] for a corrupt, exposed or missing key (a key is only
    /// created for a log with nothing depending on it); [`Error::Corrupt`]
    /// when the last record cannot be read.
    #[cfg(feature = "sled")]
    pub fn open(dir: impl AsRef<Path>, config: AuditConfig) -> Result<AuditLog> {
        let dir = dir.as_ref();
        airlock_store::file::create_private_dir(dir)
            .map_err(|e| Error::store(dir, format!("cannot create: {e}")))?;
        let options = airlock_store_sled::SledAuditOptions {
            flush_every_ms: Some(config.group_commit_ms.max(1)),
            lock_wait: Duration::from_millis(config.lock_wait_ms),
        };
        let store =
            airlock_store_sled::SledAudit::open(&dir.join(DB_DIR), DEFAULT_ORIGIN, &options)
                .map_err(|e| store_error(dir, &e))?;
        AuditLog::with_store(Arc::new(store), DEFAULT_ORIGIN, dir, config)
    }

    /// Open the log that appends to `origin`'s chain in `store`, with the
    /// host's keys in `dir` (its audit directory: `signing.key`,
    /// `redaction.key`, created when missing and nothing depends on them
    /// yet; the public key is written as `signing.pub` and
    /// `keys/<origin>.pub`). Calls of `origin` that were in flight when it
    /// last stopped get an outcome record `unknown`.
    ///
    /// One origin is one writer: two hosts must never share an origin id
    /// (the store refuses the second writer's records as conflicts, and
    /// the log then stops taking records rather than fork the chain).
    ///
    /// # Errors
    /// [`Error::InvalidOrigin`]; [`Error::Store`] when the store cannot be
    /// read or `dir` created; [`Error::Key`], [`Error::Corrupt`] and
    /// [`Error::Tampered`] as for [`open`](Self::open).
    pub fn with_store(
        store: Arc<dyn AuditStore>,
        origin: &str,
        dir: impl AsRef<Path>,
        config: AuditConfig,
    ) -> Result<AuditLog> {
        check_origin(origin)?;
        let dir = dir.as_ref();
        airlock_store::file::create_private_dir(dir)
            .map_err(|e| Error::store(dir, format!("cannot create: {e}")))?;
        let has_records = store
            .head(origin)
            .map_err(|e| store_error(dir, &e))?
            .is_some();
        let has_checkpoints = store
            .last_checkpoint(origin)
            .map_err(|e| store_error(dir, &e))?
            .is_some();
        let signing = load_key(&dir.join(SIGNING_KEY_FILE), has_checkpoints, "checkpoints")?;
        let redaction = load_key(&dir.join(REDACTION_KEY_FILE), has_records, "records")?;
        let signing = keys::signing_key(&signing);
        let public = signing.verifying_key();
        let log = AuditLog::from_parts(
            dir.to_owned(),
            store,
            origin,
            Signer::Key(signing),
            redaction.0,
            config,
        )?;
        if let Err(e) = log.check_unsigned_tail() {
            // Dropping a log that is not closed signs its unsigned tail:
            // a history that failed the check must never be signed (the
            // next start would find it vouched for).
            log.lock()?.closed = true;
            return Err(e);
        }
        // Only now, the key having signed this log's checkpoints: a wrong
        // `signing.key` (restored from the wrong backup) must not replace
        // the public key an auditor verifies the log with.
        write_public_key(&dir.join(PUBLIC_KEY_FILE), &public)?;
        let keys_dir = dir.join(KEYS_DIR);
        fs::create_dir_all(&keys_dir).map_err(|e| Error::Key {
            path: keys_dir.clone(),
            reason: format!("cannot create: {e}"),
        })?;
        write_public_key(&keys_dir.join(format!("{origin}.pub")), &public)?;
        // The writer first: recovery may append many records, and
        // appenders leave the writing to it.
        log.start_writer();
        log.recover()?;
        log.start_checkpointer();
        Ok(log)
    }

    /// Open an existing log for reading, verifying and exporting only: no
    /// recovery, no new records or checkpoints. Needs the public key
    /// (`signing.pub`) but not the secret ones.
    ///
    /// # Errors
    /// [`Error::Store`] when there is no log in `dir`; otherwise as
    /// [`open`](Self::open).
    #[cfg(feature = "sled")]
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<AuditLog> {
        AuditLog::open_read_only_waiting(dir, AuditConfig::default().lock_wait_ms)
    }

    /// [`open_read_only`](Self::open_read_only), waiting up to `lock_wait_ms`
    /// for another process to release the database.
    ///
    /// # Errors
    /// As [`open_read_only`](Self::open_read_only).
    #[cfg(feature = "sled")]
    pub fn open_read_only_waiting(dir: impl AsRef<Path>, lock_wait_ms: u64) -> Result<AuditLog> {
        let dir = dir.as_ref();
        let db_path = dir.join(DB_DIR);
        if !db_path.is_dir() {
            return Err(Error::store(
                dir,
                "no audit log here (nothing has been recorded yet)",
            ));
        }
        let options = airlock_store_sled::SledAuditOptions {
            flush_every_ms: None,
            lock_wait: Duration::from_millis(lock_wait_ms),
        };
        let store = airlock_store_sled::SledAudit::open(&db_path, DEFAULT_ORIGIN, &options)
            .map_err(|e| store_error(dir, &e))?;
        AuditLog::read_only(Arc::new(store), DEFAULT_ORIGIN, dir)
    }

    /// A log over `store` for reading, verifying and exporting only, as
    /// the host of `origin` sees it: its own chain is checked against
    /// `dir/signing.pub`, other origins' as [`verify_all`](Self::verify_all)
    /// says. Never writes.
    ///
    /// # Errors
    /// [`Error::InvalidOrigin`]; [`Error::Key`] when `signing.pub` cannot
    /// be read; [`Error::Store`] / [`Error::Corrupt`] when the store cannot.
    pub fn read_only(
        store: Arc<dyn AuditStore>,
        origin: &str,
        dir: impl AsRef<Path>,
    ) -> Result<AuditLog> {
        check_origin(origin)?;
        let dir = dir.as_ref();
        let public = keys::parse_public_key(&dir.join(PUBLIC_KEY_FILE).to_string_lossy())?;
        let log = AuditLog::from_parts(
            dir.to_owned(),
            store,
            origin,
            Signer::VerifyOnly(public),
            keys::random_bytes()?,
            AuditConfig::default(),
        )?;
        log.lock()?.closed = true;
        Ok(log)
    }

    /// Before appending to a log, check the records no checkpoint vouches
    /// for yet (normally a few hundred): the host must never extend — or
    /// sign — a history that was changed while it was not running.
    fn check_unsigned_tail(&self) -> Result<()> {
        let inner = &self.inner;
        let tampered = |failure: VerifyFailure| Error::Tampered {
            path: inner.path.clone(),
            failure,
        };
        let last = self.last_checkpoint()?;
        let mut verifier =
            Verifier::new(&self.public_key(), last.clone(), None, None).map_err(tampered)?;
        let mut from = 1;
        if let Some(cp) = last {
            let Some(record) = self.get(cp.seq)? else {
                let (head, _) = self.head()?;
                return Err(tampered(VerifyFailure {
                    seq: head + 1,
                    problem: crate::verify::Problem::Truncated {
                        last: head,
                        checkpoint: cp.seq,
                    },
                }));
            };
            let hash =
                parse_hash(&record.hash).filter(|h| record.hash == cp.hash && *h != GENESIS_HASH);
            let Some(hash) = hash else {
                return Err(tampered(VerifyFailure {
                    seq: cp.seq,
                    problem: crate::verify::Problem::CheckpointMismatch {
                        last_good_checkpoint: None,
                    },
                }));
            };
            verifier = verifier.resume(cp.seq, hash);
            from = cp.seq + 1;
        }
        for item in chain_records(&*inner.store, &inner.origin, from) {
            let (position, bytes) = item.map_err(|e| store_error(&inner.path, &e))?;
            verifier
                .push_bytes(Some(position), &bytes)
                .map_err(tampered)?;
        }
        verifier.finish().map(drop).map_err(tampered)
    }

    /// A log in a temporary store (a temporary sled database with feature
    /// `sled`, so a long-running host's records are not all held in
    /// memory; memory otherwise), gone when the last clone is dropped,
    /// with fresh in-memory keys: for tests and for hosts that do not keep
    /// records (calls are still recorded while it lives).
    ///
    /// # Errors
    /// [`Error::Store`] when the temporary database cannot be created;
    /// [`Error::Key`] when the operating system gives no entropy for keys.
    pub fn temporary(config: AuditConfig) -> Result<AuditLog> {
        let path = PathBuf::from("<temporary>");
        #[cfg(feature = "sled")]
        let store: Arc<dyn AuditStore> = Arc::new(
            airlock_store_sled::SledAudit::temporary(DEFAULT_ORIGIN)
                .map_err(|e| store_error(&path, &e))?,
        );
        #[cfg(not(feature = "sled"))]
        let store: Arc<dyn AuditStore> = Arc::new(MemoryStore::new());
        let signing = SigningKey::from_bytes(&keys::random_bytes()?);
        let log = AuditLog::from_parts(
            path,
            store,
            DEFAULT_ORIGIN,
            Signer::Key(signing),
            keys::random_bytes()?,
            config,
        )?;
        log.start_writer();
        log.start_checkpointer();
        Ok(log)
    }

    fn from_parts(
        path: PathBuf,
        store: Arc<dyn AuditStore>,
        origin: &str,
        signing: Signer,
        redaction_key: [u8; 32],
        config: AuditConfig,
    ) -> Result<AuditLog> {
        let (seq, hash) = match store.head(origin).map_err(|e| store_error(&path, &e))? {
            None => (0, GENESIS_HASH),
            Some((seq, bytes)) => {
                let corrupt = |reason: &str| Error::Corrupt {
                    path: path.clone(),
                    seq,
                    reason: reason.to_owned(),
                };
                let body: Value =
                    serde_json::from_slice(&bytes).map_err(|_| corrupt("not JSON"))?;
                let hash = body
                    .get("hash")
                    .and_then(Value::as_str)
                    .and_then(parse_hash)
                    .ok_or_else(|| corrupt("no hash"))?;
                (seq, hash)
            }
        };
        let last_checkpoint_seq = store
            .last_checkpoint(origin)
            .map_err(|e| store_error(&path, &e))?
            .map_or(0, |(seq, _)| seq);
        let redactor = Redactor::new(redaction_key, config.redaction.clone());
        Ok(AuditLog {
            inner: Arc::new(Inner {
                path,
                store,
                origin: origin.to_owned(),
                head: Mutex::new(Head { seq, closed: false }),
                chain: Mutex::new(Chain {
                    seq,
                    hash,
                    unsigned: seq.saturating_sub(last_checkpoint_seq),
                    last_checkpoint: Instant::now(),
                }),
                queue: Arc::default(),
                writing: Mutex::new(()),
                appended: AtomicU64::new(seq),
                durable: Mutex::new(Durable {
                    seq,
                    ..Durable::default()
                }),
                flushed: Condvar::new(),
                signing,
                redactor,
                config,
                holds: Holds::default(),
                #[cfg(test)]
                fail_writes: AtomicU64::new(0),
            }),
        })
    }

    /// Give every call left in flight by a previous run its `unknown`
    /// outcome, then sign and flush.
    fn recover(&self) -> Result<()> {
        let inner = &self.inner;
        let markers = inner
            .store
            .open_calls(&inner.origin)
            .map_err(|e| store_error(&inner.path, &e))?;
        let head = self.lock()?.seq;
        // Intents written without a marker (with their outcome, in one
        // store write: see ELIDE_SPAN) whose outcome a crash lost are
        // among the last ELIDE_SPAN records.
        let tail = head.saturating_sub(ELIDE_SPAN - 1).max(1);
        if head == 0 {
            return Ok(());
        }
        let first = markers
            .iter()
            .map(|(_, seq)| *seq)
            .min()
            .map_or(tail, |seq| seq.min(tail));
        let marked: HashSet<&str> = markers.iter().map(|(id, _)| id.as_str()).collect();
        // Calls whose outcome was recorded after the earliest marked intent:
        // a crash between an outcome record and its marker's removal leaves
        // a marker behind for a call that is not in flight. Calls are
        // bounded by their deadlines, so this reads few records.
        let mut finished = HashSet::new();
        let mut unmarked = Vec::new();
        for record in self.records(first) {
            let record = record?;
            match (record.entry.event, &record.entry.call_id) {
                (Event::CallFinished, Some(call_id)) => {
                    finished.insert(call_id.clone());
                }
                (Event::CallStarted, Some(call_id))
                    if record.seq >= tail && !marked.contains(call_id.as_str()) =>
                {
                    unmarked.push(record);
                }
                _ => {}
            }
        }
        drop(marked);
        let mut orphans = Vec::new();
        for intent in unmarked {
            if let Some(call_id) = &intent.entry.call_id
                && !finished.contains(call_id)
            {
                orphans.push((intent.seq, intent));
            }
        }
        for (call_id, seq) in markers {
            let intent = self.get(seq)?.filter(|r| {
                r.entry.event == Event::CallStarted
                    && r.entry.call_id.as_deref() == Some(call_id.as_str())
            });
            match intent {
                Some(intent) if !finished.contains(&call_id) => orphans.push((seq, intent)),
                stale => {
                    if stale.is_none() {
                        // The crash came between the marker and its intent
                        // record: the call never ran.
                        tracing::warn!(
                            call_id,
                            intent = seq,
                            "an in-flight marker without its intent record: dropped"
                        );
                    }
                    inner
                        .store
                        .clear_open_call(&inner.origin, &call_id)
                        .map_err(|e| store_error(&inner.path, &e))?;
                }
            }
        }
        for (seq, intent) in orphans {
            let e = intent.entry;
            let mut entry = Entry::new(Event::CallFinished);
            entry.call_id = e.call_id;
            entry.trace_id = e.trace_id;
            entry.principal = e.principal;
            entry.plugin = e.plugin;
            entry.plugin_version = e.plugin_version;
            entry.component_digest = e.component_digest;
            entry.manifest_digest = e.manifest_digest;
            entry.tool = e.tool;
            entry.risk = e.risk;
            entry.idempotency_key = e.idempotency_key;
            entry.approval_id = e.approval_id;
            entry.args_digest = e.args_digest;
            entry.outcome = Some(OUTCOME_UNKNOWN.to_owned());
            entry.reason = Some(format!(
                "the host stopped while the call was running (intent record {seq}); whether it took effect is unknown"
            ));
            tracing::warn!(call_id = ?entry.call_id, intent = seq, "call in flight at last shutdown: outcome unknown");
            self.append(entry, Durability::Batched)?;
        }
        // Signs and flushes (the removals above included).
        self.checkpoint().map(drop)
    }

    /// Start the thread that puts queued records into the store. Without it
    /// (the thread cannot be spawned), appenders write their own.
    fn start_writer(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let queue = Arc::clone(&self.inner.queue);
        let spawned = std::thread::Builder::new()
            .name("airlock-audit-writer".into())
            .spawn(move || {
                let mut retry = RETRY_FIRST;
                loop {
                    {
                        let mut state = queue.lock();
                        while state.queued() == 0 && !state.stop {
                            state.writer_idle = true;
                            state = queue
                                .wake
                                .wait(state)
                                .unwrap_or_else(PoisonError::into_inner);
                        }
                        state.writer_idle = false;
                        // Let a batch gather (see GATHER_WINDOW).
                        let (state, _) = queue
                            .wake
                            .wait_timeout_while(state, GATHER_WINDOW, |s| {
                                s.queued() < GATHER && !s.stop
                            })
                            .unwrap_or_else(PoisonError::into_inner);
                        if state.stop {
                            return;
                        }
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    let written = inner.write_queued();
                    drop(inner);
                    if written.is_ok() {
                        retry = RETRY_FIRST;
                        continue;
                    }
                    // The records stay queued, in order: try again after a
                    // growing pause (a stop or a new record does not cut
                    // it short: the store needs the time, not the thread).
                    let state = queue.lock();
                    let (state, _) = queue
                        .wake
                        .wait_timeout_while(state, retry, |s| !s.stop)
                        .unwrap_or_else(PoisonError::into_inner);
                    if state.stop {
                        return;
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the audit writer thread; appenders write their records themselves");
            self.inner.queue.lock().inline = true;
        }
    }

    /// Sign a checkpoint every `checkpoint_interval_s` while records arrive.
    fn start_checkpointer(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let interval = Duration::from_secs(self.inner.config.checkpoint_interval_s.max(1));
        let spawned = std::thread::Builder::new()
            .name("airlock-audit-checkpoint".into())
            .spawn(move || {
                // While signing fails (the store is down), retry with a
                // growing pause and log the first failure of a streak and
                // then every minute, not every tick.
                let mut backoff = Duration::ZERO;
                let mut last_logged: Option<Instant> = None;
                loop {
                    std::thread::sleep(Duration::from_millis(250).min(interval) + backoff);
                    let Some(inner) = weak.upgrade() else { return };
                    let log = AuditLog { inner };
                    let due = {
                        let Ok(head) = log.lock() else { return };
                        if head.closed {
                            return;
                        }
                        drop(head);
                        // Records appended since the writer last sealed
                        // count once it has (within a gather window).
                        let chain = log.inner.lock_chain();
                        chain.unsigned > 0 && chain.last_checkpoint.elapsed() >= interval
                    };
                    if !due {
                        continue;
                    }
                    match log.checkpoint() {
                        Ok(_) => {
                            if !backoff.is_zero() {
                                tracing::info!("audit checkpoints are signed again");
                            }
                            backoff = Duration::ZERO;
                            last_logged = None;
                        }
                        Err(e) => {
                            if last_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                                tracing::error!(error = %e, "cannot sign an audit checkpoint; retrying");
                                last_logged = Some(Instant::now());
                            }
                            backoff = (backoff * 2)
                                .max(Duration::from_millis(250))
                                .min(Duration::from_secs(10));
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the audit checkpoint thread; checkpoints are signed by count and at shutdown only");
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Head>> {
        self.inner.head.lock().map_err(|_| Error::Store {
            path: self.inner.path.clone(),
            message: "a writer panicked while appending".into(),
        })
    }

    /// Append `entry` as the next record: sealed (numbered and chained) at
    /// once, written to the store by the writer thread — or, for
    /// [`Durability::Flushed`], written and flushed before this returns.
    ///
    /// A failure to write is not final. The records already sealed stay
    /// queued, in order, and the writer thread writes them as soon as the
    /// store takes writes again; meanwhile batched appends are sealed and
    /// queued behind them up to `max_pending_records`, then refused
    /// (nothing sealed, so no gap). The chain never forks: a sealed record
    /// is never dropped or renumbered.
    ///
    /// # Errors
    /// [`Error::Store`] when the store is failing and `max_pending_records`
    /// records already wait (this record was not sealed), or, for a flushed
    /// append, when it cannot be written and flushed now — the record is
    /// then sealed and stays queued: it reaches the store once the store
    /// recovers, so the caller should record what became of it (the
    /// pipeline appends the call's outcome, `audit_unavailable`);
    /// [`Error::Closed`] after [`close`](Self::close). Either way the
    /// caller must not run the call.
    pub fn append(&self, entry: Entry, durability: Durability) -> Result<Record> {
        let (seq, linked, behind) = self.append_unflushed(&entry, Seal::Now)?;
        if behind {
            self.wait_for_room();
        }
        if durability == Durability::Flushed {
            self.inner.flush_through(seq, false)?;
        }
        linked
            .map(|linked| linked.into_record(entry))
            .ok_or_else(|| Error::store(&self.inner.path, "a record sealed now was not sealed"))
    }

    /// [`append`](Self::append) `entry` without taking it, returning the
    /// record's sequence number only: for callers that do not read the
    /// record back (the call pipeline). It saves copying the entry and
    /// making the [`Record`], and the record is sealed (linked and hashed)
    /// later, by whoever writes the queue — the writer thread, or the
    /// flush of a [`Durability::Flushed`] append before it returns — so
    /// the chain's hashing is off the caller's path.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub fn append_seq(&self, entry: &Entry, durability: Durability) -> Result<u64> {
        let (seq, _, behind) = self.append_unflushed(entry, Seal::Later)?;
        if behind {
            self.wait_for_room();
        }
        if durability == Durability::Flushed {
            self.inner.flush_through(seq, false)?;
        }
        Ok(seq)
    }

    /// [`append_seq`](Self::append_seq) of a [`Durability::Batched`]
    /// record that never blocks: the record's sequence number, and whether
    /// the writer thread is behind (more than its bound of records queued).
    /// When it is, the caller should call [`wait_for_room`](Self::wait_for_room)
    /// before appending again — where blocking is harmless: an async
    /// runtime's worker that blocked there would stall every task on it.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub fn append_batched(&self, entry: &Entry) -> Result<(u64, bool)> {
        let (seq, _, behind) = self.append_unflushed(entry, Seal::Later)?;
        Ok((seq, behind))
    }

    /// Block until the writer thread has brought the queue back under its
    /// bound, for at most a second (then write the queue on this thread:
    /// the writer is stuck). Returns at once when the queue is under it.
    pub fn wait_for_room(&self) {
        self.inner.wait_for_room();
    }

    /// Append, without waiting for room: the seq, the record if sealed now,
    /// and whether the queue is past its bound.
    fn append_unflushed(&self, entry: &Entry, seal: Seal) -> Result<(u64, Option<Linked>, bool)> {
        let inner = &self.inner;
        // Encoded before the head lock is taken: under it, the record is
        // only numbered, timed and queued.
        let prepared = Prepared::new(entry);
        let marker = marker_of(entry);
        let mut head = self.lock()?;
        if head.closed {
            return Err(Error::Closed);
        }
        let seq = head.seq + 1;
        inner.check_room()?;
        let unsealed = Unsealed {
            seq,
            time_ms: now_ms(),
            prepared,
            marker,
        };
        let (linked, queued, inline, wake) = match seal {
            Seal::Later => {
                let mut queue = inner.queue.lock();
                queue.unsealed.push_back(unsealed);
                let queued = queue.queued();
                // Signal the writer only when it waits for records or its
                // batch is full: a signal is a system call, per record it
                // would cost more than the record.
                let wake = queue.writer_idle || queued == GATHER;
                queue.writer_idle = false;
                (None, queued, queue.inline, wake)
            }
            Seal::Now => {
                // Everything before it is sealed first, in order; nothing
                // is appended meanwhile (the head lock is held).
                let (chain, linked) = inner.seal_queued_and(Some(unsealed));
                drop(chain);
                let mut queue = inner.queue.lock();
                let queued = queue.queued();
                let wake = queue.writer_idle || queued == GATHER;
                queue.writer_idle = false;
                (linked, queued, queue.inline, wake)
            }
        };
        inner.appended.store(seq, Ordering::Release);
        head.seq = seq;
        drop(head);
        if wake {
            inner.queue.wake.notify_one();
        }
        if inline {
            // No writer thread: the appender writes. The record is queued:
            // if the store fails now it stays queued for the next append
            // or flush to retry, so this append succeeded.
            let _ = inner.write_queued();
        }
        Ok((seq, linked, !inline && queued > MAX_QUEUED))
    }

    /// Flush everything appended so far to disk.
    ///
    /// # Errors
    /// [`Error::Store`] when the flush fails.
    pub fn flush(&self) -> Result<()> {
        // Always a flush of its own (after any under way): a checkpoint or
        // a cleared marker written since must reach the disk too.
        self.inner
            .flush_through(self.inner.appended.load(Ordering::Acquire), true)
    }

    /// Sign a checkpoint at the current head (if it has records not yet
    /// signed) and flush. Returns the newest checkpoint.
    ///
    /// # Errors
    /// [`Error::Store`] when it cannot be written.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        let head = self.lock()?;
        if !head.closed {
            let mut chain = self.inner.seal_queued();
            if chain.unsigned > 0 {
                self.inner.checkpoint_locked(&mut chain)?;
            }
        }
        drop(head);
        // Stores the records and the checkpoint, and flushes.
        self.flush()?;
        self.last_checkpoint()
    }

    /// Sign a final checkpoint, flush, and refuse further appends.
    ///
    /// Records held back by running calls ([`hold`](Self::hold)) are
    /// appended first: their holders are told ([`on_closing`](Self::on_closing))
    /// and `close` waits for them, at most [`HOLD_RELEASE_WAIT`] — so call
    /// it off the threads those calls run on (an async runtime's blocking
    /// pool), or once they are done.
    ///
    /// # Errors
    /// [`Error::Store`] when the checkpoint or flush fails.
    pub fn close(&self) -> Result<()> {
        self.release_holds();
        self.checkpoint()?;
        self.lock()?.closed = true;
        Ok(())
    }

    /// Take no more [`hold`](Self::hold)s, tell the holders (the
    /// functions given to [`on_closing`](Self::on_closing)) and wait, for
    /// at most [`HOLD_RELEASE_WAIT`], until every record held has been
    /// appended, so that [`close`](Self::close)'s checkpoint covers it.
    fn release_holds(&self) {
        let holds = &self.inner.holds;
        holds.closing.store(true, Ordering::SeqCst);
        let callbacks = std::mem::take(&mut *lock_ignoring_poison(&holds.on_closing));
        for callback in &callbacks {
            callback();
        }
        let deadline = Instant::now() + HOLD_RELEASE_WAIT;
        let mut guard = lock_ignoring_poison(&holds.lock);
        while holds.count.load(Ordering::SeqCst) > 0 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                tracing::warn!(
                    held = holds.count.load(Ordering::SeqCst),
                    "closing the audit log while calls still hold their records"
                );
                break;
            };
            guard = holds
                .released
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Hold a record back while its call runs — the pipeline's `read`
    /// calls, whose intent is written with their outcome as one record —
    /// after checking that an append would be taken now: `Ok` unless the
    /// log is closing or closed, or the store is failing and
    /// `max_pending_records` records already wait for it (the errors
    /// [`append`](Self::append) would return). The caller appends the
    /// record, then drops the [`Hold`]. [`close`](Self::close) first
    /// calls the functions given to [`on_closing`](Self::on_closing), so
    /// holders append what they hold, and waits for the holds to be
    /// dropped (at most [`HOLD_RELEASE_WAIT`]).
    ///
    /// # Errors
    /// As [`append`](Self::append), without sealing anything.
    pub fn hold(&self) -> Result<Hold<'_>> {
        let holds = &self.inner.holds;
        // Counted before `closing` is read, and `close` sets `closing`
        // before it reads the count: one of the two sees the other.
        holds.count.fetch_add(1, Ordering::SeqCst);
        let hold = Hold { holds };
        if holds.closing.load(Ordering::SeqCst) || self.lock()?.closed {
            return Err(Error::Closed);
        }
        self.inner.check_room()?;
        Ok(hold)
    }

    /// Call `f` when [`close`](Self::close) begins: a holder of records
    /// ([`hold`](Self::hold)) appends them then. Called once, on the
    /// closing thread; it must not block.
    pub fn on_closing(&self, f: impl Fn() + Send + Sync + 'static) {
        lock_ignoring_poison(&self.inner.holds.on_closing).push(Box::new(f));
    }

    /// Queue depth, store failures and checkpoint age: cheap (two short
    /// locks), for a metrics scrape.
    pub fn health(&self) -> AuditHealth {
        let since_checkpoint = self.inner.lock_chain().last_checkpoint.elapsed();
        let flushes = self
            .inner
            .durable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flushes;
        let queue = self.inner.queue.lock();
        AuditHealth {
            queued: u64::try_from(queue.queued() + queue.taken).unwrap_or(u64::MAX),
            failing: queue.failing.is_some(),
            write_failures: queue.write_failures,
            since_checkpoint,
            flushes,
        }
    }

    /// Sequence number and hash (hex) of the newest record; `(0, None)` when
    /// empty.
    pub fn head(&self) -> Result<(u64, Option<String>)> {
        // What was appended before this is sealed then (what is appended
        // meanwhile is newer than the answer).
        let chain = self.inner.seal_queued();
        Ok((chain.seq, (chain.seq > 0).then(|| hex::encode(chain.hash))))
    }

    /// The audit directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The origin whose chain this log appends to.
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// The store the chains are in.
    pub fn store(&self) -> &Arc<dyn AuditStore> {
        &self.inner.store
    }

    /// The checkpoint signer's public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.inner.signing.public()
    }

    /// The redactor every record's copies must go through.
    pub fn redactor(&self) -> &Redactor {
        &self.inner.redactor
    }

    /// The configuration.
    pub fn config(&self) -> &AuditConfig {
        &self.inner.config
    }

    /// Record `seq`.
    ///
    /// # Errors
    /// [`Error::Store`] on a read failure; [`Error::Corrupt`] when it does
    /// not parse.
    pub fn get(&self, seq: u64) -> Result<Option<Record>> {
        let inner = &self.inner;
        inner.settle();
        let Some(bytes) = inner
            .store
            .record(&inner.origin, seq)
            .map_err(|e| store_error(&inner.path, &e))?
        else {
            return Ok(None);
        };
        self.parse(seq, &bytes).map(Some)
    }

    pub(crate) fn parse(&self, seq: u64, bytes: &[u8]) -> Result<Record> {
        serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            path: self.inner.path.clone(),
            seq,
            reason: e.to_string(),
        })
    }

    /// Records of this log's chain from `from` on, oldest first.
    pub fn records(&self, from: u64) -> impl Iterator<Item = Result<Record>> + '_ {
        self.inner.settle();
        chain_records(&*self.inner.store, &self.inner.origin, from).map(move |item| {
            let (seq, bytes) = item.map_err(|e| store_error(&self.inner.path, &e))?;
            self.parse(seq, &bytes)
        })
    }

    /// The newest `limit` records of this log's chain matching `filter`,
    /// oldest first.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn query(&self, filter: &Filter, limit: usize) -> Result<Vec<Record>> {
        self.inner.settle();
        newest_matching(self, &self.inner.origin, filter, limit)
    }

    /// Every checkpoint, oldest first.
    ///
    /// # Errors
    /// [`Error::Store`] / [`Error::Corrupt`].
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let inner = &self.inner;
        inner.settle();
        inner
            .store
            .checkpoints(&inner.origin)
            .map_err(|e| store_error(&inner.path, &e))?
            .into_iter()
            .map(|(seq, bytes)| inner.parse_checkpoint(seq, &bytes))
            .collect()
    }

    /// The newest checkpoint, read without the others.
    ///
    /// # Errors
    /// [`Error::Store`] / [`Error::Corrupt`].
    pub fn last_checkpoint(&self) -> Result<Option<Checkpoint>> {
        let inner = &self.inner;
        inner.settle();
        inner
            .store
            .last_checkpoint(&inner.origin)
            .map_err(|e| store_error(&inner.path, &e))?
            .map(|(seq, bytes)| inner.parse_checkpoint(seq, &bytes))
            .transpose()
    }

    /// Verify this log's chain: every record's link and hash, every
    /// checkpoint's signature (against this host's key) and hash, and
    /// `trusted` checkpoints kept elsewhere (an earlier export), which
    /// catch a history rewritten together with its checkpoints. Other
    /// origins' chains in the store: [`verify_all`](Self::verify_all).
    ///
    /// # Errors
    /// The outer error is a failure to read the store; the inner one is the
    /// first bad record.
    pub fn verify(&self, trusted: &[Checkpoint]) -> Result<Result<VerifyReport, VerifyFailure>> {
        self.inner.settle();
        verify_chain(
            &*self.inner.store,
            &self.inner.path,
            &self.inner.origin,
            &self.public_key(),
            trusted,
        )
    }

    /// Write the whole log to `path` as JSON lines: a header, every
    /// checkpoint, then every record — after signing a checkpoint at the
    /// head, so the export is covered to its last record. Written to a
    /// temporary file and renamed: a failed export leaves nothing behind.
    ///
    /// # Errors
    /// [`Error::File`] when the file cannot be written; store errors.
    pub fn export(&self, path: impl AsRef<Path>) -> Result<ExportSummary> {
        let path = path.as_ref();
        self.checkpoint()?;
        let checkpoints = self.checkpoints()?;
        let (records, head) = self.head()?;
        // Records appended since the checkpoint, up to `records`.
        self.inner.write_queued()?;
        write_atomically(path, |out, file_error| {
            let header = serde_json::json!({
                "format": EXPORT_FORMAT,
                "version": EXPORT_VERSION,
                "public_key": hex::encode(self.public_key().as_bytes()),
                "origin": self.origin(),
                "exported_ms": now_ms(),
                "records": records,
                "head_hash": head,
            });
            writeln!(out, "{header}").map_err(file_error)?;
            for cp in &checkpoints {
                writeln!(out, "{}", serde_json::json!({ "checkpoint": cp })).map_err(file_error)?;
            }
            let chain = chain_records(&*self.inner.store, &self.inner.origin, 1)
                .take_while(|item| item.as_ref().map_or(true, |(seq, _)| *seq <= records));
            for item in chain {
                let (_, v) = item.map_err(|e| store_error(&self.inner.path, &e))?;
                out.write_all(RECORD_LINE_START.as_bytes())
                    .map_err(file_error)?;
                out.write_all(&v).map_err(file_error)?;
                out.write_all(b"}\n").map_err(file_error)?;
            }
            Ok(())
        })?;
        Ok(ExportSummary {
            records,
            checkpoints: checkpoints.len(),
            public_key: hex::encode(self.public_key().as_bytes()),
        })
    }
}

impl Inner {
    /// A stored checkpoint, read.
    fn parse_checkpoint(&self, seq: u64, bytes: &[u8]) -> Result<Checkpoint> {
        serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            path: self.path.clone(),
            seq,
            reason: format!("checkpoint unreadable: {e}"),
        })
    }

    fn lock_chain(&self) -> MutexGuard<'_, Chain> {
        // Plain values, each set after what it describes: consistent
        // whatever panicked while holding them.
        self.chain.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Seal every queued record not yet sealed, in order, and queue them
    /// for the store. Returns the chain, still locked (nothing is sealed
    /// meanwhile).
    fn seal_queued(&self) -> MutexGuard<'_, Chain> {
        self.seal_queued_and(None).0
    }

    /// [`seal_queued`](Self::seal_queued), then `next` (numbered after
    /// every queued record: its appender holds the head lock), returning
    /// `next` linked. The sealed records, and the checkpoints that fall
    /// due among them, enter the queue together: a writer that finds the
    /// queue empty may store every checkpoint queued, because every record
    /// such a checkpoint vouches for is stored by then.
    fn seal_queued_and(&self, next: Option<Unsealed>) -> (MutexGuard<'_, Chain>, Option<Linked>) {
        let mut chain = self.lock_chain();
        let mut unsealed = std::mem::take(&mut self.queue.lock().unsealed);
        let wants_next = next.is_some();
        unsealed.extend(next);
        if unsealed.is_empty() {
            return (chain, None);
        }
        let every = self.config.checkpoint_every.max(1);
        let mut writes = VecDeque::with_capacity(unsealed.len());
        let mut checkpoints = Vec::new();
        let mut last = None;
        for record in unsealed {
            let linked = record
                .prepared
                .link(record.seq, record.time_ms, &chain.hash);
            chain.seq = record.seq;
            chain.hash = linked.hash;
            chain.unsigned += 1;
            writes.push_back(AuditWrite {
                seq: record.seq,
                bytes: linked.bytes(),
                marker: record.marker,
            });
            if chain.unsigned >= every {
                match self.sign(&mut chain) {
                    Ok(signed) => checkpoints.extend(signed),
                    // The records are sealed; the next one tries again.
                    Err(e) => tracing::error!(error = %e, "cannot sign an audit checkpoint"),
                }
            }
            last = Some(linked);
        }
        let mut queue = self.queue.lock();
        queue.writes.append(&mut writes);
        queue.checkpoints.append(&mut checkpoints);
        drop(queue);
        (chain, last.filter(|_| wants_next))
    }

    /// A checkpoint of the chain as sealed, encoded with its seq (`None`
    /// for an empty chain or a log that cannot sign).
    fn sign(&self, chain: &mut Chain) -> Result<Option<(u64, Vec<u8>)>> {
        if chain.seq == 0 {
            return Ok(None);
        }
        let Some(cp) = self.signing.sign(chain.seq, &chain.hash) else {
            return Ok(None);
        };
        let bytes = serde_json::to_vec(&cp)
            .map_err(|e| Error::store(&self.path, format!("cannot encode a checkpoint: {e}")))?;
        chain.unsigned = 0;
        chain.last_checkpoint = Instant::now();
        Ok(Some((chain.seq, bytes)))
    }

    /// Sign a checkpoint at the sealed head and queue it behind the records
    /// it vouches for (all sealed, so queued or stored): the next write of
    /// the queue stores it after them.
    fn checkpoint_locked(&self, chain: &mut Chain) -> Result<()> {
        if let Some(signed) = self.sign(chain)? {
            self.queue.lock().checkpoints.push(signed);
        }
        Ok(())
    }

    /// Make every record up to `seq` durable: written to the store and
    /// flushed. Group commit: one appender at a time flushes, and its
    /// flush covers every record sealed before it began; appenders that
    /// arrive meanwhile wait for it and return at once if it covered them,
    /// else one of them flushes for all of them. No window is added: the
    /// flush under way is the window, so a lone appender never waits for
    /// company.
    ///
    /// With `force`, flush even when `seq` is covered already (after the
    /// flush under way, if any): other writes than records (a checkpoint,
    /// a cleared marker) must reach the disk too.
    ///
    /// # Errors
    /// [`Error::Store`] when the write or the flush fails (the records stay
    /// queued, as for any failed write).
    fn flush_through(&self, seq: u64, force: bool) -> Result<()> {
        let lock = || self.durable.lock().unwrap_or_else(PoisonError::into_inner);
        let mut durable = lock();
        loop {
            if !force && durable.seq >= seq {
                return Ok(());
            }
            if !durable.flushing {
                break;
            }
            durable = self
                .flushed
                .wait(durable)
                .unwrap_or_else(PoisonError::into_inner);
        }
        durable.flushing = true;
        drop(durable);
        // Every record appended up to here is queued or stored: sealed,
        // written and flushed below, it is on disk.
        let target = self.appended.load(Ordering::Acquire);
        let result = self
            .write_queued()
            .and_then(|()| self.store.flush().map_err(|e| store_error(&self.path, &e)));
        let mut durable = lock();
        durable.flushing = false;
        durable.flushes = durable.flushes.saturating_add(1);
        if result.is_ok() {
            durable.seq = durable.seq.max(target);
        }
        drop(durable);
        self.flushed.notify_all();
        result
    }

    /// Wait (bounded) until the writer thread has taken what is queued, or
    /// writing fails (failing writes are bounded by `max_pending_records`
    /// instead); past [`MAX_QUEUE_WAIT`], write the queue here.
    fn wait_for_room(&self) {
        let mut queue = self.queue.lock();
        queue.waiting_for_room += 1;
        let (mut queue, waited) = self
            .queue
            .drained
            .wait_timeout_while(queue, MAX_QUEUE_WAIT, |s| {
                s.queued() > MAX_QUEUED && s.failing.is_none() && !s.stop && !s.inline
            })
            .unwrap_or_else(PoisonError::into_inner);
        queue.waiting_for_room -= 1;
        let stuck = waited.timed_out() && queue.failing.is_none();
        drop(queue);
        if stuck {
            tracing::warn!(
                "the audit writer thread is behind by more than a second; an appender writes the queue"
            );
            let _ = self.write_queued();
        }
    }

    /// Put every queued record into the store, in order, in one
    /// [`AuditStore::write`]. On a failure the store is asked how far it
    /// got; the record that failed and every one after it go back to the
    /// front of the queue, in order, to be tried again (by the writer
    /// thread, or the next flush): nothing sealed is lost or reordered, so
    /// the chain in the store stays a gap-free prefix of the sealed one.
    fn write_queued(&self) -> Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            drop(self.seal_queued());
            let (mut writes, resync, room_waiters) = {
                let mut queue = self.queue.lock();
                queue.taken = queue.writes.len();
                (
                    std::mem::take(&mut queue.writes),
                    queue.resync,
                    queue.waiting_for_room > 0,
                )
            };
            if room_waiters {
                self.queue.drained.notify_all();
            }
            if writes.is_empty() {
                let mut queue = self.queue.lock();
                if queue.queued() == 0 {
                    if queue.failing.take().is_some() {
                        tracing::warn!(
                            "the audit store takes writes again; queued records are stored"
                        );
                    }
                    // Every record sealed before them is stored now.
                    let checkpoints = std::mem::take(&mut queue.checkpoints);
                    drop(queue);
                    return self.put_checkpoints(checkpoints);
                }
                continue;
            }
            let mut result = Ok(());
            if resync {
                result = self
                    .drop_stored(&mut writes)
                    .and_then(|diverged| match diverged {
                        Some(e) => Err(e),
                        None => Ok(()),
                    });
                if result.is_ok() {
                    self.queue.lock().resync = false;
                }
            }
            if result.is_ok() && !writes.is_empty() {
                elide_markers(writes.make_contiguous());
                result = self.write_checked(writes.make_contiguous());
                if result.is_ok() {
                    continue;
                }
                // What did the store keep? Whatever it reports is not
                // written again; if it cannot say, the next writer asks.
                match self.drop_stored(&mut writes) {
                    // It kept them all after all (its answer was lost).
                    Ok(None) if writes.is_empty() => continue,
                    Ok(None) => {}
                    Ok(Some(diverged)) => {
                        self.queue.lock().resync = true;
                        result = Err(diverged);
                    }
                    Err(_) => self.queue.lock().resync = true,
                }
            }
            let Err(e) = result else { continue };
            let seq = writes.front().map_or(0, |w| w.seq);
            let mut queue = self.queue.lock();
            let first_failure = queue.failing.is_none();
            queue.failing = Some(format!("cannot write record {seq}: {e}"));
            queue.write_failures = queue.write_failures.saturating_add(1);
            // Back in front of whatever was queued meanwhile.
            writes.append(&mut queue.writes);
            queue.writes = writes;
            queue.taken = 0;
            if first_failure {
                tracing::error!(error = %e, seq, queued = queue.writes.len(), "cannot write audit records; they stay queued and are retried");
            }
            drop(queue);
            // Appenders waiting for room stop waiting: while the store
            // fails, `max_pending_records` bounds the queue.
            self.queue.drained.notify_all();
            return Err(e);
        }
    }

    /// Store signed checkpoints whose records are stored; on a failure,
    /// the one that failed and those after it wait for the next write.
    fn put_checkpoints(&self, checkpoints: Vec<(u64, Vec<u8>)>) -> Result<()> {
        for (i, (seq, bytes)) in checkpoints.iter().enumerate() {
            if let Err(e) = self.store.put_checkpoint(&self.origin, *seq, bytes) {
                let mut queue = self.queue.lock();
                let mut left = checkpoints[i..].to_vec();
                left.append(&mut queue.checkpoints);
                queue.checkpoints = left;
                return Err(store_error(&self.path, &e));
            }
        }
        Ok(())
    }

    /// Drop from the front of `writes` what the store already holds (a
    /// write that failed part-way, or whose answer was lost). A stored
    /// record that differs from the sealed one means another writer
    /// extends this origin's chain: that error is returned (`Some`), every
    /// time, so the log stops taking records rather than fork the chain.
    /// `Err` is a store that cannot say.
    fn drop_stored(&self, writes: &mut VecDeque<AuditWrite>) -> Result<Option<Error>> {
        let failed = |e: StoreError| store_error(&self.path, &e);
        let (Some(first), Some(last)) = (writes.front(), writes.back()) else {
            return Ok(None);
        };
        let (first, last) = (first.seq, last.seq);
        let Some((head, head_bytes)) = self.store.head(&self.origin).map_err(failed)? else {
            return Ok(if first == 1 {
                None
            } else {
                Some(self.diverged(format!(
                    "the store holds no records, but records up to {} were stored",
                    first - 1
                )))
            });
        };
        if head < first {
            return Ok(if head + 1 == first {
                None
            } else {
                Some(self.diverged(format!(
                    "the store's chain ends at record {head}, but records up to {} were stored",
                    first - 1
                )))
            });
        }
        let at = head.min(last);
        let stored = if at == head {
            Some(head_bytes)
        } else {
            self.store.record(&self.origin, at).map_err(failed)?
        };
        let index = usize::try_from(at - first).unwrap_or(usize::MAX);
        let ours = writes.get(index).map(|w| &w.bytes);
        if stored.as_ref() != ours {
            return Ok(Some(self.diverged(format!(
                "record {at} in the store is not the one this host sealed: another process appends to origin {:?} (two hosts must not share an origin id)",
                self.origin
            ))));
        }
        writes.drain(..=index);
        Ok(None)
    }

    fn diverged(&self, message: String) -> Error {
        Error::store(
            &self.path,
            format!("audit chain {:?}: {message}", self.origin),
        )
    }

    fn write_checked(&self, writes: &[AuditWrite]) -> Result<()> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering;
            let left = self.fail_writes.load(Ordering::SeqCst);
            if left > 0 {
                self.fail_writes.store(left - 1, Ordering::SeqCst);
                return Err(Error::store(
                    &self.path,
                    "No space left on device (os error 28) [injected]",
                ));
            }
        }
        self.store
            .write(&self.origin, writes)
            .map_err(|e| store_error(&self.path, &e))
    }

    /// `Ok` unless the store is failing and `max_pending_records` records
    /// already wait for it.
    fn check_room(&self) -> Result<()> {
        let queue = self.queue.lock();
        let pending = queue.queued() + queue.taken;
        match &queue.failing {
            Some(failing) if pending >= self.config.max_pending_records => Err(Error::store(
                &self.path,
                format!(
                    "{failing}; {pending} records wait for the store, no more are taken until it recovers"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Before a read: put what is queued into the store, so the reader
    /// sees every record appended so far. A failure to write is the log's
    /// (it is logged, and appends report it), not the reader's: it reads
    /// what the store holds.
    pub(crate) fn settle(&self) {
        let _ = self.write_queued();
    }
}

/// How long [`AuditLog::close`] waits for records held back
/// ([`AuditLog::hold`]) to be appended.
pub const HOLD_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Records held back by their callers: how many, whether the log is
/// closing, and who to tell when it is.
#[derive(Default)]
struct Holds {
    count: AtomicUsize,
    closing: std::sync::atomic::AtomicBool,
    on_closing: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
    /// With `released`: a hold was dropped while the log was closing.
    lock: Mutex<()>,
    released: Condvar,
}

/// A record held back from the log while its call runs
/// ([`AuditLog::hold`]); dropped once the record is appended (or cannot
/// be).
#[must_use = "a hold is released when dropped: keep it until the record is appended"]
pub struct Hold<'a> {
    holds: &'a Holds,
}

impl std::fmt::Debug for Hold<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let holds = self.holds;
        if holds.count.fetch_sub(1, Ordering::SeqCst) == 1 && holds.closing.load(Ordering::SeqCst) {
            // Under the lock `close` waits with, so the wake is not lost.
            let _guard = lock_ignoring_poison(&holds.lock);
            holds.released.notify_all();
        }
    }
}

fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The in-flight marker an appended entry sets or clears: an intent opens
/// its call, an outcome closes it — but not an outcome that carries its
/// intent ([`Entry::carries_intent`]): that call was never open.
fn marker_of(entry: &Entry) -> Marker {
    match (entry.event, entry.call_id.as_deref()) {
        (Event::CallStarted, Some(call_id)) => Marker::Open(call_id.to_owned()),
        (Event::CallFinished, Some(_)) if entry.carries_intent() => Marker::None,
        (Event::CallFinished, Some(call_id)) => Marker::Close(call_id.to_owned()),
        _ => Marker::None,
    }
}

/// Drop the in-flight markers of calls whose intent and outcome are both
/// in `writes`, fewer than [`ELIDE_SPAN`] records apart: written together,
/// the call is never in flight in the store (see [`ELIDE_SPAN`]).
fn elide_markers(writes: &mut [AuditWrite]) {
    let mut opened: HashMap<&str, (usize, u64)> = HashMap::new();
    let mut pairs = Vec::new();
    for (i, write) in writes.iter().enumerate() {
        match &write.marker {
            Marker::Open(call_id) => {
                opened.insert(call_id, (i, write.seq));
            }
            Marker::Close(call_id) => {
                if let Some((at, seq)) = opened.remove(call_id.as_str())
                    && write.seq - seq < ELIDE_SPAN
                {
                    pairs.push((at, i));
                }
            }
            Marker::None => {}
        }
    }
    for (open, close) in pairs {
        writes[open].marker = Marker::None;
        writes[close].marker = Marker::None;
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // What is queued goes in first; the writer thread then exits.
        let written = self.write_queued();
        {
            let mut queue = self.queue.lock();
            queue.stop = true;
        }
        self.queue.wake.notify_all();
        self.queue.drained.notify_all();
        if let Err(e) = written {
            // Never sign records the store does not hold (nor, when another
            // writer extends this chain, over its records).
            tracing::error!(error = %e, "cannot write the last audit records; no shutdown checkpoint is signed");
            return;
        }
        // Sign what is unsigned so a clean shutdown leaves the whole log
        // covered; best effort (errors are logged).
        let Ok(head) = self.head.lock() else {
            return;
        };
        if head.closed {
            return;
        }
        // Everything appended is sealed and stored (written above).
        let mut chain = self.lock_chain();
        if chain.unsigned == 0 {
            return;
        }
        let result = self
            .sign(&mut chain)
            .map_err(|e| e.to_string())
            .and_then(|signed| {
                let Some((seq, bytes)) = signed else {
                    return Ok(());
                };
                self.store
                    .put_checkpoint(&self.origin, seq, &bytes)
                    .and_then(|()| self.store.flush())
                    .map_err(|e| e.chain())
            });
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot sign the shutdown audit checkpoint");
        }
    }
}

/// The newest `limit` records of `origin` matching `filter`, oldest first,
/// read backwards a page at a time.
pub(crate) fn newest_matching(
    log: &AuditLog,
    origin: &str,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<Record>> {
    let mut chain = Backwards::new(log, origin.to_owned(), filter)?;
    let mut out = Vec::new();
    while out.len() < limit
        && let Some(record) = chain.next()?
    {
        out.push(record);
    }
    out.reverse();
    Ok(out)
}

/// One chain read backwards a page at a time, its records parsed newest
/// first and only as far as they are asked for: the records matching a
/// filter, newest first.
pub(crate) struct Backwards<'a> {
    log: &'a AuditLog,
    pub(crate) origin: String,
    filter: &'a Filter,
    /// The highest seq not read from the store yet (0: every one read).
    end: u64,
    /// The page read last, oldest first, not parsed yet (taken from the
    /// end).
    raw: Vec<(u64, Vec<u8>)>,
    /// The newest matching record not taken yet, once found.
    found: Option<Record>,
}

impl<'a> Backwards<'a> {
    pub(crate) fn new(
        log: &'a AuditLog,
        origin: String,
        filter: &'a Filter,
    ) -> Result<Backwards<'a>> {
        let inner = &log.inner;
        let end = inner
            .store
            .head(&origin)
            .map_err(|e| store_error(&inner.path, &e))?
            .map_or(0, |(seq, _)| seq);
        Ok(Backwards {
            log,
            origin,
            filter,
            end,
            raw: Vec::new(),
            found: None,
        })
    }

    /// The newest matching record not taken yet (`None`: the chain is
    /// read), reading and parsing no further back than it.
    pub(crate) fn peek(&mut self) -> Result<Option<&Record>> {
        while self.found.is_none() {
            if let Some((seq, bytes)) = self.raw.pop() {
                let record = self.log.parse(seq, &bytes)?;
                if self.filter.matches(&record) {
                    self.found = Some(record);
                }
                continue;
            }
            if self.end == 0 {
                break;
            }
            self.read_page()?;
        }
        Ok(self.found.as_ref())
    }

    /// The record [`peek`](Self::peek) found, if any (reads nothing).
    pub(crate) fn current(&self) -> Option<&Record> {
        self.found.as_ref()
    }

    /// Take the record [`peek`](Self::peek) found.
    pub(crate) fn take(&mut self) -> Option<Record> {
        self.found.take()
    }

    /// The newest matching record not taken yet, taken.
    pub(crate) fn next(&mut self) -> Result<Option<Record>> {
        self.peek()?;
        Ok(self.take())
    }

    /// Read the page that ends at `end` into `raw`. A page holding none of
    /// its seqs ends the walk: the head is not where the records are (a
    /// stray key in a tampered store, which `verify` names), and walking
    /// down from it a page at a time could take 2^55 pages.
    fn read_page(&mut self) -> Result<()> {
        let inner = &self.log.inner;
        let end = self.end;
        let page = u64::try_from(PAGE).unwrap_or(u64::MAX);
        let start = end.saturating_sub(page - 1).max(1);
        let mut records = inner
            .store
            .records(&self.origin, start, PAGE)
            .map_err(|e| store_error(&inner.path, &e))?;
        records.retain(|(seq, _)| (start..=end).contains(seq));
        if records.is_empty() {
            tracing::warn!(
                origin = self.origin,
                start,
                end,
                "no audit record where the chain's head says there are some; run `airlock audit verify`"
            );
            self.end = 0;
            return Ok(());
        }
        self.raw = records;
        self.end = start - 1;
        Ok(())
    }
}

/// Verify the chain of `origin` in `store` against `key` and `trusted`
/// checkpoints; `path` names the log in store errors.
pub(crate) fn verify_chain(
    store: &dyn AuditStore,
    path: &Path,
    origin: &str,
    key: &VerifyingKey,
    trusted: &[Checkpoint],
) -> Result<Result<VerifyReport, VerifyFailure>> {
    let failed = |e: StoreError| store_error(path, &e);
    let mut checkpoints = Vec::new();
    for (seq, v) in store.checkpoints(origin).map_err(failed)? {
        match serde_json::from_slice::<Checkpoint>(&v) {
            Ok(cp) if cp.seq == seq => checkpoints.push(cp),
            Ok(_) | Err(_) => {
                return Ok(Err(VerifyFailure {
                    seq,
                    problem: crate::verify::Problem::BadSignature {
                        reason: "the stored checkpoint is unreadable or misplaced".into(),
                    },
                }));
            }
        }
    }
    let mut verifier = match Verifier::new(key, checkpoints, trusted.iter().cloned(), None) {
        Ok(v) => v,
        Err(failure) => return Ok(Err(failure)),
    };
    for item in chain_records(store, origin, 1) {
        let (position, bytes) = item.map_err(failed)?;
        if let Err(failure) = verifier.push_bytes(Some(position), &bytes) {
            return Ok(Err(failure));
        }
    }
    Ok(verifier.finish())
}

/// Write `path` whole or not at all (`airlock_store::file`), readable by
/// its owner only (0600: an export holds the records' arguments and
/// results): `body` writes a buffered temporary file beside it (given the
/// error for a failed write), which is then synced and renamed over
/// `path`; on any failure the temporary file is removed and `path` is
/// untouched.
pub(crate) fn write_atomically(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<fs::File>, &dyn Fn(std::io::Error) -> Error) -> Result<()>,
) -> Result<()> {
    let file_error = |e: std::io::Error| Error::File {
        path: path.to_owned(),
        message: e.to_string(),
    };
    airlock_store::file::write_private_with(path, |out| body(out, &file_error), file_error)
}

/// Read the key at `path`, or create it when missing and nothing (`what`)
/// depends on it yet.
fn load_key(path: &Path, in_use: bool, what: &str) -> Result<keys::Secret> {
    if keys::exists(path) {
        return keys::read(path);
    }
    if in_use {
        return Err(Error::Key {
            path: path.to_owned(),
            reason: format!(
                "missing, but the audit log already holds {what} made with it; restore the file from backup (a new key would make them unverifiable)"
            ),
        });
    }
    keys::create(path)
}

fn write_public_key(path: &Path, key: &VerifyingKey) -> Result<()> {
    let text = format!("{}\n", hex::encode(key.as_bytes()));
    // Read under a cap: the file may be anything (a link to a device).
    if airlock_store::file::read_text_capped(path, 4096).is_ok_and(|t| t == text) {
        return Ok(());
    }
    airlock_store::file::write(path, |out| out.write_all(text.as_bytes())).map_err(|e| Error::Key {
        path: path.to_owned(),
        reason: format!("cannot write the public key: {e}"),
    })
}

/// Verify an export file offline against the trusted public `key` (never
/// the one the file names), plus `trusted` checkpoints kept elsewhere.
///
/// # Errors
/// The outer error is a file that cannot be read or is not an export; the
/// inner one is the first bad record.
pub fn verify_export(
    path: impl AsRef<Path>,
    key: &VerifyingKey,
    trusted: &[Checkpoint],
) -> Result<Result<VerifyReport, VerifyFailure>> {
    let path = path.as_ref();
    let export = read_export(path)?;
    let present: HashSet<u64> = export
        .records
        .iter()
        .filter_map(|r| {
            serde_json::from_str::<Value>(r)
                .ok()?
                .get("seq")
                .and_then(Value::as_u64)
        })
        .collect();
    let mut verifier = match Verifier::new(
        key,
        export.checkpoints,
        trusted.iter().cloned(),
        Some(present),
    ) {
        Ok(v) => v,
        Err(failure) => return Ok(Err(failure)),
    };
    for record in export.records {
        if let Err(failure) = verifier.push_bytes(None, record.as_bytes()) {
            return Ok(Err(failure));
        }
    }
    Ok(verifier.finish().and_then(|report| {
        // `export` signs first: an export without a checkpoint is one
        // whose checkpoints were taken out, and then a rewrite that
        // re-hashed the chain verifies (by links and hashes alone).
        if report.records > 0 && report.last_checkpoint.is_none() {
            return Err(VerifyFailure {
                seq: 1,
                problem: crate::verify::Problem::Unsigned {
                    records: report.records,
                },
            });
        }
        Ok(report)
    }))
}

/// An export file, parsed.
#[derive(Debug)]
pub struct Export {
    /// The public key the file names (informational: verify against a key
    /// you trust).
    pub public_key: String,
    /// Its checkpoints.
    pub checkpoints: Vec<Checkpoint>,
    /// Its records: each exactly the bytes the log stored (and hashed),
    /// which verification checks as they are, never re-encoded.
    pub records: Vec<String>,
}

/// Read an export file (or just its checkpoints, to use them as trusted
/// anchors).
///
/// # Errors
/// [`Error::File`] naming the line that is not part of an export.
pub fn read_export(path: impl AsRef<Path>) -> Result<Export> {
    let path = path.as_ref();
    let bad = export_error(path);
    let (header, lines) = open_export(path)?;
    if header.get("version").and_then(Value::as_u64) != Some(EXPORT_VERSION) {
        return Err(bad(
            1,
            format!("unsupported export version {}", header["version"]),
        ));
    }
    let mut export = Export {
        public_key: header
            .get("public_key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        checkpoints: Vec::new(),
        records: Vec::new(),
    };
    for line in lines {
        let (n, line) = line?;
        let value: Value =
            serde_json::from_str(&line).map_err(|e| bad(n, format!("not JSON: {e}")))?;
        if value.get("record").is_some() {
            // The record's stored bytes, exactly as written: the wrapper is
            // fixed text, so nothing about them is lost to parsing.
            let stored = line
                .strip_prefix(RECORD_LINE_START)
                .and_then(|rest| rest.strip_suffix('}'))
                .ok_or_else(|| {
                    bad(
                        n,
                        format!("a record line must be exactly {RECORD_LINE_START}<record>}}"),
                    )
                })?;
            export.records.push(stored.to_owned());
        } else if let Some(cp) = value.get("checkpoint") {
            let cp: Checkpoint = serde_json::from_value(cp.clone())
                .map_err(|e| bad(n, format!("malformed checkpoint: {e}")))?;
            export.checkpoints.push(cp);
        } else {
            return Err(bad(n, "neither a record nor a checkpoint".into()));
        }
    }
    Ok(export)
}

/// The error about line `line` of the export file at `path`.
pub(crate) fn export_error(path: &Path) -> impl Fn(usize, String) -> Error + '_ {
    move |line, message| Error::File {
        path: path.to_owned(),
        message: format!("line {line}: {message}"),
    }
}

/// Longest line of an export read: a record holds copies of a call's
/// arguments and result, each bounded by the host's size caps, far below.
pub(crate) const MAX_EXPORT_LINE_BYTES: u64 = 256 * 1024 * 1024;

/// Open the export file at `path`: its header, checked to name the export
/// format (each reader checks the version it reads), and its further lines
/// that are not blank, with their line numbers.
///
/// # Errors
/// [`Error::File`] naming the line that is not part of an export.
pub(crate) fn open_export(
    path: &Path,
) -> Result<(Value, impl Iterator<Item = Result<(usize, String)>> + '_)> {
    let bad = export_error(path);
    let file = fs::File::open(path).map_err(|e| Error::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut reader = BufReader::new(file);
    let mut failed = false;
    // Lines read under a cap: a file that never ends a line (a link to a
    // device) is refused, not read until memory runs out; after a failed
    // line nothing more is read.
    let mut lines = std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let mut line = String::new();
        match airlock_store::file::read_line_capped(&mut reader, &mut line, MAX_EXPORT_LINE_BYTES) {
            Ok(0) => None,
            Ok(_) => {
                if line.ends_with('\n') {
                    line.pop();
                    if line.ends_with('\r') {
                        line.pop();
                    }
                }
                Some(Ok(line))
            }
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
    .enumerate();
    let header: Value = match lines.next() {
        Some((_, Ok(line))) => {
            serde_json::from_str(&line).map_err(|e| bad(1, format!("not JSON: {e}")))?
        }
        Some((_, Err(e))) => return Err(bad(1, e.to_string())),
        None => return Err(bad(1, "empty file, not an audit export".into())),
    };
    if header.get("format").and_then(Value::as_str) != Some(EXPORT_FORMAT) {
        return Err(bad(
            1,
            "not an airlock audit export (no export header)".into(),
        ));
    }
    let rest = lines.filter_map(move |(i, line)| {
        let n = i + 1;
        match line {
            Ok(line) if line.trim().is_empty() => None,
            Ok(line) => Some(Ok((n, line))),
            Err(e) => Some(Err(bad(n, e.to_string()))),
        }
    });
    Ok((header, rest))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use super::*;

    fn entry(i: u64) -> Entry {
        let mut e = Entry::new(Event::ModeChanged);
        e.decision = Some(format!("entry-{i}"));
        e
    }

    fn fail_next_writes(log: &AuditLog, n: u64) {
        log.inner.fail_writes.store(n, Ordering::SeqCst);
    }

    /// Every record 1..=n present, in order, and the chain verifies.
    fn assert_gap_free(log: &AuditLog, n: u64) {
        let report = log.verify(&[]).unwrap().unwrap();
        assert_eq!(report.records, n);
        let seqs: Vec<u64> = log.records(1).map(|r| r.unwrap().seq).collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    }

    /// A full disk for a moment: the flushed append that hit it is told so,
    /// the record it sealed is stored once the disk takes writes again, and
    /// appends after it succeed — no restart, no gap, no fork.
    #[test]
    fn a_failed_audit_write_does_not_stop_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
        for i in 1..=3 {
            log.append(entry(i), Durability::Flushed).unwrap();
        }
        fail_next_writes(&log, u64::MAX);
        let failed = log.append(entry(4), Durability::Flushed).unwrap_err();
        assert!(failed.to_string().contains("No space left"), "{failed}");
        // The store works again: later appends succeed, flushed or not.
        fail_next_writes(&log, 0);
        let fifth = log.append(entry(5), Durability::Flushed).unwrap();
        assert_eq!(fifth.seq, 5);
        let sixth = log.append(entry(6), Durability::Batched).unwrap();
        log.flush().unwrap();
        assert_gap_free(&log, 6);
        // Record 4 was kept and stored, and what the appenders were handed
        // is what the store holds.
        assert_eq!(
            log.get(4).unwrap().unwrap().entry.decision.as_deref(),
            Some("entry-4")
        );
        assert_eq!(log.get(6).unwrap().unwrap(), sixth);
        assert_eq!(
            log.get(5).unwrap().unwrap().prev_hash,
            log.get(4).unwrap().unwrap().hash
        );
        // Closed and reopened, it verifies and continues.
        log.close().unwrap();
        drop(log);
        let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
        assert_eq!(log.append(entry(7), Durability::Flushed).unwrap().seq, 7);
        assert_gap_free(&log, 7);
    }

    /// While the store keeps failing, batched appends queue up to
    /// `max_pending_records` and then are refused without sealing anything;
    /// the writer thread stores the queue once the store recovers.
    #[test]
    fn a_store_failing_for_long_refuses_past_the_pending_bound_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig {
            max_pending_records: 8,
            ..AuditConfig::default()
        };
        let log = AuditLog::open(dir.path(), config).unwrap();
        log.append(entry(1), Durability::Flushed).unwrap();
        fail_next_writes(&log, u64::MAX);
        assert!(log.append(entry(2), Durability::Flushed).is_err());
        let mut accepted = 1 + 1;
        let mut refused = 0;
        for i in 3..=40 {
            match log.append(entry(i), Durability::Batched) {
                Ok(record) => {
                    accepted += 1;
                    assert_eq!(record.seq, accepted);
                }
                Err(e) => {
                    refused += 1;
                    assert!(e.to_string().contains("wait for the store"), "{e}");
                }
            }
        }
        assert_eq!(accepted, 9, "record 1 stored plus 8 pending");
        assert_eq!(refused, 31);
        // What the next append would meet, said without sealing anything.
        let held = log.hold().unwrap_err();
        assert!(held.to_string().contains("wait for the store"), "{held}");
        assert_eq!(log.inner.appended.load(Ordering::Acquire), 9);
        // The disk has room again: the writer thread catches up by itself.
        fail_next_writes(&log, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.inner.queue.lock().failing.is_some() {
            assert!(Instant::now() < deadline, "the writer thread did not retry");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(log.hold().unwrap());
        assert_eq!(log.append(entry(41), Durability::Flushed).unwrap().seq, 10);
        assert_gap_free(&log, 10);
        log.close().unwrap();
        assert!(matches!(log.hold(), Err(Error::Closed)));
    }

    /// `close` tells whoever holds records back, takes no more holds, and
    /// waits until those held are appended and released: its checkpoint
    /// covers them.
    #[test]
    fn close_tells_holders_and_waits_for_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
        let told = Arc::new(std::sync::atomic::AtomicBool::new(false));
        log.on_closing({
            let told = Arc::clone(&told);
            move || told.store(true, Ordering::SeqCst)
        });
        let hold = log.hold().unwrap();
        let closer = {
            let log = log.clone();
            std::thread::spawn(move || log.close())
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !told.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the holder was never told");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(matches!(log.hold(), Err(Error::Closed)));
        // Still open for the record held: it goes in, then the hold.
        assert_eq!(log.append(entry(1), Durability::Batched).unwrap().seq, 1);
        drop(hold);
        closer.join().unwrap().unwrap();
        assert_eq!(log.checkpoints().unwrap().last().unwrap().seq, 1);
        assert!(matches!(
            log.append(entry(2), Durability::Batched),
            Err(Error::Closed)
        ));
    }

    /// An intent opens its call and an outcome closes it; an outcome that
    /// carries its intent (a call recorded once) neither opens nor closes
    /// anything, so it costs the store no marker write.
    #[test]
    fn a_call_recorded_once_sets_no_marker() {
        let call = |event, decision: Option<&str>| {
            let mut e = Entry::new(event);
            e.call_id = Some("c1".into());
            e.decision = decision.map(str::to_owned);
            e
        };
        let started = call(Event::CallStarted, Some(Entry::ADMITTED));
        assert_eq!(marker_of(&started), Marker::Open("c1".into()));
        let finished = call(Event::CallFinished, None);
        assert!(!finished.carries_intent());
        assert_eq!(marker_of(&finished), Marker::Close("c1".into()));
        let whole = call(Event::CallFinished, Some(Entry::ADMITTED));
        assert!(whole.carries_intent());
        assert_eq!(marker_of(&whole), Marker::None);
        let refused = call(Event::CallRefused, Some("refused"));
        assert!(!refused.carries_intent());
        assert_eq!(marker_of(&refused), Marker::None);
        // Nothing open is left behind in a store, after a restart either.
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
        log.append(whole, Durability::Batched).unwrap();
        log.close().unwrap();
        drop(log);
        let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
        let events: Vec<_> = log.records(1).map(|r| r.unwrap().entry.event).collect();
        assert_eq!(events, [Event::CallFinished]);
    }

    /// A store that counts what it is asked and takes its time: which
    /// records a flush covered (every record stored when it began), and
    /// writes from threads other than the log's writer.
    #[derive(Debug, Default)]
    struct Watched {
        inner: airlock_store::MemoryStore,
        write_delay: Duration,
        flush_delay: Duration,
        flushes: AtomicU64,
        flushed_through: AtomicU64,
        foreign_writes: AtomicU64,
        /// Checkpoints stored before a record they vouch for.
        early_checkpoints: AtomicU64,
    }

    impl AuditStore for Watched {
        fn head(&self, origin: &str) -> airlock_store::Result<Option<(u64, Vec<u8>)>> {
            self.inner.head(origin)
        }
        fn write(&self, origin: &str, writes: &[AuditWrite]) -> airlock_store::Result<()> {
            if std::thread::current().name() != Some("airlock-audit-writer") {
                self.foreign_writes.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(self.write_delay);
            self.inner.write(origin, writes)
        }
        fn record(&self, origin: &str, seq: u64) -> airlock_store::Result<Option<Vec<u8>>> {
            self.inner.record(origin, seq)
        }
        fn records(
            &self,
            origin: &str,
            from: u64,
            limit: usize,
        ) -> airlock_store::Result<Vec<(u64, Vec<u8>)>> {
            self.inner.records(origin, from, limit)
        }
        fn put_checkpoint(
            &self,
            origin: &str,
            seq: u64,
            bytes: &[u8],
        ) -> airlock_store::Result<()> {
            if std::thread::current().name() != Some("airlock-audit-writer") {
                self.foreign_writes.fetch_add(1, Ordering::SeqCst);
            }
            if self.inner.head(origin)?.is_none_or(|(head, _)| head < seq) {
                self.early_checkpoints.fetch_add(1, Ordering::SeqCst);
            }
            self.inner.put_checkpoint(origin, seq, bytes)
        }
        fn checkpoints(&self, origin: &str) -> airlock_store::Result<Vec<(u64, Vec<u8>)>> {
            self.inner.checkpoints(origin)
        }
        fn open_calls(&self, origin: &str) -> airlock_store::Result<Vec<(String, u64)>> {
            self.inner.open_calls(origin)
        }
        fn clear_open_call(&self, origin: &str, call_id: &str) -> airlock_store::Result<()> {
            self.inner.clear_open_call(origin, call_id)
        }
        fn origins(&self) -> airlock_store::Result<Vec<String>> {
            self.inner.origins()
        }
        fn flush(&self) -> airlock_store::Result<()> {
            let stored = self.inner.head(DEFAULT_ORIGIN)?.map_or(0, |(seq, _)| seq);
            std::thread::sleep(self.flush_delay);
            self.flushed_through.fetch_max(stored, Ordering::SeqCst);
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn watched_log(store: Watched, dir: &Path, config: AuditConfig) -> (AuditLog, Arc<Watched>) {
        let store = Arc::new(store);
        let log = AuditLog::with_store(
            Arc::clone(&store) as Arc<dyn AuditStore>,
            DEFAULT_ORIGIN,
            dir,
            config,
        )
        .unwrap();
        (log, store)
    }

    fn marked(seq: u64, marker: Marker) -> AuditWrite {
        AuditWrite {
            seq,
            bytes: Vec::new(),
            marker,
        }
    }

    #[test]
    fn markers_are_elided_only_for_calls_whole_in_one_write() {
        let open = |id: &str| Marker::Open(id.to_owned());
        let close = |id: &str| Marker::Close(id.to_owned());
        let far = 10 + ELIDE_SPAN;
        let mut writes = vec![
            marked(10, open("a")),
            marked(11, open("b")),
            marked(12, Marker::None),
            marked(13, close("a")),
            // Its intent was in an earlier write.
            marked(14, close("z")),
            // Its outcome is in a later write.
            marked(15, open("c")),
            marked(far - 1, close("b")),
            marked(far, open("d")),
            // Too far from its intent for recovery's look at the tail.
            marked(far + ELIDE_SPAN, close("d")),
        ];
        elide_markers(&mut writes);
        let markers: Vec<_> = writes.into_iter().map(|w| w.marker).collect();
        assert_eq!(
            markers,
            vec![
                Marker::None,
                Marker::None,
                Marker::None,
                Marker::None,
                close("z"),
                open("c"),
                Marker::None,
                open("d"),
                close("d"),
            ]
        );
    }

    /// Group commit: flushed appends from many threads at once share
    /// flushes, and none returns before a flush covered its record.
    #[test]
    fn concurrent_flushed_appends_share_flushes_and_each_is_on_disk_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (log, store) = watched_log(
            Watched {
                flush_delay: Duration::from_millis(3),
                ..Watched::default()
            },
            dir.path(),
            AuditConfig::default(),
        );
        let before = store.flushes.load(Ordering::SeqCst);
        let (threads, each) = (16u64, 10u64);
        std::thread::scope(|scope| {
            for t in 0..threads {
                let (log, store) = (&log, &store);
                scope.spawn(move || {
                    let mut last = 0;
                    for i in 0..each {
                        let record = log.append(entry(t * 100 + i), Durability::Flushed).unwrap();
                        assert!(record.seq > last, "one appender's records in order");
                        last = record.seq;
                        assert!(
                            store.flushed_through.load(Ordering::SeqCst) >= record.seq,
                            "record {} returned before a flush covered it",
                            record.seq
                        );
                    }
                });
            }
        });
        let appends = threads * each;
        let flushes = store.flushes.load(Ordering::SeqCst) - before;
        assert!(flushes >= 1);
        assert!(
            flushes < appends,
            "{flushes} flushes for {appends} concurrent flushed appends: none shared"
        );
        assert_eq!(log.health().flushes, flushes);
        assert_gap_free(&log, appends);
    }

    /// Many callers appending at once, the store slower than they are:
    /// the chain is gap-free and in order, and no caller wrote to the
    /// store (they wait for room in the queue instead) — not even the
    /// checkpoints signed every 100 records, which the writer thread
    /// stores behind their records.
    #[test]
    fn a_batched_append_past_the_bound_says_so_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        // Each store write takes two seconds: the writer thread falls behind.
        let (log, store) = watched_log(
            Watched {
                write_delay: Duration::from_secs(2),
                ..Watched::default()
            },
            dir.path(),
            AuditConfig::default(),
        );
        let stored = || {
            store
                .inner
                .head(DEFAULT_ORIGIN)
                .unwrap()
                .map_or(0, |(seq, _)| seq)
        };
        // The writer takes what is queued once before its write: three
        // bounds' worth leave more than one queued behind it.
        let n = 3 * MAX_QUEUED as u64;
        let mut behind_at = None;
        for i in 1..=n {
            let (seq, behind) = log.append_batched(&entry(i)).unwrap();
            assert_eq!(seq, i);
            if behind {
                behind_at.get_or_insert(seq);
            }
        }
        // Past the bound the appends said so, and none waited for the
        // writer: its first write (two seconds) is still under way, and
        // room is made only once it is done.
        let behind_at = behind_at.expect("appends past the bound are told the writer is behind");
        assert!(behind_at > MAX_QUEUED as u64, "{behind_at}");
        assert_eq!(stored(), 0, "an append waited for the store");
        // Waiting for room is the caller's to do, where blocking is fine;
        // every record reaches the store, in order.
        log.wait_for_room();
        log.flush().unwrap();
        assert_gap_free(&log, n);
    }

    #[test]
    fn concurrent_appenders_never_write_and_leave_a_gap_free_chain() {
        // Half the callers append as the pipeline does (sealed later, by
        // the writer), half take the sealed record back (sealed at once,
        // after everything queued before it): one chain either way.
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig {
            checkpoint_every: 100,
            ..AuditConfig::default()
        };
        let (log, store) = watched_log(
            Watched {
                write_delay: Duration::from_millis(2),
                ..Watched::default()
            },
            dir.path(),
            config,
        );
        let (threads, each) = (8u64, 400u64);
        let handed = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for t in 0..threads {
                let (log, handed) = (&log, &handed);
                scope.spawn(move || {
                    let mut last = 0;
                    for i in 0..each {
                        let entry = entry(t * 1000 + i);
                        let seq = if t % 2 == 0 {
                            log.append_seq(&entry, Durability::Batched).unwrap()
                        } else {
                            let record = log.append(entry, Durability::Batched).unwrap();
                            let seq = record.seq;
                            handed.lock().unwrap().push(record);
                            seq
                        };
                        assert!(seq > last);
                        last = seq;
                    }
                });
            }
        });
        assert_eq!(store.foreign_writes.load(Ordering::SeqCst), 0);
        log.flush().unwrap();
        assert_gap_free(&log, threads * each);
        assert_eq!(store.early_checkpoints.load(Ordering::SeqCst), 0);
        let report = log.verify(&[]).unwrap().expect("the chain verifies");
        assert_eq!(report.records, threads * each);
        let (head, hash) = log.head().unwrap();
        assert_eq!(head, threads * each);
        assert_eq!(hash, Some(log.get(head).unwrap().unwrap().hash));
        // A record handed back is the one stored.
        for record in handed.into_inner().unwrap() {
            let stored = log.get(record.seq).unwrap().unwrap();
            assert_eq!(
                (&stored.hash, &stored.prev_hash),
                (&record.hash, &record.prev_hash)
            );
        }
        let signed: Vec<u64> = log.checkpoints().unwrap().iter().map(|c| c.seq).collect();
        let every_100: Vec<u64> = (1..=threads * each / 100).map(|i| i * 100).collect();
        assert_eq!(signed, every_100);
        // Each caller's records carry what it appended, in its order.
        for t in 0..threads {
            let mine: Vec<String> = log
                .records(1)
                .map(|r| r.unwrap().entry.decision.unwrap())
                .filter(|d| {
                    d.strip_prefix("entry-")
                        .and_then(|n| n.parse::<u64>().ok())
                        .is_some_and(|n| n / 1000 == t)
                })
                .collect();
            let want: Vec<String> = (0..each)
                .map(|i| format!("entry-{}", t * 1000 + i))
                .collect();
            assert_eq!(mine, want);
        }
    }

    /// A flushed append while the store fails is told so, and so is every
    /// appender waiting on the same flush; none hangs.
    #[test]
    fn a_failed_group_flush_fails_each_waiting_append() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
        fail_next_writes(&log, u64::MAX);
        std::thread::scope(|scope| {
            for t in 0..4 {
                let log = &log;
                scope.spawn(move || {
                    let e = log.append(entry(t), Durability::Flushed).unwrap_err();
                    assert!(e.to_string().contains("No space left"), "{e}");
                });
            }
        });
        fail_next_writes(&log, 0);
        log.flush().unwrap();
        assert_gap_free(&log, 4);
    }

    /// Without a writer thread, the next append or flush retries.
    #[test]
    fn inline_writers_retry_what_failed() {
        let log = AuditLog::temporary(AuditConfig::default()).unwrap();
        log.inner.queue.lock().inline = true;
        fail_next_writes(&log, u64::MAX);
        assert!(log.append(entry(1), Durability::Flushed).is_err());
        fail_next_writes(&log, 0);
        assert_eq!(log.append(entry(2), Durability::Batched).unwrap().seq, 2);
        log.flush().unwrap();
        assert_gap_free(&log, 2);
    }
}
