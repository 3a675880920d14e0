//! The ledger: approvals and idempotency keys.
//!
//! Both are small state machines whose transitions must be atomic even when
//! many calls race — on one host or on many sharing a backend. A backend
//! provides versioned records and compare-and-swap on the version
//! ([`LedgerStore`]); [`Ledger`] writes the state machines once, on top, so
//! exactly one of two racing decisions (or claims) wins on every backend.
//!
//! Approvals: `pending → approved | rejected | expired | cancelled`, then
//! `approved → consumed | expired`. Terminal states never change. A pending
//! approval expires at `expires_ms`; approving it starts a new window in
//! which the call must run, after which it expires too. [`Ledger::sweep`]
//! expires what is overdue and forgets terminal approvals and finished
//! idempotency entries past their retention.
//!
//! Idempotency entries, keyed by [`KeyRef`] (principal, plugin, tool, key):
//! `in_flight → completed | unknown`. An entry still `in_flight` when its
//! host starts again belonged to a call that was running when that host
//! stopped and becomes `unknown` ([`Ledger::recover`]) — never re-executed
//! automatically.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, StoreError};

/// Times a read-then-swap loop (expiring or deciding an approval,
/// claiming a key) starts again after losing its swap before it gives up.
/// Each lost swap is another writer's progress, so a real race ends long
/// before; an entry that can never be swapped (a store that misreports
/// versions) would otherwise hold the thread for ever.
const MAX_RACES: u32 = 1000;

/// The error of a loop that lost [`MAX_RACES`] swaps on `what`.
fn too_many_races(what: &str) -> StoreError {
    StoreError::new(
        crate::ErrorKind::Conflict,
        format!("{what} changed {MAX_RACES} times while this host tried to update it; giving up"),
    )
}

/// An approval's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// Every state.
    pub const ALL: [ApprovalState; 6] = [
        ApprovalState::Pending,
        ApprovalState::Approved,
        ApprovalState::Rejected,
        ApprovalState::Expired,
        ApprovalState::Cancelled,
        ApprovalState::Consumed,
    ];

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

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<ApprovalState> {
        ApprovalState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether it can still change (pending or approved).
    pub fn is_live(self) -> bool {
        matches!(self, ApprovalState::Pending | ApprovalState::Approved)
    }
}

/// What an approval decides on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalKind {
    /// One tool call.
    #[default]
    Call,
    /// Activating a plugin version whose grant or risk is wider than the
    /// one it replaces (`args` says what widens; `component_digest` is the
    /// new version's).
    PluginUpgrade,
}

impl ApprovalKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalKind::Call => "call",
            ApprovalKind::PluginUpgrade => "plugin_upgrade",
        }
    }
}

/// A request for a human decision on exactly one call (or one plugin
/// upgrade, see [`ApprovalKind`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Its id.
    pub id: String,
    /// What it decides on (absent in records of before: a call).
    #[serde(default)]
    pub kind: ApprovalKind,
    /// Where it is in its lifecycle.
    pub state: ApprovalState,
    /// Plugin name.
    pub plugin: String,
    /// Component digest the approval is bound to.
    pub component_digest: String,
    /// The plugin version it was asked for (absent in approvals stored
    /// before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_version: Option<String>,
    /// SHA-256 (hex) of that version's manifest, which the call approved
    /// must run under too: the same component under another grant or
    /// other limits is another call. Absent in approvals stored before it
    /// was kept: the component alone binds those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
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
    /// Whether redaction replaced values in `args` (the tool receives them
    /// as the caller sent them). `None` in approvals stored before this was
    /// kept: then `args` is searched for redaction's marks, which a caller
    /// can also write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_redacted: Option<bool>,
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
    /// Fields this version does not know: written by a newer host sharing
    /// the store. Kept as they are, so a decision or a use made here writes
    /// them back rather than erasing them; a call is never run under an
    /// approval that has any (its terms may bind more than this host
    /// checks).
    #[serde(flatten)]
    pub unknown_fields: serde_json::Map<String, Value>,
}

/// An idempotency entry's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IdempotencyState {
    /// A call holding the key is running.
    InFlight {
        /// That call.
        call_id: String,
        /// The host running it (its audit origin); absent in stores
        /// written before hosts shared a ledger.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
    },
    /// The first call with the key completed; its outcome is replayed.
    Completed {
        /// The call.
        call_id: String,
        /// `Ok(output)` or `Err((error kind, message))`.
        outcome: std::result::Result<Value, (String, String)>,
    },
    /// The call was running when its host stopped (or was cancelled):
    /// whether it took effect is unknown, and it is not run again.
    Unknown {
        /// That call.
        call_id: String,
    },
}

