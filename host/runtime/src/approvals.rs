//! Approvals seen from outside a call: an approver's decision, the list,
//! expiry and the ledger's sweep. The approval gate a call passes through
//! (pipeline step 5) is in `pipeline/gate.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use airlock_audit::{AuditLog, Event};

use crate::error::{Error, Result};
use crate::ledger::{
    Approval, ApprovalPolicy, ApprovalState, EXPIRY, Ledger, SweepReport, Transition,
};
use crate::mode::now_ms;
use crate::pipeline::gate::bounded;

/// An approver's verdict on a held call ([`Host::decide`](crate::Host::decide)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let the call run. Refused with [`Error::UnseenArguments`] when no
    /// approver can see every argument the tool would receive
    /// ([`unseen_arguments`]).
    Approve,
    /// Let the call run although some of its argument values cannot be
    /// shown: the approver says they approve without seeing them.
    ApproveUnseen,
    /// Refuse the call (a reason is required).
    Reject,
}

impl Verdict {
    /// The verdict of an approver's two answers: approve or reject, and
    /// whether they acknowledged approving arguments they cannot see
    /// (ignored when rejecting).
    ///
    /// ```
    /// use airlock_host::Verdict;
    /// assert_eq!(Verdict::from_answers(true, false), Verdict::Approve);
    /// assert_eq!(Verdict::from_answers(true, true), Verdict::ApproveUnseen);
    /// assert_eq!(Verdict::from_answers(false, true), Verdict::Reject);
    /// ```
    pub fn from_answers(approve: bool, unseen: bool) -> Verdict {
        match (approve, unseen) {
            (false, _) => Verdict::Reject,
            (true, true) => Verdict::ApproveUnseen,
            (true, false) => Verdict::Approve,
        }
    }

    fn approves(self) -> bool {
        !matches!(self, Verdict::Reject)
    }
}

/// What of an approval's arguments no approver can see, if anything:
/// values redaction replaced before the copy was stored, or a copy cut at
/// its size cap. The tool receives them as the caller sent them, so a
/// caller could hide what runs behind a secret-shaped value or past the
/// cut; approving such a call takes [`Verdict::ApproveUnseen`].
pub fn unseen_arguments(approval: &Approval) -> Option<&'static str> {
    let redacted = approval
        .args_redacted
        .unwrap_or_else(|| airlock_audit::shows_redaction(&approval.args));
    match (redacted, approval.args_truncated) {
        (true, true) => Some(
            "values were redacted before they were stored, and the arguments were cut at the audit copy's size cap",
        ),
        (true, false) => Some("values were redacted before they were stored"),
        (false, true) => Some("the arguments were cut at the audit copy's size cap"),
        (false, false) => None,
    }
}

/// Why an approval cannot be used on this host, if it carries fields a
/// newer host wrote: terms this version does not know may bind more than
/// it checks, so it refuses to run anything under it (fail closed) and
/// names a few of them.
pub(crate) fn unknown_terms(approval: &Approval) -> Option<String> {
    if approval.unknown_fields.is_empty() {
        return None;
    }
    let mut names: Vec<String> = approval
        .unknown_fields
        .keys()
        .take(3)
        .map(|name| format!("{:?}", airlock_audit::text::bounded(name, 64)))
        .collect();
    if approval.unknown_fields.len() > names.len() {
        names.push("…".to_owned());
    }
    Some(format!(
        "it holds terms this host does not know ({}), written by a newer Airlock: use it on a host of that version",
        names.join(", ")
    ))
}

/// The parts of a host approvals use, borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Approvals<'h> {
    pub(crate) ledger: &'h Ledger,
    pub(crate) audit: &'h AuditLog,
    pub(crate) policy: &'h ApprovalPolicy,
    /// When the ledger was last swept, ms since the Unix epoch.
    pub(crate) last_sweep_ms: &'h AtomicU64,
    /// Held from counting a principal's pending approvals to storing the
    /// new request: one request at a time on this host, so that calls in
    /// flight together cannot each count the others out and all be
    /// stored past `max_pending_per_principal`.
    pub(crate) requesting: &'h tokio::sync::Mutex<()>,
}

