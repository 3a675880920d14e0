//! Faults against a real PostgreSQL server: configuration errors at open,
//! a newer schema, an exhausted pool, a statement past its timeout, the
//! server stopped mid-stream (on a dedicated server, so the shared one is
//! not disturbed), calls from inside tokio runtimes, damaged rows, and a
//! claim on an origin whose session ends or is cut off by the network.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use airlock_store::{AuditWrite, ErrorKind, KeyOwner, Marker, Quota, Stores, Workspace};
use airlock_store_postgres::{PostgresConfig, SCHEMA_VERSION, TlsMode, open};

fn open_err(config: &PostgresConfig) -> airlock_store::StoreError {
    match open(config) {
        Ok(_) => panic!("{config:?} opened"),
        Err(e) => e,
    }
}

#[test]
fn a_url_that_does_not_parse_is_a_config_error() {
    for url in [
        "not a url",
        "mysql://airlock:secret@127.0.0.1/airlock",
        "postgres://airlock:secret@127.0.0.1:notaport/airlock",
    ] {
        let e = open_err(&PostgresConfig::new(url));
        assert_eq!(e.kind(), ErrorKind::Config, "{url}: {}", e.chain());
        assert!(!e.chain().contains("secret"), "{}", e.chain());
    }
}

#[test]
fn a_wrong_password_is_a_config_error() {
    let url = common::with_password(&common::server_url(), "wrong-password");
    let e = open_err(&common::config(&url));
    assert_eq!(e.kind(), ErrorKind::Config, "{}", e.chain());
    assert!(e.to_string().contains("wrong password"), "{}", e.chain());
    assert!(!e.chain().contains("wrong-password"), "{}", e.chain());
}

#[test]
fn a_missing_database_is_a_config_error() {
    let url = common::with_database(&common::server_url(), "no_such_database");
    let e = open_err(&common::config(&url));
    assert_eq!(e.kind(), ErrorKind::Config, "{}", e.chain());
    assert!(e.to_string().contains("does not exist"), "{}", e.chain());
    assert!(e.to_string().contains("no_such_database"), "{}", e.chain());
}

#[test]
fn tls_required_of_a_server_without_it_is_a_config_error() {
    let mut config = common::config(&common::server_url());
    config.tls = TlsMode::Require;
    let e = open_err(&config);
    assert_eq!(e.kind(), ErrorKind::Config, "{}", e.chain());
    assert!(e.to_string().contains("TLS"), "{}", e.chain());
}

#[test]
fn a_server_that_is_not_there_is_unavailable() {
    // A port nothing listens on: the test server's, shifted.
    let mut config = common::config("postgres://airlock:airlock@127.0.0.1:9/airlock");
    config.connect_timeout_ms = 500;
    let started = Instant::now();
    let e = open_err(&config);
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{}", e.chain());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_newer_schema_refuses_to_open_naming_both_versions() {
    let url = common::fresh_database();
    drop(open(&common::config(&url)).expect("first open"));
    let newer = SCHEMA_VERSION + 41;
    common::admin(
        &url,
        &format!(
            "INSERT INTO airlock_schema (version, applied_ms, applied_by) VALUES ({newer}, 0, 'airlock 9.0.0')"
        ),
    );
    let e = open_err(&common::config(&url));
    assert_eq!(e.kind(), ErrorKind::Incompatible, "{}", e.chain());
    let message = e.to_string();
    assert!(
        message.contains(&format!("schema version {newer}")),
        "{message}"
    );
    assert!(
        message.contains(&format!("(version {SCHEMA_VERSION})")),
        "{message}"
    );
}

#[test]
fn hosts_opening_a_new_database_at_once_apply_the_schema_once() {
    let url = common::fresh_database();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let config = common::config(&url);
            std::thread::spawn(move || open(&config).map(|_| ()).map_err(|e| e.chain()))
        })
        .collect();
    for h in handles {
        h.join().expect("thread").expect("open");
    }
    assert_eq!(
        common::admin_query(&url, "SELECT count(*) FROM airlock_schema"),
        [SCHEMA_VERSION.to_string()],
        "each migration applied once"
    );
    assert_eq!(
        common::admin_query(&url, "SELECT max(version) FROM airlock_schema"),
        [SCHEMA_VERSION.to_string()]
    );
}

const QUOTA: Quota = Quota {
    max_keys: 100,
    max_bytes: 1 << 20,
    max_blobs: 10,
};

/// A connection holding plugin `p`'s usage row locked until dropped (it
/// then rolls back).
struct RowLock {
    _runtime: tokio::runtime::Runtime,
    client: Option<tokio_postgres::Client>,
}

impl RowLock {
    fn take(url: &str) -> RowLock {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let client = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            client
                .batch_execute(
                    "BEGIN; SELECT keys FROM airlock_usage WHERE plugin = 'p' FOR UPDATE",
                )
                .await
                .expect("lock the usage row");
            client
        });
        RowLock {
            _runtime: runtime,
            client: Some(client),
        }
    }

    fn release(mut self) {
        self.client.take();
    }
}