impl IdempotencyState {
    /// Whether a call still holds the key.
    pub fn is_in_flight(&self) -> bool {
        matches!(self, IdempotencyState::InFlight { .. })
    }
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

/// An idempotency entry as [`LedgerStore::keys`] lists it: what recovery
/// and the sweep need of it, without its stored outcome (a tool's result,
/// up to its output limit, which a listing of every key would otherwise
/// read and decode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHead {
    /// When the key was first used, ms since the Unix epoch.
    pub created_ms: u64,
    /// While a call holds the key: the host running it, as in
    /// [`IdempotencyState::InFlight`].
    pub in_flight: Option<Option<String>>,
}

impl KeyHead {
    /// The head of `entry`.
    pub fn of(entry: &IdempotencyEntry) -> KeyHead {
        KeyHead {
            created_ms: entry.created_ms,
            in_flight: match &entry.state {
                IdempotencyState::InFlight { host, .. } => Some(host.clone()),
                _ => None,
            },
        }
    }

    /// The head of an entry stored as the JSON of [`IdempotencyEntry`],
    /// read without decoding its outcome: the outcome is skipped, not
    /// parsed into values, so neither its size nor its nesting matters.
    ///
    /// # Errors
    /// Text that is not such an entry.
    pub fn from_json(text: &[u8]) -> serde_json::Result<KeyHead> {
        /// The members of the head; the others are skipped.
        #[derive(Deserialize)]
        struct Head {
            created_ms: u64,
            state: String,
            #[serde(default)]
            host: Option<String>,
        }
        let head: Head = serde_json::from_slice(text)?;
        let in_flight = match head.state.as_str() {
            "in_flight" => Some(head.host),
            "completed" | "unknown" => None,
            other => {
                return Err(serde::de::Error::custom(format!(
                    "unknown idempotency state {other:?}"
                )));
            }
        };
        Ok(KeyHead {
            created_ms: head.created_ms,
            in_flight,
        })
    }
}

/// Every approval, as [`LedgerStore::approvals`] lists them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApprovalListing {
    /// The approvals that could be read.
    pub approvals: Vec<Versioned<Approval>>,
    /// A description of each stored approval that could not be (a damaged
    /// row), naming its id: left where it is, for the operator. One such
    /// row no longer fails every listing, the sweep and every call that
    /// needs an approval.
    pub unreadable: Vec<String>,
}

/// Approvals listed by [`Ledger::approvals`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Approvals {
    /// Newest first.
    pub list: Vec<Approval>,
    /// The approvals this listing expired (to be recorded).
    pub expired: Vec<Approval>,
    /// Stored approvals that could not be read (see
    /// [`ApprovalListing::unreadable`]).
    pub unreadable: Vec<String>,
}

/// Which idempotency entries [`LedgerStore::key_heads`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHeads {
    /// Those in flight (whichever host runs them).
    InFlight,
    /// Those finished and created before this time (ms since the epoch).
    FinishedBefore(u64),
}

impl KeyHeads {
    /// Whether `head` is one of them.
    pub fn selects(self, head: &KeyHead) -> bool {
        match self {
            KeyHeads::InFlight => head.in_flight.is_some(),
            KeyHeads::FinishedBefore(ms) => head.in_flight.is_none() && head.created_ms < ms,
        }
    }
}

/// Every idempotency key, as [`LedgerStore::keys`] lists them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyListing {
    /// The keys that could be read.
    pub keys: Vec<(KeyRef, Versioned<KeyHead>)>,
    /// A description of each entry that could not be (a damaged store):
    /// left where it is, for the operator; a call with its key fails.
    pub unreadable: Vec<String>,
}

/// Which idempotency key: the caller's key, scoped by who called which
/// tool. Two principals using the same key never meet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyRef {
    /// Who called.
    pub principal: String,
    /// The plugin.
    pub plugin: String,
    /// The tool (without the plugin).
    pub tool: String,
    /// The caller's key.
    pub key: String,
}

impl KeyRef {
    /// The key `key` of `principal` for `plugin/tool`.
    pub fn new(
        principal: impl Into<String>,
        plugin: impl Into<String>,
        tool: impl Into<String>,
        key: impl Into<String>,
    ) -> KeyRef {
        KeyRef {
            principal: principal.into(),
            plugin: plugin.into(),
            tool: tool.into(),
            key: key.into(),
        }
    }

