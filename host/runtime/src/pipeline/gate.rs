//! Pipeline steps 2, 4, 5 and 11: admission under the host's mode and rate
//! limits, the idempotency key (claimed, then completed, by a [`KeyClaim`])
//! and the approval gate. Each refuses with its own error kind, and fails
//! closed: when the ledger cannot say, the call does not run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use airlock_audit::Event;

use crate::approvals::expiry_reason;
use crate::audit::CallRecord;
use crate::error::{ApprovalRefusal, CallError, CallResult, Store, StoreError};
use crate::ledger::{
    Approval, ApprovalKind, ApprovalState, Claim, EXPIRY, IdempotencyState, KeyRef, Ledger,
    Transition,
};
use crate::manifest::Risk;
use crate::mode::now_ms;
use crate::plugin::{Plugin, Tool};

use super::Pipeline;
use super::request::{CallRequest, CallResponse};

/// Longest idempotency key, in bytes.
pub(crate) const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// How often a caller waiting for approval looks for the decision.
const APPROVAL_POLL: Duration = Duration::from_millis(100);

/// What step 4 decided.
pub(crate) enum Claimed<'h> {
    /// Run the call, holding its key (if it has one).
    Run(KeyClaim<'h>),
    /// The key's first outcome, replayed: the tool does not run again.
    Replay(CallResponse),
}

/// A call's hold on its idempotency key, from step 4 to step 11.
///
/// Dropped before the guest may start (the run sets the flag of
/// [`KeyClaim::started`] once it holds its slots), it releases the key: a
/// call refused at the approval gate, whose intent could not be recorded,
/// or abandoned by its caller while it waited for a slot never ran, and
/// may be retried under the same key. Dropped after, it marks the key's
/// outcome unknown: the guest was stopped with the call's future, and
/// whatever it did may have happened — never free for a second
/// execution. Otherwise [`KeyClaim::complete`] settles the key.
#[must_use = "dropping the claim releases the idempotency key"]
pub(crate) struct KeyClaim<'h> {
    ledger: &'h Ledger,
    /// The key; `None` for a call without one.
    held: Option<KeyRef>,
    /// Set once the guest may start; only for a call with a key.
    started: Option<Arc<AtomicBool>>,
}

impl<'h> KeyClaim<'h> {
    fn none(ledger: &'h Ledger) -> KeyClaim<'h> {
        KeyClaim {
            ledger,
            held: None,
            started: None,
        }
    }

    fn held(ledger: &'h Ledger, key: KeyRef) -> KeyClaim<'h> {
        KeyClaim {
            ledger,
            held: Some(key),
            started: Some(Arc::new(AtomicBool::new(false))),
        }
    }

    /// The flag the run sets once the guest may start (`None` for a call
    /// without a key: nothing to settle).
    pub(crate) fn started(&self) -> Option<Arc<AtomicBool>> {
        self.started.clone()
    }

    /// Step 11: store the outcome for replays (or release the key when the
    /// call never got to run, or mark its outcome unknown when it was
    /// stopped after it started).
    pub(crate) fn complete(mut self, result: &CallResult<CallResponse>) {
        let Some(key) = self.held.take() else {
            return;
        };
        let ledger = self.ledger;
        let started = self
            .started
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Acquire));
        // A durable write of the whole result: the worker's other tasks
        // move on meanwhile.
        let stored = crate::off_the_worker(|| match result {
            Ok(response) => ledger.complete(&key, Ok(response.output.clone())),
            // Refused before its guest could start (busy, cancelled while
            // it waited, or held to a mode switch or pause made while it
            // waited): it never ran, the key is free for a later try.
            Err(_) if !started => ledger.release(&key),
            // The tool said it failed: a definite outcome, replayed.
            Err(e @ CallError::Tool { .. }) => {
                ledger.complete(&key, Err((e.kind().to_owned(), e.to_string())))
            }
            // Stopped mid-run (cancelled, deadline, fuel, trap) or its result
            // refused after it ran: whatever it did may have happened. Not a
            // failure to retry under a new key, nor a call to run again.
            Err(e) if effects_unknown(e) => ledger.mark_unknown(&key),
            Err(e) => ledger.complete(&key, Err((e.kind().to_owned(), e.to_string()))),
        });
        if let Err(e) = stored {
            // The key stays in flight and reads as "outcome unknown" after a
            // restart: never a second execution.
            tracing::error!(error = %e.chain(), key = %key.key, "cannot store an idempotency outcome");
        }
    }
}

