//! The operator's commands while `airlock serve` holds the data directory:
//! the real binary, a real `airlock serve` (stdio, driven with raw JSON-RPC
//! lines), and the commands going through its control socket.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use airlock_tests::{MISBEHAVE, PLUGINS_DIR, install, read, sha256_hex};
use serde_json::{Value, json};

const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");

/// The binary under test: this build's, or `AIRLOCK_TEST_BIN` (a copy
/// taken while a build directory is shared with other checkouts).
fn airlock() -> std::ffi::OsString {
    std::env::var_os("AIRLOCK_TEST_BIN").unwrap_or_else(|| AIRLOCK.into())
}
const APPROVER_TOKEN: &str = "approver-secret-1";
/// Longer than any command here may take: a command that waited for the
/// lock would show.
const LOCK_WAIT_MS: u64 = 30_000;

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

/// The example plugins and the misbehave guest (`now` irreversible: it
/// needs an approval).
fn plugins_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    copy_dir(Path::new(PLUGINS_DIR), root.path());
    let mut manifest = String::from(
        "[capabilities]\nlog = true\n\n[limits]\nfuel = 1_000_000_000_000\ntimeout_ms = 5_000\n",
    );
    for (tool, risk) in [
        ("spin", "read"),
        ("grow", "read"),
        ("echo", "read"),
        ("now", "irreversible"),
    ] {
        manifest.push_str(&format!(
            "\n[[tools]]\nname = \"{tool}\"\nrisk = \"{risk}\"\n"
        ));
    }
    let misbehave = install("misbehave", &read(MISBEHAVE), &manifest);
    copy_dir(misbehave.path(), &root.path().join("misbehave"));
    root
}

struct Setup {
    _root: tempfile::TempDir,
    plugins: PathBuf,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(serve: &str) -> Setup {
        Setup::with_audit(serve, "")
    }

    /// With `audit` lines added to the `[audit]` table.
    fn with_audit(serve: &str, audit: &str) -> Setup {
        let root = plugins_root();
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "principal = \"stdio-agent\"\n[audit]\nlock_wait_ms = {LOCK_WAIT_MS}\n{audit}\n[serve]\nreload_interval_ms = 0\n{serve}\n[policy.approvals]\n[[policy.approvals.approvers]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n",
            sha256_hex(APPROVER_TOKEN.as_bytes())
        );
        std::fs::write(dir.path().join("airlock.toml"), config).unwrap();
        Setup {
            plugins: root.path().to_owned(),
            _root: root,
            dir,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket(&self) -> PathBuf {
        self.data().join("control.sock")
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new(airlock());
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("--config")
            .arg(self.dir.path().join("airlock.toml"))
            .arg("--plugins-dir")
            .arg(&self.plugins)
            .arg("--data-dir")
            .arg(self.data())
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"));
        cmd
    }

    /// Run a command; it must not wait for the lock.
    fn run(&self, args: &[&str]) -> Output {
        let started = Instant::now();
        let out = self
            .cmd()
            .env("AIRLOCK_APPROVER_TOKEN", APPROVER_TOKEN)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(LOCK_WAIT_MS / 2),
            "{args:?} took {:?}: it waited for the lock",
            started.elapsed()
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `airlock serve` on stdio, ready.
    fn serve(&self) -> Serve {
        let mut child = self
            .cmd()
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (ready_tx, ready) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("[serve] {line}");
                if line.contains("serving") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let (lines_tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        ready
            .recv_timeout(Duration::from_secs(120))
            .expect("airlock serve did not start");
        let stdin = child.stdin.take().unwrap();
        let mut serve = Serve {
            child,
            stdin: Some(stdin),
            lines,
            next_id: 0,
        };
        serve.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}),
        );
        serve.notify("notifications/initialized");
        serve
    }
}

struct Serve {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    next_id: u64,
}

