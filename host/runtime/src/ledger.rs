//! The ledger: approvals and idempotency keys, persisted in sled.
//!
//! Both are small state machines whose transitions must be atomic even when
//! many calls race: every transition is a compare-and-swap of the whole
//! record, so exactly one of two racing decisions (or claims) wins.
//!
//! Approvals: `pending → approved | rejected | expired | cancelled`, then
//! `approved → consumed | expired`. Terminal states never change. A pending
//! approval expires at `expires_ms`; approving it starts a new window
//! (`approved_expiry_s`) in which the call must run, after which it expires
//! too. [`Ledger::sweep`] expires what is overdue and forgets terminal
//! approvals and finished idempotency entries past their retention.
//!
//! Idempotency entries, keyed by (principal, plugin, tool, key):
//! `in_flight → completed`; an entry still `in_flight` when a host opens the
//! ledger belonged to a call that was running when the host stopped and
//! becomes `unknown` — never re-executed automatically.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The ledger's directory inside the data directory.
pub const LEDGER_DIR: &str = "ledger";

/// An approval's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for a decision.
    Pending,
    /// Approved; the call may run once.
    Approved,
    /// Rejected by an approver.
    Rejected,
    /// Not decided in time.
    Expired,
    /// Withdrawn.
    Cancelled,
    /// Approved and used by the call it was for.
    Consumed,
}

impl ApprovalState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Rejected => "rejected",
            ApprovalState::Expired => "expired",
            ApprovalState::Cancelled => "cancelled",
            ApprovalState::Consumed => "consumed",
        }
    }
}

/// A request for a human decision on exactly one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Its id.
    pub id: String,
    /// Where it is in its lifecycle.
    pub state: ApprovalState,
    /// Plugin name.
    pub plugin: String,
    /// Component digest the approval is bound to.
    pub component_digest: String,
    /// Tool name.
    pub tool: String,
    /// The tool's risk class.
    pub risk: String,
    /// Digest of the canonical arguments it is bound to.
    pub args_digest: String,
    /// The arguments, redacted, for the approver.
    pub args: String,
    /// Whether `args` was cut to the audit copy's size cap.
    #[serde(default)]
    pub args_truncated: bool,
    /// Who asked.
    pub principal: String,
    /// The caller's session it is bound to, if any (it changes which
    /// workspace keys the call reaches).
    #[serde(default)]
    pub session: Option<String>,
    /// The idempotency key it is bound to, if any.
    pub idempotency_key: Option<String>,
    /// The caller's stated reason.
    pub caller_reason: Option<String>,
    /// The call that asked.
    pub call_id: String,
    /// When it was asked, ms since the Unix epoch.
    pub created_ms: u64,
    /// When it expires unless decided, ms since the Unix epoch.
    pub expires_ms: u64,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When.
    pub decided_ms: Option<u64>,
    /// Why.
    pub decision_reason: Option<String>,
    /// The call that consumed it.
    pub consumed_by_call: Option<String>,
}

/// An idempotency entry's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IdempotencyState {
    /// A call holding the key is running.
    InFlight {
        /// That call.
        call_id: String,
    },
    /// The first call with the key completed; its outcome is replayed.
    Completed {
        /// The call.
        call_id: String,
        /// `Ok(output)` or `Err((error kind, message))`.
        outcome: std::result::Result<Value, (String, String)>,
    },
    /// The call was running when the host stopped: whether it took effect is
    /// unknown, and it is not run again.
    Unknown {
        /// That call.
        call_id: String,
    },
}

/// One idempotency key's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyEntry {
    /// Digest of the arguments the key was first used with.
    pub args_digest: String,
    /// When it was first used, ms since the Unix epoch.
    pub created_ms: u64,
    /// Its state.
    #[serde(flatten)]
    pub state: IdempotencyState,
}

/// What a claim of an idempotency key found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key is now held by this call.
    Claimed,
    /// An earlier call holds or held it.
    Existing(IdempotencyEntry),
}

/// Who `decided_by` names on an approval that expired before a decision.
pub const EXPIRY: &str = "airlock (expiry)";

