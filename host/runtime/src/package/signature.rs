//! Plugin signatures: who vouches for a manifest and its component.
//!
//! A signature is Ed25519 over a domain-separated message naming the
//! plugin, its version, the SHA-256 of the manifest's bytes, the SHA-256
//! of the component and the SHA-256 of the evaluation cases
//! (`cases.jsonl`), or their absence ([`signed_message`]). It lives beside
//! the manifest in `plugin.sig`:
//!
//! ```toml
//! format = 2
//! key = "ed25519:BASE64 of the 32-byte public key"
//! signature = "BASE64 of the 64-byte signature"
//! ```
//!
//! Format 1 (no `format` line) left the cases out. It is still read for a
//! plugin without `cases.jsonl`, and refused for one with it: its cases
//! decide readiness and evaluation, and nobody vouched for them.
//!
//! Trust is the operator's (`[policy] trusted_keys`, `require_signature`);
//! [`check`] applies it, in this order:
//! 1. no signature: refused ([`LoadError::Unsigned`]) when the policy
//!    requires one, else loaded unsigned;
//! 2. a signature file that does not parse, or a signature that does not
//!    verify over these bytes: always refused
//!    ([`LoadError::SignatureInvalid`]), required or not;
//! 3. a valid signature by a key outside `trusted_keys`, or by a key
//!    trusted only for other plugins (`plugins = [...]`): refused
//!    ([`LoadError::UntrustedSigner`]) when the policy requires a
//!    signature, else loaded with the signer shown as untrusted;
//! 4. a valid signature by a key trusted for this plugin: loaded, the
//!    signer named.
//!
//! # Security
//! The manifest digest is over its exact bytes, so a signature fixes the
//! whole manifest (grants, limits, tools, and the component pin) as well as
//! the component and the cases. Verification is `verify_strict` (no
//! malleable or small-order keys). The signature file is read with a size
//! cap. A key scoped to plugins signs only those: a team's key cannot sign
//! (and so install) another team's plugin.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::{LoadError, LoadResult};
use crate::grants::Policy;

/// File name of a plugin's signature, beside its manifest.
pub const SIGNATURE_FILE: &str = "plugin.sig";

/// Largest signature file accepted, in bytes (a real one is ~150).
pub(crate) const MAX_SIGNATURE_BYTES: u64 = 4 * 1024;

/// What the message starts with, so a plugin signature can never be taken
/// for any other Ed25519 signature (an audit checkpoint's, say), nor a
/// signature of one format for another's.
const SIGNATURE_DOMAIN_V1: &[u8] = b"airlock plugin signature v1\0";
const SIGNATURE_DOMAIN_V2: &[u8] = b"airlock plugin signature v2\0";

/// The `format` a signature file is written in.
const FORMAT: u32 = 2;

/// The prefix of a public key's text form.
const KEY_PREFIX: &str = "ed25519:";

/// An Ed25519 public key that signs plugins, written `ed25519:BASE64` (the
/// base64 of its 32 bytes) in `trusted_keys` and in `plugin.sig`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }
}

impl From<VerifyingKey> for PublicKey {
    fn from(key: VerifyingKey) -> PublicKey {
        PublicKey(key)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", BASE64.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = String;

    /// Parse `ed25519:BASE64`.
    fn from_str(text: &str) -> Result<PublicKey, String> {
        let shown = airlock_audit::text::prefix(text, 80);
        let Some(encoded) = text.strip_prefix(KEY_PREFIX) else {
            return Err(format!(
                "{shown:?} is not a public key: write `ed25519:` and the base64 of its 32 bytes (`airlock plugins keygen` prints it)"
            ));
        };
        let bytes = BASE64.decode(encoded).map_err(|_| {
            format!("{shown:?} is not a public key: the part after `ed25519:` is not base64")
        })?;
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "{shown:?} is not a public key: {} bytes where an Ed25519 key has 32",
                bytes.len()
            )
        })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| format!("{shown:?} is not a valid Ed25519 public key"))?;
        if key.is_weak() {
            return Err(format!("{shown:?} is a weak (small-order) Ed25519 key"));
        }
        Ok(PublicKey(key))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<PublicKey, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A key in the operator's `trusted_keys`: trusted for every plugin