impl Approvals<'_> {
    /// An approver's decision on approval `id` (see
    /// [`Host::decide`](crate::Host::decide)).
    pub(crate) async fn decide(
        self,
        id: &str,
        approver: &str,
        token: &str,
        verdict: Verdict,
        reason: Option<&str>,
    ) -> Result<Approval> {
        let approve = verdict.approves();
        let policy = self.policy;
        let refused = |reason: String| Err(Error::DecisionRefused { reason });
        let Some(who) = policy.authenticate(approver, token) else {
            return refused(format!(
                "`{approver}` is not a configured approver, or the token is wrong"
            ));
        };
        let Some((current, expired_now)) = self.ledger.approval(id, now_ms())? else {
            return refused(format!("no approval {id}"));
        };
        if expired_now {
            // This read expired it: recorded here, or never (no sweep
            // sees an expired approval again).
            self.record_expiries(std::slice::from_ref(&current));
        }
        if current.principal == who.name {
            return refused("an approver cannot decide on their own call".into());
        }
        if !approve && reason.is_none_or(|r| r.trim().is_empty()) {
            return refused("a rejection needs a reason".into());
        }
        if current.state != ApprovalState::Pending {
            return refused(already(id, &current));
        }
        if verdict == Verdict::Approve
            && let Some(hidden) = unseen_arguments(&current)
        {
            return Err(Error::UnseenArguments {
                id: id.to_owned(),
                hidden,
            });
        }
        // Recorded first: no decision takes effect that the log does not
        // know of (stored first, a decision whose record failed let the
        // call run with no record of who allowed it). A decision that then
        // finds the approval decided or expired is recorded as lost.
        let decision = if approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Rejected
        };
        let mut entry = approval_entry(self.audit, Event::ApprovalDecided, &current);
        entry.principal = Some(who.name.clone());
        entry.decision = Some(decision.as_str().to_owned());
        entry.reason = reason.map(|r| bounded(r, 1024));
        crate::audit::append(self.audit, &entry, airlock_audit::Durability::Flushed)
            .await
            .map_err(Error::AuditUnavailable)?;
        let use_window = policy.approved_expiry_s.saturating_mul(1000);
        let decided = self
            .ledger
            .transition(id, ApprovalState::Pending, now_ms(), |a| {
                let now = now_ms();
                if approve {
                    // A new window in which the approved call must run.
                    a.expires_ms = now.saturating_add(use_window);
                }
                a.state = decision;
                a.decided_by = Some(who.name.clone());
                a.decided_ms = Some(now);
                a.decision_reason = reason.map(|r| bounded(r, 1024));
            })?;
        let why = match decided {
            Transition::Done(approval) => return Ok(approval),
            Transition::Already(other) => already(id, &other),
            Transition::NotFound => format!("no approval {id}"),
        };
        entry.reason = Some(format!(
            "the decision recorded before this one ({} by {}) did not take effect: {why}",
            decision.as_str(),
            who.name
        ));
        entry.decision = Some("lost".to_owned());
        if let Err(e) =
            crate::audit::append(self.audit, &entry, airlock_audit::Durability::Flushed).await
        {
            tracing::error!(error = %e, approval = %id, "cannot record that a decision did not take effect");
        }
        refused(why)
    }

    /// Approvals, newest first, optionally only those in `state`; any that
    /// expire on the way are recorded.
    pub(crate) fn list(self, state: Option<ApprovalState>) -> Result<Vec<Approval>> {
        let listed = self.ledger.approvals(state, now_ms())?;
        self.record_expiries(&listed.expired);
        if let Some(first) = listed.unreadable.first() {
            tracing::error!(
                unreadable = listed.unreadable.len(),
                first = %first,
                "stored approvals that cannot be read are left out of the listing"
            );
        }
        Ok(listed.list)
    }

    /// The approval `id` (recorded if it expires on the way).
    pub(crate) fn get(self, id: &str) -> Result<Option<Approval>> {
        let found = self.ledger.approval(id, now_ms())?;
        if let Some((a, true)) = &found {
            self.record_expiries(std::slice::from_ref(a));
        }
        Ok(found.map(|(a, _)| a))
    }

    /// Expire overdue approvals (recording each) and forget what is past
    /// its retention (see [`Host::sweep_ledger`](crate::Host::sweep_ledger)).
    pub(crate) fn sweep(self) -> Result<SweepReport> {
        let policy = self.policy;
        let report = self.ledger.sweep(
            now_ms(),
            Duration::from_secs(policy.retention_s),
            Duration::from_secs(policy.idempotency_retention_s),
        )?;
        self.record_expiries(&report.expired);
        if let Some(first) = report.unreadable.first() {
            tracing::error!(
                unreadable = report.unreadable.len(),
                first = %first,
                "ledger entries that cannot be read are left in place: calls with their idempotency keys or approvals fail"
            );
        }
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
    pub(crate) fn sweep_if_due(self) {
        let interval = self.policy.sweep_interval_s.saturating_mul(1000);
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
        // It reads every approval and key: the call that happens to run
        // it waits, the worker's other tasks move on.
        if let Err(e) = crate::off_the_worker(|| self.sweep()) {
            tracing::error!(error = %e, "cannot sweep the ledger");
        }
    }

    /// Record each of `expired` as `approval_expired` (batched: an expiry
    /// precedes no side effect). A failure is logged; the approval stays
    /// expired either way.
    pub(crate) fn record_expiries(self, expired: &[Approval]) {
        record_expiries(self.audit, expired);
    }
}

