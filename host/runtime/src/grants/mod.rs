//! Capabilities: what a plugin may use, and how each is linked and checked.
//!
//! The *effective grant* of a plugin is its manifest's `[capabilities]`
//! intersected with the operator's [`Policy`]. A manifest asking for
//! something the policy forbids fails to load ([`Error::CapabilityDenied`]).
//!
//! Interfaces fall in three groups (see [`classify`]):
//! - **baseline**: interfaces every `wasm32-wasip2` program imports that carry
//!   no authority by themselves — I/O streams, exit, stdio, environment and
//!   filesystem *types* and *preopens*, the wall clock and the hash-seed.
//!   Their authority comes from what the grant puts behind them: only granted
//!   environment variables are visible, only granted directories are
//!   preopened, the wall clock reads the Unix epoch and the seed is fixed
//!   unless `clocks` / `random` are granted.
//! - **gated**: interfaces that confer authority by existing (logging, the
//!   monotonic clock, entropy, outgoing HTTP). They are linked only when
//!   granted; a component importing one without the grant fails to load
//!   with [`Error::CapabilityNotGranted`], naming the manifest key that
//!   grants it.
//! - **never**: raw sockets (`wasi:sockets/*`) and the parts of `wasi:http`
//!   that serve rather than send requests are never linked. Network access
//!   exists only as `http`, through its origin and address checks.
//!
//! Each capability lives in its own module, one [`Factor`] owning its
//! manifest key, its policy, the interfaces it grants, their linking and
//! its part of a call's store. To add one: write `grants/<name>.rs` with a
//! unit struct implementing [`Factor`] and add its line to `capabilities!`
//! below; the data it reads and writes are its manifest field
//! (`manifest::Capabilities`, and the manifest schema: a test checks the
//! two agree) and its fields of [`EffectiveGrant`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wasmtime::Engine;
use wasmtime::component::{HasData, HasSelf, Linker, ResourceTable};
use wasmtime_wasi::WasiCtxBuilder;

pub(crate) use self::http::{
    FIELDS_BYTES as HTTP_FIELDS_BYTES, HttpHooks, Notes as HttpNotes, TlsClient,
    take_notes as take_http_notes,
};
pub use self::http::{HttpGrant, HttpScheme, IpRange, Origin, OriginHost};
mod files_quota;
mod files_times;
mod mounts;

pub use files::ResolvedFiles;
pub(crate) use files::{
    Protected as ProtectedPaths, check_overlaps as check_files_overlaps, in_through_a_mount,
    into_through_a_mount, mount_table_unread,
};
pub(crate) use files_quota::FilesBudget;
pub(crate) use mounts::Layout;
pub(crate) use workspace::{KeyOrder, WorkspaceScope};

use crate::error::{LoadError as Error, LoadResult as Result};
use crate::manifest::{Capabilities, Manifest};
use crate::state::CallState;

