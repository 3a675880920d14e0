//! [`SledLedger`]: approvals and idempotency keys in sled.
//!
//! Layout (unchanged since the ledger was first written, so existing data
//! directories open as they are): tree `approvals` (id → JSON), tree
//! `idempotency` ([`KeyRef::encode`] → JSON), tree `meta` (name → text).
//! A record's [`Version`] is a digest of its stored bytes, and a swap is
//! sled's compare-and-swap on those exact bytes.

use std::path::{Path, PathBuf};

use airlock_store::{
    Approval, ApprovalListing, ApprovalState, IdempotencyEntry, KeyHead, KeyListing, KeyRef,
    LedgerStore, Result, StoreError, Version, Versioned,
};
use sha2::{Digest, Sha256};

/// The ledger in a sled database.
#[derive(Clone)]
pub struct SledLedger {
    path: PathBuf,
    db: sled::Db,
    approvals: sled::Tree,
    idempotency: sled::Tree,
    meta: sled::Tree,
}

impl std::fmt::Debug for SledLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledLedger")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn version(bytes: &[u8]) -> Version {
    let digest = Sha256::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Version(u64::from_be_bytes(first))
}

impl SledLedger {
    /// The ledger in `db` (opened from `path`).
    ///
    /// # Errors
    /// `Unavailable` when its trees cannot be opened.
    pub fn new(path: &Path, db: sled::Db) -> Result<SledLedger> {
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| StoreError::unavailable(format!("ledger at {}", path.display()), e))
        };
        Ok(SledLedger {
            path: path.to_owned(),
            approvals: tree("approvals")?,
            idempotency: tree("idempotency")?,
            meta: tree("meta")?,
            db,
        })
    }

    fn failed(&self, e: sled::Error) -> StoreError {
        StoreError::unavailable(format!("ledger at {}", self.path.display()), e)
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(drop).map_err(|e| self.failed(e))
    }

    fn encode<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| {
            StoreError::with_source(
                airlock_store::ErrorKind::Corrupt,
                "cannot encode a ledger record",
                e,
            )
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, what: &str, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| {
            StoreError::with_source(
                airlock_store::ErrorKind::Corrupt,
                format!("ledger at {}: {what} is unreadable", self.path.display()),
                e,
            )
        })
    }

    /// Compare-and-swap `key` in `tree` from the bytes whose version is
    /// `current` to `next` (`None`: remove). Durable on success.
    fn swap(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        current: Option<Version>,
        next: Option<Vec<u8>>,
    ) -> Result<bool> {
        let stored = tree.get(key).map_err(|e| self.failed(e))?;
        let matches = match (&stored, current) {
            (None, None) => true,
            (Some(bytes), Some(v)) => version(bytes) == v,
            _ => false,
        };
        if !matches {
            return Ok(false);
        }
        match tree
            .compare_and_swap(key, stored, next)
            .map_err(|e| self.failed(e))?
        {
            Ok(()) => {
                self.flush()?;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }
}

impl LedgerStore for SledLedger {
    fn insert_approval(&self, approval: &Approval) -> Result<bool> {
        let bytes = self.encode(approval)?;
        self.swap(&self.approvals, approval.id.as_bytes(), None, Some(bytes))
    }

    fn approval(&self, id: &str) -> Result<Option<Versioned<Approval>>> {
        let Some(bytes) = self.approvals.get(id).map_err(|e| self.failed(e))? else {
            return Ok(None);
        };
        Ok(Some(Versioned {
            value: self.decode(&format!("approval {id}"), &bytes)?,
            version: version(&bytes),
        }))
    }

    fn replace_approval(&self, current: Version, next: &Approval) -> Result<bool> {
        let bytes = self.encode(next)?;
        self.swap(
            &self.approvals,
            next.id.as_bytes(),
            Some(current),
            Some(bytes),
        )
    }

    fn remove_approval(&self, id: &str, current: Version) -> Result<bool> {
        self.swap(&self.approvals, id.as_bytes(), Some(current), None)
    }

    fn approvals(&self, state: Option<ApprovalState>) -> Result<ApprovalListing> {
        let mut out = ApprovalListing::default();
        for item in self.approvals.iter() {
            let (k, bytes) = item.map_err(|e| self.failed(e))?;
            let approval: Approval = match self.decode(
                &format!("approval {:?}", String::from_utf8_lossy(&k)),
                &bytes,
            ) {
                Ok(approval) => approval,
                Err(e) => {
                    out.unreadable.push(e.to_string());
                    continue;
                }
            };
            if state.is_none_or(|s| s == approval.state) {
                out.approvals.push(Versioned {
                    value: approval,
                    version: version(&bytes),
                });
            }
        }
        Ok(out)
    }

    fn key(&self, key: &KeyRef) -> Result<Option<Versioned<IdempotencyEntry>>> {
        let Some(bytes) = self
            .idempotency
            .get(key.encode())
            .map_err(|e| self.failed(e))?
        else {
            return Ok(None);
        };
        Ok(Some(Versioned {
            value: self.decode("an idempotency entry", &bytes)?,
            version: version(&bytes),
        }))
    }

    fn insert_key(&self, key: &KeyRef, entry: &IdempotencyEntry) -> Result<bool> {
        let bytes = self.encode(entry)?;
        self.swap(&self.idempotency, &key.encode(), None, Some(bytes))
    }

    fn replace_key(&self, key: &KeyRef, current: Version, next: &IdempotencyEntry) -> Result<bool> {
        let bytes = self.encode(next)?;
        self.swap(&self.idempotency, &key.encode(), Some(current), Some(bytes))
    }

    fn remove_key(&self, key: &KeyRef, current: Version) -> Result<bool> {
        self.swap(&self.idempotency, &key.encode(), Some(current), None)
    }

    fn keys(&self) -> Result<KeyListing> {
        let mut out = KeyListing::default();
        for item in self.idempotency.iter() {
            let (k, bytes) = item.map_err(|e| self.failed(e))?;
            let Some(key) = KeyRef::decode(&k) else {
                out.unreadable.push(format!(
                    "ledger at {}: idempotency key {} is unreadable",
                    self.path.display(),
                    hex::encode(&k)
                ));
                continue;
            };
            match KeyHead::from_json(&bytes) {
                Ok(head) => out.keys.push((
                    key,
                    Versioned {
                        value: head,
                        version: version(&bytes),
                    },
                )),
                Err(e) => out.unreadable.push(format!(
                    "ledger at {}: the entry of idempotency key {:?} of {}/{} is unreadable: {e}",
                    self.path.display(),
                    key.key,
                    key.plugin,
                    key.tool
                )),
            }
        }
        Ok(out)
    }

    fn meta(&self, name: &str) -> Result<Option<String>> {
        self.meta
            .get(name.as_bytes())
            .map_err(|e| self.failed(e))?
            .map(|v| {
                crate::stored_str(
                    || format!("ledger at {}: meta `{name}`", self.path.display()),
                    &v,
                )
            })
            .transpose()
    }

    fn set_meta(&self, name: &str, value: &str) -> Result<()> {
        self.meta
            .insert(name.as_bytes(), value.as_bytes())
            .map_err(|e| self.failed(e))?;
        self.flush()
    }

    fn swap_meta(&self, name: &str, current: Option<&str>, next: &str) -> Result<bool> {
        let swapped = self
            .meta
            .compare_and_swap(
                name.as_bytes(),
                current.map(str::as_bytes),
                Some(next.as_bytes()),
            )
            .map_err(|e| self.failed(e))?;
        if swapped.is_err() {
            return Ok(false);
        }
        self.flush()?;
        Ok(true)
    }
}
