//! The in-memory backend: every trait of the seam, in this process's
//! memory. For tests and for hosts without a data directory; gone when the
//! process ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::audit::{AuditStore, AuditWrite, Marker};
use crate::error::{ErrorKind, Result, StoreError};
use crate::ledger::{
    Approval, ApprovalListing, ApprovalState, IdempotencyEntry, KeyHead, KeyListing, KeyRef,
    LedgerStore, Version, Versioned,
};
use crate::mode::{Mode, ModeStore};
use crate::plugins::{InstalledVersion, PluginStore, Rollout};
use crate::workspace::{KeyEntry, KeyOwner, Quota, Usage, WorkspaceError, WorkspaceStore};

/// Every store of the seam in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_version: u64,
    approvals: BTreeMap<String, (Approval, u64)>,
    keys: BTreeMap<KeyRef, (IdempotencyEntry, u64)>,
    meta: HashMap<String, String>,
    kv: BTreeMap<(String, KeyOwner, String), Vec<u8>>,
    blobs: BTreeMap<(String, [u8; 32]), Vec<u8>>,
    usage: BTreeMap<String, Usage>,
    chains: BTreeMap<String, Chain>,
    mode: Option<Mode>,
    artifacts: HashMap<String, Vec<u8>>,
    versions: BTreeMap<(String, String), InstalledVersion>,
    rollouts: BTreeMap<String, (Rollout, u64)>,
}

#[derive(Debug, Default)]
struct Chain {
    records: BTreeMap<u64, Vec<u8>>,
    checkpoints: BTreeMap<u64, Vec<u8>>,
    open: BTreeMap<String, u64>,
}

