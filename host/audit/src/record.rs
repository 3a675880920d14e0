//! Audit records and their hash chain.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::canonical;

/// The hash the first record links to: 32 zero bytes.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// What happened. Stored in a record's `event` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The host refused a call before any guest code ran (unknown tool,
    /// invalid arguments, audit unavailable, ...). `reason` says why.
    CallRefused,
    /// A call was admitted and is about to run (the intent record).
    CallStarted,
    /// A call finished: `outcome` is `ok`, an error kind, or `unknown` when
    /// the host stopped before the call finished.
    ///
    /// A `read` call of a plugin that can only read, finished within the
    /// log's group-commit window, has this record only: its intent was
    /// held while it ran and is carried here (`decision` is `admitted`,
    /// with the argument copy) — see [`Entry::carries_intent`].
    CallFinished,
    /// A call with an idempotency key already used was answered with the
    /// first call's stored outcome, without running.
    CallReplayed,
    /// A call needs a human decision: `approval_id` names the request.
    ApprovalRequested,
    /// An approver decided (`decision` is `approved` or `rejected`).
    ApprovalDecided,
    /// An approval was not decided in time.
    ApprovalExpired,
    /// The operator switched the host's mode (`decision`: `read_only` or
    /// `normal`).
    ModeChanged,
    /// A plugin version was installed (`plugin`, `plugin_version`,
    /// `component_digest`, `manifest_digest`; `principal`: who; `reason`:
    /// its signer, if signed).
    PluginInstalled,
    /// An operator changed which versions of a plugin serve: `decision` is
    /// `activate`, `canary`, `promote` or `rollback` — or `lost` when
    /// another change came first and this one was not made, or
    /// `approval_required` when it waits for an approver; `plugin_version`
    /// and `component_digest` name the version it concerns; `reason` says
    /// what serves after it.
    RolloutChanged,
    /// An alert rule started firing: `decision` is the rule's name,
    /// `plugin` and `tool` what it watches (when it watches one), `reason`
    /// the value against the threshold and the actions taken.
    AlertFired,
    /// A firing alert resolved: fields as [`Event::AlertFired`].
    AlertResolved,
    /// The host took over by itself on an alert (or an operator did):
    /// `decision` is `pause` (of `plugin`, or `plugin` and `tool`),
    /// `read_only`, `rollback`, or `suppressed` when the takeover limit
    /// stopped it; `principal` is who (`alert:RULE` for an alert);
    /// `reason` why.
    Takeover,
    /// A human undid a takeover: `decision` is `resume` (of `plugin`, or
    /// `plugin` and `tool`); `principal` who; `reason` why.
    TakeoverUndone,
    /// An alert's webhook was not delivered (every attempt failed, or the
    /// delivery queue was full): `decision` is the rule's name, `reason`
    /// the webhook, the attempts and the last error.
    AlertUndelivered,
    /// A plugins directory's plugins changed while `airlock serve` served
    /// them (after its first look at the directory): `decision` is
    /// `reloaded` (a plugin's changed files loaded and replaced it),
    /// `loaded` (a plugin was added, or its files load again) or
    /// `unloaded` (its directory is gone, or its changed files do not
    /// load). `plugin_version`, `component_digest` and `manifest_digest`
    /// are the version loaded (or unloaded); `reason` says what changed
    /// and, for a version loaded, what it may do that the version of its
    /// name that served last could not. Recorded before the version
    /// serves.
    PluginChanged,
}

impl Event {
    /// Every event, in declaration order (for listing them, as `airlock
    /// audit query --event` does).
    pub const ALL: [Event; 16] = [
        Event::CallRefused,
        Event::CallStarted,
        Event::CallFinished,
        Event::CallReplayed,
        Event::ApprovalRequested,
        Event::ApprovalDecided,
        Event::ApprovalExpired,
        Event::ModeChanged,
        Event::PluginInstalled,
        Event::RolloutChanged,
        Event::AlertFired,
        Event::AlertResolved,
        Event::Takeover,
        Event::TakeoverUndone,
        Event::AlertUndelivered,
        Event::PluginChanged,
    ];

