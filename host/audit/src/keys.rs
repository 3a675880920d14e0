//! The host's secret keys: the checkpoint signing key and the redaction key.
//!
//! Each is 32 random bytes stored as 64 hex digits and a newline in a file
//! only its owner may read (mode 0600). A key file is created when missing
//! — but only for a log that has nothing depending on it yet; a corrupt,
//! unreadable or world-readable file is an error, never silently replaced.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::error::{Error, Result};

/// Largest key file read: a key is 64 hex digits and a newline, so
/// anything much longer is not one (and a path linked to a device is not
/// read until memory runs out).
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// 32 secret bytes.
pub(crate) struct Secret(pub(crate) [u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// 32 bytes from the operating system's entropy source.
pub(crate) fn random_bytes() -> Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Key {
        path: PathBuf::new(),
        reason: format!("no entropy from the operating system: {e}"),
    })?;
    Ok(bytes)
}

/// Whether a key file is missing.
pub(crate) fn exists(path: &Path) -> bool {
    path.exists()
}

/// Read the key at `path`.
pub(crate) fn read(path: &Path) -> Result<Secret> {
    let key_error = |reason: String| Error::Key {
        path: path.to_owned(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| key_error(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(key_error("not a regular file".into()));
    }
    check_private(path, &meta)?;
    let text = airlock_store::file::read_text_capped(path, MAX_KEY_FILE_BYTES)
        .map_err(|e| key_error(format!("cannot read: {e}")))?;
    let text = text.trim_end_matches('\n');
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| {
        key_error(format!(
            "not a key: expected 64 hex digits, found {} characters",
            text.len()
        ))
    })?;
    Ok(Secret(bytes))
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &fs::Metadata) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Key {
            path: path.to_owned(),
            reason: format!(
                "readable by other users (mode {mode:04o}); run `chmod 600` on it \
                 (and consider the key compromised)"
            ),
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path, _: &fs::Metadata) -> Result<()> {
    Ok(())
}

/// Create a new random key at `path` (mode 0600), failing if a file is
/// there. The key is written to a temporary file and renamed into place, so
/// a crash never leaves a partial key.
pub(crate) fn create(path: &Path) -> Result<Secret> {
    let key_error = |reason: String| Error::Key {
        path: path.to_owned(),
        reason,
    };
    let bytes = random_bytes()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| key_error(format!("cannot create its directory: {e}")))?;
    let write = || -> std::io::Result<()> {
        let mut tmp = airlock_store::file::private_temporary_beside(path)?;
        writeln!(tmp, "{}", hex::encode(bytes))?;
        // Never replace a key another process created meanwhile.
        airlock_store::file::persist_new(tmp, path)
    };
    write().map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists && path.exists() {
            key_error("already exists; a key file is never overwritten".to_owned())
        } else {
            key_error(format!("cannot create: {e}"))
        }
    })?;
    Ok(Secret(bytes))
}

/// Create a new random Ed25519 signing key in a key file at `path`: 64 hex
/// digits and a newline, mode 0600, written to a temporary file and linked
/// into place (the conventions of the audit log's own key).
///
/// # Errors
/// [`Error::Key`] when a file is already at `path` (a key file is never
/// overwritten), or it cannot be written.
pub fn create_signing_key(path: &Path) -> Result<SigningKey> {
    Ok(signing_key(&create(path)?))
}

/// Read the Ed25519 signing key in the key file at `path` (as
/// [`create_signing_key`] writes it).
///
/// # Errors
/// [`Error::Key`] when the file cannot be read, is readable by other users,
/// or does not hold a key.
pub fn read_signing_key(path: &Path) -> Result<SigningKey> {
    Ok(signing_key(&read(path)?))
}

/// The signing key for a secret.
pub(crate) fn signing_key(secret: &Secret) -> SigningKey {
    SigningKey::from_bytes(&secret.0)
}

/// Parse a public key given as 64 hex digits, or the path of a file holding
/// them (as `airlock audit` writes `audit-signing.pub`).
///
/// # Errors
/// [`Error::Key`] when neither reading works.
pub fn parse_public_key(text_or_path: &str) -> Result<VerifyingKey> {
    let text = text_or_path.trim();
    let (source, hex_text) =
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (PathBuf::from("<argument>"), text.to_owned())
        } else {
            let path = PathBuf::from(text);
            let contents = airlock_store::file::read_text_capped(&path, MAX_KEY_FILE_BYTES)
                .map_err(|e| Error::Key {
                    path: path.clone(),
                    reason: format!("not 64 hex digits and not a readable file: {e}"),
                })?;
            (path, contents.trim().to_owned())
        };
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(&hex_text, &mut bytes).map_err(|_| Error::Key {
        path: source.clone(),
        reason: "a public key is 64 hex digits".into(),
    })?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| Error::Key {
        path: source,
        reason: format!("not an Ed25519 public key: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_keys_are_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let made = create(&path).unwrap();
        assert_eq!(read(&path).unwrap().0, made.0);
        let err = create(&path).unwrap_err().to_string();
        assert!(err.contains("never overwritten"), "{err}");
        assert_eq!(
            read_signing_key(&path).unwrap().to_bytes(),
            made.0,
            "the public reader reads what create wrote"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn corrupt_and_exposed_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let err = read(&path).unwrap_err().to_string();
            assert!(err.contains("readable by other users"), "{err}");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::write(&path, "not hex\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("expected 64 hex digits"), "{err}");
    }

    #[test]
    fn public_keys_parse_from_hex_or_file() {
        let key = signing_key(&Secret([7; 32])).verifying_key();
        let hex_key = hex::encode(key.as_bytes());
        assert_eq!(parse_public_key(&hex_key).unwrap(), key);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pub");
        fs::write(&path, format!("{hex_key}\n")).unwrap();
        assert_eq!(parse_public_key(path.to_str().unwrap()).unwrap(), key);
        assert!(parse_public_key("zz").is_err());
    }
}
