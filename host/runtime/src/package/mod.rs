//! Plugin packages: a plugin's files held in memory and checked, read from
//! a plugin directory or a flat `.tar.gz` archive, written back out whole
//! or not at all; their signatures; and what changes between two versions.
//!
//! A package is `plugin.toml`, the component it names (a `*.wasm` file
//! beside it), and optionally `cases.jsonl` (evaluation cases) and
//! `plugin.sig` (a [signature](PluginSignature)). Opening one checks what
//! loading would check of the files themselves: the manifest parses and
//! validates, the component is a WebAssembly component of at most the
//! loader's size, and its SHA-256 is the one the manifest pins
//! ([`LoadError::DigestMismatch`], as at load). Whether its signature is
//! trusted is the operator's policy: [`Package::check_signature`].

mod archive;
mod diff;
mod signature;

use std::borrow::Cow;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use diff::{ChangeArea, ChangeKind, Compatibility, PluginChange, PluginDiff};
pub(crate) use signature::{MAX_SIGNATURE_BYTES, Signed, why_untrusted};
pub use signature::{PluginSignature, PublicKey, SIGNATURE_FILE, Signer, TrustedKey};

use crate::error::{ArchiveRefusal, LoadError, LoadResult};
use crate::grants::Policy;
use crate::manifest::{MANIFEST_FILE, Manifest};

/// File name of a plugin's evaluation cases (JSON lines), beside its
/// manifest.
pub const CASES_FILE: &str = "cases.jsonl";

/// Largest manifest in a package, in bytes.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// Largest `cases.jsonl` in a package, in bytes.
pub(crate) const MAX_CASES_BYTES: u64 = 4 * 1024 * 1024;
/// Most entries in an archive: one per file a package can hold.
const MAX_ENTRIES: usize = 4;

/// The caps [`Package::from_archive`] reads under.
fn default_caps() -> archive::Caps {
    archive::Caps {
        manifest: MAX_MANIFEST_BYTES,
        component: crate::plugin::MAX_COMPONENT_BYTES,
        cases: MAX_CASES_BYTES,
        signature: MAX_SIGNATURE_BYTES,
        entries: MAX_ENTRIES,
    }
}

/// A plugin's files, in memory and checked: the manifest's text, the
/// component it pins, optional evaluation cases and signature.
pub struct Package {
    source: PathBuf,
    manifest: Manifest,
    manifest_text: String,
    manifest_digest: String,
    component: Vec<u8>,
    component_digest: String,
    cases: Option<String>,
    cases_digest: Option<String>,
    signature: Option<PluginSignature>,
}

impl std::fmt::Debug for Package {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Package")
            .field("name", &self.manifest.plugin.name)
            .field("version", &self.manifest.plugin.version)
            .field("source", &self.source)
            .field("component_digest", &self.component_digest)
            .field("signed", &self.signature.is_some())
            .finish_non_exhaustive()
    }
}

/// Reads the component of a package by the name its manifest gives it.
type ComponentReader = Box<dyn FnOnce(&str) -> LoadResult<Vec<u8>>>;

/// A package's files as read, before they are checked.
struct Files {
    /// Where the package came from, for errors.
    source: PathBuf,
    /// The manifest's path (in a directory or an archive), for errors.
    manifest_path: PathBuf,
    manifest: Vec<u8>,
    /// The component, by the name the manifest gives it.
    component: ComponentReader,
    cases: Option<Vec<u8>>,
    signature: SignatureSource,
}

/// Where a package's `plugin.sig` comes from.
enum SignatureSource {
    /// A plugin directory: read as loading reads it.
    Dir(PathBuf),
    /// An archive's entry, if it had one.
    Archive(Option<Vec<u8>>),
}

