//! Many hosts, one truth: two `airlock serve --http` processes (origins
//! `host-a` and `host-b`, each with its own data directory) on one
//! PostgreSQL database, driven through their MCP endpoints and their
//! approvers' endpoints by a raw HTTP client.
//!
//! Every test makes a database of its own on the test server
//! (`scripts/postgres start`, or `AIRLOCK_TEST_POSTGRES_URL`); the fault
//! tests that stop PostgreSQL start a server of their own. No assertion is
//! about time: deadlines are there only so a broken build does not hang.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::time::{Duration, Instant};

use airlock_host::audit_log::{AuditLog, ChainRecord, ChainVerification, Event, KEYS_DIR};
use airlock_tests::{PLUGINS_DIR, install, read, sha256_hex};
use serde_json::{Value, json};

const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");
const TOKEN: &str = "cluster-caller-secret";
const ALICE: &str = "cluster-approver-alice";
const BOB: &str = "cluster-approver-bob";
/// Long enough for any machine; only there so a failure does not hang.
const PATIENCE: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

// ------------------------------------------------------------- PostgreSQL

/// The shared test server's URL (its default database).
fn server_url() -> String {
    if let Ok(url) = std::env::var("AIRLOCK_TEST_POSTGRES_URL")
        && !url.trim().is_empty()
    {
        return url.trim().to_owned();
    }
    match std::fs::read_to_string(repo().join("target/postgres/url")) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => panic!(
            "no PostgreSQL server for the tests: run `scripts/postgres start` \
             (it writes target/postgres/url) or set AIRLOCK_TEST_POSTGRES_URL"
        ),
    }
}

/// `url` naming database `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
    let authority = base.find("://").unwrap() + 3;
    let end = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{}/{name}{query}", &base[..end])
}

/// `url` with `password` instead of its own.
fn with_password(url: &str, password: &str) -> String {
    let scheme = url.find("://").unwrap() + 3;
    let at = url.rfind('@').unwrap();
    let user_end = url[scheme..at].find(':').map_or(at, |i| scheme + i);
    format!("{}:{password}{}", &url[..user_end], &url[at..])
}

/// `url` reaching its server at `port` on loopback instead.
fn with_port(url: &str, port: u16) -> String {
    let at = url.rfind('@').unwrap() + 1;
    let rest = &url[at..];
    let end = rest.find('/').unwrap();
    format!("{}127.0.0.1:{port}{}", &url[..at], &rest[end..])
}

/// The port `url` names.
fn port_of(url: &str) -> u16 {
    let at = url.rfind('@').unwrap() + 1;
    let rest = &url[at..];
    let host = &rest[..rest.find('/').unwrap()];
    host.rsplit_once(':').unwrap().1.parse().unwrap()
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

/// The names of the databases on `url`'s server left by test processes
/// that are gone (`c_<pid>_<n>`, `pid` no longer running).
fn stale_databases(url: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let names: Vec<String> = rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL server: {e}"));
        let driver = tokio::spawn(connection);
        let rows = client
            .simple_query("SELECT datname FROM pg_database WHERE datname LIKE 'c\\_%'")
            .await
            .unwrap();
        drop(client);
        let _ = driver.await;
        rows.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect()
    });
    names
        .into_iter()
        .filter(|name| {
            name.split('_')
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| {
                    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
                })
        })
        .collect()
}

/// A new, empty database on the server at `server`; its URL. The name
/// says which test process made it (`c_<pid>_<n>`); those of processes
/// that are gone are dropped first.
fn fresh_database(server: &str) -> String {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        for name in stale_databases(server) {
            admin(server, &format!("DROP DATABASE IF EXISTS \"{name}\""));
        }
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("c_{}_{n}", std::process::id());
    admin(server, &format!("DROP DATABASE IF EXISTS \"{name}\""));
    admin(server, &format!("CREATE DATABASE \"{name}\""));
    with_database(server, &name)
}

/// A PostgreSQL server of the test's own (`scripts/postgres --dir`),
/// destroyed when dropped: for the faults that stop it.
struct OwnServer {
    dir: PathBuf,
}

impl OwnServer {
    fn start(name: &str) -> (OwnServer, String) {
        let dir = repo().join(format!("target/postgres-{name}-{}", std::process::id()));
        let server = OwnServer { dir };
        let url = server.script("start");
        (server, url)
    }