#[test]
fn an_exhausted_pool_waits_its_bound_then_is_unavailable() {
    let url = common::fresh_database();
    let mut config = common::config(&url);
    config.pool_size = 1;
    config.pool_wait_ms = 300;
    let stores = open(&config).expect("open");
    let ws = Workspace::new(stores.workspace.clone());
    ws.set("p", &KeyOwner::Plugin, "k", b"v", QUOTA)
        .expect("set");
    let lock = RowLock::take(&url);
    // The only connection waits on the lock...
    let blocked = {
        let ws = ws.clone();
        std::thread::spawn(move || ws.set("p", &KeyOwner::Plugin, "k", b"w", QUOTA))
    };
    std::thread::sleep(Duration::from_millis(300));
    // ...so another operation waits for the pool, a bounded time.
    let started = Instant::now();
    let e = stores.mode.get().expect_err("no connection was free");
    let waited = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{}", e.chain());
    assert!(e.to_string().contains("pool_wait_ms (300 ms)"), "{e}");
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    lock.release();
    blocked.join().expect("thread").expect("the blocked write");
    assert_eq!(
        ws.get("p", &KeyOwner::Plugin, "k").expect("get").as_deref(),
        Some(&b"w"[..])
    );
    assert_eq!(stores.mode.get().expect("free again"), None);
}

#[test]
fn a_statement_past_its_timeout_is_unavailable_and_changes_nothing() {
    let url = common::fresh_database();
    let mut config = common::config(&url);
    config.statement_timeout_ms = 300;
    let stores = open(&config).expect("open");
    let ws = Workspace::new(stores.workspace.clone());
    ws.set("p", &KeyOwner::Plugin, "k", b"v", QUOTA)
        .expect("set");
    let lock = RowLock::take(&url);
    let started = Instant::now();
    let e = ws
        .set("p", &KeyOwner::Plugin, "k", b"changed", QUOTA)
        .expect_err("the write waited past its timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    let airlock_store::WorkspaceError::Unavailable(e) = e else {
        panic!("{e}");
    };
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{}", e.chain());
    lock.release();
    assert_eq!(
        ws.get("p", &KeyOwner::Plugin, "k").expect("get").as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(ws.usage("p").expect("usage").keys, 1);
}

fn exercise(stores: &Stores) {
    stores.mode.get().expect("mode");
    stores
        .audit
        .write(
            "h",
            &[AuditWrite {
                seq: 1,
                bytes: b"r".to_vec(),
                marker: Marker::None,
            }],
        )
        .expect("write");
    assert_eq!(stores.audit.head("h").expect("head").map(|h| h.0), Some(1));
}

#[test]
fn calls_from_inside_a_current_thread_runtime_work() {
    let url = common::fresh_database();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let stores = open(&common::config(&url)).expect("open inside a runtime");
        exercise(&stores);
        // Dropped inside the runtime too.
        drop(stores);
    });
}

#[test]
fn calls_from_inside_a_multi_thread_runtime_work() {
    let url = common::fresh_database();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stores = open(&common::config(&url)).expect("open");
    let stores = runtime.block_on(async move {
        tokio::spawn(async move {
            exercise(&stores);
            stores
        })
        .await
        .expect("task")
    });
    // The last handle dropped on a runtime worker.
    runtime.block_on(async move {
        tokio::spawn(async move { drop(stores) })
            .await
            .expect("task");
    });
}

/// A PostgreSQL server of this test's own, destroyed when dropped.
struct Server {
    dir: PathBuf,
    tls: bool,
}

impl Server {
    fn start(name: &str, tls: bool) -> (Server, String) {
        let dir = common::repo().join(format!("target/postgres-{name}-{}", std::process::id()));
        let server = Server { dir, tls };
        let url = server.script("start");
        (server, url)
    }

