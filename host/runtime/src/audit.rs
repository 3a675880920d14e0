//! The pipeline's audit records: one refusal, or an intent and an outcome,
//! for every call — or, for a `read` call of a plugin that can only read
//! that finishes within the group-commit window, one outcome record that
//! carries its intent.
//!
//! Everything written goes through the log's redactor first: argument and
//! result copies, and free text (refusal reasons, guest error messages and
//! the stderr quoted in them, log lines) with every redacted argument value
//! and every secret-shaped text (header lines, URL query secrets, bearer
//! credentials) scrubbed from it. What the caller gets back is not changed.

use std::time::Duration;

use airlock_audit::{AuditLog, Durability, Entry, Event, Hold, capped_json, sha256_hex};
use serde_json::Value;

use crate::error::{CallError, CallResult};
use crate::manifest::Risk;
use crate::plugin::{Plugin, Tool};

/// Bytes of a call's host notes kept in its record (at least; more when
/// `max_copy_bytes` is larger): 33 notes of [`HOST_NOTE_BYTES`] fit.
const HOST_NOTES_BYTES: usize = 32 * 1024;

/// Bytes of one host note in a record, once scrubbed (the HTTP sender
/// writes a target of at most 256 bytes and a message of at most 256).
const HOST_NOTE_BYTES: usize = 768;

/// Where a call's intent record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    /// Not due yet: the call has not been admitted.
    Due,
    /// Appended (sealed into the chain).
    Written,
    /// Held while a group-committed call runs, for at most
    /// [`CallRecord::held_for`]: written with the outcome, as one
    /// record, if the call finishes within it.
    Held,
    /// The outcome is recorded (or its append was tried): nothing more.
    Recorded,
}

/// What one call has recorded so far.
pub(crate) struct CallRecord<'a> {
    log: &'a AuditLog,
    base: Entry,
    intent: Intent,
    /// While the intent is held: the log waits for it at close.
    hold: Option<Hold<'a>>,
    /// Redacted argument values, scrubbed from free text.
    secrets: Vec<String>,
    /// The same, prepared for scrubbing (once, not per text).
    known: airlock_audit::KnownSecrets,
    pointers: Vec<String>,
    durability: Durability,
    /// For a tool the operator made replayable (`audit.replayable`): the
    /// cap of its argument copy, the call's argument size cap.
    replayable: Option<usize>,
    /// The host's argument limit: text over it is only digested.
    max_argument_bytes: usize,
    /// The plain digest of the arguments, which approvals and idempotency
    /// keys bind to (the record holds it keyed when redaction changed the
    /// copy: [`airlock_audit::Redactor::keyed_digest`]).
    binding_digest: String,
    /// Whether redaction changed the arguments' copy.
    args_redacted: bool,
}