/// (`alice = "ed25519:BASE64"`), or only for the plugins it names
/// (`release = { key = "ed25519:BASE64", plugins = ["billing"] }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    key: PublicKey,
    plugins: Option<BTreeSet<String>>,
}

impl TrustedKey {
    /// A key trusted for every plugin.
    pub fn any_plugin(key: PublicKey) -> TrustedKey {
        TrustedKey { key, plugins: None }
    }

    /// A key trusted only for the plugins named.
    pub fn for_plugins<I, S>(key: PublicKey, plugins: I) -> TrustedKey
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TrustedKey {
            key,
            plugins: Some(plugins.into_iter().map(Into::into).collect()),
        }
    }

    /// The key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// The plugins it is trusted for; `None`: every plugin.
    pub fn plugins(&self) -> Option<&BTreeSet<String>> {
        self.plugins.as_ref()
    }

    fn trusts(&self, plugin: &str) -> bool {
        self.plugins.as_ref().is_none_or(|p| p.contains(plugin))
    }
}

impl From<PublicKey> for TrustedKey {
    fn from(key: PublicKey) -> TrustedKey {
        TrustedKey::any_plugin(key)
    }
}

/// The table form of a [`TrustedKey`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopedKey {
    key: PublicKey,
    plugins: BTreeSet<String>,
}

impl Serialize for TrustedKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.plugins {
            None => self.key.serialize(serializer),
            Some(plugins) => ScopedKey {
                key: self.key,
                plugins: plugins.clone(),
            }
            .serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for TrustedKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<TrustedKey, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = TrustedKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a public key (\"ed25519:BASE64\") or { key = \"ed25519:BASE64\", plugins = [\"name\", ...] }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<TrustedKey, E> {
                text.parse().map(TrustedKey::any_plugin).map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<TrustedKey, A::Error> {
                let scoped =
                    ScopedKey::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(TrustedKey {
                    key: scoped.key,
                    plugins: Some(scoped.plugins),
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Who signed a loaded plugin: a key the operator trusts (by the name
/// `trusted_keys` gives it), or a key it does not (only possible when
/// signatures are not required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signer {
    key: PublicKey,
    name: Option<String>,
    trusted: bool,
}

impl Signer {
    /// The signing key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// The operator's name for the key (`trusted_keys`); `None` when the
    /// key is not trusted.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether the key is among the operator's `trusted_keys`.
    pub fn is_trusted(&self) -> bool {
        self.trusted
    }
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} ({})", self.key),
            None => write!(f, "untrusted key {}", self.key),
        }
    }
}

/// A parsed `plugin.sig`: its format, the key that signed and the
/// signature. Whether it verifies, and whether the key is trusted, is
/// [`check`]'s business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSignature {
    format: u32,
    key: PublicKey,
    signature: Signature,
}

/// The file's fields, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    /// Absent in format 1.
    format: Option<u32>,
    key: String,
    signature: String,
}

impl PluginSignature {
    /// The key that made the signature.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// Parse the text of a `plugin.sig`.
    ///
    /// # Errors
    /// A message saying what is wrong (for [`LoadError::SignatureInvalid`]).
    pub(crate) fn parse(text: &str) -> Result<PluginSignature, String> {
        let file: SignatureFile = toml::from_str(text)
            .map_err(|e| format!("{SIGNATURE_FILE} is garbled: {}", e.message()))?;
        let format = match file.format {
            None => 1,
            Some(FORMAT) => FORMAT,
            Some(other) => {
                return Err(format!(
                    "{SIGNATURE_FILE}: format {other} is not one this host reads (1 or {FORMAT}); sign the plugin with this version of airlock"
                ));
            }
        };
        let key = file
            .key
            .parse()
            .map_err(|e| format!("{SIGNATURE_FILE}: key {e}"))?;
        let bytes = BASE64
            .decode(file.signature.trim())
            .map_err(|_| format!("{SIGNATURE_FILE}: signature is not base64"))?;
        let signature = Signature::from_slice(&bytes).map_err(|_| {
            format!(
                "{SIGNATURE_FILE}: signature is {} bytes where an Ed25519 signature has 64",
                bytes.len()
            )
        })?;
        Ok(PluginSignature {
            format,
            key,
            signature,
        })
    }

