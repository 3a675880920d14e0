//! The crate's errors, one type per boundary:
//! - [`LoadError`]: what loading a plugin can fail with (the manifest, the
//!   component, its grants and limits);
//! - [`CallError`]: what [`Host::call`](crate::Host::call) can fail with;
//! - [`StoreError`]: a store (the ledger, the workspace store) failed; its
//!   cause is kept as the error's source;
//! - [`Error`]: any of them, or a failure of the host itself (its
//!   configuration, its engine, its audit log); every other method of
//!   [`Host`](crate::Host) returns it, and `?` turns each of the others into
//!   it.
//!
//! Within a call, three kinds of failure are kept apart, as the plugin ABI
//! does:
//! - *refusals*: the host decided not to run a call (unknown tool, invalid
//!   arguments, ...). The guest never ran.
//! - *tool errors*: the guest ran and returned a `tool-error`.
//! - *traps*: the guest crashed or hit a limit and its instance was killed.
//!
//! One vocabulary covers every type: `kind()` (a stable `snake_case` name),
//! `class()` (an [`ErrorClass`], which the CLI maps to its exit code) and
//! `to_json()` (what the CLI's `--json` output and the MCP server's results
//! carry). Each `kind()` and `class()` names every variant: a new variant
//! does not compile until it is classified.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::manifest::Risk;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
/// A `Result` with a [`LoadError`].
pub(crate) type LoadResult<T, E = LoadError> = std::result::Result<T, E>;
/// A `Result` with a [`CallError`].
pub(crate) type CallResult<T, E = CallError> = std::result::Result<T, E>;

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

/// Which caller-supplied identifier [`CallError::InvalidIdentifier`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Identifier {
    /// The correlation id (`CallRequest::trace_id`).
    TraceId,
    /// The W3C `traceparent` (`CallRequest::traceparent`).
    Traceparent,
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
            Identifier::Traceparent => "traceparent",
            Identifier::Principal => "principal",
            Identifier::IdempotencyKey => "idempotency key",
            Identifier::ApprovalId => "approval id",
        })
    }
}

/// What a caller or an operator should conclude from an error; the CLI
/// maps each class to its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// A plugin's signature is missing where the operator requires one,
    /// invalid, or by a key the operator does not trust.
    Untrusted,
}

/// Which store a [`StoreError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Store {
    /// The approvals and idempotency ledger.
    Ledger,
    /// The workspace store.
    Workspace,
    /// The rate-limit buckets.
    RateLimits,
    /// The host mode.
    Mode,
    /// Installed plugin versions and rollouts.
    Plugins,
    /// The backend as a whole (opening it).
    Backend,
}

/// A store (the ledger, the workspace, the rate-limit buckets, the mode)
/// cannot be opened, or failed. What the backend reported — its
/// [`ErrorKind`](airlock_store::ErrorKind) and its own error — is the
/// source.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe_store(*store))]
pub struct StoreError {
    /// Which store.
    pub store: Store,
    /// What failed.
    #[source]
    pub source: airlock_store::StoreError,
}

fn describe_store(store: Store) -> &'static str {
    match store {
        // A call consults the ledger before its guest runs.
        Store::Ledger => "call not run: the approvals and idempotency ledger failed",
        Store::Workspace => "the workspace store failed",
        Store::RateLimits => "call not run: the rate-limit store failed",
        Store::Mode => "the host mode store failed (calls are refused until it is read)",
        Store::Plugins => "the store of installed plugin versions and rollouts failed",
        Store::Backend => "the store cannot be opened",
    }
}

impl StoreError {
    /// `source`, a backend's error, as a failure of `store` (the `?` of a
    /// [`airlock_store::StoreError`] says [`Store::Ledger`]: name the
    /// store where it is another).
    pub fn new(store: Store, source: airlock_store::StoreError) -> StoreError {
        StoreError { store, source }
    }

    /// A stable, machine-readable name for this error.
    pub fn kind(&self) -> &'static str {
        match self.store {
            Store::Ledger => "ledger_unavailable",
            Store::Workspace => "workspace",
            // Installed versions never change: another version's files
            // under a taken number is the operator's mistake, not an outage.
            Store::Plugins => match self.source.kind() {
                airlock_store::ErrorKind::Conflict => "version_taken",
                airlock_store::ErrorKind::Config => "invalid_version",
                _ => "store_unavailable",
            },
            Store::RateLimits | Store::Mode | Store::Backend => "store_unavailable",
        }
    }

    /// Which class of failure this is: the host's, but for a refused
    /// install (a taken version, an invalid one).
    pub fn class(&self) -> ErrorClass {
        match (self.store, self.source.kind()) {
            (
                Store::Plugins,
                airlock_store::ErrorKind::Conflict | airlock_store::ErrorKind::Config,
            ) => ErrorClass::Refused,
            _ => ErrorClass::Host,
        }
    }

    /// This error as JSON (see [`Error::to_json`]).
    pub fn to_json(&self) -> serde_json::Value {
        json(self, self.kind(), self.class(), &[])
    }
}

/// A ledger operation failed: the pipeline and the approvals use the
/// ledger through `?`.
impl From<airlock_store::StoreError> for StoreError {
    fn from(source: airlock_store::StoreError) -> StoreError {
        StoreError::new(Store::Ledger, source)
    }
}