/// The registry: every capability, once, with the module implementing it.
///
/// Each line makes a [`Capability`] variant (its serde name is the variant
/// in snake case, which must match the manifest key), declares the module
/// and ties the variant to the module's [`Factor`]. The order is the order
/// of [`Capability::ALL`], of `inspect`'s capability list and of linking.
macro_rules! capabilities {
    ($($(#[$doc:meta])* $variant:ident => $module:ident::$factor:ident,)*) => {
        $(mod $module;)*

        /// A capability a manifest can declare and a policy can forbid.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(rename_all = "snake_case")]
        pub enum Capability {
            $($(#[$doc])* $variant,)*
        }

        impl Capability {
            /// Every capability.
            pub const ALL: [Capability; [$(Capability::$variant),*].len()] =
                [$(Capability::$variant),*];

            /// The implementation of this capability.
            pub(crate) fn factor(self) -> &'static dyn Factor {
                match self {
                    $(Capability::$variant => &$module::$factor,)*
                }
            }
        }
    };
}

capabilities! {
    /// `capabilities.log`
    Log => log::Log,
    /// `capabilities.clocks`
    Clocks => clocks::Clocks,
    /// `capabilities.random`
    Random => random::Random,
    /// `capabilities.stdio`
    Stdio => stdio::Stdio,
    /// `capabilities.env`
    Env => env::Env,
    /// `capabilities.files`
    Files => files::Files,
    /// `capabilities.workspace`
    Workspace => workspace::Workspace,
    /// `capabilities.http`
    Http => http::Http,
}

/// One capability, whole (after Spin's factors): its manifest key, its
/// operator settings and what the policy lets through, the interfaces it
/// grants, how they are linked, and what a call's store holds for it.
///
/// Each capability is a unit struct in its own module implementing this
/// trait, registered by one line in `capabilities!` above. No item has a
/// default, so a capability missing a part does not compile.
pub(crate) trait Factor {
    /// The manifest key that declares it (`capabilities.log`). A further
    /// key of the same capability starts with this one and `_`
    /// (`capabilities.workspace_scope`).
    fn manifest_key(&self) -> &'static str;

    /// How a manifest grants it, for messages.
    fn grant_example(&self) -> &'static str;

    /// Interfaces (unversioned) that confer authority by existing: linked
    /// only when granted, and a component importing one without the grant
    /// fails to load.
    fn gated(&self) -> &'static [&'static str];

    /// Baseline interfaces (unversioned, always linked) whose behaviour the
    /// grant shapes: what the guest sees through them is what it is granted.
    fn shaped(&self) -> &'static [&'static str];

    /// Whether the manifest declares it.
    fn declared(&self, caps: &Capabilities) -> bool;

    /// Check its operator settings (part of [`Policy::validate`]).
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting.
    fn check_policy(&self, policy: &Policy) -> Result<()>;

    /// Write its part of the effective grant: what the manifest declares,
    /// narrowed by the policy. Called for every capability, declared or
    /// not, once none is forbidden.
    ///
    /// # Errors
    /// [`Error::CapabilityDenied`] when the policy does not allow what the
    /// manifest asks.
    fn resolve(&self, manifest: &Resolve<'_>, grant: &mut EffectiveGrant) -> Result<()>;

    /// Whether `grant` holds it.
    fn granted(&self, grant: &EffectiveGrant) -> bool;

    /// How a call could change something through it (`"files read-write"`),
    /// `None` when it can only read. Read-only mode narrows exactly these.
    fn write_capable(&self, grant: &EffectiveGrant) -> Option<&'static str>;

    /// Link its interfaces: the shaped ones always, the gated ones only when
    /// granted.
    fn link(&self, linker: &mut Linker<CallState>, grant: &EffectiveGrant) -> wasmtime::Result<()>;

    /// Set up its part of one call's store.
    fn configure(&self, call: &mut CallSetup<'_>, grant: &EffectiveGrant) -> wasmtime::Result<()>;
}

/// What [`Factor::resolve`] works from.
pub(crate) struct Resolve<'a> {
    /// The plugin's name, for errors.
    pub(crate) plugin: &'a str,
    /// The manifest's `[capabilities]`.
    pub(crate) caps: &'a Capabilities,
    /// The operator's policy.
    pub(crate) policy: &'a Policy,
    /// The directory the manifest was loaded from.
    pub(crate) plugin_dir: &'a Path,
}

/// What [`Factor::configure`] sets up for one call, before its store is
/// made. State a capability keeps for the call is a field here and in
/// [`CallState`].
pub(crate) struct CallSetup<'a> {
    /// The call's WASI context.
    pub(crate) wasi: &'a mut WasiCtxBuilder,
    /// The call's `wasi:http` sender.
    pub(crate) http_hooks: &'a mut HttpHooks,
    /// The host's read-only mode (and listing tools): every write-capable
    /// grant is narrowed to reading.
    pub(crate) read_only: bool,
    /// What the call may still write through its `files` grants, when it
    /// may write there at all.
    pub(crate) files_budget: Option<std::sync::Arc<FilesBudget>>,
}

impl Capability {
    /// The manifest key that declares this capability.
    pub fn manifest_key(self) -> &'static str {
        self.factor().manifest_key()
    }

    /// How a manifest grants this capability, for messages.
    pub fn grant_example(self) -> &'static str {
        self.factor().grant_example()
    }

    /// The interfaces (unversioned) whose presence or behaviour this
    /// capability controls: the gated ones, then the shaped baseline ones.
    pub(crate) fn interfaces(self) -> impl Iterator<Item = &'static str> {
        let factor = self.factor();
        factor.gated().iter().chain(factor.shaped()).copied()
    }

    /// Whether `caps` declares this capability.
    pub(crate) fn declared(self, caps: &Capabilities) -> bool {
        self.factor().declared(caps)
    }
}

/// `policy.{key} must be at least 1` for the first zero among `settings`.
fn at_least_one(settings: &[(&str, Option<u64>)]) -> Result<()> {
    match settings.iter().find(|(_, value)| *value == Some(0)) {
        Some((key, _)) => Err(Error::Config {
            message: format!("policy.{key} must be at least 1"),
        }),
        None => Ok(()),
    }
}

/// Ceilings the operator puts on every plugin's limits. A manifest asking for
/// more fails to load; a host default above a ceiling is lowered to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitCeilings {
    /// Fuel per call.
    pub fuel: Option<u64>,
    /// Deadline per call, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Linear memory per instance, in MiB.
    pub memory_mb: Option<u64>,
    /// Result size, in KiB.
    pub max_output_kb: Option<u64>,
    /// Concurrent instances per plugin.
    pub max_concurrency: Option<u64>,
    /// Workspace keys per plugin.
    pub workspace_keys: Option<u64>,
    /// Workspace space per plugin, in MiB.
    pub workspace_mb: Option<u64>,
    /// Workspace blobs per plugin.
    pub workspace_blobs: Option<u64>,
}

impl LimitCeilings {
    /// The longest deadline any call may have, in milliseconds: the
    /// operator's ceiling, else the built-in one.
    pub fn longest_timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(crate::limits::CEILING_TIMEOUT_MS)
    }
}

