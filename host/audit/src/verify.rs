//! Verification: recompute the chain, check checkpoints, name the first bad
//! record. Works on a live database and on an export alike.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use serde_json::Value;

use crate::canonical;
use crate::checkpoint::Checkpoint;
use crate::record::{GENESIS_HASH, chain_hash_bytes, parse_hash};

/// What is wrong at the first bad place in a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Problem {
    /// The stored bytes are not a record.
    Unreadable {
        /// Why.
        reason: String,
    },
    /// A record is missing: the log jumps over it.
    Gap {
        /// The next sequence number found instead.
        found: u64,
    },
    /// A record is stored twice: where the next one should be, the store
    /// holds another copy of one already read (a segment or key added
    /// over records the log holds).
    Repeated {
        /// The sequence number found again here.
        found: u64,
    },
    /// Records are out of order: this place holds another record.
    Reordered {
        /// The sequence number found here.
        found: u64,
    },
    /// `prev_hash` does not match the previous record's hash.
    BrokenLink,
    /// The stored bytes are JSON but not the canonical encoding the hash
    /// is defined over (a duplicated key, keys out of order, whitespace,
    /// other escaping): they are refused rather than re-encoded, since two
    /// byte strings that parse alike could then both pass.
    NotCanonical {
        /// What differs.
        reason: String,
    },
    /// The record's contents do not match its hash.
    HashMismatch,
    /// The record's hash differs from the one a valid checkpoint signed:
    /// history up to here was rewritten (and re-hashed).
    CheckpointMismatch {
        /// The last checkpoint that still matched, if any: the rewrite is
        /// after it.
        last_good_checkpoint: Option<u64>,
    },
    /// A checkpoint's signature does not verify.
    BadSignature {
        /// Why.
        reason: String,
    },
    /// The log ends before a record a checkpoint signed.
    Truncated {
        /// The last record present.
        last: u64,
        /// The checkpoint that signed a later record.
        checkpoint: u64,
    },
    /// An export holds records and no checkpoint: `export` signs the log
    /// before it writes it, so the records may have been rewritten (and
    /// re-hashed) with the checkpoints taken out — nothing the key signed
    /// vouches for them.
    Unsigned {
        /// Records in the export.
        records: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unreadable { reason } => write!(f, "unreadable: {reason}"),
            Problem::Gap { found } => write!(f, "missing (the log continues at record {found})"),
            Problem::Repeated { found } => {
                write!(f, "record {found} is stored again in its place")
            }
            Problem::Reordered { found } => {
                write!(f, "out of order: record {found} is stored in its place")
            }
            Problem::BrokenLink => {
                f.write_str("prev_hash does not match the previous record's hash")
            }
            Problem::NotCanonical { reason } => {
                write!(f, "stored bytes are not in canonical form: {reason}")
            }
            Problem::HashMismatch => {
                f.write_str("contents do not match its hash (changed after it was written)")
            }
            Problem::CheckpointMismatch {
                last_good_checkpoint,
            } => {
                f.write_str("hash differs from the one its signed checkpoint vouches for: history was rewritten")?;
                match last_good_checkpoint {
                    Some(seq) => write!(f, " after record {seq}"),
                    None => f.write_str(" (no earlier checkpoint matches)"),
                }
            }
            Problem::BadSignature { reason } => write!(f, "checkpoint signature: {reason}"),
            Problem::Truncated { last, checkpoint } => write!(
                f,
                "missing: the log ends at record {last} but a signed checkpoint covers records up to {checkpoint} (records were removed)"
            ),
            Problem::Unsigned { records } => write!(
                f,
                "no checkpoint signs any of its {records} records: an export is signed before it is written, so its checkpoints were removed and the records may have been rewritten"
            ),
        }
    }
}

/// The first bad place in a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("record {seq}: {problem}")]
pub struct VerifyFailure {
    /// The sequence number where verification failed.
    pub seq: u64,
    /// What is wrong there.
    #[serde(flatten)]
    pub problem: Problem,
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Hash of the last record (hex); `None` for an empty log.
    pub head_hash: Option<String>,
    /// Checkpoints whose signature and hash were checked.
    pub checkpoints: usize,
    /// The last checkpointed sequence number.
    pub last_checkpoint: Option<u64>,
    /// Records after the last checkpoint: their chain is intact, but nothing
    /// signed vouches for them yet, so removing them would go unnoticed.
    pub unsigned_tail: u64,
}