    fn script(&self, command: &str) -> String {
        let mut script = Command::new(common::repo().join("scripts/postgres"));
        script.arg(command).arg("--dir").arg(&self.dir);
        if self.tls && command == "start" {
            script.arg("--tls");
        }
        let out = script.output().expect("scripts/postgres");
        assert!(
            out.status.success(),
            "scripts/postgres {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(common::repo().join("scripts/postgres"))
            .arg("destroy")
            .arg("--dir")
            .arg(&self.dir)
            .output();
    }
}

fn record(seq: u64) -> AuditWrite {
    AuditWrite {
        seq,
        bytes: format!("record {seq}").into_bytes(),
        marker: if seq % 2 == 1 {
            Marker::Open(format!("call-{seq}"))
        } else {
            Marker::Close(format!("call-{}", seq - 1))
        },
    }
}

#[test]
fn a_server_stopped_mid_stream_fails_closed_and_recovers_without_a_gap() {
    let (server, url) = Server::start("fault", false);
    let mut config = common::config(&url);
    config.connect_timeout_ms = 1_000;
    config.pool_wait_ms = 1_000;
    config.statement_timeout_ms = 2_000;
    let stores = open(&config).expect("open");
    let audit = stores.audit.clone();

    // A writer appending as fast as it can; on an error it reads the head
    // again (a commit whose answer was lost moved it).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let audit = audit.clone();
        std::thread::spawn(move || {
            let mut head = 0u64;
            let mut written = Vec::new();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match audit.write("host-a", &[record(head + 1)]) {
                    Ok(()) => {
                        head += 1;
                        written.push((Instant::now(), head));
                    }
                    Err(e) => {
                        errors.push((e.kind(), e.chain(), started.elapsed()));
                        std::thread::sleep(Duration::from_millis(50));
                        if let Ok(h) = audit.head("host-a") {
                            head = h.map_or(0, |h| h.0);
                        }
                    }
                }
            }
            (written, errors)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    server.script("stop");
    // While it is down: every operation fails, as unavailable, in bounded
    // time.
    std::thread::sleep(Duration::from_millis(300));
    for (what, result) in [
        ("mode", stores.mode.get().map(|_| ())),
        ("head", stores.audit.head("host-a").map(|_| ())),
        (
            "workspace",
            stores
                .workspace
                .set("p", &KeyOwner::Plugin, "k", b"v", QUOTA)
                .map_err(|e| match e {
                    airlock_store::WorkspaceError::Unavailable(e) => e,
                    other => panic!("{other}"),
                }),
        ),
    ] {
        let e = result.expect_err(what);
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{what}: {}", e.chain());
    }
    std::thread::sleep(Duration::from_millis(500));
    let restarted = Instant::now();
    server.script("start");
    // Recovered: the writer goes on.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let head = stores.audit.head("host-a").ok().flatten().map(|h| h.0);
        if let Some(head) = head
            && head > 0
            && stores.mode.get().is_ok()
        {
            let later = stores.audit.records("host-a", head, 1);
            if later.is_ok() && restarted.elapsed() > Duration::from_secs(1) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the store did not recover");
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (written, errors) = writer.join().expect("writer");

    assert!(!errors.is_empty(), "the writer never saw the outage");
    for (kind, message, took) in &errors {
        assert!(
            matches!(kind, ErrorKind::Unavailable | ErrorKind::Conflict),
            "{kind}: {message}"
        );
        assert!(*took < Duration::from_secs(10), "{message} took {took:?}");
    }
    assert!(
        written.iter().any(|(at, _)| *at > restarted),
        "nothing was written after the restart"
    );
    // No gap, no fork: 1..=head, each record the one written for its seq.
    let head = audit.head("host-a").expect("head").expect("records").0;
    let records = audit.records("host-a", 1, 1_000_000).expect("records");
    assert_eq!(records.len() as u64, head);
    for (i, (seq, bytes)) in records.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(bytes, &record(*seq).bytes);
    }
    // Markers followed their records: only the last odd record's call
    // can be open.
    let open_calls = audit.open_calls("host-a").expect("open");
    let expected: Vec<(String, u64)> = if head % 2 == 1 {
        vec![(format!("call-{head}"), head)]
    } else {
        Vec::new()
    };
    assert_eq!(open_calls, expected);
    drop(stores);
    drop(server);
}

#[test]
fn tls_verifies_the_server_against_the_ca_file() {
    let (server, url) = Server::start("tls", true);
    let mut config = common::config(&url);
    config.tls = TlsMode::Require;
    config.ca_file = Some(server.dir.join("tls/ca.pem"));
    let stores = open(&config).unwrap_or_else(|e| panic!("{}", e.chain()));
    exercise(&stores);
    drop(stores);
    // Mozilla's roots do not know the test CA: refused, as configuration.
    config.ca_file = None;
    let e = open_err(&config);
    assert_eq!(e.kind(), ErrorKind::Config, "{}", e.chain());
    // A CA file that is not PEM.
    let bogus = server.dir.join("not-a-ca.pem");
    std::fs::write(&bogus, "not a certificate").expect("write");
    config.ca_file = Some(bogus);
    let e = open_err(&config);
    assert_eq!(e.kind(), ErrorKind::Config, "{}", e.chain());
    assert!(e.to_string().contains("not-a-ca.pem"), "{}", e.chain());
}

#[test]
fn a_server_that_stops_answering_times_out_and_its_connection_is_not_reused() {
    let url = common::fresh_database();
    let database = url.rsplit('/').next().expect("a database").to_owned();
    let mut config = common::config(&url);
    config.pool_size = 1;
    config.pool_wait_ms = 100;
    config.connect_timeout_ms = 2_000;
    config.statement_timeout_ms = 100;
    let stores = open(&config).expect("open");
    stores
        .mode
        .get()
        .expect("a first call opens the connection");
    let backend = || {
        common::admin_query(
            &common::server_url(),
            &format!(
                "SELECT pid FROM pg_stat_activity WHERE datname = '{database}' \
                 AND application_name = 'airlock'"
            ),
        )
    };
    let before = backend();
    assert_eq!(before.len(), 1, "{before:?}");
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &before[0]])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    // The server process of the store's only connection stops answering
    // (no error, no closed socket): only the client's bound ends the call.
    signal("-STOP");
    let started = Instant::now();
    let result = stores.mode.get();
    let took = started.elapsed();
    signal("-CONT");
    let e = result.expect_err("a stopped server answered");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{}", e.chain());
    assert!(e.to_string().contains("did not answer"), "{}", e.chain());
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The cut-off connection was closed, not handed to the next call.
    assert_eq!(stores.mode.get().expect("next call"), None);
    let after = backend();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before);
}