impl Package {
    /// Read the package in the plugin directory `dir`: its `plugin.toml`,
    /// the component it names, and `cases.jsonl` and `plugin.sig` when
    /// present. Other files in the directory are not part of the package.
    ///
    /// # Errors
    /// The manifest's errors ([`LoadError::ManifestSyntax`], ...);
    /// [`LoadError::ComponentMissing`], [`LoadError::InvalidComponent`],
    /// [`LoadError::DigestMismatch`] as at load;
    /// [`LoadError::PackageInvalid`] for a component that is not a
    /// `*.wasm` beside the manifest, or a file over its cap;
    /// [`LoadError::SignatureInvalid`] for a garbled `plugin.sig`.
    pub fn from_dir(dir: &Path) -> Result<Package, LoadError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = read_package_file(&manifest_path, MAX_MANIFEST_BYTES)?;
        Package::check_files(Files::in_dir(dir, manifest_path, manifest)?)
    }

    /// Read the plugin directory `dir` as [`Package::from_dir`] does, with
    /// the manifest's `[plugin] sha256` set to the component's digest
    /// (added or replaced; the rest of the manifest's text is kept as
    /// written). This is what `airlock plugins pack` archives.
    ///
    /// # Errors
    /// As [`Package::from_dir`], but never a digest mismatch.
    pub fn from_source_dir(dir: &Path) -> Result<Package, LoadError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let bytes = read_package_file(&manifest_path, MAX_MANIFEST_BYTES)?;
        let text = manifest_text(&manifest_path, bytes)?;
        let stamped = stamp_digest(&text, &manifest_path, dir, |name| {
            read_package_component(&dir.join(name))
        })?;
        Package::check_files(Files::in_dir(dir, manifest_path, stamped.into_bytes())?)
    }

    /// A package from a plugin *project* `dir` (its `plugin.toml` and
    /// optional `cases.jsonl`) and the component a build of it produced:
    /// the manifest's `[plugin] sha256` is set to the component's digest as
    /// [`Package::from_source_dir`] sets it, and the whole is checked as
    /// [`Package::from_dir`] checks it. A project's own `plugin.sig` is not
    /// part of it: sign the built package. This is what `airlock plugin
    /// build` writes.
    ///
    /// # Errors
    /// As [`Package::from_source_dir`]; [`LoadError::InvalidComponent`]
    /// when `component` is not a component or is over the loader's size.
    pub fn from_build(dir: &Path, component: Vec<u8>) -> Result<Package, LoadError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let bytes = read_package_file(&manifest_path, MAX_MANIFEST_BYTES)?;
        let text = manifest_text(&manifest_path, bytes)?;
        let built = |name: &str| -> LoadResult<Vec<u8>> {
            let path = dir.join(name);
            crate::plugin::check_component_size(&path, component.len() as u64)?;
            Ok(component.clone())
        };
        let stamped = stamp_digest(&text, &manifest_path, dir, built)?;
        let mut files = Files::in_dir(dir, manifest_path, stamped.into_bytes())?;
        files.component = Box::new(move |_: &str| Ok(component));
        files.signature = SignatureSource::Archive(None);
        Package::check_files(files)
    }

    /// Read the plugin archive (`.tar.gz`) at `path`, entry by entry with
    /// every entry's type, path and size checked before its bytes are kept
    /// (see [`ArchiveRefusal`]), then check its files as
    /// [`Package::from_dir`] does.
    ///
    /// # Errors
    /// [`LoadError::ArchiveCorrupt`] when it is not a readable `.tar.gz`,
    /// [`LoadError::ArchiveRejected`] for any entry a package may not hold,
    /// then the errors of [`Package::from_dir`].
    ///
    /// # Security
    /// Archives come from plugin authors. Entries are never written to
    /// disk; every decompressed byte counts against the sum of the
    /// files' caps, so a compression bomb stops there.
    pub fn from_archive(path: &Path) -> Result<Package, LoadError> {
        Package::from_archive_with(path, &default_caps())
    }

    fn from_archive_with(path: &Path, caps: &archive::Caps) -> LoadResult<Package> {
        let mut manifest = None;
        let mut component = None;
        let mut cases = None;
        let mut signature = None;
        for (name, slot, bytes) in archive::read(path, caps)? {
            match slot {
                archive::Slot::Manifest => manifest = Some(bytes),
                archive::Slot::Component => component = Some((name, bytes)),
                archive::Slot::Cases => cases = Some(bytes),
                archive::Slot::Signature => signature = Some(bytes),
            }
        }
        let Some(manifest) = manifest else {
            return Err(LoadError::ArchiveRejected {
                path: path.to_owned(),
                entry: None,
                why: ArchiveRefusal::MissingManifest,
            });
        };
        let archive_path = path.to_owned();
        let files = Files {
            source: path.to_owned(),
            manifest_path: path.join(MANIFEST_FILE),
            manifest,
            component: Box::new(move |wanted: &str| match component {
                Some((name, bytes)) if name == wanted => Ok(bytes),
                Some((name, _)) => Err(LoadError::ArchiveRejected {
                    path: archive_path,
                    entry: Some(name),
                    why: ArchiveRefusal::UnknownEntry,
                }),
                None => Err(LoadError::ComponentMissing {
                    path: archive_path.join(wanted),
                }),
            }),
            cases,
            signature: SignatureSource::Archive(signature),
        };
        Package::check_files(files)
    }

    /// Read the package at `path`: a plugin directory
    /// ([`Package::from_dir`]) or an archive ([`Package::from_archive`]).
    ///
    /// # Errors
    /// Those of the two.
    pub fn open(path: &Path) -> Result<Package, LoadError> {
        if path.is_dir() {
            Package::from_dir(path)
        } else {
            Package::from_archive(path)
        }
    }

    fn check_files(files: Files) -> LoadResult<Package> {
        let text = manifest_text(&files.manifest_path, files.manifest)?;
        let manifest = Manifest::parse(&text, &files.manifest_path)?;
        let component_name = manifest.plugin.component.clone();
        check_component_name(&component_name, &files.source)?;
        let component_path = files.source.join(&component_name);
        let component = (files.component)(&component_name)?;
        let component_digest = hex::encode(Sha256::digest(&component));
        if component_digest != manifest.plugin.sha256 {
            return Err(LoadError::DigestMismatch {
                path: component_path,
                expected: manifest.plugin.sha256.clone(),
                actual: component_digest,
            });
        }
        crate::plugin::check_header(&component).map_err(|reason| LoadError::InvalidComponent {
            path: component_path,
            reason,
        })?;
        let cases = files
            .cases
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|_| LoadError::PackageInvalid {
                    path: files.source.join(CASES_FILE),
                    message: format!("{CASES_FILE} is not UTF-8 text"),
                })
            })
            .transpose()?;
        let signature = match files.signature {
            SignatureSource::Dir(dir) => signature::read(&dir, &manifest.plugin.name)?,
            SignatureSource::Archive(bytes) => bytes
                .map(|bytes| signature::parse_bytes(&bytes, &manifest.plugin.name))
                .transpose()?,
        };
        Ok(Package {
            source: files.source,
            manifest_digest: hex::encode(Sha256::digest(text.as_bytes())),
            manifest_text: text,
            manifest,
            component,
            component_digest,
            cases_digest: cases
                .as_ref()
                .map(|cases| hex::encode(Sha256::digest(cases.as_bytes()))),
            cases,
            signature,
        })
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.manifest.plugin.name
    }

    /// The plugin's version.
    pub fn version(&self) -> &str {
        &self.manifest.plugin.version
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest's text, exactly as it is signed and written.
    pub fn manifest_text(&self) -> &str {
        &self.manifest_text
    }

    /// Lowercase hex SHA-256 of the manifest's bytes.
    pub fn manifest_digest(&self) -> &str {
        &self.manifest_digest
    }

    /// The component's file name (the manifest's `component`).
    pub fn component_name(&self) -> &str {
        &self.manifest.plugin.component
    }

    /// The component's bytes.
    pub fn component(&self) -> &[u8] {
        &self.component
    }

    /// Lowercase hex SHA-256 of the component (the manifest's pin).
    pub fn component_digest(&self) -> &str {
        &self.component_digest
    }

    /// The evaluation cases (`cases.jsonl`), if the package has them.
    pub fn cases(&self) -> Option<&str> {
        self.cases.as_deref()
    }

    /// The signature (`plugin.sig`), if the package has one. Whether it
    /// verifies and is trusted: [`Package::check_signature`].
    pub fn signature(&self) -> Option<&PluginSignature> {
        self.signature.as_ref()
    }

    /// Where the package was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Apply the operator's trust rules to the package's signature, as
    /// loading does: no signature is refused when `policy` requires one; a
    /// signature that does not verify is always refused; a valid one by a
    /// key outside `trusted_keys` is refused when signatures are required,
    /// else allowed with an untrusted [`Signer`].
    ///
    /// # Errors
    /// [`LoadError::Unsigned`], [`LoadError::SignatureInvalid`],
    /// [`LoadError::UntrustedSigner`].
    pub fn check_signature(&self, policy: &Policy) -> Result<Option<Signer>, LoadError> {
        signature::check(&self.signed(), self.signature.as_ref(), policy)
    }

    /// Sign the package with the Ed25519 key in the key file at `key_file`
    /// (as [`generate_signing_key`] writes it), replacing any signature it
    /// had. Returns the signing key's public half.
    ///
    /// # Errors
    /// [`Error::Audit`](crate::Error::Audit) when the key file cannot be
    /// read, is readable by other users, or holds no key.
    pub fn sign(&mut self, key_file: &Path) -> crate::Result<PublicKey> {
        let key = airlock_audit::read_signing_key(key_file)?;
        let signature = PluginSignature::sign(&self.signed(), &key);
        let public = *signature.key();
        self.signature = Some(signature);
        Ok(public)
    }

    fn signed(&self) -> Signed<'_> {
        Signed {
            name: self.name(),
            version: self.version(),
            manifest_digest: &self.manifest_digest,
            component_digest: &self.component_digest,
            cases_digest: self.cases_digest.as_deref(),
        }
    }

    /// The files of the package, in archive order.
    fn files(&self) -> Vec<(&str, Cow<'_, [u8]>)> {
        let mut files = vec![
            (MANIFEST_FILE, Cow::Borrowed(self.manifest_text.as_bytes())),
            (
                self.component_name(),
                Cow::Borrowed(self.component.as_slice()),
            ),
        ];
        if let Some(cases) = &self.cases {
            files.push((CASES_FILE, Cow::Borrowed(cases.as_bytes())));
        }
        if let Some(signature) = &self.signature {
            files.push((SIGNATURE_FILE, Cow::Owned(signature.to_text().into_bytes())));
        }
        files
    }

    /// Write the package into a new plugin directory `dir`: its files are
    /// written and synced in a temporary directory beside `dir`, which is
    /// then renamed to `dir`. On failure nothing is left.
    ///
    /// # Errors
    /// [`LoadError::PackageInvalid`] when `dir` already exists;
    /// [`LoadError::Io`] when writing fails.
    pub fn write_dir(&self, dir: &Path) -> Result<(), LoadError> {
        if fs::symlink_metadata(dir).is_ok() {
            return Err(LoadError::PackageInvalid {
                path: dir.to_owned(),
                message: "the target already exists; a package is never written over it".to_owned(),
            });
        }
        let tmp = self.write_temporary_dir(dir)?;
        fs::rename(&tmp, dir)
            .and_then(|()| sync_parent(dir))
            .map_err(|e| {
                let _ = fs::remove_dir_all(&tmp);
                LoadError::io(dir, e)
            })
    }

    /// Write the package into the plugin directory `dir`, replacing the
    /// package there (a directory holding a `plugin.toml`), if any: the new
    /// files are written and synced beside it first, then swapped in (one
    /// atomic exchange on Linux, two renames elsewhere), so `dir` holds the
    /// old package or the new one, never a mix; the copies beside it are
    /// hidden (`.NAME.….partial`), never loaded ([`crate::is_plugin_dir`]). This is where `airlock plugin build` puts what it built.
    ///
    /// # Errors
    /// [`LoadError::PackageInvalid`] when `dir` exists but is not a plugin
    /// directory (it is never replaced); [`LoadError::Io`] when writing
    /// fails.
    pub fn replace_dir(&self, dir: &Path) -> Result<(), LoadError> {
        match fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.write_dir(dir),
            Err(e) => return Err(LoadError::io(dir, e)),
            Ok(meta) if !meta.is_dir() || !dir.join(MANIFEST_FILE).is_file() => {
                return Err(LoadError::PackageInvalid {
                    path: dir.to_owned(),
                    message: "the target exists and is not a plugin directory; it is never \
                              replaced"
                        .to_owned(),
                });
            }
            Ok(_) => {}
        }
        let tmp = self.write_temporary_dir(dir)?;
        let old = temporary_sibling(&dir.with_file_name(format!(
            "{}.old",
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )));
        let swap = || -> std::io::Result<PathBuf> {
            // One step where the kernel can: `dir` never goes missing,
            // and a crash leaves the old package or the new one under its
            // name (and the other hidden beside it, never loaded).
            #[cfg(target_os = "linux")]
            match rustix::fs::renameat_with(
                rustix::fs::CWD,
                &tmp,
                rustix::fs::CWD,
                dir,
                rustix::fs::RenameFlags::EXCHANGE,
            ) {
                Ok(()) => {
                    sync_parent(dir)?;
                    return Ok(tmp.clone());
                }
                // A file system without the exchange: two renames.
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {}
                Err(e) => return Err(e.into()),
            }
            fs::rename(dir, &old)?;
            if let Err(e) = fs::rename(&tmp, dir) {
                let _ = fs::rename(&old, dir);
                return Err(e);
            }
            sync_parent(dir)?;
            Ok(old.clone())
        };
        match swap() {
            Ok(replaced) => {
                if let Err(e) = fs::remove_dir_all(&replaced) {
                    // Hidden, it is never loaded; said so it can be removed.
                    tracing::warn!(dir = %replaced.display(), error = %e, "cannot remove the replaced package");
                }
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(LoadError::io(dir, e))
            }
        }
    }

    /// Write the package's files into a new temporary directory beside
    /// `dir`, synced; its path. On failure nothing is left.
    fn write_temporary_dir(&self, dir: &Path) -> Result<PathBuf, LoadError> {
        let tmp = temporary_sibling(dir);
        // Made here, or the error is returned as it is: a path that was
        // already there is not this call's to remove.
        fs::create_dir(&tmp).map_err(|e| LoadError::io(dir, e))?;
        let write = || -> std::io::Result<()> {
            for (name, bytes) in self.files() {
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(tmp.join(name))?;
                file.write_all(&bytes)?;
                file.sync_all()?;
            }
            fs::File::open(&tmp)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_dir_all(&tmp);
            LoadError::io(dir, e)
        })?;
        Ok(tmp)
    }

    /// Write the package as a flat `.tar.gz` archive at `path` (replacing
    /// any file there): written and synced beside it, then renamed over
    /// it, so `path` holds the old archive or the new one, never part of
    /// one.
    ///
    /// # Errors
    /// [`LoadError::Io`] when writing fails.
    pub fn write_archive(&self, path: &Path) -> Result<(), LoadError> {
        let files = self.files();
        let entries: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(name, bytes)| (*name, bytes.as_ref()))
            .collect();
        write_file_atomically(path, |out| archive::write(out, &entries))
            .map_err(|e| LoadError::io(path, e))
    }

    /// Write the package's signature into the plugin directory `dir` as
    /// `plugin.sig` (atomically).
    ///
    /// # Errors
    /// [`LoadError::PackageInvalid`] when the package is not signed;
    /// [`LoadError::Io`] when writing fails.
    pub fn write_signature(&self, dir: &Path) -> Result<(), LoadError> {
        let Some(signature) = &self.signature else {
            return Err(LoadError::PackageInvalid {
                path: dir.to_owned(),
                message: "the package is not signed".to_owned(),
            });
        };
        let path = dir.join(SIGNATURE_FILE);
        write_file_atomically(&path, |out| out.write_all(signature.to_text().as_bytes()))
            .map_err(|e| LoadError::io(&path, e))
    }
}

