//! `files`: host directories preopened for the guest, read-only or
//! read-write.
//!
//! # Security: the rule that keeps a grant where it was put
//!
//! A plugin must never change what any grant — its own or another plugin's —
//! reaches, nor the manifest and component the host loads. So:
//!
//! 1. A grant's host path is relative to the plugin directory (or the
//!    operator's `files_root`), made of plain names only: no `..`, no `.`,
//!    no absolute path.
//! 2. No component of the path may be a symbolic link: the directory opened
//!    must be exactly the one the path names ([`Error::CapabilityDenied`]
//!    "goes through a symbolic link").
//! 3. The directory is opened **once, when the plugin loads**, and every call
//!    preopens that same open directory (through `/proc/self/fd`, which
//!    names the open file, not a path). Renaming, deleting or replacing the
//!    path with a symlink afterwards — by a plugin holding write access to
//!    a parent, by another host, by anyone — cannot move the grant: the
//!    guest keeps reaching the directory that was checked, or nothing.
//! 4. The host checks grants against each other and against what it
//!    protects when a plugin loads ([`check_overlaps`]): a grant may not
//!    contain (or be) a plugin directory, a plugins directory, the data
//!    directory or the compiled-code cache, nor lie inside the data
//!    directory or the cache; a read-write grant may not be, nor hold, a
//!    directory in a plugins directory, by path or through a mount (what a
//!    plugin wrote there would load as a plugin); two grants (of one plugin or of two) may not overlap unless
//!    both are read-only. So no plugin can write where a manifest, a
//!    component or another grant lives, or add a plugin. Paths are
//!    compared as written and by their place in the mount table
//!    ([`Layout`](super::mounts::Layout)): a bind mount showing a protected
//!    directory at another path does not hide it.
//!
//! Inside the guest, cap-std confines every access to the preopened
//! directory (`..`, absolute paths and symlinks pointing outside are
//! refused).
//!
//! Opening a directory by its descriptor needs Linux's `/proc/self/fd`; on
//! other systems a `files` grant fails to load rather than fall back to
//! re-opening by path.

use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use wasmtime::component::Linker;
use wasmtime_wasi::FsPerms;
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView as _};
use wasmtime_wasi::p2::bindings::filesystem;

use super::mounts::Layout;
use super::{CallSetup, EffectiveGrant, Factor, Policy, Resolve};
use crate::error::{LoadError as Error, LoadResult as Result};
use crate::manifest::{Capabilities, FileAccess, FileGrant};
use crate::state::CallState;

/// The manifest key.
const KEY: &str = "capabilities.files";

/// The `files` capability.
pub(super) struct Files;

