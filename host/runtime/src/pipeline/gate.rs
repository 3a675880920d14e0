//! Pipeline steps 2, 4 and 5: the host's mode, idempotency keys and the
//! approval gate. Each refuses with its own error kind, and fails closed:
//! when the ledger cannot say, the call does not run.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use airlock_audit::Event;
use serde::{Deserialize, Serialize};

use crate::audit::CallRecord;
use crate::error::{Error, Result};
use crate::ledger::{Approval, ApprovalState, Claim, EXPIRY, IdempotencyState};
use crate::manifest::Risk;
use crate::pipeline::{CallRequest, CallResponse};
use crate::plugin::{Plugin, Tool};

/// The mode file inside the data directory.
pub const MODE_FILE: &str = "mode.json";
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// How often a caller waiting for approval looks for the decision.
const APPROVAL_POLL: Duration = Duration::from_millis(100);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

// ------------------------------------------------------------------ mode

/// The operator's switch (`mode.json` in the data directory): read-only
/// refuses every tool that is not `read`. A file, so an operator can flip it
/// while a host runs; each host records every switch it sees in the audit
/// log, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mode {
    /// Refuse everything but `read` tools.
    pub read_only: bool,
    /// Unique id of this switch.
    pub id: String,
    /// Who switched.
    pub by: String,
    /// Why.
    pub reason: Option<String>,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

/// Write `mode` to `data_dir` atomically.
///
/// # Errors
/// [`Error::Io`].
pub fn write_mode(data_dir: &Path, mode: &Mode) -> Result<()> {
    let path = data_dir.join(MODE_FILE);
    let tmp = data_dir.join(format!("{MODE_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(mode).map_err(|e| Error::Config {
        message: format!("cannot encode the mode: {e}"),
    })?;
    std::fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::io(&path, e))
}

/// Watches the mode file; cheap enough for every call (one `stat`).
#[derive(Debug)]
pub(crate) struct ModeWatch {
    path: Option<PathBuf>,
    seen: Mutex<Option<(SystemTime, u64, Option<Mode>)>>,
    /// Set by [`Host::set_mode`] for hosts without a data directory.
    memory: Mutex<Option<Mode>>,
}

impl ModeWatch {
    pub(crate) fn new(data_dir: Option<&Path>) -> ModeWatch {
        ModeWatch {
            path: data_dir.map(|d| d.join(MODE_FILE)),
            seen: Mutex::new(None),
            memory: Mutex::new(None),
        }
    }

    /// The current mode, and whether it changed since last asked.
    fn current(&self) -> Result<(Option<Mode>, bool)> {
        let Some(path) = &self.path else {
            let memory = self.memory.lock().map(|m| m.clone()).unwrap_or_default();
            return Ok((memory, false));
        };
        let meta = match std::fs::metadata(path) {
            Ok(meta) => Some((meta.modified().unwrap_or(UNIX_EPOCH), meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            // Cannot tell the mode: fail closed.
            Err(e) => return Err(Error::io(path, e)),
        };
        let mut seen = self.seen.lock().map_err(|_| Error::Config {
            message: "mode watcher poisoned".into(),
        })?;
        match (&*seen, meta) {
            (Some((t, len, mode)), Some((t2, len2))) if *t == t2 && *len == len2 => {
                Ok((mode.clone(), false))
            }
            (None, None) => Ok((None, false)),
            (_, None) => {
                *seen = None;
                Ok((None, true))
            }
            (_, Some((t, len))) => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                let mode: Mode = serde_json::from_str(&text).map_err(|e| Error::Config {
                    message: format!("{} is not a valid mode file: {e}", path.display()),
                })?;
                *seen = Some((t, len, Some(mode.clone())));
                Ok((Some(mode), true))
            }
        }
    }
}

impl crate::Host {
    /// Switch the host to read-only mode (refuse every tool that is not
    /// `read`) or back, recording the switch in the audit log. With a data
    /// directory the switch is the mode file, which other processes (and
    /// `airlock mode`) see too.
    ///
    /// # Errors
    /// [`Error::Io`] writing the mode file; [`Error::AuditUnavailable`].
    pub async fn set_mode(&self, read_only: bool, by: &str, reason: Option<&str>) -> Result<Mode> {
        let mode = Mode {
            read_only,
            id: uuid::Uuid::now_v7().to_string(),
            by: by.to_owned(),
            reason: reason.map(str::to_owned),
            at_ms: now_ms(),
        };
        match &self.config().data_dir {
            Some(dir) => write_mode(dir, &mode)?,
            None => {
                if let Ok(mut m) = self.mode.memory.lock() {
                    *m = Some(mode.clone());
                }
                self.record_mode(&mode).await?;
            }
        }
        // Observe (and record) it now rather than at the next call.
        self.mode()?;
        let _ = self.record_pending_mode().await;
        Ok(mode)
    }

