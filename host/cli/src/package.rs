//! `airlock plugins pack | keygen | sign | diff`: plugin packages, their
//! signatures, and what changes between two versions.

use std::path::{Path, PathBuf};

use airlock_host::{Host, Package, Plugin, PluginDiff};
use anyhow::Context as _;
use clap::Subcommand;

use crate::config::Settings;
use crate::{Calls, Failure, exit, host_config, print_json};

/// The package subcommands of `airlock plugins`.
#[derive(Debug, Subcommand)]
pub(crate) enum PackageCommand {
    /// Make a plugin archive (.tar.gz) from a plugin directory, with the
    /// component's sha256 stamped into the archived manifest.
    Pack {
        /// The plugin directory (plugin.toml, its component, optionally
        /// cases.jsonl).
        dir: PathBuf,
        /// Where to write the archive (default: NAME-VERSION.tar.gz here).
        #[arg(short, long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Create an Ed25519 key for signing plugins (mode 0600, never
    /// overwrites a file) and print its public key for `trusted_keys`.
    Keygen {
        /// The key file to create.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a plugin: a directory gets a plugin.sig; an archive is
    /// rewritten with one. Sign after packing: the signature covers the
    /// manifest's exact bytes.
    Sign {
        /// A plugin directory or archive.
        path: PathBuf,
        /// The signing key file (from `plugins keygen`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// What changes from plugin A to plugin B: grants (effective, under
    /// this host's policy), limits, tools, risk, approvals, rate limits and
    /// schemas, and whether B asks for more than A.
    Diff {
        /// The old version: a plugin directory, an archive, or a plugin
        /// name in the plugins directory.
        a: String,
        /// The new version, likewise.
        b: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(settings: &Settings, command: PackageCommand) -> Result<u8, Failure> {
    match command {
        PackageCommand::Pack { dir, out } => pack(settings, &dir, out),
        PackageCommand::Keygen { out } => keygen(&out),
        PackageCommand::Sign { path, key } => sign(&path, &key),
        PackageCommand::Diff { a, b, json } => diff(settings, &a, &b, json).await,
    }
}

fn pack(settings: &Settings, dir: &Path, out: Option<PathBuf>) -> Result<u8, Failure> {
    let package = Package::from_source_dir(dir)?;
    let out = out.unwrap_or_else(|| {
        PathBuf::from(format!("{}-{}.tar.gz", package.name(), package.version()))
    });
    // Packing again replaces the archive, as an author expects; never a
    // file of the data directory.
    crate::outfile::check(settings, &out, true)?;
    package.write_archive(&out)?;
    outln!(
        "packed {} {} (component sha256 {}) into {}",
        package.name(),
        package.version(),
        package.component_digest(),
        out.display()
    );
    Ok(exit::OK)
}

fn keygen(out: &Path) -> Result<u8, Failure> {
    let public = airlock_host::generate_signing_key(out)?;
    eprintln!(
        "created signing key {} (keep it secret); trust it with, in [policy] trusted_keys:",
        out.display()
    );
    outln!("{public}");
    Ok(exit::OK)
}

fn sign(path: &Path, key: &Path) -> Result<u8, Failure> {
    let mut package = Package::open(path)?;
    let public = package.sign(key)?;
    let written = if path.is_dir() {
        package.write_signature(path)?;
        path.join(airlock_host::SIGNATURE_FILE)
    } else {
        package.write_archive(path)?;
        path.to_owned()
    };
    outln!(
        "signed {} {} with {public} ({})",
        package.name(),
        package.version(),
        written.display()
    );
    Ok(exit::OK)
}

async fn diff(settings: &Settings, a: &str, b: &str, json: bool) -> Result<u8, Failure> {
    let host = Host::new(host_config(settings, Calls::None))?;
    let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
    let old = resolve_plugin_ref(&host, settings, a, &scratch.path().join("a")).await?;
    let new = resolve_plugin_ref(&host, settings, b, &scratch.path().join("b")).await?;
    let diff = PluginDiff::between(&old, &new);
    if json {
        print_json(&serde_json::to_value(&diff).context("cannot serialize the diff")?);
    } else {
        // Its subjects and values are the authors' (a redaction pointer, a
        // guest path, a schema's property names): escaped, so they cannot
        // drive the terminal of the reviewer reading whether it widens.
        out!("{}", crate::terminal::escape_lines(&diff.to_string()));
    }
    Ok(exit::OK)
}

/// The plugin a command names: a plugin directory, a plugin archive
/// (unpacked into `scratch`, a directory that must not exist yet), or the
/// name of a plugin in the plugins directory; loaded (checked as loading
/// checks it) but not added to `host`.
pub(crate) async fn resolve_plugin_ref(
    host: &Host,
    settings: &Settings,
    reference: &str,
    scratch: &Path,
) -> Result<Plugin, Failure> {
    let path = PathBuf::from(reference);
    if path.join(airlock_host::MANIFEST_FILE).is_file() {
        return Ok(host.open_plugin(&path).await?);
    }
    if path.is_file() {
        let package = Package::from_archive(&path)?;
        package.write_dir(scratch)?;
        return Ok(host.open_plugin(scratch).await?);
    }
    let installed = settings.plugins_dir.join(reference);
    if !reference.contains(['/', '\\']) && installed.join(airlock_host::MANIFEST_FILE).is_file() {
        return Ok(host.open_plugin(&installed).await?);
    }
    Err(anyhow::anyhow!(
        "no plugin `{reference}`: neither a plugin directory, a plugin archive, nor a plugin in {}",
        settings.plugins_dir.display()
    )
    .into())
}