    /// The snake_case name stored in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::CallRefused => "call_refused",
            Event::CallStarted => "call_started",
            Event::CallFinished => "call_finished",
            Event::CallReplayed => "call_replayed",
            Event::ApprovalRequested => "approval_requested",
            Event::ApprovalDecided => "approval_decided",
            Event::ApprovalExpired => "approval_expired",
            Event::ModeChanged => "mode_changed",
            Event::PluginInstalled => "plugin_installed",
            Event::RolloutChanged => "rollout_changed",
            Event::AlertFired => "alert_fired",
            Event::AlertResolved => "alert_resolved",
            Event::Takeover => "takeover",
            Event::TakeoverUndone => "takeover_undone",
            Event::AlertUndelivered => "alert_undelivered",
            Event::PluginChanged => "plugin_changed",
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome stored for a call that was in flight when the host stopped.
pub const OUTCOME_UNKNOWN: &str = "unknown";

/// What a caller of [`AuditLog::append`](crate::AuditLog::append) records.
///
/// Every field but `event` is optional; absent fields are not stored.
/// Argument and result copies must already be redacted
/// ([`Redactor`](crate::Redactor)) — the log writes what it is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// What happened.
    pub event: Event,
    /// Unique id of the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// Correlation id across calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Who the call ran for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Plugin name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Plugin version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_version: Option<String>,
    /// SHA-256 of the component, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_digest: Option<String>,
    /// SHA-256 of the manifest file, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// Tool name (without the plugin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The tool's risk class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<String>,
    /// The host's decision (`admitted`, `refused`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// Why, in words (redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Approval the call ran under, the approval a refusal is about
    /// (pending, or not allowing the call), or the approval an approval
    /// record concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// Idempotency key the caller gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// SHA-256 of the canonical arguments, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_digest: Option<String>,
    /// Redacted, size-capped canonical arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<String>,
    /// Set only on the records that carry the argument copy (the intent
    /// `call_started` or a `call_finished` that carries its intent, a
    /// refusal, an approval request) of a call to a tool
    /// the operator made replayable (`audit.replayable`): its `args` copy
    /// is then kept up to the call's argument size cap instead of
    /// `max_copy_bytes`, and this says whether redaction changed it
    /// (`true`: not the arguments the tool saw, so the call cannot be
    /// replayed). Absent on every other record, and on records written
    /// before the setting existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_redacted: Option<bool>,
    /// `args` was cut at the size cap.
    #[serde(default, skip_serializing_if = "is_false")]
    pub args_truncated: bool,
    /// SHA-256 of the canonical result, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_digest: Option<String>,
    /// Redacted, size-capped canonical result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// `result` was cut at the size cap.
    #[serde(default, skip_serializing_if = "is_false")]
    pub result_truncated: bool,
    /// The lines the guest logged (its stdout and stderr too, with that
    /// grant), redacted like the result: canonical JSON of
    /// `[{"level": …, "message": …}, …]`, size-capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
    /// `logs` was cut at the size cap.
    #[serde(default, skip_serializing_if = "is_false")]
    pub logs_truncated: bool,
    /// What the host itself refused or hit on the guest's behalf during
    /// the call (an HTTP request to an origin not granted, a response body
    /// over its limit, ...), whatever the call's outcome: canonical JSON of
    /// `["…", …]`, each note scrubbed like `reason`, size-capped. Apart
    /// from `logs` so that a guest can neither imitate these notes nor
    /// crowd them out of the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_notes: Option<String>,
    /// `host_notes` was cut at the size cap.
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_notes_truncated: bool,
    /// `ok`, an error kind (`tool_error`, `fuel_exhausted`, ...), or
    /// [`OUTCOME_UNKNOWN`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Fuel the call consumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_used: Option<u64>,
    /// Wall time of the call, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_us: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Entry {
    /// An entry for `event` with no other fields.
    pub fn new(event: Event) -> Entry {
        Entry {
            event,
            call_id: None,
            trace_id: None,
            principal: None,
            plugin: None,
            plugin_version: None,
            component_digest: None,
            manifest_digest: None,
            tool: None,
            risk: None,
            decision: None,
            reason: None,
            approval_id: None,
            idempotency_key: None,
            args_digest: None,
            args: None,
            args_redacted: None,
            args_truncated: false,
            result_digest: None,
            result: None,
            result_truncated: false,
            logs: None,
            logs_truncated: false,
            host_notes: None,
            host_notes_truncated: false,
            outcome: None,
            fuel_used: None,
            wall_us: None,
        }
    }