    fn script(&self, command: &str) -> String {
        let out = Command::new(repo().join("scripts/postgres"))
            .arg(command)
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/postgres {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/postgres"))
            .arg("destroy")
            .arg("--dir")
            .arg(&self.dir)
            .output();
    }
}

/// A TCP proxy on loopback to a PostgreSQL server: one host's own way to
/// the database, which the test can cut (every connection closed, new
/// ones closed at once) and restore.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let (cut2, open2) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                {
                    let mut open = open2.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------- plugins

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

fn example(plugin: &str) -> Vec<u8> {
    read(&format!("{PLUGINS_DIR}/{plugin}/{plugin}.wasm"))
}

/// The plugins both hosts serve:
/// - `billing`, the example as shipped (refund: approval and idempotency
///   key required);
/// - `pay`, the billing component whose refund needs an idempotency key
///   but no approval (each refund paid is listed on its account: the side
///   effect counted);
/// - `shelf`, the notes component with one workspace for every caller and
///   a quota of 5 keys;
/// - `limited`, the text component whose `slugify` admits 4 calls an hour
///   over every caller.
fn plugins_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(PLUGINS_DIR).join("billing"),
        &root.path().join("billing"),
    );
    let pay = install(
        "pay",
        &example("billing"),
        "[capabilities]\nworkspace = \"read-write\"\nworkspace_scope = \"plugin\"\n\n\
         [limits]\ntimeout_ms = 30_000\n\n\
         [[tools]]\nname = \"open-account\"\nrisk = \"write\"\n\n\
         [[tools]]\nname = \"lookup\"\nrisk = \"read\"\n\n\
         [[tools]]\nname = \"refund\"\nrisk = \"write\"\nidempotency = \"required\"\n",
    );
    copy_dir(pay.path(), &root.path().join("pay"));
    let mut shelf = String::from(
        "[capabilities]\nworkspace = \"read-write\"\nworkspace_scope = \"plugin\"\n\n\
         [limits]\ntimeout_ms = 30_000\nworkspace_keys = 5\n",
    );
    for (tool, risk) in [
        ("add", "write"),
        ("get", "read"),
        ("list", "read"),
        ("delete", "write"),
        ("archive", "write"),
        ("read-archive", "read"),
    ] {
        shelf.push_str(&format!(
            "\n[[tools]]\nname = \"{tool}\"\nrisk = \"{risk}\"\n"
        ));
    }
    let shelf = install("shelf", &example("notes"), &shelf);
    copy_dir(shelf.path(), &root.path().join("shelf"));
    let mut limited = String::from("[capabilities]\nlog = true\n\n[limits]\ntimeout_ms = 30_000\n");
    for tool in ["stats", "regex-extract", "case"] {
        limited.push_str(&format!(
            "\n[[tools]]\nname = \"{tool}\"\nrisk = \"read\"\n"
        ));
    }
    limited.push_str("\n[[tools]]\nname = \"slugify\"\nrisk = \"read\"\nrate_limit = \"4/hour\"\n");
    let limited = install("limited", &example("text"), &limited);
    copy_dir(limited.path(), &root.path().join("limited"));
    root
}

// ------------------------------------------------------------------ hosts

/// One host's configuration: its data directory (its audit keys) and
/// config file (`[store] backend = "postgres"`, its origin).
struct Node {
    origin: &'static str,
    data: tempfile::TempDir,
    config: PathBuf,
    plugins: PathBuf,
}

impl Node {
    fn new(origin: &'static str, plugins: &Path, url: &str) -> Node {
        let data = tempfile::tempdir().unwrap();
        let config = data.path().join("airlock.toml");
        let node = Node {
            origin,
            data,
            config,
            plugins: plugins.to_owned(),
        };
        node.write_config(url);
        node
    }

    fn write_config(&self, url: &str) {
        let text = format!(
            "principal = \"operator\"\n\
             [serve]\nreload_interval_ms = 0\nmax_concurrent_calls = 128\nmax_calls_per_principal = 128\n\
             [[serve.tokens]]\nprincipal = \"agent-1\"\ntoken_sha256 = \"{}\"\n\
             [policy.approvals]\n\
             [[policy.approvals.approvers]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n\
             [[policy.approvals.approvers]]\nname = \"bob\"\ntoken_sha256 = \"{}\"\n\
             [store]\nbackend = \"postgres\"\norigin = \"{}\"\nurl = \"{url}\"\n\
             pool_size = 16\nconnect_timeout_ms = 5_000\npool_wait_ms = 60_000\nstatement_timeout_ms = 60_000\n",
            sha256_hex(TOKEN.as_bytes()),
            sha256_hex(ALICE.as_bytes()),
            sha256_hex(BOB.as_bytes()),
            self.origin,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--config".into(),
            self.config.display().to_string(),
            "--plugins-dir".into(),
            self.plugins.display().to_string(),
            "--data-dir".into(),
            self.data.path().display().to_string(),
        ]
    }

    /// `airlock serve --http` on a free loopback port.
    fn start(&self) -> Running {
        let mut child = Command::new(AIRLOCK)
            .args(self.args())
            .args(["serve", "--http", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let origin = self.origin;
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("[{origin}] {line}");
                if let Some((_, rest)) = line.split_once(" at http://") {
                    let _ = tx.send(Ok(rest.trim_end_matches("/mcp").to_owned()));
                } else {
                    let _ = tx.send(Err(line));
                }
            }
        });
        let deadline = Instant::now() + PATIENCE;
        let mut said = Vec::new();
        let addr = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ok(addr)) => break addr,
                Ok(Err(line)) => said.push(line),
                Err(_) => panic!(
                    "airlock serve ({origin}) did not start:\n{}",
                    said.join("\n")
                ),
            }
        };
        Running { child, addr }
    }

    /// Run `airlock <args>` with this host's configuration.
    fn airlock(&self, args: &[&str]) -> Output {
        Command::new(AIRLOCK)
            .args(self.args())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// This host's audit directory (its keys).
    fn audit_dir(&self) -> PathBuf {
        self.data.path().join("audit")
    }
}