impl From<airlock_store::StoreError> for CallError {
    fn from(source: airlock_store::StoreError) -> CallError {
        CallError::Store(source.into())
    }
}

impl From<airlock_store::StoreError> for Error {
    fn from(source: airlock_store::StoreError) -> Error {
        Error::Store(source.into())
    }
}

/// Why an approval does not allow a call ([`CallError::ApprovalRefused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ApprovalRefusal {
    /// An approver rejected it.
    Rejected,
    /// It expired, undecided or unused.
    Expired,
    /// It was cancelled.
    Cancelled,
    /// Another call used it.
    Consumed,
    /// No such approval exists.
    Unknown,
    /// It was given for another call (tool, component, arguments, principal,
    /// session or idempotency key).
    Mismatch,
}

/// Why a plugin archive is refused ([`LoadError::ArchiveRejected`]). An
/// archive is flat: `plugin.toml`, the component it names, and optionally
/// `cases.jsonl` and `plugin.sig`, each a regular file, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ArchiveRefusal {
    /// An entry's path has a `..` component.
    ParentPath,
    /// An entry's path is absolute.
    AbsolutePath,
    /// An entry's path has directories in it (archives are flat).
    NestedPath,
    /// An entry is a directory.
    Directory,
    /// An entry is a symbolic or hard link.
    Link,
    /// An entry is a device, a FIFO or another special file.
    SpecialFile,
    /// An entry is larger than its file may be.
    EntryTooLarge {
        /// Its size, in bytes.
        size: u64,
        /// The largest size accepted for it.
        limit: u64,
    },
    /// Two entries have the same name.
    DuplicateEntry,
    /// An entry is none of the files a package holds.
    UnknownEntry,
    /// More entries than a package has files.
    TooManyEntries {
        /// The most entries accepted.
        limit: usize,
    },
    /// The archive decompresses to more bytes than a package can hold.
    TooLarge {
        /// The most decompressed bytes accepted.
        limit: u64,
    },
    /// There is no `plugin.toml`.
    MissingManifest,
    /// Something other than zero padding (or more than 1 MiB of it)
    /// follows the end of the archive, in the compressed stream or after
    /// it: what another tool might unpack, this one would not have checked.
    TrailingData,
}

impl fmt::Display for ArchiveRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArchiveRefusal::ParentPath => f.write_str("its path contains `..`"),
            ArchiveRefusal::AbsolutePath => f.write_str("its path is absolute"),
            ArchiveRefusal::NestedPath => {
                f.write_str("its path has directories (a plugin archive is flat)")
            }
            ArchiveRefusal::Directory => f.write_str("it is a directory (a plugin archive is flat)"),
            ArchiveRefusal::Link => f.write_str("it is a link"),
            ArchiveRefusal::SpecialFile => f.write_str("it is not a regular file"),
            ArchiveRefusal::EntryTooLarge { size, limit } => {
                write!(f, "it is {size} bytes, more than the limit of {limit}")
            }
            ArchiveRefusal::DuplicateEntry => f.write_str("it appears twice"),
            ArchiveRefusal::UnknownEntry => f.write_str(
                "it is not a file of a plugin package (plugin.toml, its component, cases.jsonl, plugin.sig)",
            ),
            ArchiveRefusal::TooManyEntries { limit } => {
                write!(f, "more than {limit} entries")
            }
            ArchiveRefusal::TooLarge { limit } => {
                write!(f, "it decompresses to more than {limit} bytes")
            }
            ArchiveRefusal::MissingManifest => f.write_str("it holds no plugin.toml"),
            ArchiveRefusal::TrailingData => {
                f.write_str("data follows the end of the archive (only zero padding may, at most 1 MiB)")
            }
        }
    }
}

/// `entry `name`: ` before an archive refusal about one entry.
fn entry_prefix(entry: &Option<String>) -> String {
    match entry {
        Some(name) => format!("entry {name:?}: "),
        None => String::new(),
    }
}

