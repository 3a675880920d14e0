//! `airlock plugin new | build | check`: plugin projects outside this
//! repository, in Rust or Python.
//!
//! - `new` writes a project that builds as created: a manifest, one tool,
//!   its unit tests, `cases.jsonl`, and the SDK of this binary vendored
//!   under `vendor/` (see [`templates`]).
//! - `build` compiles the project with the guest toolchain
//!   ([`toolchain`]), then makes the package the way `plugins pack` does
//!   ([`Package::from_build`]: the component's digest stamped into the
//!   manifest) and writes it to `target/airlock/NAME/`.
//! - `check` loads the built package the way a host does (manifest schema,
//!   digest, world, tools against the exports, schemas, grants) and prints
//!   the `inspect` report; its exit code says whether it loads.

mod templates;
mod toolchain;

use std::path::{Path, PathBuf};

use airlock_host::{Host, Package};
use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};

use crate::config::Settings;
use crate::{Calls, Failure, exit, host_config, print_json};

/// Where `plugin build` writes the built package, under the project.
const BUILD_OUT: &str = "target/airlock";

/// The subcommands of `airlock plugin`.
#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// Create a plugin project: manifest, one tool with its unit tests,
    /// cases.jsonl, and this airlock's SDK vendored under vendor/.
    New {
        /// The plugin's name: lowercase letters, digits, `-` and `_`,
        /// starting with a letter, at most 64 bytes, no `__`.
        name: String,
        /// The language of the project.
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
        /// Where to create it (default: ./NAME); must not exist or be
        /// empty.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Build a plugin project into target/airlock/NAME/: compile the
    /// component (Rust: cargo for wasm32-wasip2; Python: componentize-py)
    /// and stamp its sha256 into the built manifest.
    Build {
        /// The project directory.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// Load a built plugin the way a host does and print the inspect
    /// report. Exits 0 when it loads cleanly, else the load error's code
    /// (1 when the report has errors).
    Check {
        /// A plugin project (its target/airlock/NAME/ is checked) or a
        /// plugin directory.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Print the inspect report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The language of a plugin project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Lang {
    /// A Rust crate using the airlock-sdk crate.
    Rust,
    /// A Python module (`app.py`) using the airlock_sdk package, built with
    /// componentize-py.
    Python,
}

pub(crate) async fn run(settings: &Settings, command: PluginCommand) -> Result<u8, Failure> {
    match command {
        PluginCommand::New { name, lang, dir } => new(&name, lang, dir),
        PluginCommand::Build { dir } => build(&dir),
        PluginCommand::Check { path, json } => check(settings, &path, json).await,
    }
}

fn new(name: &str, lang: Lang, dir: Option<PathBuf>) -> Result<u8, Failure> {
    if !airlock_names::is_valid_tool_name(name) {
        return Err(Failure::usage(anyhow::anyhow!(
            "invalid plugin name `{name}`: use lowercase ASCII letters, digits, `-` and `_`, \
             starting with a letter, at most 64 bytes, without `__`"
        )));
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    match std::fs::read_dir(&dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Failure::usage(anyhow::anyhow!(
                    "{} is not empty: a project is created in a new or empty directory",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(Failure::usage(anyhow::anyhow!(
                "{} is a file, not a directory",
                dir.display()
            )));
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot read {}", dir.display()))
                .into());
        }
    }
    let files = templates::project(name, lang)?;
    templates::write(&dir, &files)?;
    outln!(
        "created the {} plugin project `{name}` in {}",
        match lang {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
        },
        dir.display()
    );
    outln!(
        "next: cd {} && airlock plugin build && airlock plugin check",
        dir.display()
    );
    Ok(exit::OK)
}

/// A project's language, by its files.
fn project_lang(dir: &Path) -> Result<Lang, Failure> {
    if !dir.join(airlock_host::MANIFEST_FILE).is_file() {
        return Err(Failure::usage(anyhow::anyhow!(
            "{} is not a plugin project: it has no {} (create one with `airlock plugin new`)",
            dir.display(),
            airlock_host::MANIFEST_FILE
        )));
    }
    if dir.join("Cargo.toml").is_file() {
        Ok(Lang::Rust)
    } else if dir.join(toolchain::PYTHON_MODULE_FILE).is_file() {
        Ok(Lang::Python)
    } else {
        Err(Failure::usage(anyhow::anyhow!(
            "{} is not a plugin project: it has neither a Cargo.toml (Rust) nor an {} (Python)",
            dir.display(),
            toolchain::PYTHON_MODULE_FILE
        )))
    }
}

/// The `[plugin]` name and component of a project's manifest, before the
/// build (the manifest has no pin yet, so the full check comes after).
fn manifest_basics(dir: &Path) -> anyhow::Result<(String, String)> {
    let path = dir.join(airlock_host::MANIFEST_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let field = |key: &str| -> anyhow::Result<String> {
        table
            .get("plugin")
            .and_then(|p| p.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .with_context(|| format!("{}: [plugin] {key} is missing", path.display()))
    };
    let name = field("name")?;
    if !airlock_names::is_valid_tool_name(&name) {
        anyhow::bail!(
            "{}: [plugin] name `{name}` is not a valid plugin name",
            path.display()
        );
    }
    let component = field("component")?;
    // Checked before the build, which writes the component under this name
    // (`../x.wasm` or an absolute path would be written outside its
    // scratch directory); a package holds a plain `*.wasm` beside its
    // manifest anyway.
    if !airlock_host::is_plain_component_name(&component) {
        anyhow::bail!(
            "{}: [plugin] component `{component}` must be a plain `*.wasm` file name beside plugin.toml",
            path.display()
        );
    }
    Ok((name, component))
}

fn build(dir: &Path) -> Result<u8, Failure> {
    let lang = project_lang(dir)?;
    let (name, component_name) = manifest_basics(dir)?;
    let component = match lang {
        Lang::Rust => toolchain::build_rust(dir)?,
        Lang::Python => toolchain::build_python(dir, &component_name)?,
    };
    let package = Package::from_build(dir, component)?;
    let out = dir.join(BUILD_OUT).join(&name);
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    package.replace_dir(&out)?;
    outln!(
        "built {} {} (component sha256 {}) into {}",
        package.name(),
        package.version(),
        package.component_digest(),
        out.display()
    );
    Ok(exit::OK)
}

async fn check(settings: &Settings, path: &Path, json: bool) -> Result<u8, Failure> {
    // A project: check what `build` wrote. A plugin directory: itself.
    let dir = if project_lang(path).is_ok() {
        let (name, _) = manifest_basics(path)?;
        let built = path.join(BUILD_OUT).join(&name);
        if !built.join(airlock_host::MANIFEST_FILE).is_file() {
            return Err(anyhow::anyhow!(
                "{} has not been built: run `airlock plugin build` first",
                path.display()
            )
            .into());
        }
        built
    } else if path.join(airlock_host::MANIFEST_FILE).is_file() {
        path.to_owned()
    } else {
        return Err(Failure::usage(anyhow::anyhow!(
            "{} is neither a plugin project nor a plugin directory",
            path.display()
        )));
    };
    // The package's own checks (manifest, digest, component header), then
    // a load as a host loads it, then the reviewer's report.
    let package = Package::from_dir(&dir)?;
    let host = Host::new(host_config(settings, Calls::None))?;
    let loaded = host.open_plugin(&dir).await;
    let report = host.inspect(&dir).await?;
    if json {
        print_json(&serde_json::to_value(&report).context("cannot serialize the report")?);
    } else {
        out!("{}", crate::inspect::render(&report));
    }
    let plugin = loaded?;
    if report.has_errors() {
        return Ok(exit::HOST);
    }
    if !json {
        outln!(
            "\nok: {} {} loads with {} tool(s)",
            package.name(),
            package.version(),
            plugin.tools().count()
        );
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Python build wrote its component under the manifest's name in its
    /// scratch directory before the name was checked: `../x.wasm` or an
    /// absolute path was written outside it.
    #[test]
    fn a_component_name_that_leaves_the_project_is_refused_before_the_build() {
        let dir = tempfile::tempdir().unwrap();
        for (component, ok) in [
            ("x.wasm", true),
            ("../x.wasm", false),
            ("/tmp/x.wasm", false),
            ("sub/x.wasm", false),
            ("x.py", false),
        ] {
            std::fs::write(
                dir.path().join(airlock_host::MANIFEST_FILE),
                format!("[plugin]\nname = \"x\"\ncomponent = \"{component}\"\n"),
            )
            .unwrap();
            let result = manifest_basics(dir.path());
            assert_eq!(result.is_ok(), ok, "{component}: {result:?}");
            if let Err(e) = result {
                assert!(e.to_string().contains("plain `*.wasm`"), "{e}");
            }
        }
    }
}