impl Factor for Files {
    fn manifest_key(&self) -> &'static str {
        KEY
    }

    fn grant_example(&self) -> &'static str {
        "capabilities.files = [{ host = \"dir\", guest = \"/dir\", access = \"read-only\" }]"
    }

    fn gated(&self) -> &'static [&'static str] {
        &[]
    }

    fn shaped(&self) -> &'static [&'static str] {
        &["wasi:filesystem/preopens"]
    }

    fn declared(&self, caps: &Capabilities) -> bool {
        !caps.files.is_empty()
    }

    /// Its write budget must be at least 1 (`files_root` is checked when
    /// a grant is resolved against it).
    fn check_policy(&self, policy: &Policy) -> Result<()> {
        super::at_least_one(&[
            ("files_max_write_kb", policy.files_max_write_kb),
            ("files_max_created", policy.files_max_created),
        ])
    }

    fn resolve(&self, cx: &Resolve<'_>, grant: &mut EffectiveGrant) -> Result<()> {
        grant.files = resolve(cx.plugin, &cx.caps.files, cx.policy, cx.plugin_dir)?;
        grant.files_limits = grant
            .files
            .iter()
            .any(|f| f.access == FileAccess::ReadWrite)
            .then(|| {
                crate::limits::FilesLimits::resolve(
                    cx.policy.files_max_write_kb,
                    cx.policy.files_max_created,
                )
            });
        Ok(())
    }

    fn granted(&self, grant: &EffectiveGrant) -> bool {
        !grant.files.is_empty()
    }

    fn write_capable(&self, grant: &EffectiveGrant) -> Option<&'static str> {
        grant
            .files
            .iter()
            .any(|f| f.access == FileAccess::ReadWrite)
            .then_some("files read-write")
    }

    /// Preopens; with a read-write grant, the writing functions of
    /// `wasi:filesystem/types` that keep to the call's budget; without
    /// `clocks`, `stat` without timestamps (which would tell the time).
    fn link(&self, linker: &mut Linker<CallState>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
        filesystem::preopens::add_to_linker::<_, WasiFilesystem>(linker, CallState::filesystem)?;
        if grant.files_limits.is_some() {
            super::files_quota::link(linker)?;
        }
        if !grant.clocks && !grant.files.is_empty() {
            super::files_times::link(linker)?;
        }
        Ok(())
    }

    /// Preopen every granted directory, read-only in read-only mode; give
    /// a call that may write there its budget.
    fn configure(&self, call: &mut CallSetup<'_>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
        if let Some(limits) = grant.files_limits
            && !call.read_only
        {
            call.files_budget = Some(Arc::new(super::FilesBudget::new(
                limits,
                call.http_hooks.notes(),
            )));
        }
        for files in &grant.files {
            let perms = match files.access {
                FileAccess::ReadWrite if !call.read_only => FsPerms::ReadWrite,
                FileAccess::ReadOnly | FileAccess::ReadWrite => FsPerms::ReadOnly,
            };
            #[cfg(target_os = "linux")]
            call.wasi
                .preopened_dir(files.reopen_path(), &files.guest, perms)?;
            #[cfg(not(target_os = "linux"))]
            {
                let _ = perms;
                wasmtime::bail!("files grants need Linux");
            }
        }
        Ok(())
    }
}

/// A `files` grant with its host directory resolved and opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedFiles {
    /// Canonical host directory (as checked when the plugin loaded).
    pub host: PathBuf,
    /// Guest path.
    pub guest: String,
    /// Access.
    pub access: FileAccess,
    /// The directory, opened once at load; every call preopens this open
    /// directory, never the path again.
    #[serde(skip)]
    handle: DirHandle,
}

/// An open host directory shared by every call of a plugin.
#[derive(Debug, Clone)]
struct DirHandle(Arc<File>);

impl PartialEq for DirHandle {
    fn eq(&self, other: &DirHandle) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DirHandle {}

impl ResolvedFiles {
    /// The path that reopens this grant's open directory (not its host path).
    #[cfg(target_os = "linux")]
    fn reopen_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd as _;
        PathBuf::from(format!("/proc/self/fd/{}", self.handle.0.as_raw_fd()))
    }

    /// Whether this grant and `other` share any directory (one contains the
    /// other, or they are the same), by path or through a mount.
    pub(crate) fn overlaps(&self, other: &Path, layout: &Layout) -> bool {
        layout.overlaps(&self.host, other)
    }
}