/// The operator's policy: trusted configuration that narrows what any plugin
/// may be granted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Capabilities no plugin may have.
    #[serde(default)]
    pub forbid: BTreeSet<Capability>,
    /// Directory every `files` grant must resolve inside. Without it, each
    /// plugin's host paths are resolved inside its own plugin directory.
    #[serde(default)]
    pub files_root: Option<PathBuf>,
    /// Values for environment variables plugins may declare by name.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Ceilings on limits.
    #[serde(default)]
    pub limits: LimitCeilings,
    /// Which calls need a human approval, who may give it, and how long
    /// idempotency outcomes are kept.
    #[serde(default)]
    pub approvals: crate::ledger::ApprovalPolicy,
    /// Rate limits per principal, plugin and tool.
    #[serde(default)]
    pub rate_limits: crate::ratelimit::RateLimitPolicy,
    /// The operator's risk class for tools (`"plugin/tool" = "write"`),
    /// replacing what the manifest declares: a tool its author calls
    /// `read` gets its approvals, flushed intent and read-only refusal by
    /// the class the operator gives it.
    #[serde(default)]
    pub risk: BTreeMap<String, crate::manifest::Risk>,
    /// The operator's retry policy for tools (`"plugin/tool"` or
    /// `"plugin/*"`), replacing the manifest's: the exact name first, then
    /// the plugin's wildcard. `attempts = 1` turns a manifest's retries
    /// off. The same rules hold whoever sets it: only `host_busy`,
    /// `plugin_busy` and `store_unavailable`, only for a `read` tool or a
    /// call with an idempotency key.
    #[serde(default)]
    pub retry: BTreeMap<String, crate::manifest::RetryPolicy>,
    /// Origins plugins may be granted (`http`). `None`: any origin a
    /// manifest lists; `Some(list)`: a manifest origin outside the list fails
    /// to load (an empty list allows none).
    #[serde(default)]
    pub http_allow: Option<Vec<Origin>>,
    /// Non-public addresses (loopback, private, link-local, ...) HTTP
    /// requests may connect to anyway, as CIDR ranges or single addresses.
    /// Empty (the default): only public unicast addresses.
    #[serde(default)]
    pub http_allow_private: Vec<IpRange>,
    /// Origins whose *names* may resolve to the addresses of
    /// `http_allow_private`. An origin that is an address in those ranges
    /// reaches it as listed; a name needs to be here as well: otherwise a
    /// plugin could point a domain of its own at the operator's exception
    /// (DNS rebinding) and reach a service meant for another plugin.
    #[serde(default)]
    pub http_private_origins: Vec<Origin>,
    /// PEM files of certificate authorities HTTPS requests trust besides
    /// Mozilla's roots (an internal CA). Relative paths in a config file are
    /// relative to the file.
    #[serde(default)]
    pub http_ca_certs: Vec<PathBuf>,
    /// Outgoing HTTP requests per call (default
    /// 16).
    #[serde(default)]
    pub http_max_requests: Option<u64>,
    /// Largest HTTP response body, in KiB (default
    /// 1024).
    #[serde(default)]
    pub http_max_response_kb: Option<u64>,
    /// Largest HTTP request body, in KiB (default 1024).
    #[serde(default)]
    pub http_max_request_kb: Option<u64>,
    /// Resolve + connect + TLS time per request, in milliseconds (default
    /// 5000).
    #[serde(default)]
    pub http_connect_timeout_ms: Option<u64>,
    /// Wait for a response head, and between body chunks, in milliseconds
    /// (default 10000).
    #[serde(default)]
    pub http_first_byte_timeout_ms: Option<u64>,
    /// Blocking DNS lookups in flight at once over every plugin (default
    /// 8).
    #[serde(default)]
    pub http_max_dns_lookups: Option<u64>,
    /// Log lines kept per call, empty ones included (default
    /// 1000); lines past it are
    /// counted as dropped.
    #[serde(default)]
    pub log_max_lines: Option<u64>,
    /// KiB one call may write through its read-write `files` grants
    /// (default 65536); past it writes fail with `insufficient-space`.
    #[serde(default)]
    pub files_max_write_kb: Option<u64>,
    /// Files, directories and links one call may create through its
    /// read-write `files` grants (default 1000).
    #[serde(default)]
    pub files_max_created: Option<u64>,
    /// Keys whose plugin signatures the operator trusts, by the name shown
    /// as the signer: for every plugin (`alice = "ed25519:BASE64"`) or only
    /// for the plugins named (`release = { key = "ed25519:BASE64",
    /// plugins = ["billing"] }`).
    #[serde(default)]
    pub trusted_keys: BTreeMap<String, crate::package::TrustedKey>,
    /// Refuse plugins that are not signed by a key in `trusted_keys`. A
    /// present signature is checked either way: a bad one always refuses.
    #[serde(default)]
    pub require_signature: bool,
}

impl Policy {
    /// The retry policy of `plugin/tool`: the operator's (exact name, then
    /// `plugin/*`), else `declared` (the manifest's). `None`: no retries.
    pub(crate) fn retry_of(
        &self,
        plugin: &str,
        tool: &str,
        declared: Option<crate::manifest::RetryPolicy>,
    ) -> Option<crate::manifest::RetryPolicy> {
        if self.retry.is_empty() {
            return declared;
        }
        self.retry
            .get(&format!("{plugin}/{tool}"))
            .or_else(|| self.retry.get(&format!("{plugin}/*")))
            .copied()
            .or(declared)
            .filter(|r| r.attempts > 1)
    }

