//! The schema: embedded, versioned migrations, applied when the store
//! opens.
//!
//! `airlock_schema` holds one row per applied version. Opening reads the
//! highest: a database at a newer version than this build refuses to open
//! (naming both); an older one is brought up to date in one transaction,
//! which first inserts the row of the version it applies — so of hosts
//! opening a fresh database at once, one migrates and the others wait on
//! that row, fail on its key, read the version again and find it current.

use std::time::{SystemTime, UNIX_EPOCH};

use airlock_store::{ErrorKind, StoreError};

use crate::db::{Op, ctx, is_retryable, pg_error};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 3;

/// Every migration, by the version it brings the schema to.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_initial.sql")),
    (2, include_str!("../migrations/0002_plugins.sql")),
    (3, include_str!("../migrations/0003_key_heads.sql")),
];

const CREATE_SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS airlock_schema (
    version bigint PRIMARY KEY,
    applied_ms bigint NOT NULL,
    applied_by text NOT NULL
)";

/// Bring the database to [`SCHEMA_VERSION`], or refuse a newer one.
pub(crate) async fn migrate(shared: &Op) -> Result<(), StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match migrate_once(shared).await {
            // A racing host created the table or applied the version
            // first: look again.
            Err(e) if attempt < 5 && (e.kind() == ErrorKind::Conflict || is_retryable(&e)) => {
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
            }
            result => return result,
        }
    }
}

async fn migrate_once(shared: &Op) -> Result<(), StoreError> {
    let mut client = shared.client().await?;
    client
        .batch_execute(CREATE_SCHEMA_TABLE)
        .await
        .map_err(|e| schema_error("cannot create the table airlock_schema", e))?;
    let current = current_version(&client).await?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::new(
            ErrorKind::Incompatible,
            format!(
                "{} has schema version {current}, newer than this build of Airlock understands (version {SCHEMA_VERSION}): upgrade Airlock",
                shared.description
            ),
        ));
    }
    if current == SCHEMA_VERSION {
        return Ok(());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let by = format!("airlock {}", env!("CARGO_PKG_VERSION"));
    let tx = client
        .transaction()
        .await
        .map_err(ctx("cannot start the schema migration"))?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute(
            "INSERT INTO airlock_schema (version, applied_ms, applied_by) VALUES ($1, $2, $3)",
            &[version, &now, &by],
        )
        .await
        .map_err(|e| schema_error(&format!("cannot record schema version {version}"), e))?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| schema_error(&format!("cannot apply schema version {version}"), e))?;
        tracing::info!(version, store = %shared.description, "applied a schema migration");
    }
    tx.commit()
        .await
        .map_err(|e| schema_error("cannot commit the schema migration", e))?;
    Ok(())
}

async fn current_version(client: &tokio_postgres::Client) -> Result<i64, StoreError> {
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM airlock_schema", &[])
        .await
        .map_err(|e| schema_error("cannot read the schema version", e))?;
    row.try_get(0)
        .map_err(|e| pg_error("cannot read the schema version", e))
}

/// Schema changes failing for lack of rights are the configuration's
/// fault; a table or version created by a racing host is a conflict the
/// caller retries.
fn schema_error(context: &str, e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    match e.code() {
        // Two hosts creating the same table at once: PostgreSQL may report
        // the table, its row type (`duplicate_object`) or the catalog row.
        Some(c)
            if *c == SqlState::DUPLICATE_TABLE
                || *c == SqlState::DUPLICATE_OBJECT
                || *c == SqlState::UNIQUE_VIOLATION =>
        {
            StoreError::with_source(ErrorKind::Conflict, context, e)
        }
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => StoreError::with_source(
            ErrorKind::Config,
            format!("{context}: the store's user may not create tables in this database"),
            e,
        ),
        _ => pg_error(context, e),
    }
}