    /// The decision an intent record carries: the call was admitted.
    pub const ADMITTED: &'static str = "admitted";

    /// Whether this is a `call_finished` record that also carries its
    /// call's intent (`decision` is [`ADMITTED`](Self::ADMITTED)): the
    /// only record of a `read` call whose intent was held while it ran,
    /// because it finished within the group-commit window. No
    /// `call_started` record precedes it.
    pub fn carries_intent(&self) -> bool {
        self.event == Event::CallFinished && self.decision.as_deref() == Some(Entry::ADMITTED)
    }
}

/// A stored record: an [`Entry`] with its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the log: 1, 2, 3, ... with no gaps.
    pub seq: u64,
    /// When it was appended, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// What was recorded.
    #[serde(flatten)]
    pub entry: Entry,
    /// `hash` of the previous record (hex); 64 zeros for the first.
    pub prev_hash: String,
    /// SHA-256 of the previous hash's bytes followed by this record's
    /// canonical encoding without `hash` (hex).
    pub hash: String,
}

/// The hash of a record whose JSON form (without `hash`) is `body`, linked
/// to `prev`: `SHA-256(prev ‖ canonical(body))`.
pub fn chain_hash(prev: &[u8; 32], body: &Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(canonical::to_vec(body));
    hasher.finalize().into()
}

/// [`chain_hash`] over a body already in canonical form: `SHA-256(prev ‖
/// body)`, the bytes hashed exactly as given.
pub(crate) fn chain_hash_bytes(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(body);
    hasher.finalize().into()
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex32(&Sha256::digest(bytes).into())
}

/// 32 bytes as 64 lowercase hex digits. `hex::encode` goes through a
/// `char` iterator; this is a table lookup per byte, and it runs several
/// times per call (digests, hashes).
pub(crate) fn hex32(bytes: &[u8; 32]) -> String {
    let mut out = [0u8; 64];
    // 64 digits for 32 bytes: cannot fail.
    let _ = hex::encode_to_slice(bytes, &mut out);
    std::str::from_utf8(&out).unwrap_or_default().to_owned()
}