    /// An unambiguous byte encoding (length-prefixed parts), for backends
    /// that store keys as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut k = Vec::new();
        for part in [&self.principal, &self.plugin, &self.tool, &self.key] {
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            k.extend_from_slice(&len.to_be_bytes());
            k.extend_from_slice(part.as_bytes());
        }
        k
    }

    /// The inverse of [`KeyRef::encode`].
    pub fn decode(mut bytes: &[u8]) -> Option<KeyRef> {
        let mut parts = Vec::with_capacity(4);
        for _ in 0..4 {
            let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
            let part = bytes.get(4..4 + len)?;
            parts.push(String::from_utf8(part.to_vec()).ok()?);
            bytes = &bytes[4 + len..];
        }
        if !bytes.is_empty() {
            return None;
        }
        let key = parts.pop()?;
        let tool = parts.pop()?;
        let plugin = parts.pop()?;
        let principal = parts.pop()?;
        Some(KeyRef {
            principal,
            plugin,
            tool,
            key,
        })
    }
}

/// A record's version: what a compare-and-swap compares. Opaque; each
/// backend chooses (a counter, a digest of the stored bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version(pub u64);

/// A record as read, with the version a later swap must match.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The record.
    pub value: T,
    /// Its version.
    pub version: Version,
}

/// What a ledger backend stores: versioned approvals and idempotency
/// entries with compare-and-swap, and a few named host-wide values.
///
/// Contract (checked by the conformance suite): every write is durable
/// when it returns; a `replace`/`remove` succeeds only if the record still
/// has the version the caller read, so of racing writers exactly one wins
/// — across every host sharing the backend.
pub trait LedgerStore: Send + Sync + fmt::Debug {
    /// Store a new approval; `false` if one with its id exists.
    fn insert_approval(&self, approval: &Approval) -> Result<bool>;
    /// The approval `id`.
    fn approval(&self, id: &str) -> Result<Option<Versioned<Approval>>>;
    /// Replace the approval `next.id` if it is still at `current`.
    fn replace_approval(&self, current: Version, next: &Approval) -> Result<bool>;
    /// Forget the approval `id` if it is still at `current`.
    fn remove_approval(&self, id: &str, current: Version) -> Result<bool>;
    /// Every approval, optionally only those in `state`, in no particular
    /// order; one that cannot be read is named in
    /// [`ApprovalListing::unreadable`] rather than failing the listing.
    fn approvals(&self, state: Option<ApprovalState>) -> Result<ApprovalListing>;

    /// The entry of `key`.
    fn key(&self, key: &KeyRef) -> Result<Option<Versioned<IdempotencyEntry>>>;
    /// Store the first entry of `key`; `false` if it has one.
    fn insert_key(&self, key: &KeyRef, entry: &IdempotencyEntry) -> Result<bool>;
    /// Replace the entry of `key` if it is still at `current`.
    fn replace_key(&self, key: &KeyRef, current: Version, next: &IdempotencyEntry) -> Result<bool>;
    /// Forget the entry of `key` if it is still at `current`.
    fn remove_key(&self, key: &KeyRef, current: Version) -> Result<bool>;
    /// Every idempotency entry's head (without its outcome). An entry
    /// that cannot be read is named in [`KeyListing::unreadable`] rather
    /// than failing the listing: recovery and the sweep go on without it.
    fn keys(&self) -> Result<KeyListing>;
    /// The heads of the entries `which` selects, as [`keys`](Self::keys)
    /// lists them; a backend may return more (the callers check each head
    /// again), never fewer. A host starting and the sweep want a few of
    /// a day's keys, not all of them: a backend whose store is shared and
    /// large (PostgreSQL) selects them where they are. The default lists
    /// every key and keeps those selected.
    fn key_heads(&self, which: KeyHeads) -> Result<KeyListing> {
        let mut listing = self.keys()?;
        listing.keys.retain(|(_, head)| which.selects(&head.value));
        Ok(listing)
    }

    /// A small host-wide value.
    fn meta(&self, name: &str) -> Result<Option<String>>;
    /// Set a host-wide value.
    fn set_meta(&self, name: &str, value: &str) -> Result<()>;
    /// Set `name` to `next` if it still holds `current` (`None`: no value
    /// yet); whether it did. Of racing writers exactly one wins.
    fn swap_meta(&self, name: &str, current: Option<&str>, next: &str) -> Result<bool>;
}

