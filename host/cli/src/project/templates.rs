//! The files of a new plugin project, and the SDKs vendored into it.
//!
//! A project outside this repository cannot depend on the SDK by path (no
//! checkout on the author's machine) or by git (no network needed, and no
//! way to know which revision matches this binary), and the SDK is not on a
//! registry. So the SDK this binary was built with is embedded in it and
//! written into the project's `vendor/`: the project builds offline,
//! against exactly the ABI this binary hosts. The Rust SDK's manifest is
//! derived from the repository's (workspace inheritance resolved), so the
//! vendored crate has the dependencies the SDK is tested with.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::Lang;

const ROOT_CARGO: &str = include_str!("../../../../Cargo.toml");
const SDK_CARGO: &str = include_str!("../../../../sdk/Cargo.toml");
const SDK_LIB: &str = include_str!("../../../../sdk/src/lib.rs");
const SDK_FINITE: &str = include_str!("../../../../sdk/src/finite.rs");
/// The plugin ABI: the SDK's copy of `wit/` (a test keeps them equal).
pub(super) const WIT: &str = include_str!("../../../../sdk/wit/plugin.wit");
const NAMES_CARGO: &str = include_str!("../../../../names/Cargo.toml");
const NAMES_LIB: &str = include_str!("../../../../names/src/lib.rs");

/// The Python SDK, file by file (`vendor/airlock_sdk/`).
pub(super) const PYTHON_SDK: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../../../sdk/python/airlock_sdk/__init__.py"),
    ),
    (
        "__main__.py",
        include_str!("../../../../sdk/python/airlock_sdk/__main__.py"),
    ),
    (
        "_component.py",
        include_str!("../../../../sdk/python/airlock_sdk/_component.py"),
    ),
    (
        "log.py",
        include_str!("../../../../sdk/python/airlock_sdk/log.py"),
    ),
    (
        "workspace.py",
        include_str!("../../../../sdk/python/airlock_sdk/workspace.py"),
    ),
];

const PLUGIN_TOML: &str = include_str!("templates/plugin.toml");
const CASES: &str = include_str!("templates/cases.jsonl");
const VENDOR_README: &str = include_str!("templates/vendor-README.md");
const RUST_CARGO: &str = include_str!("templates/rust/Cargo.toml");
const RUST_LIB: &str = include_str!("templates/rust/lib.rs");
const RUST_GITIGNORE: &str = include_str!("templates/rust/gitignore");
const PYTHON_APP: &str = include_str!("templates/python/app.py");
const PYTHON_TEST: &str = include_str!("templates/python/test_app.py");
const PYTHON_GITIGNORE: &str = include_str!("templates/python/gitignore");

/// The files of a new project `name` in `lang`, as (relative path, text).
pub(super) fn project(name: &str, lang: Lang) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let ident = name.replace('-', "_");
    let component = format!("{ident}.wasm");
    // A Python component carries its interpreter: more memory and fuel for
    // the same work (see docs/performance.md).
    let (fuel, memory_mb) = match lang {
        Lang::Rust => ("100_000_000", "64"),
        Lang::Python => ("1_000_000_000", "128"),
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{component}}", &component)
            .replace("{{fuel}}", fuel)
            .replace("{{memory_mb}}", memory_mb)
    };
    let mut files = vec![
        (PathBuf::from("plugin.toml"), fill(PLUGIN_TOML)),
        (PathBuf::from("cases.jsonl"), CASES.to_owned()),
        (PathBuf::from("vendor/README.md"), VENDOR_README.to_owned()),
    ];
    match lang {
        Lang::Rust => {
            files.extend([
                (PathBuf::from("Cargo.toml"), fill(RUST_CARGO)),
                (PathBuf::from("src/lib.rs"), fill(RUST_LIB)),
                (PathBuf::from(".gitignore"), RUST_GITIGNORE.to_owned()),
            ]);
            files.extend(rust_sdk()?);
        }
        Lang::Python => {
            files.extend([
                (
                    PathBuf::from(super::toolchain::PYTHON_MODULE_FILE),
                    fill(PYTHON_APP),
                ),
                (PathBuf::from("test_app.py"), fill(PYTHON_TEST)),
                (PathBuf::from(".gitignore"), PYTHON_GITIGNORE.to_owned()),
            ]);
            files.extend(python_sdk());
        }
    }
    Ok(files)
}