/// Parse a hash: 64 lowercase hex digits, the one spelling the log
/// writes. An uppercase digit is refused: the bytes a verifier accepts are
/// the bytes that were written (a case-changed `hash` still decoded to the
/// same value and verified).
pub(crate) fn parse_hash(s: &str) -> Option<[u8; 32]> {
    if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

impl Record {
    /// Seal `entry` as record `seq` after `prev`, returning the record and
    /// its stored bytes (canonical JSON including `hash`).
    #[cfg(test)]
    pub(crate) fn seal(
        seq: u64,
        time_ms: u64,
        entry: Entry,
        prev: &[u8; 32],
    ) -> (Record, [u8; 32], Vec<u8>) {
        let linked = Prepared::new(&entry).link(seq, time_ms, prev);
        let (hash, bytes) = (linked.hash, linked.bytes());
        (linked.into_record(entry), hash, bytes)
    }
}

/// An entry encoded ahead of sealing: the canonical encoding of every
/// member but the four only sealing knows (`hash`, `prev_hash`, `seq`,
/// `time_ms`), written straight from its fields — the same bytes as
/// [`canonical::to_vec`] of the record serialised to a JSON value (a test
/// holds the two together), at a fraction of the cost. Preparing happens
/// by the appending caller; linking ([`Prepared::link`]), in sequence
/// order by whoever seals the queue, is one SHA-256 over the encoding with
/// the four members added, and writing it out ([`Linked::bytes`]) one copy.
/// One buffer holds the four runs of members, so a record queued from one
/// thread and sealed on another is one allocation to free.
pub(crate) struct Prepared {
    /// The members in four runs: before `hash` (never empty: `event` is
    /// among them), between `hash` and `prev_hash`, between `prev_hash`
    /// and `seq`, and after `time_ms`.
    runs: String,
    /// Where the second, third and fourth runs start in `runs`.
    starts: [usize; 3],
}

impl Prepared {
    /// Encode `entry`'s members.
    pub(crate) fn new(entry: &Entry) -> Prepared {
        // No `..`: a new field must be placed here, in key order.
        let Entry {
            event,
            call_id,
            trace_id,
            principal,
            plugin,
            plugin_version,
            component_digest,
            manifest_digest,
            tool,
            risk,
            decision,
            reason,
            approval_id,
            idempotency_key,
            args_digest,
            args,
            args_redacted,
            args_truncated,
            result_digest,
            result,
            result_truncated,
            logs,
            logs_truncated,
            host_notes,
            host_notes_truncated,
            outcome,
            fuel_used,
            wall_us,
        } = entry;
        // Members in the byte order of their keys, in four runs around
        // `hash`, `prev_hash`, and `seq` and `time_ms`.
        let mut out = Members::with_capacity(
            768 + [args, logs, host_notes, reason, result]
                .iter()
                .map(|text| text.as_ref().map_or(0, String::len))
                .sum::<usize>(),
        );
        out.text("approval_id", approval_id.as_deref());
        out.text("args", args.as_deref());
        out.text("args_digest", args_digest.as_deref());
        out.boolean("args_redacted", *args_redacted);
        out.flag("args_truncated", *args_truncated);
        out.text("call_id", call_id.as_deref());
        out.text("component_digest", component_digest.as_deref());
        out.text("decision", decision.as_deref());
        out.text("event", Some(event.as_str()));
        out.number("fuel_used", *fuel_used);
        // "hash"
        let before_prev = out.next_run();
        out.text("host_notes", host_notes.as_deref());
        out.flag("host_notes_truncated", *host_notes_truncated);
        out.text("idempotency_key", idempotency_key.as_deref());
        out.text("logs", logs.as_deref());
        out.flag("logs_truncated", *logs_truncated);
        out.text("manifest_digest", manifest_digest.as_deref());
        out.text("outcome", outcome.as_deref());
        out.text("plugin", plugin.as_deref());
        out.text("plugin_version", plugin_version.as_deref());
        // "prev_hash"
        let before_seq = out.next_run();
        out.text("principal", principal.as_deref());
        out.text("reason", reason.as_deref());
        out.text("result", result.as_deref());
        out.text("result_digest", result_digest.as_deref());
        out.flag("result_truncated", *result_truncated);
        out.text("risk", risk.as_deref());
        // "seq", "time_ms"
        let after_time = out.next_run();
        out.text("tool", tool.as_deref());
        out.text("trace_id", trace_id.as_deref());
        out.number("wall_us", *wall_us);
        Prepared {
            runs: out.finish(),
            starts: [before_prev, before_seq, after_time],
        }
    }

    /// The four runs of members.
    fn runs(&self) -> [&str; 4] {
        let [a, b, c] = self.starts;
        let runs = self.runs.as_str();
        // The starts are ascending offsets into `runs` at member
        // boundaries (ASCII commas or the end), set by `new`.
        [
            runs.get(..a).unwrap_or_default(),
            runs.get(a..b).unwrap_or_default(),
            runs.get(b..c).unwrap_or_default(),
            runs.get(c..).unwrap_or_default(),
        ]
    }

    /// The canonical encoding as record `seq`, appended at `time_ms`, after
    /// the record whose hash is `prev`, piece by piece into `out` — with
    /// the `hash` member if `hash` is given (the stored bytes), without it
    /// if not (what the chain hash is computed over).
    fn write(
        &self,
        seq: u64,
        time_ms: u64,
        prev: &[u8; 32],
        hash: Option<&[u8; 32]>,
        mut out: impl FnMut(&[u8]),
    ) {
        let [before_hash, before_prev, before_seq, after_time] = self.runs();
        let mut hex = [0u8; 64];
        out(b"{");
        out(before_hash.as_bytes());
        out(b",");
        if let Some(hash) = hash {
            // 64 digits for 32 bytes: cannot fail.
            let _ = hex::encode_to_slice(hash, &mut hex);
            out(b"\"hash\":\"");
            out(&hex);
            out(b"\",");
        }
        if !before_prev.is_empty() {
            out(before_prev.as_bytes());
            out(b",");
        }
        let _ = hex::encode_to_slice(prev, &mut hex);
        out(b"\"prev_hash\":\"");
        out(&hex);
        out(b"\"");
        if !before_seq.is_empty() {
            out(b",");
            out(before_seq.as_bytes());
        }
        let mut numbers = [0u8; 64];
        let mut cursor = std::io::Cursor::new(&mut numbers[..]);
        // 64 bytes hold both numbers (20 digits each at most) and the keys.
        let _ = std::io::Write::write_fmt(
            &mut cursor,
            format_args!(",\"seq\":{seq},\"time_ms\":{time_ms}"),
        );
        let written = usize::try_from(cursor.position()).unwrap_or(0);
        out(numbers.get(..written).unwrap_or_default());
        if !after_time.is_empty() {
            out(b",");
            out(after_time.as_bytes());
        }
        out(b"}");
    }

    /// Seal as record `seq`, appended at `time_ms`, after the record whose
    /// hash is `prev`: the canonical body without `hash` and its chain hash.
    pub(crate) fn link(self, seq: u64, time_ms: u64, prev: &[u8; 32]) -> Linked {
        let mut hasher = Sha256::new();
        hasher.update(prev);
        self.write(seq, time_ms, prev, None, |piece| hasher.update(piece));
        Linked {
            seq,
            time_ms,
            prev: *prev,
            hash: hasher.finalize().into(),
            prepared: self,
        }
    }
}

/// A sealed record: its number, links and canonical body.
pub(crate) struct Linked {
    pub(crate) seq: u64,
    time_ms: u64,
    prev: [u8; 32],
    /// Its chain hash.
    pub(crate) hash: [u8; 32],
    /// Its members.
    prepared: Prepared,
}

impl Linked {
    /// The stored bytes: the canonical encoding with `hash`.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        // The runs, the four members sealing adds and the punctuation.
        let mut out = Vec::with_capacity(self.prepared.runs.len() + 256);
        self.prepared.write(
            self.seq,
            self.time_ms,
            &self.prev,
            Some(&self.hash),
            |piece| out.extend_from_slice(piece),
        );
        out
    }

    /// The record of `entry` (the one linked), as a reader parses it.
    pub(crate) fn into_record(self, entry: Entry) -> Record {
        Record {
            seq: self.seq,
            time_ms: self.time_ms,
            entry,
            prev_hash: hex32(&self.prev),
            hash: hex32(&self.hash),
        }
    }
}