/// What loading a plugin can fail with ([`Host::load_plugin`](crate::Host::load_plugin)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
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

    /// Every instance slot of the host's pool stayed taken while the
    /// loader waited to list the component's tools.
    #[error(
        "the host is at its limit of {limit} concurrent instances over all plugins; try again later"
    )]
    HostBusy {
        /// The pool's instance count (`HostConfig::max_instances`).
        limit: u32,
    },

    /// The host configuration is invalid.
    #[error("invalid host configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },

    /// The WebAssembly engine failed for a reason that is not the guest's.
    #[error("engine error: {message}")]
    Engine {
        /// What failed.
        message: String,
    },

    /// The audit log cannot record the change ([`Host::reload_plugin`]
    /// replacing a serving plugin), so it is not made: the plugin is
    /// unloaded instead.
    ///
    /// [`Host::reload_plugin`]: crate::Host::reload_plugin
    #[error("not loaded: the audit log cannot record the change")]
    AuditUnavailable(#[source] airlock_audit::Error),

    /// A plugin archive holds something a package may not; nothing of it
    /// was kept.
    #[error("plugin archive {} refused: {}{why}", path.display(), entry_prefix(entry))]
    ArchiveRejected {
        /// The archive.
        path: PathBuf,
        /// The entry refused, when the refusal is about one.
        entry: Option<String>,
        /// Why.
        why: ArchiveRefusal,
    },

    /// A plugin archive is not a readable gzip-compressed tar file.
    #[error("plugin archive {} is not a readable .tar.gz", path.display())]
    ArchiveCorrupt {
        /// The archive.
        path: PathBuf,
        /// What the decoder reported.
        #[source]
        source: std::io::Error,
    },

    /// The files of a plugin package do not make a package (a component
    /// that is not a file beside the manifest, `cases.jsonl` that is not
    /// UTF-8 or too large, a target directory that exists, ...).
    #[error("plugin package {} is invalid: {message}", path.display())]
    PackageInvalid {
        /// The package (directory or archive) or file concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The plugin has no signature and the operator's policy requires one
    /// (`require_signature`).
    #[error(
        "plugin `{plugin}` is not signed, and the operator's policy requires a signature (require_signature)"
    )]
    Unsigned {
        /// Plugin name.
        plugin: String,
    },

    /// The plugin's signature is valid but made by a key that is not among
    /// the operator's `trusted_keys`, or is trusted only for other
    /// plugins, and the policy requires a signature.
    #[error("plugin `{plugin}` is signed by {key}, {reason}")]
    UntrustedSigner {
        /// Plugin name.
        plugin: String,
        /// The signing key, `ed25519:BASE64`.
        key: String,
        /// Why the key does not vouch for this plugin.
        reason: String,
    },

    /// The plugin's signature file is garbled, or its signature is not over
    /// this manifest and component (either was changed after signing).
    #[error("plugin `{plugin}` has an invalid signature: {reason}")]
    SignatureInvalid {
        /// Plugin name.
        plugin: String,
        /// What is wrong.
        reason: String,
    },
}