    /// Check the settings a type cannot: each capability's own (HTTP and
    /// log limits must be at least 1, the HTTP CA files must load), tool
    /// names in `risk`, approval settings, rate limits.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        for capability in Capability::ALL {
            capability.factor().check_policy(self)?;
        }
        for tool in self.risk.keys() {
            if tool.split('/').count() != 2 || tool.split('/').any(str::is_empty) {
                return Err(Error::Config {
                    message: format!("policy.risk: `{tool}` is not a `plugin/tool` name"),
                });
            }
        }
        for (tool, retry) in &self.retry {
            let named = match tool.split_once('/') {
                Some((plugin, rest)) => {
                    airlock_names::is_valid_tool_name(plugin)
                        && (rest == "*" || airlock_names::is_valid_tool_name(rest))
                }
                None => false,
            };
            if !named {
                return Err(Error::Config {
                    message: format!(
                        "policy.retry: `{tool}` is not a `plugin/tool` or `plugin/*` name"
                    ),
                });
            }
            retry.check_policy().map_err(|e| Error::Config {
                message: format!("policy.retry.\"{tool}\": {e}"),
            })?;
        }
        // A ceiling of 0 would leave every plugin that declares the limit
        // unloadable and every silent one with nothing (no fuel, no memory,
        // no time): an operator's slip, refused here by name.
        let l = &self.limits;
        at_least_one(&[
            ("limits.fuel", l.fuel),
            ("limits.timeout_ms", l.timeout_ms),
            ("limits.memory_mb", l.memory_mb),
            ("limits.max_output_kb", l.max_output_kb),
            ("limits.max_concurrency", l.max_concurrency),
            ("limits.workspace_keys", l.workspace_keys),
            ("limits.workspace_mb", l.workspace_mb),
            ("limits.workspace_blobs", l.workspace_blobs),
        ])?;
        let a = &self.approvals;
        for (key, value) in [
            ("approvals.approved_expiry_s", a.approved_expiry_s),
            (
                "approvals.max_pending_per_principal",
                a.max_pending_per_principal,
            ),
            ("approvals.sweep_interval_s", a.sweep_interval_s),
        ] {
            if value == 0 {
                return Err(Error::Config {
                    message: format!("policy.{key} must be at least 1"),
                });
            }
        }
        // No approval lives longer than a caller may wait for one; a
        // longer window is a slip (its expiry past the year 9999 could not
        // even be written).
        for (key, value) in [
            ("approvals.expiry_s", a.expiry_s),
            ("approvals.approved_expiry_s", a.approved_expiry_s),
        ] {
            if value > MAX_APPROVAL_WINDOW_S {
                return Err(Error::Config {
                    message: format!(
                        "policy.{key} must be at most {MAX_APPROVAL_WINDOW_S} (366 days), not {value}"
                    ),
                });
            }
        }
        check_approvers(&a.approvers).map_err(|message| Error::Config { message })?;
        crate::package::check_trust_policy(self).map_err(|message| Error::Config { message })?;
        self.rate_limits
            .validate()
            .map_err(|message| Error::Config { message })
    }
}

/// The longest window `policy.approvals.expiry_s` and `approved_expiry_s`
/// may give an approval: 366 days.
const MAX_APPROVAL_WINDOW_S: u64 = 366 * 24 * 60 * 60;

/// Check `policy.approvals.approvers`: a name each (recorded with every
/// decision, so one name is one person), and a token digest that could
/// match a token (a token pasted in place of its digest matched nothing,
/// and every approval waited for a decision no one could make) and is no
/// other approver's (the first listed would take every decision made with
/// it).
fn check_approvers(approvers: &[crate::ledger::Approver]) -> std::result::Result<(), String> {
    let mut names = BTreeSet::new();
    let mut digests = BTreeSet::new();
    for (i, approver) in approvers.iter().enumerate() {
        let key = format!("policy.approvals.approvers[{i}]");
        let name = &approver.name;
        if name.trim().is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(format!(
                "{key}.name must be 1-128 characters without control characters"
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(format!("{key}.name {name:?} is an earlier approver's name"));
        }
        let digest = approver.token_sha256.to_ascii_lowercase();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{key}.token_sha256 must be 64 hex digits (the SHA-256 of the token, e.g. `printf %s \"$TOKEN\" | sha256sum`), not the token"
            ));
        }
        if !digests.insert(digest) {
            return Err(format!(
                "{key}.token_sha256 is an earlier approver's: each approver needs a token of their own"
            ));
        }
    }
    Ok(())
}

/// What a plugin is actually granted: manifest ∩ policy, with paths resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EffectiveGrant {
    /// Logging.
    pub log: bool,
    /// Real clocks.
    pub clocks: bool,
    /// Entropy.
    pub random: bool,
    /// Stdout/stderr kept in the call log.
    pub stdio: bool,
    /// Environment variables (name, value); only names the manifest declares
    /// and the operator provides a value for.
    pub env: Vec<(String, String)>,
    /// Declared variables the operator provides no value for (invisible to
    /// the guest).
    pub env_missing: Vec<String>,
    /// Preopened directories.
    pub files: Vec<ResolvedFiles>,
    /// Workspace access.
    pub workspace: Option<crate::manifest::FileAccess>,
    /// Whose workspace keys a call reaches.
    pub workspace_scope: crate::workspace::KeyScope,
    /// Outgoing HTTP: origins, the operator's address exceptions, limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpGrant>,
    /// Log lines kept per call (the policy's `log_max_lines`); `None`: the
    /// default.
    #[serde(skip)]
    pub log_max_lines: Option<u64>,
    /// What one call may write through the read-write `files` grants
    /// (the policy's `files_max_write_kb`, `files_max_created`); `None`
    /// without such a grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_limits: Option<crate::limits::FilesLimits>,
}

