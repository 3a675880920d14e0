//! The identifiers a caller names a call by — trace id, principal, session,
//! idempotency key, approval id — checked at the very start of
//! [`Host::call`](crate::Host::call), before any of them reaches an audit
//! record, the ledger or a log line.
//!
//! # Security
//! Each is caller data of any size and content until checked: a 1 MiB trace
//! id would otherwise be copied into every record of the call, and control
//! characters in one would reach an operator's terminal through
//! `audit show`. A refused call's record carries only [`marked`] forms.

use crate::error::{CallError, CallResult, Identifier};
use crate::pipeline::CallRequest;

/// Longest trace id, in bytes.
pub(crate) const MAX_TRACE_ID_BYTES: usize = 128;
/// Longest principal, in bytes.
pub(crate) const MAX_PRINCIPAL_BYTES: usize = 256;
/// Longest approval id, in bytes.
pub(crate) const MAX_APPROVAL_ID_BYTES: usize = 128;
/// Bytes of an invalid identifier kept (escaped) in a refusal record.
const MARKED_PREFIX_BYTES: usize = 32;

/// Check every identifier `request` carries.
///
/// # Errors
/// [`CallError::InvalidIdentifier`] for the first trace id, `traceparent`, principal,
/// idempotency key or approval id that is empty, too long or holds
/// characters it may not; [`CallError::InvalidSession`] for a bad session key.
pub(crate) fn check(request: &CallRequest) -> CallResult<()> {
    if let Some(trace_id) = &request.trace_id {
        visible_ascii(trace_id, MAX_TRACE_ID_BYTES)
            .map_err(|message| invalid(Identifier::TraceId, message))?;
    }
    if let Some(traceparent) = &request.traceparent {
        crate::telemetry::traceparent::TraceParent::parse(traceparent)
            .map_err(|message| invalid(Identifier::Traceparent, message))?;
    }
    no_control(&request.principal, MAX_PRINCIPAL_BYTES)
        .map_err(|message| invalid(Identifier::Principal, message))?;
    if let Some(session) = &request.session {
        crate::workspace::check_session(session)
            .map_err(|message| CallError::InvalidSession { message })?;
    }
    if let Some(key) = &request.idempotency_key {
        no_control(key, crate::pipeline::MAX_IDEMPOTENCY_KEY_BYTES)
            .map_err(|message| invalid(Identifier::IdempotencyKey, message))?;
    }
    if let Some(id) = &request.approval_id {
        visible_ascii(id, MAX_APPROVAL_ID_BYTES)
            .map_err(|message| invalid(Identifier::ApprovalId, message))?;
    }
    Ok(())
}

/// `text` when it passes `check`'s rule for a principal or trace id,
/// otherwise [`marked`].
pub(crate) fn principal_for_record(text: &str) -> String {
    match no_control(text, MAX_PRINCIPAL_BYTES) {
        Ok(()) => text.to_owned(),
        Err(_) => marked(text),
    }
}

/// `text` when it is a valid trace id, otherwise [`marked`].
pub(crate) fn trace_id_for_record(text: &str) -> String {
    match visible_ascii(text, MAX_TRACE_ID_BYTES) {
        Ok(()) => text.to_owned(),
        Err(_) => marked(text),
    }
}

/// A bounded, escaped and marked form of an invalid identifier: its first
/// bytes with control and non-ASCII characters escaped, and its length.
pub(crate) fn marked(text: &str) -> String {
    let kept = airlock_audit::text::prefix(text, MARKED_PREFIX_BYTES);
    let prefix: String = kept.chars().flat_map(char::escape_default).collect();
    let more = if kept.len() < text.len() { "…" } else { "" };
    format!("[invalid, {} bytes] {prefix}{more}", text.len())
}

fn invalid(what: Identifier, message: String) -> CallError {
    CallError::InvalidIdentifier { what, message }
}

fn length(text: &str, max: usize) -> Result<(), String> {
    if text.is_empty() || text.len() > max {
        return Err(format!(
            "it is {} bytes; 1 to {max} are allowed",
            text.len()
        ));
    }
    Ok(())
}

/// 1 to `max` bytes of visible ASCII (`!` to `~`).
fn visible_ascii(text: &str, max: usize) -> Result<(), String> {
    length(text, max)?;
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "only visible ASCII characters (no spaces or control characters) are allowed".into(),
        );
    }
    Ok(())
}

/// 1 to `max` bytes without control characters.
fn no_control(text: &str, max: usize) -> Result<(), String> {
    length(text, max)?;
    if text.chars().any(char::is_control) {
        return Err("control characters are not allowed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked_before_anything_else() {
        let ok = CallRequest::new("p/t", "{}")
            .trace_id("0af7651916cd43dd8448eb211c80319c")
            .principal("agent-7")
            .session("s-1")
            .idempotency_key("refund 42")
            .approval_id("apr-0199")
            .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        check(&ok).unwrap();
        let cases = [
            (ok.clone().trace_id("x".repeat(129)), "invalid_trace_id"),
            (ok.clone().trace_id(""), "invalid_trace_id"),
            (ok.clone().trace_id("a b"), "invalid_trace_id"),
            (ok.clone().principal(""), "invalid_principal"),
            (ok.clone().principal("a\u{1b}[2Kb"), "invalid_principal"),
            (ok.clone().principal("p".repeat(257)), "invalid_principal"),
            (ok.clone().session("s\n"), "invalid_session"),
            (
                ok.clone().idempotency_key("k".repeat(257)),
                "invalid_idempotency_key",
            ),
            (ok.clone().idempotency_key(""), "invalid_idempotency_key"),
            (ok.clone().approval_id("apr\r"), "invalid_approval_id"),
            (ok.clone().traceparent("00-x-y-01"), "invalid_traceparent"),
            (
                ok.clone().traceparent("t".repeat(1 << 20)),
                "invalid_traceparent",
            ),
        ];
        for (request, kind) in cases {
            let err = check(&request).unwrap_err();
            assert_eq!(err.kind(), kind, "{err}");
            assert_eq!(err.class(), crate::ErrorClass::Refused);
            assert!(err.to_string().len() < 200, "{err}");
        }
    }

    #[test]
    fn marked_forms_are_bounded_and_escaped() {
        let huge = "\u{1b}[2K".repeat(300_000);
        let m = marked(&huge);
        assert!(m.len() < 200, "{m}");
        assert!(m.starts_with("[invalid, 1200000 bytes] \\u{1b}[2K"), "{m}");
        assert!(!m.chars().any(char::is_control), "{m}");
        assert_eq!(trace_id_for_record("t-1"), "t-1");
        assert_eq!(principal_for_record("alice"), "alice");
        assert!(principal_for_record("").starts_with("[invalid, 0 bytes]"));
    }
}
