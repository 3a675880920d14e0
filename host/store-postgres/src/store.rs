//! Every trait of the seam on PostgreSQL.
//!
//! What each operation relies on (see also docs/scaling.md):
//! - ledger: one conditional statement per compare-and-swap (`UPDATE …
//!   WHERE version = $n`, `INSERT … ON CONFLICT DO NOTHING`). Under READ
//!   COMMITTED a second writer waits for the first's row lock, then
//!   re-checks the condition against the committed row: one wins.
//! - workspace: a transaction that first locks the plugin's usage row
//!   (`INSERT … ON CONFLICT DO UPDATE … RETURNING`), so every write of a
//!   plugin, on every host, runs one at a time with the usage it read; the
//!   quota check, the write and the new usage commit together.
//! - rate limits: a transaction that locks every bucket it takes from, in
//!   scope order (no deadlock between two calls), and writes them all or
//!   none.
//! - audit: a transaction whose head compare-and-swap on the origin's
//!   chain row admits exactly one writer of each seq; records, markers and
//!   the head commit together.
//!
//! Statements that do not depend on each other's results are pipelined:
//! sent together, answered together, one round trip. Joins poll in
//! argument order (futures-util), and tokio-postgres sends a statement
//! when first polled, so the server runs them in the order written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use airlock_store::{
    Approval, ApprovalListing, ApprovalState, AuditStore, AuditWrite, Bucket, ErrorKind,
    IdempotencyEntry, InstalledVersion, KeyEntry, KeyHead, KeyHeads, KeyListing, KeyOwner, KeyRef,
    LedgerStore, Marker, Mode, ModeStore, PluginStore, Quota, Rate, RateLimitStore, Result,
    Rollout, StoreError, Usage, Version, Versioned, WorkspaceError, WorkspaceStore,
};
use futures_util::future::{join_all, try_join};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::db::{Db, Op, ctx, pg_error, retrying};

type Params<'a> = [&'a (dyn ToSql + Sync)];

/// The backend: one pool on one database, every store of the seam.
#[derive(Debug)]
pub(crate) struct PostgresStore {
    db: Db,
    /// The sessions holding this handle's claims on audit origins
    /// ([`AuditStore::claim_origin`]): an advisory lock lives as long as
    /// its session, so a process that dies lets its origin go at once.
    claims: std::sync::Mutex<Vec<Claim>>,
}

/// How often a write to a claimed origin asks the server whether the
/// session holding the claim is still there (a closed socket is noticed
/// at once, without asking).
const CLAIM_CHECK: Duration = Duration::from_secs(2);

/// How long a claim's session may go without a sign of its client
/// before the server ends it (its TCP keepalives and `tcp_user_timeout`,
/// on a TCP connection): a session the network cut off, which this
/// process has given up, does not hold the origin for the kernel's two
/// hours.
const CLAIM_KEEPALIVE: &str = "SELECT set_config('tcp_keepalives_idle', '10', false), \
     set_config('tcp_keepalives_interval', '5', false), \
     set_config('tcp_keepalives_count', '4', false), \
     set_config('tcp_user_timeout', '30000', false)";

/// One claimed origin: the session holding its advisory lock (`None`
/// once it was lost and not taken again), which server process that is,
/// and when that session last answered.
#[derive(Debug)]
struct Claim {
    origin: String,
    session: Option<Arc<deadpool_postgres::ClientWrapper>>,
    backend: Option<Backend>,
    checked: std::time::Instant,
}

/// A server process, named so that it cannot be mistaken for a later one
/// given the same pid: its pid and the microsecond it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backend {
    pid: i32,
    started_us: i64,
}

/// A session holding an origin's advisory lock, and its server process.
struct Claimed {
    session: deadpool_postgres::ClientWrapper,
    backend: Option<Backend>,
}

impl PostgresStore {
    /// Idempotency keys' heads: every one, or those `which` selects (and
    /// the rows whose head must be read from their body: the callers
    /// check each head again). The selection is made in the database: a
    /// day of keys of every host is read only by `keys`.
    fn key_listing(&self, which: Option<KeyHeads>) -> Result<KeyListing> {
        // The head's columns where they were written with the row's
        // version; else (a row from before them, or last written by an
        // older host) its body.
        const ALL: &str = "SELECT version, key, created_ms, in_flight, in_flight_host, \
                           CASE WHEN head_version = version THEN NULL ELSE body END \
                           FROM airlock_keys";
        const IN_FLIGHT: &str = "SELECT version, key, created_ms, in_flight, in_flight_host, \
                                 CASE WHEN head_version = version THEN NULL ELSE body END \
                                 FROM airlock_keys \
                                 WHERE head_version IS DISTINCT FROM version OR in_flight IS NOT FALSE";
        const FINISHED_BEFORE: &str = "SELECT version, key, created_ms, in_flight, in_flight_host, \
                                       CASE WHEN head_version = version THEN NULL ELSE body END \
                                       FROM airlock_keys \
                                       WHERE head_version IS DISTINCT FROM version \
                                       OR in_flight IS NULL OR created_ms IS NULL \
                                       OR (NOT in_flight AND created_ms < $1)";
        self.db.run(|s| async move {
            let rows = match which {
                None => s.query("listing idempotency keys", ALL, &[]).await?,
                Some(KeyHeads::InFlight) => {
                    s.query("listing idempotency keys in flight", IN_FLIGHT, &[])
                        .await?
                }
                Some(KeyHeads::FinishedBefore(ms)) => {
                    let before = signed(ms);
                    s.query(
                        "listing finished idempotency keys",
                        FINISHED_BEFORE,
                        &[&before],
                    )
                    .await?
                }
            };
            let mut out = KeyListing::default();
            for row in &rows {
                let version: i64 = get(row, 0)?;
                let raw: &[u8] = get(row, 1)?;
                let Some(key) = KeyRef::decode(raw) else {
                    out.unreadable.push(format!(
                        "stored idempotency key {} is unreadable",
                        hex::encode(raw)
                    ));
                    continue;
                };
                let created_ms: Option<i64> = get(row, 2)?;
                let in_flight: Option<bool> = get(row, 3)?;
                let host: Option<String> = get(row, 4)?;
                let body: Option<&str> = get(row, 5)?;
                let head = match (created_ms, in_flight, body) {
                    (_, _, Some(body)) => KeyHead::from_json(body.as_bytes())
                        .map_err(|e| StoreError::corrupt(e.to_string())),
                    (Some(created_ms), Some(in_flight), None) => {
                        unsigned(created_ms, "a key's creation time").map(|created_ms| KeyHead {
                            created_ms,
                            in_flight: in_flight.then_some(host),
                        })
                    }
                    _ => Err(StoreError::corrupt(
                        "its head columns are incomplete".to_owned(),
                    )),
                };
                match head {
                    Ok(head) => out.keys.push((
                        key,
                        Versioned {
                            value: head,
                            version: Version(version as u64),
                        },
                    )),
                    Err(e) => out.unreadable.push(format!(
                        "the stored entry of idempotency key {:?} of {}/{} is unreadable: {e}",
                        key.key, key.plugin, key.tool
                    )),
                }
            }
            Ok(out)
        })
    }

    pub(crate) fn new(db: Db) -> PostgresStore {
        PostgresStore {
            db,
            claims: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn description(&self) -> &str {
        &self.db.shared.description
    }
}

// ------------------------------------------------------------------ helpers

impl Op {
    async fn execute(&self, what: &str, sql: &str, params: &Params<'_>) -> Result<u64> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(ctx(what))?;
        client.execute(&statement, params).await.map_err(ctx(what))
    }

    async fn query(&self, what: &str, sql: &str, params: &Params<'_>) -> Result<Vec<Row>> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(ctx(what))?;
        client.query(&statement, params).await.map_err(ctx(what))
    }

    async fn query_opt(&self, what: &str, sql: &str, params: &Params<'_>) -> Result<Option<Row>> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(ctx(what))?;
        client
            .query_opt(&statement, params)
            .await
            .map_err(ctx(what))
    }
}

/// A column of `row`. A column of another type than this version of
/// Airlock wrote is the schema's ([`ErrorKind::Incompatible`]: every row
/// of the table has it); a value that cannot be read as its type (a NULL
/// where none is written) is that row's ([`ErrorKind::Corrupt`]).
fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, index: usize) -> Result<T> {
    row.try_get(index).map_err(|e| {
        let wrong_type = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<tokio_postgres::types::WrongType>());
        if wrong_type {
            let column = row.columns().get(index).map_or("?", |c| c.name());
            StoreError::with_source(
                ErrorKind::Incompatible,
                format!("column `{column}` is not of the type this version of Airlock wrote"),
                e,
            )
        } else {
            StoreError::with_source(ErrorKind::Corrupt, "a column's value cannot be read", e)
        }
    })
}

