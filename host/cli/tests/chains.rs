//! `airlock audit` over a shared PostgreSQL store: two hosts (two data
//! directories, two origins, one database) each append their own chain;
//! the real binary verifies, queries, shows and exports both.
//!
//! Needs a real PostgreSQL server: the one `scripts/postgres start` runs
//! (its URL in target/postgres/url) or the one `AIRLOCK_TEST_POSTGRES_URL`
//! names. Each test gets a database of its own.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use airlock_tests::PLUGINS_DIR;
use serde_json::Value;

const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");

/// The binary under test: this build's, or `AIRLOCK_TEST_BIN` (a copy
/// taken while a build directory is shared with other checkouts).
fn airlock() -> std::ffi::OsString {
    std::env::var_os("AIRLOCK_TEST_BIN").unwrap_or_else(|| AIRLOCK.into())
}

fn server_url() -> String {
    if let Ok(url) = std::env::var("AIRLOCK_TEST_POSTGRES_URL")
        && !url.trim().is_empty()
    {
        return url.trim().to_owned();
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/postgres/url");
    match std::fs::read_to_string(&path) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => panic!(
            "no PostgreSQL server for the tests: run `scripts/postgres start` \
             (it writes target/postgres/url) or set AIRLOCK_TEST_POSTGRES_URL"
        ),
    }
}

/// Run `sql` on `url`.
fn admin(url: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL server: {e}"));
        let driver = tokio::spawn(connection);
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        drop(client);
        let _ = driver.await;
    });
}

/// A new, empty database on the test server; its URL.
fn fresh_database() -> String {
    let server = server_url();
    let name = format!(
        "t_{}_cli_{:08x}",
        std::process::id(),
        getrandom::u32().unwrap()
    );
    admin(&server, &format!("CREATE DATABASE \"{name}\""));
    let (base, query) = match server.find('?') {
        Some(q) => (&server[..q], &server[q..]),
        None => (server.as_str(), ""),
    };
    let scheme = base.find("://").unwrap() + 3;
    let end = base[scheme..].find('/').map_or(base.len(), |i| scheme + i);
    format!("{}/{name}{query}", &base[..end])
}

