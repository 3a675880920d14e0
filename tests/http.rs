//! The `http` capability against real components and a real HTTP server the
//! tests start on loopback: granted origins work, everything else is refused
//! with its own `wasi:http` error code, and every limit is hit once.
//!
//! No request here leaves the machine: the only server is the one below on
//! 127.0.0.1, and every other destination (169.254.169.254, ...) must be
//! refused by the host before it connects — which is what the tests check.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use airlock_host::{
    CallError, CallRequest, CallResponse, Capability, Host, HostConfig, IpRange, LoadError, Origin,
    Policy, ToolErrorKind,
};
use airlock_tests::{HTTP_CLIENT, PLUGINS_DIR, PluginDir, install, read};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BIG_BODY_BYTES: usize = 256 * 1024;
const HELLO: &str = "hello from the test server";

/// A tiny HTTP/1.1 server on 127.0.0.1 that counts connections. Paths:
/// `/hello` (a short text), `/big` (256 KiB), `/silent` (accepts, reads the
/// request, never answers), anything else 404. Bounded: it serves at most 64
/// connections, holds a silent one for at most 30 s, and stops with the
/// test's runtime.
struct TestServer {
    port: u16,
    connections: Arc<AtomicUsize>,
    /// What each connection sent: the request head and whatever followed
    /// it within 200 ms (a body), as text.
    received: Arc<std::sync::Mutex<Vec<String>>>,
}