impl Serve {
    fn notify(&mut self, method: &str) {
        writeln!(
            self.stdin.as_mut().unwrap(),
            "{}",
            json!({"jsonrpc": "2.0", "method": method})
        )
        .unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(self.stdin.as_mut().unwrap(), "{message}").unwrap();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .expect("no answer from airlock serve");
            let value: Value = serde_json::from_str(&line).unwrap();
            if value["id"] == id {
                return value["result"].clone();
            }
        }
    }

    /// A tool call's result.
    fn call(&mut self, tool: &str, arguments: Value, meta: Value) -> Value {
        self.request(
            "tools/call",
            json!({"name": tool, "arguments": arguments, "_meta": meta}),
        )
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn eval_and_replay_work_while_the_server_holds_the_data_directory() {
    let setup = Setup::with_audit("", "replayable = [\"text/slugify\"]");
    let mut serve = setup.serve();
    for text in ["Crème brûlée", "Hello, World!"] {
        let slug = serve.call("text__slugify", json!({"text": text}), json!({}));
        assert_eq!(slug["isError"], false, "{slug}");
    }
    // eval holds nothing of the data directory.
    let out = setup.ok(&["eval", "text"]);
    assert!(out.contains("9 passed, 0 failed"), "{out}");
    // replay reads the log through the server.
    let release = Path::new(airlock_tests::RELEASES_DIR).join("text-0.2.0");
    let out = setup.run(&[
        "replay",
        "--plugin",
        "text",
        "--against",
        release.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["replayed"], 2, "{report}");
    assert_eq!(report["different"], 1, "{report}");
    assert_eq!(report["calls"][0]["diff"]["at"], "/slug", "{report}");
    serve.kill();
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_operator_command_works_through_the_running_server() {
    let setup = Setup::new("");
    let mut serve = setup.serve();
    let mode = std::fs::metadata(setup.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(setup.data())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    // Calls made through the server.
    let added = serve.call(
        "notes__add",
        json!({"title": "T", "body": "kept"}),
        json!({"airlock/session": "s1"}),
    );
    assert_eq!(added["isError"], false, "{added}");

    // audit query / show / tail / verify / export.
    let records = json_lines(&setup.ok(&["audit", "query", "--plugin", "notes", "--json"]));
    let finished = records
        .iter()
        .find(|r| r["event"] == "call_finished" || r["entry"]["event"] == "call_finished")
        .unwrap_or_else(|| panic!("no call_finished for notes: {records:?}"));
    let seq = finished["seq"].as_u64().unwrap();
    let shown: Value =
        serde_json::from_str(&setup.ok(&["audit", "show", &seq.to_string(), "--json"])).unwrap();
    assert_eq!(&shown, finished);
    let missing = setup.run(&["audit", "show", "999999"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no record 999999"));
    let text = setup.ok(&["audit", "tail", "-n", "50"]);
    assert!(text.contains("notes/add"), "{text}");
    let verified: Value = serde_json::from_str(&setup.ok(&["audit", "verify", "--json"])).unwrap();
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(
        verified["log"],
        setup.data().join("audit").display().to_string()
    );
    let export = setup.dir.path().join("export.jsonl");
    let said = setup.ok(&["audit", "export", "--out", export.to_str().unwrap()]);
    assert!(said.contains("exported"), "{said}");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&export).unwrap().permissions())
            & 0o777,
        0o600,
        "an export is its owner's only"
    );
    let pubkey = setup.data().join("audit/signing.pub");
    let offline: Value = serde_json::from_str(&setup.ok(&[
        "audit",
        "verify",
        "--export",
        export.to_str().unwrap(),
        "--pubkey",
        pubkey.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(offline["ok"], true, "{offline}");
    assert!(offline["report"]["records"].as_u64().unwrap() >= seq);

    // tail -f follows what the server appends.
    let mut follow = setup
        .cmd()
        .args(["audit", "tail", "-f", "-n", "0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, followed) = mpsc::channel();
    let stdout = BufReader::new(follow.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(800));
    let slug = serve.call("text__slugify", json!({"text": "Hi there"}), json!({}));
    assert_eq!(slug["isError"], false, "{slug}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while let Ok(line) = followed.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains("slugify") {
            seen = true;
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen,
        "audit tail -f did not show the call made through the server"
    );

    // workspace ls / get.
    let plugins: Value = serde_json::from_str(&setup.ok(&["workspace", "ls", "--json"])).unwrap();
    assert_eq!(plugins["plugins"][0]["plugin"], "notes", "{plugins}");
    let listing: Value =
        serde_json::from_str(&setup.ok(&["workspace", "ls", "notes", "--json"])).unwrap();
    assert_eq!(listing["keys"][0]["key"], "note/t", "{listing}");
    assert_eq!(listing["keys"][0]["owner"]["session"], "s1");
    let text = setup.ok(&["workspace", "ls", "notes"]);
    assert!(text.contains("session \"s1\""), "{text}");
    let value: Value = serde_json::from_str(&setup.ok(&[
        "workspace",
        "get",
        "notes",
        "note/t",
        "--principal",
        "stdio-agent",
        "--session",
        "s1",
    ]))
    .unwrap();
    assert_eq!(value["body"], "kept");
    let none = setup.run(&["workspace", "get", "notes", "note/t"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("has no \"note/t\""));
    // workspace export, streamed from the server into an owner-only file,
    // and nothing of it left in the data directory.
    let exported = setup.dir.path().join("workspace.jsonl");
    setup.ok(&[
        "workspace",
        "export",
        "notes",
        "--out",
        exported.to_str().unwrap(),
    ]);
    let lines = std::fs::read_to_string(&exported).unwrap();
    let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["key"], "note/t", "{lines}");
    assert!(
        first["value"].as_str().is_some_and(|v| v.contains("kept")),
        "{lines}"
    );
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&exported).unwrap().permissions()
        ) & 0o777,
        0o600
    );
    let left: Vec<_> = std::fs::read_dir(setup.data())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".control-workspace"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // An approval asked through the server, approved with the CLI; the
    // call then runs.
    let pending = serve.call("misbehave__now", json!({}), json!({}));
    assert_eq!(pending["isError"], true, "{pending}");
    let id = pending["_meta"]["airlock/approval"]["approval_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no approval id: {pending}"))
        .to_owned();
    let listed: Value = serde_json::from_str(&setup.ok(&["approvals", "list", "--json"])).unwrap();
    assert_eq!(listed["approvals"][0]["id"], id.as_str(), "{listed}");
    assert!(
        setup
            .ok(&["approvals", "show", &id])
            .contains("misbehave/now")
    );
    // A wrong token is refused as on the data directory.
    let wrong = setup
        .cmd()
        .env("AIRLOCK_APPROVER_TOKEN", "not-it")
        .args(["approvals", "approve", &id, "--as", "alice"])
        .output()
        .unwrap();
    assert_eq!(
        wrong.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let approved = setup.ok(&["approvals", "approve", &id, "--as", "alice"]);
    assert!(
        approved.contains("approved") && approved.contains("by alice"),
        "{approved}"
    );
    let again = setup.run(&[
        "approvals",
        "reject",
        &id,
        "--as",
        "alice",
        "--reason",
        "late",
    ]);
    assert_eq!(again.status.code(), Some(3));
    let done = serve.call(
        "misbehave__now",
        json!({}),
        json!({"airlock/approval_id": id}),
    );
    assert_eq!(done["isError"], false, "{done}");
    // Arguments the approver cannot see whole (the card digits are
    // redacted before the approval is stored): through the server too, a
    // plain approval is refused and `--unseen` grants it.
    let held = serve.call(
        "billing__refund",
        json!({"account": "9182", "amount_cents": 100, "reason": "lost", "card_last4": "4242"}),
        json!({"airlock/idempotency_key": "unseen-1"}),
    );
    let id = held["_meta"]["airlock/approval"]["approval_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no approval id: {held}"))
        .to_owned();
    let plain = setup.run(&["approvals", "approve", &id, "--as", "alice"]);
    let told = String::from_utf8_lossy(&plain.stderr).into_owned();
    assert_eq!(plain.status.code(), Some(3), "{told}");
    assert!(
        told.contains("values were redacted") && told.contains("--unseen"),
        "{told}"
    );
    let still: Value =
        serde_json::from_str(&setup.ok(&["approvals", "show", &id, "--json"])).unwrap();
    assert_eq!(still["state"], "pending", "{still}");
    let granted = setup.ok(&["approvals", "approve", &id, "--as", "alice", "--unseen"]);
    assert!(granted.contains("approved"), "{granted}");

    // mode: switched through the server, recorded at once.
    let said = setup.ok(&["mode", "read-only", "--reason", "takeover"]);
    assert!(said.contains("read-only"), "{said}");
    let shown: Value = serde_json::from_str(&setup.ok(&["mode", "show"])).unwrap();
    assert_eq!(shown["read_only"], true);
    let refused = serve.call("misbehave__now", json!({}), json!({}));
    assert_eq!(refused["isError"], true, "{refused}");
    let changes = setup.ok(&["audit", "query", "--json", "--limit", "1000"]);
    assert!(
        json_lines(&changes)
            .iter()
            .any(|r| r.to_string().contains("mode_changed") && r.to_string().contains("takeover")),
        "{changes}"
    );
    setup.ok(&["mode", "normal"]);
    let shown: Value = serde_json::from_str(&setup.ok(&["mode", "show"])).unwrap();
    assert_eq!(shown["read_only"], false);

    // alerts: a target the server does not serve is refused by it (a
    // typo would pause nothing); a pause through the server, refused at
    // once, then resumed.
    let typo = setup.run(&["alerts", "pause", "misbehave/nwo"]);
    assert_eq!(typo.status.code(), Some(2), "{typo:?}");
    assert!(
        String::from_utf8_lossy(&typo.stderr).contains("`misbehave` has no such tool here"),
        "{typo:?}"
    );
    let said = setup.ok(&["alerts", "pause", "misbehave/now", "--reason", "takeover"]);
    assert!(said.contains("paused misbehave/now"), "{said}");
    let refused = serve.call("misbehave__now", json!({}), json!({}));
    assert_eq!(
        refused["_meta"]["airlock/error"]["kind"], "tool_paused",
        "{refused}"
    );
    let listed: Value = serde_json::from_str(&setup.ok(&["alerts", "--json"])).unwrap();
    assert_eq!(listed["pauses"][0]["target"], "misbehave/now", "{listed}");
    assert_eq!(listed["alerts"], json!([]));
    let said = setup.ok(&["alerts", "resume", "misbehave/now"]);
    assert!(said.contains("resumed misbehave/now"), "{said}");
    // No longer paused: back to its own gate (it needs an approval).
    let again = serve.call("misbehave__now", json!({}), json!({}));
    assert_eq!(
        again["_meta"]["airlock/error"]["kind"], "approval_pending",
        "{again}"
    );

    // The socket goes with the server; the commands then open the stores.
    drop(serve.stdin.take());
    let status = serve.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!setup.socket().exists());
    let records = json_lines(&setup.ok(&["audit", "query", "--json", "--limit", "1000"]));
    assert!(records.len() as u64 > seq);
}

/// One HTTP exchange on the control socket as raw bytes; what came back
/// before the server closed or `within` passed.
fn raw(socket: &Path, request: &[u8], within: Duration) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(within)).unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn the_control_socket_refuses_what_it_should() {
    let setup = Setup::new(
        "max_request_bytes = 4096\nbody_read_timeout_ms = 1000\nheader_read_timeout_ms = 1000\n",
    );
    // A stale socket from a server that was killed is replaced.
    std::fs::create_dir_all(setup.data()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(setup.socket()).unwrap());
    let mut serve = setup.serve();
    let ok = raw(
        &setup.socket(),
        b"GET /v1/audit/head HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    // A second server on the same data directory is refused at once.
    let started = Instant::now();
    let second = setup.run(&["serve"]);
    assert_eq!(second.status.code(), Some(1));
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("another airlock serve is running"), "{said}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // An oversized body: 413.
    let big = format!(
        "POST /v1/audit/query HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n{}",
        " ".repeat(100_000)
    );
    let answer = raw(&setup.socket(), big.as_bytes(), Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A body that trickles: 408 at the body timeout.
    let mut slow = UnixStream::connect(setup.socket()).unwrap();
    slow.write_all(
        b"POST /v1/audit/query HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{",
    )
    .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // A head that never ends: closed at the header timeout.
    let started = Instant::now();
    let answer = raw(
        &setup.socket(),
        b"GET /v1/audit/head HTTP/1.1\r\nHo",
        Duration::from_secs(15),
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{answer}");
    // A query of more records than one answer holds: 400, naming the
    // bound (it would be built whole in the server's memory).
    for limit in ["100001", "18446744073709551615"] {
        let body = format!("{{\"limit\":{limit}}}");
        let request = format!(
            "POST /v1/audit/query HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = raw(&setup.socket(), request.as_bytes(), Duration::from_secs(10));
        assert!(answer.starts_with("HTTP/1.1 400"), "{limit}: {answer}");
        assert!(answer.contains("at most 100000"), "{limit}: {answer}");
    }
    // A bad body: 400, and the server goes on.
    let bad = "POST /v1/mode HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    let answer = raw(&setup.socket(), bad.as_bytes(), Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    setup.ok(&["audit", "verify"]);

    // Another user cannot reach the socket (0600 in a 0700 directory).
    if is_root() {
        let python = format!(
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect({:?})\nexcept PermissionError:\n sys.exit(3)\nsys.exit(0)",
            setup.socket().display().to_string()
        );
        let status = Command::new("python3")
            .args(["-c", &python])
            .uid(NOBODY)
            .gid(NOBODY)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(3), "nobody connected to the socket");
    }

    // Killed: the socket file stays, nothing answers; the commands open
    // the stores themselves, and the next server replaces the file.
    serve.kill();
    assert!(setup.socket().exists());
    setup.ok(&["audit", "verify"]);
    let _serve = setup.serve();
    setup.ok(&["audit", "verify"]);
}

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

use std::os::unix::process::CommandExt as _;

/// A server of another user: the peer-credential check closes a root
/// client's connection (root passes the file permissions) before a byte is
/// answered; the CLI refuses such a server too.
#[test]
fn a_peer_of_another_user_is_refused_by_the_server_and_by_the_cli() {
    if !is_root() {
        eprintln!("skipped: needs root to run a server as another user");
        return;
    }
    let setup = Setup::new("");
    let data = setup.data();
    std::fs::create_dir_all(&data).unwrap();
    // The server's user must reach its config, plugins and data.
    for path in [setup.dir.path(), setup.plugins.as_path()] {
        chown_tree(path);
    }
    let mut child = setup
        .cmd()
        .arg("serve")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, ready) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("[serve as nobody] {line}");
            if line.contains("serving") {
                let _ = tx.send(());
            }
        }
    });
    ready
        .recv_timeout(Duration::from_secs(120))
        .expect("airlock serve as nobody did not start");
    let answer = raw(
        &setup.socket(),
        b"GET /v1/audit/head HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(
        answer.is_empty(),
        "another user's peer was answered: {answer}"
    );
    let out = setup.run(&["audit", "query"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("not by this user"), "{said}");
    let _ = child.kill();
    let _ = child.wait();
}

fn chown_tree(path: &Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path());
        }
    }
}