/// A stored count or time, which is never negative.
fn unsigned(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| StoreError::corrupt(format!("{what} is negative: {value}")))
}

/// A count or time to store (saturating: nothing real reaches 2^63).
fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A new record's version: random, so a record removed and stored again
/// never matches a version read before (no ABA). 62 bits leave room for
/// `version + 1` on every later change.
fn new_version() -> Result<i64> {
    let random = getrandom::u64().map_err(|e| {
        StoreError::new(
            ErrorKind::Unavailable,
            format!("no randomness for a record version: {e}"),
        )
    })?;
    Ok(signed(random >> 2))
}

/// PostgreSQL's `text` cannot hold NUL; names the host chooses (origins,
/// plugins, call ids, approval ids) never contain it.
fn text<'a>(value: &'a str, what: &str) -> Result<&'a str> {
    if value.contains('\0') {
        return Err(StoreError::new(
            ErrorKind::Config,
            format!("{what} {value:?} contains a NUL character, which PostgreSQL text cannot hold"),
        ));
    }
    Ok(value)
}

fn to_json<T: serde::Serialize>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value).map_err(|e| {
        StoreError::with_source(ErrorKind::Corrupt, format!("cannot encode {what}"), e)
    })
}

fn from_json<T: serde::de::DeserializeOwned>(body: &str, what: &str) -> Result<T> {
    serde_json::from_str(body).map_err(|e| {
        StoreError::with_source(
            ErrorKind::Corrupt,
            format!("stored {what} is unreadable"),
            e,
        )
    })
}

fn versioned<T: serde::de::DeserializeOwned>(row: &Row, what: &str) -> Result<Versioned<T>> {
    let version: i64 = get(row, 0)?;
    let body: &str = get(row, 1)?;
    Ok(Versioned {
        value: from_json(body, what)?,
        version: Version(version as u64),
    })
}

/// A rollout row (version, body) of `plugin`'s: a body naming another
/// plugin (a row edited by hand) would route `plugin`'s calls by it.
fn rollout_of(row: &Row, plugin: &str) -> Result<Versioned<Rollout>> {
    let rollout: Versioned<Rollout> = versioned(row, "rollout")?;
    if rollout.value.plugin != plugin {
        return Err(StoreError::corrupt(format!(
            "the rollout row of `{plugin}` holds the rollout of `{}`",
            rollout.value.plugin
        )));
    }
    Ok(rollout)
}

/// An installed version's row (`plugin`, `version`, `body`): its body
/// must be of the plugin and version the row is keyed by, as a rollout's
/// (a row edited by hand is refused, not served as another's).
fn installed_of(row: &Row) -> Result<InstalledVersion> {
    let (plugin, version): (String, String) = (get(row, 0)?, get(row, 1)?);
    let installed: InstalledVersion = from_json(get(row, 2)?, "installed version")?;
    if installed.plugin != plugin || installed.version != version {
        return Err(StoreError::corrupt(format!(
            "the installed-version row of `{plugin}` {version} holds `{}` {}",
            installed.plugin, installed.version
        )));
    }
    Ok(installed)
}

/// The columns an idempotency entry's head is listed by (schema version 3).
fn head_columns(entry: &IdempotencyEntry) -> Result<(i64, bool, Option<String>)> {
    let head = KeyHead::of(entry);
    let created_ms = i64::try_from(head.created_ms).map_err(|_| {
        StoreError::corrupt(format!("creation time {} out of range", head.created_ms))
    })?;
    Ok((
        created_ms,
        head.in_flight.is_some(),
        head.in_flight.flatten(),
    ))
}

// ------------------------------------------------------------------- ledger

