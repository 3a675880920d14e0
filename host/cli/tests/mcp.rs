//! `airlock serve` as a real subprocess, driven by an independent MCP
//! client: the official Python SDK (`mcp` on PyPI, pinned and installed by
//! scripts/setup-mcp-client), over stdio and Streamable HTTP. The Python
//! side (tests/mcp/*.py) prints one JSON object per line; the assertions
//! are here.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use airlock_tests::{EXAMPLE_TOOLS, MISBEHAVE, PLUGINS_DIR, install, read, sha256_hex};
use serde_json::Value;

const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");
const TOKEN: &str = "caller-secret-1";
/// A second caller, `agent-2`.
const TOKEN_2: &str = "caller-secret-2";
const APPROVER_TOKEN: &str = "approver-secret-1";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The client's Python, installed on first use (scripts/test installs it
/// before the suite runs).
fn python() -> PathBuf {
    static SETUP: std::sync::Once = std::sync::Once::new();
    SETUP.call_once(|| {
        let status = Command::new("bash")
            .arg(repo().join("scripts/setup-mcp-client"))
            .status()
            .unwrap();
        assert!(status.success(), "scripts/setup-mcp-client failed");
    });
    repo().join("target/mcp-client/bin/python")
}

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

/// A plugins directory with the example plugins and the misbehave guest
/// (`limits` in its manifest; `now` is irreversible, the rest read).
fn plugins_root(limits: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(PLUGINS_DIR).unwrap() {
        let entry = entry.unwrap();
        copy_dir(&entry.path(), &root.path().join(entry.file_name()));
    }
    let mut manifest = format!("[capabilities]\nlog = true\n\n[limits]\n{limits}\n");
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

const LIMITS: &str = "fuel = 1_000_000_000_000_000\ntimeout_ms = 1_000\nmemory_mb = 32";
const ONE_SLOT: &str = "fuel = 1_000_000_000_000_000\ntimeout_ms = 60_000\nmax_concurrency = 1";

/// A server's state: data directory and config file.
struct Server {
    data: tempfile::TempDir,
    config: PathBuf,
    plugins: PathBuf,
}

impl Server {
    fn new(plugins: &Path, approvers: bool) -> Server {
        Server::with_serve(plugins, approvers, "")
    }

    /// With more `[serve]` keys (`serve`: TOML lines).
    fn with_serve(plugins: &Path, approvers: bool, serve: &str) -> Server {
        let data = tempfile::tempdir().unwrap();
        let config = data.path().join("airlock.toml");
        let mut text = format!(
            "principal = \"stdio-agent\"\n[serve]\nreload_interval_ms = 200\n{serve}[[serve.tokens]]\nprincipal = \"agent-1\"\ntoken_sha256 = \"{}\"\n[[serve.tokens]]\nprincipal = \"agent-2\"\ntoken_sha256 = \"{}\"\n",
            sha256_hex(TOKEN.as_bytes()),
            sha256_hex(TOKEN_2.as_bytes())
        );
        if approvers {
            text.push_str(&format!(
                "[policy.approvals]\n[[policy.approvals.approvers]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n",
                sha256_hex(APPROVER_TOKEN.as_bytes())
            ));
        }
        std::fs::write(&config, text).unwrap();
        Server {
            data,
            config,
            plugins: plugins.to_owned(),
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--config".into(),
            self.config.display().to_string(),
            "--plugins-dir".into(),
            self.plugins.display().to_string(),
            "--data-dir".into(),
            self.data.path().display().to_string(),
            "serve".into(),
        ]
    }

    /// The stdio server's command line, for the client to spawn.
    fn stdio_command(&self) -> String {
        let mut command = vec![AIRLOCK.to_owned()];
        command.extend(self.args());
        serde_json::to_string(&command).unwrap()
    }

    /// Start the HTTP server on a free loopback port.
    fn start_http(&self) -> Running {
        let mut child = Command::new(AIRLOCK)
            .args(self.args())
            .args(["--http", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("[serve] {line}");
                if let Some(rest) = line.split_once(" at http://").map(|(_, r)| r.to_owned()) {
                    let _ = tx.send(rest.trim_end_matches("/mcp").to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("airlock serve --http did not start");
        Running { child, addr }
    }
}

struct Running {
    child: Child,
    addr: String,
}

impl Running {
    fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Stop the server as a service manager does (SIGTERM) and wait for it
    /// to close its databases.
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
        // Nothing but the protocol: an HTTP server prints nothing on stdout.
        if let Some(mut stdout) = self.child.stdout.take() {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
            assert!(text.is_empty(), "stdout of airlock serve --http: {text}");
        }
    }
}

/// Run a client script; its JSON lines.
fn client(script: &str, args: &[&str]) -> Vec<Value> {
    let out = Command::new(python())
        .arg(repo().join("tests/mcp").join(script))
        .args(args)
        .env("AIRLOCK_TEST_TOKEN", TOKEN)
        .env("AIRLOCK_TEST_TOKEN_2", TOKEN_2)
        .env("AIRLOCK_TEST_APPROVER_TOKEN", APPROVER_TOKEN)
        .env("AIRLOCK_TEST_AIRLOCK", AIRLOCK)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{stderr}")))
        .collect()
}

fn events<'a>(lines: &'a [Value], event: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event"] == event).collect()
}

fn call<'a>(lines: &'a [Value], tool: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["event"] == "call" && l["tool"] == tool && l.get("label").is_none())
        .unwrap_or_else(|| panic!("no call of {tool}"))
}

fn labelled<'a>(lines: &'a [Value], label: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["label"] == label)
        .unwrap_or_else(|| panic!("no call labelled {label}"))
}

fn kind(result: &Value) -> &str {
    assert_eq!(result["is_error"], true, "{result}");
    result["meta"]["airlock/error"]["kind"].as_str().unwrap()
}

