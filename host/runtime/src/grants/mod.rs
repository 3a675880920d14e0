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
//! Each capability lives in its own module owning both its linking and its
//! checks.

mod clocks;
mod env;
mod files;
mod http;
mod log;
mod random;
mod stdio;
mod workspace;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wasmtime::Engine;
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::WasiCtxBuilder;

pub use files::ResolvedFiles;
pub(crate) use files::{Protected as ProtectedPaths, check_overlaps as check_files_overlaps};
pub(crate) use http::HttpHooks;
pub use http::{HttpGrant, HttpScheme, IpRange, Origin, OriginHost};
pub(crate) use workspace::WorkspaceScope;

use crate::error::{LoadError as Error, LoadResult as Result};
use crate::manifest::Manifest;
use crate::state::CallState;

/// A capability a manifest can declare and a policy can forbid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// `capabilities.log`
    Log,
    /// `capabilities.clocks`
    Clocks,
    /// `capabilities.random`
    Random,
    /// `capabilities.stdio`
    Stdio,
    /// `capabilities.env`
    Env,
    /// `capabilities.files`
    Files,
    /// `capabilities.workspace`
    Workspace,
    /// `capabilities.http`
    Http,
}

impl Capability {
    /// The manifest key that declares this capability.
    pub fn manifest_key(self) -> &'static str {
        match self {
            Capability::Log => "capabilities.log",
            Capability::Clocks => "capabilities.clocks",
            Capability::Random => "capabilities.random",
            Capability::Stdio => "capabilities.stdio",
            Capability::Env => "capabilities.env",
            Capability::Files => "capabilities.files",
            Capability::Workspace => "capabilities.workspace",
            Capability::Http => "capabilities.http",
        }
    }

    /// How a manifest grants this capability, for messages.
    pub fn grant_example(self) -> &'static str {
        match self {
            Capability::Log => "capabilities.log = true",
            Capability::Clocks => "capabilities.clocks = true",
            Capability::Random => "capabilities.random = true",
            Capability::Stdio => "capabilities.stdio = true",
            Capability::Env => "capabilities.env = [\"NAME\"]",
            Capability::Files => {
                "capabilities.files = [{ host = \"dir\", guest = \"/dir\", access = \"read-only\" }]"
            }
            Capability::Workspace => "capabilities.workspace = \"read-only\"",
            Capability::Http => "capabilities.http = [\"https://api.example.com\"]",
        }
    }

    /// Every capability.
    pub const ALL: [Capability; 8] = [
        Capability::Log,
        Capability::Clocks,
        Capability::Random,
        Capability::Stdio,
        Capability::Env,
        Capability::Files,
        Capability::Workspace,
        Capability::Http,
    ];
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
    /// PEM files of certificate authorities HTTPS requests trust besides
    /// Mozilla's roots (an internal CA). Relative paths in a config file are
    /// relative to the file.
    #[serde(default)]
    pub http_ca_certs: Vec<PathBuf>,
    /// Outgoing HTTP requests per call (default
    /// [`crate::limits::DEFAULT_HTTP_MAX_REQUESTS`]).
    #[serde(default)]
    pub http_max_requests: Option<u64>,
    /// Largest HTTP response body, in KiB (default
    /// [`crate::limits::DEFAULT_HTTP_MAX_RESPONSE_KB`]).
    #[serde(default)]
    pub http_max_response_kb: Option<u64>,
    /// Resolve + connect + TLS time per request, in milliseconds (default
    /// [`crate::limits::DEFAULT_HTTP_CONNECT_TIMEOUT_MS`]).
    #[serde(default)]
    pub http_connect_timeout_ms: Option<u64>,
    /// Wait for a response head, and between body chunks, in milliseconds
    /// (default [`crate::limits::DEFAULT_HTTP_FIRST_BYTE_TIMEOUT_MS`]).
    #[serde(default)]
    pub http_first_byte_timeout_ms: Option<u64>,
    /// Blocking DNS lookups in flight at once over every plugin (default
    /// [`crate::limits::DEFAULT_HTTP_MAX_DNS_LOOKUPS`]).
    #[serde(default)]
    pub http_max_dns_lookups: Option<u64>,
    /// Log lines kept per call, empty ones included (default
    /// [`crate::limits::DEFAULT_MAX_LOG_LINES`]); lines past it are
    /// counted as dropped.
    #[serde(default)]
    pub log_max_lines: Option<u64>,
}

