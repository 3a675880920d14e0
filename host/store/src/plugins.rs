//! Installed plugin versions and their rollouts: what every host sharing a
//! backend serves.
//!
//! A version is installed once, immutably: its files (manifest, component,
//! scenario cases, signature) are stored as artifacts by their SHA-256, and
//! an [`InstalledVersion`] names them under `(plugin, version)`. Installing
//! the same bytes again is a no-op; other bytes under a taken version are a
//! conflict. A plugin's [`Rollout`] says which installed version serves,
//! which one (if any) takes a share of the traffic as a canary, and what a
//! rollback returns to; it changes by compare-and-swap, so of two operators
//! changing it at once exactly one wins. [`Releases`] writes those rules once
//! over any [`PluginStore`].

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ErrorKind, Result, StoreError};
use crate::ledger::{Version, Versioned};

/// Longest plugin version string.
pub const MAX_VERSION_BYTES: usize = 64;
/// Longest plugin name (the manifest's rule).
pub const MAX_PLUGIN_NAME_BYTES: usize = 64;

/// An installed version of a plugin: which artifacts make it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledVersion {
    /// Plugin name.
    pub plugin: String,
    /// Its version, as its manifest says.
    pub version: String,
    /// SHA-256 of the manifest file (an artifact).
    pub manifest_digest: String,
    /// SHA-256 of the component (an artifact).
    pub component_digest: String,
    /// The component's file name, as the manifest names it.
    pub component_file: String,
    /// SHA-256 of the shipped scenario cases (`cases.jsonl`), if any.
    #[serde(default)]
    pub cases_digest: Option<String>,
    /// SHA-256 of the signature file (`plugin.sig`), if any.
    #[serde(default)]
    pub signature_digest: Option<String>,
    /// Who signed it, as the policy named the key when it was installed.
    #[serde(default)]
    pub signer: Option<String>,
    /// Who installed it.
    pub installed_by: String,
    /// When, ms since the Unix epoch.
    pub installed_ms: u64,
}

impl InstalledVersion {
    /// The digests of every artifact it names.
    pub fn artifacts(&self) -> impl Iterator<Item = &str> {
        [
            Some(self.manifest_digest.as_str()),
            Some(self.component_digest.as_str()),
            self.cases_digest.as_deref(),
            self.signature_digest.as_deref(),
        ]
        .into_iter()
        .flatten()
    }

    /// Whether `other` installs the same files (who and when aside).
    pub fn same_files(&self, other: &InstalledVersion) -> bool {
        self.plugin == other.plugin
            && self.version == other.version
            && self.manifest_digest == other.manifest_digest
            && self.component_digest == other.component_digest
            && self.component_file == other.component_file
            && self.cases_digest == other.cases_digest
            && self.signature_digest == other.signature_digest
    }
}

/// Which caller identity keeps a caller on one side of a canary split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    /// The call's principal.
    #[default]
    Principal,
    /// The call's session (its principal when it has none).
    Session,
}

impl Sticky {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Sticky::Principal => "principal",
            Sticky::Session => "session",
        }
    }
}

/// A version taking a share of a plugin's traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The installed version.
    pub version: String,
    /// Its share of callers, 0–100 percent.
    pub percent: u8,
    /// What keeps a caller on one side.
    #[serde(default)]
    pub sticky: Sticky,
    /// When the canary started, ms since the Unix epoch.
    pub since_ms: u64,
}

/// What the last change of a rollout did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutAction {
    /// A version took all the traffic (`airlock rollout P V --percent 100`
    /// or the first activation).
    Activate,
    /// A canary started or changed its share.
    Canary,
    /// The canary took all the traffic.
    Promote,
    /// Traffic went back: the canary stopped, or the previous version
    /// serves again.
    Rollback,
}

impl RolloutAction {
    /// The snake_case name, as in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Activate => "activate",
            RolloutAction::Canary => "canary",
            RolloutAction::Promote => "promote",
            RolloutAction::Rollback => "rollback",
        }
    }
}