/// What one [`Ledger::sweep`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Approvals this sweep expired (to be recorded in the audit log).
    pub expired: Vec<Approval>,
    /// Terminal approvals forgotten after their retention.
    pub approvals_removed: u64,
    /// Finished idempotency entries forgotten after their retention.
    pub keys_removed: u64,
}

/// The sled-backed ledger.
#[derive(Clone)]
pub struct Ledger {
    path: PathBuf,
    db: sled::Db,
    approvals: sled::Tree,
    idempotency: sled::Tree,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn store_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Ledger {
        message: format!("{}: {e}", path.display()),
    }
}

impl Ledger {
    /// Open (or create) the ledger in `dir`, waiting up to `lock_wait` for
    /// another process. Idempotency keys left in flight become `unknown`.
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn open(dir: &Path, lock_wait: Duration) -> Result<Ledger> {
        std::fs::create_dir_all(dir)
            .map_err(|e| store_error(dir, format!("cannot create: {e}")))?;
        let config = sled::Config::new().path(dir);
        let db =
            airlock_audit::sled_open::open_waiting(&config, lock_wait).map_err(|e| match e {
                airlock_audit::sled_open::OpenError::Locked => {
                    store_error(dir, "in use by another airlock process")
                }
                airlock_audit::sled_open::OpenError::Failed(e) => store_error(dir, e),
            })?;
        let ledger = Ledger::from_db(dir.to_owned(), db)?;
        ledger.recover()?;
        Ok(ledger)
    }

    /// A ledger in a temporary database.
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn temporary() -> Result<Ledger> {
        let path = PathBuf::from("<temporary>");
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(|e| store_error(&path, e))?;
        Ledger::from_db(path, db)
    }

    fn from_db(path: PathBuf, db: sled::Db) -> Result<Ledger> {
        let approvals = db
            .open_tree("approvals")
            .map_err(|e| store_error(&path, e))?;
        let idempotency = db
            .open_tree("idempotency")
            .map_err(|e| store_error(&path, e))?;
        Ok(Ledger {
            path,
            db,
            approvals,
            idempotency,
        })
    }

    fn recover(&self) -> Result<()> {
        for item in self.idempotency.iter() {
            let (k, v) = item.map_err(|e| store_error(&self.path, e))?;
            let Ok(mut entry) = serde_json::from_slice::<IdempotencyEntry>(&v) else {
                continue;
            };
            if let IdempotencyState::InFlight { call_id } = &entry.state {
                tracing::warn!(call_id = %call_id, "idempotency key in flight at last shutdown: outcome unknown");
                entry.state = IdempotencyState::Unknown {
                    call_id: call_id.clone(),
                };
                self.swap(&self.idempotency, &k, Some(&v), &entry)?;
            }
        }
        self.flush()
    }