/// What a call can fail with ([`Host::call`](crate::Host::call)): a
/// refusal before the guest ran, the guest's own error, a trap, or a
/// failure of what the call depends on (audit log, ledger, workspace
/// store, engine).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
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

    /// The host is in read-only mode: only `read` tools run.
    #[error("the host is in read-only mode: `{tool}` ({}) does not run{}", risk.as_str(), reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    ReadOnlyMode {
        /// `plugin/tool`.
        tool: String,
        /// Its risk class.
        risk: Risk,
        /// The operator's stated reason.
        reason: Option<String>,
    },

    /// The tool (or its whole plugin) is paused: by an alert's takeover or
    /// an operator, until a human resumes it (`airlock alerts resume`).
    #[error("`{tool}` is paused by {by}{}; a human resumes it", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    ToolPaused {
        /// `plugin/tool`.
        tool: String,
        /// Who paused it (`alert:RULE` for an alert's takeover).
        by: String,
        /// Why.
        reason: Option<String>,
    },

    /// A rate limit is exhausted; retry after the given time.
    #[error("rate limit for {scope} reached; retry in {retry_after_ms} ms")]
    RateLimited {
        /// Which limit (`tool billing/refund`, `principal agent-1`, ...).
        scope: String,
        /// When a call would be admitted again.
        retry_after_ms: u64,
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
        /// Why, for a program: the approval's state or a mismatch.
        why: ApprovalRefusal,
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

    /// The audit log cannot record the call, so it does not run (fail
    /// closed).
    #[error("call not run: the audit log cannot record it")]
    AuditUnavailable(#[source] airlock_audit::Error),

    /// A file could not be read or written.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The host's mode cannot be read (the mode file is not valid); the
    /// call does not run.
    #[error("invalid host configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },

    /// The WebAssembly engine failed for a reason that is not the guest's.
    #[error("engine error: {message}")]
    Engine {
        /// What failed.
        message: String,
    },

    /// The ledger or the workspace store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Any error of this crate: one of the boundary errors, or a failure of
/// the host itself. `?` converts each boundary error into it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Loading a plugin failed.
    #[error(transparent)]
    Load(#[from] LoadError),

    /// A call failed.
    #[error(transparent)]
    Call(#[from] CallError),

    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),

    /// A file could not be read or written.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The host configuration is invalid.
    #[error("invalid host configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },

    /// The WebAssembly engine failed for a reason that is not the guest's.
    #[error("engine error: {message}")]
    Engine {
        /// What failed.
        message: String,
    },

    /// The audit log cannot record an event (a decision, a mode switch), so
    /// the action it records is not taken.
    #[error("the audit log cannot record it")]
    AuditUnavailable(#[source] airlock_audit::Error),

    /// A rollout change was made — stored, serving — but the audit log
    /// could not record it then: it is recorded at the plugin's next
    /// rollout change, on this host. Not a failure to try again: made
    /// again, a rollback would go one step further.
    #[error(
        "{plugin}'s rollout was changed ({now}), but the audit log cannot record it now: it is recorded at {plugin}'s next rollout change; do not make the change again"
    )]
    ChangeUnrecorded {
        /// The plugin.
        plugin: String,
        /// What serves now.
        now: String,
        /// Why it could not be recorded.
        #[source]
        source: airlock_audit::Error,
    },

    /// An approver's decision was refused.
    #[error("decision refused: {reason}")]
    DecisionRefused {
        /// Why (unknown approver, bad token, own call, already decided, ...).
        reason: String,
    },

    /// An approval refused because no approver can see every argument the
    /// tool would receive; [`Verdict::ApproveUnseen`](crate::Verdict) says
    /// the approver approves without seeing them.
    #[error(
        "approval {id} not granted: {hidden}, so no approver can see what the tool would receive; approve it acknowledging the unseen values to let it run anyway"
    )]
    UnseenArguments {
        /// The approval.
        id: String,
        /// What cannot be seen ([`unseen_arguments`](crate::unseen_arguments)).
        hidden: &'static str,
    },

    /// The audit log (or its keys) cannot be opened or read.
    #[error(transparent)]
    Audit(#[from] airlock_audit::Error),

    /// A scenario cases file cannot be used.
    #[error(transparent)]
    Cases(#[from] crate::eval::CasesError),

    /// An operator's release action (install, rollout, promote, rollback)
    /// was refused.
    #[error(transparent)]
    Release(#[from] ReleaseError),
}

/// Why an operator's release action (a rollout, a promotion, a rollback) is
/// refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// What was named is not a plugin name (nothing of that name can be
    /// installed).
    #[error("{message}")]
    InvalidPluginName {
        /// What is wrong with it.
        message: String,
    },
    /// The version is not installed (`airlock plugins install` it first).
    #[error("{plugin} {version} is not installed")]
    NotInstalled {
        /// The plugin.
        plugin: String,
        /// The version asked for.
        version: String,
    },
    /// A share outside 0–100.
    #[error("a rollout percentage is 0-100, not {percent}")]
    BadPercent {
        /// What was asked.
        percent: u32,
    },
    /// A canary, a promotion or a status needs a version serving already.
    #[error("no installed version of {plugin} serves yet: activate one with --percent 100 first")]
    NothingServes {
        /// The plugin.
        plugin: String,
    },
    /// The version serves already, alone.
    #[error("{plugin} {version} serves already")]
    AlreadyServing {
        /// The plugin.
        plugin: String,
        /// The version.
        version: String,
    },
    /// No canary to promote.
    #[error("{plugin} has no canary to promote")]
    NoCanary {
        /// The plugin.
        plugin: String,
    },
    /// A first rollout (no rollout record yet) of a plugin whose plugins
    /// directory copy, what serves it until then, did not load on this
    /// host: the new version cannot be compared with it, so whether it
    /// asks for more is unclear.
    #[error(
        "{plugin} in {} did not load, and it is what serves {plugin} until a first rollout: the new version cannot be compared with it; make it load (or remove it from the plugins directory), then roll out",
        dir.display()
    )]
    BaselineNotLoaded {
        /// The plugin.
        plugin: String,
        /// Its directory in the plugins directory.
        dir: PathBuf,
    },
    /// No canary to stop and no previous version to return to.
    #[error("{plugin} has nothing to roll back to (no canary, no previous version)")]
    NothingToRollBack {
        /// The plugin.
        plugin: String,
    },
    /// An alert's automatic rollback found the rollout's last change to be
    /// a rollback already (an alert's or an operator's): one never undoes
    /// more than one change (another host's alert on the same incident,
    /// the alert firing again, or firing after an operator stopped the
    /// canary, would walk the plugin back to ever older versions); going
    /// further is an operator's decision.
    #[error(
        "{plugin}'s last change is already a rollback (by {by}): a further rollback is left to an operator"
    )]
    AlreadyRolledBack {
        /// The plugin.
        plugin: String,
        /// Who made the rollback there is.
        by: String,
    },
    /// Another operator changed the rollout first; this change was not
    /// made (and is recorded as lost).
    #[error(
        "another change of {plugin}'s rollout came first (by {by}); nothing was changed: look at it and decide again"
    )]
    Conflict {
        /// The plugin.
        plugin: String,
        /// Who changed it.
        by: String,
    },
    /// The version asks for more than the one serving: an approver must
    /// decide on `approval_id` first, then the same change is asked again
    /// with it.
    #[error("{plugin} {version} asks for more than {from} ({}): an approver must approve {approval_id}, then run the same change with that approval", widens.join("; "))]
    ApprovalRequired {
        /// The plugin.
        plugin: String,
        /// The version asked for.
        version: String,
        /// The version serving.
        from: String,
        /// The approval waiting for a decision.
        approval_id: String,
        /// What the new version may do that the serving one may not.
        widens: Vec<String>,
    },
    /// The version asks for more than the one serving, and no approver is
    /// configured to allow it.
    #[error("{plugin} {version} asks for more than the version serving ({}), and no approver is configured (policy.approvals.approvers) to allow it", widens.join("; "))]
    NoApprover {
        /// The plugin.
        plugin: String,
        /// The version asked for.
        version: String,
        /// What widens.
        widens: Vec<String>,
    },
    /// The approval given does not allow this change.
    #[error("approval {approval_id} does not allow this change: {reason}")]
    ApprovalRefused {
        /// The approval.
        approval_id: String,
        /// Why.
        reason: String,
    },
    /// An alert's rollback is about a version a rollback would not take
    /// out of service: nothing is changed, and an operator decides.
    #[error(
        "{plugin} {version} is failing, but a rollback would not take it out of service: {why}; nothing was changed"
    )]
    NotRollbackTarget {
        /// The plugin.
        plugin: String,
        /// The version whose calls tripped the alert.
        version: String,
        /// Why a rollback misses it.
        why: String,
    },
}