/// Create a new Ed25519 signing key for plugins in a key file at `path`
/// (64 hex digits, mode 0600, as the audit log keeps its own key) and
/// return its public key, as `trusted_keys` lists it.
///
/// # Errors
/// [`Error::Audit`](crate::Error::Audit) when a file is already at `path`
/// (a key is never overwritten) or it cannot be written.
pub fn generate_signing_key(path: &Path) -> crate::Result<PublicKey> {
    let key = airlock_audit::create_signing_key(path)?;
    Ok(PublicKey::from(key.verifying_key()))
}

/// Apply the operator's trust rules to the plugin directory `dir` as it
/// loads: its `plugin.sig`, if any, against the manifest and component
/// digests given and its `cases.jsonl` (read, capped, only when there is a
/// signature to check it against). Signed, the signer and the digest of
/// the `cases.jsonl` it covers (`None`: the signature says there is none),
/// which whoever reads the cases later checks them against.
///
/// # Errors
/// Those of [`signature::read`] and [`signature::check`];
/// [`LoadError::PackageInvalid`] or [`LoadError::Io`] for a
/// `cases.jsonl` that cannot be read or is over its cap.
pub(crate) fn check_dir_signature(
    dir: &Path,
    manifest: &Manifest,
    manifest_digest: &str,
    component_digest: &str,
    policy: &Policy,
) -> LoadResult<Option<(Signer, Option<String>)>> {
    let name = &manifest.plugin.name;
    let signature = signature::read(dir, name)?;
    let cases_digest = match &signature {
        None => None,
        Some(_) => {
            let path = dir.join(CASES_FILE);
            match fs::symlink_metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(LoadError::io(&path, e)),
                Ok(_) => Some(hex::encode(Sha256::digest(read_capped(
                    &path,
                    MAX_CASES_BYTES,
                )?))),
            }
        }
    };
    let signer = signature::check(
        &Signed {
            name,
            version: &manifest.plugin.version,
            manifest_digest,
            component_digest,
            cases_digest: cases_digest.as_deref(),
        },
        signature.as_ref(),
        policy,
    )?;
    Ok(signer.map(|signer| (signer, cases_digest)))
}