struct Running {
    child: Child,
    addr: String,
}

impl Running {
    fn session(&self) -> Mcp {
        Mcp::connect(&self.addr)
    }

    /// Stop the server as a service manager does (SIGTERM).
    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exited = self.child.wait().unwrap();
        assert!(exited.success(), "airlock serve exited with {exited}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two hosts on one fresh database of the shared server.
struct Cluster {
    _plugins: tempfile::TempDir,
    url: String,
    a: Node,
    b: Node,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::on(&fresh_database(&server_url()))
    }

    fn on(url: &str) -> Cluster {
        let plugins = plugins_root();
        let a = Node::new("host-a", plugins.path(), url);
        let b = Node::new("host-b", plugins.path(), url);
        Cluster {
            _plugins: plugins,
            url: url.to_owned(),
            a,
            b,
        }
    }

    fn start(&self) -> (Running, Running) {
        (self.a.start(), self.b.start())
    }

    /// Every chain in the database, read as host A sees it (host B's key
    /// given in A's `audit/keys/`): each chain's verification and every
    /// record, merged.
    fn audit(&self) -> (Vec<ChainVerification>, Vec<ChainRecord>) {
        let keys = self.a.audit_dir().join(KEYS_DIR);
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::copy(
            self.b.audit_dir().join("signing.pub"),
            keys.join("host-b.pub"),
        )
        .unwrap();
        let stores = airlock_store_postgres::open(&airlock_host::PostgresConfig::new(&self.url))
            .unwrap_or_else(|e| panic!("{}", e.chain()));
        let log = AuditLog::read_only(stores.audit.clone(), "host-a", self.a.audit_dir()).unwrap();
        let verified = log.verify_all(&[]).unwrap();
        let records = log
            .records_all(&BTreeMap::new())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        (verified, records)
    }
}

/// Both chains verify, each against its host's own key.
fn check_chains(verified: &[ChainVerification]) {
    let origins: Vec<&str> = verified.iter().map(|v| v.origin.as_str()).collect();
    assert_eq!(origins, ["host-a", "host-b"], "{verified:?}");
    for chain in verified {
        let report = chain
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("chain {} broken: {e:?}", chain.origin));
        assert!(report.records > 0, "{chain:?}");
        assert!(
            !matches!(
                chain.key_source,
                airlock_host::audit_log::KeySource::None
                    | airlock_host::audit_log::KeySource::Named
            ),
            "{chain:?}"
        );
    }
}

// -------------------------------------------------------------- HTTP, MCP

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The JSON-RPC response in a JSON or an SSE body.
    fn message(&self) -> Value {
        for line in self.body.lines() {
            if let Some(data) = line.strip_prefix("data:")
                && let Ok(value) = serde_json::from_str::<Value>(data.trim())
                && value.get("id").is_some()
            {
                return value;
            }
        }
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.body))
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&body[..end]).unwrap_or("0");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = end + 2;
        let stop = (start + size).min(body.len());
        out.extend_from_slice(&body[start..stop]);
        body = body.get(stop + 2..).unwrap_or_default();
    }
}

/// One HTTP/1.1 request on a fresh connection.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    }) {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// An MCP session with one host, as agent-1.
struct Mcp {
    addr: String,
    session: String,
}

static IDS: AtomicU64 = AtomicU64::new(10);

impl Mcp {
    fn post(addr: &str, session: Option<&str>, body: &Value) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        let mut headers = vec![
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("MCP-Protocol-Version", "2025-11-25"),
        ];
        if let Some(session) = session {
            headers.push(("Mcp-Session-Id", session));
        }
        http(addr, "POST", "/mcp", &headers, &body.to_string())
    }

    fn connect(addr: &str) -> Mcp {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "cluster-test", "version": "0"}}});
        let reply = Mcp::post(addr, None, &init);
        assert_eq!(reply.status, 200, "{}", reply.body);
        let session = reply.header("mcp-session-id").unwrap().to_owned();
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let reply = Mcp::post(addr, Some(&session), &note);
        assert!(reply.status < 300, "{} {}", reply.status, reply.body);
        Mcp {
            addr: addr.to_owned(),
            session,
        }
    }

    /// `tools/call`; the tool result (`isError`, `_meta`, …).
    fn call(&self, tool: &str, arguments: Value, meta: Value) -> Value {
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let request = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": tool, "arguments": arguments, "_meta": meta}});
        let reply = Mcp::post(&self.addr, Some(&self.session), &request);
        assert_eq!(reply.status, 200, "{}", reply.body);
        let message = reply.message();
        message
            .get("result")
            .cloned()
            .unwrap_or_else(|| panic!("{tool}: {message}"))
    }
}