impl LedgerStore for PostgresStore {
    fn insert_approval(&self, approval: &Approval) -> Result<bool> {
        let id = text(&approval.id, "approval id")?.to_owned();
        let state = approval.state.as_str();
        let body = to_json(approval, "approval")?;
        let version = new_version()?;
        self.db.run(|s| async move {
            let n = s
                .execute(
                    &format!("storing approval {id}"),
                    "INSERT INTO airlock_approvals (id, state, version, body) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (id) DO NOTHING",
                    &[&id, &state, &version, &body],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn approval(&self, id: &str) -> Result<Option<Versioned<Approval>>> {
        if id.contains('\0') {
            return Ok(None);
        }
        let id = id.to_owned();
        self.db.run(|s| async move {
            let row = s
                .query_opt(
                    &format!("reading approval {id}"),
                    "SELECT version, body FROM airlock_approvals WHERE id = $1",
                    &[&id],
                )
                .await?;
            row.map(|r| versioned(&r, "approval")).transpose()
        })
    }

    fn replace_approval(&self, current: Version, next: &Approval) -> Result<bool> {
        if next.id.contains('\0') {
            return Ok(false);
        }
        let id = next.id.clone();
        let state = next.state.as_str();
        let body = to_json(next, "approval")?;
        let current = current.0 as i64;
        self.db.run(|s| async move {
            let n = s
                .execute(
                    &format!("updating approval {id}"),
                    "UPDATE airlock_approvals SET state = $2, body = $3, version = version + 1 \
                     WHERE id = $1 AND version = $4",
                    &[&id, &state, &body, &current],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn remove_approval(&self, id: &str, current: Version) -> Result<bool> {
        if id.contains('\0') {
            return Ok(false);
        }
        let id = id.to_owned();
        let current = current.0 as i64;
        self.db.run(|s| async move {
            let n = s
                .execute(
                    &format!("removing approval {id}"),
                    "DELETE FROM airlock_approvals WHERE id = $1 AND version = $2",
                    &[&id, &current],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn approvals(&self, state: Option<ApprovalState>) -> Result<ApprovalListing> {
        self.db.run(|s| async move {
            let rows = match state {
                None => {
                    s.query(
                        "listing approvals",
                        "SELECT version, body, id FROM airlock_approvals",
                        &[],
                    )
                    .await?
                }
                Some(state) => {
                    s.query(
                        "listing approvals",
                        "SELECT version, body, id FROM airlock_approvals WHERE state = $1",
                        &[&state.as_str()],
                    )
                    .await?
                }
            };
            let mut out = ApprovalListing::default();
            for row in &rows {
                match versioned(row, "approval") {
                    Ok(approval) => out.approvals.push(approval),
                    Err(e) => {
                        let id = get::<String>(row, 2).unwrap_or_default();
                        out.unreadable.push(format!(
                            "approval {:?}: {e}",
                            &id[..id.floor_char_boundary(80)]
                        ));
                    }
                }
            }
            Ok(out)
        })
    }

    fn key(&self, key: &KeyRef) -> Result<Option<Versioned<IdempotencyEntry>>> {
        let k = key.encode();
        self.db.run(|s| async move {
            let row = s
                .query_opt(
                    "reading an idempotency key",
                    "SELECT version, body FROM airlock_keys WHERE key = $1",
                    &[&k],
                )
                .await?;
            row.map(|r| versioned(&r, "idempotency entry")).transpose()
        })
    }

    fn insert_key(&self, key: &KeyRef, entry: &IdempotencyEntry) -> Result<bool> {
        let k = key.encode();
        let body = to_json(entry, "idempotency entry")?;
        let (created_ms, in_flight, host) = head_columns(entry)?;
        let version = new_version()?;
        self.db.run(|s| async move {
            let n = s
                .execute(
                    "storing an idempotency key",
                    "INSERT INTO airlock_keys \
                     (key, version, body, head_version, created_ms, in_flight, in_flight_host) \
                     VALUES ($1, $2, $3, $2, $4, $5, $6) ON CONFLICT (key) DO NOTHING",
                    &[&k, &version, &body, &created_ms, &in_flight, &host],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn replace_key(&self, key: &KeyRef, current: Version, next: &IdempotencyEntry) -> Result<bool> {
        let k = key.encode();
        let body = to_json(next, "idempotency entry")?;
        let (created_ms, in_flight, host) = head_columns(next)?;
        let current = current.0 as i64;
        self.db.run(|s| async move {
            let n = s
                .execute(
                    "updating an idempotency key",
                    "UPDATE airlock_keys SET body = $2, version = version + 1, \
                     head_version = version + 1, created_ms = $4, in_flight = $5, \
                     in_flight_host = $6 WHERE key = $1 AND version = $3",
                    &[&k, &body, &current, &created_ms, &in_flight, &host],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn remove_key(&self, key: &KeyRef, current: Version) -> Result<bool> {
        let k = key.encode();
        let current = current.0 as i64;
        self.db.run(|s| async move {
            let n = s
                .execute(
                    "removing an idempotency key",
                    "DELETE FROM airlock_keys WHERE key = $1 AND version = $2",
                    &[&k, &current],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn keys(&self) -> Result<KeyListing> {
        self.key_listing(None)
    }

    fn key_heads(&self, which: KeyHeads) -> Result<KeyListing> {
        self.key_listing(Some(which))
    }

    fn meta(&self, name: &str) -> Result<Option<String>> {
        if name.contains('\0') {
            return Ok(None);
        }
        let name = name.to_owned();
        self.db.run(|s| async move {
            let row = s
                .query_opt(
                    &format!("reading {name}"),
                    "SELECT value FROM airlock_meta WHERE name = $1",
                    &[&name],
                )
                .await?;
            row.map(|r| get::<String>(&r, 0)).transpose()
        })
    }

    fn set_meta(&self, name: &str, value: &str) -> Result<()> {
        let name = text(name, "meta name")?.to_owned();
        let value = text(value, "meta value")?.to_owned();
        self.db.run(|s| async move {
            s.execute(
                &format!("storing {name}"),
                "INSERT INTO airlock_meta (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&name, &value],
            )
            .await?;
            Ok(())
        })
    }

    fn swap_meta(&self, name: &str, current: Option<&str>, next: &str) -> Result<bool> {
        let name = text(name, "meta name")?.to_owned();
        let current = current.map(|c| text(c, "meta value")).transpose()?;
        let current = current.map(str::to_owned);
        let next = text(next, "meta value")?.to_owned();
        self.db.run(|s| async move {
            let changed = match &current {
                None => {
                    s.execute(
                        &format!("storing {name}"),
                        "INSERT INTO airlock_meta (name, value) VALUES ($1, $2) \
                         ON CONFLICT (name) DO NOTHING",
                        &[&name, &next],
                    )
                    .await?
                }
                Some(current) => {
                    s.execute(
                        &format!("storing {name}"),
                        "UPDATE airlock_meta SET value = $3 WHERE name = $1 AND value = $2",
                        &[&name, current, &next],
                    )
                    .await?
                }
            };
            Ok(changed == 1)
        })
    }
}

// ---------------------------------------------------------------- workspace

/// Lock the plugin's usage row (creating it empty) and read it. Every
/// workspace write runs this first in its transaction.
const LOCK_USAGE: &str = "INSERT INTO airlock_usage (plugin, keys, blobs, bytes) VALUES ($1, 0, 0, 0) \
     ON CONFLICT (plugin) DO UPDATE SET plugin = excluded.plugin \
     RETURNING keys, blobs, bytes";
const WRITE_USAGE: &str =
    "UPDATE airlock_usage SET keys = $2, blobs = $3, bytes = $4 WHERE plugin = $1";

fn usage_of(row: &Row) -> Result<Usage> {
    Ok(Usage {
        keys: unsigned(get(row, 0)?, "stored key count")?,
        blobs: unsigned(get(row, 1)?, "stored blob count")?,
        bytes: unsigned(get(row, 2)?, "stored byte count")?,
    })
}

fn size_of(row: &Row) -> Result<usize> {
    let n: i32 = get(row, 0)?;
    usize::try_from(n).map_err(|_| StoreError::corrupt(format!("stored size is negative: {n}")))
}

impl WorkspaceStore for PostgresStore {
    fn get(&self, plugin: &str, owner: &KeyOwner, key: &str) -> Result<Option<Vec<u8>>> {
        if plugin.contains('\0') {
            return Ok(None);
        }
        let (plugin, owner, key) = (plugin.to_owned(), owner.encode(), key.as_bytes().to_vec());
        self.db.run(|s| async move {
            let row = s
                .query_opt(
                    "reading a workspace key",
                    "SELECT value FROM airlock_kv WHERE plugin = $1 AND owner = $2 AND key = $3",
                    &[&plugin, &owner.as_bytes(), &key],
                )
                .await?;
            row.map(|r| get::<Vec<u8>>(&r, 0)).transpose()
        })
    }

    fn set(
        &self,
        plugin: &str,
        owner: &KeyOwner,
        key: &str,
        value: &[u8],
        quota: Quota,
    ) -> Result<(), WorkspaceError> {
        let plugin = text(plugin, "plugin")?.to_owned();
        let owner = owner.encode().into_bytes();
        let key = key.to_owned();
        let value = value.to_vec();
        self.db
            .run(|s| async move {
                retrying!(async {
                    let what = "writing a workspace key";
                    let mut client = s.client().await?;
                    let tx = client.transaction().await.map_err(ctx(what))?;
                    let lock = tx.prepare_cached(LOCK_USAGE).await.map_err(ctx(what))?;
                    let old = tx
                        .prepare_cached(
                            "SELECT octet_length(value) FROM airlock_kv \
                             WHERE plugin = $1 AND owner = $2 AND key = $3",
                        )
                        .await
                        .map_err(ctx(what))?;
                    let put = tx
                        .prepare_cached(
                            "INSERT INTO airlock_kv (plugin, owner, key, value) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (plugin, owner, key) DO UPDATE SET value = excluded.value",
                        )
                        .await
                        .map_err(ctx(what))?;
                    let write_usage = tx.prepare_cached(WRITE_USAGE).await.map_err(ctx(what))?;
                    // The old value is read after the lock is held.
                    let (usage, old) = try_join(
                        tx.query_one(&lock, &[&plugin]),
                        tx.query_opt(&old, &[&plugin, &owner, &key.as_bytes()]),
                    )
                    .await
                    .map_err(ctx(what))?;
                    let old = old.as_ref().map(size_of).transpose()?;
                    let usage = match usage_of(&usage)?.after_set(&key, old, value.len(), quota) {
                        Ok(usage) => usage,
                        // Dropping the transaction rolls it back.
                        Err(refused) => return Ok(Err(refused)),
                    };
                    try_join(
                        tx.execute(&put, &[&plugin, &owner, &key.as_bytes(), &value]),
                        tx.execute(
                            &write_usage,
                            &[
                                &plugin,
                                &signed(usage.keys),
                                &signed(usage.blobs),
                                &signed(usage.bytes),
                            ],
                        ),
                    )
                    .await
                    .map_err(ctx(what))?;
                    tx.commit().await.map_err(ctx(what))?;
                    Ok(Ok(()))
                })
            })
            .map_err(WorkspaceError::Unavailable)?
    }

    fn delete(&self, plugin: &str, owner: &KeyOwner, key: &str) -> Result<bool> {
        if plugin.contains('\0') {
            return Ok(false);
        }
        let (plugin, owner, key) = (plugin.to_owned(), owner.encode(), key.to_owned());
        self.db.run(|s| async move {
            retrying!(async {
                let what = "deleting a workspace key";
                let mut client = s.client().await?;
                let tx = client.transaction().await.map_err(ctx(what))?;
                let lock = tx
                    .prepare_cached(
                        "SELECT keys, blobs, bytes FROM airlock_usage WHERE plugin = $1 FOR UPDATE",
                    )
                    .await
                    .map_err(ctx(what))?;
                let remove = tx
                    .prepare_cached(
                        "DELETE FROM airlock_kv WHERE plugin = $1 AND owner = $2 AND key = $3 \
                         RETURNING octet_length(value)",
                    )
                    .await
                    .map_err(ctx(what))?;
                let write_usage = tx.prepare_cached(WRITE_USAGE).await.map_err(ctx(what))?;
                // The key is removed after the usage row is locked.
                let (usage, removed) = try_join(
                    tx.query_opt(&lock, &[&plugin]),
                    tx.query_opt(&remove, &[&plugin, &owner.as_bytes(), &key.as_bytes()]),
                )
                .await
                .map_err(ctx(what))?;
                let Some(removed) = removed else {
                    return Ok(false);
                };
                let usage = usage
                    .as_ref()
                    .map(usage_of)
                    .transpose()?
                    .unwrap_or_default()
                    .after_delete(&key, size_of(&removed)?);
                tx.execute(
                    &write_usage,
                    &[
                        &plugin,
                        &signed(usage.keys),
                        &signed(usage.blobs),
                        &signed(usage.bytes),
                    ],
                )
                .await
                .map_err(ctx(what))?;
                tx.commit().await.map_err(ctx(what))?;
                Ok(true)
            })
        })
    }

    fn list_keys(
        &self,
        plugin: &str,
        owner: &KeyOwner,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        if plugin.contains('\0') || limit == 0 {
            return Ok(Vec::new());
        }
        let plugin = plugin.to_owned();
        let owner = owner.encode().into_bytes();
        let from = prefix.as_bytes().to_vec();
        let below = prefix_end(prefix.as_bytes());
        let after = start_after.map(|a| a.as_bytes().to_vec());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db.run(|s| async move {
            let rows = s
                .query(
                    "listing workspace keys",
                    "SELECT key FROM airlock_kv WHERE plugin = $1 AND owner = $2 AND key >= $3 \
                     AND ($4::bytea IS NULL OR key < $4) AND ($5::bytea IS NULL OR key > $5) \
                     ORDER BY key LIMIT $6",
                    &[&plugin, &owner, &from, &below, &after, &limit],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let raw: Vec<u8> = get(r, 0)?;
                    String::from_utf8(raw)
                        .map_err(|_| StoreError::corrupt("a stored workspace key is not UTF-8"))
                })
                .collect()
        })
    }

    fn put_blob(
        &self,
        plugin: &str,
        hash: &[u8; 32],
        data: &[u8],
        quota: Quota,
    ) -> Result<(), WorkspaceError> {
        let plugin = text(plugin, "plugin")?.to_owned();
        let hash = hash.to_vec();
        let data = data.to_vec();
        self.db
            .run(|s| async move {
                retrying!(async {
                    let what = "storing a workspace blob";
                    let mut client = s.client().await?;
                    let tx = client.transaction().await.map_err(ctx(what))?;
                    let lock = tx.prepare_cached(LOCK_USAGE).await.map_err(ctx(what))?;
                    let exists = tx
                        .prepare_cached(
                            "SELECT 1 FROM airlock_blobs WHERE plugin = $1 AND hash = $2",
                        )
                        .await
                        .map_err(ctx(what))?;
                    let put = tx
                        .prepare_cached(
                            "INSERT INTO airlock_blobs (plugin, hash, data) VALUES ($1, $2, $3)",
                        )
                        .await
                        .map_err(ctx(what))?;
                    let write_usage = tx.prepare_cached(WRITE_USAGE).await.map_err(ctx(what))?;
                    let (usage, exists) = try_join(
                        tx.query_one(&lock, &[&plugin]),
                        tx.query_opt(&exists, &[&plugin, &hash]),
                    )
                    .await
                    .map_err(ctx(what))?;
                    if exists.is_some() {
                        return Ok(Ok(()));
                    }
                    let usage = match usage_of(&usage)?.after_blob(data.len(), quota) {
                        Ok(usage) => usage,
                        Err(refused) => return Ok(Err(refused)),
                    };
                    try_join(
                        tx.execute(&put, &[&plugin, &hash, &data]),
                        tx.execute(
                            &write_usage,
                            &[
                                &plugin,
                                &signed(usage.keys),
                                &signed(usage.blobs),
                                &signed(usage.bytes),
                            ],
                        ),
                    )
                    .await
                    .map_err(ctx(what))?;
                    tx.commit().await.map_err(ctx(what))?;
                    Ok(Ok(()))
                })
            })
            .map_err(WorkspaceError::Unavailable)?
    }

    fn get_blob(&self, plugin: &str, hash: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        if plugin.contains('\0') {
            return Ok(None);
        }
        let (plugin, hash) = (plugin.to_owned(), hash.to_vec());
        self.db.run(|s| async move {
            let row = s
                .query_opt(
                    "reading a workspace blob",
                    "SELECT data FROM airlock_blobs WHERE plugin = $1 AND hash = $2",
                    &[&plugin, &hash],
                )
                .await?;
            row.map(|r| get::<Vec<u8>>(&r, 0)).transpose()
        })
    }

    fn usage(&self, plugin: &str) -> Result<Usage> {
        if plugin.contains('\0') {
            return Ok(Usage::default());
        }
        let plugin = plugin.to_owned();
        self.db.run(|s| async move {
            let row = s
                .query_opt(
                    "reading workspace usage",
                    "SELECT keys, blobs, bytes FROM airlock_usage WHERE plugin = $1",
                    &[&plugin],
                )
                .await?;
            Ok(row.as_ref().map(usage_of).transpose()?.unwrap_or_default())
        })
    }

    fn plugins(&self) -> Result<Vec<(String, Usage)>> {
        self.db.run(|s| async move {
            let rows = s
                .query(
                    "listing workspace plugins",
                    "SELECT keys, blobs, bytes, plugin FROM airlock_usage \
                     WHERE keys > 0 OR blobs > 0 OR bytes > 0",
                    &[],
                )
                .await?;
            let mut out = rows
                .iter()
                .map(|r| Ok((get::<String>(r, 3)?, usage_of(r)?)))
                .collect::<Result<Vec<_>>>()?;
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(out)
        })
    }

    fn entries(&self, plugin: &str) -> Result<Vec<KeyEntry>> {
        if plugin.contains('\0') {
            return Ok(Vec::new());
        }
        let plugin = plugin.to_owned();
        self.db.run(|s| async move {
            let rows = s
                .query(
                    "listing workspace entries",
                    "SELECT owner, key, octet_length(value)::bigint FROM airlock_kv WHERE plugin = $1 ORDER BY owner, key",
                    &[&plugin],
                )
                .await?;
            let mut out = rows
                .iter()
                .map(|r| {
                    let owner: Vec<u8> = get(r, 0)?;
                    let owner = String::from_utf8(owner)
                        .ok()
                        .and_then(|o| KeyOwner::decode(&o))
                        .ok_or_else(|| StoreError::corrupt("a stored workspace owner is unreadable"))?;
                    let key = String::from_utf8(get(r, 1)?)
                        .map_err(|_| StoreError::corrupt("a stored workspace key is not UTF-8"))?;
                    let size: i64 = get(r, 2)?;
                    let size = usize::try_from(size)
                        .map_err(|_| StoreError::corrupt("a stored workspace value has a negative size"))?;
                    Ok(KeyEntry { owner, key, size })
                })
                .collect::<Result<Vec<_>>>()?;
            out.sort_by(|a, b| (&a.owner, &a.key).cmp(&(&b.owner, &b.key)));
            Ok(out)
        })
    }

    fn blobs(&self, plugin: &str) -> Result<Vec<([u8; 32], usize)>> {
        if plugin.contains('\0') {
            return Ok(Vec::new());
        }
        let plugin = plugin.to_owned();
        self.db.run(|s| async move {
            let rows = s
                .query(
                    "listing workspace blobs",
                    "SELECT hash, octet_length(data) FROM airlock_blobs WHERE plugin = $1 ORDER BY hash",
                    &[&plugin],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let hash: Vec<u8> = get(r, 0)?;
                    let hash: [u8; 32] = hash
                        .try_into()
                        .map_err(|_| StoreError::corrupt("a stored blob hash is not 32 bytes"))?;
                    let n: i32 = get(r, 1)?;
                    let size = usize::try_from(n)
                        .map_err(|_| StoreError::corrupt("a stored blob size is negative"))?;
                    Ok((hash, size))
                })
                .collect()
        })
    }

    fn flush(&self) -> Result<()> {
        // Every write committed before it returned.
        Ok(())
    }
}

/// The smallest byte string above every string starting with `prefix`
/// (`None`: there is none, every key from `prefix` on matches).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

// -------------------------------------------------------------- rate limits

impl RateLimitStore for PostgresStore {
    fn take(&self, buckets: &[(String, Rate)], now_ms: u64) -> Result<Option<(String, Duration)>> {
        if buckets.is_empty() {
            return Ok(None);
        }
        // One entry per scope (the first rate named wins), in byte order:
        // the order rows are locked in, the same on every host.
        let mut by_scope: BTreeMap<Vec<u8>, (String, Rate)> = BTreeMap::new();
        for (scope, rate) in buckets {
            by_scope
                .entry(scope.as_bytes().to_vec())
                .or_insert_with(|| (scope.clone(), *rate));
        }
        // Refusals name the first exhausted scope in the caller's order.
        let order: Vec<Vec<u8>> = buckets.iter().map(|(s, _)| s.as_bytes().to_vec()).collect();
        self.db.run(move |s| async move {
            retrying!(async {
                let what = "taking rate-limit tokens";
                let scopes: Vec<Vec<u8>> = by_scope.keys().cloned().collect();
                let full: Vec<f64> = by_scope.values().map(|(_, r)| f64::from(r.count)).collect();
                let now = signed(now_ms);
                let mut client = s.client().await?;
                let tx = client.transaction().await.map_err(ctx(what))?;
                let create = tx
                    .prepare_cached(
                        "INSERT INTO airlock_buckets (scope, tokens, updated_ms) \
                         SELECT t.scope, t.tokens, $3 FROM unnest($1::bytea[], $2::float8[]) AS t(scope, tokens) \
                         ORDER BY t.scope ON CONFLICT (scope) DO NOTHING",
                    )
                    .await
                    .map_err(ctx(what))?;
                let lock = tx
                    .prepare_cached(
                        "SELECT scope, tokens, updated_ms FROM airlock_buckets \
                         WHERE scope = ANY($1) ORDER BY scope FOR UPDATE",
                    )
                    .await
                    .map_err(ctx(what))?;
                let (_, rows) = try_join(
                    tx.execute(&create, &[&scopes, &full, &now]),
                    tx.query(&lock, &[&scopes]),
                )
                .await
                .map_err(ctx(what))?;
                let mut state: BTreeMap<Vec<u8>, Bucket> = BTreeMap::new();
                // A stored time refilling repaired (see `Bucket::refilled`).
                let mut repaired = false;
                for row in &rows {
                    let scope: Vec<u8> = get(row, 0)?;
                    let tokens: f64 = get(row, 1)?;
                    let updated: i64 = get(row, 2)?;
                    let Some((_, rate)) = by_scope.get(&scope) else {
                        continue;
                    };
                    // A negative time (a row edited) is damage, as one far
                    // ahead is: refilled from empty, not an error of every
                    // call in the scope.
                    let bucket = Bucket {
                        tokens,
                        updated_ms: u64::try_from(updated).unwrap_or(u64::MAX),
                    };
                    let refilled = bucket.refilled(*rate, now_ms);
                    repaired |= refilled.updated_ms < bucket.updated_ms;
                    state.insert(scope, refilled);
                }
                let mut refused = None;
                for scope in &order {
                    let (name, rate) = &by_scope[scope];
                    let Some(bucket) = state.get(scope) else {
                        return Err(StoreError::corrupt(format!(
                            "rate-limit bucket {name:?} vanished while locked"
                        )));
                    };
                    if bucket.tokens < 1.0 {
                        refused = Some((name.clone(), bucket.wait(*rate)));
                        break;
                    }
                }
                // Nothing to write for a refusal: refilling later from the
                // stored state gives the same tokens as storing the refill
                // — unless a time was repaired, which must be stored, or
                // every later take would find it damaged again, refill from
                // empty and refuse, for ever.
                if refused.is_some() && !repaired {
                    return Ok(refused);
                }
                if repaired {
                    tracing::warn!(
                        "a rate-limit bucket's stored time was negative or more than a day ahead of this host's clock (a row edited, or a clock a day wrong): refilled from empty from now"
                    );
                }
                let taken = if refused.is_some() { 0.0 } else { 1.0 };
                let tokens: Vec<f64> = state.values().map(|b| b.tokens - taken).collect();
                let times: Vec<i64> = state.values().map(|b| signed(b.updated_ms)).collect();
                let scopes: Vec<Vec<u8>> = state.keys().cloned().collect();
                let write = tx
                    .prepare_cached(
                        "UPDATE airlock_buckets SET tokens = t.tokens, updated_ms = t.updated_ms \
                         FROM unnest($1::bytea[], $2::float8[], $3::int8[]) AS t(scope, tokens, updated_ms) \
                         WHERE airlock_buckets.scope = t.scope",
                    )
                    .await
                    .map_err(ctx(what))?;
                tx.execute(&write, &[&scopes, &tokens, &times])
                    .await
                    .map_err(ctx(what))?;
                tx.commit().await.map_err(ctx(what))?;
                Ok(refused)
            })
        })
    }
}

// --------------------------------------------------------------------- mode

impl ModeStore for PostgresStore {
    fn get(&self) -> Result<Option<Mode>> {
        self.db.run(|s| async move {
            let row = s
                .query_opt(
                    "reading the host mode",
                    "SELECT body FROM airlock_mode WHERE id = 1",
                    &[],
                )
                .await?;
            row.map(|r| from_json::<Mode>(get(&r, 0)?, "host mode"))
                .transpose()
        })
    }

    fn set(&self, mode: &Mode) -> Result<()> {
        let body = to_json(mode, "host mode")?;
        self.db.run(|s| async move {
            s.execute(
                "switching the host mode",
                "INSERT INTO airlock_mode (id, body) VALUES (1, $1) \
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                &[&body],
            )
            .await?;
            Ok(())
        })
    }

    /// A switch's statement that writes nothing: refused as a switch
    /// would be by a standby server or a read-only transaction default
    /// (`cannot execute INSERT in a read-only transaction`) and by a role
    /// without the privileges a switch needs, which the default (yes)
    /// never told.
    fn check_writable(&self) -> Result<()> {
        self.db.run(|s| async move {
            s.execute(
                "checking that the host mode can be switched",
                "INSERT INTO airlock_mode (id, body) SELECT 1, '' WHERE false \
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                &[],
            )
            .await?;
            Ok(())
        })
    }
}

// -------------------------------------------------------------------- audit

/// The origins of [`AuditStore::origins`]: those of the heads, and those
/// of the records and of the checkpoints, found one index probe per origin
/// (a skip scan of each table's primary key, walked by a recursive query:
/// `DISTINCT` would read every row).
const ORIGINS: &str = "WITH RECURSIVE records(origin) AS ( \
        SELECT min(origin) FROM airlock_audit_records \
      UNION ALL \
        SELECT (SELECT min(r.origin) FROM airlock_audit_records r WHERE r.origin > records.origin) \
        FROM records WHERE records.origin IS NOT NULL \
    ), checkpoints(origin) AS ( \
        SELECT min(origin) FROM airlock_audit_checkpoints \
      UNION ALL \
        SELECT (SELECT min(c.origin) FROM airlock_audit_checkpoints c WHERE c.origin > checkpoints.origin) \
        FROM checkpoints WHERE checkpoints.origin IS NOT NULL \
    ) \
    SELECT origin FROM records WHERE origin IS NOT NULL \
    UNION SELECT origin FROM checkpoints WHERE origin IS NOT NULL \
    UNION SELECT origin FROM airlock_audit_chains";

impl AuditStore for PostgresStore {
    fn head(&self, origin: &str) -> Result<Option<(u64, Vec<u8>)>> {
        if origin.contains('\0') {
            return Ok(None);
        }
        let origin = origin.to_owned();
        self.db.run(|s| async move {
            // One statement, one snapshot: read apart, a chain's first
            // write committing between them would show records and no
            // head, a new chain taken for a damaged one.
            let row = s
                .query_opt(
                    &format!("reading the head of audit chain {origin:?}"),
                    "SELECT c.head, r.bytes, \
                       (SELECT max(seq) FROM airlock_audit_records WHERE origin = $1), \
                       (SELECT max(seq) FROM airlock_audit_checkpoints WHERE origin = $1) \
                     FROM (SELECT CAST($1 AS TEXT) AS origin) o \
                     LEFT JOIN airlock_audit_chains c ON c.origin = o.origin \
                     LEFT JOIN airlock_audit_records r ON r.origin = c.origin AND r.seq = c.head",
                    &[&origin],
                )
                .await?
                .ok_or_else(|| {
                    StoreError::corrupt(format!(
                        "audit chain {origin:?}: the server answered the head query with no row"
                    ))
                })?;
            let Some(head) = get::<Option<i64>>(&row, 0)? else {
                // No head: a new chain, unless records or checkpoints of it
                // are there (its head row deleted), which read as empty
                // would be started again over them.
                let last = |i: usize, what: &str| -> Result<Option<u64>> {
                    get::<Option<i64>>(&row, i)?
                        .map(|seq| unsigned(seq, what))
                        .transpose()
                };
                let held = match (
                    last(2, "audit record seq")?,
                    last(3, "audit checkpoint seq")?,
                ) {
                    (None, None) => return Ok(None),
                    (Some(seq), _) => format!("records up to {seq}"),
                    (None, Some(seq)) => format!("checkpoints up to {seq}"),
                };
                return Err(StoreError::new(
                    ErrorKind::Corrupt,
                    format!(
                        "audit chain {origin:?}: the database holds its {held} but no head for it (its row of airlock_audit_chains is gone); restore it from a backup"
                    ),
                ));
            };
            let head = unsigned(head, "audit head")?;
            // A chain whose head record is gone is not an empty chain: read
            // as one, the log would start again (a new redaction key, a
            // second record 1) over the records still there.
            let Some(bytes) = get::<Option<Vec<u8>>>(&row, 1)? else {
                return Err(StoreError::new(
                    ErrorKind::Corrupt,
                    format!(
                        "audit chain {origin:?}: its head is record {head}, which the database does not hold; restore the audit records from a backup"
                    ),
                ));
            };
            Ok(Some((head, bytes)))
        })
    }

    fn write(&self, origin: &str, writes: &[AuditWrite]) -> Result<()> {
        let Some(first) = writes.first() else {
            return Ok(());
        };
        let origin = text(origin, "audit origin")?.to_owned();
        let first = first.seq;
        for (i, w) in writes.iter().enumerate() {
            if w.seq != first + i as u64 {
                return Err(StoreError::new(
                    ErrorKind::Conflict,
                    format!(
                        "audit chain {origin:?}: record {} does not follow record {} of the same write",
                        w.seq,
                        first + i as u64 - 1
                    ),
                ));
            }
        }
        if first == 0 {
            return Err(StoreError::new(
                ErrorKind::Conflict,
                format!("audit chain {origin:?}: records are numbered from 1"),
            ));
        }
        let last = signed(first + writes.len() as u64 - 1);
        let seqs: Vec<i64> = writes.iter().map(|w| signed(w.seq)).collect();
        let bytes: Vec<Vec<u8>> = writes.iter().map(|w| w.bytes.clone()).collect();
        // Markers: what each call's marker is after the whole write.
        let mut markers: BTreeMap<String, Option<i64>> = BTreeMap::new();
        for w in writes {
            match &w.marker {
                Marker::None => {}
                Marker::Open(call) => {
                    markers.insert(text(call, "call id")?.to_owned(), Some(signed(w.seq)));
                }
                Marker::Close(call) => {
                    markers.insert(text(call, "call id")?.to_owned(), None);
                }
            }
        }
        let (open_ids, open_seqs): (Vec<String>, Vec<i64>) = markers
            .iter()
            .filter_map(|(c, s)| s.map(|s| (c.clone(), s)))
            .unzip();
        let closed: Vec<String> = markers
            .iter()
            .filter(|(_, s)| s.is_none())
            .map(|(c, _)| c.clone())
            .collect();
        let expected = signed(first - 1);
        self.keep_claim(&origin)?;
        self.db.run(|s| async move {
            retrying!(async {
                let what = format!("appending to audit chain {origin:?}");
                let what = what.as_str();
                let mut client = s.client().await?;
                let tx = client.transaction().await.map_err(ctx(what))?;
                // The head moves from `expected` to `last` or nothing is
                // written: one writer per seq, whatever the hosts.
                let advance = if first == 1 {
                    tx.prepare_cached(
                        "INSERT INTO airlock_audit_chains (origin, head) VALUES ($1, $2) \
                         ON CONFLICT (origin) DO NOTHING",
                    )
                    .await
                } else {
                    tx.prepare_cached(
                        "UPDATE airlock_audit_chains SET head = $3 WHERE origin = $1 AND head = $2",
                    )
                    .await
                }
                .map_err(ctx(what))?;
                let insert = tx
                    .prepare_cached(
                        "INSERT INTO airlock_audit_records (origin, seq, bytes) \
                         SELECT $1, t.seq, t.bytes FROM unnest($2::int8[], $3::bytea[]) AS t(seq, bytes)",
                    )
                    .await
                    .map_err(ctx(what))?;
                let open = tx
                    .prepare_cached(
                        "INSERT INTO airlock_audit_open (origin, call_id, seq) \
                         SELECT $1, t.call_id, t.seq FROM unnest($2::text[], $3::int8[]) AS t(call_id, seq) \
                         ON CONFLICT (origin, call_id) DO UPDATE SET seq = excluded.seq",
                    )
                    .await
                    .map_err(ctx(what))?;
                let close = tx
                    .prepare_cached(
                        "DELETE FROM airlock_audit_open WHERE origin = $1 AND call_id = ANY($2)",
                    )
                    .await
                    .map_err(ctx(what))?;
                // One flight: the head first (a second writer waits for the
                // first's row lock here), then the records and markers.
                let start: &Params<'_> = &[&origin, &last];
                let follow: &Params<'_> = &[&origin, &expected, &last];
                let records: &Params<'_> = &[&origin, &seqs, &bytes];
                let opened: &Params<'_> = &[&origin, &open_ids, &open_seqs];
                let closing: &Params<'_> = &[&origin, &closed];
                let mut flight = vec![
                    tx.execute(&advance, if first == 1 { start } else { follow }),
                    tx.execute(&insert, records),
                ];
                if !open_ids.is_empty() {
                    flight.push(tx.execute(&open, opened));
                }
                if !closed.is_empty() {
                    flight.push(tx.execute(&close, closing));
                }
                let mut results = join_all(flight).await.into_iter();
                let advanced = results.next().unwrap_or(Ok(0));
                match advanced {
                    Ok(1) => {}
                    Ok(_) => {
                        drop(tx);
                        let head = client
                            .query_opt(
                                "SELECT head FROM airlock_audit_chains WHERE origin = $1",
                                &[&origin],
                            )
                            .await
                            .map_err(ctx(what))?
                            .map(|r| get::<i64>(&r, 0))
                            .transpose()?
                            .unwrap_or(0);
                        return Err(StoreError::new(
                            ErrorKind::Conflict,
                            format!(
                                "audit chain {origin:?}: record {first} does not follow the stored head {head}"
                            ),
                        ));
                    }
                    Err(e) => return Err(pg_error(what, e)),
                }
                for result in results {
                    result.map_err(ctx(what))?;
                }
                tx.commit().await.map_err(ctx(what))?;
                Ok(())
            })
        })
    }

    fn record(&self, origin: &str, seq: u64) -> Result<Option<Vec<u8>>> {
        if origin.contains('\0') {
            return Ok(None);
        }
        let origin = origin.to_owned();
        let seq = signed(seq);
        self.db.run(|s| async move {
            let row = s
                .query_opt(
                    &format!("reading audit record {seq} of {origin:?}"),
                    "SELECT bytes FROM airlock_audit_records WHERE origin = $1 AND seq = $2",
                    &[&origin, &seq],
                )
                .await?;
            row.map(|r| get::<Vec<u8>>(&r, 0)).transpose()
        })
    }

    fn records(&self, origin: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        if origin.contains('\0') || limit == 0 {
            return Ok(Vec::new());
        }
        let origin = origin.to_owned();
        let from = signed(from);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db.run(|s| async move {
            let rows = s
                .query(
                    &format!("reading audit chain {origin:?}"),
                    "SELECT seq, bytes FROM airlock_audit_records WHERE origin = $1 AND seq >= $2 \
                     ORDER BY seq LIMIT $3",
                    &[&origin, &from, &limit],
                )
                .await?;
            rows.iter()
                .map(|r| Ok((unsigned(get(r, 0)?, "audit seq")?, get(r, 1)?)))
                .collect()
        })
    }

    fn put_checkpoint(&self, origin: &str, seq: u64, bytes: &[u8]) -> Result<()> {
        let origin = text(origin, "audit origin")?.to_owned();
        // A process that lost its origin must not replace the new
        // holder's checkpoints either.
        self.keep_claim(&origin)?;
        let seq = signed(seq);
        let bytes = bytes.to_vec();
        self.db.run(|s| async move {
            s.execute(
                &format!("storing a checkpoint of audit chain {origin:?}"),
                "INSERT INTO airlock_audit_checkpoints (origin, seq, bytes) VALUES ($1, $2, $3) \
                 ON CONFLICT (origin, seq) DO UPDATE SET bytes = excluded.bytes",
                &[&origin, &seq, &bytes],
            )
            .await?;
            Ok(())
        })
    }

    fn checkpoints(&self, origin: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        if origin.contains('\0') {
            return Ok(Vec::new());
        }
        let origin = origin.to_owned();
        self.db.run(|s| async move {
            let rows = s
                .query(
                    &format!("reading the checkpoints of audit chain {origin:?}"),
                    "SELECT seq, bytes FROM airlock_audit_checkpoints WHERE origin = $1 ORDER BY seq",
                    &[&origin],
                )
                .await?;
            rows.iter()
                .map(|r| Ok((unsigned(get(r, 0)?, "checkpoint seq")?, get(r, 1)?)))
                .collect()
        })
    }

    fn last_checkpoint(&self, origin: &str) -> Result<Option<(u64, Vec<u8>)>> {
        if origin.contains('\0') {
            return Ok(None);
        }
        let origin = origin.to_owned();
        self.db.run(|s| async move {
            let rows = s
                .query(
                    &format!("reading the last checkpoint of audit chain {origin:?}"),
                    "SELECT seq, bytes FROM airlock_audit_checkpoints WHERE origin = $1 ORDER BY seq DESC LIMIT 1",
                    &[&origin],
                )
                .await?;
            rows.first()
                .map(|r| Ok((unsigned(get(r, 0)?, "checkpoint seq")?, get(r, 1)?)))
                .transpose()
        })
    }

    fn open_calls(&self, origin: &str) -> Result<Vec<(String, u64)>> {
        if origin.contains('\0') {
            return Ok(Vec::new());
        }
        let origin = origin.to_owned();
        self.db.run(|s| async move {
            let rows = s
                .query(
                    &format!("reading the calls in flight of {origin:?}"),
                    "SELECT call_id, seq FROM airlock_audit_open WHERE origin = $1",
                    &[&origin],
                )
                .await?;
            let mut out = rows
                .iter()
                .map(|r| Ok((get::<String>(r, 0)?, unsigned(get(r, 1)?, "intent seq")?)))
                .collect::<Result<Vec<_>>>()?;
            out.sort();
            Ok(out)
        })
    }

    fn clear_open_call(&self, origin: &str, call_id: &str) -> Result<()> {
        if origin.contains('\0') || call_id.contains('\0') {
            return Ok(());
        }
        self.keep_claim(origin)?;
        let (origin, call_id) = (origin.to_owned(), call_id.to_owned());
        self.db.run(|s| async move {
            s.execute(
                &format!("clearing call {call_id} of {origin:?}"),
                "DELETE FROM airlock_audit_open WHERE origin = $1 AND call_id = $2",
                &[&origin, &call_id],
            )
            .await?;
            Ok(())
        })
    }

    /// Every origin with a head, a record or a checkpoint: a chain whose
    /// head row was deleted (by hand, or by someone hiding it) is still
    /// listed, so verifying every chain reports it rather than passing
    /// over it.
    fn origins(&self) -> Result<Vec<String>> {
        self.db.run(|s| async move {
            let rows = s.query("listing audit chains", ORIGINS, &[]).await?;
            let mut out = rows
                .iter()
                .map(|r| get::<String>(r, 0))
                .collect::<Result<Vec<_>>>()?;
            out.sort();
            Ok(out)
        })
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// An advisory lock on the origin's name (`pg_try_advisory_lock` of
    /// its `hashtextextended`), held by a session taken out of the pool
    /// for as long as this handle lives. Tried every 100 ms for `wait`.
    fn claim_origin(&self, origin: &str, wait: Duration) -> Result<()> {
        let origin = text(origin, "audit origin")?.to_owned();
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(claimed) = self.try_claim(&origin)? {
                self.claims
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Claim {
                        origin,
                        session: Some(Arc::new(claimed.session)),
                        backend: claimed.backend,
                        checked: std::time::Instant::now(),
                    });
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(StoreError::new(
                    ErrorKind::Conflict,
                    format!(
                        "audit origin {origin:?} is in use by another airlock process{}: one process appends to a chain and recovers its calls; give each host its own `[store] origin`, and run commands for a serving host through it (on its machine they reach it by its control socket)",
                        self.origin_holder(&origin)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl PostgresStore {
    /// One try at the advisory lock of `origin`: the session holding it,
    /// or `None` when another session does.
    fn try_claim(&self, origin: &str) -> Result<Option<Claimed>> {
        let name = origin.to_owned();
        self.db.run(|s| async move {
            let conn = s.client().await?;
            let row = conn
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtextextended('airlock origin ' || $1, 0)), \
                     pg_backend_pid(), \
                     (SELECT (extract(epoch FROM backend_start) * 1000000)::bigint \
                      FROM pg_stat_activity WHERE pid = pg_backend_pid())",
                    &[&name],
                )
                .await
                .map_err(ctx(&format!("claiming audit origin {name:?}")))?;
            let claimed: bool = get(&row, 0)?;
            if !claimed {
                return Ok(None);
            }
            let pid: i32 = get(&row, 1)?;
            let backend =
                get::<Option<i64>>(&row, 2)?.map(|started_us| Backend { pid, started_us });
            // The session lives as long as the host: a server-wide
            // `idle_session_timeout` must not end it between appends, and
            // the server ends it soon once its client is cut off (best
            // effort: a server without a setting has nothing to fear
            // from it, and keepalives mean nothing on a Unix socket).
            for (settings, what) in [
                (
                    "SELECT set_config('idle_session_timeout', '0', false)",
                    "keeps the server's idle_session_timeout",
                ),
                (CLAIM_KEEPALIVE, "keeps the server's TCP keepalives"),
            ] {
                if let Err(e) = conn.batch_execute(settings).await {
                    tracing::debug!(error = %e, "the origin claim's session {what}");
                }
            }
            Ok(Some(Claimed {
                session: conn.detach(),
                backend,
            }))
        })
    }

    /// Ends this process's own former claim session on the server, if it
    /// is still there, and waits (up to the operation's bound) until it
    /// is gone with its lock. A session the network cut off stays on the
    /// server, holding the origin, until its keepalives give up; without
    /// this, this process would be refused its own origin, in the name of
    /// its own dead session, until then.
    fn end_own_session(&self, backend: Backend) -> Result<()> {
        self.db.run(move |s| async move {
            let conn = s.client().await?;
            let mine = "FROM pg_stat_activity WHERE pid = $1 \
                        AND (extract(epoch FROM backend_start) * 1000000)::bigint = $2";
            let params: [&(dyn ToSql + Sync); 2] = [&backend.pid, &backend.started_us];
            conn.query(&format!("SELECT pg_terminate_backend(pid) {mine}"), &params)
                .await
                .map_err(ctx("ending this process's former claim session"))?;
            loop {
                let left = conn
                    .query(&format!("SELECT 1 {mine}"), &params)
                    .await
                    .map_err(ctx("ending this process's former claim session"))?;
                if left.is_empty() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    /// Before a write to `origin`: if this handle claimed it, the session
    /// holding the claim is still there — or, when it ended (the server
    /// restarted, an administrator ended it, the network dropped it), the
    /// claim is taken again. Without this, a lost session let a second
    /// process claim the origin, recover this one's calls in flight as
    /// unknown and extend its chain, while this one went on appending.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] when another process holds the origin now
    /// (every write fails while it does; once it lets go the claim is
    /// taken again, and the audit log's own check stops appending if
    /// the other process extended the chain meanwhile); the server's
    /// errors.
    fn keep_claim(&self, origin: &str) -> Result<()> {
        let mut claims = self
            .claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(claim) = claims.iter_mut().find(|c| c.origin == origin) else {
            return Ok(());
        };
        if let Some(session) = claim.session.clone()
            && !session.is_closed()
        {
            if claim.checked.elapsed() < CLAIM_CHECK {
                return Ok(());
            }
            // No answer within the operation's bound counts as gone: a
            // session the network cut may never say it closed.
            let alive = self
                .db
                .run(|_| async move { Ok(session.simple_query("SELECT 1").await.is_ok()) });
            if matches!(alive, Ok(true)) {
                claim.checked = std::time::Instant::now();
                return Ok(());
            }
        }
        // Gone: closed, so that the server lets its lock go if it has not
        // noticed yet, and not asked again. If the server still has it (a
        // network cut it has not noticed), it is ended there too.
        // (Until that is done, the next write tries again.)
        claim.session = None;
        let mut not_ended = None;
        if let Some(backend) = claim.backend {
            match self.end_own_session(backend) {
                Ok(()) => claim.backend = None,
                Err(e) => not_ended = Some(e),
            }
        }
        match self.try_claim(origin)? {
            Some(claimed) => {
                tracing::warn!(
                    origin,
                    "the database session holding this process's claim on its audit origin ended; the origin is claimed again"
                );
                claim.session = Some(Arc::new(claimed.session));
                claim.backend = claimed.backend;
                claim.checked = std::time::Instant::now();
                Ok(())
            }
            // Perhaps still this process's own former session.
            None if let Some(e) = not_ended => Err(StoreError::new(
                ErrorKind::Unavailable,
                format!(
                    "audit origin {origin:?}: this process lost the database session holding its claim, and could not end it on the server to claim again ({e}); the next write tries again"
                ),
            )),
            None => Err(StoreError::new(
                ErrorKind::Conflict,
                format!(
                    "audit origin {origin:?}: the database session holding this process's claim ended, and another airlock process holds the origin now{}: this process appends nothing more to its chain; stop the other process or give each host its own `[store] origin`, then restart this one",
                    self.origin_holder(origin)
                ),
            )),
        }
    }

    /// Who holds the claim on `origin`, for the refusal (`""` when the
    /// server does not say).
    fn origin_holder(&self, origin: &str) -> String {
        let name = origin.to_owned();
        let holder = self.db.run(|s| async move {
            let conn = s.client().await?;
            let row = conn
                .query_opt(
                    "SELECT a.pid, coalesce(host(a.client_addr), 'a local socket'), \
                     to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ') \
                     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                     AND (l.classid::bigint << 32) | l.objid::bigint \
                         = hashtextextended('airlock origin ' || $1, 0) \
                     LIMIT 1",
                    &[&name],
                )
                .await
                .map_err(ctx("finding who holds an audit origin"))?;
            row.map(|r| {
                Ok::<_, StoreError>((
                    get::<i32>(&r, 0)?,
                    get::<String>(&r, 1)?,
                    get::<Option<String>>(&r, 2)?,
                ))
            })
            .transpose()
        });
        match holder {
            Ok(Some((pid, from, since))) => format!(
                " (server process {pid}, connected from {from}{})",
                since.map(|s| format!(" since {s}")).unwrap_or_default()
            ),
            _ => String::new(),
        }
    }
}

// ------------------------------------------------------------------ plugins

impl PluginStore for PostgresStore {
    fn put_artifact(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let digest = text(digest, "artifact digest")?.to_owned();
        let bytes = bytes.to_vec();
        self.db.run(|s| {
            let (digest, bytes) = (digest.clone(), bytes.clone());
            async move {
                s.execute(
                    &format!("storing artifact {digest}"),
                    // Stored already, unless what is stored is damaged: the
                    // caller hashed these bytes, so stored bytes that
                    // differ are not the digest's. (No hash function in the
                    // SQL: CockroachDB's `sha256` returns text.)
                    "INSERT INTO airlock_artifacts (digest, data) VALUES ($1, $2) \
                     ON CONFLICT (digest) DO UPDATE SET data = EXCLUDED.data \
                     WHERE airlock_artifacts.data IS DISTINCT FROM EXCLUDED.data",
                    &[&digest, &bytes],
                )
                .await?;
                Ok(())
            }
        })
    }

    fn artifact(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        if digest.contains('\0') {
            return Ok(None);
        }
        let digest = digest.to_owned();
        self.db.run(|s| {
            let digest = digest.clone();
            async move {
                let row = s
                    .query_opt(
                        &format!("reading artifact {digest}"),
                        "SELECT data FROM airlock_artifacts WHERE digest = $1",
                        &[&digest],
                    )
                    .await?;
                row.map(|r| get::<Vec<u8>>(&r, 0)).transpose()
            }
        })
    }

    fn insert_version(&self, version: &InstalledVersion) -> Result<bool> {
        let plugin = text(&version.plugin, "plugin name")?.to_owned();
        let number = text(&version.version, "plugin version")?.to_owned();
        let body = to_json(version, "installed version")?;
        self.db.run(|s| {
            let (plugin, number, body) = (plugin.clone(), number.clone(), body.clone());
            async move {
                let n = s
                    .execute(
                        &format!("recording {plugin} {number}"),
                        "INSERT INTO airlock_plugin_versions (plugin, version, body) VALUES ($1, $2, $3) \
                         ON CONFLICT (plugin, version) DO NOTHING",
                        &[&plugin, &number, &body],
                    )
                    .await?;
                Ok(n == 1)
            }
        })
    }

    fn version(&self, plugin: &str, version: &str) -> Result<Option<InstalledVersion>> {
        if plugin.contains('\0') || version.contains('\0') {
            return Ok(None);
        }
        let (plugin, version) = (plugin.to_owned(), version.to_owned());
        self.db.run(|s| {
            let (plugin, version) = (plugin.clone(), version.clone());
            async move {
                let row = s
                    .query_opt(
                        &format!("reading {plugin} {version}"),
                        "SELECT plugin, version, body FROM airlock_plugin_versions WHERE plugin = $1 AND version = $2",
                        &[&plugin, &version],
                    )
                    .await?;
                row.as_ref().map(installed_of).transpose()
            }
        })
    }

    fn versions(&self, plugin: Option<&str>) -> Result<Vec<InstalledVersion>> {
        if plugin.is_some_and(|p| p.contains('\0')) {
            return Ok(Vec::new());
        }
        let plugin = plugin.map(str::to_owned);
        self.db.run(|s| {
            let plugin = plugin.clone();
            async move {
                let rows = s
                    .query(
                        "listing installed versions",
                        "SELECT plugin, version, body FROM airlock_plugin_versions \
                         WHERE $1::text IS NULL OR plugin = $1",
                        &[&plugin],
                    )
                    .await?;
                rows.iter().map(installed_of).collect()
            }
        })
    }

    fn version_names(&self, plugin: Option<&str>) -> Result<Vec<(String, String)>> {
        if plugin.is_some_and(|p| p.contains('\0')) {
            return Ok(Vec::new());
        }
        let plugin = plugin.map(str::to_owned);
        self.db.run(|s| {
            let plugin = plugin.clone();
            async move {
                let rows = s
                    .query(
                        "listing the installed versions' names",
                        "SELECT plugin, version FROM airlock_plugin_versions \
                         WHERE $1::text IS NULL OR plugin = $1",
                        &[&plugin],
                    )
                    .await?;
                rows.iter()
                    .map(|r| Ok((get::<String>(r, 0)?, get::<String>(r, 1)?)))
                    .collect()
            }
        })
    }

    fn rollout(&self, plugin: &str) -> Result<Option<Versioned<Rollout>>> {
        if plugin.contains('\0') {
            return Ok(None);
        }
        let plugin = plugin.to_owned();
        self.db.run(|s| {
            let plugin = plugin.clone();
            async move {
                let row = s
                    .query_opt(
                        &format!("reading the rollout of {plugin}"),
                        "SELECT version, body FROM airlock_rollouts WHERE plugin = $1",
                        &[&plugin],
                    )
                    .await?;
                row.map(|r| rollout_of(&r, &plugin)).transpose()
            }
        })
    }

    fn insert_rollout(&self, rollout: &Rollout) -> Result<bool> {
        let plugin = text(&rollout.plugin, "plugin name")?.to_owned();
        let body = to_json(rollout, "rollout")?;
        let version = new_version()?;
        self.db.run(|s| {
            let (plugin, body) = (plugin.clone(), body.clone());
            async move {
                let n = s
                    .execute(
                        &format!("storing the rollout of {plugin}"),
                        "INSERT INTO airlock_rollouts (plugin, version, body) VALUES ($1, $2, $3) \
                         ON CONFLICT (plugin) DO NOTHING",
                        &[&plugin, &version, &body],
                    )
                    .await?;
                Ok(n == 1)
            }
        })
    }

    fn replace_rollout(&self, current: Version, next: &Rollout) -> Result<bool> {
        let plugin = text(&next.plugin, "plugin name")?.to_owned();
        let body = to_json(next, "rollout")?;
        let current = current.0 as i64;
        self.db.run(|s| {
            let (plugin, body) = (plugin.clone(), body.clone());
            async move {
                let n = s
                    .execute(
                        &format!("changing the rollout of {plugin}"),
                        "UPDATE airlock_rollouts SET body = $2, version = version + 1 \
                         WHERE plugin = $1 AND version = $3",
                        &[&plugin, &body, &current],
                    )
                    .await?;
                Ok(n == 1)
            }
        })
    }

    fn rollouts(&self) -> Result<Vec<Versioned<Rollout>>> {
        self.db.run(|s| async move {
            let rows = s
                .query(
                    "listing rollouts",
                    "SELECT version, body, plugin FROM airlock_rollouts",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| rollout_of(r, get::<&str>(r, 2)?))
                .collect()
        })
    }

    fn rollout_names(&self) -> Result<Vec<String>> {
        self.db.run(|s| async move {
            let rows = s
                .query(
                    "listing the plugins with a rollout",
                    "SELECT plugin FROM airlock_rollouts",
                    &[],
                )
                .await?;
            rows.iter().map(|r| get::<String>(r, 0)).collect()
        })
    }
}

/// The handle [`crate::open`] wraps into [`airlock_store::Stores`].
pub(crate) fn stores(store: PostgresStore) -> airlock_store::Stores {
    let description = store.description().to_owned();
    let store = Arc::new(store);
    airlock_store::Stores {
        description,
        audit: store.clone(),
        ledger: store.clone(),
        workspace: store.clone(),
        limits: store.clone(),
        mode: store.clone(),
        plugins: store,
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_ends_below_its_successor() {
        assert_eq!(prefix_end(b"note/"), Some(b"note0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