/// Who changed a rollout, how and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutChange {
    /// Unique id of the change.
    pub id: String,
    /// What it did.
    pub action: RolloutAction,
    /// Who.
    pub by: String,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The approval that allowed it, for a version wider than the one it
    /// replaced.
    #[serde(default)]
    pub approval_id: Option<String>,
}

/// Which versions of a plugin serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Plugin name.
    pub plugin: String,
    /// The version every caller outside the canary gets.
    pub serving: String,
    /// The version a share of callers gets, if any.
    #[serde(default)]
    pub canary: Option<Canary>,
    /// What served before `serving` (what a rollback without a canary
    /// returns to).
    #[serde(default)]
    pub previous: Option<String>,
    /// The last change.
    pub change: RolloutChange,
}

/// Where in 0..10 000 a caller falls for a plugin's canary: the first eight
/// bytes of SHA-256 over the plugin, the canary version and the caller's
/// key, modulo 10 000. The same caller always falls in the same place for
/// one canary (sticky), and raising the share only adds callers.
pub fn canary_bucket(plugin: &str, version: &str, key: &str) -> u32 {
    let mut hasher = Sha256::new();
    for part in [plugin, version, key] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 10 000 < 2^14: the bias of the modulo is below 1e-15.
    (u64::from_be_bytes(first) % 10_000) as u32
}

impl Rollout {
    /// The version a call by `principal` (in `session`) gets.
    pub fn version_for(&self, principal: &str, session: Option<&str>) -> &str {
        match &self.canary {
            Some(canary) => {
                let key = match (canary.sticky, session) {
                    (Sticky::Session, Some(session)) => session,
                    _ => principal,
                };
                let bucket = canary_bucket(&self.plugin, &canary.version, key);
                if bucket < u32::from(canary.percent) * 100 {
                    &canary.version
                } else {
                    &self.serving
                }
            }
            None => &self.serving,
        }
    }

    /// Every version it sends traffic to.
    pub fn versions(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.serving.as_str())
            .chain(self.canary.as_ref().map(|c| c.version.as_str()))
    }
}

/// Where installed versions, their files and their rollouts live.
///
/// Contract (checked by the conformance suite): every write is durable when
/// it returns; an artifact read back has the bytes stored under its digest;
/// an installed version is never replaced; a rollout is replaced only if it
/// still has the version the caller read, so of racing writers exactly one
/// wins.
pub trait PluginStore: Send + Sync + fmt::Debug {
    /// Store `bytes` under `digest` (their SHA-256, hex, checked by the
    /// caller). Storing bytes already there is a no-op — unless the bytes
    /// stored under `digest` do not hash to it (damaged): they are
    /// replaced.
    fn put_artifact(&self, digest: &str, bytes: &[u8]) -> Result<()>;
    /// The bytes stored under `digest`.
    fn artifact(&self, digest: &str) -> Result<Option<Vec<u8>>>;
    /// Record an installed version; `false` if `(plugin, version)` is taken.
    fn insert_version(&self, version: &InstalledVersion) -> Result<bool>;
    /// The installed version `version` of `plugin`.
    fn version(&self, plugin: &str, version: &str) -> Result<Option<InstalledVersion>>;
    /// Every installed version (of `plugin` only, if given), in no
    /// particular order.
    fn versions(&self, plugin: Option<&str>) -> Result<Vec<InstalledVersion>>;
    /// The installed versions (of `plugin` only, if given) as `(plugin,
    /// version)`, in no particular order, without reading their records:
    /// one record that cannot be read does not hide which versions are
    /// installed (each is then read by [`version`](Self::version)).
    fn version_names(&self, plugin: Option<&str>) -> Result<Vec<(String, String)>>;
    /// The rollout of `plugin`.
    fn rollout(&self, plugin: &str) -> Result<Option<Versioned<Rollout>>>;
    /// Store the first rollout of `rollout.plugin`; `false` if it has one.
    fn insert_rollout(&self, rollout: &Rollout) -> Result<bool>;
    /// Replace the rollout of `next.plugin` if it is still at `current`.
    fn replace_rollout(&self, current: Version, next: &Rollout) -> Result<bool>;
    /// Every rollout.
    fn rollouts(&self) -> Result<Vec<Versioned<Rollout>>>;
    /// The plugins with a rollout record, in no particular order: their
    /// names alone, so that one record that cannot be read does not hide
    /// which plugins have one (each is then read by [`rollout`](Self::rollout)).
    fn rollout_names(&self) -> Result<Vec<String>>;
}