/// Who `decided_by` names on an approval that expired before a decision.
pub const EXPIRY: &str = "airlock (expiry)";

/// What a claim of an idempotency key found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key is now held by this call.
    Claimed,
    /// An earlier call holds or held it.
    Existing(IdempotencyEntry),
}

/// What [`Ledger::transition`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// The approval moved; here it is now.
    Done(Approval),
    /// It was not in the expected state (someone decided first, or it
    /// expired); here it is as it is.
    Already(Approval),
    /// There is no such approval.
    NotFound,
}

/// What [`Ledger::recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The keys it made `unknown`.
    pub changed: Vec<KeyRef>,
    /// Entries it could not read (see [`KeyListing::unreadable`]).
    pub unreadable: Vec<String>,
}

/// What one [`Ledger::sweep`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Idempotency entries and approvals it could not read, left in place
    /// (see [`KeyListing::unreadable`], [`ApprovalListing::unreadable`]).
    pub unreadable: Vec<String>,
    /// Approvals this sweep expired (to be recorded in the audit log).
    pub expired: Vec<Approval>,
    /// Terminal approvals forgotten after their retention.
    pub approvals_removed: u64,
    /// Finished idempotency entries forgotten after their retention.
    pub keys_removed: u64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The approval and idempotency state machines over a [`LedgerStore`].
///
/// Cheap to clone: clones share the store.
#[derive(Debug, Clone)]
pub struct Ledger {
    store: Arc<dyn LedgerStore>,
}

impl Ledger {
    /// The ledger kept in `store`.
    pub fn new(store: Arc<dyn LedgerStore>) -> Ledger {
        Ledger { store }
    }

    /// The backend.
    pub fn store(&self) -> &Arc<dyn LedgerStore> {
        &self.store
    }