fn resolve(
    plugin: &str,
    grants: &[FileGrant],
    policy: &Policy,
    plugin_dir: &Path,
) -> Result<Vec<ResolvedFiles>> {
    let deny = |reason: String| Error::CapabilityDenied {
        plugin: plugin.to_owned(),
        capability: KEY.to_owned(),
        reason,
    };
    let root = policy.files_root.as_deref().unwrap_or(plugin_dir);
    let mut resolved: Vec<ResolvedFiles> = Vec::new();
    if grants.is_empty() {
        return Ok(resolved);
    }
    if !cfg!(target_os = "linux") {
        return Err(deny(
            "files grants need Linux (/proc/self/fd), where the host keeps each granted directory open instead of re-opening its path".to_owned(),
        ));
    }
    let root = root
        .canonicalize()
        .map_err(|e| deny(format!("files root {} is not usable: {e}", root.display())))?;
    let layout = Layout::read().map_err(|e| deny(mount_table_unread(&e)))?;
    for grant in grants {
        let wanted = Path::new(&grant.host);
        if wanted.is_absolute() {
            return Err(deny(format!(
                "host path `{}` must be relative to {}",
                grant.host,
                root.display()
            )));
        }
        if wanted.as_os_str().is_empty()
            || !wanted
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(deny(format!(
                "host path `{}` must be plain directory names below {} (no `.`, `..` or empty path)",
                grant.host,
                root.display()
            )));
        }
        let host = root.join(wanted);
        let canonical = host.canonicalize().map_err(|e| {
            deny(format!(
                "host path `{}` ({}) is not usable: {e}",
                grant.host,
                host.display()
            ))
        })?;
        if canonical != host {
            return Err(deny(format!(
                "host path `{}` goes through a symbolic link (it leads to {}); name the directory itself",
                grant.host,
                canonical.display()
            )));
        }
        let handle = open_dir(&host).map_err(|reason| {
            deny(format!(
                "host path `{}` ({}) {reason}",
                grant.host,
                host.display()
            ))
        })?;
        let files = ResolvedFiles {
            host,
            guest: grant.guest.clone(),
            access: grant.access,
            handle: DirHandle(Arc::new(handle)),
        };
        if let Some(other) = resolved.iter().find(|o| {
            o.overlaps(&files.host, &layout)
                && (o.access == FileAccess::ReadWrite || files.access == FileAccess::ReadWrite)
        }) {
            return Err(deny(format!(
                "host paths {} and {} overlap{} and one is read-write",
                other.host.display(),
                files.host.display(),
                through_a_mount(&other.host, &files.host)
            )));
        }
        resolved.push(files);
    }
    Ok(resolved)
}

/// Open `path` as a directory and check that what was opened is `path`
/// itself (nothing was swapped in between the check and the open).
#[cfg(target_os = "linux")]
fn open_dir(path: &Path) -> std::result::Result<File, String> {
    use std::os::fd::AsRawFd as _;
    let file = File::open(path).map_err(|e| format!("cannot be opened: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot be examined: {e}"))?;
    if !meta.is_dir() {
        return Err("is not a directory".to_owned());
    }
    let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| format!("cannot be identified once open: {e}"))?;
    if opened != path {
        return Err(format!(
            "changed while it was being opened (it is now {})",
            opened.display()
        ));
    }
    Ok(file)
}

#[cfg(not(target_os = "linux"))]
fn open_dir(_: &Path) -> std::result::Result<File, String> {
    Err("cannot be opened by descriptor on this system".to_owned())
}

/// What to add to a refusal where `a` and `b` meet only through a mount
/// (their paths alone do not).
pub(crate) fn through_a_mount(a: &Path, b: &Path) -> &'static str {
    if a.starts_with(b) || b.starts_with(a) {
        ""
    } else {
        THROUGH_A_MOUNT
    }
}

/// What a refusal adds where only a mount relates its paths.
pub(crate) const THROUGH_A_MOUNT: &str = " (they meet through a mount)";

/// [`THROUGH_A_MOUNT`] where `outer` contains `inner` only through a
/// mount (not by path).
pub(crate) fn into_through_a_mount(outer: &Path, inner: &Path) -> &'static str {
    if inner.starts_with(outer) {
        ""
    } else {
        THROUGH_A_MOUNT
    }
}

/// [`THROUGH_A_MOUNT`] where `dir` lies in `parent` only through a mount
/// (it is not `parent`'s entry by path).
pub(crate) fn in_through_a_mount(dir: &Path, parent: &Path) -> &'static str {
    if dir.parent() == Some(parent) {
        ""
    } else {
        THROUGH_A_MOUNT
    }
}

