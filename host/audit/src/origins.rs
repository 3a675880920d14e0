//! Many chains in one store: every host (origin) appends to its own chain,
//! signed with its own key; a log reads and verifies them all.
//!
//! **Which key checks an origin's checkpoints** ([`AuditLog::verify_all`]),
//! first found wins:
//! 1. a key the caller gives for it ([`KeyRing::insert`], e.g. from a
//!    `--pubkey` kept out of band) — [`KeySource::Given`];
//! 2. for the log's own origin, its own key (`signing.key`, or
//!    `signing.pub` for a read-only log) — [`KeySource::Own`];
//! 3. the file `<audit dir>/keys/<origin>.pub` (64 hex digits; every host
//!    writes its own there, so copying the `keys/` directories of all
//!    hosts into one gives each the others' keys) — [`KeySource::File`];
//! 4. otherwise the key the chain's own checkpoints (or an export's
//!    header) name — [`KeySource::Named`]: the chain is checked, but only
//!    against someone who could not rewrite it and its checkpoints
//!    together. A chain with no checkpoints and no key is checked for its
//!    links and hashes only ([`KeySource::None`]).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::Serialize;
use serde_json::Value;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::keys::parse_public_key;
use crate::log::{
    AuditLog, Backwards, EXPORT_FORMAT, EXPORT_VERSION, Filter, KEYS_DIR, chain_records,
    check_origin, export_error, now_ms, open_export, read_export, store_error, verify_chain,
    write_atomically,
};
use crate::record::Record;
use crate::verify::{Problem, Verifier, VerifyFailure, VerifyReport};

/// The export version that holds several chains.
pub const EXPORT_VERSION_CHAINS: u64 = 2;

/// Where the key that checked a chain's checkpoints came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum KeySource {
    /// Given by the caller.
    Given,
    /// The log's own key.
    Own,
    /// `keys/<origin>.pub`.
    File {
        /// The file.
        path: PathBuf,
    },
    /// Named by the chain's own checkpoints or the export's header: not a
    /// key anyone vouched for.
    Named,
    /// No key: the chain has no checkpoints.
    None,
}

/// Public keys of origins, for verifying their chains (see the
/// [module](self) for the order they are looked up in).
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    given: BTreeMap<String, VerifyingKey>,
    dir: Option<PathBuf>,
}

impl KeyRing {
    /// No keys.
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// Also look for `<dir>/<origin>.pub`.
    pub fn with_dir(mut self, dir: impl Into<PathBuf>) -> KeyRing {
        self.dir = Some(dir.into());
        self
    }

    /// Trust `key` for `origin`.
    pub fn insert(&mut self, origin: impl Into<String>, key: VerifyingKey) {
        self.given.insert(origin.into(), key);
    }

    /// The key given for `origin`, or in its key file.
    ///
    /// # Errors
    /// [`Error::Key`] for a key file that exists but is not a key.
    pub fn lookup(&self, origin: &str) -> Result<Option<(VerifyingKey, KeySource)>> {
        if let Some(found) = self.given(origin) {
            return Ok(Some(found));
        }
        self.file(origin)
    }

    fn given(&self, origin: &str) -> Option<(VerifyingKey, KeySource)> {
        self.given.get(origin).map(|key| (*key, KeySource::Given))
    }

    fn file(&self, origin: &str) -> Result<Option<(VerifyingKey, KeySource)>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        if check_origin(origin).is_err() {
            return Ok(None);
        }
        let path = dir.join(format!("{origin}.pub"));
        if !path.is_file() {
            return Ok(None);
        }
        let key = parse_public_key(&path.to_string_lossy())?;
        Ok(Some((key, KeySource::File { path })))
    }
}

/// One chain's verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainVerification {
    /// Whose chain.
    pub origin: String,
    /// The key its checkpoints were checked against, hex.
    pub public_key: Option<String>,
    /// Where that key came from.
    pub key_source: KeySource,
    /// The report, or the chain's first bad record.
    pub result: std::result::Result<VerifyReport, VerifyFailure>,
}