impl<'a> CallRecord<'a> {
    pub(crate) fn new(
        log: &'a AuditLog,
        call_id: &str,
        trace_id: &str,
        principal: &str,
        tool_ref: &str,
        max_argument_bytes: usize,
    ) -> CallRecord<'a> {
        let mut base = Entry::new(Event::CallRefused);
        base.call_id = Some(call_id.to_owned());
        base.trace_id = Some(trace_id.to_owned());
        base.principal = Some(principal.to_owned());
        // Until resolved, the reference as given (bounded: it is caller data).
        base.tool = Some(bounded(tool_ref, 256));
        CallRecord {
            log,
            base,
            intent: Intent::Due,
            hold: None,
            secrets: Vec::new(),
            known: airlock_audit::KnownSecrets::default(),
            pointers: Vec::new(),
            durability: Durability::Batched,
            replayable: None,
            max_argument_bytes,
            binding_digest: String::new(),
            args_redacted: false,
        }
    }

    /// The plain digest of the call's arguments, once recorded: what an
    /// approval or an idempotency key binds.
    pub(crate) fn args_digest(&self) -> &str {
        &self.binding_digest
    }

    /// The redacted copy of the arguments, once recorded, cut to
    /// `max_copy_bytes` (an approval shows it; a replayable tool's record
    /// keeps more).
    pub(crate) fn args_copy(&self) -> &str {
        let copy = self.base.args.as_deref().unwrap_or_default();
        airlock_audit::text::prefix(copy, self.log.config().max_copy_bytes)
    }

    /// Whether redaction replaced values in
    /// [`args_copy`](Self::args_copy).
    pub(crate) fn args_redacted(&self) -> bool {
        self.args_redacted
    }

    /// Whether [`args_copy`](Self::args_copy) is cut.
    pub(crate) fn args_truncated(&self) -> bool {
        self.base.args_truncated
            || self.args_copy().len() < self.base.args.as_ref().map_or(0, String::len)
    }

    /// The call carries idempotency `key`.
    pub(crate) fn idempotency_key(&mut self, key: Option<&str>) {
        self.base.idempotency_key = key.map(str::to_owned);
    }

    /// The call runs under approval `id`.
    pub(crate) fn approval(&mut self, id: &str) {
        self.base.approval_id = Some(id.to_owned());
    }

    /// Record an event about this call other than its refusal, intent or
    /// outcome (replay, approval requested). Failing to record is an error.
    pub(crate) async fn event(
        &self,
        event: Event,
        decision: Option<&str>,
        reason: Option<&str>,
        approval_id: Option<&str>,
    ) -> CallResult<()> {
        let mut entry = self.base.clone();
        entry.event = event;
        entry.decision = decision.map(str::to_owned);
        entry.reason = reason.map(|r| self.scrub(r));
        if let Some(id) = approval_id {
            entry.approval_id = Some(id.to_owned());
        }
        append(self.log, &entry, Durability::Flushed)
            .await
            .map(drop)
            .map_err(CallError::AuditUnavailable)
    }

    /// The call resolved to `tool` of `plugin`; its arguments are at most
    /// `max_argument_bytes` long (the cap of a replayable copy).
    /// Redact the arguments at `pointers` too (a tool's `redact`), for a
    /// call refused before its tool was resolved whose tool is known.
    pub(crate) fn redact_at(&mut self, pointers: Vec<String>) {
        self.pointers = pointers;
    }

    pub(crate) fn resolved(&mut self, plugin: &Plugin, tool: &Tool) {
        let b = &mut self.base;
        b.plugin = Some(plugin.name().to_owned());
        b.plugin_version = Some(plugin.version().to_owned());
        b.component_digest = Some(plugin.digest().to_owned());
        b.manifest_digest = Some(plugin.manifest_digest().to_owned());
        b.tool = Some(tool.name().to_owned());
        b.risk = Some(tool.risk().as_str().to_owned());
        self.pointers = tool.redact().to_vec();
        let id = tool.id();
        self.replayable = self
            .log
            .config()
            .replayable
            .iter()
            .any(|t| t == id)
            .then_some(
                self.max_argument_bytes
                    .max(self.log.config().max_copy_bytes),
            );
        // Nothing with an effect on the world runs before its intent is on
        // disk; `read` calls of plugins that can only read are
        // group-committed (a `read` tool with write-capable grants is not
        // taken at its word).
        self.durability = if tool.risk() == Risk::Read && plugin.grant().write_capable().is_empty()
        {
            Durability::Batched
        } else {
            Durability::Flushed
        };
    }

    /// Record the arguments: their digest and a redacted, capped copy. Text
    /// that is not JSON is only digested. For a replayable tool the copy is
    /// kept up to the argument size cap, and whether redaction changed it
    /// is recorded (`args_redacted`), so `airlock replay` knows whether
    /// the copy is the arguments the tool saw. Text over the host's
    /// argument limit (a call refused for it, or before its size was
    /// checked) is only digested: never parsed, redacted or copied.
    pub(crate) fn arguments(&mut self, raw: &str, parsed: Option<&Value>) {
        let parsed_now;
        let value = match parsed {
            Some(v) => Some(v),
            None if raw.len() > self.max_argument_bytes => None,
            None => {
                parsed_now = serde_json::from_str::<Value>(raw).ok();
                parsed_now.as_ref()
            }
        };
        match value {
            Some(value) => {
                let digest = canonical_digest(value);
                let redacted = self.log.redactor().redact(value, &self.pointers, &[]);
                let changed = redacted.value != *value;
                // Beside a copy with its secrets replaced, a plain digest
                // of the whole would let a secret be guessed offline.
                self.base.args_digest = Some(if changed {
                    self.log.redactor().keyed_digest(&digest)
                } else {
                    digest.clone()
                });
                self.binding_digest = digest;
                let cap = self.replayable.unwrap_or(self.log.config().max_copy_bytes);
                let (copy, truncated) = capped_json(&redacted.value, cap);
                self.base.args = Some(copy);
                self.base.args_truncated = truncated;
                self.base.args_redacted = self.replayable.map(|_| changed);
                self.args_redacted = changed;
                self.known = airlock_audit::KnownSecrets::new(&redacted.secrets);
                self.secrets = redacted.secrets;
            }
            None => {
                // Never copied: guessing it takes the whole text.
                let digest = sha256_hex(raw.as_bytes());
                self.base.args_digest = Some(digest.clone());
                self.binding_digest = digest;
            }
        }
    }

    /// The call was refused before it ran: record why and return `error`.
    ///
    /// Boxed: a refusal is off the hot path, and its future inline would
    /// grow every future that may refuse (the pipeline's steps among them)
    /// by its size — bytes each call copies as the futures move.
    pub(crate) fn refused(
        mut self,
        error: CallError,
    ) -> std::pin::Pin<Box<impl Future<Output = CallError> + Send + 'a>> {
        Box::pin(async move {
            let reason = self.scrub(&error.to_string());
            let base = std::mem::replace(&mut self.base, Entry::new(Event::CallRefused));
            refusal(self.log, base, &reason, &error).await;
            error
        })
    }

    /// The call is admitted: write the intent record (flushed for tools that
    /// are not read-only). If it cannot be written the call must not run.
    ///
    /// The intent of a group-committed call (a `read` tool of a plugin
    /// that can only read) is held instead, once the log says it would
    /// take it ([`AuditLog::hold`]): written with the outcome as one
    /// record if the call finishes within the group-commit window, or by
    /// [`write_held_intent`](Self::write_held_intent) when it runs longer.
    /// Holding it loses nothing the log promised: a batched record may be
    /// lost to a crash for up to that window anyway, and such a call has
    /// no effect on the world — its result is its only output, and that
    /// is withheld unless the record is sealed ([`finished`](Self::finished)).
    ///
    /// A flushed intent that could not be flushed may still have been
    /// sealed: it then reaches the store once the store recovers. So the
    /// call's outcome, `audit_unavailable` (it did not run), is queued
    /// behind it, and the log says what became of the call.
    ///
    /// # Errors
    /// [`CallError::AuditUnavailable`].
    pub(crate) async fn started(&mut self) -> CallResult<()> {
        if self.hold_window().is_some() {
            return match self.log.hold() {
                Ok(hold) => {
                    self.intent = Intent::Held;
                    self.hold = Some(hold);
                    Ok(())
                }
                // Nothing was sealed: the call is refused like any other.
                Err(e) => Err(self.refused_now(CallError::AuditUnavailable(e)).await),
            };
        }
        let appended = self.append_intent().await;
        let Err(e) = appended else {
            self.intent = Intent::Written;
            return Ok(());
        };
        let reason = format!(
            "the intent record could not be written, so the call did not run: {}",
            self.scrub(&e.to_string())
        );
        let error = CallError::AuditUnavailable(e);
        let mut outcome = self.base.clone();
        outcome.event = Event::CallFinished;
        outcome.args = None;
        outcome.args_redacted = None;
        outcome.args_truncated = false;
        outcome.outcome = Some(error.kind().to_owned());
        outcome.reason = Some(reason);
        if let Err(e) = append(self.log, &outcome, Durability::Batched).await {
            tracing::error!(error = %e, call_id = ?self.base.call_id, "cannot record that a call did not run");
        }
        Err(error)
    }

    /// How long a group-committed call's intent may be held while it runs:
    /// the log's group-commit window; `None` for other calls, and when
    /// the operator turned holding off (`audit.hold_read_intents`).
    fn hold_window(&self) -> Option<Duration> {
        let config = self.log.config();
        (self.durability == Durability::Batched && config.hold_read_intents)
            .then(|| Duration::from_millis(config.group_commit_ms.max(1)))
    }

    /// While the intent is held ([`started`](Self::started)): how long it
    /// may be, before [`write_held_intent`](Self::write_held_intent).
    pub(crate) fn held_for(&self) -> Option<Duration> {
        self.hold_window().filter(|_| self.intent == Intent::Held)
    }

    /// The call has run longer than [`hold_window`](Self::hold_window):
    /// write its held intent now, so the log shows it in flight. If the
    /// log refuses it the intent stays held and the outcome carries it —
    /// or, refused too, withholds the result.
    pub(crate) async fn write_held_intent(&mut self) {
        if self.intent != Intent::Held {
            return;
        }
        // Appended before any wait, so that a caller who drops the call
        // from here on leaves the intent on record, once.
        let event = std::mem::replace(&mut self.base.event, Event::CallStarted);
        let decision = self.base.decision.replace(Entry::ADMITTED.to_owned());
        let appended = self.log.append_batched(&self.base);
        self.base.event = event;
        self.base.decision = decision;
        match appended {
            Ok((_, behind)) => {
                self.intent = Intent::Written;
                self.hold = None;
                if behind {
                    wait_for_room(self.log).await;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, call_id = ?self.base.call_id, "cannot record a running call's intent; its outcome will carry it");
            }
        }
    }

    /// Append the base as the intent record (no copy of it), then put the
    /// base back as it was.
    async fn append_intent(&mut self) -> airlock_audit::Result<u64> {
        let event = std::mem::replace(&mut self.base.event, Event::CallStarted);
        let decision = self.base.decision.replace(Entry::ADMITTED.to_owned());
        let appended = append(self.log, &self.base, self.durability).await;
        self.base.event = event;
        self.base.decision = decision;
        appended
    }

    /// Record a refusal, keeping the record (the pipeline's refusals take
    /// it by value: [`refused`](Self::refused)).
    async fn refused_now(&self, error: CallError) -> CallError {
        refusal(
            self.log,
            self.base.clone(),
            &self.scrub(&error.to_string()),
            &error,
        )
        .await;
        error
    }

    /// The call's outcome record, taken from its base: the intent's fields
    /// with it when the intent was `held` (this record is the call's only
    /// one), without the arguments when the intent record holds them.
    fn take_outcome(&mut self, held: bool) -> Entry {
        let mut entry = std::mem::replace(&mut self.base, Entry::new(Event::CallFinished));
        entry.event = Event::CallFinished;
        if held {
            entry.decision = Some(Entry::ADMITTED.to_owned());
        } else {
            entry.args = None;
            entry.args_redacted = None;
            entry.args_truncated = false;
        }
        entry
    }

    /// Record the outcome.
    ///
    /// The call has run: if its intent is on record, a failure to record
    /// the outcome is logged (the intent stays open and reads as "unknown"
    /// after a restart) but does not hide the result from the caller. If
    /// its intent was held, this record is the call's only one: it carries
    /// the intent, and if it cannot be written the call's result must not
    /// reach the caller.
    ///
    /// # Errors
    /// The log's error, when the call has no record at all.
    pub(crate) async fn finished(
        mut self,
        result: &CallResult<crate::CallResponse>,
        stats: &crate::pipeline::run::RunStats,
    ) -> Result<(), airlock_audit::Error> {
        let held = self.intent == Intent::Held;
        // Recorded here, whatever becomes of the append: not again on drop.
        self.intent = Intent::Recorded;
        let mut entry = self.take_outcome(held);
        entry.fuel_used = Some(stats.fuel_used);
        entry.wall_us = Some(u64::try_from(stats.duration.as_micros()).unwrap_or(u64::MAX));
        // The result first: what redaction takes out of it is scrubbed
        // from the call's log lines and notes too, as the arguments'
        // secrets are (a guest that returns a token and logs it).
        let result_copy = match result {
            Ok(response) => {
                let record = || {
                    let digest = canonical_digest(&response.output);
                    let redacted =
                        self.log
                            .redactor()
                            .redact(&response.output, &self.pointers, &self.secrets);
                    // Keyed beside a copy redaction changed, as the
                    // arguments' digest is.
                    let digest = if redacted.value == response.output {
                        digest
                    } else {
                        self.log.redactor().keyed_digest(&digest)
                    };
                    let copy = capped_json(&redacted.value, self.log.config().max_copy_bytes);
                    (digest, copy, redacted.secrets)
                };
                // Digesting and redacting a large result walks all of it.
                Some(
                    if stats.output_bytes > crate::limits::IN_PLACE_RESULT_BYTES {
                        crate::off_the_worker(record)
                    } else {
                        record()
                    },
                )
            }
            Err(_) => None,
        };
        if let Some((_, _, found)) = &result_copy {
            let new: Vec<String> = found
                .iter()
                .filter(|s| !self.secrets.contains(s))
                .cloned()
                .collect();
            if !new.is_empty() {
                self.secrets.extend(new);
                self.known = airlock_audit::KnownSecrets::new(&self.secrets);
            }
        }
        // The guest's log and the host's notes on every outcome: the
        // notes in a field of their own, which the guest cannot write.
        let logs = match result {
            Ok(response) => &response.logs,
            Err(_) => &stats.logs,
        };
        if !logs.is_empty() {
            let (copy, truncated) = self.logs_copy(logs);
            entry.logs = Some(copy);
            entry.logs_truncated = truncated;
        }
        if !stats.host_notes.is_empty() {
            let notes = stats
                .host_notes
                .iter()
                .map(|note| {
                    // Bounded again once scrubbed: tokens are longer than
                    // what they replace (`;pin=a` → `;pin=[redacted:…]`).
                    let scrubbed = self.log.redactor().scrub_known(note, &self.known);
                    Value::String(bounded(&scrubbed, HOST_NOTE_BYTES))
                })
                .collect();
            // A budget of their own, which the notes' bounds keep them
            // under: a guest's requests cannot push the last notes (or the
            // line saying more were dropped) out of the record.
            let budget = self.log.config().max_copy_bytes.max(HOST_NOTES_BYTES);
            let (copy, truncated) = capped_json(&Value::Array(notes), budget);
            entry.host_notes = Some(copy);
            entry.host_notes_truncated = truncated;
        }
        match result {
            Ok(_) => {
                entry.outcome = Some("ok".to_owned());
                if let Some((digest, (copy, truncated), _)) = result_copy {
                    entry.result_digest = Some(digest);
                    entry.result = Some(copy);
                    entry.result_truncated = truncated;
                }
            }
            Err(error) => {
                entry.outcome = Some(error.kind().to_owned());
                entry.reason = Some(self.scrub(&error.to_string()));
            }
        }
        let appended = append(self.log, &entry, self.durability).await;
        self.hold = None;
        match appended {
            Ok(_) => Ok(()),
            Err(e) if held => {
                tracing::error!(error = %e, call_id = ?entry.call_id, "cannot record a call; its result is withheld");
                Err(e)
            }
            Err(e) => {
                tracing::error!(error = %e, call_id = ?entry.call_id, "cannot record a call's outcome");
                Ok(())
            }
        }
    }

    /// The guest's log lines (stdout and stderr among them) as stored:
    /// each message scrubbed like free text — the arguments' redacted
    /// values, and secret-shaped text such as `Authorization: …` lines or
    /// `?api_key=…` — then the list capped like a result copy.
    fn logs_copy(&self, lines: &[crate::LogLine]) -> (String, bool) {
        let redactor = self.log.redactor();
        let lines: Vec<Value> = lines
            .iter()
            .map(|line| {
                serde_json::json!({
                    "level": line.level.to_string(),
                    "message": redactor.scrub_known(&line.message, &self.known),
                })
            })
            .collect();
        capped_json(&Value::Array(lines), self.log.config().max_copy_bytes)
    }

    fn scrub(&self, text: &str) -> String {
        let max = self.log.config().max_copy_bytes;
        bounded(&self.log.redactor().scrub_known(text, &self.known), max)
    }
}