impl Drop for KeyClaim<'_> {
    /// The call ended without an outcome (refused, or its future dropped):
    /// give up the key if the guest never started, else mark its outcome
    /// unknown.
    fn drop(&mut self) {
        let Some(key) = self.held.take() else {
            return;
        };
        let started = self
            .started
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Acquire));
        let settled = crate::off_the_worker(|| {
            if started {
                self.ledger.mark_unknown(&key)
            } else {
                self.ledger.release(&key)
            }
        });
        if let Err(e) = settled {
            // Left in flight: "outcome unknown" after a restart.
            tracing::error!(error = %e.chain(), key = %key.key, "cannot settle the idempotency key of a call that ended without an outcome");
        }
    }
}

impl<'h> Pipeline<'h> {
    /// Step 2: admit the call under the host's mode, the paused tools and
    /// the rate limits.
    /// `Ok(true)`: the host is in read-only mode, and the call (a `read`
    /// tool) runs with every grant narrowed to reading.
    pub(crate) async fn admit(
        &self,
        plugin: &Plugin,
        tool: &Tool,
        principal: &str,
    ) -> CallResult<bool> {
        let read_only = self.mode_and_pauses(plugin, tool).await?;
        let refusal = self
            .limiter
            .admit(
                plugin.name(),
                tool.id(),
                tool.rate_limit(),
                principal,
                now_ms(),
            )
            .map_err(|e| StoreError::new(Store::RateLimits, e))?;
        if let Some((scope, wait)) = refusal {
            return Err(CallError::RateLimited {
                scope,
                retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
            });
        }
        Ok(read_only)
    }

    /// The host's mode and the paused tools, as they are now: step 2, and
    /// again when an approval lets a call that waited for it go on (a
    /// switch to read-only mode or a takeover while a human decided holds
    /// for it too). `Ok(true)`: read-only mode, and the tool a `read` one.
    async fn mode_and_pauses(&self, plugin: &Plugin, tool: &Tool) -> CallResult<bool> {
        let mode = self.mode.mode()?;
        self.mode.record_pending(self.ledger, self.audit).await?;
        self.hold_to_mode(mode, plugin, tool)
    }

    /// The same, once more, for a call that waited for its slots after it
    /// was admitted: a switch to read-only mode or a pause made meanwhile
    /// holds for it too (during an incident, the calls queued behind the
    /// slots are often those causing it). A mode switch not yet on record
    /// is recorded by the next call's admission.
    pub(crate) fn mode_and_pauses_now(&self, plugin: &Plugin, tool: &Tool) -> CallResult<bool> {
        let mode = self.mode.mode()?;
        self.hold_to_mode(mode, plugin, tool)
    }

    fn hold_to_mode(
        &self,
        mode: Option<airlock_store::Mode>,
        plugin: &Plugin,
        tool: &Tool,
    ) -> CallResult<bool> {
        let read_only = mode.as_ref().is_some_and(|m| m.read_only);
        if let Some(mode) = mode
            && mode.read_only
            && tool.risk() != Risk::Read
        {
            return Err(CallError::ReadOnlyMode {
                tool: tool.id().to_owned(),
                risk: tool.risk(),
                reason: mode.reason,
            });
        }
        // Paused by an alert's takeover or an operator, on any host.
        self.pauses.check(self.ledger, plugin.name(), tool.name())?;
        Ok(read_only)
    }

    // --------------------------------------------------------- idempotency

