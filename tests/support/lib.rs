//! Test support for Airlock: paths of the built example plugins and test
//! guests, and helpers that install a component with a manifest in a
//! temporary plugin directory.
//!
//! The components are built by this crate's build script
//! (`scripts/build-guests`).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// Tools the example plugins in [`PLUGINS_DIR`] must expose, with the risk
/// class each manifest declares.
pub const EXAMPLE_TOOLS: &[(&str, &str)] = &[
    ("text/stats", "read"),
    ("text/slugify", "read"),
    ("text/regex-extract", "read"),
    ("text/case", "read"),
    ("json/query", "read"),
    ("json/keys", "read"),
    ("json/format", "read"),
    ("json/merge-patch", "read"),
    ("files/list", "read"),
    ("files/read", "read"),
    ("files/search", "read"),
    ("notes/add", "write"),
    ("notes/get", "read"),
    ("notes/list", "read"),
    ("notes/delete", "write"),
    ("notes/archive", "write"),
    ("notes/read-archive", "read"),
    ("fetch/get", "external"),
    ("billing/open-account", "write"),
    ("billing/lookup", "read"),
    ("billing/refund", "irreversible"),
];

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Edit the copy of the `text` plugin's `version` kept in data directory
/// `data` so that it no longer matches its record (it will not load); the
/// manifest's path and its text as it was.
///
/// # Panics
/// When no such copy is there: a test's set-up is wrong.
pub fn edit_materialized(data: &Path, version: &str) -> (PathBuf, String) {
    let copy = std::fs::read_dir(data.join("versions/text"))
        .expect("the data directory holds installed versions of text")
        .map(|e| e.expect("a directory entry").path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{version}-")))
        })
        .expect("a copy of that version");
    let manifest = copy.join("plugin.toml");
    let original = std::fs::read_to_string(&manifest).expect("its manifest");
    std::fs::write(
        &manifest,
        original.replacen("risk = \"read\"", "risk = \"write\"", 1),
    )
    .expect("the manifest rewritten");
    (manifest, original)
}

/// The one file under `root` (at any depth) whose path ends with `tail`
/// (`rollouts/json.json`): a store's record, wherever the store keeps it.
///
/// # Panics
/// Unless exactly one file matches: a test's set-up is wrong.
pub fn find_file(root: &Path, tail: &str) -> PathBuf {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.ends_with(tail) {
                found.push(path);
            }
        }
    }
    assert_eq!(found.len(), 1, "{tail}: {found:?}");
    found.remove(0)
}

/// A plugin directory in a temporary location, removed on drop.
#[derive(Debug)]
pub struct PluginDir {
    dir: tempfile::TempDir,
}

impl PluginDir {
    /// The plugin directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The manifest's path.
    pub fn manifest(&self) -> PathBuf {
        self.dir.path().join("plugin.toml")
    }
}

/// Install `component` (bytes) as `component.wasm` with a manifest made of a
/// `[plugin]` table (name `name`, the component's real digest) followed by
/// `rest` (capabilities, limits, tools).
pub fn install(name: &str, component: &[u8], rest: &str) -> PluginDir {
    let digest = sha256_hex(component);
    install_raw(
        component,
        &format!(
            "[plugin]\nname = \"{name}\"\nversion = \"0.1.0\"\ncomponent = \"component.wasm\"\nsha256 = \"{digest}\"\n\n{rest}"
        ),
    )
}

/// Install `component` as `component.wasm` next to a manifest with exactly
/// the text `manifest`.
pub fn install_raw(component: &[u8], manifest: &str) -> PluginDir {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    std::fs::write(dir.path().join("component.wasm"), component).expect("write component");
    std::fs::write(dir.path().join("plugin.toml"), manifest).expect("write manifest");
    PluginDir { dir }
}

/// Read a built component.
pub fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}