    /// The current mode (`None`: normal, never switched).
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Config`] when the mode file is unreadable.
    pub fn mode(&self) -> Result<Option<Mode>> {
        let (mode, changed) = self.mode.current()?;
        if changed
            && let Some(m) = &mode
            && let Ok(mut pending) = self.mode_pending.lock()
        {
            *pending = Some(m.clone());
        }
        Ok(mode)
    }

    async fn record_mode(&self, mode: &Mode) -> Result<()> {
        let recorded = self.ledger.meta("mode_recorded")?;
        if recorded.as_deref() == Some(mode.id.as_str()) {
            return Ok(());
        }
        let mut entry = airlock_audit::Entry::new(Event::ModeChanged);
        entry.principal = Some(mode.by.clone());
        entry.decision = Some(
            if mode.read_only {
                "read_only"
            } else {
                "normal"
            }
            .to_owned(),
        );
        entry.reason = mode.reason.clone();
        crate::audit::append(&self.audit, entry, airlock_audit::Durability::Flushed)
            .await
            .map_err(|e| Error::AuditUnavailable {
                message: e.to_string(),
            })?;
        self.ledger.set_meta("mode_recorded", &mode.id)
    }

    async fn record_pending_mode(&self) -> Result<()> {
        let pending = self.mode_pending.lock().ok().and_then(|mut p| p.take());
        if let Some(mode) = pending {
            self.record_mode(&mode).await?;
        }
        Ok(())
    }

    /// Step 2: admit the call under the host's mode and rate limits.
    /// `Ok(true)`: the host is in read-only mode, and the call (a `read`
    /// tool) runs with every grant narrowed to reading.
    pub(crate) async fn admit(
        &self,
        plugin: &Plugin,
        tool: &Tool,
        principal: &str,
    ) -> Result<bool> {
        let mode = self.mode()?;
        self.record_pending_mode().await?;
        let read_only = mode.as_ref().is_some_and(|m| m.read_only);
        if let Some(mode) = mode
            && mode.read_only
            && tool.risk() != Risk::Read
        {
            return Err(Error::ReadOnlyMode {
                tool: tool.id(),
                risk: tool.risk().as_str().to_owned(),
                reason: mode.reason,
            });
        }
        self.limiter
            .admit(plugin.name(), &tool.id(), tool.rate_limit(), principal)
            .map_err(|(scope, wait)| Error::RateLimited {
                scope,
                retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
            })?;
        Ok(read_only)
    }

    // --------------------------------------------------------- idempotency

    /// Step 4: claim the call's idempotency key. `Ok(None)`: run the call;
    /// `Ok(Some(response))`: the stored outcome, replayed.
    pub(crate) async fn claim_key(
        &self,
        request: &CallRequest,
        plugin: &Plugin,
        tool: &Tool,
        record: &CallRecord<'_>,
        call_id: &str,
    ) -> Result<Option<CallResponse>> {
        let Some(key) = &request.idempotency_key else {
            if tool.idempotency_required() {
                return Err(Error::IdempotencyKeyRequired { tool: tool.id() });
            }
            return Ok(None);
        };
        if key.is_empty()
            || key.len() > MAX_IDEMPOTENCY_KEY_BYTES
            || key.chars().any(char::is_control)
        {
            return Err(Error::IdempotencyMismatch {
                key: format!(
                    "(invalid: 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes without control characters)"
                ),
            });
        }
        let retention = Duration::from_secs(self.config().policy.approvals.idempotency_retention_s);
        let claim = self.ledger.claim(
            &request.principal,
            plugin.name(),
            tool.name(),
            key,
            record.args_digest(),
            call_id,
            now_ms(),
            retention,
        )?;
        let entry = match claim {
            Claim::Claimed => return Ok(None),
            Claim::Existing(entry) => entry,
        };
        if entry.args_digest != record.args_digest() {
            return Err(Error::IdempotencyMismatch { key: key.clone() });
        }
        match entry.state {
            IdempotencyState::InFlight { call_id } => Err(Error::IdempotencyInUse {
                key: key.clone(),
                call_id,
            }),
            IdempotencyState::Unknown { call_id } => Err(Error::IdempotencyOutcomeUnknown {
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
                    Ok(output) => Ok(Some(CallResponse {
                        call_id: call_id.to_owned(),
                        trace_id: request
                            .trace_id
                            .clone()
                            .unwrap_or_else(|| call_id.to_owned()),
                        tool: tool.id(),
                        output,
                        logs: Vec::new(),
                        logs_dropped: 0,
                        fuel_used: 0,
                        duration: Duration::ZERO,
                        replayed_from: Some(first),
                        approval_id: None,
                    })),
                    Err((kind, message)) => Err(Error::ReplayedFailure {
                        key: key.clone(),
                        call_id: first,
                        kind,
                        message,
                    }),
                }
            }
        }
    }

    /// Step 11: store the outcome for replays (or release the key when the
    /// call never got to run).
    pub(crate) fn complete_key(
        &self,
        request: &CallRequest,
        plugin: &Plugin,
        tool: &Tool,
        result: &Result<CallResponse>,
    ) {
        let Some(key) = &request.idempotency_key else {
            return;
        };
        let (principal, p, t) = (&request.principal, plugin.name(), tool.name());
        let stored = match result {
            Ok(response) => self
                .ledger
                .complete(principal, p, t, key, Ok(response.output.clone())),
            Err(
                Error::PluginBusy { .. }
                | Error::HostBusy { .. }
                | Error::Cancelled { ran: false, .. },
            ) => self.ledger.release(principal, p, t, key),
            // The tool said it failed: a definite outcome, replayed.
            Err(e @ Error::Tool { .. }) => self.ledger.complete(
                principal,
                p,
                t,
                key,
                Err((e.kind().to_owned(), e.to_string())),
            ),
            // Stopped mid-run (cancelled, deadline, fuel, trap) or its result
            // refused after it ran: whatever it did may have happened. Not a
            // failure to retry under a new key, nor a call to run again.
            Err(e) if effects_unknown(e) => self.ledger.mark_unknown(principal, p, t, key),
            Err(e) => self.ledger.complete(
                principal,
                p,
                t,
                key,
                Err((e.kind().to_owned(), e.to_string())),
            ),
        };
        if let Err(e) = stored {
            // The key stays in flight and reads as "outcome unknown" after a
            // restart: never a second execution.
            tracing::error!(error = %e, key = %key, "cannot store an idempotency outcome");
        }
    }

    /// Give up the call's key without an outcome (it did not run).
    pub(crate) fn release_key(&self, request: &CallRequest, plugin: &Plugin, tool: &Tool) {
        if let Some(key) = &request.idempotency_key
            && let Err(e) = self
                .ledger
                .release(&request.principal, plugin.name(), tool.name(), key)
        {
            tracing::error!(error = %e, key = %key, "cannot release an idempotency key");
        }
    }

    // ----------------------------------------------------------- approvals

    fn needs_approval(&self, tool: &Tool) -> bool {
        let policy = &self.config().policy.approvals;
        tool.approval_required()
            || policy.require_for.contains(&tool.risk())
            || policy.tools.iter().any(|t| *t == tool.id())
    }

    /// Step 5: the approval gate. `Ok(Some(id))`: the call runs under
    /// approval `id` (now consumed); `Ok(None)`: no approval needed.
    pub(crate) async fn approval_gate(
        &self,
        request: &CallRequest,
        plugin: &Plugin,
        tool: &Tool,
        record: &CallRecord<'_>,
        call_id: &str,
    ) -> Result<Option<String>> {
        if !self.needs_approval(tool) {
            return Ok(None);
        }
        let policy = &self.config().policy.approvals;
        if policy.approvers.is_empty() {
            return Err(Error::ApprovalUnavailable {
                tool: tool.id(),
                reason: "no approver is configured on this host (policy.approvals.approvers), so it cannot run".into(),
            });
        }
        let id = match &request.approval_id {
            Some(id) => id.clone(),
            None => {
                let (pending, expired) = self.ledger.pending_of(&request.principal, now_ms())?;
                self.record_expiries(&expired);
                if pending >= policy.max_pending_per_principal {
                    return Err(Error::TooManyPendingApprovals {
                        principal: request.principal.clone(),
                        limit: policy.max_pending_per_principal,
                    });
                }
                let expiry = tool.approval_expiry_s().unwrap_or(policy.expiry_s);
                let created = now_ms();
                let approval = Approval {
                    id: format!("apr-{}", uuid::Uuid::now_v7()),
                    state: ApprovalState::Pending,
                    plugin: plugin.name().to_owned(),
                    component_digest: plugin.digest().to_owned(),
                    tool: tool.name().to_owned(),
                    risk: tool.risk().as_str().to_owned(),
                    args_digest: record.args_digest().to_owned(),
                    args: record.args_copy().to_owned(),
                    args_truncated: record.args_truncated(),
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
                    return Err(Error::ApprovalPending {
                        tool: tool.id(),
                        approval_id: approval.id,
                        expires: rfc3339(approval.expires_ms),
                    });
                }
                approval.id
            }
        };
        let deadline = request.wait_for_approval.map(|d| Instant::now() + d);
        loop {
            let Some((approval, expired_now)) = self.ledger.approval(&id, now_ms())? else {
                return Err(Error::ApprovalRefused {
                    approval_id: id,
                    reason: "no such approval".into(),
                    why: "unknown",
                });
            };
            if expired_now {
                record
                    .event(
                        Event::ApprovalExpired,
                        Some("expired"),
                        Some(expiry_reason(&approval)),
                        Some(&id),
                    )
                    .await?;
            }
            check_binding(&approval, request, plugin, tool, record)?;
            match approval.state {
                ApprovalState::Approved => {
                    let consumed =
                        self.ledger
                            .transition(&id, ApprovalState::Approved, now_ms(), |a| {
                                a.state = ApprovalState::Consumed;
                                a.consumed_by_call = Some(call_id.to_owned());
                            })?;
                    return match consumed {
                        Ok(_) => Ok(Some(id)),
                        Err(_) => Err(Error::ApprovalRefused {
                            approval_id: id,
                            reason: "already used by another call".into(),
                            why: "consumed",
                        }),
                    };
                }
                ApprovalState::Pending => {
                    if deadline.is_none_or(|d| Instant::now() >= d) {
                        return Err(Error::ApprovalPending {
                            tool: tool.id(),
                            approval_id: id,
                            expires: rfc3339(approval.expires_ms),
                        });
                    }
                    let poll = tokio::time::sleep(APPROVAL_POLL);
                    if crate::pipeline::unless_cancelled(request.cancel.as_ref(), poll)
                        .await
                        .is_none()
                    {
                        return Err(Error::Cancelled {
                            tool: tool.id(),
                            ran: false,
                        });
                    }
                }
                other => return Err(refusal(&approval, other)),
            }
        }
    }

    /// An approver's decision on approval `id`. The first decision wins;
    /// the approver must be configured, present their token, and not be the
    /// caller. Recorded in the audit log.
    ///
    /// # Errors
    /// [`Error::DecisionRefused`] saying why; [`Error::Ledger`],
    /// [`Error::AuditUnavailable`].
    pub async fn decide(
        &self,
        id: &str,
        approver: &str,
        token: &str,
        approve: bool,
        reason: Option<&str>,
    ) -> Result<Approval> {
        let policy = &self.config().policy.approvals;
        let refused = |reason: String| Err(Error::DecisionRefused { reason });
        let Some(who) = policy.authenticate(approver, token) else {
            return refused(format!(
                "`{approver}` is not a configured approver, or the token is wrong"
            ));
        };
        let Some((current, _)) = self.ledger.approval(id, now_ms())? else {
            return refused(format!("no approval {id}"));
        };
        if current.principal == who.name {
            return refused("an approver cannot decide on their own call".into());
        }
        if !approve && reason.is_none_or(|r| r.trim().is_empty()) {
            return refused("a rejection needs a reason".into());
        }
        let use_window = policy.approved_expiry_s.saturating_mul(1000);
        let decided = self
            .ledger
            .transition(id, ApprovalState::Pending, now_ms(), |a| {
                let now = now_ms();
                a.state = if approve {
                    // A new window in which the approved call must run.
                    a.expires_ms = now.saturating_add(use_window);
                    ApprovalState::Approved
                } else {
                    ApprovalState::Rejected
                };
                a.decided_by = Some(who.name.clone());
                a.decided_ms = Some(now);
                a.decision_reason = reason.map(|r| bounded(r, 1024));
            })?;
        let approval = match decided {
            Ok(approval) => approval,
            Err(Some(other)) => {
                return refused(format!(
                    "approval {id} is already {}{}",
                    other.state.as_str(),
                    other
                        .decided_by
                        .map(|b| format!(" (by {b})"))
                        .unwrap_or_default()
                ));
            }
            Err(None) => return refused(format!("no approval {id}")),
        };
        let mut entry = approval_entry(Event::ApprovalDecided, &approval);
        entry.principal = Some(who.name.clone());
        entry.decision = Some(approval.state.as_str().to_owned());
        entry.reason = approval.decision_reason.clone();
        crate::audit::append(&self.audit, entry, airlock_audit::Durability::Flushed)
            .await
            .map_err(|e| Error::AuditUnavailable {
                message: e.to_string(),
            })?;
        Ok(approval)
    }

    /// Approvals, newest first, optionally only those in `state`. Any that
    /// expire on the way are recorded in the audit log.
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn approvals(&self, state: Option<ApprovalState>) -> Result<Vec<Approval>> {
        let (list, expired) = self.ledger.approvals(state, now_ms())?;
        self.record_expiries(&expired);
        Ok(list)
    }

    /// The approval `id` (recorded in the audit log if it expires on the
    /// way).
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn approval(&self, id: &str) -> Result<Option<Approval>> {
        let found = self.ledger.approval(id, now_ms())?;
        if let Some((a, true)) = &found {
            self.record_expiries(std::slice::from_ref(a));
        }
        Ok(found.map(|(a, _)| a))
    }

    /// Expire overdue approvals (recording each) and forget what is past
    /// its retention: terminal approvals after `policy.approvals.retention_s`,
    /// finished idempotency entries after `idempotency_retention_s`. Runs by
    /// itself every `sweep_interval_s` while calls arrive.
    ///
    /// # Errors
    /// [`Error::Ledger`].
    pub fn sweep_ledger(&self) -> Result<crate::ledger::SweepReport> {
        let policy = &self.config().policy.approvals;
        let report = self.ledger.sweep(
            now_ms(),
            Duration::from_secs(policy.retention_s),
            Duration::from_secs(policy.idempotency_retention_s),
        )?;
        self.record_expiries(&report.expired);
        if report.approvals_removed + report.keys_removed > 0 || !report.expired.is_empty() {
            tracing::info!(
                expired = report.expired.len(),
                approvals_removed = report.approvals_removed,
                keys_removed = report.keys_removed,
                "ledger swept"
            );
        }
        Ok(report)
    }

    /// Sweep the ledger if `sweep_interval_s` has passed since the last
    /// sweep (one caller sweeps; the others go on).
    pub(crate) fn sweep_if_due(&self) {
        use std::sync::atomic::Ordering;
        let interval = self
            .config()
            .policy
            .approvals
            .sweep_interval_s
            .saturating_mul(1000);
        let now = now_ms();
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < interval
            || self
                .last_sweep_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let Err(e) = self.sweep_ledger() {
            tracing::error!(error = %e, "cannot sweep the ledger");
        }
    }

    /// Record each of `expired` as `approval_expired` (batched: an expiry
    /// precedes no side effect). A failure is logged; the approval stays
    /// expired either way.
    fn record_expiries(&self, expired: &[Approval]) {
        for approval in expired {
            let mut entry = approval_entry(Event::ApprovalExpired, approval);
            entry.principal = Some(approval.principal.clone());
            entry.decision = Some("expired".to_owned());
            entry.reason = Some(expiry_reason(approval).to_owned());
            if let Err(e) = self.audit.append(entry, airlock_audit::Durability::Batched) {
                tracing::error!(error = %e, approval = %approval.id, "cannot record an approval's expiry");
            }
        }
    }
}

/// An approval covers exactly one call: same component, tool, arguments,
/// principal and idempotency key.
fn check_binding(
    approval: &Approval,
    request: &CallRequest,
    plugin: &Plugin,
    tool: &Tool,
    record: &CallRecord<'_>,
) -> Result<()> {
    let mismatch = |what: &str| {
        Err(Error::ApprovalRefused {
            approval_id: approval.id.clone(),
            reason: format!("it was given for {what}"),
            why: "mismatch",
        })
    };
    if approval.plugin != plugin.name() || approval.tool != tool.name() {
        return mismatch(&format!("{}/{}", approval.plugin, approval.tool));
    }
    if approval.component_digest != plugin.digest() {
        return mismatch("another version of the plugin's component");
    }
    if approval.args_digest != record.args_digest() {
        return mismatch("other arguments");
    }
    if approval.principal != request.principal {
        return mismatch("another principal");
    }
    if approval.session != request.session {
        return mismatch("another session");
    }
    if approval.idempotency_key != request.idempotency_key {
        return mismatch("another idempotency key");
    }
    Ok(())
}

fn refusal(approval: &Approval, state: ApprovalState) -> Error {
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
        ApprovalState::Rejected => (format!("rejected{by}{why}"), "rejected"),
        ApprovalState::Expired if approval.decided_by.as_deref() == Some(EXPIRY) => {
            ("expired before anyone decided".to_owned(), "expired")
        }
        ApprovalState::Expired => (
            format!("expired: approved{by} but not used in time"),
            "expired",
        ),
        ApprovalState::Cancelled => (format!("cancelled{by}"), "cancelled"),
        _ => ("already used by another call".to_owned(), "consumed"),
    };
    Error::ApprovalRefused {
        approval_id: approval.id.clone(),
        reason,
        why: kind,
    }
}

/// An audit entry for `event` about `approval`: the call it was asked for
/// and everything it binds.
fn approval_entry(event: Event, approval: &Approval) -> airlock_audit::Entry {
    let mut entry = airlock_audit::Entry::new(event);
    entry.call_id = Some(approval.call_id.clone());
    entry.plugin = Some(approval.plugin.clone());
    entry.component_digest = Some(approval.component_digest.clone());
    entry.tool = Some(approval.tool.clone());
    entry.risk = Some(approval.risk.clone());
    entry.approval_id = Some(approval.id.clone());
    entry.idempotency_key = approval.idempotency_key.clone();
    entry.args_digest = Some(approval.args_digest.clone());
    entry
}

/// Why `approval` expired, as recorded.
fn expiry_reason(approval: &Approval) -> &'static str {
    if approval.decided_by.as_deref() == Some(EXPIRY) {
        "not decided in time"
    } else {
        "approved but not used in time"
    }
}

/// Whether a call that ended with `error` may have had effects nobody can
/// know: it was stopped after the guest started, or its result was refused
/// after the guest finished.
fn effects_unknown(error: &Error) -> bool {
    matches!(
        error,
        Error::Cancelled { ran: true, .. }
            | Error::Trap { .. }
            | Error::OutputTooLarge { .. }
            | Error::OutputInvalid { .. }
    )
}

/// `text` cut to at most `max` bytes, with a visible mark when it was cut
/// (an approver must know they are not reading all of it).
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}…[cut: {cut} of {} bytes shown]",
        &text[..cut],
        text.len()
    )
}

#[cfg(test)]
mod tests {
    use super::bounded;

    #[test]
    fn a_cut_reason_says_it_was_cut() {
        assert_eq!(bounded("short", 1024), "short");
        let long = "é".repeat(600);
        let cut = bounded(&long, 1023);
        assert!(cut.ends_with("…[cut: 1022 of 1200 bytes shown]"), "{cut}");
    }
}