/// Check the policy's `trusted_keys` and `require_signature` (part of
/// [`Policy::validate`]).
pub(crate) fn check_trust_policy(policy: &Policy) -> Result<(), String> {
    signature::check_policy(policy)?;
    if policy.require_signature && policy.trusted_keys.is_empty() {
        return Err(
            "policy.require_signature is set but policy.trusted_keys is empty: no plugin could load"
                .to_owned(),
        );
    }
    Ok(())
}

impl Files {
    /// The files of the plugin directory `dir`, with its manifest's bytes.
    fn in_dir(dir: &Path, manifest_path: PathBuf, manifest: Vec<u8>) -> LoadResult<Files> {
        let optional = |name: &str, cap: u64| -> LoadResult<Option<Vec<u8>>> {
            let path = dir.join(name);
            match fs::symlink_metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(LoadError::io(&path, e)),
                Ok(_) => read_package_file(&path, cap).map(Some),
            }
        };
        let owned = dir.to_owned();
        Ok(Files {
            source: dir.to_owned(),
            manifest_path,
            manifest,
            component: Box::new(move |name: &str| read_package_component(&owned.join(name))),
            cases: optional(CASES_FILE, MAX_CASES_BYTES)?,
            signature: SignatureSource::Dir(dir.to_owned()),
        })
    }
}