impl ReleaseError {
    /// A stable, machine-readable name for this error.
    pub fn kind(&self) -> &'static str {
        match self {
            ReleaseError::InvalidPluginName { .. } => "invalid_plugin_name",
            ReleaseError::NotInstalled { .. } => "version_not_installed",
            ReleaseError::BadPercent { .. } => "invalid_rollout",
            ReleaseError::NothingServes { .. } => "nothing_serves",
            ReleaseError::AlreadyServing { .. } => "already_serving",
            ReleaseError::NoCanary { .. } => "no_canary",
            ReleaseError::BaselineNotLoaded { .. } => "baseline_not_loaded",
            ReleaseError::NothingToRollBack { .. } => "nothing_to_roll_back",
            ReleaseError::AlreadyRolledBack { .. } => "already_rolled_back",
            ReleaseError::Conflict { .. } => "rollout_conflict",
            ReleaseError::ApprovalRequired { .. } => "upgrade_approval_pending",
            ReleaseError::NoApprover { .. } => "approval_unavailable",
            ReleaseError::ApprovalRefused { .. } => "upgrade_approval_refused",
            ReleaseError::NotRollbackTarget { .. } => "not_rollback_target",
        }
    }

    /// Which class of failure this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            ReleaseError::ApprovalRequired { .. } => ErrorClass::Pending,
            ReleaseError::InvalidPluginName { .. }
            | ReleaseError::NotInstalled { .. }
            | ReleaseError::BadPercent { .. }
            | ReleaseError::NothingServes { .. }
            | ReleaseError::AlreadyServing { .. }
            | ReleaseError::NoCanary { .. }
            | ReleaseError::BaselineNotLoaded { .. }
            | ReleaseError::NothingToRollBack { .. }
            | ReleaseError::AlreadyRolledBack { .. }
            | ReleaseError::Conflict { .. }
            | ReleaseError::NoApprover { .. }
            | ReleaseError::ApprovalRefused { .. }
            | ReleaseError::NotRollbackTarget { .. } => ErrorClass::Refused,
        }
    }

    /// This error as JSON (see [`Error::to_json`]); a pending upgrade
    /// carries its `approval_id`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = json(self, self.kind(), self.class(), &[]);
        if let ReleaseError::ApprovalRequired { approval_id, .. } = self {
            value["approval_id"] = serde_json::Value::from(approval_id.clone());
        }
        value
    }
}

/// An error and its sources, joined with `: `.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn join(violations: &[SchemaViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The one JSON shape of every error: `kind`, `class`, `message` (the
/// error and its sources), `violations`.
fn json(
    error: &dyn std::error::Error,
    kind: &str,
    class: ErrorClass,
    violations: &[SchemaViolation],
) -> serde_json::Value {
    let message = chain(error);
    serde_json::json!({
        "kind": kind,
        "class": class,
        "message": message,
        "violations": violations,
    })
}

