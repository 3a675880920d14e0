//! From the pipeline's outcome to an MCP tool result.
//!
//! Every outcome of a call the server accepted is a `CallToolResult`, never
//! a protocol error: refusals, tool errors and traps have `isError: true`,
//! a text block `kind: message` (with every failing schema path), and the
//! details under `_meta["airlock/error"]` (`kind`, `class`, `message`,
//! `violations`). Details do not go in `structuredContent`, which MCP ties
//! to the tool's output schema.
//!
//! A call that waits for an approver is not a failure but has not run
//! either: it is an `isError` result of kind `approval_pending` whose
//! `_meta["airlock/approval"]` holds `status`, `approval_id`, `waits_for`
//! and `expires_at`. Once an approver has approved it, the same call with
//! `_meta["airlock/approval_id"]` runs.

use airlock_host::{CallError, CallResponse, ErrorClass};
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, MetaObject};
use serde_json::{Value, json};

use crate::catalog::CatalogEntry;

/// `_meta` key of a failed call's details.
pub const META_ERROR: &str = "airlock/error";
/// `_meta` key of a pending approval's details.
pub const META_APPROVAL: &str = "airlock/approval";
/// `_meta` key of a successful call's identity (call id, trace id).
pub const META_CALL: &str = "airlock/call";

/// The MCP result for a call's outcome.
pub fn tool_result(
    name: &str,
    entry: &CatalogEntry,
    outcome: Result<CallResponse, CallError>,
) -> CallToolResult {
    match outcome {
        Ok(response) => success(entry, response),
        Err(error) => failure(name, &error),
    }
}

fn success(entry: &CatalogEntry, response: CallResponse) -> CallToolResult {
    let mut result = CallToolResult::success(vec![ContentBlock::text(response.output.to_string())]);
    let mut call = JsonObject::new();
    call.insert("call_id".into(), json!(response.call_id));
    call.insert("trace_id".into(), json!(response.trace_id));
    call.insert("plugin_version".into(), json!(response.plugin_version));
    if let Some(id) = &response.approval_id {
        call.insert("approval_id".into(), json!(id));
    }
    if let Some(first) = &response.replayed_from {
        call.insert("replayed_from".into(), json!(first));
    }
    if entry.structured {
        result.structured_content = Some(if entry.wrapped {
            json!({ crate::catalog::WRAPPED_RESULT: response.output })
        } else {
            response.output
        });
    }
    result.with_meta(Some(meta(META_CALL, Value::Object(call))))
}

fn failure(name: &str, error: &CallError) -> CallToolResult {
    let mut detail = error.to_json();
    let shown = if error.class() == ErrorClass::Host {
        // The host's own failure: its causes name the data directory, the
        // database and what the backend said, which are the operator's
        // (logged here), not the caller's. The caller gets what failed.
        tracing::error!(kind = error.kind(), error = %detail["message"], "call failed on the host's side");
        let what = match error {
            // Its message is the engine's own error, causes and all.
            CallError::Engine { .. } => {
                "the host could not run the call (an engine failure; the server's log has the cause)"
                    .to_owned()
            }
            _ => error.to_string(),
        };
        detail["message"] = Value::from(what.clone());
        what
    } else {
        error.to_string()
    };
    let mut text = format!("{}: {shown}", error.kind());
    for violation in error.violations() {
        text.push_str(&format!("\n- {violation}"));
    }
    let mut meta = meta(META_ERROR, detail);
    if let CallError::ApprovalPending {
        approval_id,
        expires,
        ..
    } = error
    {
        text.push_str(&format!(
            "\nThe call has not run. Once an approver has approved {approval_id}, call `{name}` again with the same arguments and _meta {{\"airlock/approval_id\": \"{approval_id}\"}}."
        ));
        meta.insert(
            META_APPROVAL.into(),
            json!({
                "status": "pending",
                "approval_id": approval_id,
                "waits_for": "a decision by one of the host's approvers",
                "expires_at": expires,
            }),
        );
    }
    CallToolResult::error(vec![ContentBlock::text(text)]).with_meta(Some(meta))
}

fn meta(key: &str, value: Value) -> MetaObject {
    let mut object = JsonObject::new();
    object.insert(key.into(), value);
    MetaObject::from(object)
}

/// An `isError` result the server itself produces (no pipeline call).
pub(crate) fn refusal(kind: &str, message: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!("{kind}: {message}"))]).with_meta(Some(
        meta(
            META_ERROR,
            json!({"kind": kind, "class": "refused", "message": message, "violations": []}),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller learns that the host failed and how, not where its data
    /// lives: the causes of a host-side error (the audit log's path, the
    /// backend's own message) stay in the operator's log.
    #[test]
    fn a_host_failure_tells_the_caller_what_failed_not_where() {
        let source = airlock_host::store::StoreError::new(
            airlock_host::store::ErrorKind::Unavailable,
            "cannot write /var/lib/airlock/ledger/db: No space left on device",
        );
        let error = CallError::from(source);
        assert_eq!(error.class(), ErrorClass::Host);
        let result = failure("text/stats", &error);
        let shown = serde_json::to_string(&result).unwrap();
        assert!(!shown.contains("/var/lib/airlock"), "{shown}");
        assert!(shown.contains("ledger failed"), "{shown}");
        let engine = CallError::Engine {
            message: "cannot create a store: cannot open /srv/files/out: Permission denied".into(),
        };
        let shown = serde_json::to_string(&failure("text/stats", &engine)).unwrap();
        assert!(!shown.contains("/srv/files"), "{shown}");
        assert!(shown.contains("engine failure"), "{shown}");
        // A caller's own error keeps its whole message.
        let refused = CallError::UnknownTool {
            plugin: "text".into(),
            tool: "nope".into(),
        };
        let shown = serde_json::to_string(&failure("text/nope", &refused)).unwrap();
        assert!(shown.contains("nope"), "{shown}");
    }
}