fn check_session(lines: &[Value]) {
    let tools = events(lines, "tools")[0]["tools"].as_array().unwrap();
    let by_name = |name: &str| {
        tools
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed"))
    };
    for (id, risk) in EXAMPLE_TOOLS {
        let tool = by_name(&id.replace('/', "__"));
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
        assert_eq!(tool["_meta"]["airlock/tool"], *id);
        assert_eq!(tool["_meta"]["airlock/risk"], *risk);
        let hints = &tool["annotations"];
        assert_eq!(hints["readOnlyHint"], *risk == "read", "{tool}");
        assert_eq!(hints["destructiveHint"], *risk != "read", "{tool}");
        let open_world = matches!(*risk, "external" | "irreversible");
        assert_eq!(hints["openWorldHint"], open_world, "{tool}");
        // Plain JSON Schema 2020-12: no `uint64`-style formats.
        for key in ["inputSchema", "outputSchema"] {
            let text = tool[key].to_string();
            for format in ["\"uint", "\"int", "\"double\"", "\"float\""] {
                assert!(
                    !text.contains(&format!("\"format\":{format}")),
                    "{id} {key}: {text}"
                );
            }
        }
    }
    let slugify = by_name("text__slugify");
    assert_eq!(slugify["outputSchema"]["type"], "object");
    assert_eq!(slugify["annotations"]["readOnlyHint"], true);
    let add = by_name("notes__add");
    assert_eq!(add["annotations"]["readOnlyHint"], false);
    assert_eq!(add["annotations"]["destructiveHint"], true);
    assert_eq!(add["annotations"]["openWorldHint"], false);
    assert_eq!(by_name("fetch__get")["annotations"]["openWorldHint"], true);
    assert_eq!(
        by_name("misbehave__now")["annotations"]["destructiveHint"],
        true
    );
    // Their outputs are arrays; MCP requires object output schemas: served
    // wrapped as {"result": …}, with the definitions at the root.
    for name in ["notes__read-archive", "notes__list"] {
        let schema = &by_name(name)["outputSchema"];
        assert_eq!(schema["type"], "object", "{schema}");
        assert_eq!(
            schema["required"],
            serde_json::json!(["result"]),
            "{schema}"
        );
        assert_eq!(schema["properties"]["result"]["type"], "array", "{schema}");
        assert!(schema["$defs"].is_object(), "{schema}");
    }

    let calls: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "call" && l.get("label").is_none() && l["tool"] != "fetch__get")
        .collect();
    assert!(calls.len() >= 17, "{calls:?}");
    for result in calls {
        assert_eq!(result["is_error"], false, "{result}");
        assert!(
            result["meta"]["airlock/call"]["call_id"].is_string(),
            "{result}"
        );
    }
    let slug = call(lines, "text__slugify");
    assert_eq!(slug["structured"]["slug"], "hello-mcp-world");
    let text: Value = serde_json::from_str(slug["text"].as_str().unwrap()).unwrap();
    assert_eq!(text, slug["structured"]);
    // Every tool's results are structured; wrapped ones under "result", the
    // text content unchanged.
    for name in ["notes__read-archive", "notes__list"] {
        let result = call(lines, name);
        let text: Value = serde_json::from_str(result["text"].as_str().unwrap()).unwrap();
        assert!(text.is_array(), "{result}");
        assert_eq!(result["structured"], serde_json::json!({"result": text}));
    }
    // fetch may reach only its granted origin.
    let fetched = call(lines, "fetch__get");
    assert_eq!(kind(fetched), "tool_error", "{fetched}");

    let invalid = labelled(lines, "schema_invalid");
    assert_eq!(kind(invalid), "arguments_invalid");
    let violations = invalid["meta"]["airlock/error"]["violations"]
        .as_array()
        .unwrap();
    assert!(
        violations.iter().any(|v| v["path"] == "/pointer"),
        "{invalid}"
    );
    assert_eq!(kind(labelled(lines, "tool_error")), "tool_error");
    assert_eq!(kind(labelled(lines, "refused")), "approval_unavailable");
    assert_eq!(kind(labelled(lines, "deadline")), "deadline_exceeded");
    assert_eq!(kind(labelled(lines, "memory")), "memory_limit");
    let unknown = events(lines, "unknown_tool")[0];
    assert_eq!(unknown["error"], -32602, "{unknown}");
    assert_eq!(
        labelled(lines, "after")["structured"]["slug"],
        "still-serving"
    );
}

#[test]
fn stdio_serves_every_example_tool_to_the_python_sdk() {
    let root = plugins_root(LIMITS);
    let server = Server::new(root.path(), false);
    let lines = client(
        "client.py",
        &["session", "stdio", &server.stdio_command(), "auto"],
    );
    // `auto` over stdio probes `server/discover` while the server is still
    // loading its plugins and may time out into the handshake: either
    // version is right here (2026-07-28 is asserted over HTTP below).
    assert!(events(&lines, "connected")[0]["protocol"].is_string());
    check_session(&lines);
}

#[test]
fn http_serves_every_example_tool_to_the_python_sdk_on_2026_07_28() {
    let root = plugins_root(LIMITS);
    let server = Server::new(root.path(), false);
    let running = server.start_http();
    let lines = client("client.py", &["session", "http", &running.url(), "auto"]);
    assert_eq!(events(&lines, "connected")[0]["protocol"], "2026-07-28");
    check_session(&lines);
}

#[test]
fn http_serves_every_example_tool_to_the_python_sdk_with_the_handshake() {
    let root = plugins_root(LIMITS);
    let server = Server::new(root.path(), false);
    let running = server.start_http();
    let lines = client("client.py", &["session", "http", &running.url(), "legacy"]);
    assert_eq!(events(&lines, "connected")[0]["protocol"], "2025-11-25");
    check_session(&lines);
}