    /// The file's text.
    pub(crate) fn to_text(&self) -> String {
        let (format, covers) = match self.format {
            1 => ("", "manifest sha256 and component sha256"),
            _ => (
                "format = 2\n",
                "manifest sha256, component sha256\n# and cases.jsonl sha256 (or its absence)",
            ),
        };
        format!(
            "# Airlock plugin signature (airlock plugins sign): Ed25519 over the plugin's\n# name, version, {covers}.\n{format}key = \"{}\"\nsignature = \"{}\"\n",
            self.key,
            BASE64.encode(self.signature.to_bytes())
        )
    }

    /// Sign `what` with `key`, in the current format.
    pub(crate) fn sign(what: &Signed<'_>, key: &SigningKey) -> PluginSignature {
        PluginSignature {
            format: FORMAT,
            key: PublicKey(key.verifying_key()),
            signature: key.sign(&signed_message(what, FORMAT)),
        }
    }
}

/// What a signature covers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Signed<'a> {
    /// Plugin name.
    pub(crate) name: &'a str,
    /// Plugin version.
    pub(crate) version: &'a str,
    /// Hex SHA-256 of the manifest's bytes.
    pub(crate) manifest_digest: &'a str,
    /// Hex SHA-256 of the component.
    pub(crate) component_digest: &'a str,
    /// Hex SHA-256 of `cases.jsonl`; `None`: the plugin has none.
    pub(crate) cases_digest: Option<&'a str>,
}

/// The signed message of `format`: the domain, then each field as its
/// length (8 bytes, big-endian) and its bytes, so no two different field
/// lists make the same message. Format 2 adds the cases' digest, empty
/// when there are none (a digest is never empty).
fn signed_message(what: &Signed<'_>, format: u32) -> Vec<u8> {
    let (domain, cases) = match format {
        1 => (SIGNATURE_DOMAIN_V1, None),
        _ => (SIGNATURE_DOMAIN_V2, Some(what.cases_digest.unwrap_or(""))),
    };
    let mut message = domain.to_vec();
    for field in [
        Some(what.name),
        Some(what.version),
        Some(what.manifest_digest),
        Some(what.component_digest),
        cases,
    ]
    .into_iter()
    .flatten()
    {
        message.extend_from_slice(&(field.len() as u64).to_be_bytes());
        message.extend_from_slice(field.as_bytes());
    }
    message
}

/// Read the `plugin.sig` in `dir`, if there is one.
///
/// # Errors
/// [`LoadError::SignatureInvalid`] when it is not a regular file, too
/// large, not UTF-8 or garbled; [`LoadError::Io`] when it cannot be read.
pub(crate) fn read(dir: &Path, plugin: &str) -> LoadResult<Option<PluginSignature>> {
    let path = dir.join(SIGNATURE_FILE);
    let invalid = |reason: String| LoadError::SignatureInvalid {
        plugin: plugin.to_owned(),
        reason,
    };
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LoadError::io(&path, e)),
    };
    if !meta.is_file() {
        return Err(invalid(format!("{SIGNATURE_FILE} is not a regular file")));
    }
    if meta.len() > MAX_SIGNATURE_BYTES {
        return Err(invalid(format!(
            "{SIGNATURE_FILE} is {} bytes, more than the limit of {MAX_SIGNATURE_BYTES}",
            meta.len()
        )));
    }
    // Bounded again: the file may have changed since it was measured.
    let bytes =
        super::read_at_most(&path, MAX_SIGNATURE_BYTES).map_err(|e| LoadError::io(&path, e))?;
    if bytes.len() as u64 > MAX_SIGNATURE_BYTES {
        return Err(invalid(format!(
            "{SIGNATURE_FILE} is more than the limit of {MAX_SIGNATURE_BYTES} bytes"
        )));
    }
    parse_bytes(&bytes, plugin).map(Some)
}