/// The manifest's bytes as text.
pub(crate) fn manifest_text(path: &Path, bytes: Vec<u8>) -> LoadResult<String> {
    String::from_utf8(bytes).map_err(|_| LoadError::ManifestSyntax {
        path: path.to_owned(),
        message: "not UTF-8 text".to_owned(),
    })
}

/// A package's component is a plain `*.wasm` file name beside the manifest,
/// so the package can be written flat.
/// Whether a manifest's `[plugin] component` is a name a package can hold:
/// a plain `*.wasm` file name beside `plugin.toml` (no directory, no `..`,
/// not absolute, not one of the package's own files). `plugins pack`,
/// `plugins install` and `airlock plugin build` refuse any other.
pub fn is_plain_component_name(name: &str) -> bool {
    Path::new(name).file_name().is_some_and(|n| n == name)
        && !name.contains(['/', '\\'])
        && name.ends_with(".wasm")
        && ![MANIFEST_FILE, CASES_FILE, SIGNATURE_FILE].contains(&name)
}

fn check_component_name(name: &str, source: &Path) -> LoadResult<()> {
    if is_plain_component_name(name) {
        Ok(())
    } else {
        Err(LoadError::PackageInvalid {
            path: source.to_owned(),
            message: format!(
                "component `{name}` must be a `*.wasm` file beside plugin.toml to be packaged"
            ),
        })
    }
}