/// What [`AuditLog::query_every_chain`] found.
#[derive(Debug)]
pub struct ChainQuery {
    /// The records, oldest first, as [`AuditLog::query_all`] orders them.
    pub records: Vec<ChainRecord>,
    /// The chains that could not be read in full (their origin and why):
    /// of such a chain, `records` holds those newer than where it failed
    /// (read before it did), none from there on.
    pub unreadable: Vec<(String, Error)>,
}

/// A record and the origin whose chain it is in.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainRecord {
    /// The origin.
    pub origin: String,
    /// The record.
    pub record: Record,
}

/// The key to check `origin`'s checkpoints with when none is known: the
/// one its first checkpoint names.
fn named_key(
    named: Option<&str>,
    first_checkpoint: Option<u64>,
) -> std::result::Result<Option<VerifyingKey>, VerifyFailure> {
    let Some(hex_key) = named.filter(|k| !k.is_empty()) else {
        return Ok(None);
    };
    parse_public_key(hex_key)
        .map(Some)
        .map_err(|e| VerifyFailure {
            seq: first_checkpoint.unwrap_or(0),
            problem: Problem::BadSignature {
                reason: format!("it names no usable key: {e}"),
            },
        })
}

/// A key that checks nothing: for a chain with no checkpoints.
fn no_key() -> VerifyingKey {
    SigningKey::from_bytes(&[0; 32]).verifying_key()
}

/// Merge per-origin streams of `(time_ms, seq, item)` into one ordered by
/// time, then origin, then seq; each stream keeps its own order (a clock
/// that went back never reorders a chain). An error is yielded at once.
fn merge<T, I>(streams: Vec<(String, I)>) -> impl Iterator<Item = Result<(String, T)>>
where
    I: Iterator<Item = Result<(u64, u64, T)>>,
{
    let (origins, mut streams): (Vec<String>, Vec<std::iter::Peekable<I>>) = streams
        .into_iter()
        .map(|(origin, s)| (origin, s.peekable()))
        .unzip();
    std::iter::from_fn(move || {
        let mut best: Option<(usize, u64, u64)> = None;
        for (i, stream) in streams.iter_mut().enumerate() {
            match stream.peek() {
                None => {}
                Some(Err(_)) => {
                    best = Some((i, 0, 0));
                    break;
                }
                Some(Ok((time, seq, _))) => {
                    let better = best.is_none_or(|(j, t, s)| {
                        (*time, origins[i].as_str(), *seq) < (t, origins[j].as_str(), s)
                    });
                    if better {
                        best = Some((i, *time, *seq));
                    }
                }
            }
        }
        let (i, _, _) = best?;
        let origin = origins[i].clone();
        streams[i]
            .next()
            .map(|item| item.map(|(_, _, t)| (origin, t)))
    })
}

impl AuditLog {
    /// Every origin with records in the store, by name.
    ///
    /// # Errors
    /// [`Error::Store`] when the store cannot be read.
    pub fn origins(&self) -> Result<Vec<String>> {
        let inner = &self.inner;
        let mut origins = inner
            .store
            .origins()
            .map_err(|e| store_error(&inner.path, &e))?;
        origins.sort();
        origins.dedup();
        Ok(origins)
    }

    /// Verify every chain in the store, each against its origin's key
    /// (looked up as the [module](self) says, in `<audit dir>/keys/`), the
    /// log's own with `trusted` checkpoints too, naming the first bad
    /// record of each.
    ///
    /// # Errors
    /// A store that cannot be read; a key file that is not a key.
    pub fn verify_all(&self, trusted: &[Checkpoint]) -> Result<Vec<ChainVerification>> {
        let ring = KeyRing::new().with_dir(self.path().join(KEYS_DIR));
        let mut by_origin = BTreeMap::new();
        by_origin.insert(self.origin().to_owned(), trusted.to_vec());
        self.verify_all_with(&ring, &by_origin)
    }