/// A call admitted, dropped before it finished (its caller stopped
/// waiting, and with the future the guest, if it had started): its outcome
/// recorded here, `cancelled` — with the intent, as one record, when that
/// was held; after it when it was written (a flushed intent had no outcome
/// until a restart read it as unknown). The append never blocks.
impl Drop for CallRecord<'_> {
    fn drop(&mut self) {
        let held = match self.intent {
            Intent::Held => true,
            Intent::Written => false,
            Intent::Due | Intent::Recorded => return,
        };
        let mut entry = self.take_outcome(held);
        entry.outcome = Some(CALLER_WENT_AWAY.0.to_owned());
        entry.reason = Some(CALLER_WENT_AWAY.1.to_owned());
        if let Err(e) = self.log.append_batched(&entry) {
            tracing::error!(error = %e, call_id = ?entry.call_id, "cannot record a call its caller dropped while it ran");
        }
    }
}

/// The outcome and reason recorded for an admitted call dropped before it
/// finished.
const CALLER_WENT_AWAY: (&str, &str) = (
    "cancelled",
    "the caller stopped waiting before the call finished (its future was dropped), which stopped the guest if it had started",
);

/// Append `base` as the refusal of its call by `error`, for `reason`
/// (scrubbed). A failure is logged: the call did not run.
async fn refusal(log: &AuditLog, mut entry: Entry, reason: &str, error: &CallError) {
    entry.event = Event::CallRefused;
    entry.decision = Some("refused".to_owned());
    entry.outcome = Some(error.kind().to_owned());
    entry.reason = Some(reason.to_owned());
    // A call refused under the approval it named (rejected, expired,
    // used, given for another call) names it, so the approval's records
    // and every call made under it are found together. Not one answered
    // as unknown (another principal's, or none): a caller naming someone
    // else's approval would put their calls among its records. Nor one
    // still pending: a client asking again and again would bury its
    // request and decision.
    if let CallError::ApprovalRefused {
        approval_id, why, ..
    } = error
        && *why != crate::error::ApprovalRefusal::Unknown
    {
        entry.approval_id.get_or_insert_with(|| approval_id.clone());
    }
    if let Err(e) = append(log, &entry, Durability::Batched).await {
        tracing::error!(error = %e, "cannot record a refused call");
    }
}