/// Listing keys (recovery, the sweep) reads each row's head columns, not
/// its body: a finished row whose body is damaged is still swept. A row
/// from before those columns, or whose version an older host moved on
/// without them, is read by its body (a stale head would have kept the
/// finished `stale` from the sweep, or let it sweep a claim an older host
/// renewed); one whose body
/// does not decode is named by recovery and the sweep and left in place —
/// it stops neither, and a call with its key fails rather than runs.
#[test]
fn keys_are_listed_by_their_heads_and_a_garbled_old_row_is_reported() {
    use airlock_store::{Claim, KeyRef, Ledger};
    let url = common::fresh_database();
    let stores = open(&common::config(&url)).expect("open");
    let ledger = Ledger::new(stores.ledger.clone());
    let day = Duration::from_secs(86_400);
    let key = |name: &str| KeyRef::new("agent", "p", "t", name);
    let set = |name: &str, columns: &str| {
        common::admin(
            &url,
            &format!(
                "UPDATE airlock_keys SET {columns} WHERE key = '\\x{}'",
                hex::encode(key(name).encode())
            ),
        );
    };
    // As a row from before the head columns, or as an older host's update
    // leaves it (version moved on, head not).
    const OLD: &str = "head_version = NULL, created_ms = NULL, in_flight = NULL";
    const STALE: &str = "version = version + 1, in_flight = true";
    for name in ["fine", "garbled", "old", "damaged", "stale"] {
        ledger.claim(&key(name), "d", ("c1", "h"), 0, day).unwrap();
    }
    for name in ["old", "damaged", "stale"] {
        ledger
            .complete(&key(name), Ok(serde_json::json!(1)))
            .unwrap();
    }
    set(
        "garbled",
        &format!("body = '{{\"created_ms\": 0, \"sta', {OLD}"),
    );
    set("old", OLD);
    set("stale", STALE);
    set("damaged", "body = 'not json'");

    let recovery = ledger.recover("h").unwrap();
    assert_eq!(recovery.changed, vec![key("fine")]);
    assert_eq!(recovery.unreadable.len(), 1, "{recovery:?}");
    assert!(
        recovery.unreadable[0].contains("\"garbled\" of p/t"),
        "{recovery:?}"
    );
    let report = ledger.sweep(2 * 86_400_000, day, day).unwrap();
    assert_eq!(
        report.keys_removed, 4,
        "fine, old, damaged, stale: {report:?}"
    );
    assert_eq!(report.unreadable.len(), 1, "{report:?}");
    let err = ledger
        .claim(&key("garbled"), "d", ("c3", "h"), 2 * 86_400_000, day)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    for name in ["fine", "old", "damaged", "stale"] {
        assert_eq!(
            ledger
                .claim(&key(name), "d", ("c4", "h"), 2 * 86_400_000, day)
                .unwrap(),
            Claim::Claimed,
            "{name}"
        );
    }
}

/// A chain whose head record row is gone read as an empty chain (an inner
/// join found nothing): the log would have started again over the records
/// still there. It is corrupt, named.
#[test]
fn a_chain_without_its_head_record_is_corrupt_not_empty() {
    let url = common::fresh_database();
    let stores = open(&common::config(&url)).expect("open");
    let writes: Vec<_> = (1..=3)
        .map(|seq| AuditWrite {
            seq,
            bytes: format!("record {seq}").into_bytes(),
            marker: Marker::None,
        })
        .collect();
    stores.audit.write("h1", &writes).unwrap();
    assert_eq!(stores.audit.head("h1").unwrap().unwrap().0, 3);
    common::admin(
        &url,
        "DELETE FROM airlock_audit_records WHERE origin = 'h1' AND seq = 3",
    );
    let err = stores.audit.head("h1").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("record 3"), "{err}");
    // An origin with no chain at all is still empty.
    assert_eq!(stores.audit.head("h2").unwrap(), None);
}

/// A chain whose head row was deleted (someone hiding it, or a bad
/// clean-up) is still listed among the origins, so verifying every chain
/// reports it, and is corrupt to its host rather than empty (read as
/// empty, the log would start again over its records).
#[test]
fn a_chain_without_its_head_row_is_listed_and_corrupt() {
    let url = common::fresh_database();
    let stores = open(&common::config(&url)).expect("open");
    for origin in ["h1", "h2", "h3"] {
        stores.audit.write(origin, &[record(1), record(2)]).unwrap();
    }
    stores.audit.put_checkpoint("h3", 2, b"{}").unwrap();
    assert_eq!(stores.audit.origins().unwrap(), ["h1", "h2", "h3"]);
    common::admin(
        &url,
        "DELETE FROM airlock_audit_chains WHERE origin IN ('h2', 'h3'); \
         DELETE FROM airlock_audit_records WHERE origin = 'h3'",
    );
    // h2 by its records, h3 by its checkpoint.
    assert_eq!(stores.audit.origins().unwrap(), ["h1", "h2", "h3"]);
    let err = stores.audit.head("h2").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(
        err.to_string().contains("records up to 2 but no head"),
        "{err}"
    );
    // Its checkpoints alone are enough to tell.
    let err = stores.audit.head("h3").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(
        err.to_string().contains("checkpoints up to 2 but no head"),
        "{err}"
    );
    assert_eq!(stores.audit.head("h1").unwrap().unwrap().0, 2);
    assert_eq!(stores.audit.head("h4").unwrap(), None);
}