/// Why grants cannot be checked without the mount table.
pub(crate) fn mount_table_unread(why: &str) -> String {
    format!(
        "{why}; files grants are checked against it (a bind mount can show a protected directory at another path)"
    )
}

/// What a host protects from every `files` grant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Protected<'a> {
    /// Directories no grant may contain or be, nor lie inside: the data
    /// directory and the compiled-code cache.
    pub(crate) stores: &'a [PathBuf],
    /// Directories no grant may contain or be: plugin directories and the
    /// directories plugins are loaded from.
    pub(crate) plugin_dirs: &'a [PathBuf],
    /// The directories plugins are loaded from (among `plugin_dirs`): no
    /// read-write grant may be, nor hold, a directory in one (by path or
    /// through a mount), where what a plugin wrote would be loaded as a
    /// plugin of its own.
    pub(crate) loaded_from: &'a [PathBuf],
    /// The mount table, to see the paths above through bind mounts.
    pub(crate) layout: &'a Layout,
}

/// Check a loading plugin's grants against what the host protects and the
/// grants of the plugins already loaded (`others`: plugin name and grant).
///
/// # Errors
/// [`Error::CapabilityDenied`] naming the grant and what it would reach.
pub(crate) fn check_overlaps<'a>(
    plugin: &str,
    grants: &[ResolvedFiles],
    protected: Protected<'_>,
    others: impl Iterator<Item = (&'a str, &'a ResolvedFiles)>,
) -> Result<()> {
    let deny = |reason: String| Error::CapabilityDenied {
        plugin: plugin.to_owned(),
        capability: KEY.to_owned(),
        reason,
    };
    for files in grants {
        let layout = protected.layout;
        for store in protected.stores {
            if files.overlaps(store, layout) {
                return Err(deny(format!(
                    "host path {} overlaps the host's own store {}{}",
                    files.host.display(),
                    store.display(),
                    through_a_mount(&files.host, store)
                )));
            }
        }
        for dir in protected.plugin_dirs {
            if layout.contains(&files.host, dir) {
                return Err(deny(format!(
                    "host path {} contains the plugin directory {}{}: a plugin may never reach a manifest or component",
                    files.host.display(),
                    dir.display(),
                    into_through_a_mount(&files.host, dir)
                )));
            }
        }
        if files.access == FileAccess::ReadWrite
            && let Some(dir) = protected
                .loaded_from
                .iter()
                .find(|dir| layout.writes_an_entry_of(&files.host, dir))
        {
            return Err(deny(format!(
                "host path {} is read-write and makes entries of {}{}, where plugins are loaded from: a manifest and component written there would be loaded as a plugin",
                files.host.display(),
                dir.display(),
                in_through_a_mount(&files.host, dir)
            )));
        }
    }
    for (other_plugin, other) in others {
        for files in grants {
            if files.overlaps(&other.host, protected.layout)
                && (files.access == FileAccess::ReadWrite || other.access == FileAccess::ReadWrite)
            {
                return Err(deny(format!(
                    "host path {} overlaps {} granted to plugin `{other_plugin}`{}, and one of them is read-write",
                    files.host.display(),
                    other.host.display(),
                    through_a_mount(&files.host, &other.host)
                )));
            }
        }
    }
    Ok(())
}


#[cfg(test)]
mod tests {
    use super::*;

    fn grant(host: &str, access: FileAccess) -> FileGrant {
        FileGrant {
            host: host.to_owned(),
            guest: format!("/{}", host.replace('/', "-")),
            access,
        }
    }