    /// [`verify_all`](Self::verify_all) with the caller's keys and each
    /// origin's trusted checkpoints.
    ///
    /// # Errors
    /// As [`verify_all`](Self::verify_all).
    pub fn verify_all_with(
        &self,
        ring: &KeyRing,
        trusted: &BTreeMap<String, Vec<Checkpoint>>,
    ) -> Result<Vec<ChainVerification>> {
        self.flush_quietly();
        let inner = &self.inner;
        let mut origins = self.origins()?;
        if !origins.iter().any(|o| o == self.origin()) {
            origins.push(self.origin().to_owned());
            origins.sort();
        }
        let mut out = Vec::new();
        for origin in origins {
            let trusted = trusted.get(&origin).map_or(&[][..], Vec::as_slice);
            let found = match ring.given(&origin) {
                Some(found) => Some(found),
                None if origin == self.origin() => Some((self.public_key(), KeySource::Own)),
                None => ring.file(&origin)?,
            };
            let (key, source) = match found {
                Some((key, source)) => (Some(key), source),
                None => {
                    let stored = inner
                        .store
                        .checkpoints(&origin)
                        .map_err(|e| store_error(&inner.path, &e))?;
                    let first = stored
                        .first()
                        .map(|(seq, bytes)| (*seq, serde_json::from_slice::<Checkpoint>(bytes)));
                    let named = match &first {
                        Some((_, Ok(cp))) => Some(cp.public_key.as_str()),
                        _ => trusted.first().map(|cp| cp.public_key.as_str()),
                    };
                    match named_key(named, first.as_ref().map(|(seq, _)| *seq)) {
                        Ok(Some(key)) => (Some(key), KeySource::Named),
                        Ok(None) => (None, KeySource::None),
                        Err(failure) => {
                            out.push(ChainVerification {
                                origin,
                                public_key: None,
                                key_source: KeySource::Named,
                                result: Err(failure),
                            });
                            continue;
                        }
                    }
                }
            };
            let result = verify_chain(
                &*inner.store,
                &inner.path,
                &origin,
                &key.unwrap_or_else(no_key),
                trusted,
            )?;
            out.push(ChainVerification {
                origin,
                public_key: key.map(|k| hex::encode(k.as_bytes())),
                key_source: source,
                result,
            });
        }
        Ok(out)
    }