/// The error kind of a tool result; `None` when it succeeded.
fn kind(result: &Value) -> Option<String> {
    if result["isError"] != true {
        return None;
    }
    Some(
        result["_meta"]["airlock/error"]["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("an error without a kind: {result}"))
            .to_owned(),
    )
}

fn ok(result: &Value) -> &Value {
    assert_eq!(kind(result), None, "{result}");
    &result["structuredContent"]
}

fn key(k: &str) -> Value {
    json!({"airlock/idempotency_key": k})
}

fn refund(amount: u64) -> Value {
    json!({"account": "acct-1", "amount_cents": amount, "reason": "late delivery"})
}

/// The refunds paid to `acct-1` of plugin `plugin`.
fn refunds(mcp: &Mcp, plugin: &str) -> Vec<Value> {
    let account = mcp.call(
        &format!("{plugin}__lookup"),
        json!({"account": "acct-1"}),
        json!({}),
    );
    ok(&account)["refunds"].as_array().unwrap().clone()
}

/// An approver's request to one host's `/approvals` endpoints.
fn approvals(addr: &str, token: &str, method: &str, path: &str, body: &Value) -> Reply {
    let auth = format!("Bearer {token}");
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    http(
        addr,
        method,
        path,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
}

/// Retry `attempt` until it gives `Some`, within [`PATIENCE`].
fn eventually<T>(what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ------------------------------------------------------------------ tests

#[test]
fn one_idempotency_key_split_over_two_hosts_runs_its_tool_exactly_once() {
    let cluster = Cluster::new();
    let (a, b) = cluster.start();
    let on_a = a.session();
    ok(&on_a.call(
        "pay__open-account",
        json!({"account": "acct-1", "balance_cents": 1000}),
        json!({}),
    ));
    // 100 calls with one key, at once, half through each host.
    let barrier = Arc::new(Barrier::new(100));
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let addr = if i % 2 == 0 { &a.addr } else { &b.addr }.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mcp = Mcp::connect(&addr);
                barrier.wait();
                mcp.call("pay__refund", refund(250), key("refund-order-42"))
            })
        })
        .collect();
    let results: Vec<Value> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut ran = Vec::new();
    let mut replayed = 0;
    let mut in_progress = 0;
    for result in &results {
        match kind(result).as_deref() {
            None if result["_meta"]["airlock/call"]["replayed_from"].is_string() => replayed += 1,
            None => ran.push(ok(result)["call_id"].as_str().unwrap().to_owned()),
            Some("idempotency_in_use") => in_progress += 1,
            Some(other) => panic!("unexpected {other}: {result}"),
        }
    }
    assert_eq!(ran.len(), 1, "{results:?}");
    assert_eq!(replayed + in_progress, 99);
    // The side effect happened once: one refund on the account.
    let on_b = b.session();
    let paid = refunds(&on_b, "pay");
    assert_eq!(paid.len(), 1, "{paid:?}");
    assert_eq!(paid[0]["call_id"], ran[0].as_str());
    // Now settled, a retry on either host replays the one execution.
    for mcp in [&on_a, &on_b] {
        let again = mcp.call("pay__refund", refund(250), key("refund-order-42"));
        assert_eq!(kind(&again), None, "{again}");
        assert_eq!(
            again["_meta"]["airlock/call"]["replayed_from"],
            ran[0].as_str()
        );
    }
    assert_eq!(refunds(&on_a, "pay").len(), 1);

    // Each host appended its own chain; both verify, and across them one
    // call started the refund.
    let (mut a, mut b) = (a, b);
    a.terminate();
    b.terminate();
    let (verified, records) = cluster.audit();
    check_chains(&verified);
    let started: Vec<&ChainRecord> = records
        .iter()
        .filter(|r| {
            r.record.entry.event == Event::CallStarted
                && r.record.entry.plugin.as_deref() == Some("pay")
                && r.record.entry.tool.as_deref() == Some("refund")
        })
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(
        started[0].record.entry.call_id.as_deref(),
        Some(ran[0].as_str())
    );
    let replays: BTreeSet<&str> = records
        .iter()
        .filter(|r| r.record.entry.event == Event::CallReplayed)
        .map(|r| r.origin.as_str())
        .collect();
    assert_eq!(replays, BTreeSet::from(["host-a", "host-b"]));
}