/// Streaming verifier: feed records in stored order, then [`finish`](Self::finish).
#[derive(Debug)]
pub(crate) struct Verifier {
    checkpoints: BTreeMap<u64, Checkpoint>,
    /// All sequence numbers present, when known up front (exports), to tell
    /// a reordering from a gap.
    present: Option<HashSet<u64>>,
    expected: u64,
    prev: [u8; 32],
    last_good_checkpoint: Option<u64>,
}

impl Verifier {
    /// Check every checkpoint's signature against `key` first: the log's
    /// `own` and `trusted` ones kept elsewhere (an earlier export). Where
    /// the two disagree about a record, the trusted one stands: records are
    /// then checked against it, so the failure names the first checkpoint
    /// the rewritten history no longer matches.
    pub(crate) fn new(
        key: &VerifyingKey,
        own: impl IntoIterator<Item = Checkpoint>,
        trusted: impl IntoIterator<Item = Checkpoint>,
        present: Option<HashSet<u64>>,
    ) -> Result<Verifier, VerifyFailure> {
        let mut by_seq: BTreeMap<u64, Checkpoint> = BTreeMap::new();
        for cp in own.into_iter().chain(trusted) {
            cp.verify(key).map_err(|reason| VerifyFailure {
                seq: cp.seq,
                problem: Problem::BadSignature { reason },
            })?;
            by_seq.insert(cp.seq, cp);
        }
        Ok(Verifier {
            checkpoints: by_seq,
            present,
            expected: 1,
            prev: GENESIS_HASH,
            last_good_checkpoint: None,
        })
    }

    /// Continue after record `seq` with hash `hash` (already checked): for
    /// checking just the unsigned tail of a log.
    pub(crate) fn resume(mut self, seq: u64, hash: [u8; 32]) -> Verifier {
        self.expected = seq + 1;
        self.prev = hash;
        self.last_good_checkpoint = Some(seq);
        self
    }