impl EffectiveGrant {
    /// The grants through which a call could change something: read-write
    /// files, a read-write workspace, outgoing HTTP. Empty when the plugin
    /// can only read.
    pub fn write_capable(&self) -> Vec<&'static str> {
        Capability::ALL
            .into_iter()
            .filter_map(|c| c.factor().write_capable(self))
            .collect()
    }

    /// Whether `capability` is granted.
    pub fn has(&self, capability: Capability) -> bool {
        capability.factor().granted(self)
    }

    /// What a plugin's `list` export runs with at load: no files,
    /// environment, workspace or network, whatever the plugin is granted.
    /// Its code runs before the host has checked the grant against what it
    /// protects and against the other plugins, and naming tools needs none
    /// of them.
    pub(crate) fn for_listing(&self) -> EffectiveGrant {
        EffectiveGrant {
            env: Vec::new(),
            files: Vec::new(),
            workspace: None,
            http: None,
            ..self.clone()
        }
    }

    /// Log lines kept per call.
    pub(crate) fn log_max_lines(&self) -> usize {
        let lines = self
            .log_max_lines
            .unwrap_or(crate::limits::DEFAULT_MAX_LOG_LINES);
        usize::try_from(lines).unwrap_or(usize::MAX)
    }
}

/// Compute the effective grant of `manifest` (loaded from `plugin_dir`).
///
/// # Errors
/// [`Error::CapabilityDenied`] when the manifest declares a capability the
/// policy forbids, a `files` host path that does not exist, is not a
/// directory, or resolves outside the allowed root, or an `http` origin
/// outside the policy's `http_allow`.
pub(crate) fn effective(
    manifest: &Manifest,
    policy: &Policy,
    plugin_dir: &Path,
) -> Result<EffectiveGrant> {
    let cx = Resolve {
        plugin: &manifest.plugin.name,
        caps: &manifest.capabilities,
        policy,
        plugin_dir,
    };
    for capability in Capability::ALL {
        if policy.forbid.contains(&capability) && capability.declared(cx.caps) {
            return Err(Error::CapabilityDenied {
                plugin: cx.plugin.to_owned(),
                capability: capability.manifest_key().to_owned(),
                reason: "the operator's policy forbids it".to_owned(),
            });
        }
    }
    let mut grant = EffectiveGrant::default();
    for capability in Capability::ALL {
        capability.factor().resolve(&cx, &mut grant)?;
    }
    Ok(grant)
}

/// How the host treats an interface a component imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "class", content = "capability")]
pub enum ImportClass {
    /// Always linked; carries no authority by itself.
    Baseline,
    /// Linked only when the capability is granted.
    Gated(Capability),
    /// Never linked.
    Never,
    /// Not provided by this host.
    Unknown,
}

/// Baseline interfaces no capability shapes: streams, exit, stdin, the
/// terminal queries (always "no terminal"), filesystem types without any
/// preopen, and the plugin world's own type definitions. Each capability's
/// [`Factor::shaped`] interfaces are baseline too.
const BASELINE: &[&str] = &[
    "airlock:plugin/types",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:filesystem/types",
];

/// Interface prefixes never linked, whatever the grant: raw sockets, and
/// every part of `wasi:http` a capability does not gate (serving requests).
const NEVER: &[&str] = &["wasi:sockets/", "wasi:http/"];

/// Classify an imported interface name such as `wasi:clocks/monotonic-clock@0.2.6`.
pub fn classify(import: &str) -> ImportClass {
    let name = import.split('@').next().unwrap_or(import);
    if BASELINE.contains(&name) {
        return ImportClass::Baseline;
    }
    for capability in Capability::ALL {
        let factor = capability.factor();
        if factor.gated().contains(&name) {
            return ImportClass::Gated(capability);
        }
        if factor.shaped().contains(&name) {
            return ImportClass::Baseline;
        }
    }
    if NEVER.iter().any(|prefix| name.starts_with(prefix)) {
        return ImportClass::Never;
    }
    ImportClass::Unknown
}

/// Check every import of a component against `grant`.
///
/// # Errors
/// [`Error::CapabilityNotGranted`] naming the first import that is gated and
/// not granted, never linked, or unknown to this host.
pub(crate) fn check_imports<'a>(
    plugin: &str,
    imports: impl IntoIterator<Item = &'a str>,
    grant: &EffectiveGrant,
) -> Result<()> {
    for import in imports {
        let denied = |hint: String| Error::CapabilityNotGranted {
            plugin: plugin.to_owned(),
            interface: import.to_owned(),
            hint,
        };
        match classify(import) {
            ImportClass::Baseline => {}
            ImportClass::Gated(capability) if grant.has(capability) => {}
            ImportClass::Gated(capability) => {
                return Err(denied(format!(
                    "grant it with `{}` in the manifest",
                    capability.grant_example()
                )));
            }
            ImportClass::Never => {
                return Err(denied(
                    "raw sockets and serving HTTP are never available to plugins; outgoing HTTP is `capabilities.http`"
                        .to_owned(),
                ));
            }
            ImportClass::Unknown => {
                return Err(denied(
                    "this host does not provide that interface".to_owned(),
                ));
            }
        }
    }
    Ok(())
}