impl TestServer {
    async fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let received = Arc::default();
        let counter = Arc::clone(&connections);
        let log = Arc::clone(&received);
        tokio::spawn(async move {
            for _ in 0..64 {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, Some(Arc::clone(&log))));
            }
        });
        TestServer {
            port,
            connections,
            received,
        }
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    received: Option<Arc<std::sync::Mutex<Vec<String>>>>,
) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
    if let Some(received) = received {
        // A body, as the head frames it (HTTP/1.1: by its length, or
        // chunked up to the last chunk; without either it has none), read
        // for at most 10 s.
        let mut all = head.clone();
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let head_len = text.find("\r\n\r\n").map_or(head.len(), |at| at + 4);
        let length = text
            .split("\r\n")
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|n| n.trim().parse::<usize>().ok());
        let chunked = text.contains("\r\ntransfer-encoding: chunked");
        let complete = |all: &[u8]| match length {
            Some(n) => all.len() >= head_len + n,
            None => !chunked || all.ends_with(b"0\r\n\r\n"),
        };
        let by = tokio::time::Instant::now() + Duration::from_secs(10);
        while !complete(&all)
            && all.len() <= 64 * 1024
            && let Ok(Ok(n)) = tokio::time::timeout_at(by, stream.read(&mut chunk)).await
            && n > 0
        {
            all.extend_from_slice(&chunk[..n]);
        }
        received
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&all).into_owned());
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (status, body) = match path.as_str() {
        "/hello" => ("200 OK", HELLO.as_bytes().to_vec()),
        "/big" => ("200 OK", vec![b'x'; BIG_BODY_BYTES]),
        "/silent" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
        _ => ("404 Not Found", b"not found".to_vec()),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nset-cookie: dropped=1\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// A TLS server on 127.0.0.1 for `localhost`, with the certificate in
/// `tests/fixtures/tls/` (signed by the test CA there), serving the paths
/// above. Counts handshakes that completed.
struct TlsServer {
    port: u16,
    handshakes: Arc<AtomicUsize>,
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tls")
        .join(name)
}

impl TlsServer {
    async fn start() -> TlsServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(fixture("localhost.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("localhost.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&handshakes);
        tokio::spawn(async move {
            for _ in 0..16 {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
                    {
                        counter.fetch_add(1, Ordering::SeqCst);
                        serve(tls, None).await;
                    }
                });
            }
        });
        TlsServer { port, handshakes }
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

/// Loopback allowed (both families: `localhost` may resolve to either),
/// by the name `localhost` on `port` too.
fn localhost_allowed(port: u16, ca_certs: Vec<std::path::PathBuf>) -> Policy {
    Policy {
        http_allow_private: vec![
            IpRange::parse("127.0.0.1").unwrap(),
            IpRange::parse("::1").unwrap(),
        ],
        http_private_origins: vec![Origin::parse(&format!("https://localhost:{port}")).unwrap()],
        http_ca_certs: ca_certs,
        ..Policy::default()
    }
}

fn fetch_component() -> Vec<u8> {
    read(&format!("{PLUGINS_DIR}/fetch/fetch.wasm"))
}

/// The fetch example plugin, granted `origins`, with `limits` (TOML body).
fn fetch(origins: &[&str], limits: &str) -> PluginDir {
    let list: Vec<String> = origins.iter().map(|o| format!("{o:?}")).collect();
    install(
        "fetch",
        &fetch_component(),
        &format!(
            "[capabilities]\nhttp = [{}]\n\n[limits]\n{limits}\n\n[[tools]]\nname = \"get\"\nrisk = \"external\"\n",
            list.join(", ")
        ),
    )
}

/// The raw http-client fixture, granted `origins`.
fn client(origins: &[&str]) -> PluginDir {
    client_as(origins, "external")
}

/// The same, its tool declared `risk`.
fn client_as(origins: &[&str], risk: &str) -> PluginDir {
    let list: Vec<String> = origins.iter().map(|o| format!("{o:?}")).collect();
    install(
        "client",
        &read(HTTP_CLIENT),
        &format!(
            "[capabilities]\nlog = true\nhttp = [{}]\n\n[[tools]]\nname = \"request\"\nrisk = \"{risk}\"\n",
            list.join(", ")
        ),
    )
}

/// A policy letting requests reach 127.0.0.1 (and nothing else non-public).
fn loopback_allowed() -> Policy {
    Policy {
        http_allow_private: vec![IpRange::parse("127.0.0.1").unwrap()],
        ..Policy::default()
    }
}

async fn load(dir: &PluginDir, policy: Policy) -> Result<Host, LoadError> {
    let host = Host::new(HostConfig::default().policy(policy)).unwrap();
    host.load_plugin(dir.path()).await?;
    Ok(host)
}

async fn call(host: &Host, tool: &str, args: Value) -> Result<CallResponse, CallError> {
    host.call(CallRequest::new(tool, args.to_string())).await
}

/// The message of a tool error of `kind`; anything else fails the test.
fn tool_error(result: Result<CallResponse, CallError>, kind: ToolErrorKind) -> String {
    match result {
        Err(CallError::Tool {
            kind: got, message, ..
        }) if got == kind => message,
        other => panic!("expected a {kind} tool error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- allowed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_granted_origin_with_the_operator_exception_gets_the_response() {
    let server = TestServer::start().await;
    let dir = fetch(&[&server.origin()], "");
    let host = load(&dir, loopback_allowed()).await.unwrap();
    let out = call(&host, "fetch/get", json!({"url": server.url("/hello")}))
        .await
        .unwrap()
        .output;
    assert_eq!(out["status"], 200);
    assert_eq!(out["body"], HELLO);
    assert_eq!(out["truncated"], false);
    assert_eq!(out["headers"]["content-type"], "text/plain");
    assert!(
        out["headers"].get("set-cookie").is_none(),
        "only selected headers: {out}"
    );
    let out = call(
        &host,
        "fetch/get",
        json!({"url": server.url("/hello"), "max_bytes": 5}),
    )
    .await
    .unwrap()
    .output;
    assert_eq!(out["body"], "hello");
    assert_eq!(out["truncated"], true);
    assert_eq!(server.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_operator_exception_may_be_a_cidr_range() {
    let server = TestServer::start().await;
    let dir = fetch(&[&server.origin()], "");
    let policy = Policy {
        http_allow_private: vec![IpRange::parse("127.0.0.0/8").unwrap()],
        ..Policy::default()
    };
    let host = load(&dir, policy).await.unwrap();
    let out = call(&host, "fetch/get", json!({"url": server.url("/missing")}))
        .await
        .unwrap()
        .output;
    assert_eq!(out["status"], 404);
}

// ---------------------------------------------------------------- refused at send time

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_origin_not_in_the_grant_is_refused() {
    let server = TestServer::start().await;
    let dir = fetch(&[&server.origin()], "");
    let host = load(&dir, loopback_allowed()).await.unwrap();
    for url in [
        // Same address, other port; same port, other scheme; same server
        // by another name.
        format!("http://127.0.0.1:{}/hello", server.port + 1),
        format!("https://127.0.0.1:{}/hello", server.port),
        format!("http://localhost:{}/hello", server.port),
        "https://www.rfc-editor.org/".to_owned(),
    ] {
        let message = tool_error(
            call(&host, "fetch/get", json!({"url": url})).await,
            ToolErrorKind::Denied,
        );
        assert!(message.contains("HTTP-request-denied"), "{url}: {message}");
    }
    assert_eq!(server.connections(), 0, "refused before connecting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_loopback_is_refused_without_the_operator_exception() {
    let server = TestServer::start().await;
    let dir = fetch(&[&server.origin()], "");
    let host = load(&dir, Policy::default()).await.unwrap();
    let message = tool_error(
        call(&host, "fetch/get", json!({"url": server.url("/hello")})).await,
        ToolErrorKind::Denied,
    );
    assert!(message.contains("destination-IP-prohibited"), "{message}");
    assert_eq!(server.connections(), 0, "refused before connecting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_metadata_address_is_refused_without_connecting() {
    // Even with an exception for loopback: the exception names 127.0.0.1
    // only. Nothing listens at 169.254.169.254 here; the host must refuse
    // before it tries.
    let dir = fetch(
        &[
            "http://169.254.169.254",
            "http://[::ffff:169.254.169.254]",
            "http://[fe80::1]:8080",
        ],
        "",
    );
    let host = load(&dir, loopback_allowed()).await.unwrap();
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[fe80::1]:8080/",
    ] {
        let message = tool_error(
            call(&host, "fetch/get", json!({"url": url})).await,
            ToolErrorKind::Denied,
        );
        assert!(
            message.contains("destination-IP-prohibited"),
            "{url}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_name_resolving_to_loopback_is_refused() {
    // The DNS-rebinding case: the origin is a name, the name resolves to
    // loopback, and the address is what the host checks.
    let server = TestServer::start().await;
    let origin = format!("http://localhost:{}", server.port);
    let dir = fetch(&[&origin], "");
    let host = load(&dir, Policy::default()).await.unwrap();
    let message = tool_error(
        call(
            &host,
            "fetch/get",
            json!({"url": format!("{origin}/hello")}),
        )
        .await,
        ToolErrorKind::Denied,
    );
    assert!(message.contains("destination-IP-prohibited"), "{message}");
    assert_eq!(server.connections(), 0, "refused before connecting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_name_resolving_to_an_excepted_address_needs_its_origin_listed() {
    // The operator excepts 127.0.0.1 (for a plugin calling
    // http://127.0.0.1:PORT); another plugin's own name resolving there
    // does not get the exception until the operator names that origin.
    let server = TestServer::start().await;
    let origin = format!("http://localhost:{}", server.port);
    let dir = fetch(&[&origin], "");
    // Both families: `localhost` may resolve to either.
    let excepted = Policy {
        http_allow_private: vec![
            IpRange::parse("127.0.0.1").unwrap(),
            IpRange::parse("::1").unwrap(),
        ],
        ..Policy::default()
    };
    let host = load(&dir, excepted.clone()).await.unwrap();
    let url = format!("{origin}/hello");
    let message = tool_error(
        call(&host, "fetch/get", json!({"url": url})).await,
        ToolErrorKind::Denied,
    );
    assert!(message.contains("destination-IP-prohibited"), "{message}");
    assert_eq!(server.connections(), 0, "refused before connecting");
    let policy = Policy {
        http_private_origins: vec![Origin::parse(&origin).unwrap()],
        ..excepted
    };
    let host = load(&dir, policy).await.unwrap();
    let out = call(&host, "fetch/get", json!({"url": url}))
        .await
        .unwrap()
        .output;
    assert_eq!(out["status"], 200, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_per_call_are_capped_and_the_refusal_is_a_host_note() {
    let server = TestServer::start().await;
    let dir = client(&[&server.origin()]);
    let policy = Policy {
        http_max_requests: Some(2),
        ..loopback_allowed()
    };
    let host = load(&dir, policy).await.unwrap();
    let response = call(
        &host,
        "client/request",
        json!({"scheme": "http", "authority": format!("127.0.0.1:{}", server.port), "path": "/hello", "times": 3}),
    )
    .await
    .unwrap();
    let hello = format!("status 200, {} bytes", HELLO.len());
    assert_eq!(
        response.output["outcomes"],
        json!([hello, hello, "error: ErrorCode::ConnectionLimitReached"])
    );
    assert_eq!(server.connections(), 2);
    let notes = &response.host_notes;
    assert!(
        notes
            .iter()
            .any(|l| l.starts_with("http GET http://127.0.0.1:")
                && l.ends_with("refused: more than 2 requests in one call")),
        "{notes:?}"
    );
    assert!(response.logs.is_empty(), "{:?}", response.logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refusals_in_a_loop_keep_a_bounded_number_of_short_notes() {
    // A guest looping on refused requests with long paths: the host keeps
    // 32 notes of a bounded size and one line saying the rest were dropped,
    // not one note (and one operator log line) per refusal.
    let server = TestServer::start().await;
    let dir = client(&[&server.origin()]);
    let host = load(&dir, loopback_allowed()).await.unwrap();
    let path = format!("/{}", "a".repeat(5_000));
    let response = call(
        &host,
        "client/request",
        json!({"scheme": "http", "authority": "example.invalid", "path": path, "times": 200}),
    )
    .await
    .unwrap();
    assert_eq!(response.output["outcomes"].as_array().unwrap().len(), 200);
    let notes = &response.host_notes;
    assert_eq!(notes.len(), 33, "{notes:?}");
    assert!(
        notes[..32]
            .iter()
            .all(|n| n.contains("…[truncated]: refused: ") && n.len() < 512),
        "{notes:?}"
    );
    assert_eq!(
        notes[32],
        "host: more than 32 notes in this call; the rest are dropped"
    );
    assert_eq!(server.connections(), 0);
    // The record keeps them all, the last line too: the notes have a
    // budget of their own, which long targets do not exhaust.
    let record = finished_record(&host);
    assert!(!record.entry.host_notes_truncated);
    let recorded: Vec<String> =
        serde_json::from_str(record.entry.host_notes.as_deref().unwrap()).unwrap();
    assert_eq!(&recorded, notes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_notes_that_grow_when_scrubbed_still_fit_their_budget() {
    // Secret-shaped path parameters grow when scrubbed (`;pin=a` becomes
    // `;pin=[redacted:…]`): each note is bounded again, so the last ones
    // and the line saying more were dropped stay in the record.
    let server = TestServer::start().await;
    let dir = client(&[&server.origin()]);
    let host = load(&dir, loopback_allowed()).await.unwrap();
    let path = format!("/{}", ";pin=a".repeat(800));
    let response = call(
        &host,
        "client/request",
        json!({"scheme": "http", "authority": "example.invalid", "path": path, "times": 50}),
    )
    .await
    .unwrap();
    assert_eq!(response.host_notes.len(), 33);
    let record = finished_record(&host);
    assert!(!record.entry.host_notes_truncated);
    let recorded: Vec<String> =
        serde_json::from_str(record.entry.host_notes.as_deref().unwrap()).unwrap();
    assert_eq!(recorded.len(), 33);
    assert!(recorded[0].contains(";pin=[redacted:"), "{}", recorded[0]);
    assert!(!recorded[0].contains(";pin=a;"), "{}", recorded[0]);
    assert_eq!(
        recorded[32],
        "host: more than 32 notes in this call; the rest are dropped"
    );
}

/// The `call_finished` record of the host's only call.
fn finished_record(host: &Host) -> airlock_host::audit_log::Record {
    host.audit()
        .records(1)
        .map(Result::unwrap)
        .find(|r| r.entry.event == airlock_host::audit_log::Event::CallFinished)
        .expect("a call_finished record")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refusals_are_host_notes_a_guest_can_neither_forge_crowd_out_nor_hide() {
    // A guest tries to cover an exfiltration attempt in its record: it
    // logs lines shaped like the host's notes, fills its log budget (1,000
    // lines) before the request, and fails or traps after it. The host's
    // notes are a field of their own, in the record whatever the outcome.
    let forged = "host: http GET http://exfil.example/: refused: forged";
    for then in ["fail", "trap", "return"] {
        let data = tempfile::tempdir().unwrap();
        let dir = client(&["http://127.0.0.1:9"]);
        let host = Host::new(
            HostConfig::default()
                .data_dir(data.path())
                .policy(loopback_allowed()),
        )
        .unwrap();
        host.load_plugin(dir.path()).await.unwrap();
        let result = call(
            &host,
            "client/request",
            json!({"scheme": "http", "authority": "exfil.example", "path": "/secret",
                   "log": [forged], "log_repeat": 1_500, "then": then}),
        )
        .await;
        match (then, &result) {
            ("fail", Err(e)) => assert_eq!(e.kind(), "tool_error", "{e}"),
            ("trap", Err(e)) => assert_eq!(e.kind(), "guest_trap", "{e}"),
            ("return", Ok(response)) => {
                assert_eq!(response.logs.len(), 1_000);
                assert_eq!(
                    response.host_notes,
                    [
                        "http GET http://exfil.example/secret: refused: origin http://exfil.example is not granted (capabilities.http)"
                    ]
                );
            }
            other => panic!("{then}: {other:?}"),
        }
        let record = finished_record(&host);
        let notes: Vec<String> =
            serde_json::from_str(record.entry.host_notes.as_deref().expect("host notes")).unwrap();
        assert_eq!(notes.len(), 1, "{then}: {notes:?}");
        assert!(
            notes[0].starts_with("http GET http://exfil.example/secret: refused"),
            "{then}: {notes:?}"
        );
        assert!(!record.entry.host_notes_truncated);
        // The guest's lines are in its log (on every outcome), marked as
        // its own by where they are: none of them in the notes.
        let logs = record.entry.logs.as_deref().expect("the guest's log");
        assert!(logs.contains("forged"), "{then}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_raw_requests_outside_the_grant_are_refused_with_their_code() {
    let server = TestServer::start().await;
    let dir = client(&[&server.origin()]);
    let host = load(&dir, loopback_allowed()).await.unwrap();
    let authority = format!("127.0.0.1:{}", server.port);
    for (scheme, authority, expected) in [
        (
            "ftp",
            authority.clone(),
            "error: ErrorCode::HttpProtocolError",
        ),
        (
            "http",
            format!("user@{authority}"),
            "error: ErrorCode::HttpRequestUriInvalid",
        ),
        (
            "http",
            "169.254.169.254".to_owned(),
            "error: ErrorCode::HttpRequestDenied",
        ),
    ] {
        let response = call(
            &host,
            "client/request",
            json!({"scheme": scheme, "authority": authority, "path": "/hello"}),
        )
        .await
        .unwrap();
        assert_eq!(
            response.output["outcomes"],
            json!([expected]),
            "{scheme}://{authority}"
        );
    }
    assert_eq!(server.connections(), 0);
}

/// Read-only mode (a human's takeover) lets a `read` tool's requests out
/// as `GET`, `HEAD` and `OPTIONS` only — but a `GET` can still ask for a
/// write: by a method-override header many servers and gateways honour,
/// or by a body a server acts on. Refused or not sent, and the server
/// sees neither; in normal mode the same requests go out whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_in_read_only_mode_sends_no_body_and_no_method_override() {
    let server = TestServer::start().await;
    let dir = client_as(&[&server.origin()], "read");
    let data = tempfile::tempdir().unwrap();
    let host = Host::new(
        HostConfig::default()
            .data_dir(data.path())
            .policy(loopback_allowed()),
    )
    .unwrap();
    host.load_plugin(dir.path()).await.unwrap();
    let authority = format!("127.0.0.1:{}", server.port);
    let send = |extra: Value| {
        let mut args = json!({"scheme": "http", "authority": authority, "path": "/hello"});
        args.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let host = &host;
        async move {
            let response = call(host, "client/request", args).await.unwrap();
            let outcome = response.output["outcomes"][0].as_str().unwrap().to_owned();
            (outcome, response.host_notes)
        }
    };
    let override_header = json!({"headers": [["X-HTTP-Method-Override", "DELETE"]]});
    let declared_body = json!({"headers": [["content-length", "7"]], "body": "payload"});
    // (hyper sends no body of a GET without a length; of an OPTIONS it
    // does, chunked.)
    let unannounced_body = json!({"method": "OPTIONS", "body": "unannounced-payload"});

    // Normal mode: each goes out as written.
    let (outcome, _) = send(override_header.clone()).await;
    assert!(outcome.starts_with("status 200"), "{outcome}");
    let (outcome, _) = send(declared_body.clone()).await;
    assert_eq!(outcome, "status 200, 26 bytes; body sent");
    let (outcome, _) = send(unannounced_body.clone()).await;
    assert!(outcome.starts_with("status 200"), "{outcome}");
    let received = server.received();
    assert_eq!(received.len(), 3, "{received:?}");
    assert!(
        received[0]
            .to_ascii_lowercase()
            .contains("x-http-method-override: delete"),
        "{received:?}"
    );
    assert!(received[1].ends_with("\r\n\r\npayload"), "{received:?}");
    assert!(
        received[2].starts_with("OPTIONS /hello ")
            && received[2].contains("transfer-encoding: chunked")
            && received[2].contains("unannounced-payload"),
        "{received:?}"
    );

    host.set_mode(true, "oncall", Some("incident"))
        .await
        .unwrap();
    let (outcome, _) = send(json!({"method": "POST"})).await;
    assert_eq!(outcome, "error: ErrorCode::HttpRequestMethodInvalid");
    for (header, _) in [
        ("X-HTTP-Method-Override", 0),
        ("X-HTTP-Method", 1),
        ("x-method-override", 2),
        ("X-Original-Method", 3),
        ("X_HTTP_METHOD_OVERRIDE", 4),
    ] {
        let (outcome, notes) = send(json!({"headers": [[header, "DELETE"]]})).await;
        assert_eq!(outcome, "error: ErrorCode::HttpRequestDenied", "{header}");
        assert!(
            notes.iter().any(
                |n| n.contains(&header.to_ascii_lowercase().replace('_', "-"))
                    && n.contains("read-only mode")
            ),
            "{header}: {notes:?}"
        );
    }
    // The same asked by a query parameter (frameworks read one on POST
    // only; an application may on a GET), spelled as servers still read
    // it. (The underscored header above: CGI-style servers read it as the
    // dashed name.)
    for path in ["/hello?%5FMethod=DELETE", "/hello?a=1;_method%5B%5D=DELETE"] {
        let (outcome, notes) = send(json!({ "path": path })).await;
        assert_eq!(outcome, "error: ErrorCode::HttpRequestDenied", "{path}");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("query parameter _method") && n.contains("read-only mode")),
            "{path}: {notes:?}"
        );
    }
    let (outcome, notes) = send(declared_body).await;
    assert!(
        outcome.starts_with("error: ErrorCode::HttpRequestDenied"),
        "{outcome}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("content-length 7") && n.contains("read-only mode")),
        "{notes:?}"
    );
    // Written without a length: the request goes out without it, and the
    // guest is told its body was not sent.
    let (outcome, _) = send(unannounced_body).await;
    assert!(
        outcome.starts_with("status 200, 26 bytes; body not sent"),
        "{outcome}"
    );
    // A plain GET still works.
    let (outcome, _) = send(json!({})).await;
    assert_eq!(outcome, "status 200, 26 bytes");
    let received = server.received();
    assert_eq!(
        received.len(),
        5,
        "only the last two reached it: {received:?}"
    );
    assert!(received[3].starts_with("OPTIONS /hello "), "{received:?}");
    assert!(received[4].starts_with("GET /hello "), "{received:?}");
    for request in &received[3..] {
        let lower = request.to_ascii_lowercase();
        assert!(!lower.contains("payload"), "{request}");
        assert!(!lower.contains("transfer-encoding"), "{request}");
        assert!(!lower.contains("method"), "{request}");
    }
}

// ---------------------------------------------------------------- limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_body_over_the_size_cap_is_not_sent() {
    let server = TestServer::start().await;
    let policy = Policy {
        http_max_request_kb: Some(1),
        ..loopback_allowed()
    };
    let dir = client(&[&server.origin()]);
    let host = load(&dir, policy).await.unwrap();
    let authority = format!("127.0.0.1:{}", server.port);
    let send = |extra: Value| {
        let mut args =
            json!({"scheme": "http", "authority": authority, "path": "/hello", "method": "POST"});
        args.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let host = &host;
        async move {
            let response = call(host, "client/request", args).await.unwrap();
            let outcome = response.output["outcomes"][0].as_str().unwrap().to_owned();
            (outcome, response.host_notes)
        }
    };
    // Within the cap (1 KiB): sent.
    let small = "s".repeat(1024);
    let (outcome, _) = send(json!({"headers": [["content-length", "1024"]], "body": small})).await;
    assert_eq!(outcome, "status 200, 26 bytes; body sent");
    // Declared over it: refused before anything is sent.
    let large = "L".repeat(3000);
    let (outcome, notes) =
        send(json!({"headers": [["content-length", "3000"]], "body": large.clone()})).await;
    assert!(
        outcome.starts_with("error: ErrorCode::HttpRequestBodySize(Some(1024))"),
        "{outcome}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("3000 bytes") && n.contains("http_max_request_kb")),
        "{notes:?}"
    );
    // Streamed without a length: cut off past the cap, the request fails.
    let (outcome, notes) = send(json!({"body": large})).await;
    assert!(
        outcome.starts_with("error: ErrorCode::HttpRequestBodySize(Some(1024))"),
        "{outcome}"
    );
    assert!(
        notes.iter().any(|n| n.contains(
            "stopped: the request body is larger than the limit of 1024 bytes (http_max_request_kb)"
        )),
        "{outcome}: {notes:?}"
    );
    // The declared one never reached the server; of the streamed one, at
    // most its head did (whether hyper flushed it before the body failed
    // is timing), and none of its body: its first chunk was already past
    // the cap, and no chunk that would cross it is sent.
    let received = server.received();
    assert!(
        (1..=2).contains(&received.len()) && received[0].ends_with(&small),
        "{received:?}"
    );
    assert!(
        received[1..].iter().all(|r| !r.contains('L')),
        "{received:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_response_over_the_size_cap_is_cut_off() {
    let server = TestServer::start().await;
    let policy = Policy {
        http_max_response_kb: Some(16),
        ..loopback_allowed()
    };
    // The raw client reads everything: the host stops it at 16 KiB.
    let dir = client(&[&server.origin()]);
    let host = load(&dir, policy.clone()).await.unwrap();
    let response = call(
        &host,
        "client/request",
        json!({"scheme": "http", "authority": format!("127.0.0.1:{}", server.port), "path": "/big"}),
    )
    .await
    .unwrap();
    let outcome = response.output["outcomes"][0].as_str().unwrap().to_owned();
    assert!(
        outcome.starts_with("body error after ")
            && outcome.ends_with("HTTP response body size exceeds limit: 16384 bytes"),
        "{outcome}"
    );
    let read: usize = outcome
        .trim_start_matches("body error after ")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(read <= 16 * 1024, "{read} bytes reached the guest");
    assert!(
        response
            .host_notes
            .iter()
            .any(|note| note.contains("larger than the limit of 16384 bytes")),
        "{:?}",
        response.host_notes
    );

    // fetch asks for more than the host allows: a failed tool call saying so.
    let dir = fetch(&[&server.origin()], "");
    let host = load(&dir, policy).await.unwrap();
    let message = tool_error(
        call(
            &host,
            "fetch/get",
            json!({"url": server.url("/big"), "max_bytes": 65536}),
        )
        .await,
        ToolErrorKind::Failed,
    );
    assert!(
        message.contains("HTTP response body size exceeds limit"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_first_byte_timeout_is_hit_before_the_deadline() {
    let server = TestServer::start().await;
    let dir = client(&[&server.origin()]);
    let policy = Policy {
        http_first_byte_timeout_ms: Some(200),
        ..loopback_allowed()
    };
    let host = load(&dir, policy).await.unwrap();
    let response = call(
        &host,
        "client/request",
        json!({"scheme": "http", "authority": format!("127.0.0.1:{}", server.port), "path": "/silent"}),
    )
    .await
    .unwrap();
    assert_eq!(
        response.output["outcomes"],
        json!(["error: ErrorCode::ConnectionReadTimeout"])
    );
    // The operator is told which wait ran out and what bounds it.
    assert!(
        response
            .host_notes
            .iter()
            .any(|n| n.contains("no response head in time")
                && n.contains("http_first_byte_timeout_ms")),
        "{:?}",
        response.host_notes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_timeout_covers_the_tls_handshake() {
    // An https origin served by the plain-HTTP test server: the TCP
    // connection opens, the TLS handshake never completes, and the connect
    // timeout (which includes TLS) ends the request.
    let server = TestServer::start().await;
    let origin = format!("https://127.0.0.1:{}", server.port);
    let dir = client(&[&origin]);
    let policy = Policy {
        http_connect_timeout_ms: Some(300),
        ..loopback_allowed()
    };
    let host = load(&dir, policy).await.unwrap();
    let response = call(
        &host,
        "client/request",
        json!({"scheme": "https", "authority": format!("127.0.0.1:{}", server.port), "path": "/hello"}),
    )
    .await
    .unwrap();
    assert_eq!(
        response.output["outcomes"],
        json!(["error: ErrorCode::ConnectionTimeout"])
    );
    assert!(
        response
            .host_notes
            .iter()
            .any(|n| n.contains("the TLS handshake took longer")
                && n.contains("http_connect_timeout_ms")),
        "{:?}",
        response.host_notes
    );
    assert_eq!(server.connections(), 1, "TCP connected, TLS did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_server_that_never_answers_ends_the_call_at_its_deadline() {
    let server = TestServer::start().await;
    let dir = fetch(&[&server.origin()], "timeout_ms = 1_000");
    let host = Host::new(HostConfig::default().policy(loopback_allowed())).unwrap();
    host.load_plugin(dir.path()).await.unwrap();
    let other = fetch(&[&server.origin()], "");
    let other = {
        // The same plugin under another name, to call concurrently.
        let manifest = std::fs::read_to_string(other.manifest()).unwrap();
        std::fs::write(
            other.manifest(),
            manifest.replace("name = \"fetch\"", "name = \"fetch2\""),
        )
        .unwrap();
        other
    };
    host.load_plugin(other.path()).await.unwrap();
    let host = Arc::new(host);

    let silent = {
        let host = Arc::clone(&host);
        let url = server.url("/silent");
        tokio::spawn(async move { call(&host, "fetch/get", json!({"url": url})).await })
    };
    // While one call waits on the silent server, others are served.
    let out = call(&host, "fetch2/get", json!({"url": server.url("/hello")}))
        .await
        .unwrap()
        .output;
    assert_eq!(out["body"], HELLO);
    let err = silent.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), "deadline_exceeded", "{err}");
    // And afterwards too.
    let out = call(&host, "fetch/get", json!({"url": server.url("/hello")}))
        .await
        .unwrap()
        .output;
    assert_eq!(out["status"], 200);
}

// ---------------------------------------------------------------- refused at load time

#[tokio::test]
async fn http_forbidden_by_policy_fails_to_load_naming_the_key() {
    let dir = fetch(&["https://api.example.com"], "");
    let policy = Policy {
        forbid: [Capability::Http].into(),
        ..Policy::default()
    };
    let err = load(&dir, policy).await.unwrap_err();
    let LoadError::CapabilityDenied { capability, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(capability, "capabilities.http");
    assert_eq!(err.kind(), "capability_denied");
}

#[tokio::test]
async fn http_import_without_the_grant_fails_to_load_naming_interface_and_key() {
    let dir = install(
        "fetch",
        &fetch_component(),
        "[[tools]]\nname = \"get\"\nrisk = \"external\"\n",
    );
    let err = load(&dir, Policy::default()).await.unwrap_err();
    let LoadError::CapabilityNotGranted {
        interface, hint, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(interface.starts_with("wasi:http/"), "{interface}");
    assert!(hint.contains("capabilities.http"), "{hint}");
    assert_eq!(err.kind(), "capability_not_granted");
}

#[tokio::test]
async fn http_origin_outside_the_policy_allow_list_fails_to_load() {
    let dir = fetch(&["https://api.example.com", "https://evil.example.net"], "");
    let policy = Policy {
        http_allow: Some(vec![Origin::parse("https://api.example.com").unwrap()]),
        ..Policy::default()
    };
    let err = load(&dir, policy).await.unwrap_err();
    let LoadError::CapabilityDenied {
        capability, reason, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(capability, "capabilities.http");
    assert!(
        reason.contains("`https://evil.example.net` is not in the operator's http_allow list"),
        "{reason}"
    );
    // Within the list, it loads.
    let dir = fetch(&["https://api.example.com"], "");
    let policy = Policy {
        http_allow: Some(vec![Origin::parse("https://api.example.com:443").unwrap()]),
        ..Policy::default()
    };
    load(&dir, policy).await.unwrap();
}

#[tokio::test]
async fn http_malformed_origins_fail_to_load_with_specific_errors() {
    for (origin, reason) in [
        ("https://api.example.com/v1", "has a path (`/v1`)"),
        ("https://*.example.com", "wildcard"),
        ("https://token@api.example.com", "userinfo"),
        ("https://api.example.com?x=1", "has a query"),
        ("gopher://api.example.com", "only http and https"),
    ] {
        let err = load(&fetch(&[origin], ""), Policy::default())
            .await
            .unwrap_err();
        let LoadError::ManifestInvalid { violations, .. } = &err else {
            panic!("{origin}: {err}")
        };
        assert_eq!(violations[0].path, "/capabilities/http/0", "{origin}");
        assert!(
            violations[0].message.contains(reason) && violations[0].message.contains(origin),
            "{origin}: {err}"
        );
    }
    let err = load(
        &fetch(
            &["https://api.example.com", "https://API.example.com:443"],
            "",
        ),
        Policy::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), "manifest_rejected", "{err}");
    assert!(err.to_string().contains("listed twice"), "{err}");
}

#[test]
fn http_zero_limits_in_the_policy_are_a_config_error() {
    let policy = Policy {
        http_max_response_kb: Some(0),
        ..Policy::default()
    };
    let err = Host::new(HostConfig::default().policy(policy)).unwrap_err();
    assert_eq!(err.kind(), "config");
    assert!(err.to_string().contains("http_max_response_kb"), "{err}");
}

// ---------------------------------------------------------------- TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_server_signed_by_an_operator_ca_completes_the_handshake() {
    let server = TlsServer::start().await;
    let origin = format!("https://localhost:{}", server.port);
    let dir = fetch(&[&origin], "");
    let host = load(
        &dir,
        localhost_allowed(server.port, vec![fixture("ca.pem")]),
    )
    .await
    .unwrap();
    let out = call(
        &host,
        "fetch/get",
        json!({"url": format!("{origin}/hello")}),
    )
    .await
    .unwrap()
    .output;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["body"], HELLO);
    assert_eq!(server.handshakes(), 1);
}

/// A request from the raw client to `https://{host}:{port}/hello` of a
/// fresh TLS server must fail certificate verification before any
/// handshake completes.
async fn assert_certificate_refused(host: &str, ca_certs: Vec<std::path::PathBuf>) {
    let server = TlsServer::start().await;
    let authority = format!("{host}:{}", server.port);
    let dir = client(&[&format!("https://{authority}")]);
    let host = load(&dir, localhost_allowed(server.port, ca_certs))
        .await
        .unwrap();
    let response = call(
        &host,
        "client/request",
        json!({"scheme": "https", "authority": authority, "path": "/hello"}),
    )
    .await
    .unwrap();
    assert_eq!(
        response.output["outcomes"],
        json!(["error: ErrorCode::TlsCertificateError"])
    );
    assert_eq!(server.handshakes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_server_no_trusted_ca_signed_is_refused() {
    // Without the operator's CA, Mozilla's roots do not cover the test CA.
    assert_certificate_refused("localhost", Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_name_the_certificate_does_not_cover_is_refused() {
    // The certificate names `localhost`; the request names 127.0.0.1.
    assert_certificate_refused("127.0.0.1", vec![fixture("ca.pem")]).await;
}

#[test]
fn http_ca_certs_that_are_missing_or_not_certificates_are_config_errors() {
    for (path, says) in [
        (fixture("missing.pem"), "missing.pem"),
        (fixture("localhost.key"), "no CERTIFICATE"),
        (fixture("README.md"), "no CERTIFICATE"),
    ] {
        let policy = localhost_allowed(443, vec![path]);
        let err = Host::new(HostConfig::default().policy(policy)).unwrap_err();
        assert_eq!(err.kind(), "config", "{err}");
        let message = err.to_string();
        assert!(message.contains("policy.http_ca_certs"), "{message}");
        assert!(message.contains(says), "{message}");
    }
}