/// A copy of the built `text` plugin as `version` in `to`, its manifest
/// edited by `edit`.
fn text_version(to: &Path, version: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let dir = to.join(format!("text-{version}"));
    copy_dir(&Path::new(PLUGINS_DIR).join("text"), &dir);
    let manifest = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text.replacen(
        "version = \"0.1.0\"",
        &format!("version = \"{version}\""),
        1,
    );
    std::fs::write(&manifest, edit(text)).unwrap();
    dir
}

/// Makes `text` 1.0.0 serve every caller.
const ROLL_OUT_ONE: [&str; 7] = [
    "rollout",
    "text",
    "1.0.0",
    "--percent",
    "100",
    "--by",
    "ops",
];

fn approval_id_in(text: &str) -> String {
    let start = text.find("apr-").expect("an approval id");
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

/// `--require-eval` on a version that ships no cases: refused, saying so
/// in the version's terms (it named a scratch directory and suggested
/// `--cases`, which `rollout` does not take); nothing changes.
#[test]
fn require_eval_on_a_version_without_cases_says_there_is_nothing_to_require() {
    let setup = Setup::new("");
    let versions = tempfile::tempdir().unwrap();
    let one = text_version(versions.path(), "1.0.0", |m| m);
    std::fs::remove_file(one.join("cases.jsonl")).unwrap();
    setup.ok(&["plugins", "install", one.to_str().unwrap()]);
    let mut args = ROLL_OUT_ONE.to_vec();
    args.push("--require-eval");
    let out = setup.run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("text 1.0.0 ships no cases.jsonl, so there is nothing to require"),
        "{stderr}"
    );
    assert!(!stderr.contains("--cases"), "{stderr}");
    let listed = setup.ok(&["plugins", "list"]);
    assert!(!listed.contains("serving"), "{listed}");
}