/// `vendor/airlock-sdk` and `vendor/airlock-names`, standalone crates.
fn rust_sdk() -> anyhow::Result<Vec<(PathBuf, String)>> {
    let paths = [("airlock-names", "../airlock-names")];
    Ok(vec![
        (
            PathBuf::from("vendor/airlock-sdk/Cargo.toml"),
            standalone_manifest(SDK_CARGO, ROOT_CARGO, &paths)?,
        ),
        (
            PathBuf::from("vendor/airlock-sdk/src/lib.rs"),
            SDK_LIB.to_owned(),
        ),
        (
            PathBuf::from("vendor/airlock-sdk/src/finite.rs"),
            SDK_FINITE.to_owned(),
        ),
        (
            PathBuf::from("vendor/airlock-sdk/wit/plugin.wit"),
            WIT.to_owned(),
        ),
        (
            PathBuf::from("vendor/airlock-names/Cargo.toml"),
            standalone_manifest(NAMES_CARGO, ROOT_CARGO, &paths)?,
        ),
        (
            PathBuf::from("vendor/airlock-names/src/lib.rs"),
            NAMES_LIB.to_owned(),
        ),
    ])
}

/// `vendor/airlock_sdk/`.
pub(super) fn python_sdk() -> Vec<(PathBuf, String)> {
    PYTHON_SDK
        .iter()
        .map(|(name, text)| {
            (
                Path::new("vendor/airlock_sdk").join(name),
                (*text).to_owned(),
            )
        })
        .collect()
}

/// A workspace member's `Cargo.toml` made standalone: every
/// `{ workspace = true }` replaced by the workspace's value (a dependency's
/// own keys, such as `features`, kept), path dependencies pointed at the
/// vendored copies in `paths` (name, path), `[lints]` dropped, and the
/// crate marked unpublishable.
fn standalone_manifest(member: &str, root: &str, paths: &[(&str, &str)]) -> anyhow::Result<String> {
    let root: toml::Table = toml::from_str(root).context("the workspace Cargo.toml")?;
    let mut member: toml::Table = toml::from_str(member).context("a member's Cargo.toml")?;
    let workspace = root
        .get("workspace")
        .and_then(|w| w.as_table())
        .context("the workspace Cargo.toml has no [workspace]")?;
    let inherits = |v: &toml::Value| {
        v.as_table()
            .and_then(|t| t.get("workspace"))
            .and_then(toml::Value::as_bool)
            == Some(true)
    };
    if let Some(package) = member.get_mut("package").and_then(|p| p.as_table_mut()) {
        let shared = workspace.get("package").and_then(|p| p.as_table());
        for (key, value) in package.iter_mut() {
            if inherits(value) {
                *value = shared
                    .and_then(|s| s.get(key))
                    .cloned()
                    .with_context(|| format!("[workspace.package] has no `{key}`"))?;
            }
        }
        package.insert("publish".to_owned(), toml::Value::Boolean(false));
    }
    let shared_deps = workspace.get("dependencies").and_then(|d| d.as_table());
    if let Some(deps) = member
        .get_mut("dependencies")
        .and_then(|d| d.as_table_mut())
    {
        for (name, value) in deps.iter_mut() {
            if !inherits(value) {
                continue;
            }
            let shared = shared_deps
                .and_then(|d| d.get(name))
                .cloned()
                .with_context(|| format!("[workspace.dependencies] has no `{name}`"))?;
            let mut resolved = match shared {
                toml::Value::String(version) => {
                    let mut t = toml::Table::new();
                    t.insert("version".to_owned(), toml::Value::String(version));
                    t
                }
                toml::Value::Table(t) => t,
                other => anyhow::bail!("[workspace.dependencies] `{name}` is {other}"),
            };
            if let Some(own) = value.as_table() {
                for (key, v) in own {
                    if key != "workspace" {
                        resolved.insert(key.clone(), v.clone());
                    }
                }
            }
            if resolved.contains_key("path") {
                let (_, path) = paths
                    .iter()
                    .find(|(n, _)| *n == name)
                    .with_context(|| format!("no vendored copy of the path dependency `{name}`"))?;
                resolved.insert("path".to_owned(), toml::Value::String((*path).to_owned()));
            }
            *value = toml::Value::Table(resolved);
        }
    }
    member.remove("lints");
    let text = toml::to_string(&member).context("cannot write a vendored Cargo.toml")?;
    Ok(format!(
        "# Vendored by `airlock plugin new` (see ../README.md).\n{text}"
    ))
}

