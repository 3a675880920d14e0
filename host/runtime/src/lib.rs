//! Airlock's plugin runtime.
//!
//! A [`Host`] loads *plugins* — WebAssembly components targeting the
//! `airlock:plugin/plugin` world, each described by a [`Manifest`]
//! (`plugin.toml`) that pins the component's SHA-256 and declares its tools,
//! capabilities and limits — and runs their tools through one pipeline:
//! resolve, validate the arguments against the tool's JSON Schema, run the
//! tool in a fresh instance under fuel, deadline and memory limits, validate
//! the result. Every refusal, tool error and trap is a distinct
//! [`CallError`] variant; [`CallError::class`] groups them for callers.
//! Loading fails with a [`LoadError`]; every error converts into [`Error`].
//!
//! Every call is recorded in the host's audit log ([`Host::audit`], crate
//! [`audit_log`]): a refusal, or an intent written before the guest runs and
//! an outcome after (a `read` call of a plugin that can only read, done
//! within the group-commit window: one record, its outcome carrying its
//! intent). If the log cannot record a call, the call does not run.
//! Plugins granted `workspace` keep state between calls in the
//! workspace store ([`Host::workspace`]). Both live where the host's
//! [`StoreConfig`] says: under [`HostConfig::data_dir`] by default
//! (temporary databases without one).
//!
//! Compiled components are cached on disk, keyed by component digest and
//! engine fingerprint, so a second start does not recompile
//! ([`HostConfig::cache_dir`], [`CacheStatus`]).
//!
//! # The API
//!
//! Every item of this crate is at its root. Two crates the host is built on
//! are re-exported whole, so each of their types has one path:
//! [`store`] (the storage seam, `airlock-store`: approvals, the workspace,
//! the host mode, the traits a backend implements) and [`audit_log`]
//! (`airlock-audit`: the log, its records and the offline verifier).
//!
//! # Example
//!
//! ```no_run
//! use airlock_host::{CallRequest, Host, HostConfig};
//!
//! # async fn run() -> Result<(), airlock_host::Error> {
//! let config = HostConfig::default()
//!     .data_dir("/var/lib/airlock") // audit log and workspace store
//!     .cache_dir("/var/cache/airlock")
//!     .plugins_dir("plugins"); // no plugin's `files` grant may reach it
//! let host = Host::new(config)?;
//! host.load_plugin("plugins/text").await?;
//! let response = host
//!     .call(CallRequest::new("text/slugify", r#"{"text": "Hello, World!"}"#))
//!     .await?;
//! println!("{}", response.output); // {"slug":"hello-world"}
//! // The call is on the record: `slugify` is a `read` tool of a plugin that
//! // can only read, so its intent is held while it runs and sealed with its
//! // outcome, one record (two, intent then outcome, for a call still running
//! // after the group-commit window, and for a tool that is not `read`).
//! let (records, _head) = host.audit().head()?;
//! assert_eq!(records, 1); // a fresh log: its outcome, carrying its intent
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod alerts;
mod approvals;
mod audit;
mod bindings;
mod cache;
pub mod clock;
mod engine;
mod error;
mod eval;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod grants;
mod host;
mod identifiers;
mod inspect;
mod ledger;
mod limits;
mod manifest;
mod mode;
mod package;
mod pipeline;
mod plugin;
mod ratelimit;
mod readiness;
mod releases;
mod schema;
mod state;
mod stores;
mod telemetry;
mod workspace;

pub use airlock_audit as audit_log;
pub use airlock_store as store;
#[cfg(feature = "postgres")]
pub use airlock_store_postgres::PostgresConfig;
pub use alerts::{
    AlertConfig, AlertMetric, AlertRule, AlertStatus, PAUSE_REFRESH, Pause, TakeoverAction, Webhook,
};
pub use approvals::{Verdict, unseen_arguments};
pub use cache::CacheStatus;
pub use engine::{DEFAULT_MAX_INSTANCES, InstanceAllocation};
pub use error::{
    ApprovalRefusal, ArchiveRefusal, CALL_ERROR_KINDS, CallError, Error, ErrorClass, Identifier,
    LoadError, ReleaseError, Result, SchemaViolation, Store, StoreError, ToolErrorKind, TrapKind,
};
pub use eval::{
    Case, CaseReport, Cases, CasesError, EVAL_PRINCIPAL, EvalReport, Expectation,
    MAX_CASE_LINE_BYTES, MAX_CASES, MAX_CASES_FILE_BYTES, Mismatch, PointerCheck, PointerTest,
    RecordedCall, RecordedOutcome, ReplayPlan, ReplayReport, ReplaySkips, ReplayedCall, Schema,
};
pub use grants::{
    Capability, EffectiveGrant, HttpGrant, HttpScheme, ImportClass, IpRange, LimitCeilings, Origin,
    OriginHost, Policy, ResolvedFiles, classify,
};
pub use host::{
    AUDIT_DIR, DEFAULT_MAX_ARGUMENT_BYTES, Host, HostConfig, LoadFailure, LoadReport,
    MAX_ARGUMENT_BYTES_CEILING, PluginInfo, is_plugin_dir,
};
pub use inspect::{CapabilityReport, Finding, ImportReport, InspectReport, Severity, ToolReport};
pub use ledger::{ApprovalPolicy, Approver, LEDGER_DIR};
pub use limits::{FilesLimits, HttpLimits, Limit, LimitSource, Limits};
pub use manifest::{
    Capabilities, DeclaredLimits, FileAccess, FileGrant, MANIFEST_FILE, MANIFEST_SCHEMA, Manifest,
    PluginSection, Requirement, RetryPolicy, Risk, ToolDeclaration,
};
pub use mode::{MODE_FILE, write_mode};
pub use package::{
    CASES_FILE, ChangeArea, ChangeKind, Compatibility, Package, PluginChange, PluginDiff,
    PluginSignature, PublicKey, SIGNATURE_FILE, Signer, TrustedKey, generate_signing_key,
    is_plain_component_name,
};
pub use pipeline::{CallRequest, CallResponse};
pub use plugin::{Plugin, Tool, ToolInfo};
pub use ratelimit::RateLimitPolicy;
pub use readiness::{ReadinessCheck, ReadinessConfig, ReadinessFinding, ReadinessReport};
pub use releases::{
    InstallReport, InstalledListing, MAX_CHANGE_BY_BYTES, MAX_CHANGE_REASON_BYTES, ROLLOUT_REFRESH,
    RolloutListing, RolloutRequest, RolloutStatus, UnreadableRollout, UnreadableVersion,
    VERSIONS_DIR, VersionStats, write_version,
};
pub use state::{LogLevel, LogLine};
pub use stores::{
    StoreConfig, check_state_dirs, open_audit_read_only, open_mode, open_releases, open_workspace,
};
pub use telemetry::{DEFAULT_MAX_QUEUED_SPANS, DEFAULT_OTLP_TIMEOUT, Telemetry, TelemetryConfig};
pub use workspace::WORKSPACE_DIR;

/// Run `work`, which may take a while, without holding up other tasks: on
/// a multi-threaded tokio runtime the worker's queued tasks move to
/// another worker first; elsewhere (a current-thread runtime, no runtime)
/// it runs where it is.
pub(crate) fn off_the_worker<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}