/// Read a package's own file (`plugin.toml`, `cases.jsonl`) of at most
/// `cap` bytes, refusing a symbolic link as `plugin.sig` is refused: a
/// package holds its files, and a link in an author's directory
/// (`cases.jsonl -> ~/.aws/credentials`) would be packed, installed and
/// stored as the package's.
fn read_package_file(path: &Path, cap: u64) -> LoadResult<Vec<u8>> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(LoadError::PackageInvalid {
            path: path.to_owned(),
            message: "is a symbolic link: a package holds the file itself".to_owned(),
        });
    }
    read_capped(path, cap)
}

/// Read a package's component, refusing a symbolic link as its other files
/// are refused: `x.wasm -> /srv/other-vendor/private.wasm` in an author's
/// directory would be packed (its digest stamped) as this package's.
fn read_package_component(path: &Path) -> LoadResult<Vec<u8>> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(LoadError::PackageInvalid {
            path: path.to_owned(),
            message: "is a symbolic link: a package holds the component itself".to_owned(),
        });
    }
    crate::plugin::read_component(path)
}

/// Read a file (following links, like loading does) of at most `cap` bytes.
pub(crate) fn read_capped(path: &Path, cap: u64) -> LoadResult<Vec<u8>> {
    let meta = fs::metadata(path).map_err(|e| LoadError::io(path, e))?;
    if !meta.is_file() {
        return Err(LoadError::PackageInvalid {
            path: path.to_owned(),
            message: "not a regular file".to_owned(),
        });
    }
    if meta.len() > cap {
        return Err(LoadError::PackageInvalid {
            path: path.to_owned(),
            message: format!("{} bytes, more than the limit of {cap}", meta.len()),
        });
    }
    let bytes = read_at_most(path, cap).map_err(|e| LoadError::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(LoadError::PackageInvalid {
            path: path.to_owned(),
            message: format!("more than the limit of {cap} bytes"),
        });
    }
    Ok(bytes)
}