/// Write `files` into the new project directory `dir` (absent or empty),
/// whole or not at all: where none was, into a temporary directory beside
/// it, renamed to `dir` at the end.
pub(super) fn write(dir: &Path, files: &[(PathBuf, String)]) -> anyhow::Result<()> {
    if dir.is_dir() {
        // An existing empty directory (the caller checked it is empty),
        // `.` among them: it cannot be renamed over (`.` and a working
        // directory are busy), so the files are written into it, and what
        // this wrote is taken out again if one fails.
        let mut created = Vec::new();
        return write_into(dir, files, &mut created).map_err(|e| {
            for top in created.iter().rev() {
                let _ = fs::remove_dir_all(top).or_else(|_| fs::remove_file(top));
            }
            anyhow::Error::new(e).context(format!("cannot create the project in {}", dir.display()))
        });
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "project".to_owned());
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.{}.partial", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        fs::create_dir(&tmp)?;
        write_into(&tmp, files, &mut Vec::new())?;
        // Where no directory was: the project appears whole or not at all.
        fs::rename(&tmp, dir)?;
        // The project is there now; a rename not yet durable is not a
        // reason to take it out again.
        if let Err(e) = airlock_host::store::file::sync_dir(&parent) {
            tracing::warn!(dir = %parent.display(), error = %e, "cannot sync the directory holding the new project");
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_dir_all(&tmp);
        anyhow::Error::new(e).context(format!("cannot create the project in {}", dir.display()))
    })
}

/// Write `files` under `dir`, never over a file; `created` gets each
/// entry of `dir` itself this made, as it makes it.
fn write_into(
    dir: &Path,
    files: &[(PathBuf, String)],
    created: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    for (path, text) in files {
        if let Some(top) = path.components().next() {
            let top = dir.join(top);
            if !created.contains(&top) && fs::symlink_metadata(&top).is_err() {
                created.push(top);
            }
        }
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        // `create_new`: never over a file that appeared since the check.
        // Synced: the directory is renamed into place next, and a crash
        // after the rename must not leave it holding empty files.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_sdk_manifest_is_standalone() {
        let text = standalone_manifest(
            SDK_CARGO,
            ROOT_CARGO,
            &[("airlock-names", "../airlock-names")],
        )
        .unwrap();
        assert!(!text.contains("workspace"), "{text}");
        let table: toml::Table = toml::from_str(&text).unwrap();
        let deps = table["dependencies"].as_table().unwrap();
        assert_eq!(
            deps["airlock-names"]["path"].as_str(),
            Some("../airlock-names")
        );
        // The workspace's versions and features, not guesses.
        let root: toml::Table = toml::from_str(ROOT_CARGO).unwrap();
        let wit_bindgen = &root["workspace"]["dependencies"]["wit-bindgen"];
        assert_eq!(&deps["wit-bindgen"], wit_bindgen);
        assert_eq!(table["package"]["edition"].as_str(), Some("2024"));
        assert!(table.get("lints").is_none());
        let names = standalone_manifest(NAMES_CARGO, ROOT_CARGO, &[]).unwrap();
        assert!(!names.contains("workspace"), "{names}");
    }

    #[test]
    fn a_path_dependency_without_a_vendored_copy_is_an_error() {
        let err = standalone_manifest(SDK_CARGO, ROOT_CARGO, &[]).unwrap_err();
        assert!(err.to_string().contains("airlock-names"), "{err:#}");
    }

    #[test]
    fn projects_fill_every_placeholder() {
        for lang in [Lang::Rust, Lang::Python] {
            for (path, text) in project("demo-tool", lang).unwrap() {
                assert!(!text.contains("{{"), "{}: {text}", path.display());
            }
        }
        let files = project("demo-tool", Lang::Python).unwrap();
        let manifest = &files
            .iter()
            .find(|(p, _)| p == Path::new("plugin.toml"))
            .unwrap()
            .1;
        assert!(
            manifest.contains("component = \"demo_tool.wasm\""),
            "{manifest}"
        );
    }

    /// The Rust SDK vendored into a project is every source file of
    /// sdk/src (a module left out fails the project's first build).
    #[test]
    fn the_vendored_rust_sdk_is_complete() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/src");
        let mut on_disk: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let mut vendored: Vec<String> = rust_sdk()
            .unwrap()
            .into_iter()
            .filter_map(|(path, _)| {
                let rest = path.strip_prefix("vendor/airlock-sdk/src").ok()?;
                Some(rest.to_str()?.to_owned())
            })
            .collect();
        vendored.sort();
        assert_eq!(vendored, on_disk);
    }

    /// The Python SDK embedded here is every file of sdk/python/airlock_sdk.
    #[test]
    fn the_embedded_python_sdk_is_complete() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/python/airlock_sdk");
        let mut on_disk: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".py"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = PYTHON_SDK.iter().map(|(n, _)| (*n).to_owned()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }
}