fn check_cancel(lines: &[Value]) {
    assert_eq!(events(lines, "cancelled")[0]["cancelled"], true);
    let echo = call(lines, "misbehave__echo");
    assert_eq!(echo["is_error"], false, "{echo}");
    assert_eq!(echo["structured"]["after"], "cancel");
}

#[test]
fn cancelling_a_call_stops_the_guest_over_stdio() {
    let root = plugins_root(ONE_SLOT);
    let server = Server::new(root.path(), false);
    check_cancel(&client(
        "client.py",
        &["cancel", "stdio", &server.stdio_command(), "legacy"],
    ));
    check_cancel(&client(
        "client.py",
        &["cancel", "stdio", &server.stdio_command(), "auto"],
    ));
}

#[test]
fn cancelling_a_call_stops_the_guest_over_http() {
    let root = plugins_root(ONE_SLOT);
    let server = Server::new(root.path(), false);
    let running = server.start_http();
    check_cancel(&client(
        "client.py",
        &["cancel", "http", &running.url(), "legacy"],
    ));
}

fn check_list_changed(transport: &str, target: &str, mode: &str, root: &Path) {
    let mut child = Command::new(python())
        .arg(repo().join("tests/mcp/client.py"))
        .args(["list_changed", transport, target, mode])
        .env("AIRLOCK_TEST_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(ready["event"], "ready", "{ready}");
    assert!(!ready["tools"].to_string().contains("echo__"), "{ready}");
    // Add a plugin while serving: a copy of misbehave named `echo`.
    let manifest = "[capabilities]\nlog = true\n\n[[tools]]\nname = \"echo\"\nrisk = \"read\"\n";
    let added = install("echo", &read(MISBEHAVE), manifest);
    copy_dir(added.path(), &root.join("echo"));
    let changed: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(changed["event"], "changed", "{changed}");
    assert!(
        changed["tools"]
            .as_array()
            .unwrap()
            .contains(&Value::from("echo__echo")),
        "{changed}"
    );
    assert!(child.wait().unwrap().success());
    std::fs::remove_dir_all(root.join("echo")).unwrap();
}

#[test]
fn adding_a_plugin_while_serving_tells_clients_the_tool_list_changed() {
    let root = plugins_root(LIMITS);
    let server = Server::new(root.path(), false);
    check_list_changed("stdio", &server.stdio_command(), "legacy", root.path());
    check_list_changed("stdio", &server.stdio_command(), "auto", root.path());
    let running = server.start_http();
    check_list_changed("http", &running.url(), "legacy", root.path());
}

#[test]
fn a_pending_approval_is_approved_out_of_band_then_the_call_completes() {
    let root = plugins_root(LIMITS);
    let server = Server::new(root.path(), true);
    let running = server.start_http();
    let lines = client("client.py", &["approval", "http", &running.url(), "legacy"]);
    let pending = events(&lines, "pending")[0];
    assert_eq!(kind(pending), "approval_pending");
    let approval = &pending["meta"]["airlock/approval"];
    assert_eq!(approval["status"], "pending");
    assert!(
        approval["approval_id"]
            .as_str()
            .unwrap()
            .starts_with("apr-")
    );
    assert!(approval["expires_at"].is_string() && approval["waits_for"].is_string());
    // A caller's token is not an approver's.
    assert_eq!(events(&lines, "caller_decides")[0]["status"], 401);
    assert_eq!(events(&lines, "approver_decides")[0]["status"], 200);
    let done = events(&lines, "approved")[0];
    assert_eq!(done["is_error"], false, "{done}");
    assert_eq!(
        done["meta"]["airlock/call"]["approval_id"],
        approval["approval_id"]
    );
}

#[test]
fn an_approver_decides_from_the_cli_against_the_running_server() {
    let root = plugins_root(LIMITS);
    let server = Server::new(root.path(), true);
    let running = server.start_http();
    let lines = client(
        "client.py",
        &["approval_cli", "http", &running.url(), "legacy"],
    );
    let id = events(&lines, "pending_id")[0]["approval_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cli = |event: &str| events(&lines, event)[0].clone();
    let code = |event: &str| cli(event)["code"].as_i64().unwrap();
    let out = |event: &str| cli(event)["stdout"].as_str().unwrap().to_owned();
    let err = |event: &str| cli(event)["stderr"].as_str().unwrap().to_owned();

    // The server holds the databases; the CLI lists and shows through it.
    assert_eq!(code("cli_list"), 0, "{}", err("cli_list"));
    let listed: Value = serde_json::from_str(&out("cli_list")).unwrap();
    let listed = listed["approvals"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["state"], "pending");
    assert_eq!(code("cli_show"), 0, "{}", err("cli_show"));
    assert!(
        out("cli_show").contains("misbehave/now"),
        "{}",
        out("cli_show")
    );
    assert!(
        out("cli_show").contains("clock check"),
        "{}",
        out("cli_show")
    );
    // A caller's token decides nothing (exit 3, refused).
    assert_eq!(code("cli_caller_token"), 3, "{}", err("cli_caller_token"));
    assert!(err("cli_caller_token").contains("approver token"));
    // So is a decision on an unknown id, as on the data directory.
    assert_eq!(code("cli_unknown"), 3, "{}", err("cli_unknown"));
    assert!(err("cli_unknown").contains("no approval apr-0000"));
    // The approver approves; a second decision is refused (first wins).
    assert_eq!(code("cli_approve"), 0, "{}", err("cli_approve"));
    assert!(
        out("cli_approve").contains("approved"),
        "{}",
        out("cli_approve")
    );
    assert!(
        out("cli_approve").contains("by alice"),
        "{}",
        out("cli_approve")
    );
    assert_eq!(code("cli_again"), 3, "{}", err("cli_again"));
    // The caller resumes and the call runs.
    let done = events(&lines, "approved")[0];
    assert_eq!(done["is_error"], false, "{done}");
}

#[test]
fn bad_http_input_gets_the_right_error_and_the_server_keeps_serving() {
    let root = plugins_root(LIMITS);
    let server = Server::new(root.path(), false);
    let running = server.start_http();
    let lines = client("raw_http.py", &[&running.addr]);
    let case = |name: &str| {
        lines
            .iter()
            .find(|l| l["case"] == name)
            .unwrap_or_else(|| panic!("no case {name}"))
    };
    assert_eq!(case("initialize")["status"], 200, "{}", case("initialize"));
    let malformed = case("malformed_json");
    assert_eq!(malformed["message"]["error"]["code"], -32700, "{malformed}");
    let unknown = case("unknown_method");
    assert_eq!(unknown["message"]["error"]["code"], -32601, "{unknown}");
    let no_approve = case("no_approve_method");
    assert_eq!(
        no_approve["message"]["error"]["code"], -32601,
        "{no_approve}"
    );
    let tool = case("unknown_tool");
    assert_eq!(tool["message"]["error"]["code"], -32602, "{tool}");
    assert_eq!(case("oversized")["status"], 413);
    let missing = case("missing_token");
    assert_eq!(missing["status"], 401);
    assert!(
        missing["headers"]["www-authenticate"]
            .as_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let invalid = case("invalid_token");
    assert_eq!(invalid["status"], 401);
    assert!(
        invalid["headers"]["www-authenticate"]
            .as_str()
            .unwrap()
            .contains("invalid_token")
    );
    assert_eq!(case("wrong_origin")["status"], 403);
    assert_eq!(case("loopback_origin")["status"], 200);
    assert_eq!(case("wrong_host")["status"], 403);
    let still = case("still_serving");
    assert_eq!(still["status"], 200, "{still}");
    assert_eq!(
        still["message"]["result"]["structuredContent"]["slug"], "still-here",
        "{still}"
    );
}

#[test]
fn twenty_http_clients_calling_at_once_all_succeed() {
    let root = plugins_root(LIMITS);
    // All twenty are agent-1: allow it as many calls as the server.
    let server = Server::with_serve(root.path(), false, "max_calls_per_principal = 32\n");
    let running = server.start_http();
    let lines = client("client.py", &["concurrent", "http", &running.url(), "auto"]);
    let results = events(&lines, "concurrent")[0]["results"]
        .as_array()
        .unwrap();
    assert_eq!(results.len(), 20);
    for result in results {
        assert_eq!(result["is_error"], false, "{result}");
    }
    // Every call is in the audit log, as the caller its token names, and
    // the log verifies.
    let mut running = running;
    running.terminate();
    let log = airlock_host::audit_log::AuditLog::open_read_only(server.data.path().join("audit"))
        .unwrap();
    let verified = log.verify(&[]).unwrap().unwrap();
    // One record a call, or two when a call outlasts the group-commit
    // window (the finished ones are counted below).
    assert!(verified.records >= 20, "{verified:?}");
    let finished = log
        .records(1)
        .map(Result::unwrap)
        .filter(|r| {
            r.entry.event == airlock_host::audit_log::Event::CallFinished
                && r.entry.tool.as_deref() == Some("slugify")
                && r.entry.principal.as_deref() == Some("agent-1")
                && r.entry.outcome.as_deref() == Some("ok")
        })
        .count();
    assert_eq!(finished, 20);
}

#[test]
fn serve_refuses_unsafe_http_setups() {
    let root = plugins_root(LIMITS);
    let server = Server::new(root.path(), false);
    let out = Command::new(AIRLOCK)
        .args(server.args())
        .args(["--http", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_remote"));
    std::fs::write(&server.config, "[serve]\n").unwrap();
    let out = Command::new(AIRLOCK)
        .args(server.args())
        .args(["--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least one caller token"));
}

/// A well-behaved MCP request over a fresh connection: `initialize` with the
/// caller's token; the response's status.
fn initialize(addr: &str) -> u16 {
    initialize_on(std::net::TcpStream::connect(addr).unwrap(), addr)
}

/// A connection to `addr` (`127.0.0.1:port`) from the loopback address
/// `source` (`127.0.0.2`: another peer on this machine).
fn connect_from(source: &str, addr: &str) -> std::net::TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
        let stream = stream.into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    })
}

/// `initialize` on `stream`, a connection to `addr`; the answer's status.
fn initialize_on(mut stream: std::net::TcpStream, addr: &str) -> u16 {
    use std::io::{Read as _, Write as _};
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-11-25\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") && stream.read(&mut byte).unwrap() == 1 {
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head).into_owned();
    line.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
}

/// Read until the server closes `stream` (end of stream or reset) or
/// `within` passes; whether it closed.
fn closed_within(stream: &mut std::net::TcpStream, within: std::time::Duration) -> bool {
    use std::io::Read as _;
    let deadline = std::time::Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {} // hyper answers 408 before closing
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true, // reset
        }
    }
}