/// The first `cap + 1` bytes of the file at `path`: more than `cap` means
/// the file is larger than its limit. Whatever its size said when it was
/// checked (the file may have grown since, or become a link to an endless
/// device), no more is read.
///
/// Only a regular file is read (links followed): a FIFO or a device put
/// in a plugin's directory is refused at once, never waited on (opening a
/// FIFO waits for a writer; reading a terminal, for its input).
pub(crate) fn read_at_most(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        // Without effect on a regular file; a FIFO opens without a writer.
        options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits().cast_signed());
    }
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, cap.saturating_add(1)),
        &mut bytes,
    )?;
    Ok(bytes)
}

/// Set `[plugin] sha256` in the manifest text to the digest of the
/// component it names (read by `component`), keeping the rest of the text
/// as written. The one place a digest is stamped: `plugins pack` and
/// `plugin build` both come here.
fn stamp_digest(
    text: &str,
    manifest_path: &Path,
    dir: &Path,
    component: impl FnOnce(&str) -> LoadResult<Vec<u8>>,
) -> LoadResult<String> {
    let syntax = |message: String| LoadError::ManifestSyntax {
        path: manifest_path.to_owned(),
        message,
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| syntax(e.message().to_owned()))?;
    let component_name = doc
        .get("plugin")
        .and_then(|p| p.get("component"))
        .and_then(|c| c.as_str())
        .map(str::to_owned);
    let (Some(component_name), Some(plugin)) = (
        component_name,
        doc.get_mut("plugin").and_then(|p| p.as_table_like_mut()),
    ) else {
        // Let the manifest's own checks say what is missing.
        Manifest::parse(text, manifest_path)?;
        return Err(syntax("[plugin] component is not a string".to_owned()));
    };
    check_component_name(&component_name, dir)?;
    let bytes = component(&component_name)?;
    let digest = hex::encode(Sha256::digest(&bytes));
    plugin.insert("sha256", toml_edit::value(digest));
    Ok(doc.to_string())
}

/// A name for a temporary file or directory beside `path`, unique to this
/// process and moment.
fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    path.with_file_name(format!(".{name}.{}-{nanos}.partial", std::process::id()))
}

/// Sync the directory holding `path`, so a rename into it is durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fs::File::open(parent)?.sync_all(),
        _ => fs::File::open(".")?.sync_all(),
    }
}

/// Write `path` whole or not at all (`airlock_store::file::write`).
fn write_file_atomically(
    path: &Path,
    body: impl FnOnce(&mut std::io::BufWriter<fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    airlock_store::file::write(path, body)
}

#[cfg(test)]
mod tests;