/// One host: its data directory and configuration on the shared database.
struct Host {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Host {
    fn new(url: &str, origin: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("airlock.toml");
        std::fs::write(
            &config,
            // Two records a call (intent, outcome), which the chains'
            // shapes below count on: `read` intents are not held.
            format!(
                "[store]\nbackend = \"postgres\"\nurl = \"{url}\"\norigin = \"{origin}\"\n\n[audit]\nhold_read_intents = false\n"
            ),
        )
        .unwrap();
        Host { dir, config }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(airlock())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("--config")
            .arg(&self.config)
            .arg("--plugins-dir")
            .arg(PLUGINS_DIR)
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "airlock {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn call(&self, text: &str) {
        self.ok(&[
            "call",
            "text/slugify",
            "--args",
            &format!(r#"{{"text":"{text}"}}"#),
        ]);
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

#[test]
fn audit_commands_cover_every_hosts_chain_in_a_shared_store() {
    let url = fresh_database();
    let a = Host::new(&url, "host-a");
    let b = Host::new(&url, "host-b");
    // Calls alternate between the hosts: each appends to its own chain.
    a.call("one");
    b.call("two");
    a.call("three");

    // Every chain verifies: host-a's against its own key, host-b's against
    // the key its checkpoints name (unvouched) until host-a holds a copy.
    let verify = json(&a.ok(&["audit", "verify", "--json"]));
    assert_eq!(verify["ok"], true, "{verify}");
    let chains = verify["chains"].as_array().unwrap();
    let origins: Vec<_> = chains
        .iter()
        .map(|c| c["origin"].as_str().unwrap())
        .collect();
    assert_eq!(origins, ["host-a", "host-b"]);
    assert_eq!(chains[0]["report"]["records"], 4);
    assert_eq!(chains[0]["key"]["source"], "own");
    assert_eq!(chains[1]["report"]["records"], 2);
    assert_eq!(chains[1]["key"]["source"], "named");
    assert_eq!(chains[1]["key"]["vouched"], false);
    let b_key = std::fs::read_to_string(b.dir.path().join("audit/signing.pub")).unwrap();
    assert_eq!(chains[1]["key"]["public_key"], b_key.trim());
    // With host-b's key copied into host-a's keys/, it is vouched for.
    std::fs::copy(
        b.dir.path().join("audit/keys/host-b.pub"),
        a.dir.path().join("audit/keys/host-b.pub"),
    )
    .unwrap();
    let verify = json(&a.ok(&["audit", "verify", "--json"]));
    assert_eq!(verify["chains"][1]["key"]["source"], "file");
    let text = a.ok(&["audit", "verify"]);
    assert!(
        text.contains("chain host-a (this host): ok: 4 records"),
        "{text}"
    );
    assert!(text.contains("chain host-b: ok: 2 records"), "{text}");
    assert!(text.contains("ok: 2 chains verified"), "{text}");

    // query and tail merge both chains by time, each record naming its
    // origin.
    let rows: Vec<Value> = a
        .ok(&["audit", "query", "--json"])
        .lines()
        .map(json)
        .collect();
    let seen: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["origin"].as_str().unwrap().to_owned(),
                r["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("host-a", 1),
        ("host-a", 2),
        ("host-b", 1),
        ("host-b", 2),
        ("host-a", 3),
        ("host-a", 4),
    ];
    // Records of one call may share a millisecond with another host's, so
    // compare each chain's order and the calls' order.
    for origin in ["host-a", "host-b"] {
        let mine: Vec<_> = seen
            .iter()
            .filter(|(o, _)| o == origin)
            .map(|(_, s)| *s)
            .collect();
        let want: Vec<_> = expected
            .iter()
            .filter(|(o, _)| *o == origin)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(mine, want, "{seen:?}");
    }
    let times: Vec<u64> = rows
        .iter()
        .map(|r| r["time_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let started_b = rows
        .iter()
        .position(|r| r["origin"] == "host-b" && r["seq"] == 1)
        .unwrap();
    let started_a3 = rows
        .iter()
        .position(|r| r["origin"] == "host-a" && r["seq"] == 3)
        .unwrap();
    assert!(started_b < started_a3, "{seen:?}");
    let tail = a.ok(&["audit", "tail", "-n", "3"]);
    assert_eq!(tail.lines().count(), 3, "{tail}");
    assert!(tail.contains("host-a:4"), "{tail}");
    let from_b = b.ok(&["audit", "query", "--outcome", "ok"]);
    assert_eq!(from_b.lines().count(), 3, "{from_b}");

    // show: this host's record by number, another's by ORIGIN:SEQ.
    let own = json(&a.ok(&["audit", "show", "2", "--json"]));
    assert_eq!(own["event"], "call_finished");
    let other = a.ok(&["audit", "show", "host-b:2"]);
    assert!(other.starts_with("record host-b:2 at "), "{other}");
    let missing = a.run(&["audit", "show", "host-b:9"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("holds records 1 to 2"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    assert_eq!(a.run(&["audit", "show", "nobody:1"]).status.code(), Some(2));
    assert_eq!(a.run(&["audit", "show", "x:y"]).status.code(), Some(2));

    // export writes both chains (version 2); verified offline with the
    // keys directory, and with named keys.
    let outside = tempfile::tempdir().unwrap();
    let export = outside.path().join("all.jsonl");
    let export_arg = export.to_str().unwrap();
    let said = a.ok(&["audit", "export", "--out", export_arg]);
    assert!(said.contains("exported 2 chains"), "{said}");
    let header = json(
        std::fs::read_to_string(&export)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    );
    assert_eq!(header["version"], 2);
    let keys = a.dir.path().join("audit/keys");
    let offline = json(&a.ok(&[
        "audit",
        "verify",
        "--export",
        export_arg,
        "--keys",
        keys.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(offline["ok"], true, "{offline}");
    assert_eq!(offline["chains"][0]["key"]["source"], "file");
    assert_eq!(offline["chains"][1]["report"]["records"], 2);
    let a_key = std::fs::read_to_string(a.dir.path().join("audit/signing.pub")).unwrap();
    let named = format!("host-a={}", a_key.trim());
    let offline = json(&a.ok(&[
        "audit", "verify", "--export", export_arg, "--pubkey", &named, "--json",
    ]));
    assert_eq!(offline["chains"][0]["key"]["source"], "given");
    assert_eq!(offline["chains"][1]["key"]["source"], "named");
    // An unnamed key for a file of several chains is ambiguous.
    let unnamed = a.run(&[
        "audit",
        "verify",
        "--export",
        export_arg,
        "--pubkey",
        a_key.trim(),
    ]);
    assert_eq!(unnamed.status.code(), Some(2));

    // Someone rewrites a record of host-b's chain in the database: verify
    // names the chain and the record, and fails; host-a's still holds.
    admin(
        &url,
        "UPDATE airlock_audit_records \
         SET bytes = convert_to(replace(convert_from(bytes, 'UTF8'), '\"principal\":\"local\"', '\"principal\":\"root\"'), 'UTF8') \
         WHERE origin = 'host-b' AND seq = 2",
    );
    let bad = a.run(&["audit", "verify", "--json"]);
    assert_eq!(bad.status.code(), Some(7));
    let bad = json(&String::from_utf8_lossy(&bad.stdout));
    assert_eq!(bad["ok"], false);
    assert_eq!(bad["chains"][0]["ok"], true);
    assert_eq!(bad["chains"][1]["origin"], "host-b");
    assert_eq!(bad["chains"][1]["failure"]["seq"], 2);
    assert_eq!(bad["chains"][1]["failure"]["problem"], "hash_mismatch");
    let text = a.run(&["audit", "verify"]);
    assert_eq!(text.status.code(), Some(7));
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("chain host-b: FAILED at record host-b:2"),
        "{text}"
    );
    assert!(text.contains("FAILED: 1 of 2 chains (host-b)"), "{text}");
    // From host-b too.
    assert_eq!(b.run(&["audit", "verify"]).status.code(), Some(7));
    // An export taken now carries the tampered record: offline verify fails
    // the same way.
    let tampered = outside.path().join("tampered.jsonl");
    a.ok(&["audit", "export", "--out", tampered.to_str().unwrap()]);
    let offline = a.run(&[
        "audit",
        "verify",
        "--export",
        tampered.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(offline.status.code(), Some(7));
    let offline = json(&String::from_utf8_lossy(&offline.stdout));
    assert_eq!(offline["chains"][1]["failure"]["seq"], 2);
}

#[test]
fn one_host_on_a_shared_store_prints_as_a_single_chain() {
    let url = fresh_database();
    let a = Host::new(&url, "solo");
    a.call("one");
    let verify = json(&a.ok(&["audit", "verify", "--json"]));
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(verify["report"]["records"], 2, "{verify}");
    let tail = a.ok(&["audit", "tail", "--json"]);
    let first = json(tail.lines().next().unwrap());
    assert!(first.get("origin").is_none(), "{first}");
    // A one-chain export is version 1, verified with the host's key.
    let outside = tempfile::tempdir().unwrap();
    let export = outside.path().join("solo.jsonl");
    a.ok(&["audit", "export", "--out", export.to_str().unwrap()]);
    let pubkey = a.dir.path().join("audit/signing.pub");
    let ok = json(&a.ok(&[
        "audit",
        "verify",
        "--export",
        export.to_str().unwrap(),
        "--pubkey",
        pubkey.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(ok["report"]["records"], 2);
}