#[test]
fn half_open_http_connections_are_timed_out_and_capped_while_clients_are_served() {
    use std::io::Write as _;
    use std::time::{Duration, Instant};
    let root = plugins_root(LIMITS);
    let server = Server::with_serve(
        root.path(),
        false,
        // A header timeout long enough that no half-open connection can
        // time out while the cap is being checked, however slow the
        // machine: a slot freed early would let an extra connection in.
        // Every connection here is one peer's (127.0.0.1): the per-peer
        // bound is the cap under test.
        "max_connections = 8\nmax_connections_per_peer = 8\nheader_read_timeout_ms = 20000\n",
    );
    let running = server.start_http();
    let addr = running.addr.clone();
    // Slowloris: connections that send part of a request head, then wait.
    let half_open = || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthoriz")
            .unwrap();
        (stream, Instant::now())
    };
    let mut held: Vec<_> = (0..7).map(|_| half_open()).collect();
    // Below the cap, a well-behaved client is served beside them.
    assert_eq!(initialize(&addr), 200);
    // The eighth: until the server has seen the client's own connection
    // end (a moment on a loaded machine), that one still holds a slot and
    // the eighth is closed at once; open it again until it is held.
    let eighth = (0..100)
        .find_map(|_| {
            let (mut stream, opened) = half_open();
            if closed_within(&mut stream, Duration::from_millis(300)) {
                std::thread::sleep(Duration::from_millis(100));
                None
            } else {
                Some((stream, opened))
            }
        })
        .expect("the client's connection never gave its slot back");
    held.push(eighth);
    // At the cap: more connections are closed at once, not queued — well
    // before the header timeout (20 s) could have closed them.
    for _ in 0..5 {
        let mut extra = std::net::TcpStream::connect(&addr).unwrap();
        assert!(
            closed_within(&mut extra, Duration::from_secs(10)),
            "a connection past the cap was left open"
        );
    }
    // The half-open ones are closed after the header timeout, not kept
    // (they stayed open 40 s and more without it).
    for (stream, opened) in &mut held {
        let left = Duration::from_secs(60).saturating_sub(opened.elapsed());
        assert!(
            closed_within(stream, left),
            "a half-open connection outlived the header timeout"
        );
    }
    // Slots are free again: the well-behaved client is served.
    assert_eq!(initialize(&addr), 200);
}