/// A first rollout compares the version with the plugins directory's
/// plugin of that name, which serves until then: when that one does not
/// load, the rollout is refused (it went out compared with nothing, so a
/// wider version needed no approval); nothing changes.
#[test]
fn a_first_rollout_is_refused_when_the_serving_directory_plugin_does_not_load() {
    let setup = Setup::new("");
    let versions = tempfile::tempdir().unwrap();
    let wider = text_version(versions.path(), "1.0.0", |m| {
        m.replacen("timeout_ms = 2_000", "timeout_ms = 4_000", 1)
    });
    setup.ok(&["plugins", "install", wider.to_str().unwrap()]);
    // The directory's `text` with a component that is not one.
    let served = setup.plugins.join("text");
    for entry in std::fs::read_dir(&served).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wasm") {
            std::fs::write(&path, b"not a component").unwrap();
        }
    }
    // On the data directory, and through a running server (which started
    // with the plugin not loaded).
    let refused = |out: Output| {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(
            stderr.contains("did not load, and it is what serves text until a first rollout"),
            "{stderr}"
        );
    };
    refused(setup.run(&ROLL_OUT_ONE));
    let serve = setup.serve();
    refused(setup.run(&ROLL_OUT_ONE));
    drop(serve);
    // Listed with the directory's plugin that did not load (exit 1), and
    // nothing serving.
    let listed = setup.run(&["plugins", "list"]);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(stdout.contains("installed versions:"), "{stdout}");
    assert!(!stdout.contains("serving"), "{stdout}");
}

