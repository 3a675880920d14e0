//! Files the user names with `--out`.
//!
//! Writing is always whole-or-nothing (`airlock_host::store::file`); this
//! decides whether the path may be written at all. A file that exists is
//! replaced only with `--force`, and never one the host keeps in its data
//! directory: one mistyped path would otherwise replace the audit log's
//! signing key, the mode file or a database with an export.

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use crate::Failure;
use crate::config::Settings;

/// Check that `out` may be written by a command run with `settings`.
///
/// # Errors
/// A usage failure when `out` exists and `force` is not given, or when it
/// exists inside the data directory.
pub(crate) fn check(settings: &Settings, out: &Path, force: bool) -> Result<(), Failure> {
    if std::fs::symlink_metadata(out).is_err() {
        // Nothing to replace; a path that cannot be written fails when it
        // is, with the system's reason.
        return Ok(());
    }
    if let Some(data_dir) = inside(&settings.data_dir, out) {
        return Err(Failure::usage(anyhow!(
            "{} is a file of the data directory {}: write the output elsewhere",
            out.display(),
            data_dir.display()
        )));
    }
    if !force {
        return Err(Failure::usage(anyhow!(
            "{} exists: pass --force to replace it",
            out.display()
        )));
    }
    Ok(())
}

/// The data directory, resolved, when `out` (its directory resolved, so a
/// link or `..` cannot hide it) lies inside it.
fn inside(data_dir: &Path, out: &Path) -> Option<PathBuf> {
    let data_dir = data_dir.canonicalize().ok()?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let resolved = parent.canonicalize().ok()?.join(out.file_name()?);
    resolved.starts_with(&data_dir).then_some(data_dir)
}