    /// The newest `limit` records of every chain matching `filter`, oldest
    /// first: ordered by time, then origin, then seq (each chain in its
    /// own order).
    ///
    /// # Errors
    /// As [`get`](Self::get); the first chain that cannot be read fails
    /// the whole (see [`query_every_chain`](Self::query_every_chain) for
    /// the others' records nonetheless).
    pub fn query_all(&self, filter: &Filter, limit: usize) -> Result<Vec<ChainRecord>> {
        let found = self.query_every_chain(filter, limit)?;
        match found.unreadable.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(found.records),
        }
    }

    /// [`query_all`](Self::query_all), with a chain that cannot be read
    /// (its head or a record damaged, its store failing) reported beside
    /// the other chains' records rather than failing them. Each chain is
    /// read backwards a page at a time and the chains merged as they are
    /// read, so a query holds at most `limit` records and a page of each
    /// chain, however many chains the store holds.
    ///
    /// # Errors
    /// [`Error::Store`] when the chains cannot be listed.
    pub fn query_every_chain(&self, filter: &Filter, limit: usize) -> Result<ChainQuery> {
        self.flush_quietly();
        let mut unreadable = Vec::new();
        let mut chains: Vec<Backwards<'_>> = Vec::new();
        for origin in self.origins()? {
            match Backwards::new(self, origin.clone(), filter) {
                Ok(chain) => chains.push(chain),
                Err(e) => unreadable.push((origin, e)),
            }
        }
        let mut newest_first = Vec::new();
        while newest_first.len() < limit {
            // Each chain's newest record not taken yet read in; a chain
            // read to its start is done, one that fails is reported and
            // left out of what follows.
            let mut i = 0;
            while i < chains.len() {
                match chains[i].peek() {
                    Ok(Some(_)) => i += 1,
                    Ok(None) => {
                        chains.swap_remove(i);
                    }
                    Err(e) => {
                        let chain = chains.swap_remove(i);
                        unreadable.push((chain.origin, e));
                    }
                }
            }
            let best = chains
                .iter()
                .enumerate()
                .filter_map(|(i, chain)| {
                    let record = chain.current()?;
                    Some((i, (record.time_ms, chain.origin.as_str(), record.seq)))
                })
                .max_by(|a, b| a.1.cmp(&b.1));
            let Some((i, _)) = best else {
                break;
            };
            let chain = &mut chains[i];
            if let Some(record) = chain.take() {
                newest_first.push(ChainRecord {
                    origin: chain.origin.clone(),
                    record,
                });
            }
        }
        newest_first.reverse();
        unreadable.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(ChainQuery {
            records: newest_first,
            unreadable,
        })
    }

    /// Every chain's records after the positions in `after` (origin → last
    /// seq already seen; an origin not named starts at its first record),
    /// merged in time order as [`query_all`](Self::query_all).
    ///
    /// # Errors
    /// The iterator yields store and parse errors.
    pub fn records_all(
        &self,
        after: &BTreeMap<String, u64>,
    ) -> Result<impl Iterator<Item = Result<ChainRecord>> + '_> {
        self.flush_quietly();
        let mut streams = Vec::new();
        for origin in self.origins()? {
            let from = after.get(&origin).map_or(1, |seq| seq.saturating_add(1));
            streams.push((origin.clone(), OwnedChain::new(self, origin, from)));
        }
        Ok(merge(streams).map(|item| item.map(|(origin, record)| ChainRecord { origin, record })))
    }

    fn flush_quietly(&self) {
        // Reads see what this log appended; a store failing to take it is
        // reported by appends, not by readers.
        self.inner.settle();
    }

    /// Write every chain to `path` as an export of version 2: a header
    /// naming each chain, every checkpoint of every chain, then every
    /// record, merged in time order (see `docs/audit-log.md`). Signs a
    /// checkpoint at this log's head first. For this log's chain alone,
    /// in version 1, see [`export`](Self::export).
    ///
    /// # Errors
    /// [`Error::File`] when the file cannot be written; store errors.
    pub fn export_all(&self, path: impl AsRef<Path>) -> Result<Vec<ChainSummary>> {
        let path = path.as_ref();
        self.checkpoint()?;
        let inner = &self.inner;
        let failed = |e: airlock_store::StoreError| store_error(&inner.path, &e);
        let mut chains = Vec::new();
        let mut checkpoints = Vec::new();
        for origin in self.origins()? {
            let (records, head_hash) = match inner.store.head(&origin).map_err(failed)? {
                None => (0, None),
                Some((seq, bytes)) => (
                    seq,
                    serde_json::from_slice::<Value>(&bytes)
                        .ok()
                        .and_then(|v| v.get("hash").and_then(Value::as_str).map(str::to_owned)),
                ),
            };
            let mut public_key = None;
            for (seq, bytes) in inner.store.checkpoints(&origin).map_err(failed)? {
                let cp: Checkpoint =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                        path: inner.path.clone(),
                        seq,
                        reason: format!("checkpoint of {origin:?} unreadable: {e}"),
                    })?;
                public_key.get_or_insert_with(|| cp.public_key.clone());
                checkpoints.push((origin.clone(), cp));
            }
            if origin == self.origin() {
                public_key = Some(hex::encode(self.public_key().as_bytes()));
            }
            chains.push(ChainSummary {
                origin,
                public_key,
                records,
                head_hash,
            });
        }
        write_atomically(path, |out, file_error| {
            let header = serde_json::json!({
                "format": EXPORT_FORMAT,
                "version": EXPORT_VERSION_CHAINS,
                "exported_ms": now_ms(),
                "chains": chains,
            });
            writeln!(out, "{header}").map_err(file_error)?;
            for (origin, cp) in &checkpoints {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "origin": origin, "checkpoint": cp })
                )
                .map_err(file_error)?;
            }
            let streams = chains
                .iter()
                .map(|chain| {
                    let stream = chain_records(&*inner.store, &chain.origin, 1)
                        .take_while(move |item| {
                            item.as_ref().is_ok_and(|(seq, _)| *seq <= chain.records)
                                || item.is_err()
                        })
                        .map(move |item| {
                            let (seq, bytes) = item.map_err(failed)?;
                            let time = serde_json::from_slice::<Value>(&bytes)
                                .ok()
                                .and_then(|v| v.get("time_ms").and_then(Value::as_u64))
                                .unwrap_or(0);
                            Ok((time, seq, bytes))
                        });
                    (chain.origin.clone(), stream)
                })
                .collect();
            for item in merge(streams) {
                let (origin, bytes) = item?;
                write!(out, "{{\"origin\":\"{origin}\",\"record\":").map_err(file_error)?;
                out.write_all(&bytes).map_err(file_error)?;
                out.write_all(b"}\n").map_err(file_error)?;
            }
            Ok(())
        })?;
        Ok(chains)
    }
}

