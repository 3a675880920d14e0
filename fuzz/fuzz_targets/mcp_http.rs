//! The MCP HTTP entry (`airlock serve --http`): the fuzz input is the raw
//! bytes a client sends on one connection, served by hyper's HTTP/1 server
//! with the real router (Host and Origin guard, caller and approver
//! authentication, the MCP Streamable HTTP service, the approvals
//! endpoints) over an in-memory stream. Whatever the bytes, the server
//! answers or closes the connection; it never panics.
//!
//! The host has no plugins; its caller token is `fuzz-caller-token` and its
//! approver's `fuzz-approver-token`. `{session}` in the input is replaced by
//! the id of a session initialised just before, so requests past the MCP
//! handshake are reachable too.

#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use airlock_host::{Approver, Host, HostConfig, Policy};
use airlock_mcp::http::{CallerToken, HttpConfig, router};
use airlock_mcp::{McpServer, ServeOptions};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// SHA-256 of `fuzz-caller-token`.
const CALLER_SHA256: &str = "4670cac95e87bc5357fde9973d97824aaca870667404e749d6126380cc8e006c";
/// SHA-256 of `fuzz-approver-token`.
const APPROVER_SHA256: &str = "7826edb91c56e1205142718959513d0df256470d626d4d6584adba81e4137c02";
/// The placeholder replaced by a live session id.
const SESSION: &[u8] = b"{session}";
/// A connection that is still open after this long (a stream the client
/// left open) is dropped: the input is done.
const CONNECTION_TIME: Duration = Duration::from_millis(100);
/// Most response bytes read back.
const MAX_RESPONSE: usize = 1 << 20;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
});

static SERVER: LazyLock<McpServer> = LazyLock::new(|| {
    let _runtime = RUNTIME.enter();
    let mut policy = Policy::default();
    policy.approvals.approvers.push(Approver {
        name: "fuzz-approver".to_owned(),
        token_sha256: APPROVER_SHA256.to_owned(),
        operator: true,
    });
    let host = Host::new(HostConfig::default().policy(policy)).expect("a host without plugins");
    McpServer::new(Arc::new(host), ServeOptions::default())
});

static CONFIG: LazyLock<HttpConfig> = LazyLock::new(|| {
    HttpConfig::new(
        airlock_mcp::http::default_addr(),
        vec![CallerToken {
            principal: "fuzz-caller".to_owned(),
            token_sha256: CALLER_SHA256.to_owned(),
        }],
    )
});

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"fuzz","version":"0"}}}"#;

/// Send `request` on one connection to `app`; the response bytes.
async fn exchange(app: axum::Router, request: &[u8]) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    // The client half-closes after its bytes; the server still answers.
    let connection = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(server), TowerToHyperService::new(app));
    let talk = async {
        let _ = client.write_all(request).await;
        let _ = client.shutdown().await;
        let mut response = Vec::new();
        let _ = (&mut client)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut response)
            .await;
        response
    };
    let mut response = Vec::new();
    let _ = tokio::time::timeout(CONNECTION_TIME, async {
        let (_, r) = tokio::join!(connection, talk);
        response = r;
    })
    .await;
    response
}

/// Initialise a session as a client would; its id.
async fn session(app: &axum::Router) -> Option<String> {
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer fuzz-caller-token\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{INITIALIZE}",
        INITIALIZE.len()
    );
    let response = exchange(app.clone(), request.as_bytes()).await;
    let text = String::from_utf8_lossy(&response);
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("mcp-session-id")
            .then(|| value.trim().to_owned())
    })
}

fn replace_all(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    let server = &*SERVER;
    RUNTIME.block_on(async {
        let shutdown = CancellationToken::new();
        // A fresh router per input: sessions do not pile up across inputs.
        let Ok(app) = router(server, &CONFIG, shutdown.clone()) else {
            return;
        };
        let request = if data.windows(SESSION.len()).any(|w| w == SESSION) {
            let id = session(&app).await.unwrap_or_default();
            replace_all(data, SESSION, id.as_bytes())
        } else {
            data.to_vec()
        };
        let response = exchange(app, &request).await;
        if std::env::var_os("AIRLOCK_FUZZ_DEBUG").is_some() {
            eprintln!("{}", String::from_utf8_lossy(&response));
        }
        shutdown.cancel();
        // Let the cancelled sessions wind down before the next input.
        tokio::task::yield_now().await;
    });
});
