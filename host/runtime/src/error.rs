//! The crate's error type.
//!
//! Three kinds of failure are kept apart, as the plugin ABI does:
//! - *refusals*: the host decided not to run a call (unknown tool, invalid
//!   arguments, ...). The guest never ran.
//! - *tool errors*: the guest ran and returned a `tool-error`.
//! - *traps*: the guest crashed or hit a limit and its instance was killed.
//!
//! Everything else (a bad manifest, an unreadable file, an engine failure) is a
//! host error.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One place where a JSON document failed a JSON Schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaViolation {
    /// JSON Pointer (RFC 6901) to the failing value; empty for the root.
    pub path: String,
    /// What is wrong with the value there.
    pub message: String,
}

impl fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "at {path}: {}", self.message)
    }
}

/// How a guest's `tool-error` classified the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolErrorKind {
    /// The tool could not use the (schema-valid) arguments.
    InvalidInput,
    /// The tool tried and failed.
    Failed,
    /// The tool refused.
    Denied,
}

impl fmt::Display for ToolErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ToolErrorKind::InvalidInput => "invalid input",
            ToolErrorKind::Failed => "failed",
            ToolErrorKind::Denied => "denied",
        })
    }
}

/// Why a guest instance was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrapKind {
    /// The call used all of its fuel (instruction budget).
    FuelExhausted,
    /// The call ran past its wall-clock deadline.
    DeadlineExceeded,
    /// The guest tried to grow its memory or tables past the limit.
    MemoryLimit,
    /// The guest passed more data to one host call than the host accepts
    /// (`Store::set_hostcall_fuel`), e.g. a gigantic log line.
    HostDataLimit,
    /// The guest crashed: a panic, `unreachable`, an out-of-bounds access or
    /// another WebAssembly trap.
    GuestTrap,
}

impl fmt::Display for TrapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrapKind::FuelExhausted => "fuel exhausted",
            TrapKind::DeadlineExceeded => "deadline exceeded",
            TrapKind::MemoryLimit => "memory limit reached",
            TrapKind::HostDataLimit => "host-call data limit reached",
            TrapKind::GuestTrap => "guest trapped",
        })
    }
}

/// Which caller-supplied identifier [`Error::InvalidIdentifier`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Identifier {
    /// The correlation id (`CallRequest::trace_id`).
    TraceId,
    /// Who the call runs for.
    Principal,
    /// The idempotency key.
    IdempotencyKey,
    /// The approval a call resumes under.
    ApprovalId,
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Identifier::TraceId => "trace id",
            Identifier::Principal => "principal",
            Identifier::IdempotencyKey => "idempotency key",
            Identifier::ApprovalId => "approval id",
        })
    }
}

/// What a caller or an operator should conclude from an [`Error`]; the CLI
/// maps each class to its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The host refused to run the call; the guest never ran.
    Refused,
    /// The guest ran and reported an error.
    ToolError,
    /// The guest crashed or hit a limit.
    Trap,
    /// A plugin asks for, or imports, a capability it may not have.
    CapabilityDenied,
    /// Configuration, plugin or host failure.
    Host,
    /// The call waits for a human decision (an approval); it has not run.
    Pending,
}