impl LoadError {
    /// A stable, machine-readable name for this error (`snake_case`), used in
    /// the CLI's and the MCP server's JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::Io { .. } => "io",
            LoadError::ManifestSyntax { .. } => "manifest_syntax",
            LoadError::ManifestInvalid { .. } => "manifest_invalid",
            LoadError::ManifestRejected { .. } => "manifest_rejected",
            LoadError::ComponentMissing { .. } => "component_missing",
            LoadError::DigestMismatch { .. } => "digest_mismatch",
            LoadError::InvalidComponent { .. } => "invalid_component",
            LoadError::WrongWorld { .. } => "wrong_world",
            LoadError::InvalidToolList { .. } => "invalid_tool_list",
            LoadError::ToolNotExported { .. } => "tool_not_exported",
            LoadError::DuplicatePlugin { .. } => "duplicate_plugin",
            LoadError::CapabilityDenied { .. } => "capability_denied",
            LoadError::CapabilityNotGranted { .. } => "capability_not_granted",
            LoadError::LimitAboveCeiling { .. } => "limit_above_ceiling",
            LoadError::HostBusy { .. } => "host_busy",
            LoadError::Config { .. } => "config",
            LoadError::Engine { .. } => "engine",
            LoadError::AuditUnavailable(_) => "audit_unavailable",
            LoadError::ArchiveRejected { why, .. } => match why {
                ArchiveRefusal::ParentPath => "archive_parent_path",
                ArchiveRefusal::AbsolutePath => "archive_absolute_path",
                ArchiveRefusal::NestedPath => "archive_nested_path",
                ArchiveRefusal::Directory => "archive_directory",
                ArchiveRefusal::Link => "archive_link",
                ArchiveRefusal::SpecialFile => "archive_special_file",
                ArchiveRefusal::EntryTooLarge { .. } => "archive_entry_too_large",
                ArchiveRefusal::DuplicateEntry => "archive_duplicate_entry",
                ArchiveRefusal::UnknownEntry => "archive_unknown_entry",
                ArchiveRefusal::TooManyEntries { .. } => "archive_too_many_entries",
                ArchiveRefusal::TooLarge { .. } => "archive_too_large",
                ArchiveRefusal::MissingManifest => "archive_missing_manifest",
                ArchiveRefusal::TrailingData => "archive_trailing_data",
            },
            LoadError::ArchiveCorrupt { .. } => "archive_corrupt",
            LoadError::PackageInvalid { .. } => "package_invalid",
            LoadError::Unsigned { .. } => "plugin_unsigned",
            LoadError::UntrustedSigner { .. } => "signer_untrusted",
            LoadError::SignatureInvalid { .. } => "signature_invalid",
        }
    }

    /// Which class of failure this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            LoadError::CapabilityDenied { .. } | LoadError::CapabilityNotGranted { .. } => {
                ErrorClass::CapabilityDenied
            }
            LoadError::HostBusy { .. } => ErrorClass::Refused,
            LoadError::Unsigned { .. }
            | LoadError::UntrustedSigner { .. }
            | LoadError::SignatureInvalid { .. } => ErrorClass::Untrusted,
            LoadError::Io { .. }
            | LoadError::ArchiveRejected { .. }
            | LoadError::ArchiveCorrupt { .. }
            | LoadError::PackageInvalid { .. }
            | LoadError::ManifestSyntax { .. }
            | LoadError::ManifestInvalid { .. }
            | LoadError::ManifestRejected { .. }
            | LoadError::ComponentMissing { .. }
            | LoadError::DigestMismatch { .. }
            | LoadError::InvalidComponent { .. }
            | LoadError::WrongWorld { .. }
            | LoadError::InvalidToolList { .. }
            | LoadError::ToolNotExported { .. }
            | LoadError::DuplicatePlugin { .. }
            | LoadError::LimitAboveCeiling { .. }
            | LoadError::Config { .. }
            | LoadError::Engine { .. }
            | LoadError::AuditUnavailable(_) => ErrorClass::Host,
        }
    }

    /// The schema violations carried by this error, if it has any.
    pub fn violations(&self) -> &[SchemaViolation] {
        match self {
            LoadError::ManifestInvalid { violations, .. } => violations,
            _ => &[],
        }
    }

    /// This error as JSON (see [`Error::to_json`]), with the archive entry
    /// an [`LoadError::ArchiveRejected`] is about as `entry`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = json(self, self.kind(), self.class(), self.violations());
        if let LoadError::ArchiveRejected {
            entry: Some(entry), ..
        } = self
        {
            value["entry"] = serde_json::json!(entry);
        }
        value
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> LoadError {
        LoadError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Every kind a call can end with ([`CallError::kind`]): the outcomes of
/// failed calls in the audit log, what a case's `expect.error` may name.
pub const CALL_ERROR_KINDS: &[&str] = &[
    "invalid_trace_id",
    "invalid_traceparent",
    "invalid_principal",
    "invalid_idempotency_key",
    "invalid_approval_id",
    "invalid_session",
    "bad_tool_reference",
    "unknown_plugin",
    "unknown_tool",
    "read_only_mode",
    "tool_paused",
    "rate_limited",
    "arguments_too_large",
    "arguments_not_json",
    "arguments_not_object",
    "arguments_invalid",
    "idempotency_key_required",
    "idempotency_mismatch",
    "idempotency_in_use",
    "idempotency_outcome_unknown",
    "replayed_failure",
    "approval_pending",
    "approval_unavailable",
    "too_many_pending_approvals",
    "approval_rejected",
    "approval_expired",
    "approval_cancelled",
    "approval_consumed",
    "approval_unknown",
    "approval_mismatch",
    "plugin_busy",
    "principal_busy",
    "host_busy",
    "cancelled",
    "tool_error",
    "fuel_exhausted",
    "deadline_exceeded",
    "memory_limit",
    "host_data_limit",
    "guest_trap",
    "output_too_large",
    "output_invalid",
    "audit_unavailable",
    "io",
    "config",
    "engine",
    "ledger_unavailable",
    "workspace",
    "store_unavailable",
    "version_taken",
    "invalid_version",
];

impl CallError {
    /// A stable, machine-readable name for this error (`snake_case`), used in
    /// the CLI's and the MCP server's JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::InvalidIdentifier { what, .. } => match what {
                Identifier::TraceId => "invalid_trace_id",
                Identifier::Traceparent => "invalid_traceparent",
                Identifier::Principal => "invalid_principal",
                Identifier::IdempotencyKey => "invalid_idempotency_key",
                Identifier::ApprovalId => "invalid_approval_id",
            },
            CallError::InvalidSession { .. } => "invalid_session",
            CallError::BadToolReference { .. } => "bad_tool_reference",
            CallError::UnknownPlugin { .. } => "unknown_plugin",
            CallError::UnknownTool { .. } => "unknown_tool",
            CallError::ReadOnlyMode { .. } => "read_only_mode",
            CallError::ToolPaused { .. } => "tool_paused",
            CallError::RateLimited { .. } => "rate_limited",
            CallError::ArgumentsTooLarge { .. } => "arguments_too_large",
            CallError::ArgumentsNotJson { .. } => "arguments_not_json",
            CallError::ArgumentsNotObject { .. } => "arguments_not_object",
            CallError::ArgumentsInvalid { .. } => "arguments_invalid",
            CallError::IdempotencyKeyRequired { .. } => "idempotency_key_required",
            CallError::IdempotencyMismatch { .. } => "idempotency_mismatch",
            CallError::IdempotencyInUse { .. } => "idempotency_in_use",
            CallError::IdempotencyOutcomeUnknown { .. } => "idempotency_outcome_unknown",
            CallError::ReplayedFailure { .. } => "replayed_failure",
            CallError::ApprovalPending { .. } => "approval_pending",
            CallError::ApprovalUnavailable { .. } => "approval_unavailable",
            CallError::TooManyPendingApprovals { .. } => "too_many_pending_approvals",
            CallError::ApprovalRefused { why, .. } => match why {
                ApprovalRefusal::Rejected => "approval_rejected",
                ApprovalRefusal::Expired => "approval_expired",
                ApprovalRefusal::Cancelled => "approval_cancelled",
                ApprovalRefusal::Consumed => "approval_consumed",
                ApprovalRefusal::Unknown => "approval_unknown",
                ApprovalRefusal::Mismatch => "approval_mismatch",
            },
            CallError::PluginBusy { .. } => "plugin_busy",
            CallError::PrincipalBusy { .. } => "principal_busy",
            CallError::HostBusy { .. } => "host_busy",
            CallError::Cancelled { .. } => "cancelled",
            CallError::Tool { .. } => "tool_error",
            CallError::Trap { kind, .. } => match kind {
                TrapKind::FuelExhausted => "fuel_exhausted",
                TrapKind::DeadlineExceeded => "deadline_exceeded",
                TrapKind::MemoryLimit => "memory_limit",
                TrapKind::HostDataLimit => "host_data_limit",
                TrapKind::GuestTrap => "guest_trap",
            },
            CallError::OutputTooLarge { .. } => "output_too_large",
            CallError::OutputInvalid { .. } => "output_invalid",
            CallError::AuditUnavailable(_) => "audit_unavailable",
            CallError::Io { .. } => "io",
            CallError::Config { .. } => "config",
            CallError::Engine { .. } => "engine",
            CallError::Store(e) => e.kind(),
        }
    }

    /// Which class of failure this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            CallError::InvalidIdentifier { .. }
            | CallError::InvalidSession { .. }
            | CallError::BadToolReference { .. }
            | CallError::UnknownPlugin { .. }
            | CallError::UnknownTool { .. }
            | CallError::ReadOnlyMode { .. }
            | CallError::ToolPaused { .. }
            | CallError::RateLimited { .. }
            | CallError::ArgumentsTooLarge { .. }
            | CallError::ArgumentsNotJson { .. }
            | CallError::ArgumentsNotObject { .. }
            | CallError::ArgumentsInvalid { .. }
            | CallError::IdempotencyKeyRequired { .. }
            | CallError::IdempotencyMismatch { .. }
            | CallError::IdempotencyInUse { .. }
            | CallError::IdempotencyOutcomeUnknown { .. }
            | CallError::ApprovalUnavailable { .. }
            | CallError::TooManyPendingApprovals { .. }
            | CallError::ApprovalRefused { .. }
            | CallError::PluginBusy { .. }
            | CallError::PrincipalBusy { .. }
            | CallError::HostBusy { .. }
            | CallError::Cancelled { ran: false, .. } => ErrorClass::Refused,
            CallError::ApprovalPending { .. } => ErrorClass::Pending,
            CallError::Tool { .. } | CallError::ReplayedFailure { .. } => ErrorClass::ToolError,
            CallError::Cancelled { ran: true, .. }
            | CallError::Trap { .. }
            | CallError::OutputTooLarge { .. }
            | CallError::OutputInvalid { .. } => ErrorClass::Trap,
            CallError::AuditUnavailable(_)
            | CallError::Io { .. }
            | CallError::Config { .. }
            | CallError::Engine { .. } => ErrorClass::Host,
            CallError::Store(e) => e.class(),
        }
    }

    /// The schema violations carried by this error, if it has any.
    pub fn violations(&self) -> &[SchemaViolation] {
        match self {
            CallError::ArgumentsInvalid { violations, .. } => violations,
            _ => &[],
        }
    }

    /// This error as JSON (see [`Error::to_json`]), with the fields a
    /// caller acts on: `approval_id` and `expires` of a pending approval,
    /// `retry_after_ms` of a rate-limited call.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = json(self, self.kind(), self.class(), self.violations());
        match self {
            CallError::ApprovalPending {
                approval_id,
                expires,
                ..
            } => {
                value["approval_id"] = serde_json::json!(approval_id);
                value["expires"] = serde_json::json!(expires);
            }
            CallError::RateLimited { retry_after_ms, .. } => {
                value["retry_after_ms"] = serde_json::json!(retry_after_ms);
            }
            _ => {}
        }
        value
    }
}