    /// Step 4: claim the call's idempotency key, or replay the outcome of
    /// the first call that used it.
    pub(crate) async fn claim_key(
        &self,
        request: &CallRequest,
        plugin: &Plugin,
        tool: &Tool,
        record: &CallRecord<'_>,
        call_id: &str,
    ) -> CallResult<Claimed<'h>> {
        let Some(key) = &request.idempotency_key else {
            if tool.idempotency_required() {
                return Err(CallError::IdempotencyKeyRequired {
                    tool: tool.id().to_owned(),
                });
            }
            return Ok(Claimed::Run(KeyClaim::none(self.ledger)));
        };
        if key.is_empty()
            || key.len() > MAX_IDEMPOTENCY_KEY_BYTES
            || key.chars().any(char::is_control)
        {
            return Err(CallError::IdempotencyMismatch {
                key: format!(
                    "(invalid: 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes without control characters)"
                ),
            });
        }
        let retention = Duration::from_secs(self.config.policy.approvals.idempotency_retention_s);
        let key_ref = KeyRef::new(&request.principal, plugin.name(), tool.name(), key);
        // A durable write (sled syncs it, PostgreSQL commits it): the
        // worker's other tasks move on meanwhile.
        let claim = crate::off_the_worker(|| {
            self.ledger.claim(
                &key_ref,
                record.args_digest(),
                (call_id, self.origin),
                now_ms(),
                retention,
            )
        })?;
        let entry = match claim {
            Claim::Claimed => return Ok(Claimed::Run(KeyClaim::held(self.ledger, key_ref))),
            Claim::Existing(entry) => entry,
        };
        if entry.args_digest != record.args_digest() {
            return Err(CallError::IdempotencyMismatch { key: key.clone() });
        }
        match entry.state {
            IdempotencyState::InFlight { call_id, .. } => Err(CallError::IdempotencyInUse {
                key: key.clone(),
                call_id,
            }),
            IdempotencyState::Unknown { call_id } => Err(CallError::IdempotencyOutcomeUnknown {
                key: key.clone(),
                call_id,
            }),
            IdempotencyState::Completed {
                call_id: first,
                outcome,
            } => {
                record
                    .event(Event::CallReplayed, Some("replayed"), None, None)
                    .await?;
                match outcome {
                    Ok(output) => Ok(Claimed::Replay(CallResponse {
                        call_id: call_id.to_owned(),
                        trace_id: request
                            .trace_id
                            .clone()
                            .unwrap_or_else(|| call_id.to_owned()),
                        tool: tool.id().to_owned(),
                        plugin_version: plugin.version().to_owned(),
                        output,
                        logs: Vec::new(),
                        logs_dropped: 0,
                        host_notes: Vec::new(),
                        fuel_used: 0,
                        duration: Duration::ZERO,
                        replayed_from: Some(first),
                        approval_id: None,
                    })),
                    Err((kind, message)) => Err(CallError::ReplayedFailure {
                        key: key.clone(),
                        call_id: first,
                        kind,
                        message,
                    }),
                }
            }
        }
    }

    // ----------------------------------------------------------- approvals

    fn needs_approval(&self, tool: &Tool) -> bool {
        let policy = &self.config.policy.approvals;
        tool.approval_required()
            || policy.require_for.contains(&tool.risk())
            || policy.tools.iter().any(|t| *t == tool.id())
    }

    /// Step 5: the approval gate. `Ok(Some(approved))`: the call runs
    /// under approval `approved.id` (now consumed), in the mode the host
    /// is in now; `Ok(None)`: no approval needed.
    pub(crate) async fn approval_gate(
        &self,
        request: &CallRequest,
        plugin: &Plugin,
        tool: &Tool,
        record: &CallRecord<'_>,
        call_id: &str,
    ) -> CallResult<Option<Approved>> {
        if !self.needs_approval(tool) {
            return Ok(None);
        }
        let policy = &self.config.policy.approvals;
        if policy.approvers.is_empty() {
            return Err(CallError::ApprovalUnavailable {
                tool: tool.id().to_owned(),
                reason: "no approver is configured on this host (policy.approvals.approvers), so it cannot run".into(),
            });
        }
        let id = match &request.approval_id {
            Some(id) => id.clone(),
            None => {
                // Counted and stored as one step on this host (hosts
                // sharing a store can still race: docs/scaling.md).
                let _requesting = self.approvals.requesting.lock().await;
                let (pending, expired) = self.ledger.pending_of(&request.principal, now_ms())?;
                self.approvals.record_expiries(&expired);
                if pending >= policy.max_pending_per_principal {
                    return Err(CallError::TooManyPendingApprovals {
                        principal: request.principal.clone(),
                        limit: policy.max_pending_per_principal,
                    });
                }
                let expiry = tool.approval_expiry_s().unwrap_or(policy.expiry_s);
                let created = now_ms();
                let approval = Approval {
                    id: format!("apr-{}", uuid::Uuid::now_v7()),
                    state: ApprovalState::Pending,
                    kind: ApprovalKind::Call,
                    plugin: plugin.name().to_owned(),
                    component_digest: plugin.digest().to_owned(),
                    plugin_version: Some(plugin.version().to_owned()),
                    manifest_digest: Some(plugin.manifest_digest().to_owned()),
                    tool: tool.name().to_owned(),
                    risk: tool.risk().as_str().to_owned(),
                    args_digest: record.args_digest().to_owned(),
                    args: record.args_copy().to_owned(),
                    args_truncated: record.args_truncated(),
                    args_redacted: Some(record.args_redacted()),
                    principal: request.principal.clone(),
                    session: request.session.clone(),
                    idempotency_key: request.idempotency_key.clone(),
                    caller_reason: request.reason.as_deref().map(|r| bounded(r, 1024)),
                    call_id: call_id.to_owned(),
                    created_ms: created,
                    expires_ms: created.saturating_add(expiry.saturating_mul(1000)),
                    decided_by: None,
                    decided_ms: None,
                    decision_reason: None,
                    consumed_by_call: None,
                    unknown_fields: serde_json::Map::new(),
                };
                // Recorded first: no approval exists that the log does not
                // know of (a request recorded but not stored resumes as
                // unknown, which refuses).
                record
                    .event(
                        Event::ApprovalRequested,
                        Some("approval_required"),
                        approval.caller_reason.as_deref(),
                        Some(&approval.id),
                    )
                    .await?;
                self.ledger.create_approval(&approval)?;
                if request.wait_for_approval.is_none() {
                    return Err(CallError::ApprovalPending {
                        tool: tool.id().to_owned(),
                        approval_id: approval.id,
                        expires: crate::clock::rfc3339_seconds(approval.expires_ms),
                    });
                }
                approval.id
            }
        };
        // A wait longer than any approval lives is as good as no bound
        // (and `Instant` cannot hold every `Duration`).
        let deadline = request
            .wait_for_approval
            .map(|d| Instant::now() + d.min(MAX_APPROVAL_WAIT));
        loop {
            let Some((approval, expired_now)) = self.ledger.approval(&id, now_ms())? else {
                return Err(CallError::ApprovalRefused {
                    approval_id: id,
                    reason: "no such approval".into(),
                    why: ApprovalRefusal::Unknown,
                });
            };
            if expired_now && approval.principal == request.principal {
                record
                    .event(
                        Event::ApprovalExpired,
                        Some("expired"),
                        Some(expiry_reason(&approval)),
                        Some(&id),
                    )
                    .await?;
            } else if expired_now {
                // Another principal's: its expiry is recorded as the
                // sweeper records one, not as this caller's call (which
                // would put it among the approval's records).
                self.approvals
                    .record_expiries(std::slice::from_ref(&approval));
            }
            check_binding(&approval, request, plugin, tool, record)?;
            match approval.state {
                ApprovalState::Approved => {
                    // The mode, the pauses and the rollout may have
                    // changed while the approval was pending: checked
                    // again before it is used, so a refusal leaves it for
                    // a later call.
                    let read_only = self.mode_and_pauses(plugin, tool).await?;
                    self.still_routed(&approval.id, request, plugin)?;
                    let consumed =
                        self.ledger
                            .transition(&id, ApprovalState::Approved, now_ms(), |a| {
                                a.state = ApprovalState::Consumed;
                                a.consumed_by_call = Some(call_id.to_owned());
                            })?;
                    return match consumed {
                        Transition::Done(_) => Ok(Some(Approved { id, read_only })),
                        Transition::Already(_) | Transition::NotFound => {
                            Err(CallError::ApprovalRefused {
                                approval_id: id,
                                reason: "already used by another call".into(),
                                why: ApprovalRefusal::Consumed,
                            })
                        }
                    };
                }
                ApprovalState::Pending => {
                    if deadline.is_none_or(|d| Instant::now() >= d) {
                        return Err(CallError::ApprovalPending {
                            tool: tool.id().to_owned(),
                            approval_id: id,
                            expires: crate::clock::rfc3339_seconds(approval.expires_ms),
                        });
                    }
                    let poll = tokio::time::sleep(APPROVAL_POLL);
                    if super::run::unless_cancelled(request.cancel.as_ref(), poll)
                        .await
                        .is_none()
                    {
                        return Err(CallError::Cancelled {
                            tool: tool.id().to_owned(),
                            ran: false,
                        });
                    }
                }
                other => return Err(refusal(&approval, other)),
            }
        }
    }
}