/// Record each of `expired` (approvals that expired on the way) as
/// `approval_expired`.
pub(crate) fn record_expiries(audit: &AuditLog, expired: &[Approval]) {
    for approval in expired {
        let mut entry = approval_entry(audit, Event::ApprovalExpired, approval);
        entry.principal = Some(approval.principal.clone());
        entry.decision = Some("expired".to_owned());
        entry.reason = Some(expiry_reason(approval).to_owned());
        if let Err(e) = audit.append_seq(&entry, airlock_audit::Durability::Batched) {
            tracing::error!(error = %e, approval = %approval.id, "cannot record an approval's expiry");
        }
    }
}

/// Why approval `id`, found in `state`, cannot be decided.
fn already(id: &str, found: &Approval) -> String {
    format!(
        "approval {id} is already {}{}",
        found.state.as_str(),
        found
            .decided_by
            .as_ref()
            .map(|b| format!(" (by {b})"))
            .unwrap_or_default()
    )
}

/// An audit entry for `event` about `approval`: the call it was asked for
/// and everything it binds.
fn approval_entry(audit: &AuditLog, event: Event, approval: &Approval) -> airlock_audit::Entry {
    let mut entry = airlock_audit::Entry::new(event);
    entry.call_id = Some(approval.call_id.clone());
    entry.plugin = Some(approval.plugin.clone());
    entry.component_digest = Some(approval.component_digest.clone());
    entry.plugin_version.clone_from(&approval.plugin_version);
    entry.manifest_digest.clone_from(&approval.manifest_digest);
    entry.tool = Some(approval.tool.clone());
    entry.risk = Some(approval.risk.clone());
    entry.approval_id = Some(approval.id.clone());
    entry.idempotency_key = approval.idempotency_key.clone();
    // Keyed as the request's record keyed it: the approval's copy of the
    // arguments shows whether redaction changed them.
    entry.args_digest = Some(if airlock_audit::shows_redaction(&approval.args) {
        audit.redactor().keyed_digest(&approval.args_digest)
    } else {
        approval.args_digest.clone()
    });
    entry
}

/// Why `approval` expired, as recorded.
pub(crate) fn expiry_reason(approval: &Approval) -> &'static str {
    if approval.decided_by.as_deref() == Some(EXPIRY) {
        "not decided in time"
    } else {
        "approved but not used in time"
    }
}
