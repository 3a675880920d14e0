//! A real PostgreSQL server for the tests: the one `scripts/postgres start`
//! runs (its URL in target/postgres/url) or the one named by
//! `AIRLOCK_TEST_POSTGRES_URL`. Without either the tests fail, saying so.
//!
//! Each test gets a database of its own (`t_<pid>_<n>_<random>`);
//! databases left by test processes that are gone are dropped the next
//! time the tests run.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use airlock_store::Stores;
use airlock_store_postgres::{PostgresConfig, open};

/// The repository's root.
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The test server's URL (its default database).
pub(crate) fn server_url() -> String {
    if let Ok(url) = std::env::var("AIRLOCK_TEST_POSTGRES_URL")
        && !url.trim().is_empty()
    {
        return url.trim().to_owned();
    }
    let path = repo().join("target/postgres/url");
    match std::fs::read_to_string(&path) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => panic!(
            "no PostgreSQL server for the tests: run `scripts/postgres start` \
             (it writes target/postgres/url) or set AIRLOCK_TEST_POSTGRES_URL"
        ),
    }
}

/// `url` naming database `name` instead.
pub(crate) fn with_database(url: &str, name: &str) -> String {
    if let Some(scheme) = url.find("://") {
        let (base, query) = match url.find('?') {
            Some(q) => (&url[..q], &url[q..]),
            None => (url, ""),
        };
        let authority_end = base[scheme + 3..]
            .find('/')
            .map_or(base.len(), |i| scheme + 3 + i);
        format!("{}/{name}{query}", &base[..authority_end])
    } else {
        format!("{url} dbname={name}")
    }
}

/// `url` with `password` instead of its own.
pub(crate) fn with_password(url: &str, password: &str) -> String {
    let scheme = url.find("://").expect("a URL") + 3;
    let at = url.rfind('@').expect("a URL with a user");
    let user_end = url[scheme..at].find(':').map_or(at, |i| scheme + i);
    format!("{}:{password}{}", &url[..user_end], &url[at..])
}

/// Run `sql` (simple protocol, several statements allowed) on `url`.
pub(crate) fn admin(url: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot reach the test PostgreSQL server ({e}): run `scripts/postgres start`"
                )
            });
        let driver = tokio::spawn(connection);
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        drop(client);
        let _ = driver.await;
    });
}

/// Rows of the first column of `sql` on `url`, as text.
pub(crate) fn admin_query(url: &str, sql: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot reach the test PostgreSQL server ({e}): run `scripts/postgres start`"
                )
            });
        let driver = tokio::spawn(connection);
        let rows = client.simple_query(sql).await.unwrap();
        drop(client);
        let _ = driver.await;
        rows.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect()
    })
}

fn random_suffix() -> String {
    format!("{:08x}", getrandom::u32().unwrap_or_default())
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Drop the databases of test processes that are gone.
fn sweep_stale_databases(server: &str) {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        for name in admin_query(
            server,
            "SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'",
        ) {
            let pid = name.split('_').nth(1).and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && pid != std::process::id()
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                admin(server, &format!("DROP DATABASE IF EXISTS \"{name}\""));
            }
        }
    });
}

/// A new, empty database on the test server; its URL.
pub(crate) fn fresh_database() -> String {
    let server = server_url();
    sweep_stale_databases(&server);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("t_{}_{n}_{}", std::process::id(), random_suffix());
    admin(&server, &format!("CREATE DATABASE \"{name}\""));
    with_database(&server, &name)
}

/// The configuration the tests open stores with.
pub(crate) fn config(url: &str) -> PostgresConfig {
    let mut config = PostgresConfig::new(url);
    config.pool_size = 8;
    config.pool_wait_ms = 20_000;
    config.statement_timeout_ms = 20_000;
    config
}

fn peers() -> &'static Mutex<HashMap<String, PostgresConfig>> {
    static PEERS: OnceLock<Mutex<HashMap<String, PostgresConfig>>> = OnceLock::new();
    PEERS.get_or_init(Mutex::default)
}

/// Stores on a new database.
pub(crate) fn fresh_stores() -> Stores {
    let config = config(&fresh_database());
    let stores = open(&config).unwrap_or_else(|e| panic!("opening {config:?}: {}", e.chain()));
    peers()
        .lock()
        .unwrap()
        .insert(stores.description.clone(), config);
    stores
}

/// Another pool on the database of `stores`: another host.
pub(crate) fn peer_stores(stores: &Stores) -> Stores {
    let config = peers()
        .lock()
        .unwrap()
        .get(&stores.description)
        .cloned()
        .expect("stores made by fresh_stores");
    open(&config).unwrap_or_else(|e| panic!("opening a peer: {}", e.chain()))
}