/// `wasi:io` bindings need only the resource table.
struct HasIo;

impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

/// A linker with the baseline interfaces and exactly the granted ones.
pub(crate) fn linker(
    engine: &Engine,
    grant: &EffectiveGrant,
) -> wasmtime::Result<Linker<CallState>> {
    use wasmtime_wasi::WasiView as _;
    use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView as _};
    use wasmtime_wasi::p2::bindings::{cli, filesystem};

    let mut linker = Linker::new(engine);
    let l = &mut linker;
    // `types` defines only types, but the world imports it as an instance.
    crate::bindings::airlock::plugin::types::add_to_linker::<CallState, HasSelf<CallState>>(
        l,
        |s| s,
    )?;
    wasmtime_wasi_io::bindings::wasi::io::error::add_to_linker::<CallState, HasIo>(l, |t| {
        t.ctx().table
    })?;
    wasmtime_wasi_io::bindings::wasi::io::poll::add_to_linker::<CallState, HasIo>(l, |t| {
        t.ctx().table
    })?;
    wasmtime_wasi_io::bindings::wasi::io::streams::add_to_linker::<CallState, HasIo>(l, |t| {
        t.ctx().table
    })?;
    cli::exit::add_to_linker::<_, WasiCli>(l, CallState::cli)?;
    cli::stdin::add_to_linker::<_, WasiCli>(l, CallState::cli)?;
    cli::terminal_input::add_to_linker::<_, WasiCli>(l, CallState::cli)?;
    cli::terminal_output::add_to_linker::<_, WasiCli>(l, CallState::cli)?;
    cli::terminal_stdin::add_to_linker::<_, WasiCli>(l, CallState::cli)?;
    cli::terminal_stdout::add_to_linker::<_, WasiCli>(l, CallState::cli)?;
    cli::terminal_stderr::add_to_linker::<_, WasiCli>(l, CallState::cli)?;
    filesystem::types::add_to_linker::<_, WasiFilesystem>(l, CallState::filesystem)?;
    for capability in Capability::ALL {
        capability.factor().link(l, grant)?;
    }
    Ok(linker)
}

/// Set up a call's store for `grant`: every capability's part of it.
pub(crate) fn configure(call: &mut CallSetup<'_>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
    for capability in Capability::ALL {
        capability.factor().configure(call, grant)?;
    }
    Ok(())
}

