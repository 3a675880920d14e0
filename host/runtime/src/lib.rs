//! Airlock's plugin runtime.
//!
//! A [`Host`] loads *plugins* — WebAssembly components targeting the
//! `airlock:plugin/plugin` world, each described by a [`Manifest`]
//! (`plugin.toml`) that pins the component's SHA-256 and declares its tools,
//! capabilities and limits — and runs their tools through one pipeline:
//! resolve, validate the arguments against the tool's JSON Schema, run the
//! tool in a fresh instance under fuel, deadline and memory limits, validate
//! the result. Every refusal, tool error and trap is a distinct [`Error`]
//! variant; [`Error::class`] groups them for callers.
//!
//! Compiled components are cached on disk, keyed by component digest and
//! engine fingerprint, so a second start does not recompile
//! ([`HostConfig::cache_dir`], [`CacheStatus`]).
//!
//! # Example
//!
//! ```no_run
//! use airlock_host::{CallRequest, Host, HostConfig};
//!
//! # async fn run() -> Result<(), airlock_host::Error> {
//! let mut host = Host::new(HostConfig::default().cache_dir("/var/cache/airlock"))?;
//! host.load_plugin("plugins/text").await?;
//! let response = host
//!     .call(CallRequest::new("text/slugify", r#"{"text": "Hello, World!"}"#))
//!     .await?;
//! println!("{}", response.output); // {"slug":"hello-world"}
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod audit;
mod bindings;
mod cache;
mod engine;
mod error;
mod grants;
mod host;
mod inspect;
mod limits;
pub mod manifest;
mod pipeline;
mod plugin;
mod schema;
mod state;
pub mod workspace;

pub use airlock_audit as audit_log;
pub use cache::CacheStatus;
pub use error::{Error, ErrorClass, Result, SchemaViolation, ToolErrorKind, TrapKind};
pub use grants::{
    Capability, EffectiveGrant, ImportClass, LimitCeilings, Policy, ResolvedFiles, classify,
};
pub use host::{
    AUDIT_DIR, DEFAULT_MAX_ARGUMENT_BYTES, Host, HostConfig, LoadFailure, LoadReport, PluginInfo,
};
pub use inspect::{CapabilityReport, Finding, ImportReport, InspectReport, Severity, ToolReport};
pub use limits::{Limit, LimitSource, Limits};
pub use manifest::{FileAccess, MANIFEST_FILE, MANIFEST_SCHEMA, Manifest, Risk};
pub use pipeline::{CallRequest, CallResponse};
pub use plugin::{Plugin, Tool, ToolInfo};
pub use state::{LogLevel, LogLine};