/// One peer opening idle connections took every slot of a listener —
/// before any token is checked — and locked approvers and every other
/// caller out until the header timeout.
#[test]
fn one_peer_cannot_take_every_connection() {
    use std::io::Write as _;
    use std::time::Duration;
    let root = plugins_root(LIMITS);
    let server = Server::with_serve(
        root.path(),
        false,
        "max_connections = 8\nmax_connections_per_peer = 3\nheader_read_timeout_ms = 20000\n",
    );
    let running = server.start_http();
    let addr = running.addr.clone();
    let idle_from = |source: &str| {
        let mut stream = connect_from(source, &addr);
        stream
            .write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .unwrap();
        stream
    };
    let mut held: Vec<_> = (0..3).map(|_| idle_from("127.0.0.2")).collect();
    // Its fourth and later are closed at once, long before the header
    // timeout (20 s) — though the listener has room for eight.
    for _ in 0..3 {
        let mut extra = idle_from("127.0.0.2");
        assert!(
            closed_within(&mut extra, Duration::from_secs(10)),
            "a connection past the peer's bound was left open"
        );
    }
    for stream in &mut held {
        assert!(
            !closed_within(stream, Duration::from_millis(200)),
            "a connection within the peer's bound was closed"
        );
    }
    // Other peers are served: this machine's own address, and another.
    assert_eq!(initialize(&addr), 200);
    assert_eq!(initialize_on(connect_from("127.0.0.3", &addr), &addr), 200);
    // When one of the peer's connections ends, it may open another (once
    // the server has seen it end).
    drop(held.pop());
    let again = (0..100).find_map(|_| {
        let mut stream = idle_from("127.0.0.2");
        if closed_within(&mut stream, Duration::from_millis(300)) {
            std::thread::sleep(Duration::from_millis(100));
            None
        } else {
            Some(stream)
        }
    });
    assert!(again.is_some(), "the peer's slot was never given back");
}

/// A client that pipelines requests and never reads the answers held its
/// connection for as long as it liked, before any token was checked:
/// hyper reads no further head while an answer waits to be written, so the
/// header timeout never started.
#[test]
fn a_client_that_never_reads_is_cut_off_at_the_write_timeout() {
    use std::io::Write as _;
    use std::time::{Duration, Instant};
    let root = plugins_root(LIMITS);
    let server = Server::with_serve(
        root.path(),
        true,
        // A header timeout far past the test's wait: only the write
        // timeout can close the connection in time.
        "write_timeout_ms = 1000\nheader_read_timeout_ms = 120000\n",
    );
    let running = server.start_http();
    let addr = running.addr.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let mut stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // A small window fills at once.
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
        let stream = stream.into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    });
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let request = b"GET /console/login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(64);
    let started = Instant::now();
    let closed = loop {
        if started.elapsed() > Duration::from_secs(60) {
            break false;
        }
        match stream.write(&request) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // Reset or broken pipe: the server closed it.
            Err(_) => break true,
        }
    };
    assert!(closed, "a client that reads nothing kept its connection");
    // Others are served all along.
    assert_eq!(initialize(&addr), 200);
}

/// A client that sends a request head and then trickles (or withholds) its
/// body held a connection and a handler for as long as it liked — before
/// any token was checked.
#[test]
fn a_request_body_trickled_slowly_is_cut_off_at_the_body_timeout() {
    use std::io::{Read as _, Write as _};
    use std::time::Duration;
    let root = plugins_root(LIMITS);
    let server = Server::with_serve(root.path(), false, "body_read_timeout_ms = 1000\n");
    let running = server.start_http();
    let addr = running.addr.clone();
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{\"jsonrpc\"",
    )
    .unwrap();
    // A byte now and then keeps the connection from idling out.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(200));
        let _ = slow.write_all(b" ");
    }
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    // Without the bound the server waited for the rest of the body: the
    // read above timed out with nothing.
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Well-behaved clients are served all along.
    assert_eq!(initialize(&addr), 200);
}