/// Everything that can go wrong loading plugins or calling tools.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The manifest is not valid TOML.
    #[error("manifest {} is not valid TOML: {message}", path.display())]
    ManifestSyntax {
        /// The manifest file.
        path: PathBuf,
        /// Parser message, with line and column.
        message: String,
    },

    /// The manifest does not match the manifest schema.
    #[error("manifest {} is invalid: {}", path.display(), join(violations))]
    ManifestInvalid {
        /// The manifest file.
        path: PathBuf,
        /// Every failing field.
        violations: Vec<SchemaViolation>,
    },

    /// The manifest is well-formed but inconsistent (duplicate tool names, a
    /// component path leaving the plugin directory, ...).
    #[error("manifest {} is invalid: {message}", path.display())]
    ManifestRejected {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The component file named by the manifest does not exist.
    #[error("component file {} named by the manifest does not exist", path.display())]
    ComponentMissing {
        /// Where the component was expected.
        path: PathBuf,
    },

    /// The component's SHA-256 differs from the manifest's pin.
    #[error("component {} has sha256 {actual}, but the manifest pins {expected}", path.display())]
    DigestMismatch {
        /// The component file.
        path: PathBuf,
        /// Digest from the manifest.
        expected: String,
        /// Digest of the file on disk.
        actual: String,
    },

    /// The component file is not WebAssembly, or is a core module rather than
    /// a component, or does not compile.
    #[error("{} is not a usable WebAssembly component: {reason}", path.display())]
    InvalidComponent {
        /// The component file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The component does not implement the `airlock:plugin/plugin` world
    /// (missing export, or imports the host does not provide).
    #[error("plugin `{plugin}` does not target the airlock:plugin world: {reason}")]
    WrongWorld {
        /// Plugin name.
        plugin: String,
        /// The missing export or unsatisfied import.
        reason: String,
    },

    /// The component's tool list is not acceptable.
    #[error("plugin `{plugin}` exports an invalid tool list: {reason}")]
    InvalidToolList {
        /// Plugin name.
        plugin: String,
        /// What is wrong.
        reason: String,
    },

    /// A tool declared in the manifest is not exported by the component.
    #[error(
        "plugin `{plugin}` declares tool `{tool}` in its manifest, but the component does not export it"
    )]
    ToolNotExported {
        /// Plugin name.
        plugin: String,
        /// The declared tool.
        tool: String,
    },

    /// The manifest asks for a capability the operator's policy does not
    /// allow, or a `files` grant that cannot be honoured.
    #[error("plugin `{plugin}` may not have `{capability}`: {reason}")]
    CapabilityDenied {
        /// Plugin name.
        plugin: String,
        /// The manifest key.
        capability: String,
        /// Why.
        reason: String,
    },

    /// The component imports an interface its effective grant does not
    /// include.
    #[error("plugin `{plugin}` imports `{interface}`, which it is not granted: {hint}")]
    CapabilityNotGranted {
        /// Plugin name.
        plugin: String,
        /// The imported interface.
        interface: String,
        /// What would grant it, or why it cannot be granted.
        hint: String,
    },

    /// The manifest asks for a limit above its ceiling: the operator's
    /// (`[policy.limits]`), or the host's built-in one where the operator
    /// sets none.
    #[error(
        "plugin `{plugin}` asks for {limit} = {asked}, above the ceiling of {ceiling} (the operator sets ceilings in [policy.limits])"
    )]
    LimitAboveCeiling {
        /// Plugin name.
        plugin: String,
        /// The limit's manifest key.
        limit: &'static str,
        /// What the manifest asks for.
        asked: u64,
        /// The ceiling: the policy's, or the built-in one.
        ceiling: u64,
    },

    /// Every instance slot of the plugin stayed busy for the call's whole
    /// timeout.
    #[error("plugin `{plugin}` is at its limit of {limit} concurrent calls; try again later")]
    PluginBusy {
        /// Plugin name.
        plugin: String,
        /// Its concurrency limit.
        limit: u64,
    },

    /// The caller (principal) is running its limit of calls at once on a
    /// server shared by several (the MCP server's `max_calls_per_principal`).
    #[error(
        "principal `{principal}` is running its limit of {limit} calls at once; try again when one ends"
    )]
    PrincipalBusy {
        /// The principal.
        principal: String,
        /// Its limit.
        limit: usize,
    },

    /// Every instance slot of the host's pool stayed taken until the call's
    /// deadline.
    #[error(
        "the host is at its limit of {limit} concurrent instances over all plugins; try again later"
    )]
    HostBusy {
        /// The pool's instance count (`HostConfig::max_instances`).
        limit: u32,
    },

    /// The caller cancelled the call (for example an MCP client's
    /// `notifications/cancelled`). If the guest was running, its instance
    /// was dropped and stopped at its next epoch yield.
    #[error("call to `{tool}` cancelled by the caller{}", if *ran { " while the tool ran" } else { " before the tool ran" })]
    Cancelled {
        /// `plugin/tool`.
        tool: String,
        /// Whether the guest had started.
        ran: bool,
    },

    /// Two plugins in one host have the same name.
    #[error("plugin `{name}` is loaded twice (from {} and {})", first.display(), second.display())]
    DuplicatePlugin {
        /// Plugin name.
        name: String,
        /// Directory of the plugin loaded first.
        first: PathBuf,
        /// Directory of the second one.
        second: PathBuf,
    },

    /// The host configuration is invalid.
    #[error("invalid host configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },

    /// A call named a tool as something other than `plugin/tool`.
    #[error("`{reference}` is not a tool reference; expected `plugin/tool`")]
    BadToolReference {
        /// What the caller wrote.
        reference: String,
    },

    /// No plugin of that name is loaded.
    #[error("no plugin named `{plugin}` is loaded")]
    UnknownPlugin {
        /// The requested plugin.
        plugin: String,
    },

    /// The plugin exposes no tool of that name.
    #[error("plugin `{plugin}` has no tool named `{tool}`")]
    UnknownTool {
        /// The plugin.
        plugin: String,
        /// The requested tool.
        tool: String,
    },

    /// The arguments are larger than the host accepts.
    #[error("arguments are {size} bytes, more than the limit of {limit} bytes")]
    ArgumentsTooLarge {
        /// Size of the arguments.
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// The arguments are not JSON.
    #[error("arguments are not valid JSON: {message}")]
    ArgumentsNotJson {
        /// Parser message.
        message: String,
    },

    /// The arguments are JSON but not an object.
    #[error("arguments must be a JSON object, not {found}")]
    ArgumentsNotObject {
        /// JSON type that was found.
        found: &'static str,
    },

    /// The arguments fail the tool's input schema.
    #[error(
        "arguments do not match the input schema of `{tool}`: {}",
        join(violations)
    )]
    ArgumentsInvalid {
        /// `plugin/tool`.
        tool: String,
        /// Every failing path.
        violations: Vec<SchemaViolation>,
    },

    /// The guest returned a `tool-error`.
    #[error("tool `{tool}` reported an error ({kind}): {message}")]
    Tool {
        /// `plugin/tool`.
        tool: String,
        /// The guest's classification.
        kind: ToolErrorKind,
        /// The guest's message.
        message: String,
    },

    /// The guest instance was killed.
    #[error("tool `{tool}` was stopped: {kind}: {message}")]
    Trap {
        /// `plugin/tool`.
        tool: String,
        /// Why it was killed.
        kind: TrapKind,
        /// Details (the trap, and the guest's stderr if it wrote any).
        message: String,
    },

    /// The guest's result is larger than the tool's output limit.
    #[error("tool `{tool}` returned {size} bytes, more than its output limit of {limit} bytes")]
    OutputTooLarge {
        /// `plugin/tool`.
        tool: String,
        /// Size of the result.
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// The guest's result is not JSON or fails the tool's output schema.
    #[error("tool `{tool}` returned an invalid result: {message}")]
    OutputInvalid {
        /// `plugin/tool`.
        tool: String,
        /// What is wrong.
        message: String,
    },

    /// The WebAssembly engine failed for a reason that is not the guest's.
    #[error("engine error: {message}")]
    Engine {
        /// What failed.
        message: String,
    },

    /// The audit log cannot record the call, so it does not run (fail
    /// closed).
    #[error("call not run: the audit log cannot record it: {message}")]
    AuditUnavailable {
        /// What the log reported.
        message: String,
    },

    /// The workspace store cannot be opened, or failed.
    #[error("workspace store at {}: {message}", path.display())]
    Workspace {
        /// The store's directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },

    /// A caller-supplied identifier is empty, too long or holds characters
    /// it may not; checked before anything about the call is recorded.
    #[error("invalid {what}: {message}")]
    InvalidIdentifier {
        /// Which identifier.
        what: Identifier,
        /// What is wrong with it (never the identifier itself).
        message: String,
    },

    /// The caller's session key is not acceptable.
    #[error("invalid session key: {message}")]
    InvalidSession {
        /// What is wrong with it.
        message: String,
    },

    /// The ledger (approvals, idempotency keys) cannot be used; the call
    /// does not run.
    #[error("call not run: the approvals and idempotency ledger failed: {message}")]
    Ledger {
        /// What failed.
        message: String,
    },

    /// The call needs a human decision; it has not run. Resume it with the
    /// same arguments and `approval_id` once approved.
    #[error("`{tool}` needs approval: request {approval_id} waits for an approver until {expires}")]
    ApprovalPending {
        /// `plugin/tool`.
        tool: String,
        /// The approval request.
        approval_id: String,
        /// When it expires (RFC 3339).
        expires: String,
    },

    /// The call needs approval but none can be given (no approver is
    /// configured): it does not run.
    #[error("`{tool}` needs approval, but {reason}")]
    ApprovalUnavailable {
        /// `plugin/tool`.
        tool: String,
        /// Why no approval is possible.
        reason: String,
    },

    /// The caller already has as many approvals pending as the policy
    /// allows (`approvals.max_pending_per_principal`): no new request is
    /// made until some are decided or expire.
    #[error(
        "principal `{principal}` already has {limit} approvals pending (policy approvals.max_pending_per_principal)"
    )]
    TooManyPendingApprovals {
        /// The caller.
        principal: String,
        /// The limit.
        limit: u64,
    },

    /// The approval named does not allow this call.
    #[error("approval {approval_id} does not allow this call: {reason}")]
    ApprovalRefused {
        /// The approval.
        approval_id: String,
        /// Its state or the mismatch (`rejected by alice: ...`, `expired`,
        /// `already used`, `bound to other arguments`, ...).
        reason: String,
        /// Machine-readable: `rejected`, `expired`, `cancelled`, `consumed`,
        /// `unknown`, `mismatch`.
        why: &'static str,
    },

    /// The tool requires an idempotency key and none was given.
    #[error("`{tool}` requires an idempotency key (retrying it must never act twice)")]
    IdempotencyKeyRequired {
        /// `plugin/tool`.
        tool: String,
    },

    /// The key was first used with other arguments.
    #[error("idempotency key {key:?} was first used with other arguments")]
    IdempotencyMismatch {
        /// The key.
        key: String,
    },

    /// A call holding the key is still running.
    #[error("idempotency key {key:?} is in use by a call still running ({call_id})")]
    IdempotencyInUse {
        /// The key.
        key: String,
        /// The running call.
        call_id: String,
    },

    /// The call that first used the key was running when the host stopped;
    /// whether it took effect is unknown, so it is not run again.
    #[error(
        "idempotency key {key:?}: call {call_id} was running when the host stopped; its outcome is unknown and it will not be repeated automatically"
    )]
    IdempotencyOutcomeUnknown {
        /// The key.
        key: String,
        /// The call.
        call_id: String,
    },

    /// The first call with this key failed; the failure is replayed.
    #[error("replayed (idempotency key {key:?}, call {call_id}): {kind}: {message}")]
    ReplayedFailure {
        /// The key.
        key: String,
        /// The first call.
        call_id: String,
        /// Its error kind.
        kind: String,
        /// Its message.
        message: String,
    },

    /// A rate limit is exhausted; retry after the given time.
    #[error("rate limit for {scope} reached; retry in {retry_after_ms} ms")]
    RateLimited {
        /// Which limit (`tool billing/refund`, `principal agent-1`, ...).
        scope: String,
        /// When a call would be admitted again.
        retry_after_ms: u64,
    },

    /// The host is in read-only mode: only `read` tools run.
    #[error("the host is in read-only mode: `{tool}` ({risk}) does not run{}", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    ReadOnlyMode {
        /// `plugin/tool`.
        tool: String,
        /// Its risk class.
        risk: String,
        /// The operator's stated reason.
        reason: Option<String>,
    },

    /// An approver's decision was refused.
    #[error("decision refused: {reason}")]
    DecisionRefused {
        /// Why (unknown approver, bad token, own call, already decided, ...).
        reason: String,
    },

    /// The audit log (or its keys) cannot be opened or read.
    #[error(transparent)]
    Audit(#[from] airlock_audit::Error),
}

