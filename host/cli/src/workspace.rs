//! `airlock workspace`: what plugins keep in their workspace, for operators.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_host::WORKSPACE_DIR;
use airlock_host::store::Workspace;
use airlock_mcp::control::{
    PluginUsage, ValueRequest, WorkspaceListing, workspace_export_to, workspace_listing,
    workspace_plugins,
};
use anyhow::Context as _;
use clap::Subcommand;
use serde::Deserialize;
use serde_json::json;

use crate::config::Settings;
use crate::control::{Control, Source, open_or_reach};
use crate::remote::encode;
use crate::{Failure, exit, print_json};

#[derive(Debug, Subcommand)]
pub(crate) enum WorkspaceCommand {
    /// Plugins with stored data and their usage; with a plugin, its keys and
    /// blobs.
    Ls {
        /// A plugin name.
        plugin: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print one value (raw bytes to stdout, or to --out).
    Get {
        /// The plugin.
        plugin: String,
        /// The key, or a blob ref (`sha256:…`).
        key: String,
        /// The principal whose key it is (omit for a plugin-wide key).
        #[arg(long)]
        principal: Option<String>,
        /// The session within the principal (with --principal; omit for a
        /// `principal`-scoped plugin's keys, or `""` for calls without one).
        #[arg(long, requires = "principal")]
        session: Option<String>,
        /// Write the value to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// With --out: replace the file if it exists (never one in the data directory).
        #[arg(long)]
        force: bool,
    },
    /// Write everything a plugin keeps (keys of every session, and blobs) to
    /// a JSON-lines file.
    Export {
        /// The plugin.
        plugin: String,
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace the file if it exists (never one in the data directory).
        #[arg(long)]
        force: bool,
    },
}

fn open(settings: &Settings, wait_ms: u64) -> anyhow::Result<Workspace> {
    let config = crate::host_config(settings, crate::Calls::Recorded);
    let dir = settings.data_dir.join(WORKSPACE_DIR);
    if matches!(config.store, airlock_host::StoreConfig::Sled) && !dir.is_dir() {
        anyhow::bail!(
            "no workspace store at {} (no plugin has stored anything yet)",
            dir.display()
        );
    }
    Ok(airlock_host::open_workspace(
        &config,
        Duration::from_millis(wait_ms),
    )?)
}

/// The store: opened here, or read through the server that holds it.
enum Store {
    Local(Workspace),
    Server(Control),
}

#[derive(Deserialize)]
struct Plugins {
    plugins: Vec<PluginUsage>,
}

impl Store {
    async fn open(settings: &Settings) -> Result<Store, Failure> {
        Ok(
            match open_or_reach(settings, |wait| open(settings, wait)).await? {
                Source::Local(store) => Store::Local(store),
                Source::Server(control) => Store::Server(control),
            },
        )
    }

    async fn plugins(&self) -> Result<Vec<PluginUsage>, Failure> {
        match self {
            Store::Local(store) => Ok(workspace_plugins(store)?),
            Store::Server(control) => Ok(control
                .json::<Plugins>("GET", "/v1/workspace", None)
                .await?
                .plugins),
        }
    }

    async fn listing(&self, plugin: &str) -> Result<WorkspaceListing, Failure> {
        match self {
            Store::Local(store) => Ok(workspace_listing(store, plugin)?),
            Store::Server(control) => {
                control
                    .json("GET", &format!("/v1/workspace/{}", encode(plugin)), None)
                    .await
            }
        }
    }

    async fn value(&self, plugin: &str, request: &ValueRequest) -> Result<Vec<u8>, Failure> {
        match self {
            Store::Local(store) => request
                .read(store, plugin)
                .map_err(|e| Failure::usage(anyhow::anyhow!("{e}")))?
                .ok_or_else(|| Failure::usage(anyhow::anyhow!(request.missing(plugin)))),
            Store::Server(control) => Ok(control
                .bytes(
                    "POST",
                    &format!("/v1/workspace/{}/value", encode(plugin)),
                    Some(json!(request)),
                )
                .await?
                .to_vec()),
        }
    }
}

pub(crate) async fn run(settings: &Settings, command: WorkspaceCommand) -> Result<u8, Failure> {
    let store = Store::open(settings).await?;
    match command {
        WorkspaceCommand::Ls { plugin: None, json } => {
            let plugins = store.plugins().await?;
            if json {
                print_json(&json!({ "plugins": plugins }));
            } else {
                for p in plugins {
                    let u = p.usage;
                    outln!(
                        "{:<16} {:>8} keys {:>6} blobs {:>12} bytes",
                        p.plugin,
                        u.keys,
                        u.blobs,
                        u.bytes
                    );
                }
            }
        }
        WorkspaceCommand::Ls {
            plugin: Some(plugin),
            json,
        } => {
            let listing = store.listing(&plugin).await?;
            if json {
                let keys: Vec<_> = listing
                    .keys
                    .iter()
                    .map(|k| json!({"owner": k.owner, "key": k.key, "size": k.size}))
                    .collect();
                print_json(
                    &json!({"plugin": plugin, "usage": listing.usage, "keys": keys, "blobs": listing.blobs}),
                );
            } else {
                for k in &listing.keys {
                    outln!(
                        "key   {:<36} {:<40} {:>10} bytes",
                        crate::terminal::escape(&k.owner_text),
                        crate::terminal::escape(&k.key),
                        k.size
                    );
                }
                for b in &listing.blobs {
                    outln!(
                        "blob  {:<36} {} {:>10} bytes",
                        "plugin-wide",
                        b.reference,
                        b.size
                    );
                }
            }
        }
        WorkspaceCommand::Get {
            plugin,
            key,
            principal,
            session,
            out,
            force,
        } => {
            if let Some(out) = &out {
                crate::outfile::check(settings, out, force)?;
            }
            let request = ValueRequest {
                key,
                principal,
                session,
            };
            let value = store.value(&plugin, &request).await?;
            match out {
                Some(path) => write_atomically(&path, &value)?,
                None => crate::stdout::bytes(&value),
            }
        }
        WorkspaceCommand::Export { plugin, out, force } => {
            crate::outfile::check(settings, &out, force)?;
            match &store {
                // Streamed into the file: an export may be far larger than
                // an answer held in memory.
                Store::Server(control) => {
                    control
                        .download(&format!("/v1/workspace/{}/export", encode(&plugin)), &out)
                        .await?;
                }
                Store::Local(local) => {
                    // Owner only: plugins keep what they keep private.
                    airlock_host::store::file::write_private_with(
                        &out,
                        |w| workspace_export_to(local, &plugin, w),
                        |e| e.to_string(),
                    )
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
                }
            }
            eprintln!("exported workspace of `{plugin}` to {}", out.display());
        }
    }
    Ok(exit::OK)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    // Owner only: plugins keep what they keep private (tokens, state).
    airlock_host::store::file::write_private_with(path, |out| out.write_all(bytes), |e| e)
        .with_context(|| format!("cannot write {}", path.display()))
}
