//! Verification: recompute the chain, check checkpoints, name the first bad
//! record. Works on a live database and on an export alike.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use serde_json::Value;

use crate::checkpoint::Checkpoint;
use crate::record::{GENESIS_HASH, chain_hash, parse_hash};

/// What is wrong at the first bad place in a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
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
    /// Records are out of order: this place holds another record.
    Reordered {
        /// The sequence number found here.
        found: u64,
    },
    /// `prev_hash` does not match the previous record's hash.
    BrokenLink,
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
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unreadable { reason } => write!(f, "unreadable: {reason}"),
            Problem::Gap { found } => write!(f, "missing (the log continues at record {found})"),
            Problem::Reordered { found } => {
                write!(f, "out of order: record {found} is stored in its place")
            }
            Problem::BrokenLink => {
                f.write_str("prev_hash does not match the previous record's hash")
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
    pub(crate) fn push_bytes(
        &mut self,
        position: Option<u64>,
        bytes: &[u8],
    ) -> Result<(), VerifyFailure> {
        match serde_json::from_slice(bytes) {
            Ok(body) => self.push(position, body),
            Err(e) => Err(VerifyFailure {
                seq: position.unwrap_or(self.expected),
                problem: Problem::Unreadable {
                    reason: format!("not JSON: {e}"),
                },
            }),
        }
    }

    /// Check the next record, parsed.
    pub(crate) fn push(
        &mut self,
        position: Option<u64>,
        mut body: Value,
    ) -> Result<(), VerifyFailure> {
        let at = position.unwrap_or(self.expected);
        let fail = |seq: u64, problem: Problem| VerifyFailure { seq, problem };
        if at != self.expected {
            // The database has no record at the expected key.
            return Err(fail(self.expected, Problem::Gap { found: at }));
        }
        let unreadable = |reason: String| fail(at, Problem::Unreadable { reason });
        let map = body
            .as_object_mut()
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
        let stored_hash = match map.remove("hash") {
            Some(Value::String(h)) => h,
            _ => return Err(unreadable("no hash".into())),
        };
        let stored_hash = parse_hash(&stored_hash)
            .ok_or_else(|| unreadable("hash is not 64 hex digits".into()))?;
        let prev_ok = map
            .get("prev_hash")
            .and_then(Value::as_str)
            .and_then(parse_hash)
            .is_some_and(|p| p == self.prev);
        if !prev_ok {
            return Err(fail(at, Problem::BrokenLink));
        }
        if chain_hash(&self.prev, &body) != stored_hash {
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