/// A run of a canonical JSON object's members, written member by member
/// in the order given, separated by commas (no braces); absent members (as
/// serde skips them) are not written.
struct Members {
    out: String,
    /// Where the current run starts in `out`.
    run: usize,
    #[cfg(debug_assertions)]
    last_key: &'static str,
}

impl Members {
    fn with_capacity(capacity: usize) -> Members {
        Members {
            out: String::with_capacity(capacity),
            run: 0,
            #[cfg(debug_assertions)]
            last_key: "",
        }
    }

    fn key(&mut self, key: &'static str) {
        #[cfg(debug_assertions)]
        {
            debug_assert!(
                self.last_key.as_bytes() < key.as_bytes(),
                "{key} out of order"
            );
            self.last_key = key;
        }
        if self.out.len() > self.run {
            self.out.push(',');
        }
        canonical::write_string(key, &mut self.out);
        self.out.push(':');
    }

    fn text(&mut self, key: &'static str, value: Option<&str>) {
        if let Some(value) = value {
            self.key(key);
            canonical::write_string(value, &mut self.out);
        }
    }

    fn number(&mut self, key: &'static str, value: Option<u64>) {
        if let Some(value) = value {
            self.key(key);
            // Writing to a String cannot fail.
            let _ = write!(self.out, "{value}");
        }
    }

    fn flag(&mut self, key: &'static str, value: bool) {
        if value {
            self.key(key);
            self.out.push_str("true");
        }
    }

