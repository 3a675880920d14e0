//! Files the user names with `--out`.
//!
//! Writing is always whole-or-nothing (`airlock_host::store::file`); this
//! decides whether the path may be written at all. Nothing is written
//! inside the data directory: one mistyped path would otherwise replace
//! the audit log's signing key or a database with an export, or create a
//! file the host then reads as its own (a mode file, a version's cases).
//! Elsewhere a file that exists is replaced only with `--force`.

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use crate::Failure;
use crate::config::Settings;

/// Check that `out` may be written by a command run with `settings`.
///
/// # Errors
/// A usage failure when `out` is inside the data directory, or exists and
/// `force` is not given.
pub(crate) fn check(settings: &Settings, out: &Path, force: bool) -> Result<(), Failure> {
    if let Some(data_dir) = inside(&settings.data_dir, out) {
        return Err(Failure::usage(anyhow!(
            "{} is inside the data directory {}: write the output elsewhere",
            out.display(),
            data_dir.display()
        )));
    }
    // A path that cannot be written fails when it is, with the system's
    // reason.
    if std::fs::symlink_metadata(out).is_ok() && !force {
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