/// One principal at its cap of calls does not starve another; and a call
/// waiting for an approver holds no slot at all (it held one for as long
/// as approvers took: a few principals asking for approvals held every
/// slot of the server).
#[test]
fn one_principal_holding_its_call_slots_does_not_starve_another() {
    let root = plugins_root(LIMITS);
    // agent-1 has one slot; its calls wait up to a minute for approvers.
    let server = Server::with_serve(
        root.path(),
        true,
        "max_calls_per_principal = 1\napproval_wait_s = 60\n",
    );
    let running = server.start_http();
    let lines = client(
        "client.py",
        &["principal_slots", "http", &running.url(), "legacy"],
    );
    let served = events(&lines, "served_while_waiting")[0];
    assert_eq!(served["is_error"], false, "{served}");
    let busy = events(&lines, "first_busy")[0];
    assert_eq!(kind(busy), "principal_busy", "{busy}");
    let error = &busy["meta"]["airlock/error"];
    assert_eq!(error["class"], "refused", "{busy}");
    assert!(
        error["message"].as_str().unwrap().contains("agent-1"),
        "{busy}"
    );
    let other = events(&lines, "second_served")[0];
    assert_eq!(other["is_error"], false, "{other}");
    let again = events(&lines, "first_served_again")[0];
    assert_eq!(again["is_error"], false, "{again}");
    assert_eq!(events(&lines, "decided")[0]["status"], 200);
    // Once approved, the waiting call ran.
    let waited = events(&lines, "waited")[0];
    assert_eq!(waited["is_error"], false, "{waited}");
}