pub(crate) use stdio::{CapturedOutput, collect as collect_stdio};

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(policy: &Policy) -> String {
        match policy.validate() {
            Err(Error::Config { message }) => message,
            other => panic!("the policy was not refused as a config error: {other:?}"),
        }
    }

    #[test]
    fn a_risk_override_must_name_one_plugin_tool() {
        for name in ["billing", "billing/", "/refund", "a/b/c", ""] {
            let policy = Policy {
                risk: BTreeMap::from([(name.to_owned(), crate::manifest::Risk::Write)]),
                ..Policy::default()
            };
            let message = refusal(&policy);
            assert!(message.starts_with("policy.risk:"), "{name:?}: {message}");
        }
        let fine = Policy {
            risk: BTreeMap::from([("billing/refund".to_owned(), crate::manifest::Risk::Write)]),
            ..Policy::default()
        };
        fine.validate().unwrap();
    }

    #[test]
    fn approval_windows_and_bounds_of_zero_are_refused_by_name() {
        type Set = fn(&mut crate::ledger::ApprovalPolicy);
        let cases: [(&str, Set); 3] = [
            ("approvals.approved_expiry_s", |a| a.approved_expiry_s = 0),
            ("approvals.max_pending_per_principal", |a| {
                a.max_pending_per_principal = 0
            }),
            ("approvals.sweep_interval_s", |a| a.sweep_interval_s = 0),
        ];
        for (key, set) in cases {
            let mut policy = Policy::default();
            set(&mut policy.approvals);
            assert_eq!(refusal(&policy), format!("policy.{key} must be at least 1"));
        }
        // Windows past 366 days: an expiry in the year 10000 and on could
        // not be written (an approval's message and page failed on it).
        let cases: [(&str, Set); 2] = [
            ("approvals.expiry_s", |a| a.expiry_s = u64::MAX),
            ("approvals.approved_expiry_s", |a| {
                a.approved_expiry_s = MAX_APPROVAL_WINDOW_S + 1
            }),
        ];
        for (key, set) in cases {
            let mut policy = Policy::default();
            set(&mut policy.approvals);
            assert!(
                refusal(&policy)
                    .starts_with(&format!("policy.{key} must be at most 31622400 (366 days)")),
                "{key}: {}",
                refusal(&policy)
            );
        }
        let mut longest = Policy::default();
        longest.approvals.expiry_s = MAX_APPROVAL_WINDOW_S;
        longest.approvals.approved_expiry_s = MAX_APPROVAL_WINDOW_S;
        longest.validate().unwrap();
    }

    /// A ceiling of 0 left every plugin declaring the limit unloadable and
    /// every silent one without fuel, memory or time.
    #[test]
    fn limit_ceilings_of_zero_are_refused_by_name() {
        type Set = fn(&mut LimitCeilings);
        let cases: [(&str, Set); 8] = [
            ("fuel", |l| l.fuel = Some(0)),
            ("timeout_ms", |l| l.timeout_ms = Some(0)),
            ("memory_mb", |l| l.memory_mb = Some(0)),
            ("max_output_kb", |l| l.max_output_kb = Some(0)),
            ("max_concurrency", |l| l.max_concurrency = Some(0)),
            ("workspace_keys", |l| l.workspace_keys = Some(0)),
            ("workspace_mb", |l| l.workspace_mb = Some(0)),
            ("workspace_blobs", |l| l.workspace_blobs = Some(0)),
        ];
        for (key, set) in cases {
            let mut policy = Policy::default();
            set(&mut policy.limits);
            assert_eq!(
                refusal(&policy),
                format!("policy.limits.{key} must be at least 1")
            );
        }
        let mut one = Policy::default();
        one.limits.fuel = Some(1);
        one.validate().unwrap();
    }

    #[test]
    fn imports_are_classified() {
        assert_eq!(classify("wasi:io/streams@0.2.6"), ImportClass::Baseline);
        assert_eq!(
            classify("wasi:clocks/monotonic-clock@0.2.0"),
            ImportClass::Gated(Capability::Clocks)
        );
        assert_eq!(
            classify("wasi:random/random@0.2.6"),
            ImportClass::Gated(Capability::Random)
        );
        assert_eq!(
            classify("airlock:plugin/log@0.1.0"),
            ImportClass::Gated(Capability::Log)
        );
        assert_eq!(classify("wasi:sockets/tcp@0.2.6"), ImportClass::Never);
        assert_eq!(
            classify("wasi:http/outgoing-handler@0.2.6"),
            ImportClass::Gated(Capability::Http)
        );
        assert_eq!(
            classify("wasi:http/types@0.2.4"),
            ImportClass::Gated(Capability::Http)
        );
        assert_eq!(
            classify("wasi:http/incoming-handler@0.2.6"),
            ImportClass::Never
        );
        assert_eq!(
            classify("wasi:sockets/ip-name-lookup@0.2.6"),
            ImportClass::Never
        );
        assert_eq!(classify("acme:secrets/vault"), ImportClass::Unknown);
    }

    /// The manifest schema's `capabilities` keys are exactly the registered
    /// capabilities' keys (and their further keys, `workspace_scope`).
    #[test]
    fn every_manifest_capability_key_is_registered() {
        let schema: serde_json::Value =
            serde_json::from_str(crate::manifest::MANIFEST_SCHEMA).unwrap();
        let keys = schema["properties"]["capabilities"]["properties"]
            .as_object()
            .unwrap();
        for key in keys.keys() {
            let full = format!("capabilities.{key}");
            assert!(
                Capability::ALL.into_iter().any(|c| {
                    let own = c.manifest_key();
                    full == own || full.starts_with(&format!("{own}_"))
                }),
                "{full} belongs to no registered capability"
            );
        }
        for capability in Capability::ALL {
            let key = capability.manifest_key();
            assert!(
                keys.contains_key(key.trim_start_matches("capabilities.")),
                "{key} is not in the manifest schema"
            );
            // Its serde name (policy `forbid`) is its key.
            assert_eq!(
                format!(
                    "capabilities.{}",
                    serde_json::to_value(capability).unwrap().as_str().unwrap()
                ),
                key
            );
        }
    }

    /// Each interface belongs to at most one capability, and none is both
    /// baseline and gated.
    #[test]
    fn interfaces_have_one_owner() {
        let mut seen = BTreeSet::new();
        for capability in Capability::ALL {
            for interface in capability.interfaces() {
                assert!(!BASELINE.contains(&interface), "{interface}");
                assert!(seen.insert(interface), "{interface} is claimed twice");
            }
        }
    }

    #[test]
    fn write_capable_grants_are_listed_in_order() {
        let policy = Policy::default();
        let origin = Origin::parse("https://api.example.com").unwrap();
        let grant = EffectiveGrant {
            workspace: Some(crate::manifest::FileAccess::ReadWrite),
            http: http::resolve("p", &[origin], &policy).unwrap(),
            ..EffectiveGrant::default()
        };
        assert_eq!(grant.write_capable(), ["workspace read-write", "http"]);
        let read_only = EffectiveGrant {
            workspace: Some(crate::manifest::FileAccess::ReadOnly),
            log: true,
            ..EffectiveGrant::default()
        };
        assert!(read_only.write_capable().is_empty());
    }

    #[test]
    fn every_baseline_interface_is_baseline() {
        for name in [
            "airlock:plugin/types",
            "wasi:io/error",
            "wasi:io/poll",
            "wasi:io/streams",
            "wasi:cli/exit",
            "wasi:cli/environment",
            "wasi:cli/stdin",
            "wasi:cli/stdout",
            "wasi:cli/stderr",
            "wasi:cli/terminal-input",
            "wasi:cli/terminal-output",
            "wasi:cli/terminal-stdin",
            "wasi:cli/terminal-stdout",
            "wasi:cli/terminal-stderr",
            "wasi:filesystem/types",
            "wasi:filesystem/preopens",
            "wasi:clocks/wall-clock",
            "wasi:random/insecure-seed",
        ] {
            assert_eq!(classify(&format!("{name}@0.2.6")), ImportClass::Baseline);
        }
        for (name, capability) in [
            ("airlock:plugin/log", Capability::Log),
            ("airlock:plugin/workspace", Capability::Workspace),
            ("wasi:random/insecure", Capability::Random),
        ] {
            assert_eq!(classify(name), ImportClass::Gated(capability));
        }
    }

    /// A plugin's `list` runs at load with nothing that reaches outside
    /// it: no environment, files, workspace or network.
    #[test]
    fn listing_runs_with_no_capability_that_reaches_out() {
        let grant = EffectiveGrant {
            log: true,
            clocks: true,
            random: true,
            env: vec![("TOKEN".to_owned(), "secret".to_owned())],
            workspace: Some(crate::manifest::FileAccess::ReadWrite),
            ..EffectiveGrant::default()
        };
        let listing = grant.for_listing();
        assert!(listing.env.is_empty() && listing.files.is_empty());
        assert!(listing.workspace.is_none() && listing.http.is_none());
        assert!(listing.log && listing.clocks && listing.random);
    }

    #[test]
    fn gated_imports_need_their_grant() {
        let grant = EffectiveGrant::default();
        let err = check_imports(
            "p",
            ["wasi:io/streams@0.2.6", "wasi:random/random@0.2.6"],
            &grant,
        )
        .unwrap_err();
        let Error::CapabilityNotGranted {
            interface, hint, ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(interface, "wasi:random/random@0.2.6");
        assert!(hint.contains("capabilities.random = true"), "{hint}");
        let granted = EffectiveGrant {
            random: true,
            ..EffectiveGrant::default()
        };
        check_imports("p", ["wasi:random/random@0.2.6"], &granted).unwrap();
        assert!(check_imports("p", ["wasi:sockets/tcp@0.2.6"], &granted).is_err());
    }

    #[test]
    fn http_imports_need_the_http_grant_and_sockets_never_pass() {
        let err = check_imports(
            "p",
            ["wasi:http/outgoing-handler@0.2.4"],
            &EffectiveGrant::default(),
        )
        .unwrap_err();
        let Error::CapabilityNotGranted {
            interface, hint, ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(interface, "wasi:http/outgoing-handler@0.2.4");
        assert!(hint.contains("capabilities.http"), "{hint}");

        let policy = Policy::default();
        let origin = Origin::parse("https://api.example.com").unwrap();
        let granted = EffectiveGrant {
            http: http::resolve("p", &[origin], &policy).unwrap(),
            ..EffectiveGrant::default()
        };
        check_imports(
            "p",
            ["wasi:http/types@0.2.4", "wasi:http/outgoing-handler@0.2.4"],
            &granted,
        )
        .unwrap();
        for never in ["wasi:sockets/tcp@0.2.4", "wasi:http/incoming-handler@0.2.4"] {
            let err = check_imports("p", [never], &granted).unwrap_err();
            assert_eq!(err.kind(), "capability_not_granted", "{never}");
        }
    }

    #[test]
    fn zero_http_limits_are_a_config_error() {
        let policy = Policy {
            http_max_requests: Some(0),
            ..Policy::default()
        };
        let err = policy.validate().unwrap_err();
        assert_eq!(err.kind(), "config");
        assert!(err.to_string().contains("http_max_requests"), "{err}");
        Policy::default().validate().unwrap();
    }

    /// Approvers whose token digest is not one (a pasted token), repeats
    /// another's, or whose name repeats another's, are refused by key.
    #[test]
    fn malformed_or_repeated_approvers_are_a_config_error() {
        use crate::ledger::Approver;
        let approver = |name: &str, digest: &str| Approver {
            name: name.to_owned(),
            token_sha256: digest.to_owned(),
            operator: false,
        };
        let (a, b) = ("a".repeat(64), "B".repeat(64));
        for (approvers, expected) in [
            (
                vec![approver("alice", "alice-secret-token")],
                "approvers[0].token_sha256 must be 64 hex",
            ),
            (
                vec![approver("alice", &a), approver("bob", &a.to_uppercase())],
                "approvers[1].token_sha256 is an earlier",
            ),
            (
                vec![approver("alice", &a), approver("alice", &b)],
                "approvers[1].name \"alice\"",
            ),
            (vec![approver(" ", &a)], "approvers[0].name must be"),
        ] {
            let mut policy = Policy::default();
            policy.approvals.approvers = approvers;
            let err = policy.validate().unwrap_err();
            assert_eq!(err.kind(), "config");
            assert!(err.to_string().contains(expected), "{err}");
        }
        let mut policy = Policy::default();
        policy.approvals.approvers = vec![approver("alice", &a), approver("bob", &b)];
        policy.validate().unwrap();
    }

    /// A files write budget of nothing would fail every write of every
    /// read-write grant: refused as a config error, naming the key.
    #[test]
    fn zero_files_budgets_are_a_config_error() {
        for (key, policy) in [
            (
                "files_max_write_kb",
                Policy {
                    files_max_write_kb: Some(0),
                    ..Policy::default()
                },
            ),
            (
                "files_max_created",
                Policy {
                    files_max_created: Some(0),
                    ..Policy::default()
                },
            ),
        ] {
            let err = policy.validate().unwrap_err();
            assert_eq!(err.kind(), "config");
            assert!(err.to_string().contains(key), "{err}");
        }
        Policy {
            files_max_write_kb: Some(1),
            files_max_created: Some(1),
            ..Policy::default()
        }
        .validate()
        .unwrap();
    }
}