fn join(violations: &[SchemaViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// A stable, machine-readable name for this error (`snake_case`), used in
    /// the CLI's and the MCP server's JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::ManifestSyntax { .. } => "manifest_syntax",
            Error::ManifestInvalid { .. } => "manifest_invalid",
            Error::ManifestRejected { .. } => "manifest_rejected",
            Error::ComponentMissing { .. } => "component_missing",
            Error::DigestMismatch { .. } => "digest_mismatch",
            Error::InvalidComponent { .. } => "invalid_component",
            Error::WrongWorld { .. } => "wrong_world",
            Error::InvalidToolList { .. } => "invalid_tool_list",
            Error::ToolNotExported { .. } => "tool_not_exported",
            Error::DuplicatePlugin { .. } => "duplicate_plugin",
            Error::CapabilityDenied { .. } => "capability_denied",
            Error::CapabilityNotGranted { .. } => "capability_not_granted",
            Error::LimitAboveCeiling { .. } => "limit_above_ceiling",
            Error::PluginBusy { .. } => "plugin_busy",
            Error::HostBusy { .. } => "host_busy",
            Error::PrincipalBusy { .. } => "principal_busy",
            Error::Cancelled { .. } => "cancelled",
            Error::Config { .. } => "config",
            Error::BadToolReference { .. } => "bad_tool_reference",
            Error::UnknownPlugin { .. } => "unknown_plugin",
            Error::UnknownTool { .. } => "unknown_tool",
            Error::ArgumentsTooLarge { .. } => "arguments_too_large",
            Error::ArgumentsNotJson { .. } => "arguments_not_json",
            Error::ArgumentsNotObject { .. } => "arguments_not_object",
            Error::ArgumentsInvalid { .. } => "arguments_invalid",
            Error::Tool { .. } => "tool_error",
            Error::Trap { kind, .. } => match kind {
                TrapKind::FuelExhausted => "fuel_exhausted",
                TrapKind::DeadlineExceeded => "deadline_exceeded",
                TrapKind::MemoryLimit => "memory_limit",
                TrapKind::HostDataLimit => "host_data_limit",
                TrapKind::GuestTrap => "guest_trap",
            },
            Error::OutputTooLarge { .. } => "output_too_large",
            Error::OutputInvalid { .. } => "output_invalid",
            Error::Engine { .. } => "engine",
            Error::AuditUnavailable { .. } => "audit_unavailable",
            Error::Audit(_) => "audit",
            Error::Workspace { .. } => "workspace",
            Error::InvalidSession { .. } => "invalid_session",
            Error::InvalidIdentifier { what, .. } => match what {
                Identifier::TraceId => "invalid_trace_id",
                Identifier::Principal => "invalid_principal",
                Identifier::IdempotencyKey => "invalid_idempotency_key",
                Identifier::ApprovalId => "invalid_approval_id",
            },
            Error::Ledger { .. } => "ledger_unavailable",
            Error::ApprovalPending { .. } => "approval_pending",
            Error::ApprovalUnavailable { .. } => "approval_unavailable",
            Error::TooManyPendingApprovals { .. } => "too_many_pending_approvals",
            Error::ApprovalRefused { why, .. } => match *why {
                "rejected" => "approval_rejected",
                "expired" => "approval_expired",
                "cancelled" => "approval_cancelled",
                "consumed" => "approval_consumed",
                "unknown" => "approval_unknown",
                _ => "approval_mismatch",
            },
            Error::IdempotencyKeyRequired { .. } => "idempotency_key_required",
            Error::IdempotencyMismatch { .. } => "idempotency_mismatch",
            Error::IdempotencyInUse { .. } => "idempotency_in_use",
            Error::IdempotencyOutcomeUnknown { .. } => "idempotency_outcome_unknown",
            Error::ReplayedFailure { .. } => "replayed_failure",
            Error::ReadOnlyMode { .. } => "read_only_mode",
            Error::RateLimited { .. } => "rate_limited",
            Error::DecisionRefused { .. } => "decision_refused",
        }
    }

    /// Which class of failure this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::BadToolReference { .. }
            | Error::UnknownPlugin { .. }
            | Error::UnknownTool { .. }
            | Error::ArgumentsTooLarge { .. }
            | Error::ArgumentsNotJson { .. }
            | Error::ArgumentsNotObject { .. }
            | Error::ArgumentsInvalid { .. }
            | Error::InvalidSession { .. }
            | Error::InvalidIdentifier { .. }
            | Error::ApprovalUnavailable { .. }
            | Error::TooManyPendingApprovals { .. }
            | Error::ApprovalRefused { .. }
            | Error::IdempotencyKeyRequired { .. }
            | Error::IdempotencyMismatch { .. }
            | Error::IdempotencyInUse { .. }
            | Error::IdempotencyOutcomeUnknown { .. }
            | Error::ReadOnlyMode { .. }
            | Error::RateLimited { .. }
            | Error::PluginBusy { .. }
            | Error::HostBusy { .. }
            | Error::PrincipalBusy { .. }
            | Error::Cancelled { ran: false, .. } => ErrorClass::Refused,
            Error::Cancelled { ran: true, .. } => ErrorClass::Trap,
            Error::ApprovalPending { .. } => ErrorClass::Pending,
            Error::ReplayedFailure { .. } => ErrorClass::ToolError,
            Error::CapabilityDenied { .. } | Error::CapabilityNotGranted { .. } => {
                ErrorClass::CapabilityDenied
            }
            Error::Tool { .. } => ErrorClass::ToolError,
            Error::Trap { .. } | Error::OutputTooLarge { .. } | Error::OutputInvalid { .. } => {
                ErrorClass::Trap
            }
            _ => ErrorClass::Host,
        }
    }

    /// The schema violations carried by this error, if it has any.
    pub fn violations(&self) -> &[SchemaViolation] {
        match self {
            Error::ManifestInvalid { violations, .. }
            | Error::ArgumentsInvalid { violations, .. } => violations,
            _ => &[],
        }
    }

    /// This error as the JSON object the CLI's `--json` output and the MCP
    /// server's results carry: `kind`, `class`, `message`, `violations`, and
    /// the fields a caller acts on — `approval_id` and `expires` of a pending
    /// approval, `retry_after_ms` of a rate-limited call.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::json!({
            "kind": self.kind(),
            "class": self.class(),
            "message": self.to_string(),
            "violations": self.violations(),
        });
        match self {
            Error::ApprovalPending {
                approval_id,
                expires,
                ..
            } => {
                value["approval_id"] = serde_json::json!(approval_id);
                value["expires"] = serde_json::json!(expires);
            }
            Error::RateLimited { retry_after_ms, .. } => {
                value["retry_after_ms"] = serde_json::json!(retry_after_ms);
            }
            _ => {}
        }
        value
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_carries_what_a_caller_acts_on() {
        let limited = Error::RateLimited {
            scope: "tool billing/refund".into(),
            retry_after_ms: 1500,
        }
        .to_json();
        assert_eq!(limited["kind"], "rate_limited");
        assert_eq!(limited["class"], "refused");
        assert_eq!(limited["retry_after_ms"], 1500);
        assert!(limited.get("approval_id").is_none());

        let pending = Error::ApprovalPending {
            tool: "billing/refund".into(),
            approval_id: "apr-1".into(),
            expires: "2026-11-23T08:00:00Z".into(),
        }
        .to_json();
        assert_eq!(pending["kind"], "approval_pending");
        assert_eq!(pending["class"], "pending");
        assert_eq!(pending["approval_id"], "apr-1");
        assert_eq!(pending["expires"], "2026-11-23T08:00:00Z");
        assert!(pending.get("retry_after_ms").is_none());

        let invalid = Error::ArgumentsInvalid {
            tool: "billing/refund".into(),
            violations: vec![SchemaViolation {
                path: "/amount".into(),
                message: "-1 is less than the minimum of 0".into(),
            }],
        }
        .to_json();
        assert_eq!(invalid["kind"], "arguments_invalid");
        assert_eq!(invalid["violations"][0]["path"], "/amount");
    }
}