/// The approval a call runs under.
pub(crate) struct Approved {
    /// Its id.
    pub(crate) id: String,
    /// The host was in read-only mode when it was used (the tool a `read`
    /// one).
    pub(crate) read_only: bool,
}

/// The longest a caller waits for a decision; no approval lives longer.
const MAX_APPROVAL_WAIT: Duration = Duration::from_secs(366 * 24 * 60 * 60);

impl Pipeline<'_> {
    /// Whether `plugin`, the version this call resolved to, is still the
    /// one routed to it: a rollback (an operator's, or an alert's) made
    /// while an approver decided takes that version out of service, and
    /// the call it held would otherwise run it once approved. Refused as
    /// a mismatch — the approval was given for a version that no longer
    /// serves this caller; the call made again resolves to the version
    /// that does, and asks for its own approval. Asked again once the
    /// approved call holds its slots, before its guest starts: a rollback
    /// made while it waited for them refuses it then (its approval spent,
    /// its guest never started).
    pub(crate) fn still_routed(
        &self,
        approval_id: &str,
        request: &CallRequest,
        plugin: &Plugin,
    ) -> CallResult<()> {
        // As stored now: a rollback made on another host a moment ago is
        // not in this host's copy of the rollouts for up to a second.
        let routed = self.served.version_for_now(
            plugin.name(),
            &request.principal,
            request.session.as_deref(),
        )?;
        let serves = match routed.as_deref() {
            // That version as loaded here (the call resolved to it, so it
            // is, unless what the call holds is the plugins directory's
            // plugin of the same version string: another build, maybe).
            Some(version) => self
                .served
                .loaded(plugin.name(), version)
                .is_some_and(|loaded| {
                    loaded.digest() == plugin.digest()
                        && loaded.manifest_digest() == plugin.manifest_digest()
                }),
            // The plugins directory's, which a reload may have replaced.
            None => self.plugins.get(plugin.name()).is_some_and(|p| {
                p.digest() == plugin.digest() && p.manifest_digest() == plugin.manifest_digest()
            }),
        };
        if serves {
            return Ok(());
        }
        let now = routed.map_or_else(
            || "none serves it here now".to_owned(),
            |v| format!("{v} serves it now"),
        );
        Err(CallError::ApprovalRefused {
            approval_id: approval_id.to_owned(),
            reason: format!(
                "it was given for {} {}, which no longer serves this call ({now}): make the call again",
                plugin.name(),
                plugin.version()
            ),
            why: ApprovalRefusal::Mismatch,
        })
    }
}

