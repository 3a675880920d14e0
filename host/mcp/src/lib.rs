//! Airlock's MCP server: every tool of every plugin a [`Host`] has loaded,
//! served over the Model Context Protocol — on stdio or Streamable HTTP —
//! with each call going through [`Host::call`], the host's one pipeline
//! (validation, limits, approvals, idempotency, audit).
//!
//! Built on `rmcp`, the official Rust MCP SDK, which negotiates the protocol
//! version (every version it knows, from `2024-11-05` to `2026-07-28`).
//!
//! - [`McpServer`] holds the host and the tool [`Catalog`]; it serves stdio
//!   ([`McpServer::serve_stdio`]) or HTTP ([`http::serve`]) and reloads the
//!   plugins directory while serving ([`McpServer::reload`],
//!   [`McpServer::watch_plugins_dir`]), telling clients with
//!   `notifications/tools/list_changed`.
//! - Tool `plugin/tool` is the MCP tool `plugin__tool`
//!   ([`mcp_tool_name`]); annotations come from its risk class
//!   ([`annotations`]); its output schema is served as it is when it is an
//!   object schema, else wrapped as `{"result": …}` ([`wrap_output_schema`]),
//!   and results carry `structuredContent` to match (the text content stays).
//!   Schemas are served as plain JSON Schema 2020-12: `format`s the standard
//!   does not define are dropped ([`standard_schema`]).
//! - Every outcome of an accepted call is a tool result; failures have
//!   `isError: true` and their kind ([`outcome`]). An unknown tool name is a
//!   JSON-RPC invalid-params error.
//! - Identity: stdio calls run as one configured principal; HTTP requests
//!   carry `Authorization: Bearer <token>`, mapped to a principal by the
//!   token's SHA-256 ([`http::HttpConfig`]), or JWT access tokens from
//!   configured OAuth issuers ([`oauth`]). There is no MCP method to
//!   approve a call or change a grant: approvers use their own endpoints
//!   with their own tokens ([`http::approvals_router`]).
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use airlock_host::{Host, HostConfig};
//! use airlock_mcp::{McpServer, ServeOptions};
//!
//! # async fn run() -> Result<(), airlock_mcp::Error> {
//! let config = HostConfig::default()
//!     .data_dir("/var/lib/airlock")
//!     // No plugin's `files` grant may reach it, even while it is empty.
//!     .plugins_dir("/var/lib/airlock/plugins");
//! let host = Arc::new(Host::new(config)?);
//! let server = McpServer::new(host, ServeOptions::default());
//! // Load the plugins, then keep watching the directory while serving.
//! let report = server.reload("/var/lib/airlock/plugins".as_ref()).await?;
//! eprintln!("serving {} tools", server.catalog().entries().count());
//! assert!(report.failed.is_empty());
//! let _watch = server.watch_plugins_dir(
//!     "/var/lib/airlock/plugins".into(),
//!     std::time::Duration::from_secs(1),
//! );
//! server.serve_stdio("local").await?;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod catalog;
pub mod console;
pub mod control;
mod error;
pub mod http;
pub mod oauth;
pub mod outcome;
pub mod releases;
mod server;

pub use airlock_host::Host;
pub use catalog::{
    Catalog, CatalogEntry, CatalogWarning, Exclusion, MAX_NAME_LEN, NAME_SEPARATOR,
    STANDARD_FORMATS, WRAPPED_RESULT, annotations, mcp_tool_name, standard_schema, valid_mcp_name,
    wrap_output_schema,
};
pub use error::{Error, Result};
pub use server::{
    DEFAULT_MAX_CALLS_PER_PRINCIPAL, DEFAULT_MAX_CONCURRENT_CALLS, MAX_APPROVAL_TASKS,
    MAX_APPROVAL_WAITERS, McpServer, ReloadReport, ServeOptions, meta_keys,
};