#[test]
fn approvals_http_refuses_a_non_loopback_address_without_allow_remote() {
    let root = plugins_root(LIMITS);
    let server = Server::new(root.path(), true);
    let serve = |extra: &[&str]| {
        Command::new(AIRLOCK)
            .args(server.args())
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = serve(&["--approvals-http", "0.0.0.0:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--approvals-http 0.0.0.0:0") && stderr.contains("serve.allow_remote"),
        "{stderr}"
    );
    assert!(!stderr.contains("approvals at"), "{stderr}");
    // Allowed explicitly, it still needs the names clients use.
    let out = serve(&["--approvals-http", "0.0.0.0:0", "--allow-remote"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("serve.allowed_hosts"), "{stderr}");
    // Loopback needs neither (the stdio server then ends with its closed
    // stdin).
    let out = serve(&["--approvals-http", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("approvals at http://127.0.0.1:"),
        "{stderr}"
    );
}

/// An idle server rescans the plugins directory (every 200 ms here) but
/// says each thing once: it used to rebuild its catalog on every scan and
/// log the same "output schema not served" warning twice a second forever.
#[test]
fn an_idle_server_does_not_repeat_a_warning() {
    let root = plugins_root(LIMITS);
    // A plugin that cannot load: a warning that must be said, once.
    let broken = root.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("plugin.toml"), "[plugin\nname = ").unwrap();
    let server = Server::new(root.path(), false);
    let log = server.data.path().join("serve.stderr");
    let mut child = Command::new(AIRLOCK)
        .args(server.args())
        .args(["--http", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log).unwrap().contains("serving") {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "airlock serve did not start: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    // Without the time stamp: the same warning logged twice is the same line.
    let warnings: Vec<&str> = text
        .lines()
        .filter_map(|line| {
            line.split_once(" WARN ")
                .map(|(_, rest)| rest)
                .or_else(|| line.strip_prefix("warning: "))
        })
        .collect();
    assert!(
        warnings.iter().any(|w| w.contains("broken")),
        "the broken plugin was not reported:\n{text}"
    );
    let mut seen = std::collections::HashSet::new();
    for warning in &warnings {
        assert!(seen.insert(warning), "repeated: {warning}\n\n{text}");
    }
}

/// `GET path` on the server at `addr`, with a bearer `token`: the status
/// and the body.
fn http_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn metrics_are_scraped_from_a_running_server_after_calls_over_mcp() {
    let root = plugins_root(LIMITS);
    let server = Server::new(root.path(), false);
    let running = server.start_http();
    // Calls over MCP (among them one that succeeds and an unknown tool).
    let lines = client("raw_http.py", &[&running.addr]);
    // `_meta.traceparent` makes the W3C trace id the call's; a malformed
    // one is refused.
    let case = |name: &str| {
        lines
            .iter()
            .find(|l| l["case"] == name)
            .unwrap_or_else(|| panic!("no case {name}"))
    };
    let traced = &case("traceparent")["message"]["result"];
    assert_eq!(
        traced["_meta"]["airlock/call"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{traced}"
    );
    let refused = &case("bad_traceparent")["message"]["result"];
    assert_eq!(
        refused["_meta"]["airlock/error"]["kind"], "invalid_traceparent",
        "{refused}"
    );
    let (status, body) = http_get(&running.addr, "/metrics", None);
    assert_eq!(status, 200, "{body}");
    let ok_calls = body
        .lines()
        .filter(|l| {
            l.starts_with("airlock_calls_total{plugin=\"text\"")
                && l.contains("tool=\"slugify\"")
                && l.contains("outcome=\"ok\"")
        })
        .count();
    assert_eq!(ok_calls, 1, "{body}");
    for family in [
        "airlock_call_duration_seconds_bucket",
        "airlock_call_fuel_bucket",
        "airlock_approvals_pending ",
        "airlock_instances_in_use ",
        "airlock_call_slots_max{plugin=\"text\"}",
        "airlock_audit_queue_depth ",
        "airlock_audit_last_checkpoint_age_seconds ",
        "airlock_alerts_firing ",
    ] {
        assert!(body.contains(family), "{family} missing from {body}");
    }
    // A caller's token is no metrics token, but loopback peers need none.
    assert_eq!(http_get(&running.addr, "/metrics", Some(TOKEN)).0, 200);
}

#[test]
fn metrics_with_a_token_refuse_callers_without_it() {
    let root = plugins_root(LIMITS);
    let serve = format!(
        "metrics_token_sha256 = \"{}\"\n",
        sha256_hex(b"metrics-secret")
    );
    let server = Server::with_serve(root.path(), false, &serve);
    let running = server.start_http();
    let (status, body) = http_get(&running.addr, "/metrics", None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(http_get(&running.addr, "/metrics", Some(TOKEN)).0, 401);
    assert_eq!(
        http_get(&running.addr, "/metrics", Some("metrics-secre")).0,
        401
    );
    let (status, body) = http_get(&running.addr, "/metrics", Some("metrics-secret"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("airlock_approvals_pending 0"), "{body}");
}

#[test]
fn malformed_telemetry_and_metrics_settings_are_config_errors_naming_the_key() {
    let root = plugins_root(LIMITS);
    for (extra, serve, key) in [
        (
            "",
            "metrics_token_sha256 = \"nothex\"\n",
            "serve.metrics_token_sha256",
        ),
        (
            "[telemetry]\notlp_endpoint = \"ftp://collector\"\n",
            "",
            "telemetry.otlp_endpoint",
        ),
        (
            "[telemetry]\notlp_endpoint = \"http://collector:4318?tenant=a\"\n",
            "",
            "has a query or fragment",
        ),
        (
            "[telemetry]\notlp_timeout_ms = 0\n",
            "",
            "telemetry.otlp_timeout_ms",
        ),
        (
            "[telemetry]\nmax_queued_spans = 1\n",
            "",
            "telemetry.max_queued_spans",
        ),
        (
            "[telemetry]\nservice_name = \"\"\n",
            "",
            "telemetry.service_name",
        ),
        (
            "[telemetry]\notlp_endpont = \"http://x\"\n",
            "",
            "otlp_endpont",
        ),
        ("[telemetry]\nmetrics = \"yes\"\n", "", "metrics"),
    ] {
        let server = Server::with_serve(root.path(), false, serve);
        let mut text = std::fs::read_to_string(&server.config).unwrap();
        text.push_str(extra);
        std::fs::write(&server.config, text).unwrap();
        let out = Command::new(AIRLOCK)
            .args(server.args())
            .args(["--http", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{key}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
}

/// A JWKS endpoint on loopback serving `jwks` to every request: its URL.
fn serve_jwks(jwks: String) -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{jwks}",
                jwks.len()
            );
        }
    });
    url
}

#[test]
fn http_takes_oauth_access_tokens_from_a_configured_issuer() {
    const ISSUER: &str = "https://issuer.airlock.test";
    const RESOURCE: &str = "https://mcp.airlock.test/mcp";
    // The issuer's key, made by the Python side; its JWKS on loopback.
    let keys = client("client.py", &["oauth_keys", "-", "-"]);
    let keys = events(&keys, "keys")[0];
    let jwks_uri = serve_jwks(serde_json::json!({"keys": [keys["jwk"]]}).to_string());
    let root = plugins_root(LIMITS);
    let server = Server::with_serve(
        root.path(),
        false,
        &format!(
            "[serve.oauth]\nresource = \"{RESOURCE}\"\n[[serve.oauth.issuers]]\nissuer = \"{ISSUER}\"\njwks_uri = \"{jwks_uri}\"\nprincipal_prefix = \"oauth:\"\n"
        ),
    );
    let running = server.start_http();
    let out = Command::new(python())
        .arg(repo().join("tests/mcp/client.py"))
        .args(["oauth", "http", &running.url(), "auto"])
        .env("AIRLOCK_TEST_OAUTH_PEM", keys["pem"].as_str().unwrap())
        .env("AIRLOCK_TEST_OAUTH_ISSUER", ISSUER)
        .env("AIRLOCK_TEST_OAUTH_RESOURCE", RESOURCE)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let no_token = events(&lines, "no_token")[0];
    assert_eq!(no_token["status"], 401);
    assert_eq!(
        no_token["challenge"],
        "Bearer resource_metadata=\"https://mcp.airlock.test/.well-known/oauth-protected-resource/mcp\""
    );
    let metadata = &events(&lines, "metadata")[0]["metadata"];
    assert_eq!(metadata["resource"], RESOURCE);
    assert_eq!(
        metadata["authorization_servers"],
        serde_json::json!([ISSUER])
    );
    for refused in events(&lines, "refused") {
        assert_eq!(refused["status"], 401, "{refused}");
        assert!(
            refused["challenge"]
                .as_str()
                .unwrap()
                .contains("error=\"invalid_token\""),
            "{refused}"
        );
    }
    assert_eq!(events(&lines, "refused").len(), 4);
    // A good token: tools listed, a call served.
    let call = events(&lines, "call")[0];
    assert_eq!(call["is_error"], false, "{call}");
    assert_eq!(call["structured"]["slug"], "hello-oauth");
    assert!(call["tools"].as_u64().unwrap() >= 21);
}

/// Speak MCP over one stream pair by hand (newline-delimited JSON-RPC, as
/// the stdio transport frames it): initialize, write `junk` (raw bytes),
/// then call `misbehave__echo` with each of `ns`, all written before any
/// answer is read (pipelined), written in small pieces. Returns each
/// call's `structuredContent`, by id.
fn raw_stdio_session(
    input: &mut impl std::io::Write,
    output: &mut impl std::io::BufRead,
    junk: &[u8],
    ns: &[u64],
) -> std::collections::BTreeMap<u64, Value> {
    let mut line = String::new();
    let mut read_reply = |output: &mut dyn std::io::BufRead| -> Value {
        line.clear();
        assert!(
            output.read_line(&mut line).unwrap() > 0,
            "the server closed stdout"
        );
        serde_json::from_str(&line).unwrap()
    };
    fn send(input: &mut impl std::io::Write, value: Value) {
        let text = format!("{value}\n");
        // A few bytes at a time: a message split across reads.
        for piece in text.as_bytes().chunks(7) {
            input.write_all(piece).unwrap();
            input.flush().unwrap();
        }
    }
    send(
        input,
        serde_json::json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw-stdio-test", "version": "0"}
            }
        }),
    );
    let initialized = read_reply(output);
    assert_eq!(initialized["id"], 0, "{initialized}");
    assert!(
        initialized["result"]["serverInfo"]["name"].is_string(),
        "{initialized}"
    );
    send(
        input,
        serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    input.write_all(junk).unwrap();
    for &n in ns {
        send(
            input,
            serde_json::json!({
                "jsonrpc": "2.0", "id": n, "method": "tools/call",
                "params": {"name": "misbehave__echo", "arguments": {"n": n}}
            }),
        );
    }
    let mut results = std::collections::BTreeMap::new();
    while results.len() < ns.len() {
        let reply = read_reply(output);
        // Notifications (a log line, a list change) may come between.
        let Some(id) = reply["id"].as_u64() else {
            continue;
        };
        assert_eq!(reply["result"]["isError"], false, "{reply}");
        results.insert(id, reply["result"]["structuredContent"].clone());
    }
    results
}

/// Each of `ns` was called once, `ok`, and the chain verifies.
fn assert_each_call_recorded_once(server: &Server, ns: &[u64]) {
    let airlock = |args: &[&str]| {
        let out = Command::new(AIRLOCK)
            .args(&server.args()[..6])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    airlock(&["audit", "verify"]);
    let finished = airlock(&[
        "audit",
        "query",
        "--tool",
        "echo",
        "--event",
        "call_finished",
        "--json",
    ]);
    let mut seen: Vec<u64> = finished
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            assert_eq!(record["outcome"], "ok", "{record}");
            let args: Value = serde_json::from_str(record["args"].as_str().unwrap()).unwrap();
            args["n"].as_u64().unwrap()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, ns);
}

/// Each of `ns` echoed back, by id.
fn echoed(ns: &[u64]) -> std::collections::BTreeMap<u64, Value> {
    ns.iter()
        .map(|&n| (n, serde_json::json!({ "n": n })))
        .collect()
}

/// `server` on stdio pipes (as an MCP client starts it, with the default
/// log filter): a raw session writing `junk` before calling with each of
/// `ns`; every call answered with its own result and recorded once, and a
/// clean exit at the end of input. Returns what the server logged.
fn piped_session(server: &Server, junk: &[u8], ns: &[u64]) -> String {
    let mut child = Command::new(AIRLOCK)
        .args(server.args())
        .env_remove("AIRLOCK_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut output = BufReader::new(child.stdout.take().unwrap());
    assert_eq!(
        raw_stdio_session(&mut input, &mut output, junk, ns),
        echoed(ns)
    );
    drop(input);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_each_call_recorded_once(server, ns);
    stderr
}

/// The stdio server reads and writes pipes on tokio's reactor (through
/// non-blocking descriptors of its own) and anything else (here a Unix
/// socket pair, which some clients start servers with) through the
/// blocking standard streams: both serve pipelined requests split across
/// reads, answer each call once with its own result, record each call
/// once, and end cleanly when the client closes its side.
#[test]
fn stdio_serves_pipes_and_socket_pairs_alike() {
    use std::os::unix::net::UnixStream;

    let root = plugins_root(LIMITS);
    let ns: Vec<u64> = (1..=20).collect();

    // Pipes, as an MCP client starts a server.
    piped_session(&Server::new(root.path(), false), b"", &ns);

    // A socket pair: not a pipe, so the blocking standard streams serve.
    let paired = Server::new(root.path(), false);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let child = Command::new(AIRLOCK)
        .args(paired.args())
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(
            theirs.try_clone().unwrap(),
        )))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = ours.try_clone().unwrap();
    let mut output = BufReader::new(ours);
    assert_eq!(
        raw_stdio_session(&mut input, &mut output, b"", &ns),
        echoed(&ns)
    );
    input.shutdown(std::net::Shutdown::Write).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_each_call_recorded_once(&paired, &ns);
}

/// A hostile stdio client: a message past the transport's line cap (16
/// MiB, rmcp's), then a line that is not JSON, then one that is JSON but
/// not JSON-RPC. The server drops each and goes on answering the calls
/// that follow, each once; it exits cleanly at the end of input.
#[test]
fn stdio_drops_oversized_and_malformed_lines_and_keeps_serving() {
    let root = plugins_root(LIMITS);
    let mut junk = vec![b'x'; 16 * 1024 * 1024 + 1];
    junk.extend_from_slice(b"\n{not json\n{\"hello\": \"world\"}\n");
    let stderr = piped_session(&Server::new(root.path(), false), &junk, &[1, 2, 3]);
    // Dropped at the cap as it was read (rmcp's words, logged at error),
    // not buffered whole and then refused as JSON.
    assert!(
        stderr.contains("exceeded the maximum line length"),
        "{stderr}"
    );
}

/// A server asked to stop (SIGTERM) while a call runs lets it finish and
/// answers it, then exits: the stop cancelled every MCP stream at once,
/// stopping the call mid-run with no answer to its client (and its
/// idempotency key's outcome unknown).
#[test]
fn a_call_running_when_the_server_is_stopped_finishes_and_is_answered() {
    let root = plugins_root("fuel = 1_000_000_000_000_000\ntimeout_ms = 2_000");
    let server = Server::new(root.path(), false);
    let mut running = server.start_http();
    let mut child = Command::new(python())
        .arg(repo().join("tests/mcp/client.py"))
        .args(["slow_call", "http", &running.url(), "legacy"])
        .env("AIRLOCK_TEST_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let calling: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(calling["event"], "calling", "{calling}");
    // The call is on its way and spinning (its deadline is 2 s).
    std::thread::sleep(std::time::Duration::from_millis(700));
    running.terminate();
    let answer: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(answer["event"], "call", "{answer}");
    assert_eq!(kind(&answer), "deadline_exceeded", "ran to its own end");
    assert!(child.wait().unwrap().success());
}