/// An approval covers exactly one call: the same principal, component,
/// manifest (when the approval keeps it), tool, arguments, session and
/// idempotency key.
fn check_binding(
    approval: &Approval,
    request: &CallRequest,
    plugin: &Plugin,
    tool: &Tool,
    record: &CallRecord<'_>,
) -> CallResult<()> {
    let mismatch = |what: &str| {
        Err(CallError::ApprovalRefused {
            approval_id: approval.id.clone(),
            reason: format!("it was given for {what}"),
            why: ApprovalRefusal::Mismatch,
        })
    };
    // Another principal's approval is answered as one that does not
    // exist, before anything else is compared: what it was given for (its
    // tool, whether a guess of its arguments is right) is its principal's.
    if approval.principal != request.principal {
        return Err(CallError::ApprovalRefused {
            approval_id: approval.id.clone(),
            reason: "no such approval".into(),
            why: ApprovalRefusal::Unknown,
        });
    }
    if approval.kind != ApprovalKind::Call {
        return mismatch(&format!("a {}, not a call", approval.kind.as_str()));
    }
    if let Some(terms) = crate::approvals::unknown_terms(approval) {
        return Err(CallError::ApprovalRefused {
            approval_id: approval.id.clone(),
            reason: terms,
            why: ApprovalRefusal::Mismatch,
        });
    }
    if approval.plugin != plugin.name() || approval.tool != tool.name() {
        return mismatch(&format!("{}/{}", approval.plugin, approval.tool));
    }
    if approval.component_digest != plugin.digest() {
        return mismatch("another version of the plugin's component");
    }
    if approval
        .manifest_digest
        .as_deref()
        .is_some_and(|d| d != plugin.manifest_digest())
    {
        let version = approval.plugin_version.as_deref().unwrap_or("?");
        return mismatch(&format!(
            "{} {version}, whose manifest (grant, limits) is not {}'s",
            approval.plugin,
            plugin.version()
        ));
    }
    if approval.args_digest != record.args_digest() {
        return mismatch("other arguments");
    }
    if approval.session != request.session {
        return mismatch("another session");
    }
    if approval.idempotency_key != request.idempotency_key {
        return mismatch("another idempotency key");
    }
    Ok(())
}