#[test]
fn an_approval_asked_on_one_host_is_decided_on_the_other_and_runs_once() {
    let cluster = Cluster::new();
    let (a, b) = cluster.start();
    let (on_a, on_b) = (a.session(), b.session());
    ok(&on_a.call(
        "billing__open-account",
        json!({"account": "acct-1", "balance_cents": 0}),
        json!({}),
    ));
    // Asked on host A: it waits for a human.
    let asked = on_a.call("billing__refund", refund(500), key("ticket-7"));
    assert_eq!(kind(&asked).as_deref(), Some("approval_pending"), "{asked}");
    let id = asked["_meta"]["airlock/approval"]["approval_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Host B lists it and its approver approves it there.
    let listed = approvals(&b.addr, ALICE, "GET", "/approvals", &Value::Null);
    assert_eq!(listed.status, 200, "{}", listed.body);
    let listed: Value = serde_json::from_str(&listed.body).unwrap();
    let listed = listed["approvals"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id.as_str());
    let decided = approvals(
        &b.addr,
        ALICE,
        "POST",
        &format!("/approvals/{id}"),
        &json!({"decision": "approve", "reason": "customer verified"}),
    );
    assert_eq!(decided.status, 200, "{}", decided.body);
    // The agent resumes on host B: the refund runs, once.
    let mut meta = key("ticket-7");
    meta["airlock/approval_id"] = json!(id);
    let ran = on_b.call("billing__refund", refund(500), meta.clone());
    let call_id = ok(&ran)["call_id"].as_str().unwrap().to_owned();
    assert_eq!(ran["_meta"]["airlock/call"]["approval_id"], id.as_str());
    // Its retry on host A replays; the approval is consumed everywhere.
    let retry = on_a.call("billing__refund", refund(500), meta);
    assert_eq!(kind(&retry), None, "{retry}");
    assert_eq!(
        retry["_meta"]["airlock/call"]["replayed_from"],
        call_id.as_str()
    );
    let shown = approvals(
        &a.addr,
        BOB,
        "GET",
        &format!("/approvals/{id}"),
        &Value::Null,
    );
    let shown: Value = serde_json::from_str(&shown.body).unwrap();
    assert_eq!(shown["approval"]["state"], "consumed", "{shown}");
    assert_eq!(shown["approval"]["consumed_by_call"], call_id.as_str());
    let paid = refunds(&on_b, "billing");
    assert_eq!(paid.len(), 1, "{paid:?}");

    // Approve (through A) and reject (through B) racing: the first
    // decision wins, the other is refused, and the call follows it.
    for round in 0..4 {
        let k = format!("race-{round}");
        let asked = on_a.call("billing__refund", refund(100 + round), key(&k));
        assert_eq!(kind(&asked).as_deref(), Some("approval_pending"), "{asked}");
        let id = asked["_meta"]["airlock/approval"]["approval_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let barrier = Arc::new(Barrier::new(2));
        let race: Vec<_> = [
            (a.addr.clone(), ALICE, "approve"),
            (b.addr.clone(), BOB, "reject"),
        ]
        .into_iter()
        .map(|(addr, token, decision)| {
            let (barrier, id) = (barrier.clone(), id.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let reply = approvals(
                    &addr,
                    token,
                    "POST",
                    &format!("/approvals/{id}"),
                    &json!({"decision": decision}),
                );
                (decision, reply.status, reply.body)
            })
        })
        .collect();
        let outcomes: Vec<_> = race.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<&str> = outcomes
            .iter()
            .filter(|(_, status, _)| *status == 200)
            .map(|(d, _, _)| *d)
            .collect();
        assert_eq!(winners.len(), 1, "{outcomes:?}");
        let loser = outcomes.iter().find(|(_, s, _)| *s != 200).unwrap();
        assert_eq!(loser.1, 409, "{outcomes:?}");
        let state = if winners[0] == "approve" {
            "approved"
        } else {
            "rejected"
        };
        for addr in [&a.addr, &b.addr] {
            let shown = approvals(
                addr,
                ALICE,
                "GET",
                &format!("/approvals/{id}"),
                &Value::Null,
            );
            let shown: Value = serde_json::from_str(&shown.body).unwrap();
            assert_eq!(shown["approval"]["state"], state, "{shown}");
        }
        let mut meta = key(&k);
        meta["airlock/approval_id"] = json!(id);
        let resumed = on_b.call("billing__refund", refund(100 + round), meta);
        match winners[0] {
            "approve" => assert_eq!(kind(&resumed), None, "{resumed}"),
            _ => assert_eq!(
                kind(&resumed).as_deref(),
                Some("approval_rejected"),
                "{resumed}"
            ),
        }
    }
}

#[test]
fn a_rate_limit_is_one_bucket_over_both_hosts() {
    let cluster = Cluster::new();
    let (a, b) = cluster.start();
    let sessions = [a.session(), b.session()];
    // `4/hour`: ten calls alternating between the hosts, four admitted.
    let results: Vec<Value> = (0..10)
        .map(|i| {
            sessions[i % 2].call(
                "limited__slugify",
                json!({"text": format!("call {i}")}),
                json!({}),
            )
        })
        .collect();
    let admitted = results.iter().filter(|r| kind(r).is_none()).count();
    assert_eq!(admitted, 4, "{results:?}");
    for refused in results.iter().filter(|r| kind(r).is_some()) {
        assert_eq!(kind(refused).as_deref(), Some("rate_limited"), "{refused}");
    }
    // Both hosts refused some: neither kept a bucket of its own.
    for start in 0..2 {
        assert!(
            results
                .iter()
                .skip(start)
                .step_by(2)
                .any(|r| kind(r).is_some()),
            "{results:?}"
        );
    }
}

/// An operator's command run beside a serving host with the host's own
/// configuration opened a second host of its origin on the shared
/// database: it marked the server's calls unknown and moved its chain's
/// head, so the server's next append failed as diverged and its audit log
/// stopped. The origin is held by the server; the command goes through
/// its control socket, as with sled.
#[test]
fn a_command_beside_a_serving_host_goes_through_it_not_around_it() {
    let cluster = Cluster::new();
    let (a, b) = cluster.start();
    let mcp = a.session();
    ok(&mcp.call(
        "billing__open-account",
        json!({"account": "acct-1", "balance_cents": 0}),
        json!({}),
    ));
    let asked = mcp.call("billing__refund", refund(500), key("beside-1"));
    assert_eq!(kind(&asked).as_deref(), Some("approval_pending"), "{asked}");
    let id = asked["_meta"]["airlock/approval"]["approval_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The approver decides on the server's machine, with its configuration.
    let out = cluster.a.airlock(&[
        "approvals",
        "approve",
        &id,
        "--reason",
        "checked",
        "--as",
        "alice",
        "--token",
        ALICE,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server's audit log goes on: the approved refund runs, recorded.
    let mut meta = key("beside-1");
    meta["airlock/approval_id"] = json!(id);
    ok(&mcp.call("billing__refund", refund(500), meta));
    ok(&b.session().call(
        "billing__open-account",
        json!({"account": "acct-2", "balance_cents": 0}),
        json!({}),
    ));
    let (mut a, mut b) = (a, b);
    a.terminate();
    b.terminate();
    let (verified, records) = cluster.audit();
    check_chains(&verified);
    assert!(
        records
            .iter()
            .any(|r| r.origin == "host-a" && r.record.entry.event == Event::ApprovalDecided),
        "{records:?}"
    );
}

#[test]
fn read_only_mode_switched_once_stops_both_hosts() {
    let cluster = Cluster::new();
    let (a, b) = cluster.start();
    let sessions = [a.session(), b.session()];
    ok(&sessions[0].call(
        "pay__open-account",
        json!({"account": "acct-1", "balance_cents": 1000}),
        json!({}),
    ));
    // The operator switches once, from a machine of their own: its own
    // data directory, the same database.
    let operator = Node::new("operator", &cluster.a.plugins, &cluster.url);
    let out = operator.airlock(&["mode", "read-only", "--reason", "incident 12"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, mcp) in sessions.iter().enumerate() {
        let refused = mcp.call("pay__refund", refund(10), key(&format!("ro-{i}")));
        assert_eq!(
            kind(&refused).as_deref(),
            Some("read_only_mode"),
            "{refused}"
        );
        // Reading goes on.
        assert!(refunds(mcp, "pay").is_empty());
    }
    let out = operator.airlock(&["mode", "normal", "--reason", "resolved"]);
    assert!(out.status.success());
    for (i, mcp) in sessions.iter().enumerate() {
        ok(&mcp.call("pay__refund", refund(10), key(&format!("ro-{i}"))));
    }
    assert_eq!(refunds(&sessions[1], "pay").len(), 2);
    // Each host recorded the switches in its own chain.
    let (mut a, mut b) = (a, b);
    a.terminate();
    b.terminate();
    let (verified, records) = cluster.audit();
    check_chains(&verified);
    for origin in ["host-a", "host-b"] {
        let switches = records
            .iter()
            .filter(|r| r.origin == origin && r.record.entry.event == Event::ModeChanged)
            .count();
        assert_eq!(switches, 2, "{origin}: {records:?}");
    }
}

#[test]
fn a_tool_paused_once_is_refused_by_both_hosts_until_resumed() {
    let cluster = Cluster::new();
    let (a, b) = cluster.start();
    let sessions = [a.session(), b.session()];
    ok(&sessions[0].call(
        "pay__open-account",
        json!({"account": "acct-1", "balance_cents": 1000}),
        json!({}),
    ));
    // The operator pauses once, from a machine of their own: the pause is
    // in the shared ledger.
    let operator = Node::new("operator", &cluster.a.plugins, &cluster.url);
    let out = operator.airlock(&["alerts", "pause", "pay/refund", "--reason", "incident 13"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut attempt = 0;
    for mcp in &sessions {
        eventually("the pause reaches the host", || {
            attempt += 1;
            let refused = mcp.call("pay__refund", refund(10), key(&format!("p-{attempt}")));
            (kind(&refused).as_deref() == Some("tool_paused")).then_some(())
        });
    }
    // Its other tools go on. (A refund may have run on a host before the
    // pause reached it: each host reads the pauses at most a second old.)
    let before = refunds(&sessions[0], "pay").len();
    let listed = operator.airlock(&["alerts", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["pauses"][0]["target"], "pay/refund", "{listed}");
    let out = operator.airlock(&["alerts", "resume", "pay/refund", "--reason", "resolved"]);
    assert!(out.status.success());
    for mcp in &sessions {
        eventually("the resume reaches the host", || {
            attempt += 1;
            let result = mcp.call("pay__refund", refund(10), key(&format!("p-{attempt}")));
            kind(&result).is_none().then_some(())
        });
    }
    assert_eq!(refunds(&sessions[1], "pay").len(), before + 2);
}

#[test]
fn a_workspace_quota_holds_with_writers_on_both_hosts() {
    let cluster = Cluster::new();
    let (a, b) = cluster.start();
    // Twelve notes at once, six through each host; the quota is 5 keys.
    let barrier = Arc::new(Barrier::new(12));
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let addr = if i % 2 == 0 { &a.addr } else { &b.addr }.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mcp = Mcp::connect(&addr);
                barrier.wait();
                mcp.call(
                    "shelf__add",
                    json!({"title": format!("note {i}"), "body": "x"}),
                    json!({}),
                )
            })
        })
        .collect();
    let results: Vec<Value> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let stored = results.iter().filter(|r| kind(r).is_none()).count();
    assert_eq!(stored, 5, "{results:?}");
    for refused in results.iter().filter(|r| kind(r).is_some()) {
        let text = refused.to_string();
        assert!(text.contains("quota"), "{refused}");
    }
    for mcp in [a.session(), b.session()] {
        let listed = mcp.call("shelf__list", json!({}), json!({}));
        assert_eq!(
            ok(&listed)["result"].as_array().unwrap().len(),
            5,
            "{listed}"
        );
    }
}

/// The calls of one outage: each fails closed with a kind saying the store
/// is out.
fn fails_closed(result: &Value) -> String {
    let kind = kind(result).unwrap_or_else(|| panic!("a call ran without its store: {result}"));
    assert!(
        matches!(
            kind.as_str(),
            "store_unavailable" | "ledger_unavailable" | "audit_unavailable" | "workspace"
        ),
        "{result}"
    );
    kind
}

#[test]
fn postgres_stopped_mid_stream_fails_closed_and_both_hosts_recover_without_a_gap() {
    let (server, url) = OwnServer::start("cluster-outage");
    let cluster = Cluster::on(&url);
    let (a, b) = cluster.start();
    let sessions = [a.session(), b.session()];
    ok(&sessions[0].call(
        "pay__open-account",
        json!({"account": "acct-1", "balance_cents": 0}),
        json!({}),
    ));
    for (i, mcp) in sessions.iter().enumerate() {
        ok(&mcp.call("pay__refund", refund(1), key(&format!("before-{i}"))));
    }
    server.script("stop");
    // Every call fails closed: no refund is paid, and none is left behind
    // without its intent recorded.
    let mut kinds = BTreeSet::new();
    for round in 0..3 {
        for (i, mcp) in sessions.iter().enumerate() {
            kinds.insert(fails_closed(&mcp.call(
                "pay__refund",
                refund(1000),
                key(&format!("during-{round}-{i}")),
            )));
            kinds.insert(fails_closed(&mcp.call(
                "pay__lookup",
                json!({"account": "acct-1"}),
                json!({}),
            )));
        }
    }
    eprintln!("kinds while PostgreSQL was down: {kinds:?}");
    server.script("start");
    // Both hosts serve again once the database is back.
    for (i, mcp) in sessions.iter().enumerate() {
        eventually("a call after PostgreSQL came back", || {
            let result = mcp.call("pay__refund", refund(1), key(&format!("after-{i}")));
            kind(&result).is_none().then_some(())
        });
    }
    let paid = refunds(&sessions[1], "pay");
    assert_eq!(paid.len(), 4, "{paid:?}");
    assert!(paid.iter().all(|r| r["amount_cents"] == 1), "{paid:?}");
    let (mut a, mut b) = (a, b);
    a.terminate();
    b.terminate();
    // No gap in either chain, and each refund paid has its intent record.
    let (verified, records) = cluster.audit();
    check_chains(&verified);
    for refund in &paid {
        assert!(
            records
                .iter()
                .any(|r| r.record.entry.event == Event::CallStarted
                    && r.record.entry.call_id.as_deref() == refund["call_id"].as_str()),
            "no intent recorded for {refund}"
        );
    }
}

#[test]
fn one_host_cut_off_from_postgres_refuses_while_the_other_goes_on() {
    let url = fresh_database(&server_url());
    let proxy = Proxy::start(port_of(&url));
    let cluster = Cluster::on(&url);
    // Host A reaches the database only through the proxy.
    cluster.a.write_config(&with_port(&url, proxy.port));
    let (a, b) = cluster.start();
    let (on_a, on_b) = (a.session(), b.session());
    ok(&on_a.call(
        "pay__open-account",
        json!({"account": "acct-1", "balance_cents": 0}),
        json!({}),
    ));
    proxy.cut();
    for i in 0..3 {
        fails_closed(&on_a.call("pay__refund", refund(7), key(&format!("a-{i}"))));
        ok(&on_b.call("pay__refund", refund(1), key(&format!("b-{i}"))));
    }
    assert_eq!(refunds(&on_b, "pay").len(), 3);
    proxy.restore();
    eventually("host A after its connection came back", || {
        let result = on_a.call("pay__refund", refund(2), key("a-back"));
        kind(&result).is_none().then_some(())
    });
    let paid = refunds(&on_a, "pay");
    assert_eq!(paid.len(), 4, "{paid:?}");
    assert!(paid.iter().all(|r| r["amount_cents"] != 7), "{paid:?}");
    let (mut a, mut b) = (a, b);
    a.terminate();
    b.terminate();
    check_chains(&cluster.audit().0);
}

#[test]
fn serve_refuses_to_start_on_a_bad_store_url_naming_the_problem_not_the_password() {
    let server = server_url();
    let plugins = plugins_root();
    let node = Node::new("host-a", plugins.path(), &server);
    let secret = "hunter2-not-the-password";
    let cases = [
        ("not a url".to_owned(), vec!["not a PostgreSQL url"]),
        (with_password(&server, secret), vec!["wrong password"]),
        (
            with_password(&with_database(&server, "no_such_cluster_db"), "airlock"),
            vec!["no_such_cluster_db", "does not exist"],
        ),
    ];
    for (url, expected) in cases {
        // The URL from the environment, as an operator keeps its password
        // out of files.
        let out = Command::new(AIRLOCK)
            .args(node.args())
            .args(["serve", "--http", "127.0.0.1:0"])
            .env("AIRLOCK_STORE_URL", &url)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: {stderr}");
        assert!(!stderr.contains("serving"), "{stderr}");
        for word in expected {
            assert!(stderr.contains(word), "{url}: {stderr}");
        }
        assert!(!stderr.contains(secret), "{stderr}");
        assert!(!stderr.contains(":airlock@"), "{stderr}");
    }
}

/// A copy of the built `text` plugin named `words`, as `version`, in `to`.
fn words_version(to: &Path, version: &str) -> PathBuf {
    let dir = to.join(format!("words-{version}"));
    copy_dir(&Path::new(PLUGINS_DIR).join("text"), &dir);
    let manifest = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text
        .replacen("name = \"text\"", "name = \"words\"", 1)
        .replacen(
            "version = \"0.1.0\"",
            &format!("version = \"{version}\""),
            1,
        );
    std::fs::write(&manifest, text).unwrap();
    dir
}

/// The version that answered a successful call.
fn version_of(result: &Value) -> String {
    ok(result);
    result["_meta"]["airlock/call"]["plugin_version"]
        .as_str()
        .unwrap_or_else(|| panic!("no plugin_version: {result}"))
        .to_owned()
}

#[test]
fn a_version_installed_and_rolled_out_once_serves_on_both_hosts_and_rolls_back_everywhere() {
    let cluster = Cluster::new();
    let (a, b) = cluster.start();
    let sessions = [a.session(), b.session()];
    let versions = tempfile::tempdir().unwrap();
    // The operator installs and activates from a machine of their own: its
    // own data directory, the same database.
    let operator = Node::new("operator", &cluster.a.plugins, &cluster.url);
    for version in ["1.0.0", "2.0.0"] {
        let dir = words_version(versions.path(), version);
        let out = operator.airlock(&["plugins", "install", dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let activate = operator.airlock(&["rollout", "words", "1.0.0", "--percent", "100"]);
    assert!(
        activate.status.success(),
        "{}",
        String::from_utf8_lossy(&activate.stderr)
    );
    let slug = |mcp: &Mcp| mcp.call("words__slugify", json!({"text": "Hi there"}), json!({}));
    for mcp in &sessions {
        // Until the host's tool list follows the rollout (within a
        // second), the tool is unknown there.
        eventually("1.0.0 serving on both hosts", || {
            let request = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "words__slugify", "arguments": {"text": "Hi there"}}});
            let reply = Mcp::post(&mcp.addr, Some(&mcp.session), &request);
            let result = reply.message().get("result").cloned()?;
            (version_of(&result) == "1.0.0").then_some(())
        });
    }
    // Every caller on 2.0.0, set through host A's running server.
    let out = cluster
        .a
        .airlock(&["rollout", "words", "2.0.0", "--percent", "100"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for mcp in &sessions {
        eventually("2.0.0 serving on both hosts", || {
            (version_of(&slug(mcp)) == "2.0.0").then_some(())
        });
    }
    // One rollback, through host B, reaches both.
    let out = cluster
        .b
        .airlock(&["rollback", "words", "--reason", "regression"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for mcp in &sessions {
        eventually("1.0.0 back on both hosts", || {
            (version_of(&slug(mcp)) == "1.0.0").then_some(())
        });
    }
    // The versions were installed once, in the shared store; the changes
    // are in the chains of the hosts that made them.
    let (mut a, mut b) = (a, b);
    a.terminate();
    b.terminate();
    // The operator's chain verifies against the operator's key too.
    let keys = cluster.a.audit_dir().join(KEYS_DIR);
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(
        operator.audit_dir().join("signing.pub"),
        keys.join("operator.pub"),
    )
    .unwrap();
    let (verified, records) = cluster.audit();
    let origins: Vec<&str> = verified.iter().map(|v| v.origin.as_str()).collect();
    assert_eq!(origins, ["host-a", "host-b", "operator"], "{verified:?}");
    for chain in &verified {
        assert!(
            chain.result.is_ok(),
            "chain {} broken: {chain:?}",
            chain.origin
        );
    }
    let installs = records
        .iter()
        .filter(|r| r.record.entry.event == Event::PluginInstalled)
        .count();
    assert_eq!(installs, 2, "{records:?}");
    let changes: Vec<(String, String)> = records
        .iter()
        .filter(|r| r.record.entry.event == Event::RolloutChanged)
        .map(|r| (r.origin.clone(), r.record.entry.decision.clone().unwrap()))
        .collect();
    assert_eq!(
        changes,
        [
            ("operator".to_owned(), "activate".to_owned()),
            ("host-a".to_owned(), "activate".to_owned()),
            ("host-b".to_owned(), "rollback".to_owned()),
        ],
        "{records:?}"
    );
}