/// A bucket row of `-Infinity` tokens (edited in the shared database)
/// panicked the task taking from it, and every call of its scope got "the
/// operation was dropped" until the row was fixed; it refills from empty.
#[test]
fn a_damaged_rate_limit_bucket_refills_from_empty() {
    use airlock_store::Rate;
    let url = common::fresh_database();
    let stores = open(&common::config(&url)).expect("open");
    let rate = Rate::parse("10/s").unwrap();
    let scope = vec![("principal:agent".to_owned(), rate)];
    assert_eq!(stores.limits.take(&scope, 1_000).unwrap(), None);
    common::admin(
        &url,
        "UPDATE airlock_buckets SET tokens = '-Infinity'::float8 WHERE scope = 'principal:agent'",
    );
    let (refused, wait) = stores.limits.take(&scope, 1_000).unwrap().unwrap();
    assert_eq!(refused, "principal:agent");
    assert_eq!(wait, Duration::from_millis(100));
    // A token's time later, one token.
    assert_eq!(stores.limits.take(&scope, 1_100).unwrap(), None);
    // A time edited negative failed every call of the scope (`corrupt`);
    // one far ahead stopped it refilling until the clock got there (at
    // i64::MAX, never). Each refills from empty, from now.
    for time in ["-5", "9223372036854775807"] {
        common::admin(
            &url,
            &format!(
                "UPDATE airlock_buckets SET tokens = 10, updated_ms = {time} WHERE scope = 'principal:agent'"
            ),
        );
        let (refused, wait) = stores.limits.take(&scope, 5_000).unwrap().unwrap();
        assert_eq!(refused, "principal:agent", "{time}");
        assert_eq!(wait, Duration::from_millis(100), "{time}");
        assert_eq!(stores.limits.take(&scope, 5_100).unwrap(), None, "{time}");
    }
}

/// The readiness check of the mode store said yes whatever the server:
/// with the role's right to switch the mode taken away (or the server
/// turned read-only under a running host) a takeover's switch fails, and
/// the check says so before the incident does.
#[test]
fn the_mode_is_not_ready_when_a_switch_would_be_refused() {
    let url = common::fresh_database();
    let stores = open(&common::config(&url)).expect("open");
    stores.mode.check_writable().expect("writable");
    common::admin(
        &url,
        "DO $$ BEGIN EXECUTE format('REVOKE INSERT, UPDATE ON airlock_mode FROM %I', \
         (SELECT tableowner FROM pg_tables WHERE tablename = 'airlock_mode')); END $$",
    );
    let err = stores.mode.check_writable().unwrap_err();
    assert!(err.to_string().contains("switched"), "{err}");
    assert!(
        format!("{:?}", err).contains("permission denied"),
        "{err:?}"
    );
    // Nothing was written by the checks.
    assert_eq!(stores.mode.get().unwrap(), None);
}

/// An installed version's row edited to hold another plugin's (or
/// another version's) body was read as that one; like a rollout row, it
/// is refused as corrupt, naming the row, in every read.
#[test]
fn an_installed_version_row_holding_another_is_refused() {
    use airlock_store::{Installed, Releases, VersionFiles};
    let url = common::fresh_database();
    let stores = open(&common::config(&url)).expect("open");
    let releases = Releases::new(stores.plugins.clone());
    let files = VersionFiles {
        manifest: b"manifest",
        component: b"component",
        component_file: "text.wasm",
        cases: None,
        signature: None,
    };
    assert!(matches!(
        releases
            .install("text", "1.0.0", files, None, "ops", 1)
            .unwrap(),
        Installed::New(_)
    ));
    common::admin(
        &url,
        "UPDATE airlock_plugin_versions SET body = jsonb_set(body::jsonb, '{plugin}', '\"billing\"')::text \
         WHERE plugin = 'text'",
    );
    for err in [
        stores.plugins.version("text", "1.0.0").unwrap_err(),
        stores.plugins.versions(Some("text")).unwrap_err(),
        stores.plugins.versions(None).unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert!(err.to_string().contains("holds `billing` 1.0.0"), "{err}");
    }
    // The names are the row's own.
    assert_eq!(
        stores.plugins.version_names(None).unwrap(),
        [("text".to_owned(), "1.0.0".to_owned())]
    );
}

/// Nothing stopped a second process from opening a host on a serving
/// host's origin (the CLI did, on every command): it marked the first's
/// calls unknown and forked its chain. An origin is claimed by one handle
/// at a time, named in the refusal, and free again once its holder is
/// gone.
#[test]
fn an_origin_is_claimed_by_one_process_at_a_time() {
    let url = common::fresh_database();
    let first = open(&common::config(&url)).expect("open");
    let second = open(&common::config(&url)).expect("open");
    first
        .audit
        .claim_origin("h1", Duration::ZERO)
        .expect("first claim");
    let started = Instant::now();
    let err = second
        .audit
        .claim_origin("h1", Duration::from_millis(300))
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("\"h1\" is in use"), "{err}");
    assert!(err.to_string().contains("server process"), "{err}");
    // Another origin is free; so is this one once its holder has gone.
    second.audit.claim_origin("h2", Duration::ZERO).unwrap();
    drop(first);
    second
        .audit
        .claim_origin("h1", Duration::from_secs(10))
        .expect("claimed once the holder is gone");
}