impl Policy {
    /// Check the settings a type cannot: HTTP and log limits must be at
    /// least 1.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first zero limit.
    pub fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("http_max_requests", self.http_max_requests),
            ("http_max_response_kb", self.http_max_response_kb),
            ("http_connect_timeout_ms", self.http_connect_timeout_ms),
            (
                "http_first_byte_timeout_ms",
                self.http_first_byte_timeout_ms,
            ),
            ("http_max_dns_lookups", self.http_max_dns_lookups),
            ("log_max_lines", self.log_max_lines),
        ] {
            if value == Some(0) {
                return Err(Error::Config {
                    message: format!("policy.{key} must be at least 1"),
                });
            }
        }
        for tool in self.risk.keys() {
            if tool.split('/').count() != 2 || tool.split('/').any(str::is_empty) {
                return Err(Error::Config {
                    message: format!("policy.risk: `{tool}` is not a `plugin/tool` name"),
                });
            }
        }
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
        http::TlsClient::new(&self.http_ca_certs)?;
        self.rate_limits
            .validate()
            .map_err(|message| Error::Config { message })
    }
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
}

impl EffectiveGrant {
    /// The grants through which a call could change something: read-write
    /// files, a read-write workspace, outgoing HTTP. Empty when the plugin
    /// can only read.
    pub fn write_capable(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self
            .files
            .iter()
            .any(|f| f.access == crate::manifest::FileAccess::ReadWrite)
        {
            out.push("files read-write");
        }
        if self.workspace == Some(crate::manifest::FileAccess::ReadWrite) {
            out.push("workspace read-write");
        }
        if self.http.is_some() {
            out.push("http");
        }
        out
    }