    /// Check the next stored record, given as its stored bytes; `position`
    /// is its key in the database (`None` for an export, where order is the
    /// position).
    ///
    /// The hash is computed over exactly these bytes (less the `hash`
    /// member), never over a re-encoding of what they parse to; bytes that
    /// are not the canonical encoding of the record they parse to are
    /// refused ([`Problem::NotCanonical`]).
    pub(crate) fn push_bytes(
        &mut self,
        position: Option<u64>,
        bytes: &[u8],
    ) -> Result<(), VerifyFailure> {
        let at = position.unwrap_or(self.expected);
        let fail = |seq: u64, problem: Problem| VerifyFailure { seq, problem };
        if at < self.expected {
            // A record already read, stored again.
            return Err(fail(self.expected, Problem::Repeated { found: at }));
        }
        if at != self.expected {
            // The database has no record at the expected key.
            return Err(fail(self.expected, Problem::Gap { found: at }));
        }
        let unreadable = |reason: String| fail(at, Problem::Unreadable { reason });
        let body: Value =
            serde_json::from_slice(bytes).map_err(|e| unreadable(format!("not JSON: {e}")))?;
        let map = body
            .as_object()
            .ok_or_else(|| unreadable("not a JSON object".into()))?;
        let seq = map
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| unreadable("no sequence number".into()))?;
        if seq != at {
            let reordered = match (&self.present, position) {
                (_, Some(_)) => true,
                (Some(present), None) => seq < at || present.contains(&at),
                (None, None) => seq < at,
            };
            let problem = if reordered {
                Problem::Reordered { found: seq }
            } else {
                Problem::Gap { found: seq }
            };
            return Err(fail(at, problem));
        }
        let stored_hash_text = match map.get("hash") {
            Some(Value::String(h)) => h,
            _ => return Err(unreadable("no hash".into())),
        };
        let stored_hash = parse_hash(stored_hash_text)
            .ok_or_else(|| unreadable("hash is not 64 lowercase hex digits".into()))?;
        if let Err(reason) = check_canonical(bytes, &body) {
            return Err(fail(at, Problem::NotCanonical { reason }));
        }
        let prev_ok = map
            .get("prev_hash")
            .and_then(Value::as_str)
            .and_then(parse_hash)
            .is_some_and(|p| p == self.prev);
        if !prev_ok {
            return Err(fail(at, Problem::BrokenLink));
        }
        let Some(hashed) = without_hash_member(bytes, stored_hash_text) else {
            return Err(fail(
                at,
                Problem::NotCanonical {
                    reason: "the hash member is not where the canonical encoding puts it".into(),
                },
            ));
        };
        if chain_hash_bytes(&self.prev, &hashed) != stored_hash {
            return Err(fail(at, Problem::HashMismatch));
        }
        if let Some(cp) = self.checkpoints.get(&at) {
            if parse_hash(&cp.hash) != Some(stored_hash) {
                return Err(fail(
                    at,
                    Problem::CheckpointMismatch {
                        last_good_checkpoint: self.last_good_checkpoint,
                    },
                ));
            }
            self.last_good_checkpoint = Some(at);
        }
        self.prev = stored_hash;
        self.expected += 1;
        Ok(())
    }

    /// Every record is in: check nothing a checkpoint signed is missing.
    pub(crate) fn finish(self) -> Result<VerifyReport, VerifyFailure> {
        let last = self.expected - 1;
        if let Some((&seq, _)) = self.checkpoints.range(last + 1..).next() {
            return Err(VerifyFailure {
                seq: last + 1,
                problem: Problem::Truncated {
                    last,
                    checkpoint: seq,
                },
            });
        }
        Ok(VerifyReport {
            records: last,
            head_hash: (last > 0).then(|| hex::encode(self.prev)),
            checkpoints: self.checkpoints.len(),
            last_checkpoint: self.last_good_checkpoint,
            unsigned_tail: last - self.last_good_checkpoint.unwrap_or(0),
        })
    }
}

/// `Ok` when `bytes` are exactly the canonical encoding of `body` (which
/// they parse to); otherwise what differs, for the report.
fn check_canonical(bytes: &[u8], body: &Value) -> Result<(), String> {
    if canonical::to_vec(body) == bytes {
        return Ok(());
    }
    // Say why: the parser kept one of two duplicated members, or the keys
    // are out of order; otherwise it is whitespace or escaping.
    let keys = top_level_keys(bytes).unwrap_or_default();
    let mut seen = HashSet::new();
    if let Some(dup) = keys.iter().find(|k| !seen.insert(k.as_str())) {
        return Err(format!("the key {dup:?} appears more than once"));
    }
    if keys.windows(2).any(|w| w[0].as_bytes() >= w[1].as_bytes()) {
        return Err("its keys are not in canonical (byte) order".into());
    }
    Err("it differs from the canonical encoding (whitespace or escaping)".into())
}

/// The top-level member names of the JSON object `bytes`, in stored order
/// and with repeats (a `Value` keeps one of each).
fn top_level_keys(bytes: &[u8]) -> Option<Vec<String>> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Keys, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Keys;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(key);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    serde_json::from_slice::<Keys>(bytes).ok().map(|k| k.0)
}

/// Canonical record bytes without their `hash` member: what the chain hash
/// covers. The member is `,"hash":"<64 hex>"` (never first: `event` sorts
/// before it); in canonical text a `"` inside a string is always escaped,
/// so the sequence cannot occur inside a value. `None` unless it occurs
/// exactly once.
fn without_hash_member(bytes: &[u8], hash: &str) -> Option<Vec<u8>> {
    let member = format!(",\"hash\":\"{hash}\"");
    let member = member.as_bytes();
    let mut found = bytes
        .windows(member.len())
        .enumerate()
        .filter(|(_, w)| *w == member)
        .map(|(i, _)| i);
    let at = found.next()?;
    if found.next().is_some() {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() - member.len());
    out.extend_from_slice(&bytes[..at]);
    out.extend_from_slice(&bytes[at + member.len()..]);
    Some(out)
}