/// Parse the bytes of a `plugin.sig` (from a directory or an archive).
pub(crate) fn parse_bytes(bytes: &[u8], plugin: &str) -> LoadResult<PluginSignature> {
    let invalid = |reason: String| LoadError::SignatureInvalid {
        plugin: plugin.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| invalid(format!("{SIGNATURE_FILE} is not UTF-8 text")))?;
    PluginSignature::parse(text).map_err(invalid)
}

/// Apply the operator's trust rules (see the module documentation) to a
/// plugin's signature.
///
/// # Errors
/// [`LoadError::Unsigned`], [`LoadError::SignatureInvalid`] or
/// [`LoadError::UntrustedSigner`], as the rules say.
pub(crate) fn check(
    what: &Signed<'_>,
    signature: Option<&PluginSignature>,
    policy: &Policy,
) -> LoadResult<Option<Signer>> {
    let Some(signature) = signature else {
        if policy.require_signature {
            return Err(LoadError::Unsigned {
                plugin: what.name.to_owned(),
            });
        }
        return Ok(None);
    };
    if signature.format == 1 && what.cases_digest.is_some() {
        return Err(LoadError::SignatureInvalid {
            plugin: what.name.to_owned(),
            reason: format!(
                "{SIGNATURE_FILE} is in format 1, which does not cover {}: the evaluation cases that decide readiness would be nobody's word; sign the plugin again (airlock plugins sign)",
                super::CASES_FILE
            ),
        });
    }
    signature
        .key
        .0
        .verify_strict(&signed_message(what, signature.format), &signature.signature)
        .map_err(|_| LoadError::SignatureInvalid {
            plugin: what.name.to_owned(),
            reason: format!(
                "the signature by {} is not over this manifest, component and cases (one of them changed after signing, or the manifest was signed before its digest was stamped)",
                signature.key
            ),
        })?;
    let name = policy
        .trusted_keys
        .iter()
        .find(|(_, trusted)| trusted.key == signature.key && trusted.trusts(what.name))
        .map(|(name, _)| name.clone());
    if name.is_none() {
        let reason = why_untrusted(policy, &signature.key);
        if policy.require_signature {
            return Err(LoadError::UntrustedSigner {
                plugin: what.name.to_owned(),
                key: signature.key.to_string(),
                reason,
            });
        }
        tracing::warn!(plugin = %what.name, key = %signature.key, "plugin signed by a key {reason}; loaded as untrusted because signatures are not required");
    }
    Ok(Some(Signer {
        key: signature.key,
        trusted: name.is_some(),
        name,
    }))
}

