//! What a caller hands the pipeline ([`CallRequest`]) and what it gets
//! back from a call that succeeded ([`CallResponse`]).

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::state::LogLine;

/// A request to run one tool.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// `plugin/tool`.
    pub tool: String,
    /// The arguments: a JSON object, as text.
    pub arguments: String,
    /// Who the call runs for (1–256 bytes, no control characters).
    pub principal: String,
    /// Correlation id from the caller (1–128 bytes of visible ASCII);
    /// the call id when absent. A `traceparent` takes its place.
    pub trace_id: Option<String>,
    /// W3C Trace Context `traceparent` of the caller's span
    /// (`00-<trace id>-<parent id>-<flags>`): the call's spans are its
    /// children, and its trace id (32 hex digits) is the call's trace id,
    /// in every audit record, in place of `trace_id`.
    pub traceparent: Option<String>,
    /// The caller's session: workspace keys are scoped to it (1–128 bytes,
    /// no control characters). Without one, keys are shared by all calls of
    /// the plugin that give none.
    pub session: Option<String>,
    /// Idempotency key (1–256 bytes): a repeat with the same key replays the
    /// first call's outcome instead of running again.
    pub idempotency_key: Option<String>,
    /// Resume a call that waited for approval: the approval's id. The call
    /// must carry exactly the approved arguments, principal and key.
    pub approval_id: Option<String>,
    /// The caller's reason, shown to the approver.
    pub reason: Option<String>,
    /// Wait this long for an approval decision instead of returning
    /// [`Error::ApprovalPending`](crate::CallError::ApprovalPending) at once.
    pub wait_for_approval: Option<Duration>,
    /// Cancelling this token stops the call: a wait for approval or for an
    /// instance slot ends, a running guest's instance is dropped, and the
    /// call ends with [`Error::Cancelled`](crate::CallError::Cancelled) — on
    /// the record like any other outcome.
    pub cancel: Option<CancellationToken>,
}

impl CallRequest {
    /// A request for `tool` (`plugin/tool`) with JSON `arguments`, run as the
    /// `local` principal.
    pub fn new(tool: impl Into<String>, arguments: impl Into<String>) -> CallRequest {
        CallRequest {
            tool: tool.into(),
            arguments: arguments.into(),
            principal: "local".to_owned(),
            trace_id: None,
            traceparent: None,
            session: None,
            idempotency_key: None,
            approval_id: None,
            reason: None,
            wait_for_approval: None,
            cancel: None,
        }
    }

    /// Stop the call when `token` is cancelled.
    pub fn cancel_on(mut self, token: CancellationToken) -> CallRequest {
        self.cancel = Some(token);
        self
    }

    /// Run as `principal`.
    pub fn principal(mut self, principal: impl Into<String>) -> CallRequest {
        self.principal = principal.into();
        self
    }

    /// Use idempotency `key`.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> CallRequest {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Resume under approval `id`.
    pub fn approval_id(mut self, id: impl Into<String>) -> CallRequest {
        self.approval_id = Some(id.into());
        self
    }

    /// State why the call is made (shown to approvers).
    pub fn reason(mut self, reason: impl Into<String>) -> CallRequest {
        self.reason = Some(reason.into());
        self
    }

    /// Wait up to `timeout` for an approval decision.
    pub fn wait_for_approval(mut self, timeout: Duration) -> CallRequest {
        self.wait_for_approval = Some(timeout);
        self
    }

    /// Scope workspace keys to `session`.
    pub fn session(mut self, session: impl Into<String>) -> CallRequest {
        self.session = Some(session.into());
        self
    }

    /// Continue the caller's trace: a W3C `traceparent`.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> CallRequest {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Correlate with `trace_id`.
    pub fn trace_id(mut self, trace_id: impl Into<String>) -> CallRequest {
        self.trace_id = Some(trace_id.into());
        self
    }
}

/// The result of a successful call.
#[derive(Debug, Clone, Serialize)]
pub struct CallResponse {
    /// Unique id of this call.
    pub call_id: String,
    /// Correlation id.
    pub trace_id: String,
    /// `plugin/tool`.
    pub tool: String,
    /// The version of the plugin the call was routed to (with a canary,
    /// the one this caller's share of the rollout gives them).
    pub plugin_version: String,
    /// The tool's result.
    pub output: Value,
    /// Lines the guest logged (bounded).
    pub logs: Vec<LogLine>,
    /// Log lines dropped because the call's log budget was spent.
    pub logs_dropped: u64,
    /// What the host refused or hit on the guest's behalf during the call
    /// (an HTTP request to an origin not granted, a body over its limit,
    /// ...): the host's words, never the guest's, bounded (32 notes and a
    /// last one saying more were dropped). Also in the call's audit record,
    /// whatever its outcome.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_notes: Vec<String>,
    /// Fuel the call consumed.
    pub fuel_used: u64,
    /// Wall time of the guest call, including instantiation.
    #[serde(serialize_with = "serialize_micros", rename = "duration_us")]
    pub duration: Duration,
    /// When this response is a replay of an earlier call with the same
    /// idempotency key: that call's id (the tool did not run again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_from: Option<String>,
    /// The approval the call ran under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
}

fn serialize_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