impl State {
    fn version(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change below is a single insert or remove, so the state is
        // consistent whatever panicked while holding the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LedgerStore for MemoryStore {
    fn insert_approval(&self, approval: &Approval) -> Result<bool> {
        let mut s = self.lock();
        if s.approvals.contains_key(&approval.id) {
            return Ok(false);
        }
        let v = s.version();
        s.approvals
            .insert(approval.id.clone(), (approval.clone(), v));
        Ok(true)
    }

    fn approval(&self, id: &str) -> Result<Option<Versioned<Approval>>> {
        Ok(self.lock().approvals.get(id).map(|(a, v)| Versioned {
            value: a.clone(),
            version: Version(*v),
        }))
    }

    fn replace_approval(&self, current: Version, next: &Approval) -> Result<bool> {
        let mut s = self.lock();
        match s.approvals.get(&next.id) {
            Some((_, v)) if *v == current.0 => {
                let v = s.version();
                s.approvals.insert(next.id.clone(), (next.clone(), v));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn remove_approval(&self, id: &str, current: Version) -> Result<bool> {
        let mut s = self.lock();
        match s.approvals.get(id) {
            Some((_, v)) if *v == current.0 => {
                s.approvals.remove(id);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn approvals(&self, state: Option<ApprovalState>) -> Result<ApprovalListing> {
        Ok(ApprovalListing {
            approvals: self
                .lock()
                .approvals
                .values()
                .filter(|(a, _)| state.is_none_or(|s| a.state == s))
                .map(|(a, v)| Versioned {
                    value: a.clone(),
                    version: Version(*v),
                })
                .collect(),
            unreadable: Vec::new(),
        })
    }

    fn key(&self, key: &KeyRef) -> Result<Option<Versioned<IdempotencyEntry>>> {
        Ok(self.lock().keys.get(key).map(|(e, v)| Versioned {
            value: e.clone(),
            version: Version(*v),
        }))
    }

    fn insert_key(&self, key: &KeyRef, entry: &IdempotencyEntry) -> Result<bool> {
        let mut s = self.lock();
        if s.keys.contains_key(key) {
            return Ok(false);
        }
        let v = s.version();
        s.keys.insert(key.clone(), (entry.clone(), v));
        Ok(true)
    }

    fn replace_key(&self, key: &KeyRef, current: Version, next: &IdempotencyEntry) -> Result<bool> {
        let mut s = self.lock();
        match s.keys.get(key) {
            Some((_, v)) if *v == current.0 => {
                let v = s.version();
                s.keys.insert(key.clone(), (next.clone(), v));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn remove_key(&self, key: &KeyRef, current: Version) -> Result<bool> {
        let mut s = self.lock();
        match s.keys.get(key) {
            Some((_, v)) if *v == current.0 => {
                s.keys.remove(key);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn keys(&self) -> Result<KeyListing> {
        let keys = self
            .lock()
            .keys
            .iter()
            .map(|(k, (e, v))| {
                (
                    k.clone(),
                    Versioned {
                        value: KeyHead::of(e),
                        version: Version(*v),
                    },
                )
            })
            .collect();
        Ok(KeyListing {
            keys,
            unreadable: Vec::new(),
        })
    }

    fn meta(&self, name: &str) -> Result<Option<String>> {
        Ok(self.lock().meta.get(name).cloned())
    }

    fn set_meta(&self, name: &str, value: &str) -> Result<()> {
        self.lock().meta.insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    fn swap_meta(&self, name: &str, current: Option<&str>, next: &str) -> Result<bool> {
        let mut s = self.lock();
        if s.meta.get(name).map(String::as_str) != current {
            return Ok(false);
        }
        s.meta.insert(name.to_owned(), next.to_owned());
        Ok(true)
    }
}

fn kv(plugin: &str, owner: &KeyOwner, key: &str) -> (String, KeyOwner, String) {
    (plugin.to_owned(), owner.clone(), key.to_owned())
}

impl WorkspaceStore for MemoryStore {
    fn get(&self, plugin: &str, owner: &KeyOwner, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().kv.get(&kv(plugin, owner, key)).cloned())
    }

    fn set(
        &self,
        plugin: &str,
        owner: &KeyOwner,
        key: &str,
        value: &[u8],
        quota: Quota,
    ) -> Result<(), WorkspaceError> {
        let mut s = self.lock();
        let k = kv(plugin, owner, key);
        let old = s.kv.get(&k).map(Vec::len);
        let usage = s.usage.get(plugin).copied().unwrap_or_default().after_set(
            key,
            old,
            value.len(),
            quota,
        )?;
        s.kv.insert(k, value.to_vec());
        s.usage.insert(plugin.to_owned(), usage);
        Ok(())
    }

    fn delete(&self, plugin: &str, owner: &KeyOwner, key: &str) -> Result<bool> {
        let mut s = self.lock();
        let Some(old) = s.kv.remove(&kv(plugin, owner, key)) else {
            return Ok(false);
        };
        let usage = s
            .usage
            .get(plugin)
            .copied()
            .unwrap_or_default()
            .after_delete(key, old.len());
        s.usage.insert(plugin.to_owned(), usage);
        Ok(true)
    }

    fn list_keys(
        &self,
        plugin: &str,
        owner: &KeyOwner,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let s = self.lock();
        let start = match start_after {
            Some(after) if after >= prefix => after,
            _ => prefix,
        };
        Ok(s.kv
            .range(kv(plugin, owner, start)..)
            .map(|((p, o, k), _)| (p, o, k))
            .take_while(|(p, o, _)| p.as_str() == plugin && *o == owner)
            .filter(|(_, _, k)| start_after.is_none_or(|after| k.as_str() > after))
            .take_while(|(_, _, k)| k.starts_with(prefix))
            .take(limit)
            .map(|(_, _, k)| k.clone())
            .collect())
    }

    fn put_blob(
        &self,
        plugin: &str,
        hash: &[u8; 32],
        data: &[u8],
        quota: Quota,
    ) -> Result<(), WorkspaceError> {
        let mut s = self.lock();
        let k = (plugin.to_owned(), *hash);
        if s.blobs.contains_key(&k) {
            return Ok(());
        }
        let usage = s
            .usage
            .get(plugin)
            .copied()
            .unwrap_or_default()
            .after_blob(data.len(), quota)?;
        s.blobs.insert(k, data.to_vec());
        s.usage.insert(plugin.to_owned(), usage);
        Ok(())
    }

    fn get_blob(&self, plugin: &str, hash: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().blobs.get(&(plugin.to_owned(), *hash)).cloned())
    }

    fn usage(&self, plugin: &str) -> Result<Usage> {
        Ok(self.lock().usage.get(plugin).copied().unwrap_or_default())
    }

    fn plugins(&self) -> Result<Vec<(String, Usage)>> {
        Ok(self
            .lock()
            .usage
            .iter()
            .filter(|(_, u)| **u != Usage::default())
            .map(|(p, u)| (p.clone(), *u))
            .collect())
    }

    fn entries(&self, plugin: &str) -> Result<Vec<KeyEntry>> {
        Ok(self
            .lock()
            .kv
            .iter()
            .filter(|((p, _, _), _)| p == plugin)
            .map(|((_, owner, key), value)| KeyEntry {
                owner: owner.clone(),
                key: key.clone(),
                size: value.len(),
            })
            .collect())
    }

    fn blobs(&self, plugin: &str) -> Result<Vec<([u8; 32], usize)>> {
        Ok(self
            .lock()
            .blobs
            .iter()
            .filter(|((p, _), _)| p == plugin)
            .map(|((_, hash), data)| (*hash, data.len()))
            .collect())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

impl AuditStore for MemoryStore {
    fn head(&self, origin: &str) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self
            .lock()
            .chains
            .get(origin)
            .and_then(|c| c.records.last_key_value())
            .map(|(seq, bytes)| (*seq, bytes.clone())))
    }

    fn write(&self, origin: &str, writes: &[AuditWrite]) -> Result<()> {
        let mut s = self.lock();
        let chain = s.chains.entry(origin.to_owned()).or_default();
        for write in writes {
            let head = chain.records.last_key_value().map_or(0, |(seq, _)| *seq);
            if write.seq != head + 1 {
                return Err(StoreError::new(
                    ErrorKind::Conflict,
                    format!(
                        "audit chain {origin:?}: record {} does not follow the stored head {head}",
                        write.seq
                    ),
                ));
            }
            chain.records.insert(write.seq, write.bytes.clone());
            match &write.marker {
                Marker::None => {}
                Marker::Open(call) => {
                    chain.open.insert(call.clone(), write.seq);
                }
                Marker::Close(call) => {
                    chain.open.remove(call);
                }
            }
        }
        Ok(())
    }

    fn record(&self, origin: &str, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .lock()
            .chains
            .get(origin)
            .and_then(|c| c.records.get(&seq).cloned()))
    }

    fn records(&self, origin: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(self
            .lock()
            .chains
            .get(origin)
            .map(|c| {
                c.records
                    .range(from..)
                    .take(limit)
                    .map(|(seq, b)| (*seq, b.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn put_checkpoint(&self, origin: &str, seq: u64, bytes: &[u8]) -> Result<()> {
        self.lock()
            .chains
            .entry(origin.to_owned())
            .or_default()
            .checkpoints
            .insert(seq, bytes.to_vec());
        Ok(())
    }

    fn last_checkpoint(&self, origin: &str) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self.lock().chains.get(origin).and_then(|c| {
            c.checkpoints
                .last_key_value()
                .map(|(seq, b)| (*seq, b.clone()))
        }))
    }

    fn checkpoints(&self, origin: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(self
            .lock()
            .chains
            .get(origin)
            .map(|c| {
                c.checkpoints
                    .iter()
                    .map(|(seq, b)| (*seq, b.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn open_calls(&self, origin: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .lock()
            .chains
            .get(origin)
            .map(|c| c.open.iter().map(|(id, seq)| (id.clone(), *seq)).collect())
            .unwrap_or_default())
    }

    fn clear_open_call(&self, origin: &str, call_id: &str) -> Result<()> {
        if let Some(chain) = self.lock().chains.get_mut(origin) {
            chain.open.remove(call_id);
        }
        Ok(())
    }

    fn origins(&self) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .chains
            .iter()
            .filter(|(_, c)| !c.records.is_empty())
            .map(|(o, _)| o.clone())
            .collect())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

impl ModeStore for MemoryStore {
    fn get(&self) -> Result<Option<Mode>> {
        Ok(self.lock().mode.clone())
    }

    fn set(&self, mode: &Mode) -> Result<()> {
        self.lock().mode = Some(mode.clone());
        Ok(())
    }
}

impl PluginStore for MemoryStore {
    fn put_artifact(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        // Replaced only if what is stored differs (damaged, by the trait's
        // contract: the caller hashed `bytes`).
        let mut store = self.lock();
        if store.artifacts.get(digest).map(Vec::as_slice) != Some(bytes) {
            store.artifacts.insert(digest.to_owned(), bytes.to_vec());
        }
        Ok(())
    }

    fn artifact(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().artifacts.get(digest).cloned())
    }

    fn insert_version(&self, version: &InstalledVersion) -> Result<bool> {
        let mut s = self.lock();
        let key = (version.plugin.clone(), version.version.clone());
        if s.versions.contains_key(&key) {
            return Ok(false);
        }
        s.versions.insert(key, version.clone());
        Ok(true)
    }

    fn version(&self, plugin: &str, version: &str) -> Result<Option<InstalledVersion>> {
        Ok(self
            .lock()
            .versions
            .get(&(plugin.to_owned(), version.to_owned()))
            .cloned())
    }

    fn versions(&self, plugin: Option<&str>) -> Result<Vec<InstalledVersion>> {
        Ok(self
            .lock()
            .versions
            .values()
            .filter(|v| plugin.is_none_or(|p| v.plugin == p))
            .cloned()
            .collect())
    }

    fn version_names(&self, plugin: Option<&str>) -> Result<Vec<(String, String)>> {
        Ok(self
            .lock()
            .versions
            .keys()
            .filter(|(p, _)| plugin.is_none_or(|wanted| p == wanted))
            .cloned()
            .collect())
    }

    fn rollout(&self, plugin: &str) -> Result<Option<Versioned<Rollout>>> {
        Ok(self.lock().rollouts.get(plugin).map(|(r, v)| Versioned {
            value: r.clone(),
            version: Version(*v),
        }))
    }

    fn insert_rollout(&self, rollout: &Rollout) -> Result<bool> {
        let mut s = self.lock();
        if s.rollouts.contains_key(&rollout.plugin) {
            return Ok(false);
        }
        let v = s.version();
        s.rollouts
            .insert(rollout.plugin.clone(), (rollout.clone(), v));
        Ok(true)
    }

    fn replace_rollout(&self, current: Version, next: &Rollout) -> Result<bool> {
        let mut s = self.lock();
        match s.rollouts.get(&next.plugin) {
            Some((_, v)) if *v == current.0 => {
                let v = s.version();
                s.rollouts.insert(next.plugin.clone(), (next.clone(), v));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn rollouts(&self) -> Result<Vec<Versioned<Rollout>>> {
        Ok(self
            .lock()
            .rollouts
            .values()
            .map(|(r, v)| Versioned {
                value: r.clone(),
                version: Version(*v),
            })
            .collect())
    }

    fn rollout_names(&self) -> Result<Vec<String>> {
        Ok(self.lock().rollouts.keys().cloned().collect())
    }
}