/// Why `key` does not vouch for a plugin it signed, as a clause after the
/// key ("signed by KEY, which ..."): it is not in `trusted_keys`, or it is
/// trusted only for the plugins it lists.
pub(crate) fn why_untrusted(policy: &Policy, key: &PublicKey) -> String {
    let scoped = policy
        .trusted_keys
        .iter()
        .find(|(_, trusted)| trusted.key == *key)
        .and_then(|(name, trusted)| Some((name, trusted.plugins.as_ref()?)));
    match scoped {
        Some((name, plugins)) => format!(
            "which trusted_keys trusts (as `{name}`) only for {}",
            plugins
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "which is not among the operator's trusted_keys".to_owned(),
    }
}

/// Check `trusted_keys` (part of [`Policy::validate`]): names are plain,
/// no key is listed under two names, and a scoped key names at least one
/// plugin, each a plugin name.
pub(crate) fn check_policy(policy: &Policy) -> Result<(), String> {
    let mut seen: Vec<(&str, &PublicKey)> = Vec::new();
    for (name, trusted) in &policy.trusted_keys {
        let key = &trusted.key;
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        {
            return Err(format!(
                "policy.trusted_keys: {:?} is not a signer name (1-64 characters of A-Z a-z 0-9 . _ - @)",
                airlock_audit::text::prefix(name, 80)
            ));
        }
        if let Some((other, _)) = seen.iter().find(|(_, k)| *k == key) {
            return Err(format!(
                "policy.trusted_keys: `{other}` and `{name}` are the same key; list it once"
            ));
        }
        if let Some(plugins) = &trusted.plugins {
            if plugins.is_empty() {
                return Err(format!(
                    "policy.trusted_keys.{name}: `plugins` is empty, so the key would sign nothing; name the plugins it signs, or give the key alone to trust it for every plugin"
                ));
            }
            if let Some(bad) = plugins
                .iter()
                .find(|p| airlock_store::check_plugin_name(p).is_err())
            {
                return Err(format!(
                    "policy.trusted_keys.{name}: {:?} is not a plugin name",
                    airlock_audit::text::prefix(bad, 80)
                ));
            }
        }
        seen.push((name, key));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    const WHAT: Signed<'static> = Signed {
        name: "text",
        version: "0.1.0",
        manifest_digest: "aa",
        component_digest: "bb",
        cases_digest: None,
    };

    fn trusting(name: &str, key: &SigningKey, require: bool) -> Policy {
        Policy {
            trusted_keys: [(
                name.to_owned(),
                TrustedKey::any_plugin(PublicKey(key.verifying_key())),
            )]
            .into(),
            require_signature: require,
            ..Policy::default()
        }
    }

    #[test]
    fn public_keys_round_trip_and_bad_ones_say_why() {
        let public = PublicKey(key(1).verifying_key());
        let text = public.to_string();
        assert!(text.starts_with("ed25519:"), "{text}");
        assert_eq!(text.parse::<PublicKey>().unwrap(), public);
        for (bad, why) in [
            ("AAAA", "write `ed25519:`"),
            ("ed25519:%%%", "not base64"),
            ("ed25519:AAAA", "3 bytes"),
            (
                "ed25519:AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                "weak",
            ),
        ] {
            let err = bad.parse::<PublicKey>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_trusted_signature_names_its_signer() {
        let sig = PluginSignature::sign(&WHAT, &key(1));
        let parsed = PluginSignature::parse(&sig.to_text()).unwrap();
        assert_eq!(parsed, sig);
        let signer = check(&WHAT, Some(&parsed), &trusting("alice", &key(1), true))
            .unwrap()
            .unwrap();
        assert_eq!(signer.name(), Some("alice"));
        assert!(signer.is_trusted());
        assert!(signer.to_string().starts_with("alice (ed25519:"));
    }

    #[test]
    fn unsigned_is_refused_only_when_required() {
        let err = check(&WHAT, None, &trusting("alice", &key(1), true)).unwrap_err();
        assert_eq!(err.kind(), "plugin_unsigned");
        assert_eq!(err.class(), crate::ErrorClass::Untrusted);
        assert_eq!(check(&WHAT, None, &Policy::default()).unwrap(), None);
    }

    #[test]
    fn another_key_is_untrusted_and_refused_only_when_required() {
        let sig = PluginSignature::sign(&WHAT, &key(2));
        let err = check(&WHAT, Some(&sig), &trusting("alice", &key(1), true)).unwrap_err();
        assert_eq!(err.kind(), "signer_untrusted");
        assert!(err.to_string().contains(&sig.key.to_string()), "{err}");
        let signer = check(&WHAT, Some(&sig), &trusting("alice", &key(1), false))
            .unwrap()
            .unwrap();
        assert!(!signer.is_trusted());
        assert_eq!(signer.name(), None);
        assert!(signer.to_string().starts_with("untrusted key ed25519:"));
    }

    #[test]
    fn a_signature_over_other_bytes_is_always_refused() {
        let sig = PluginSignature::sign(&WHAT, &key(1));
        for tampered in [
            Signed {
                manifest_digest: "ab",
                ..WHAT
            },
            Signed {
                component_digest: "bc",
                ..WHAT
            },
            Signed {
                version: "0.1.1",
                ..WHAT
            },
            // Moving bytes between fields does not make the same message.
            Signed {
                name: "tex",
                version: "t0.1.0",
                ..WHAT
            },
        ] {
            for policy in [trusting("alice", &key(1), true), Policy::default()] {
                let err = check(&tampered, Some(&sig), &policy).unwrap_err();
                assert_eq!(err.kind(), "signature_invalid", "{tampered:?}");
            }
        }
    }

    #[test]
    fn garbled_signature_files_are_invalid() {
        let good = PluginSignature::sign(&WHAT, &key(1)).to_text();
        let short_sig = format!(
            "key = \"{}\"\nsignature = \"AAAA\"\n",
            PublicKey(key(1).verifying_key())
        );
        for (text, why) in [
            ("not toml at all [", "garbled"),
            ("key = \"x\"\n", "garbled"),
            (&good.replace("key =", "kee ="), "garbled"),
            (&good.replace("ed25519:", "rsa:"), "key"),
            (&short_sig, "3 bytes"),
            (&format!("{good}extra = 1\n"), "garbled"),
        ] {
            let err = parse_bytes(text.as_bytes(), "text").unwrap_err();
            assert_eq!(err.kind(), "signature_invalid", "{text}");
            assert!(err.to_string().contains(why), "{text}: {err}");
        }
        let err = parse_bytes(&[0xff, 0xfe], "text").unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }

    #[test]
    fn trusted_keys_are_checked() {
        let mut policy = trusting("alice", &key(1), false);
        check_policy(&policy).unwrap();
        policy.trusted_keys.insert(
            "bob".into(),
            TrustedKey::any_plugin(PublicKey(key(1).verifying_key())),
        );
        assert!(check_policy(&policy).unwrap_err().contains("same key"));
        let policy = trusting("al ice", &key(1), false);
        assert!(check_policy(&policy).unwrap_err().contains("signer name"));
        for (plugins, why) in [
            (vec![], "`plugins` is empty"),
            (vec!["text", "../etc"], "\"../etc\" is not a plugin name"),
            (vec!["Text"], "not a plugin name"),
        ] {
            let policy = Policy {
                trusted_keys: [(
                    "release".to_owned(),
                    TrustedKey::for_plugins(PublicKey(key(1).verifying_key()), plugins),
                )]
                .into(),
                ..Policy::default()
            };
            let err = check_policy(&policy).unwrap_err();
            assert!(err.contains(why), "{err}");
            assert!(err.contains("policy.trusted_keys.release"), "{err}");
        }
    }

    const WITH_CASES: Signed<'static> = Signed {
        cases_digest: Some("cc"),
        ..WHAT
    };

    #[test]
    fn a_signature_covers_the_cases_and_their_absence() {
        let policy = trusting("alice", &key(1), true);
        let signed = PluginSignature::sign(&WITH_CASES, &key(1));
        assert!(
            signed.to_text().contains("format = 2\n"),
            "{}",
            signed.to_text()
        );
        let parsed = PluginSignature::parse(&signed.to_text()).unwrap();
        assert_eq!(parsed, signed);
        check(&WITH_CASES, Some(&parsed), &policy).unwrap().unwrap();
        // Cases edited, removed, or added to a plugin signed without them.
        let edited = Signed {
            cases_digest: Some("cd"),
            ..WHAT
        };
        for (what, sig) in [
            (edited, &signed),
            (WHAT, &signed),
            (WITH_CASES, &PluginSignature::sign(&WHAT, &key(1))),
        ] {
            let err = check(&what, Some(sig), &policy).unwrap_err();
            assert_eq!(err.kind(), "signature_invalid", "{what:?}");
            assert!(err.to_string().contains("cases"), "{err}");
        }
    }

    /// A format-1 signature (before cases were covered), as the host of
    /// that time wrote it.
    fn format_1(what: &Signed<'_>, key: &SigningKey) -> String {
        let sig = PluginSignature {
            format: 1,
            key: PublicKey(key.verifying_key()),
            signature: key.sign(&signed_message(what, 1)),
        };
        let text = sig.to_text();
        assert!(!text.contains("format"), "{text}");
        text
    }

    #[test]
    fn format_1_holds_only_for_a_plugin_without_cases() {
        let policy = trusting("alice", &key(1), true);
        let old = PluginSignature::parse(&format_1(&WHAT, &key(1))).unwrap();
        let signer = check(&WHAT, Some(&old), &policy).unwrap().unwrap();
        assert_eq!(signer.name(), Some("alice"));
        // The same bytes with cases beside them: nobody signed the cases.
        for policy in [policy, Policy::default()] {
            let err = check(&WITH_CASES, Some(&old), &policy).unwrap_err();
            assert_eq!(err.kind(), "signature_invalid");
            assert!(err.to_string().contains("format 1"), "{err}");
        }
        // A format-2 signature is never read as format 1, nor the reverse.
        let new = PluginSignature::sign(&WHAT, &key(1));
        let relabelled = new.to_text().replace("format = 2\n", "");
        let err = check(
            &WHAT,
            Some(&PluginSignature::parse(&relabelled).unwrap()),
            &Policy::default(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), "signature_invalid");
        let promoted = format_1(&WHAT, &key(1)).replace("key =", "format = 2\nkey =");
        let err = check(
            &WHAT,
            Some(&PluginSignature::parse(&promoted).unwrap()),
            &Policy::default(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), "signature_invalid");
        // A format this host does not know.
        let future = new.to_text().replace("format = 2", "format = 3");
        let err = parse_bytes(future.as_bytes(), "text").unwrap_err();
        assert!(err.to_string().contains("format 3"), "{err}");
    }

    #[test]
    fn a_key_scoped_to_plugins_signs_only_those() {
        let scoped = |require| Policy {
            trusted_keys: [(
                "billing-team".to_owned(),
                TrustedKey::for_plugins(PublicKey(key(1).verifying_key()), ["billing", "text"]),
            )]
            .into(),
            require_signature: require,
            ..Policy::default()
        };
        let sig = PluginSignature::sign(&WHAT, &key(1));
        let signer = check(&WHAT, Some(&sig), &scoped(true)).unwrap().unwrap();
        assert_eq!(signer.name(), Some("billing-team"));
        let other = Signed {
            name: "payroll",
            ..WHAT
        };
        let sig = PluginSignature::sign(&other, &key(1));
        let err = check(&other, Some(&sig), &scoped(true)).unwrap_err();
        assert_eq!(err.kind(), "signer_untrusted");
        assert!(
            err.to_string()
                .contains("trusts (as `billing-team`) only for `billing`, `text`"),
            "{err}"
        );
        let signer = check(&other, Some(&sig), &scoped(false)).unwrap().unwrap();
        assert!(!signer.is_trusted());
        assert_eq!(signer.name(), None);
    }

    #[test]
    fn trusted_keys_are_read_in_both_forms() {
        let public = PublicKey(key(1).verifying_key());
        let text = format!(
            "trusted_keys = {{ alice = \"{public}\", release = {{ key = \"{public}\", plugins = [\"billing\"] }} }}"
        );
        let policy: Policy = toml::from_str(&text).unwrap();
        assert_eq!(policy.trusted_keys["alice"], TrustedKey::any_plugin(public));
        assert_eq!(
            policy.trusted_keys["release"],
            TrustedKey::for_plugins(public, ["billing"])
        );
        // And written back the same way.
        let again: Policy = toml::from_str(&toml::to_string(&policy).unwrap()).unwrap();
        assert_eq!(again, policy);
        for (bad, why) in [
            (
                "release = { key = \"AAAA\", plugins = [] }",
                "write `ed25519:`",
            ),
            (
                "release = { key = \"KEY\", plugin = [\"x\"] }",
                "unknown field `plugin`",
            ),
            ("release = { plugins = [\"x\"] }", "missing field `key`"),
            ("release = 7", "a public key"),
        ] {
            let text = format!(
                "trusted_keys = {{ {} }}",
                bad.replace("KEY", &public.to_string())
            );
            let err = toml::from_str::<Policy>(&text).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