    /// Whether `capability` is granted.
    pub fn has(&self, capability: Capability) -> bool {
        match capability {
            Capability::Log => self.log,
            Capability::Clocks => self.clocks,
            Capability::Random => self.random,
            Capability::Stdio => self.stdio,
            Capability::Env => !self.env.is_empty() || !self.env_missing.is_empty(),
            Capability::Files => !self.files.is_empty(),
            Capability::Workspace => self.workspace.is_some(),
            Capability::Http => self.http.is_some(),
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
pub fn effective(
    manifest: &Manifest,
    policy: &Policy,
    plugin_dir: &Path,
) -> Result<EffectiveGrant> {
    let caps = &manifest.capabilities;
    let plugin = &manifest.plugin.name;
    let declared = [
        (Capability::Log, caps.log),
        (Capability::Clocks, caps.clocks),
        (Capability::Random, caps.random),
        (Capability::Stdio, caps.stdio),
        (Capability::Env, !caps.env.is_empty()),
        (Capability::Files, !caps.files.is_empty()),
        (Capability::Workspace, caps.workspace.is_some()),
        (Capability::Http, !caps.http.is_empty()),
    ];
    for (capability, asked) in declared {
        if asked && policy.forbid.contains(&capability) {
            return Err(Error::CapabilityDenied {
                plugin: plugin.clone(),
                capability: capability.manifest_key().to_owned(),
                reason: "the operator's policy forbids it".to_owned(),
            });
        }
    }
    let (env, env_missing) = env::resolve(&caps.env, policy);
    Ok(EffectiveGrant {
        log: caps.log,
        clocks: caps.clocks,
        random: caps.random,
        stdio: caps.stdio,
        env,
        env_missing,
        files: files::resolve(plugin, &caps.files, policy, plugin_dir)?,
        workspace: caps.workspace,
        workspace_scope: caps.workspace_scope.unwrap_or_default(),
        http: http::resolve(plugin, &caps.http, policy)?,
        log_max_lines: policy.log_max_lines,
    })
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

/// Classify an imported interface name such as `wasi:clocks/monotonic-clock@0.2.6`.
pub fn classify(import: &str) -> ImportClass {
    let name = import.split('@').next().unwrap_or(import);
    match name {
        "airlock:plugin/types"
        | "wasi:io/error"
        | "wasi:io/poll"
        | "wasi:io/streams"
        | "wasi:cli/exit"
        | "wasi:cli/environment"
        | "wasi:cli/stdin"
        | "wasi:cli/stdout"
        | "wasi:cli/stderr"
        | "wasi:cli/terminal-input"
        | "wasi:cli/terminal-output"
        | "wasi:cli/terminal-stdin"
        | "wasi:cli/terminal-stdout"
        | "wasi:cli/terminal-stderr"
        | "wasi:filesystem/types"
        | "wasi:filesystem/preopens"
        | "wasi:clocks/wall-clock"
        | "wasi:random/insecure-seed" => ImportClass::Baseline,
        "airlock:plugin/log" => ImportClass::Gated(Capability::Log),
        "airlock:plugin/workspace" => ImportClass::Gated(Capability::Workspace),
        "wasi:clocks/monotonic-clock" => ImportClass::Gated(Capability::Clocks),
        "wasi:random/random" | "wasi:random/insecure" => ImportClass::Gated(Capability::Random),
        "wasi:http/types" | "wasi:http/outgoing-handler" => ImportClass::Gated(Capability::Http),
        _ if name.starts_with("wasi:sockets/") || name.starts_with("wasi:http/") => {
            ImportClass::Never
        }
        _ => ImportClass::Unknown,
    }
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
    use wasmtime_wasi::p2::bindings::{cli, filesystem};
    use wasmtime_wasi::{
        cli::WasiCli, cli::WasiCliView as _, filesystem::WasiFilesystem,
        filesystem::WasiFilesystemView as _,
    };

    let mut linker = Linker::new(engine);
    let l = &mut linker;
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
    cli::environment::add_to_linker::<_, WasiCli>(l, CallState::cli)?;
    cli::terminal_input::add_to_linker::<_, WasiCli>(l, CallState::cli)?;
    cli::terminal_output::add_to_linker::<_, WasiCli>(l, CallState::cli)?;
    cli::terminal_stdin::add_to_linker::<_, WasiCli>(l, CallState::cli)?;
    cli::terminal_stdout::add_to_linker::<_, WasiCli>(l, CallState::cli)?;
    cli::terminal_stderr::add_to_linker::<_, WasiCli>(l, CallState::cli)?;
    stdio::link(l)?;
    filesystem::types::add_to_linker::<_, WasiFilesystem>(l, CallState::filesystem)?;
    filesystem::preopens::add_to_linker::<_, WasiFilesystem>(l, CallState::filesystem)?;
    clocks::link(l, grant)?;
    random::link(l, grant)?;
    log::link(l, grant)?;
    workspace::link(l, grant)?;
    http::link(l, grant)?;
    Ok(linker)
}

/// Configure a call's WASI context for `grant`; with `read_only` (the
/// host's read-only mode, and while listing tools) every write-capable
/// grant is narrowed to reading.
pub(crate) fn configure(
    builder: &mut WasiCtxBuilder,
    grant: &EffectiveGrant,
    read_only: bool,
) -> wasmtime::Result<()> {
    env::configure(builder, grant);
    clocks::configure(builder, grant);
    random::configure(builder, grant);
    files::configure(builder, grant, read_only)
}

pub(crate) use stdio::collect as collect_stdio;

#[cfg(test)]
mod tests {
    use super::*;

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
}