fn refusal(approval: &Approval, state: ApprovalState) -> CallError {
    let by = approval
        .decided_by
        .as_deref()
        .map(|b| format!(" by {b}"))
        .unwrap_or_default();
    let why = approval
        .decision_reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    let (reason, kind) = match state {
        ApprovalState::Rejected => (format!("rejected{by}{why}"), ApprovalRefusal::Rejected),
        ApprovalState::Expired if approval.decided_by.as_deref() == Some(EXPIRY) => (
            "expired before anyone decided".to_owned(),
            ApprovalRefusal::Expired,
        ),
        ApprovalState::Expired => (
            format!("expired: approved{by} but not used in time"),
            ApprovalRefusal::Expired,
        ),
        ApprovalState::Cancelled => (format!("cancelled{by}"), ApprovalRefusal::Cancelled),
        _ => (
            "already used by another call".to_owned(),
            ApprovalRefusal::Consumed,
        ),
    };
    CallError::ApprovalRefused {
        approval_id: approval.id.clone(),
        reason,
        why: kind,
    }
}

/// Whether a call that ended with `error` may have had effects nobody can
/// know: it was stopped after the guest started, or its result was refused
/// after the guest finished.
fn effects_unknown(error: &CallError) -> bool {
    matches!(
        error,
        CallError::Cancelled { ran: true, .. }
            | CallError::Trap { .. }
            | CallError::OutputTooLarge { .. }
            | CallError::OutputInvalid { .. }
    ) || matches!(
        // The workspace flush after the guest ran: its other effects (an
        // HTTP request, say) happened whatever became of the flush.
        error,
        CallError::Store(StoreError {
            store: Store::Workspace,
            ..
        })
    )
}

/// `text` cut to at most `max` bytes, with a visible mark when it was cut
/// (an approver must know they are not reading all of it).
pub(crate) fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let kept = airlock_audit::text::prefix(text, max);
    format!("{kept}…[cut: {} of {} bytes shown]", kept.len(), text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeyRef {
        KeyRef::new("p", "plug", "tool", "k")
    }

    fn claim(ledger: &Ledger) -> Claim {
        ledger
            .claim(
                &key(),
                "digest",
                ("call-1", "local"),
                now_ms(),
                Duration::from_secs(60),
            )
            .unwrap()
    }

    fn guard(ledger: &Ledger) -> KeyClaim<'_> {
        KeyClaim::held(ledger, key())
    }

    fn temporary() -> Ledger {
        Ledger::new(Arc::new(airlock_store::MemoryStore::new()))
    }

    #[test]
    fn a_claim_dropped_before_the_guest_may_run_frees_the_key() {
        let ledger = temporary();
        assert!(matches!(claim(&ledger), Claim::Claimed));
        drop(guard(&ledger));
        assert!(matches!(claim(&ledger), Claim::Claimed));
    }

    #[test]
    fn a_claim_dropped_once_the_guest_may_run_leaves_its_outcome_unknown() {
        let ledger = temporary();
        assert!(matches!(claim(&ledger), Claim::Claimed));
        let held = guard(&ledger);
        let started = held.started().unwrap();
        started.store(true, Ordering::Release);
        drop(held);
        let Claim::Existing(entry) = claim(&ledger) else {
            panic!("the key was freed");
        };
        assert!(
            matches!(entry.state, IdempotencyState::Unknown { .. }),
            "{:?}",
            entry.state
        );
    }

    /// The workspace flush fails after the guest ran: whatever else it did
    /// (an HTTP request) happened, so the key's outcome is unknown, not a
    /// failure replayed to a retry that then runs under a new key.
    #[test]
    fn a_workspace_flush_failure_after_the_run_is_an_unknown_outcome() {
        let failed = airlock_store::StoreError::corrupt("disk full");
        let workspace = CallError::Store(StoreError::new(Store::Workspace, failed));
        assert!(effects_unknown(&workspace));
        let ledger = CallError::Store(StoreError::new(
            Store::Ledger,
            airlock_store::StoreError::corrupt("x"),
        ));
        assert!(!effects_unknown(&ledger));
    }

    #[test]
    fn a_cut_reason_says_it_was_cut() {
        assert_eq!(bounded("short", 1024), "short");
        let long = "é".repeat(600);
        let cut = bounded(&long, 1023);
        assert!(cut.ends_with("…[cut: 1022 of 1200 bytes shown]"), "{cut}");
    }
}