    #[test]
    fn host_paths_with_dots_or_symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("link")).unwrap();
        let policy = Policy::default();
        for bad in ["../a", "a/../a", "./a", "", "link", "link/b"] {
            let err = resolve(
                "p",
                &[grant(bad, FileAccess::ReadOnly)],
                &policy,
                dir.path(),
            )
            .unwrap_err();
            assert_eq!(err.kind(), "capability_denied", "{bad}: {err}");
        }
        let ok = resolve(
            "p",
            &[grant("a/b", FileAccess::ReadOnly)],
            &policy,
            dir.path(),
        )
        .unwrap();
        assert_eq!(ok[0].host, dir.path().canonicalize().unwrap().join("a/b"));
    }

    #[test]
    fn overlapping_grants_of_one_plugin_are_refused_unless_both_read_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let policy = Policy::default();
        let both_ro = [
            grant("a", FileAccess::ReadOnly),
            grant("a/b", FileAccess::ReadOnly),
        ];
        resolve("p", &both_ro, &policy, dir.path()).unwrap();
        let one_rw = [
            grant("a", FileAccess::ReadWrite),
            grant("a/b", FileAccess::ReadOnly),
        ];
        let err = resolve("p", &one_rw, &policy, dir.path()).unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");
    }

    #[test]
    fn grants_may_not_reach_plugin_dirs_or_stores() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        for sub in ["plugins/p/data", "data/audit", "other"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let policy = Policy {
            files_root: Some(root.clone()),
            ..Policy::default()
        };
        let stores = [root.join("data")];
        let plugin_dirs = [root.join("plugins"), root.join("plugins/p")];
        let loaded_from = [root.join("plugins")];
        let layout = Layout::read().unwrap();
        let protected = Protected {
            stores: &stores,
            plugin_dirs: &plugin_dirs,
            loaded_from: &loaded_from,
            layout: &layout,
        };
        for (bad, why) in [
            ("plugins", "plugin directory"),
            ("plugins/p", "plugin directory"),
            ("data", "store"),
            ("data/audit", "store"),
        ] {
            let g = resolve("p", &[grant(bad, FileAccess::ReadOnly)], &policy, &root).unwrap();
            let err = check_overlaps("p", &g, protected, std::iter::empty()).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        // Below a plugin directory (not containing a manifest) is fine.
        let g = resolve(
            "p",
            &[grant("plugins/p/data", FileAccess::ReadWrite)],
            &policy,
            &root,
        )
        .unwrap();
        check_overlaps("p", &g, protected, std::iter::empty()).unwrap();
        // A directory beside the plugins, in the directory they are loaded
        // from, only to read: what a plugin could write there (a manifest
        // and a component) would be loaded as a plugin at the next start.
        std::fs::create_dir_all(root.join("plugins/scratch")).unwrap();
        let beside = |access| resolve("p", &[grant("plugins/scratch", access)], &policy, &root);
        let g_ro = beside(FileAccess::ReadOnly).unwrap();
        check_overlaps("p", &g_ro, protected, std::iter::empty()).unwrap();
        let g_rw = beside(FileAccess::ReadWrite).unwrap();
        let err = check_overlaps("p", &g_rw, protected, std::iter::empty()).unwrap_err();
        assert_eq!(err.kind(), "capability_denied", "{err}");
        assert!(
            err.to_string().contains("where plugins are loaded from"),
            "{err}"
        );
        // Another plugin's read-write grant overlapping it is not.
        let other = resolve(
            "q",
            &[grant("plugins", FileAccess::ReadOnly)],
            &policy,
            &root,
        )
        .unwrap();
        let err = check_overlaps(
            "p",
            &g,
            Protected {
                stores: &[],
                plugin_dirs: &[],
                loaded_from: &[],
                layout: &layout,
            },
            other.iter().map(|o| ("q", o)),
        )
        .unwrap_err();
        assert!(err.to_string().contains("plugin `q`"), "{err}");
    }

    #[test]
    fn a_grant_keeps_its_directory_when_the_path_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/marker"), "original").unwrap();
        let g = resolve(
            "p",
            &[grant("a", FileAccess::ReadOnly)],
            &Policy::default(),
            dir.path(),
        )
        .unwrap();
        std::fs::rename(dir.path().join("a"), dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("a")).unwrap();
        let reopened = g[0].reopen_path();
        assert_eq!(
            std::fs::read_to_string(reopened.join("marker")).unwrap(),
            "original"
        );
    }
}