    /// Make every change durable.
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .map(drop)
            .map_err(|e| store_error(&self.path, e))
    }

    /// Compare-and-swap `key` from `old` to `new`; `Ok(false)` if someone
    /// else changed it first.
    fn swap<T: Serialize>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        old: Option<&[u8]>,
        new: &T,
    ) -> Result<bool> {
        let bytes = serde_json::to_vec(new).map_err(|e| store_error(&self.path, e))?;
        match tree.compare_and_swap(key, old, Some(bytes)) {
            Ok(Ok(())) => Ok(true),
            Ok(Err(_)) => Ok(false),
            Err(e) => Err(store_error(&self.path, e)),
        }
    }

    // ------------------------------------------------------------ approvals

    /// Store a new pending approval.
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn create_approval(&self, approval: &Approval) -> Result<()> {
        if !self.swap(&self.approvals, approval.id.as_bytes(), None, approval)? {
            return Err(store_error(&self.path, "approval id collision"));
        }
        self.flush()
    }

    /// The approval `id`, with expiry applied: a pending approval past its
    /// time becomes `expired` (returned with `true` when this call expired
    /// it, so the caller records it).
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn approval(&self, id: &str, now_ms: u64) -> Result<Option<(Approval, bool)>> {
        loop {
            let Some(bytes) = self
                .approvals
                .get(id.as_bytes())
                .map_err(|e| store_error(&self.path, e))?
            else {
                return Ok(None);
            };
            let approval: Approval = serde_json::from_slice(&bytes)
                .map_err(|e| store_error(&self.path, format!("approval {id} is corrupt: {e}")))?;
            let live = matches!(
                approval.state,
                ApprovalState::Pending | ApprovalState::Approved
            );
            if !live || now_ms < approval.expires_ms {
                return Ok(Some((approval, false)));
            }
            let mut expired = approval;
            if expired.state == ApprovalState::Pending {
                expired.decided_ms = Some(now_ms);
                expired.decided_by = Some(EXPIRY.to_owned());
            }
            expired.state = ApprovalState::Expired;
            if self.swap(&self.approvals, id.as_bytes(), Some(&bytes), &expired)? {
                self.flush()?;
                return Ok(Some((expired, true)));
            }
            // Decided meanwhile: read it again.
        }
    }

    /// Move approval `id` from `from` to the state `change` produces,
    /// atomically. Returns the new approval, or the current one unchanged if
    /// it was not in `from` (someone decided first).
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn transition(
        &self,
        id: &str,
        from: ApprovalState,
        now_ms: u64,
        change: impl Fn(&mut Approval),
    ) -> Result<std::result::Result<Approval, Option<Approval>>> {
        loop {
            let Some((current, _)) = self.approval(id, now_ms)? else {
                return Ok(Err(None));
            };
            if current.state != from {
                return Ok(Err(Some(current)));
            }
            let old = serde_json::to_vec(&current).map_err(|e| store_error(&self.path, e))?;
            let stored = self
                .approvals
                .get(id.as_bytes())
                .map_err(|e| store_error(&self.path, e))?;
            // Only swap against the exact bytes we read.
            if stored.as_deref() != Some(old.as_slice()) {
                continue;
            }
            let mut next = current;
            change(&mut next);
            if self.swap(&self.approvals, id.as_bytes(), Some(&old), &next)? {
                self.flush()?;
                return Ok(Ok(next));
            }
        }
    }

    /// Every approval, newest first, optionally only in `state`, and the
    /// approvals this listing expired (to be recorded).
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn approvals(
        &self,
        state: Option<ApprovalState>,
        now_ms: u64,
    ) -> Result<(Vec<Approval>, Vec<Approval>)> {
        let mut ids = Vec::new();
        for item in self.approvals.iter() {
            let (k, _) = item.map_err(|e| store_error(&self.path, e))?;
            ids.push(String::from_utf8_lossy(&k).into_owned());
        }
        let mut out = Vec::new();
        let mut expired = Vec::new();
        for id in ids {
            let Some((a, expired_now)) = self.approval(&id, now_ms)? else {
                continue;
            };
            if expired_now {
                expired.push(a.clone());
            }
            if state.is_none_or(|s| s == a.state) {
                out.push(a);
            }
        }
        out.sort_by_key(|a| std::cmp::Reverse(a.created_ms));
        Ok((out, expired))
    }

    /// Pending approvals `principal` asked for.
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn pending_of(&self, principal: &str, now_ms: u64) -> Result<(u64, Vec<Approval>)> {
        let (pending, expired) = self.approvals(Some(ApprovalState::Pending), now_ms)?;
        let mine = pending.iter().filter(|a| a.principal == principal).count();
        Ok((u64::try_from(mine).unwrap_or(u64::MAX), expired))
    }

    /// Expire every overdue approval, and forget terminal approvals decided
    /// (or created) more than `approval_retention` ago and finished
    /// idempotency entries older than `key_retention`. Entries still in
    /// flight are never removed.
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn sweep(
        &self,
        now_ms: u64,
        approval_retention: Duration,
        key_retention: Duration,
    ) -> Result<SweepReport> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (all, expired) = self.approvals(None, now_ms)?;
        let mut report = SweepReport {
            expired,
            ..SweepReport::default()
        };
        for approval in all {
            let terminal = !matches!(
                approval.state,
                ApprovalState::Pending | ApprovalState::Approved
            );
            let since = approval.decided_ms.unwrap_or(approval.created_ms);
            if terminal && now_ms.saturating_sub(since) > millis(approval_retention) {
                let bytes =
                    serde_json::to_vec(&approval).map_err(|e| store_error(&self.path, e))?;
                let removed = self
                    .approvals
                    .compare_and_swap(approval.id.as_bytes(), Some(bytes), None::<Vec<u8>>)
                    .map_err(|e| store_error(&self.path, e))?;
                if removed.is_ok() {
                    report.approvals_removed += 1;
                }
            }
        }
        for item in self.idempotency.iter() {
            let (k, v) = item.map_err(|e| store_error(&self.path, e))?;
            let Ok(entry) = serde_json::from_slice::<IdempotencyEntry>(&v) else {
                continue;
            };
            let finished = !matches!(entry.state, IdempotencyState::InFlight { .. });
            if finished && now_ms.saturating_sub(entry.created_ms) > millis(key_retention) {
                let removed = self
                    .idempotency
                    .compare_and_swap(&k, Some(v), None::<Vec<u8>>)
                    .map_err(|e| store_error(&self.path, e))?;
                if removed.is_ok() {
                    report.keys_removed += 1;
                }
            }
        }
        if report.approvals_removed + report.keys_removed > 0 {
            self.flush()?;
        }
        Ok(report)
    }

    // ---------------------------------------------------------- idempotency

    fn idempotency_key(principal: &str, plugin: &str, tool: &str, key: &str) -> Vec<u8> {
        let mut k = Vec::new();
        for part in [principal, plugin, tool, key] {
            k.extend_from_slice(&(part.len() as u32).to_be_bytes());
            k.extend_from_slice(part.as_bytes());
        }
        k
    }

    /// Claim `key` for `call_id`, or return what holds it. Entries older
    /// than `retention` are forgotten first.
    ///
    /// # Errors
    /// [`Error::Ledger`].
    #[allow(clippy::too_many_arguments)]
    pub fn claim(
        &self,
        principal: &str,
        plugin: &str,
        tool: &str,
        key: &str,
        args_digest: &str,
        call_id: &str,
        now_ms: u64,
        retention: Duration,
    ) -> Result<Claim> {
        let k = Ledger::idempotency_key(principal, plugin, tool, key);
        let entry = IdempotencyEntry {
            args_digest: args_digest.to_owned(),
            created_ms: now_ms,
            state: IdempotencyState::InFlight {
                call_id: call_id.to_owned(),
            },
        };
        loop {
            let current = self
                .idempotency
                .get(&k)
                .map_err(|e| store_error(&self.path, e))?;
            if let Some(bytes) = &current {
                let existing: IdempotencyEntry = serde_json::from_slice(bytes).map_err(|e| {
                    store_error(&self.path, format!("corrupt idempotency entry: {e}"))
                })?;
                let expired = now_ms.saturating_sub(existing.created_ms)
                    > u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
                let finished = !matches!(existing.state, IdempotencyState::InFlight { .. });
                if !(expired && finished) {
                    return Ok(Claim::Existing(existing));
                }
            }
            if self.swap(&self.idempotency, &k, current.as_deref(), &entry)? {
                self.flush()?;
                return Ok(Claim::Claimed);
            }
        }
    }

    /// Record the outcome of the call holding `key`.
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn complete(
        &self,
        principal: &str,
        plugin: &str,
        tool: &str,
        key: &str,
        outcome: std::result::Result<Value, (String, String)>,
    ) -> Result<()> {
        self.settle(principal, plugin, tool, key, |call_id| {
            IdempotencyState::Completed { call_id, outcome }
        })
    }

    /// Mark the call holding `key` as ended with effects nobody can know
    /// (cancelled or stopped mid-run): a retry with the key is refused as
    /// `idempotency_outcome_unknown`, never run again nor replayed as a
    /// plain failure.
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn mark_unknown(&self, principal: &str, plugin: &str, tool: &str, key: &str) -> Result<()> {
        self.settle(principal, plugin, tool, key, |call_id| {
            IdempotencyState::Unknown { call_id }
        })
    }

    /// Move the entry of `key` from in flight to the state `settled` makes
    /// of its call id; an entry not in flight (or none) is left alone.
    fn settle(
        &self,
        principal: &str,
        plugin: &str,
        tool: &str,
        key: &str,
        settled: impl FnOnce(String) -> IdempotencyState,
    ) -> Result<()> {
        let k = Ledger::idempotency_key(principal, plugin, tool, key);
        let Some(bytes) = self
            .idempotency
            .get(&k)
            .map_err(|e| store_error(&self.path, e))?
        else {
            return Ok(());
        };
        let mut entry: IdempotencyEntry = serde_json::from_slice(&bytes)
            .map_err(|e| store_error(&self.path, format!("corrupt idempotency entry: {e}")))?;
        let IdempotencyState::InFlight { call_id } = &entry.state else {
            return Ok(());
        };
        entry.state = settled(call_id.clone());
        self.swap(&self.idempotency, &k, Some(&bytes), &entry)?;
        self.flush()
    }

    /// Give up a claim without a result (the call did not run, e.g. it
    /// waits for approval).
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn release(&self, principal: &str, plugin: &str, tool: &str, key: &str) -> Result<()> {
        let k = Ledger::idempotency_key(principal, plugin, tool, key);
        let Some(bytes) = self
            .idempotency
            .get(&k)
            .map_err(|e| store_error(&self.path, e))?
        else {
            return Ok(());
        };
        if let Ok(entry) = serde_json::from_slice::<IdempotencyEntry>(&bytes)
            && matches!(entry.state, IdempotencyState::InFlight { .. })
        {
            let _ = self
                .idempotency
                .compare_and_swap(&k, Some(bytes), None::<Vec<u8>>)
                .map_err(|e| store_error(&self.path, e))?;
        }
        Ok(())
    }
}