/// Append `entry`; a flushed append (an fsync) runs on the blocking pool so
/// it never stalls the executor thread.
pub(crate) async fn append(
    log: &AuditLog,
    entry: &Entry,
    durability: Durability,
) -> airlock_audit::Result<u64> {
    match durability {
        Durability::Batched => {
            let (seq, behind) = log.append_batched(entry)?;
            if behind {
                wait_for_room(log).await;
            }
            Ok(seq)
        }
        Durability::Flushed => {
            let (log, entry) = (log.clone(), entry.clone());
            tokio::task::spawn_blocking(move || log.append_seq(&entry, durability))
                .await
                .unwrap_or(Err(airlock_audit::Error::Closed))
        }
    }
}

/// The writer thread is behind: wait for it off the runtime's workers (a
/// blocked worker stalls every task on it, guests past their deadlines
/// among them).
async fn wait_for_room(log: &AuditLog) {
    let log = log.clone();
    let _ = tokio::task::spawn_blocking(move || log.wait_for_room()).await;
}

/// SHA-256 (hex) of the canonical JSON of `value`: the digest records and
/// approvals bind arguments and results by.
pub(crate) fn canonical_digest(value: &Value) -> String {
    sha256_hex(&airlock_audit::canonical::to_vec(value))
}

fn bounded(text: &str, max: usize) -> String {
    airlock_audit::text::bounded(text, max).into_owned()
}