/// `plugins list` with one plugin's rollout record unreadable: the
/// record is named on stderr, the versions still listed (the command
/// listed none).
#[test]
fn plugins_list_names_an_unreadable_rollout_and_lists_the_versions() {
    let setup = Setup::new("");
    let versions = tempfile::tempdir().unwrap();
    let one = text_version(versions.path(), "1.0.0", |m| m);
    setup.ok(&["plugins", "install", one.to_str().unwrap()]);
    setup.ok(&ROLL_OUT_ONE);
    let record = airlock_tests::find_file(&setup.data(), "rollouts/text.json");
    std::fs::write(record, "{\"version\": 1, \"rollout\": ").unwrap();

    let out = setup.run(&["plugins", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stderr.contains("warning: the rollout record of text cannot be read"),
        "{stderr}"
    );
    assert!(stderr.contains("text.json"), "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("text") && l.contains("1.0.0")),
        "{stdout}"
    );

    // A second version whose record is damaged: named on stderr, the
    // first still listed (the listing failed whole).
    let two = text_version(versions.path(), "2.0.0", |m| m);
    setup.ok(&["plugins", "install", two.to_str().unwrap()]);
    // Its record names a plugin whose name is a terminal control sequence
    // (refused by the store, which quotes it: escaped on the terminal).
    let record = airlock_tests::find_file(&setup.data(), "versions/text/2.0.0.json");
    let mut stored: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    stored["plugin"] = json!("\u{1b}]0;owned\u{7}");
    std::fs::write(&record, stored.to_string()).unwrap();
    let out = setup.run(&["plugins", "list"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: the record of text 2.0.0 cannot be read"),
        "{stderr}"
    );
    assert!(stderr.contains("could not be listed at once"), "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("text") && l.contains("1.0.0")),
        "{stdout}"
    );
    assert!(!stdout.contains("2.0.0"), "{stdout}");
    assert!(stderr.contains("owned"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}') && !stdout.contains('\u{1b}'),
        "{stderr}"
    );
}

#[test]
fn release_actions_work_on_the_data_directory_and_through_the_running_server() {
    let setup = Setup::new("");
    let versions = tempfile::tempdir().unwrap();
    let one = text_version(versions.path(), "1.0.0", |m| m);
    let wider = text_version(versions.path(), "2.0.0", |m| {
        m.replacen("timeout_ms = 2_000", "timeout_ms = 4_000", 1)
    });
    let one = one.to_str().unwrap();
    let wider = wider.to_str().unwrap();

    // No server: the commands open the data directory.
    let installed = setup.ok(&["plugins", "install", one]);
    assert!(installed.contains("installed text 1.0.0"), "{installed}");
    let again = setup.ok(&["plugins", "install", one]);
    assert!(again.contains("already installed"), "{again}");
    let activated = setup.ok(&ROLL_OUT_ONE);
    assert!(
        activated.contains("1.0.0 serves every caller"),
        "{activated}"
    );

    // A server holds the data directory: the same commands go through it.
    let mut serve = setup.serve();
    setup.ok(&["plugins", "install", wider]);
    let listed = setup.ok(&["plugins", "list"]);
    assert!(listed.contains("installed versions:"), "{listed}");
    assert!(
        listed
            .lines()
            .any(|l| l.contains("1.0.0") && l.contains("serving")),
        "{listed}"
    );

    // Wider: waits for an approver (exit 8), then goes through with the
    // approval.
    let waiting = setup.run(&["rollout", "text", "2.0.0", "--percent", "10", "--by", "ops"]);
    let stderr = String::from_utf8_lossy(&waiting.stderr).into_owned();
    assert_eq!(waiting.status.code(), Some(8), "{stderr}");
    assert!(stderr.contains("timeout_ms"), "{stderr}");
    let id = approval_id_in(&stderr);
    let shown = setup.ok(&["approvals", "show", &id]);
    assert!(shown.contains("2.0.0"), "{shown}");
    setup.ok(&["approvals", "approve", &id, "--as", "alice"]);
    let canary = setup.ok(&[
        "rollout",
        "text",
        "2.0.0",
        "--percent",
        "10",
        "--by",
        "ops",
        "--approval",
        &id,
    ]);
    assert!(canary.contains("canary 2.0.0 takes 10%"), "{canary}");

    // Calls through the server follow the rollout.
    let result = serve.call("text__slugify", json!({"text": "Hi there"}), json!({}));
    assert_eq!(result["isError"], false, "{result}");

    let status: Value =
        serde_json::from_str(&setup.ok(&["rollout", "status", "text", "--json"])).unwrap();
    let roles: Vec<&str> = status["status"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["serving", "canary"], "{status}");
    let table = setup.ok(&["rollout", "status", "text"]);
    assert!(table.contains("p99 ms"), "{table}");

    // Rollback in one command; then nothing is left to roll back to.
    let back = setup.ok(&[
        "rollback",
        "text",
        "--by",
        "oncall",
        "--reason",
        "errors up",
    ]);
    assert!(back.contains("1.0.0 serves every caller"), "{back}");
    let nothing = setup.run(&["rollback", "text"]);
    assert_eq!(nothing.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&nothing.stderr).contains("nothing to roll back"),
        "{}",
        String::from_utf8_lossy(&nothing.stderr)
    );

    // Bad input: a share out of range, a version not installed, a path that
    // is no plugin.
    for (args, code, says) in [
        (
            vec!["rollout", "text", "1.0.0", "--percent", "101"],
            3,
            "0-100",
        ),
        (
            vec!["rollout", "text", "9.9.9", "--percent", "100"],
            3,
            "not installed",
        ),
        (
            vec!["plugins", "install", "/nonexistent/plugin"],
            1,
            "/nonexistent/plugin",
        ),
    ] {
        let out = setup.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }

    // Every change is in the audit log, in order.
    let records = setup.ok(&["audit", "query", "--json", "--limit", "1000"]);
    let decisions: Vec<String> = json_lines(&records)
        .iter()
        .filter(|r| r["event"] == "rollout_changed")
        .map(|r| r["decision"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(decisions, ["activate", "canary", "rollback"], "{records}");
    serve.kill();
}