/// How a missing or damaged artifact is put right.
const REPAIR: &str = "install the package of a version holding that file again (`airlock plugins install`), which writes it anew";

/// Check a plugin version string: 1–64 characters of `[A-Za-z0-9.+_-]`,
/// starting with an alphanumeric (safe as a file name and in a URL).
///
/// # Errors
/// A message saying what is wrong.
pub fn check_version(version: &str) -> std::result::Result<(), String> {
    if version.is_empty() || version.len() > MAX_VERSION_BYTES {
        return Err(format!(
            "a plugin version must be 1-{MAX_VERSION_BYTES} characters"
        ));
    }
    if !version.as_bytes()[0].is_ascii_alphanumeric()
        || !version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'_' | b'-'))
    {
        return Err(
            "a plugin version may hold only letters, digits, `.`, `+`, `_` and `-`, and starts with a letter or digit"
                .to_owned(),
        );
    }
    Ok(())
}

/// Check a plugin name as stored: 1–64 characters of `[a-z0-9_-]`, starting
/// with a letter (the manifest's rule).
///
/// # Errors
/// A message saying what is wrong.
pub fn check_plugin_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_PLUGIN_NAME_BYTES
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a plugin name (1-{MAX_PLUGIN_NAME_BYTES} characters of a-z, 0-9, `_`, `-`, starting with a letter)"
        ))
    }
}

/// Check a component's file name: a plain name (`[A-Za-z0-9][A-Za-z0-9._-]*`,
/// at most 255 bytes), never a path — it becomes a file name when a
/// version is written out.
///
/// # Errors
/// A message saying what is wrong.
pub fn check_file_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a plain file name"))
    }
}

/// Check an artifact digest: 64 lowercase hex digits.
///
/// # Errors
/// A message saying what is wrong.
pub fn check_digest(digest: &str) -> std::result::Result<(), String> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(format!(
            "`{digest}` is not a SHA-256 digest (64 lowercase hex digits)"
        ))
    }
}