/// One chain's records as [`Record`]s, read a page at a time.
struct OwnedChain<'a> {
    log: &'a AuditLog,
    origin: String,
    next: u64,
    page: std::collections::VecDeque<(u64, Vec<u8>)>,
    done: bool,
}

impl<'a> OwnedChain<'a> {
    fn new(log: &'a AuditLog, origin: String, from: u64) -> OwnedChain<'a> {
        OwnedChain {
            log,
            origin,
            next: from,
            page: Default::default(),
            done: false,
        }
    }
}

impl Iterator for OwnedChain<'_> {
    type Item = Result<(u64, u64, Record)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.is_empty() && !self.done {
            let inner = &self.log.inner;
            match inner
                .store
                .records(&self.origin, self.next, crate::log::PAGE)
            {
                Err(e) => {
                    self.done = true;
                    return Some(Err(store_error(&inner.path, &e)));
                }
                Ok(got) => {
                    self.done = got.len() < crate::log::PAGE;
                    let last = got.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
                    if last < self.next {
                        self.done = true;
                    }
                    self.next = last.saturating_add(1).max(self.next);
                    self.page = got.into();
                }
            }
        }
        let (seq, bytes) = self.page.pop_front()?;
        Some(
            self.log
                .parse(seq, &bytes)
                .map(|record| (record.time_ms, record.seq, record)),
        )
    }
}

/// One chain of an export (version 2 header; [`AuditLog::export_all`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChainSummary {
    /// The origin.
    pub origin: String,
    /// The key its checkpoints name, hex (informational).
    pub public_key: Option<String>,
    /// Its records.
    pub records: u64,
    /// Its head's hash.
    pub head_hash: Option<String>,
}

/// One chain of an export file, parsed.
#[derive(Debug, Clone)]
pub struct ExportChain {
    /// The origin (`local` for a version 1 export that names none).
    pub origin: String,
    /// The key the file names for it (informational).
    pub public_key: String,
    /// Its checkpoints.
    pub checkpoints: Vec<Checkpoint>,
    /// Its records, each exactly the stored bytes, in file order.
    pub records: Vec<String>,
}