/// The operator's rules for approvals and idempotency (`[policy.approvals]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalPolicy {
    /// Risk classes whose tools always need approval.
    pub require_for: Vec<crate::manifest::Risk>,
    /// Tools (`plugin/tool`) that always need approval.
    pub tools: Vec<String>,
    /// Who may decide. Without any, a call that needs approval is refused.
    pub approvers: Vec<Approver>,
    /// Seconds an approval request waits for a decision (tools may say
    /// otherwise).
    pub expiry_s: u64,
    /// Seconds an idempotency key's outcome is kept for replay.
    pub idempotency_retention_s: u64,
    /// Seconds an approved approval stays usable; unused, it then expires.
    pub approved_expiry_s: u64,
    /// Seconds a decided, expired or consumed approval is kept before the
    /// sweeper forgets it (the audit log keeps its history).
    pub retention_s: u64,
    /// Most approvals one principal may have pending at once; further calls
    /// needing approval are refused (`too_many_pending_approvals`).
    pub max_pending_per_principal: u64,
    /// Seconds between two sweeps of the ledger (expiry and retention).
    pub sweep_interval_s: u64,
}

impl Default for ApprovalPolicy {
    fn default() -> ApprovalPolicy {
        ApprovalPolicy {
            require_for: vec![crate::manifest::Risk::Irreversible],
            tools: Vec::new(),
            approvers: Vec::new(),
            expiry_s: 900,
            idempotency_retention_s: 24 * 3600,
            approved_expiry_s: 900,
            retention_s: 7 * 24 * 3600,
            max_pending_per_principal: 20,
            sweep_interval_s: 60,
        }
    }
}

/// One approver: a name and the SHA-256 (hex) of their secret token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approver {
    /// The approver's name, as recorded with each decision.
    pub name: String,
    /// SHA-256 of the approver's token, 64 hex digits.
    pub token_sha256: String,
}

impl ApprovalPolicy {
    /// The approver `name` if `token` is theirs.
    pub fn authenticate(&self, name: &str, token: &str) -> Option<&Approver> {
        self.approvers.iter().find(|a| {
            a.name == name && airlock_audit::token::matches_sha256(token, &a.token_sha256)
        })
    }
}

impl Ledger {
    /// A small host-wide value (e.g. the last mode switch recorded).
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        let tree = self
            .db
            .open_tree("meta")
            .map_err(|e| store_error(&self.path, e))?;
        Ok(tree
            .get(key.as_bytes())
            .map_err(|e| store_error(&self.path, e))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Set a host-wide value.
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        let tree = self
            .db
            .open_tree("meta")
            .map_err(|e| store_error(&self.path, e))?;
        tree.insert(key.as_bytes(), value.as_bytes())
            .map_err(|e| store_error(&self.path, e))?;
        self.flush()
    }
}