/// SHA-256 of `bytes`, hex.
pub fn digest_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What [`Releases::install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// The version is now installed.
    New(InstalledVersion),
    /// These very files were installed before (here is that record).
    Already(InstalledVersion),
}

/// What a rollout change found.
#[derive(Debug, Clone, PartialEq)]
pub enum Changed {
    /// The rollout is now this.
    Done(Rollout),
    /// Another change came first: the rollout is now this (or none), and
    /// the caller's change was not made.
    Lost(Option<Rollout>),
}

/// The installed-versions and rollout rules over a [`PluginStore`].
///
/// Cheap to clone: clones share the store.
#[derive(Debug, Clone)]
pub struct Releases {
    store: Arc<dyn PluginStore>,
}

/// One file of a version to install: its role's digest is computed here.
#[derive(Debug, Clone, Copy)]
pub struct VersionFiles<'a> {
    /// The manifest's bytes.
    pub manifest: &'a [u8],
    /// The component's bytes.
    pub component: &'a [u8],
    /// The component's file name.
    pub component_file: &'a str,
    /// The scenario cases, if shipped.
    pub cases: Option<&'a [u8]>,
    /// The signature file, if signed.
    pub signature: Option<&'a [u8]>,
}

impl Releases {
    /// The releases kept in `store`.
    pub fn new(store: Arc<dyn PluginStore>) -> Releases {
        Releases { store }
    }

    /// The backend.
    pub fn store(&self) -> &Arc<dyn PluginStore> {
        &self.store
    }

    /// Install `files` as `version` of `plugin`: artifacts first, then the
    /// record naming them, so a version is never seen without its files.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] when that version is installed with other
    /// files (installed versions are immutable); [`ErrorKind::Config`] for
    /// a bad name or version; the backend's errors.
    pub fn install(
        &self,
        plugin: &str,
        version: &str,
        files: VersionFiles<'_>,
        signer: Option<&str>,
        by: &str,
        now_ms: u64,
    ) -> Result<Installed> {
        // Refused before a file is stored: a conflicting version's files
        // would stay in the store, unreferenced, each attempt's.
        self.check_install(plugin, version, files)?;
        let mut put = |bytes: &[u8]| -> Result<String> {
            let digest = digest_of(bytes);
            self.store.put_artifact(&digest, bytes)?;
            Ok(digest)
        };
        let record = InstalledVersion {
            plugin: plugin.to_owned(),
            version: version.to_owned(),
            manifest_digest: put(files.manifest)?,
            component_digest: put(files.component)?,
            component_file: files.component_file.to_owned(),
            cases_digest: files.cases.map(&mut put).transpose()?,
            signature_digest: files.signature.map(&mut put).transpose()?,
            signer: signer.map(str::to_owned),
            installed_by: by.to_owned(),
            installed_ms: now_ms,
        };
        if self.store.insert_version(&record)? {
            return Ok(Installed::New(record));
        }
        match self.store.version(plugin, version)? {
            Some(existing) if existing.same_files(&record) => Ok(Installed::Already(existing)),
            Some(existing) => Err(StoreError::new(
                ErrorKind::Conflict,
                format!(
                    "{plugin} {version} is installed already with other files (component {}); installed versions never change: give the new one another version",
                    existing.component_digest
                ),
            )),
            None => Err(StoreError::new(
                ErrorKind::Corrupt,
                format!("{plugin} {version} was refused as taken but cannot be read"),
            )),
        }
    }

    /// Whether `files` could be installed as `version` of `plugin`: the
    /// name, version and component file name valid, and that version not
    /// installed already with other files. Cheap (digests and one read):
    /// asked before a package is compiled and checked, and again by
    /// [`install`](Self::install) before it stores anything.
    ///
    /// # Errors
    /// As [`install`](Self::install): [`ErrorKind::Config`],
    /// [`ErrorKind::Conflict`], the backend's errors.
    pub fn check_install(
        &self,
        plugin: &str,
        version: &str,
        files: VersionFiles<'_>,
    ) -> Result<()> {
        check_plugin_name(plugin).map_err(|m| StoreError::new(ErrorKind::Config, m))?;
        check_version(version).map_err(|m| StoreError::new(ErrorKind::Config, m))?;
        check_file_name(files.component_file).map_err(|m| StoreError::new(ErrorKind::Config, m))?;
        let Some(existing) = self.store.version(plugin, version)? else {
            return Ok(());
        };
        let same = existing.manifest_digest == digest_of(files.manifest)
            && existing.component_digest == digest_of(files.component)
            && existing.component_file == files.component_file
            && existing.cases_digest == files.cases.map(digest_of)
            && existing.signature_digest == files.signature.map(digest_of);
        if same {
            return Ok(());
        }
        Err(StoreError::new(
            ErrorKind::Conflict,
            format!(
                "{plugin} {version} is installed already with other files (component {}); installed versions never change: give the new one another version",
                existing.component_digest
            ),
        ))
    }

    /// The artifact `digest`, checked against its digest.
    ///
    /// A missing or damaged artifact is written again by installing any
    /// package holding that file ([`install`](Self::install) stores its
    /// files first, replacing a stored file that does not match).
    ///
    /// # Errors
    /// [`ErrorKind::Corrupt`] when it is missing or its bytes do not hash
    /// to `digest`; the backend's errors.
    pub fn artifact(&self, digest: &str) -> Result<Vec<u8>> {
        check_digest(digest).map_err(|m| StoreError::new(ErrorKind::Corrupt, m))?;
        let bytes = self.store.artifact(digest)?.ok_or_else(|| {
            StoreError::new(
                ErrorKind::Corrupt,
                format!("artifact {digest} is missing: {REPAIR}"),
            )
        })?;
        if digest_of(&bytes) != digest {
            return Err(StoreError::new(
                ErrorKind::Corrupt,
                format!("artifact {digest} does not hash to its digest: {REPAIR}"),
            ));
        }
        Ok(bytes)
    }

    /// Installed version `version` of `plugin`.
    ///
    /// # Errors
    /// The backend's.
    pub fn version(&self, plugin: &str, version: &str) -> Result<Option<InstalledVersion>> {
        if check_plugin_name(plugin).is_err() || check_version(version).is_err() {
            return Ok(None);
        }
        self.store.version(plugin, version)
    }

    /// Installed versions (of `plugin` only, if given), by plugin, then
    /// install time.
    ///
    /// # Errors
    /// The backend's.
    pub fn versions(&self, plugin: Option<&str>) -> Result<Vec<InstalledVersion>> {
        let mut versions = self.store.versions(plugin)?;
        versions.sort_by(|a, b| {
            (a.plugin.as_str(), a.installed_ms, a.version.as_str()).cmp(&(
                b.plugin.as_str(),
                b.installed_ms,
                b.version.as_str(),
            ))
        });
        Ok(versions)
    }

    /// The installed versions (of `plugin` only, if given) as `(plugin,
    /// version)`, sorted, whether their records can be read or not.
    ///
    /// # Errors
    /// The backend's.
    pub fn version_names(&self, plugin: Option<&str>) -> Result<Vec<(String, String)>> {
        if plugin.is_some_and(|p| check_plugin_name(p).is_err()) {
            return Ok(Vec::new());
        }
        let mut names = self.store.version_names(plugin)?;
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The rollout of `plugin`.
    ///
    /// # Errors
    /// The backend's.
    pub fn rollout(&self, plugin: &str) -> Result<Option<Versioned<Rollout>>> {
        self.store.rollout(plugin)
    }

    /// Every rollout, by plugin.
    ///
    /// # Errors
    /// The backend's.
    pub fn rollouts(&self) -> Result<Vec<Versioned<Rollout>>> {
        let mut rollouts = self.store.rollouts()?;
        rollouts.sort_by(|a, b| a.value.plugin.cmp(&b.value.plugin));
        Ok(rollouts)
    }

    /// The names of the plugins with a rollout record, sorted, whether
    /// their records can be read or not.
    ///
    /// # Errors
    /// The backend's.
    pub fn rollout_names(&self) -> Result<Vec<String>> {
        let mut names = self.store.rollout_names()?;
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Change the rollout of `plugin` from `expected` (what the caller read
    /// and decided on: `None` for none) to `next`. Exactly one of racing
    /// changes from the same `expected` wins; the others get
    /// [`Changed::Lost`] with what is there now.
    ///
    /// # Errors
    /// The backend's.
    pub fn change(&self, expected: Option<&Versioned<Rollout>>, next: Rollout) -> Result<Changed> {
        let won = match expected {
            None => self.store.insert_rollout(&next)?,
            Some(current) => self.store.replace_rollout(current.version, &next)?,
        };
        if won {
            return Ok(Changed::Done(next));
        }
        Ok(match self.store.rollout(&next.plugin)?.map(|r| r.value) {
            // The change stored is this one (its answer lost, or a backend
            // that retried it): made, not lost.
            Some(now) if now.change.id == next.change.id => Changed::Done(now),
            now => Changed::Lost(now),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked() {
        for good in ["1.0.0", "2.0.0-rc.1+build.5", "v3", "0"] {
            assert!(check_version(good).is_ok(), "{good}");
        }
        for bad in ["", ".1", "-1", "1/2", "../x", "1 0", "é", &"1".repeat(65)] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
        for bad in ["", "../x.wasm", "a/b.wasm", ".hidden", "x\0.wasm"] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
        assert!(check_file_name("text.wasm").is_ok());
    }

    #[test]
    fn canary_buckets_are_sticky_and_spread() {
        assert_eq!(
            canary_bucket("text", "2.0.0", "alice"),
            canary_bucket("text", "2.0.0", "alice")
        );
        // Length-prefixed parts: moving a character between them moves the
        // bucket.
        let a = canary_bucket("ab", "c", "d");
        let b = canary_bucket("a", "bc", "d");
        assert_ne!(a, b);
    }
}