    /// A member present whenever `value` is (`true` or `false`).
    fn boolean(&mut self, key: &'static str, value: Option<bool>) {
        if let Some(value) = value {
            self.key(key);
            self.out.push_str(if value { "true" } else { "false" });
        }
    }

    /// End the current run (its members follow each other; the next
    /// run's first member is not preceded by a comma): where the next
    /// starts.
    fn next_run(&mut self) -> usize {
        self.run = self.out.len();
        self.run
    }

    fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` lists every event once, by the name records store. serde's
    /// refusal of an unknown name lists every variant it knows: an event
    /// added without `ALL` fails here.
    #[test]
    fn every_event_is_listed_once_by_its_stored_name() {
        let listed: Vec<&str> = Event::ALL.iter().map(|e| e.as_str()).collect();
        for event in Event::ALL {
            let parsed: Event = serde_json::from_value(Value::from(event.as_str())).unwrap();
            assert_eq!(parsed, event);
        }
        let refusal = serde_json::from_value::<Event>(Value::from("no_such_event"))
            .unwrap_err()
            .to_string();
        let known: Vec<&str> = refusal
            .split_once("expected one of ")
            .unwrap()
            .1
            .split(", ")
            .map(|name| name.trim_matches('`'))
            .collect();
        assert_eq!(listed, known, "{refusal}");
    }

    #[test]
    fn sealing_links_and_hashes_the_canonical_body() {
        let mut entry = Entry::new(Event::CallStarted);
        entry.tool = Some("stats".into());
        let (first, h1, bytes) = Record::seal(1, 1000, entry.clone(), &GENESIS_HASH);
        assert_eq!(first.prev_hash, "0".repeat(64));
        let mut stored: Value = serde_json::from_slice(&bytes).unwrap();
        let hash = stored
            .as_object_mut()
            .unwrap()
            .remove("hash")
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(hash, first.hash);
        assert_eq!(chain_hash(&GENESIS_HASH, &stored), h1);
        let (second, _, _) = Record::seal(2, 1001, entry, &h1);
        assert_eq!(second.prev_hash, first.hash);
        // Absent optional fields are not stored at all.
        assert!(!String::from_utf8(bytes).unwrap().contains("call_id"));
    }

    /// Every field set, with text that needs escaping, and none set: the
    /// direct writer gives exactly the canonical encoding of the serde form
    /// (which is what verifiers recompute).
    #[test]
    fn direct_encoding_is_the_canonical_encoding_of_the_serde_form() {
        let text = |s: &str| Some(format!("{s} \"q\" \\ \n\t\u{1}\u{7f} é ☃ /"));
        let full = Entry {
            event: Event::CallFinished,
            call_id: text("call"),
            trace_id: text("trace"),
            principal: text("principal"),
            plugin: text("plugin"),
            plugin_version: text("1.0.0"),
            component_digest: text("component"),
            manifest_digest: text("manifest"),
            tool: text("tool"),
            risk: text("risk"),
            decision: text("decision"),
            reason: text("reason"),
            approval_id: text("approval"),
            idempotency_key: text("key"),
            args_digest: text("args digest"),
            args: text("{\"a\":1}"),
            args_redacted: Some(false),
            args_truncated: true,
            result_digest: text("result digest"),
            result: text("[1,2]"),
            result_truncated: true,
            logs: text("[{\"level\":\"info\"}]"),
            logs_truncated: true,
            host_notes: text("[\"http GET https://a.example/: refused\"]"),
            host_notes_truncated: true,
            outcome: text("ok"),
            fuel_used: Some(u64::MAX),
            wall_us: Some(0),
        };
        let mut redacted = full.clone();
        redacted.args_redacted = Some(true);
        for (i, entry) in [full, redacted, Entry::new(Event::ModeChanged)]
            .into_iter()
            .enumerate()
        {
            let prev = [i as u8; 32];
            let (record, hash, bytes) = Record::seal(7 + i as u64, 1_700_000_000_000, entry, &prev);
            let mut value = serde_json::to_value(&record).unwrap();
            assert_eq!(bytes, canonical::to_vec(&value));
            value.as_object_mut().unwrap().remove("hash");
            assert_eq!(hash, chain_hash(&prev, &value));
        }
    }
}