impl Error {
    /// A stable, machine-readable name for this error (`snake_case`), used in
    /// the CLI's and the MCP server's JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Load(e) => e.kind(),
            Error::Call(e) => e.kind(),
            Error::Store(e) => e.kind(),
            Error::Io { .. } => "io",
            Error::Config { .. } => "config",
            Error::Engine { .. } => "engine",
            Error::AuditUnavailable(_) => "audit_unavailable",
            Error::ChangeUnrecorded { .. } => "change_unrecorded",
            Error::DecisionRefused { .. } => "decision_refused",
            Error::UnseenArguments { .. } => "unseen_arguments",
            Error::Audit(_) => "audit",
            Error::Cases(e) => e.kind(),
            Error::Release(e) => e.kind(),
        }
    }

    /// Which class of failure this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Load(e) => e.class(),
            Error::Call(e) => e.class(),
            Error::Store(e) => e.class(),
            Error::Release(e) => e.class(),
            Error::Io { .. }
            | Error::Config { .. }
            | Error::Engine { .. }
            | Error::AuditUnavailable(_)
            | Error::ChangeUnrecorded { .. }
            | Error::DecisionRefused { .. }
            | Error::UnseenArguments { .. }
            | Error::Audit(_)
            | Error::Cases(_) => ErrorClass::Host,
        }
    }

    /// The schema violations carried by this error, if it has any.
    pub fn violations(&self) -> &[SchemaViolation] {
        match self {
            Error::Load(e) => e.violations(),
            Error::Call(e) => e.violations(),
            _ => &[],
        }
    }

    /// This error as the JSON object the CLI's `--json` output and the MCP
    /// server's results carry: `kind`, `class`, `message` (the error and
    /// its sources), `violations`, and the fields a caller acts on —
    /// `approval_id` and `expires` of a pending approval, `retry_after_ms`
    /// of a rate-limited call.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Error::Load(e) => e.to_json(),
            Error::Call(e) => e.to_json(),
            Error::Store(e) => e.to_json(),
            Error::Release(e) => e.to_json(),
            _ => json(self, self.kind(), self.class(), self.violations()),
        }
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
    /// The kinds `CallError::kind` and `StoreError::kind` can return, read
    /// from their source: `CALL_ERROR_KINDS` lists exactly these, so a new
    /// kind cannot be missing from what `expect.error` and `audit query
    /// --outcome` accept.
    #[test]
    fn call_error_kinds_lists_every_kind_a_call_can_end_with() {
        let source = include_str!("error.rs");
        let kinds_in = |owner: &str| -> Vec<String> {
            let start = source.find(&format!("impl {owner} {{")).unwrap();
            let body = &source[start..];
            let body = &body[body.find("pub fn kind(&self)").unwrap()..];
            let body = &body[..body.find("\n    }\n").unwrap()];
            body.split("=> \"")
                .skip(1)
                .map(|rest| rest[..rest.find('"').unwrap()].to_owned())
                .collect()
        };
        let mut found = kinds_in("CallError");
        found.extend(kinds_in("StoreError"));
        found.sort();
        found.dedup();
        let mut listed: Vec<String> = CALL_ERROR_KINDS.iter().map(|k| (*k).to_owned()).collect();
        listed.sort();
        assert_eq!(listed.len(), CALL_ERROR_KINDS.len(), "a kind listed twice");
        assert!(found.len() > 50, "{found:?}");
        assert_eq!(listed, found);
    }

    use super::*;

    #[test]
    fn json_carries_what_a_caller_acts_on() {
        let limited = CallError::RateLimited {
            scope: "tool billing/refund".into(),
            retry_after_ms: 1500,
        }
        .to_json();
        assert_eq!(limited["kind"], "rate_limited");
        assert_eq!(limited["class"], "refused");
        assert_eq!(limited["retry_after_ms"], 1500);
        assert!(limited.get("approval_id").is_none());

        let pending = Error::from(CallError::ApprovalPending {
            tool: "billing/refund".into(),
            approval_id: "apr-1".into(),
            expires: "2026-11-23T08:00:00Z".into(),
        })
        .to_json();
        assert_eq!(pending["kind"], "approval_pending");
        assert_eq!(pending["class"], "pending");
        assert_eq!(pending["approval_id"], "apr-1");
        assert_eq!(pending["expires"], "2026-11-23T08:00:00Z");
        assert!(pending.get("retry_after_ms").is_none());

        let invalid = CallError::ArgumentsInvalid {
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

    #[test]
    fn a_store_failure_keeps_its_cause() {
        let io = std::io::Error::other("disk on fire");
        let error = Error::from(CallError::from(StoreError::new(
            Store::Ledger,
            airlock_store::StoreError::unavailable("ledger at /data/ledger", io),
        )));
        assert_eq!(error.kind(), "ledger_unavailable");
        assert_eq!(error.class(), ErrorClass::Host);
        let cause = std::error::Error::source(&error).expect("a source");
        assert_eq!(cause.to_string(), "ledger at /data/ledger");
        let root = std::error::Error::source(cause).expect("the backend's error");
        assert_eq!(root.to_string(), "disk on fire");
        let message = error.to_json()["message"].as_str().unwrap().to_owned();
        assert!(message.ends_with(": disk on fire"), "{message}");
    }
}
