//! `airlock workspace`: what plugins keep in their workspace, for operators.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_host::workspace::{KeyOwner, KeyScope, WORKSPACE_DIR, WorkspaceStore};
use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;

use crate::config::Settings;
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
    },
    /// Write everything a plugin keeps (keys of every session, and blobs) to
    /// a JSON-lines file.
    Export {
        /// The plugin.
        plugin: String,
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

fn open(settings: &Settings) -> anyhow::Result<WorkspaceStore> {
    let dir = settings.data_dir.join(WORKSPACE_DIR);
    if !dir.is_dir() {
        anyhow::bail!(
            "no workspace store at {} (no plugin has stored anything yet)",
            dir.display()
        );
    }
    Ok(WorkspaceStore::open(
        &dir,
        Duration::from_millis(settings.audit.lock_wait_ms),
    )?)
}

pub(crate) fn run(settings: &Settings, command: WorkspaceCommand) -> Result<u8, Failure> {
    let store = open(settings)?;
    match command {
        WorkspaceCommand::Ls { plugin: None, json } => {
            let plugins = store.plugins()?;
            if json {
                let list: Vec<_> = plugins
                    .iter()
                    .map(|(name, usage)| json!({"plugin": name, "usage": usage}))
                    .collect();
                print_json(&json!({ "plugins": list }));
            } else {
                for (name, u) in plugins {
                    println!(
                        "{name:<16} {:>8} keys {:>6} blobs {:>12} bytes",
                        u.keys, u.blobs, u.bytes
                    );
                }
            }
        }
        WorkspaceCommand::Ls {
            plugin: Some(plugin),
            json,
        } => {
            let entries = store.entries(&plugin)?;
            let blobs = store.blobs(&plugin)?;
            if json {
                let keys: Vec<_> = entries.iter().map(|(e, _)| e).collect();
                let blobs: Vec<_> = blobs
                    .iter()
                    .map(|(r, size)| json!({"ref": r, "size": size}))
                    .collect();
                print_json(
                    &json!({"plugin": plugin, "usage": store.usage(&plugin)?, "keys": keys, "blobs": blobs}),
                );
            } else {
                for (e, _) in &entries {
                    let owner = e.owner.to_string();
                    println!(
                        "key   {:<36} {:<40} {:>10} bytes",
                        crate::terminal::escape(&owner),
                        crate::terminal::escape(&e.key),
                        e.size
                    );
                }
                for (r, size) in &blobs {
                    println!("blob  {:<36} {r} {size:>10} bytes", "plugin-wide");
                }
            }
        }
        WorkspaceCommand::Get {
            plugin,
            key,
            principal,
            session,
            out,
        } => {
            let owner = match (&principal, &session) {
                (None, _) => KeyOwner::Plugin,
                (Some(p), None) => KeyOwner::Principal(p.clone()),
                (Some(p), Some(s)) => KeyScope::Session.owner(p, Some(s)),
            };
            let value = if key.starts_with("sha256:") {
                store.get_blob(&plugin, &key)
            } else {
                store.get(&plugin, &owner, &key)
            }
            .map_err(|e| Failure::usage(anyhow::anyhow!("{e}")))?;
            let Some(value) = value else {
                return Err(Failure::usage(anyhow::anyhow!(
                    "plugin `{plugin}` has no {key:?} ({owner})"
                )));
            };
            match out {
                Some(path) => write_atomically(&path, &value)?,
                None => std::io::stdout()
                    .write_all(&value)
                    .context("cannot write to stdout")?,
            }
        }
        WorkspaceCommand::Export { plugin, out } => {
            let mut text = String::new();
            for (e, value) in store.entries(&plugin)? {
                let mut line = json!({"owner": e.owner, "key": e.key});
                match String::from_utf8(value) {
                    Ok(s) => line["value"] = json!(s),
                    Err(e) => line["value_hex"] = json!(hex::encode(e.into_bytes())),
                }
                text.push_str(&line.to_string());
                text.push('\n');
            }
            for (reference, _) in store.blobs(&plugin)? {
                let data = store
                    .get_blob(&plugin, &reference)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .unwrap_or_default();
                let line = json!({"blob": reference, "data_hex": hex::encode(data)});
                text.push_str(&line.to_string());
                text.push('\n');
            }
            write_atomically(&out, text.as_bytes())?;
            eprintln!("exported workspace of `{plugin}` to {}", out.display());
        }
    }
    Ok(exit::OK)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("cannot write {}", path.display()))
}
