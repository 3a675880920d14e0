//! `files`: host directories preopened for the guest, read-only or
//! read-write. Host paths are resolved at load time inside the plugin
//! directory (or the operator's `files_root`) and must stay there; inside the
//! guest, cap-std confines every access to the preopened directory (`..`,
//! absolute paths and symlinks pointing outside are refused).

use std::path::{Path, PathBuf};

use serde::Serialize;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::{EffectiveGrant, Policy};
use crate::error::{Error, Result};
use crate::manifest::{FileAccess, FileGrant};

/// A `files` grant with its host directory resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedFiles {
    /// Canonical host directory.
    pub host: PathBuf,
    /// Guest path.
    pub guest: String,
    /// Access.
    pub access: FileAccess,
}

pub(super) fn resolve(
    plugin: &str,
    grants: &[FileGrant],
    policy: &Policy,
    plugin_dir: &Path,
) -> Result<Vec<ResolvedFiles>> {
    let deny = |reason: String| Error::CapabilityDenied {
        plugin: plugin.to_owned(),
        capability: "capabilities.files".to_owned(),
        reason,
    };
    let root = policy.files_root.as_deref().unwrap_or(plugin_dir);
    let mut resolved = Vec::new();
    if grants.is_empty() {
        return Ok(resolved);
    }
    let root = root
        .canonicalize()
        .map_err(|e| deny(format!("files root {} is not usable: {e}", root.display())))?;
    for grant in grants {
        let wanted = Path::new(&grant.host);
        if wanted.is_absolute() {
            return Err(deny(format!(
                "host path `{}` must be relative to {}",
                grant.host,
                root.display()
            )));
        }
        let host = root.join(wanted);
        let host = host.canonicalize().map_err(|e| {
            deny(format!(
                "host path `{}` ({}) is not usable: {e}",
                grant.host,
                host.display()
            ))
        })?;
        if !host.starts_with(&root) {
            return Err(deny(format!(
                "host path `{}` resolves to {}, outside {}",
                grant.host,
                host.display(),
                root.display()
            )));
        }
        if !host.is_dir() {
            return Err(deny(format!(
                "host path `{}` is not a directory",
                grant.host
            )));
        }
        resolved.push(ResolvedFiles {
            host,
            guest: grant.guest.clone(),
            access: grant.access,
        });
    }
    Ok(resolved)
}

pub(super) fn configure(
    builder: &mut WasiCtxBuilder,
    grant: &EffectiveGrant,
) -> wasmtime::Result<()> {
    for files in &grant.files {
        let perms = match files.access {
            FileAccess::ReadOnly => FsPerms::ReadOnly,
            FileAccess::ReadWrite => FsPerms::ReadWrite,
        };
        builder.preopened_dir(&files.host, &files.guest, perms)?;
    }
    Ok(())
}