    /// Make every key `host` left in flight `unknown` (call when `host`
    /// starts: its calls of before cannot be running). Entries written
    /// without a host (a store one host owned alone) count as `host`'s.
    /// Returns the keys it changed, and the entries it could not read
    /// (which it leaves: a call with their key fails, so none runs again).
    ///
    /// # Errors
    /// The store's.
    pub fn recover(&self, host: &str) -> Result<Recovery> {
        let listing = self.store.key_heads(KeyHeads::InFlight)?;
        let mut recovery = Recovery {
            unreadable: listing.unreadable,
            ..Recovery::default()
        };
        for (key, head) in listing.keys {
            let Some(owner) = &head.value.in_flight else {
                continue;
            };
            if owner.as_deref().is_some_and(|o| o != host) {
                continue;
            }
            // In flight, so no outcome to read: the whole entry is small.
            let entry = match self.store.key(&key) {
                Ok(Some(entry)) => entry,
                Ok(None) => continue,
                Err(e) if e.kind() == crate::ErrorKind::Corrupt => {
                    recovery.unreadable.push(e.to_string());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let IdempotencyState::InFlight { call_id, host: now } = &entry.value.state else {
                continue;
            };
            if now.as_deref().is_some_and(|o| o != host) {
                continue;
            }
            let next = IdempotencyEntry {
                state: IdempotencyState::Unknown {
                    call_id: call_id.clone(),
                },
                ..entry.value.clone()
            };
            if self.store.replace_key(&key, entry.version, &next)? {
                recovery.changed.push(key);
            }
        }
        Ok(recovery)
    }

    // ------------------------------------------------------------ approvals

    /// Store a new pending approval.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) when its id is
    /// taken; the store's.
    pub fn create_approval(&self, approval: &Approval) -> Result<()> {
        if self.store.insert_approval(approval)? {
            Ok(())
        } else {
            Err(StoreError::new(
                crate::ErrorKind::Conflict,
                format!("approval id {} is taken", approval.id),
            ))
        }
    }

    /// The approval `id`, with expiry applied: a live approval past its time
    /// becomes `expired` (returned with `true` when this read expired it, so
    /// the caller records it — exactly one reader does).
    ///
    /// # Errors
    /// The store's.
    pub fn approval(&self, id: &str, now_ms: u64) -> Result<Option<(Approval, bool)>> {
        for _ in 0..MAX_RACES {
            let Some(current) = self.stored_approval(id)? else {
                return Ok(None);
            };
            let approval = current.value;
            if !approval.state.is_live() || now_ms < approval.expires_ms {
                return Ok(Some((approval, false)));
            }
            let mut expired = approval;
            if expired.state == ApprovalState::Pending {
                expired.decided_ms = Some(now_ms);
                expired.decided_by = Some(EXPIRY.to_owned());
            }
            expired.state = ApprovalState::Expired;
            if self.store.replace_approval(current.version, &expired)? {
                return Ok(Some((expired, true)));
            }
            // Decided meanwhile: read it again.
        }
        Err(too_many_races(id))
    }

    /// The stored approval `id`, which must say it is `id`: a body naming
    /// another id (an edited row) would never match a swap by its own id,
    /// and a loop reading it again would spin for ever.
    fn stored_approval(&self, id: &str) -> Result<Option<Versioned<Approval>>> {
        let stored = self.store.approval(id)?;
        if let Some(found) = &stored
            && found.value.id != id
        {
            return Err(StoreError::new(
                crate::ErrorKind::Corrupt,
                format!(
                    "the stored approval {id} says it is {:?}: the ledger was edited; remove or restore that entry",
                    &found.value.id[..found.value.id.floor_char_boundary(80)]
                ),
            ));
        }
        Ok(stored)
    }

    /// Move approval `id` from `from` to what `change` makes of it,
    /// atomically.
    ///
    /// # Errors
    /// The store's.
    pub fn transition(
        &self,
        id: &str,
        from: ApprovalState,
        now_ms: u64,
        change: impl Fn(&mut Approval),
    ) -> Result<Transition> {
        for _ in 0..MAX_RACES {
            // Expiry first: an overdue approval cannot be decided.
            let Some((current, _)) = self.approval(id, now_ms)? else {
                return Ok(Transition::NotFound);
            };
            if current.state != from {
                return Ok(Transition::Already(current));
            }
            let Some(stored) = self.stored_approval(id)? else {
                return Ok(Transition::NotFound);
            };
            if stored.value != current {
                continue;
            }
            let mut next = current;
            change(&mut next);
            if self.store.replace_approval(stored.version, &next)? {
                return Ok(Transition::Done(next));
            }
        }
        Err(too_many_races(id))
    }

    /// Every approval, newest first, optionally only in `state`, and the
    /// approvals this listing expired (to be recorded).
    ///
    /// # Errors
    /// The store's.
    pub fn approvals(&self, state: Option<ApprovalState>, now_ms: u64) -> Result<Approvals> {
        // Live ones may expire on reading, so a listing of a terminal
        // state reads every live approval too; a listing of a live state
        // reads that state only (expiry only leaves it), not the whole
        // table with a week of decided approvals — each call that needs an
        // approval counts its principal's pending ones this way.
        let listing = match state {
            Some(s) if s.is_live() => self.store.approvals(Some(s))?,
            Some(s) if !s.is_live() => {
                let mut all = self.store.approvals(Some(s))?;
                for live in [ApprovalState::Pending, ApprovalState::Approved] {
                    let more = self.store.approvals(Some(live))?;
                    all.approvals.extend(more.approvals);
                    all.unreadable.extend(more.unreadable);
                }
                all
            }
            _ => self.store.approvals(None)?,
        };
        let mut listed = Approvals {
            unreadable: listing.unreadable,
            ..Approvals::default()
        };
        for candidate in listing.approvals {
            let approval =
                if candidate.value.state.is_live() && now_ms >= candidate.value.expires_ms {
                    match self.approval(&candidate.value.id, now_ms) {
                        Ok(Some((a, true))) => {
                            listed.expired.push(a.clone());
                            a
                        }
                        Ok(Some((a, false))) => a,
                        Ok(None) => continue,
                        Err(e) if e.kind() == crate::ErrorKind::Corrupt => {
                            listed.unreadable.push(e.to_string());
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    candidate.value
                };
            if state.is_none_or(|s| s == approval.state) {
                listed.list.push(approval);
            }
        }
        listed
            .list
            .sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
        listed.list.dedup_by(|a, b| a.id == b.id);
        Ok(listed)
    }

    /// How many approvals `principal` has pending, and the approvals this
    /// count expired (to be recorded).
    ///
    /// # Errors
    /// The store's.
    pub fn pending_of(&self, principal: &str, now_ms: u64) -> Result<(u64, Vec<Approval>)> {
        let pending = self.approvals(Some(ApprovalState::Pending), now_ms)?;
        let mine = pending
            .list
            .iter()
            .filter(|a| a.principal == principal)
            .count();
        Ok((u64::try_from(mine).unwrap_or(u64::MAX), pending.expired))
    }

    /// Expire every overdue approval, and forget terminal approvals decided
    /// (or created) more than `approval_retention` ago and finished
    /// idempotency entries older than `key_retention`. Entries still in
    /// flight are never removed.
    ///
    /// # Errors
    /// The store's.
    pub fn sweep(
        &self,
        now_ms: u64,
        approval_retention: Duration,
        key_retention: Duration,
    ) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        let listing = self.store.approvals(None)?;
        report.unreadable.extend(listing.unreadable);
        for candidate in listing.approvals {
            let approval = &candidate.value;
            if approval.state.is_live() {
                if now_ms >= approval.expires_ms {
                    match self.approval(&approval.id, now_ms) {
                        Ok(Some((a, true))) => report.expired.push(a),
                        Ok(_) => {}
                        Err(e) if e.kind() == crate::ErrorKind::Corrupt => {
                            report.unreadable.push(e.to_string());
                        }
                        Err(e) => return Err(e),
                    }
                }
                continue;
            }
            let since = approval.decided_ms.unwrap_or(approval.created_ms);
            if now_ms.saturating_sub(since) > millis(approval_retention)
                && self
                    .store
                    .remove_approval(&approval.id, candidate.version)?
            {
                report.approvals_removed += 1;
            }
        }
        let listing = self.store.key_heads(KeyHeads::FinishedBefore(
            now_ms.saturating_sub(millis(key_retention)),
        ))?;
        report.unreadable.extend(listing.unreadable);
        for (key, head) in listing.keys {
            let finished = head.value.in_flight.is_none();
            if finished
                && now_ms.saturating_sub(head.value.created_ms) > millis(key_retention)
                && self.store.remove_key(&key, head.version)?
            {
                report.keys_removed += 1;
            }
        }
        Ok(report)
    }

    // ---------------------------------------------------------- idempotency

    /// Claim `key` for `call_id` running on `host`, or return what holds it.
    /// A finished entry older than `retention` is replaced.
    ///
    /// # Errors
    /// The store's;
    /// [`ErrorKind::Corrupt`](crate::ErrorKind::Corrupt) for an unreadable
    /// entry.
    pub fn claim(
        &self,
        key: &KeyRef,
        args_digest: &str,
        call: (&str, &str),
        now_ms: u64,
        retention: Duration,
    ) -> Result<Claim> {
        let (call_id, host) = call;
        let entry = IdempotencyEntry {
            args_digest: args_digest.to_owned(),
            created_ms: now_ms,
            state: IdempotencyState::InFlight {
                call_id: call_id.to_owned(),
                host: Some(host.to_owned()),
            },
        };
        for _ in 0..MAX_RACES {
            let inserted = self
                .store
                .insert_key(key, &entry)
                .map_err(|e| self.unclaim(key, call_id, e))?;
            if inserted {
                return Ok(Claim::Claimed);
            }
            let Some(existing) = self.store.key(key)? else {
                // Swept between the two: try again.
                continue;
            };
            let expired = now_ms.saturating_sub(existing.value.created_ms) > millis(retention);
            if !expired || existing.value.state.is_in_flight() {
                return Ok(Claim::Existing(existing.value));
            }
            let replaced = self
                .store
                .replace_key(key, existing.version, &entry)
                .map_err(|e| self.unclaim(key, call_id, e))?;
            if replaced {
                return Ok(Claim::Claimed);
            }
        }
        Err(too_many_races(&format!("idempotency key {}", key.key)))
    }

    /// A claim's write failed (`error`), but may have been stored — its
    /// reply lost with the connection: the caller is told the call did not
    /// run, so a claim by `call_id` left behind is removed (else every
    /// retry is refused as in flight, and as unknown after a restart, for
    /// a call that never ran). Best effort: a store that cannot be read
    /// leaves it to recovery.
    fn unclaim(&self, key: &KeyRef, call_id: &str, error: StoreError) -> StoreError {
        if let Ok(Some(found)) = self.store.key(key)
            && matches!(&found.value.state, IdempotencyState::InFlight { call_id: c, .. } if c == call_id)
        {
            let _ = self.store.remove_key(key, found.version);
        }
        error
    }

    /// Record the outcome of the call holding `key`.
    ///
    /// # Errors
    /// The store's.
    pub fn complete(
        &self,
        key: &KeyRef,
        outcome: std::result::Result<Value, (String, String)>,
    ) -> Result<()> {
        self.settle(key, |call_id| IdempotencyState::Completed {
            call_id,
            outcome,
        })
    }

    /// Mark the call holding `key` as ended with effects nobody can know
    /// (cancelled or stopped mid-run): a retry with the key is refused,
    /// never run again nor replayed as a plain failure.
    ///
    /// # Errors
    /// The store's.
    pub fn mark_unknown(&self, key: &KeyRef) -> Result<()> {
        self.settle(key, |call_id| IdempotencyState::Unknown { call_id })
    }

    /// Move the entry of `key` from in flight to the state `settled` makes
    /// of its call id; an entry not in flight (or none) is left alone.
    fn settle(&self, key: &KeyRef, settled: impl FnOnce(String) -> IdempotencyState) -> Result<()> {
        let Some(current) = self.store.key(key)? else {
            return Ok(());
        };
        let IdempotencyState::InFlight { call_id, .. } = &current.value.state else {
            return Ok(());
        };
        let next = IdempotencyEntry {
            state: settled(call_id.clone()),
            ..current.value.clone()
        };
        // Only the holder settles an in-flight entry; losing the swap
        // means it was settled already.
        self.store.replace_key(key, current.version, &next)?;
        Ok(())
    }

    /// Give up a claim without a result (the call did not run, e.g. it
    /// waits for approval).
    ///
    /// # Errors
    /// The store's.
    pub fn release(&self, key: &KeyRef) -> Result<()> {
        if let Some(current) = self.store.key(key)?
            && current.value.state.is_in_flight()
        {
            self.store.remove_key(key, current.version)?;
        }
        Ok(())
    }

    /// A small host-wide value.
    ///
    /// # Errors
    /// The store's.
    pub fn meta(&self, name: &str) -> Result<Option<String>> {
        self.store.meta(name)
    }

    /// Set `name` to `next` if it still holds `current` (`None`: none);
    /// whether it did — of writers racing from one value, one wins.
    ///
    /// # Errors
    /// The store's.
    pub fn swap_meta(&self, name: &str, current: Option<&str>, next: &str) -> Result<bool> {
        self.store.swap_meta(name, current, next)
    }

    /// Set a host-wide value.
    ///
    /// # Errors
    /// The store's.
    pub fn set_meta(&self, name: &str, value: &str) -> Result<()> {
        self.store.set_meta(name, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    /// A backend whose reads of approvals are wrong in one of two ways:
    /// every body names another id (a row edited by hand), or no swap
    /// ever succeeds (versions misreported).
    #[derive(Debug)]
    struct Misreporting {
        inner: MemoryStore,
        relabel: bool,
    }

    /// A backend that stores an idempotency key's first entry but loses
    /// the reply (the connection dropped after the commit).
    #[derive(Debug)]
    struct LostReply(MemoryStore);

    impl LedgerStore for LostReply {
        fn insert_approval(&self, approval: &Approval) -> Result<bool> {
            self.0.insert_approval(approval)
        }
        fn approval(&self, id: &str) -> Result<Option<Versioned<Approval>>> {
            self.0.approval(id)
        }
        fn replace_approval(&self, current: Version, next: &Approval) -> Result<bool> {
            self.0.replace_approval(current, next)
        }
        fn remove_approval(&self, id: &str, current: Version) -> Result<bool> {
            self.0.remove_approval(id, current)
        }
        fn approvals(&self, state: Option<ApprovalState>) -> Result<ApprovalListing> {
            self.0.approvals(state)
        }
        fn key(&self, key: &KeyRef) -> Result<Option<Versioned<IdempotencyEntry>>> {
            self.0.key(key)
        }
        fn insert_key(&self, key: &KeyRef, entry: &IdempotencyEntry) -> Result<bool> {
            if !self.0.insert_key(key, entry)? {
                return Ok(false);
            }
            Err(StoreError::unavailable(
                "storing an idempotency key",
                "connection closed",
            ))
        }
        fn replace_key(
            &self,
            key: &KeyRef,
            current: Version,
            next: &IdempotencyEntry,
        ) -> Result<bool> {
            self.0.replace_key(key, current, next)
        }
        fn remove_key(&self, key: &KeyRef, current: Version) -> Result<bool> {
            self.0.remove_key(key, current)
        }
        fn keys(&self) -> Result<KeyListing> {
            self.0.keys()
        }
        fn meta(&self, name: &str) -> Result<Option<String>> {
            self.0.meta(name)
        }
        fn set_meta(&self, name: &str, value: &str) -> Result<()> {
            self.0.set_meta(name, value)
        }
        fn swap_meta(&self, name: &str, current: Option<&str>, next: &str) -> Result<bool> {
            self.0.swap_meta(name, current, next)
        }
    }

    /// The claim was stored but its reply lost: the caller hears the store
    /// failed (the call does not run), and the claim is not left behind to
    /// refuse every retry of a call that never ran.
    #[test]
    fn a_claim_whose_reply_was_lost_is_not_left_behind() {
        let store = Arc::new(LostReply(MemoryStore::new()));
        let ledger = Ledger::new(Arc::clone(&store) as Arc<dyn LedgerStore>);
        let key = KeyRef::new("agent", "plug", "tool", "k");
        let claimed = ledger.claim(&key, "d", ("call-1", "h"), 1, Duration::from_secs(60));
        assert!(claimed.is_err());
        assert!(store.0.key(&key).unwrap().is_none(), "the claim was left");
        // Another call's claim is never removed on its behalf.
        let other = IdempotencyEntry {
            args_digest: "d".into(),
            created_ms: 1,
            state: IdempotencyState::InFlight {
                call_id: "call-2".into(),
                host: None,
            },
        };
        assert!(store.0.insert_key(&key, &other).unwrap());
        let refused = ledger.claim(&key, "d", ("call-3", "h"), 1, Duration::from_secs(60));
        assert!(matches!(refused, Ok(Claim::Existing(_))), "{refused:?}");
        assert!(store.0.key(&key).unwrap().is_some());
    }

    impl LedgerStore for Misreporting {
        fn insert_approval(&self, approval: &Approval) -> Result<bool> {
            self.inner.insert_approval(approval)
        }
        fn approval(&self, id: &str) -> Result<Option<Versioned<Approval>>> {
            let mut found = self.inner.approval(id)?;
            if self.relabel
                && let Some(found) = &mut found
            {
                found.value.id = "someone-else".to_owned();
            }
            Ok(found)
        }
        fn replace_approval(&self, current: Version, next: &Approval) -> Result<bool> {
            if self.relabel {
                return self.inner.replace_approval(current, next);
            }
            Ok(false)
        }
        fn remove_approval(&self, id: &str, current: Version) -> Result<bool> {
            self.inner.remove_approval(id, current)
        }
        fn approvals(&self, state: Option<ApprovalState>) -> Result<ApprovalListing> {
            self.inner.approvals(state)
        }
        fn key(&self, key: &KeyRef) -> Result<Option<Versioned<IdempotencyEntry>>> {
            self.inner.key(key)
        }
        fn insert_key(&self, key: &KeyRef, entry: &IdempotencyEntry) -> Result<bool> {
            self.inner.insert_key(key, entry)
        }
        fn replace_key(
            &self,
            key: &KeyRef,
            current: Version,
            next: &IdempotencyEntry,
        ) -> Result<bool> {
            self.inner.replace_key(key, current, next)
        }
        fn remove_key(&self, key: &KeyRef, current: Version) -> Result<bool> {
            self.inner.remove_key(key, current)
        }
        fn keys(&self) -> Result<KeyListing> {
            self.inner.keys()
        }
        fn meta(&self, name: &str) -> Result<Option<String>> {
            self.inner.meta(name)
        }
        fn set_meta(&self, name: &str, value: &str) -> Result<()> {
            self.inner.set_meta(name, value)
        }
        fn swap_meta(&self, name: &str, current: Option<&str>, next: &str) -> Result<bool> {
            self.inner.swap_meta(name, current, next)
        }
    }

    fn overdue_approval(relabel: bool) -> Ledger {
        let ledger = Ledger::new(Arc::new(Misreporting {
            inner: MemoryStore::new(),
            relabel,
        }));
        ledger
            .create_approval(&crate::conformance::approval("a1", "agent", 100, 1_000))
            .unwrap();
        ledger
    }

    /// An approval row whose body named another id made every read of it
    /// (and so every call naming it, and its decision) loop for ever: the
    /// swap by the body's id never matched.
    #[test]
    fn an_approval_that_names_another_id_is_corrupt_not_a_loop() {
        let ledger = overdue_approval(true);
        let err = ledger.approval("a1", 5_000).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Corrupt, "{err}");
        assert!(err.to_string().contains("someone-else"), "{err}");
        let err = ledger
            .transition("a1", ApprovalState::Pending, 500, |_| {})
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Corrupt, "{err}");
    }

    #[test]
    fn a_swap_that_never_succeeds_gives_up() {
        let ledger = overdue_approval(false);
        let err = ledger.approval("a1", 5_000).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Conflict, "{err}");
        assert!(err.to_string().contains("1000 times"), "{err}");
    }
}