/// Read an export of either version as chains: a version 1 file is one
/// chain (its header's `origin`, or [`DEFAULT_ORIGIN`](crate::DEFAULT_ORIGIN)).
///
/// # Errors
/// [`Error::File`] naming the line that is not part of an export.
pub fn read_export_chains(path: impl AsRef<Path>) -> Result<Vec<ExportChain>> {
    let path = path.as_ref();
    let bad = export_error(path);
    let (header, lines) = open_export(path)?;
    match header.get("version").and_then(Value::as_u64) {
        Some(EXPORT_VERSION) => {
            drop(lines);
            let export = read_export(path)?;
            let origin = header
                .get("origin")
                .and_then(Value::as_str)
                .unwrap_or(crate::log::DEFAULT_ORIGIN)
                .to_owned();
            return Ok(vec![ExportChain {
                origin,
                public_key: export.public_key,
                checkpoints: export.checkpoints,
                records: export.records,
            }]);
        }
        Some(EXPORT_VERSION_CHAINS) => {}
        _ => {
            return Err(bad(
                1,
                format!("unsupported export version {}", header["version"]),
            ));
        }
    }
    let summaries: Vec<ChainSummary> = header
        .get("chains")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| bad(1, format!("malformed chains: {e}")))?
        .unwrap_or_default();
    let mut chains: BTreeMap<String, ExportChain> = BTreeMap::new();
    fn chain<'a>(
        chains: &'a mut BTreeMap<String, ExportChain>,
        summaries: &[ChainSummary],
        origin: &str,
    ) -> &'a mut ExportChain {
        chains
            .entry(origin.to_owned())
            .or_insert_with(|| ExportChain {
                origin: origin.to_owned(),
                public_key: summaries
                    .iter()
                    .find(|s| s.origin == origin)
                    .and_then(|s| s.public_key.clone())
                    .unwrap_or_default(),
                checkpoints: Vec::new(),
                records: Vec::new(),
            })
    }
    for summary in &summaries {
        chain(&mut chains, &summaries, &summary.origin);
    }
    for line in lines {
        let (n, line) = line?;
        // A record line is fixed text around the stored bytes; an origin
        // id needs no escaping.
        if let Some(rest) = line.strip_prefix("{\"origin\":\"")
            && let Some((origin, rest)) = rest.split_once("\",\"record\":")
        {
            check_origin(origin).map_err(|e| bad(n, e.to_string()))?;
            let stored = rest.strip_suffix('}').ok_or_else(|| {
                bad(
                    n,
                    "a record line must be exactly {\"origin\":\"<origin>\",\"record\":<record>}"
                        .into(),
                )
            })?;
            chain(&mut chains, &summaries, origin)
                .records
                .push(stored.to_owned());
            continue;
        }
        let value: Value =
            serde_json::from_str(&line).map_err(|e| bad(n, format!("not JSON: {e}")))?;
        let (Some(origin), Some(cp)) = (
            value.get("origin").and_then(Value::as_str),
            value.get("checkpoint"),
        ) else {
            return Err(bad(
                n,
                "neither a record nor a checkpoint of a chain".into(),
            ));
        };
        let cp: Checkpoint = serde_json::from_value(cp.clone())
            .map_err(|e| bad(n, format!("malformed checkpoint: {e}")))?;
        check_origin(origin).map_err(|e| bad(n, e.to_string()))?;
        chain(&mut chains, &summaries, origin).checkpoints.push(cp);
    }
    Ok(chains.into_values().collect())
}

/// Verify an export of either version offline, every chain against its
/// key from `ring` (else the one the file names: [`KeySource::Named`]),
/// with each origin's `trusted` checkpoints.
///
/// # Errors
/// A file that cannot be read or is not an export; a key file in `ring`'s
/// directory that is not a key.
pub fn verify_export_chains(
    path: impl AsRef<Path>,
    ring: &KeyRing,
    trusted: &BTreeMap<String, Vec<Checkpoint>>,
) -> Result<Vec<ChainVerification>> {
    let mut out = Vec::new();
    for chain in read_export_chains(path)? {
        let trusted = trusted.get(&chain.origin).map_or(&[][..], Vec::as_slice);
        let (key, source) = match ring.lookup(&chain.origin)? {
            Some((key, source)) => (Some(key), source),
            None => match named_key(
                Some(&chain.public_key),
                chain.checkpoints.first().map(|cp| cp.seq),
            ) {
                Ok(Some(key)) => (Some(key), KeySource::Named),
                Ok(None) => (None, KeySource::None),
                Err(failure) => {
                    out.push(ChainVerification {
                        origin: chain.origin,
                        public_key: None,
                        key_source: KeySource::Named,
                        result: Err(failure),
                    });
                    continue;
                }
            },
        };
        let result = verify_records(
            &key.unwrap_or_else(no_key),
            chain.checkpoints,
            trusted,
            &chain.records,
        );
        out.push(ChainVerification {
            origin: chain.origin,
            public_key: key.map(|k| hex::encode(k.as_bytes())),
            key_source: source,
            result,
        });
    }
    Ok(out)
}

/// Verify one exported chain: its records in file order.
pub(crate) fn verify_records(
    key: &VerifyingKey,
    checkpoints: Vec<Checkpoint>,
    trusted: &[Checkpoint],
    records: &[String],
) -> std::result::Result<VerifyReport, VerifyFailure> {
    let present: HashSet<u64> = records
        .iter()
        .filter_map(|r| {
            serde_json::from_str::<Value>(r)
                .ok()?
                .get("seq")
                .and_then(Value::as_u64)
        })
        .collect();
    let mut verifier = Verifier::new(key, checkpoints, trusted.iter().cloned(), Some(present))?;
    for record in records {
        verifier.push_bytes(None, record.as_bytes())?;
    }
    verifier.finish()
}