/// End the server session holding the claim on `origin` (as a server
/// restart or an administrator would), and wait until it is gone.
fn end_claim_session(url: &str, origin: &str) {
    let pids = common::admin_query(
        url,
        &format!(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND (classid::bigint << 32) | objid::bigint = hashtextextended('airlock origin {origin}', 0)"
        ),
    );
    assert_eq!(pids.len(), 1, "one session holds {origin:?}: {pids:?}");
    common::admin(url, &format!("SELECT pg_terminate_backend({})", pids[0]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !common::admin_query(
        url,
        &format!("SELECT 1 FROM pg_stat_activity WHERE pid = {}", pids[0]),
    )
    .is_empty()
    {
        assert!(Instant::now() < deadline, "session {} did not end", pids[0]);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A claim lived as long as its session, silently: once that session
/// ended (a server restart, an administrator), a second process could
/// claim the origin, recover the first one's calls as unknown and extend
/// its chain while the first went on appending. A write to a claimed
/// origin now takes the claim again when its session is gone, and fails
/// closed, naming the holder, when another process took it meanwhile.
#[test]
fn a_claim_whose_session_ends_is_taken_again_or_fails_closed() {
    let url = common::fresh_database();
    let first = open(&common::config(&url)).expect("open");
    let second = open(&common::config(&url)).expect("open");
    first.audit.claim_origin("h1", Duration::ZERO).unwrap();
    first.audit.write("h1", &[record(1)]).unwrap();

    // The session ends; nobody else claims: the next write takes the
    // claim again, and the second process is still kept out.
    end_claim_session(&url, "h1");
    // Past the interval at which a write asks whether the session is
    // there (a closed socket is usually noticed sooner).
    std::thread::sleep(Duration::from_millis(2_100));
    first.audit.write("h1", &[record(2)]).unwrap();
    let err = second.audit.claim_origin("h1", Duration::ZERO).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");

    // The session ends and the second process claims the origin first:
    // the first one's writes fail closed, and write nothing.
    end_claim_session(&url, "h1");
    second
        .audit
        .claim_origin("h1", Duration::from_secs(10))
        .expect("claimed once the first's session ended");
    std::thread::sleep(Duration::from_millis(2_100));
    for _ in 0..2 {
        let err = first.audit.write("h1", &[record(3)]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
        assert!(
            err.to_string()
                .contains("another airlock process holds the origin now"),
            "{err}"
        );
        assert!(err.to_string().contains("server process"), "{err}");
    }
    assert_eq!(first.audit.head("h1").unwrap().map(|h| h.0), Some(2));
    second.audit.write("h1", &[record(3)]).unwrap();
}

/// A TCP forwarder to the test server whose open connections can be cut
/// off the way a network cut does it: nothing passes either way any more,
/// and neither end is told (no reset, no close, not even when the client
/// closes its side). Connections made after the cut pass.
struct Cutter {
    url: String,
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Cutter {
    fn start(url: &str) -> Cutter {
        let at = url.find("@127.0.0.1:").expect("a loopback URL") + 1;
        let end = at + url[at..].find('/').expect("a database");
        let upstream = url[at..end].to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let url = format!(
            "{}{}{}",
            &url[..at],
            listener.local_addr().expect("its address"),
            &url[end..]
        );
        let generation = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let (g, st) = (generation.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                // A connection the forwarder cannot make is one the
                // client sees closed at once.
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let born = g.load(Ordering::SeqCst);
                let (Ok(()), Ok(c), Ok(s)) = (
                    client.set_nonblocking(false),
                    client.try_clone(),
                    server.try_clone(),
                ) else {
                    continue;
                };
                for (from, to) in [(c, s), (server, client)] {
                    let (g, st) = (g.clone(), st.clone());
                    std::thread::spawn(move || Cutter::pass(from, to, born, &g, &st));
                }
            }
        });
        Cutter {
            url,
            generation,
            stop,
        }
    }

    /// Forward `from` to `to` until either closes, or, once cut, hold
    /// both open and silent until the cutter stops.
    fn pass(mut from: TcpStream, mut to: TcpStream, born: u64, g: &AtomicU64, stop: &AtomicBool) {
        if from
            .set_read_timeout(Some(Duration::from_millis(20)))
            .is_err()
        {
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        while !stop.load(Ordering::Relaxed) {
            if g.load(Ordering::SeqCst) != born {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) => {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => {
                    if g.load(Ordering::SeqCst) == born && to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
    }

    /// Cut every connection open now.
    fn cut(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The session holding a claim cut off by the network: this process gives
/// it up, but the server keeps it, and its lock, until its keepalives give
/// up (hours, by default), so the claim could not be taken again and
/// every write was refused in the name of this process's own dead session.
/// The process now ends its former session on the server and claims the
/// origin again; meanwhile nobody else can.
#[test]
fn a_claim_session_the_network_cut_off_is_ended_and_the_origin_claimed_again() {
    let url = common::fresh_database();
    let cutter = Cutter::start(&url);
    let mut config = common::config(&cutter.url);
    config.pool_wait_ms = 1_000;
    config.connect_timeout_ms = 2_000;
    config.statement_timeout_ms = 500;
    let first = open(&config).expect("open");
    let second = open(&common::config(&url)).expect("open");
    first.audit.claim_origin("h1", Duration::ZERO).unwrap();
    first.audit.write("h1", &[record(1)]).unwrap();
    let holder = || {
        common::admin_query(
            &url,
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND (classid::bigint << 32) | objid::bigint = hashtextextended('airlock origin h1', 0)",
        )
    };
    let old = holder();
    assert_eq!(old.len(), 1, "{old:?}");

    cutter.cut();
    std::thread::sleep(Duration::from_millis(2_100));
    // The writes that meet a cut-off connection of the pool fail
    // `unavailable` (and that connection is not used again); then the
    // claim is the process's again, on a new session.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match first.audit.write("h1", &[record(2)]) {
            Ok(()) => break,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable, "{}", e.chain());
                assert!(
                    Instant::now() < deadline,
                    "never claimed again: {}",
                    e.chain()
                );
            }
        }
    }
    let now = holder();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, old, "the origin is held by a new session");
    assert!(
        common::admin_query(
            &url,
            &format!("SELECT 1 FROM pg_stat_activity WHERE pid = {}", old[0])
        )
        .is_empty(),
        "the cut-off session was ended on the server"
    );
    let err = second.audit.claim_origin("h1", Duration::ZERO).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(first.audit.head("h1").unwrap().map(|h| h.0), Some(2));
}

/// A server-wide `idle_session_timeout` ended the claim's session while
/// the host was idle, and with it the claim: another process could take
/// the origin between two appends. The claim's session turns it off.
#[test]
fn an_idle_session_timeout_does_not_end_a_claim() {
    let url = common::fresh_database();
    common::admin(
        &url,
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET idle_session_timeout = %L', \
         current_database(), '1s'); END $$",
    );
    let first = open(&common::config(&url)).expect("open");
    first.audit.claim_origin("h1", Duration::ZERO).unwrap();
    std::thread::sleep(Duration::from_millis(2_500));
    let second = open(&common::config(&url)).expect("open");
    let err = second.audit.claim_origin("h1", Duration::ZERO).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
}

/// A process that lost its origin to another stores no checkpoint on it
/// either (it would replace the new holder's at the same seq).
#[test]
fn a_lost_claim_stores_no_checkpoint() {
    let url = common::fresh_database();
    let first = open(&common::config(&url)).expect("open");
    let second = open(&common::config(&url)).expect("open");
    first.audit.claim_origin("h1", Duration::ZERO).unwrap();
    first.audit.write("h1", &[record(1)]).unwrap();
    first.audit.put_checkpoint("h1", 1, b"first's").unwrap();
    end_claim_session(&url, "h1");
    second
        .audit
        .claim_origin("h1", Duration::from_secs(10))
        .unwrap();
    second.audit.put_checkpoint("h1", 1, b"second's").unwrap();
    std::thread::sleep(Duration::from_millis(2_100));
    let err = first
        .audit
        .put_checkpoint("h1", 1, b"first's again")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(
        second.audit.checkpoints("h1").unwrap(),
        vec![(1, b"second's".to_vec())]
    );
}

/// One approval row that does not decode failed every listing, the sweep
/// (so no idempotency key was ever removed again) and every call that
/// needs an approval. It is named and left out; the rest goes on.
#[test]
fn one_unreadable_approval_stops_neither_listings_nor_the_sweep() {
    use airlock_store::{KeyRef, Ledger};
    let url = common::fresh_database();
    let stores = open(&common::config(&url)).expect("open");
    let ledger = Ledger::new(stores.ledger.clone());
    for id in ["good", "bad"] {
        ledger
            .create_approval(&airlock_store::conformance::approval(
                id, "agent", 1, 10_000,
            ))
            .unwrap();
    }
    common::admin(
        &url,
        "UPDATE airlock_approvals SET body = '{}' WHERE id = 'bad'",
    );
    let listed = ledger.approvals(None, 100).unwrap();
    let ids: Vec<_> = listed.list.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["good"]);
    assert_eq!(listed.unreadable.len(), 1, "{listed:?}");
    assert!(listed.unreadable[0].contains("\"bad\""), "{listed:?}");
    assert_eq!(ledger.pending_of("agent", 100).unwrap().0, 1);
    // The sweep goes on to the keys.
    let day = Duration::from_secs(86_400);
    let key = KeyRef::new("agent", "p", "t", "k");
    ledger.claim(&key, "d", ("c1", "h"), 0, day).unwrap();
    ledger.complete(&key, Ok(serde_json::json!(1))).unwrap();
    let report = ledger.sweep(3 * 86_400_000, day, day).unwrap();
    assert_eq!(report.keys_removed, 1, "{report:?}");
    assert!(
        report.unreadable.iter().any(|u| u.contains("\"bad\"")),
        "{report:?}"
    );
}

/// A database whose default isolation is `serializable` (an operator's
/// choice, or a role's): the loser of two hosts claiming one idempotency
/// key at once failed with a serialization error, reported as the store
/// unavailable, instead of finding the winner's claim. Every session is
/// held to READ COMMITTED, what the statements are written for.
#[test]
fn racing_claims_on_a_serializable_database_each_get_an_answer() {
    let url = common::fresh_database();
    common::admin(
        &url,
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation = ''serializable''', current_database()); END $$;",
    );
    let config = common::config(&url);
    let (a, b) = (open(&config).unwrap(), open(&config).unwrap());
    let (a, b) = (
        airlock_store::Ledger::new(Arc::clone(&a.ledger)),
        airlock_store::Ledger::new(Arc::clone(&b.ledger)),
    );
    for i in 0..100 {
        let key = airlock_store::KeyRef::new("agent", "plug", "tool", format!("k{i}"));
        let claim = |ledger: &airlock_store::Ledger, host: &str| {
            ledger
                .claim(&key, "digest", ("call", host), 1, Duration::from_secs(60))
                .map_err(|e| e.chain())
        };
        let (a, b, claim) = (&a, &b, &claim);
        let (one, two) = std::thread::scope(|s| {
            let one = s.spawn(move || claim(a, "a"));
            let two = s.spawn(move || claim(b, "b"));
            (one.join().unwrap(), two.join().unwrap())
        });
        let (one, two) = (one.unwrap(), two.unwrap());
        let claimed = [&one, &two]
            .iter()
            .filter(|c| matches!(c, airlock_store::Claim::Claimed))
            .count();
        assert_eq!(claimed, 1, "{one:?} {two:?}");
    }
}

/// A rollout row whose body names another plugin (edited by hand, or
/// restored into the wrong row) is corrupt, named: it would route the
/// row's plugin by another plugin's versions. The other rows still read
/// one by one, which is how a host routes around it.
#[test]
fn a_rollout_row_holding_another_plugins_rollout_is_corrupt() {
    use airlock_store::{Releases, Rollout, RolloutAction, RolloutChange};
    let url = common::fresh_database();
    let stores = open(&common::config(&url)).expect("open");
    let releases = Releases::new(stores.plugins.clone());
    for plugin in ["json", "text"] {
        let rollout = Rollout {
            plugin: plugin.into(),
            serving: "1.0.0".into(),
            canary: None,
            previous: None,
            change: RolloutChange {
                id: format!("change-{plugin}"),
                action: RolloutAction::Activate,
                by: "ops".into(),
                reason: None,
                at_ms: 1,
                approval_id: None,
            },
        };
        releases.change(None, rollout).unwrap();
    }
    common::admin(
        &url,
        "UPDATE airlock_rollouts SET body = (SELECT body FROM airlock_rollouts WHERE plugin = 'text') \
         WHERE plugin = 'json'",
    );
    let all = releases.rollouts().unwrap_err();
    assert_eq!(all.kind(), ErrorKind::Corrupt, "{all}");
    assert!(all.to_string().contains("`json`"), "{all}");
    let json = releases.rollout("json").unwrap_err();
    assert_eq!(json.kind(), ErrorKind::Corrupt, "{json}");
    let text = releases.rollout("text").unwrap().unwrap();
    assert_eq!(text.value.plugin, "text");
    // A column altered to another type is the schema's, for every row:
    // incompatible (the host's), not one record's damage.
    common::admin(
        &url,
        "ALTER TABLE airlock_rollouts ALTER COLUMN version TYPE text",
    );
    // (Read by a new pool: a statement prepared before the change fails
    // on the server, "cached plan must not change result type".)
    drop(releases);
    drop(stores);
    let stores = open(&common::config(&url)).expect("open");
    let releases = Releases::new(stores.plugins.clone());
    let text = releases.rollout("text").unwrap_err();
    assert_eq!(text.kind(), ErrorKind::Incompatible, "{text}");
    assert!(text.to_string().contains("`version`"), "{text}");
}

/// A damaged artifact row is reported with its remedy, and installing the
/// package again writes it anew (it was kept: a second write of a digest
/// did nothing).
#[test]
fn a_damaged_artifact_is_written_again_by_installing_again() {
    use airlock_store::{Installed, Releases, VersionFiles};
    let url = common::fresh_database();
    let stores = open(&common::config(&url)).expect("open");
    let releases = Releases::new(stores.plugins.clone());
    let files = VersionFiles {
        manifest: b"manifest",
        component: b"component",
        component_file: "c.wasm",
        cases: None,
        signature: None,
    };
    let Installed::New(installed) = releases
        .install("text", "1.0.0", files, None, "ops", 1)
        .expect("install")
    else {
        panic!("installed before")
    };
    common::admin(
        &url,
        &format!(
            "UPDATE airlock_artifacts SET data = 'damaged'::bytea WHERE digest = '{}'",
            installed.component_digest
        ),
    );
    let err = releases
        .artifact(&installed.component_digest)
        .expect_err("damaged");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("install the package"), "{err}");
    assert!(matches!(
        releases.install("text", "1.0.0", files, None, "ops", 2),
        Ok(Installed::Already(_))
    ));
    assert_eq!(
        releases
            .artifact(&installed.component_digest)
            .expect("repaired"),
        b"component"
    );
}
