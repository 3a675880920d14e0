//! `airlock approvals … --server URL`: deciding through the approver-only
//! endpoints of a running `airlock serve`, from any machine (on the
//! server's own machine the control socket needs no URL: `control.rs`).
//! The HTTP/1.1 exchange here ([`exchange`]) serves both.
//!
//! `GET /approvals[?all=true]`, `GET /approvals/{id}` and `POST
//! /approvals/{id}` with the approver's bearer token; `https://` (Mozilla's
//! roots) URLs, or `http://` to this machine only.
//!
//! # Security
//! The approver's token goes in every request. Over plain `http://` anyone
//! on the path can read it and decide as that approver, so `http://` is
//! refused unless the host is a loopback address (`127.0.0.0/8`, `[::1]`)
//! or `localhost` — and then the connected address must be loopback too.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::{Failure, exit};

/// How long one request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// A server's approver endpoints.
#[derive(Debug)]
pub(crate) struct Remote {
    tls: bool,
    host: String,
    port: u16,
    prefix: String,
    token: String,
}

impl Remote {
    /// `url`: where the server listens (`http://127.0.0.1:7410`, with or
    /// without a path prefix or a trailing `/mcp`).
    pub(crate) fn new(url: &str, token: &str) -> Result<Remote, Failure> {
        let usage = |message: String| Failure::usage(anyhow!(message));
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| usage(format!("invalid --server URL {url:?}: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(usage(format!(
                    "--server {url:?}: the URL must start with http:// or https://"
                )));
            }
        };
        let Some(host) = uri.host() else {
            return Err(usage(format!("--server {url:?} names no host")));
        };
        if !tls && !is_loopback_name(host) {
            return Err(usage(format!(
                "--server {url:?}: plain http would send your approver token in clear to another machine; use https:// (http:// is accepted only for 127.0.0.1, [::1] or localhost)"
            )));
        }
        if uri.query().is_some() || url.contains('@') {
            return Err(usage(format!(
                "--server {url:?}: no query or user info; give the server's address"
            )));
        }
        let prefix = uri.path().trim_end_matches('/');
        let prefix = prefix.strip_suffix("/mcp").unwrap_or(prefix).to_owned();
        if token.trim().is_empty() {
            return Err(usage(
                "the server needs your approver token in AIRLOCK_APPROVER_TOKEN".into(),
            ));
        }
        // Checked before any connection: a header cannot carry it, and
        // failing later read as the server being unreachable.
        if token.chars().any(char::is_control) {
            return Err(usage(
                "AIRLOCK_APPROVER_TOKEN holds a control character (a trailing newline or carriage return from a file?); give the token alone".into(),
            ));
        }
        Ok(Remote {
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            prefix,
            token: token.to_owned(),
        })
    }

    /// `GET /approvals`: pending ones, or every one.
    pub(crate) async fn list(&self, all: bool) -> Result<Value, Failure> {
        let path = if all {
            "/approvals?all=true"
        } else {
            "/approvals"
        };
        self.request("GET", path, None).await
    }

    /// `GET /approvals/{id}`.
    pub(crate) async fn show(&self, id: &str) -> Result<Value, Failure> {
        self.request("GET", &format!("/approvals/{}", encode(id)), None)
            .await
    }

    /// `POST /approvals/{id}`.
    pub(crate) async fn decide(
        &self,
        id: &str,
        approve: bool,
        unseen: bool,
        reason: Option<&str>,
    ) -> Result<Value, Failure> {
        let mut body = serde_json::json!({
            "decision": if approve { "approve" } else { "reject" },
            "reason": reason,
        });
        if unseen {
            body["unseen"] = "acknowledged".into();
        }
        self.request("POST", &format!("/approvals/{}", encode(id)), Some(body))
            .await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let server = format!(
            "{}://{}:{}",
            if self.tls { "https" } else { "http" },
            self.host,
            self.port
        );
        let exchange = self.exchange(method, path, body);
        let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("{server} did not answer within {} s", TIMEOUT.as_secs()))?
            .with_context(|| format!("cannot reach the approvals endpoint at {server}"))?;
        // The server's words reach the approver's terminal escaped, as
        // every error is when printed (`terminal::escape_lines`): not here
        // as well, or every escape would show doubled.
        // Refusals come as `{"error": "…"}`: the words, not the JSON.
        let text = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
        let refused = |message: String| Failure {
            code: exit::REFUSED,
            error: anyhow!(message),
        };
        match status {
            200 => serde_json::from_slice(&bytes)
                .with_context(|| format!("{server} answered with something other than JSON"))
                .map_err(Failure::from),
            401 => Err(refused(format!(
                "{server} does not accept this approver token (AIRLOCK_APPROVER_TOKEN)"
            ))),
            404 => Err(Failure::usage(anyhow!("{server}: {text}"))),
            409 => Err(refused(format!("{server} refused the decision: {text}"))),
            _ => Err(anyhow!("{server} answered {status}: {text}").into()),
        }
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        if !self.tls {
            // `localhost` could resolve elsewhere: the token goes in clear
            // only to this machine.
            let peer = tcp.peer_addr()?;
            if !peer.ip().is_loopback() {
                anyhow::bail!(
                    "{} resolved to {peer}, not a loopback address: refusing to send the approver token over plain http (use https://)",
                    self.host
                );
            }
        }
        if self.tls {
            let config = tls_config()?;
            let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                .map_err(|e| anyhow!("invalid server name {:?}: {e}", self.host))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            self.send(stream, method, path, body).await
        } else {
            self.send(tcp, method, path, body).await
        }
    }

    async fn send<S>(
        &self,
        stream: S,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Bytes)>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let authority = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(hyper::header::HOST, authority)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            );
        let response = exchange(stream, request, body).await?;
        let status = response.status().as_u16();
        let bytes = collect(response, MAX_RESPONSE_BYTES).await?;
        Ok((status, bytes))
    }
}

/// One HTTP/1.1 request over `stream` (TCP, TLS or the control socket's
/// Unix stream), with `body` as JSON; the response, its body unread.
pub(crate) async fn exchange<S>(
    stream: S,
    mut request: hyper::http::request::Builder,
    body: Option<Value>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let body = match body {
        Some(value) => {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
            Bytes::from(serde_json::to_vec(&value)?)
        }
        None => Bytes::new(),
    };
    Ok(sender.send_request(request.body(Full::new(body))?).await?)
}

/// A response's whole body, at most `max` bytes.
pub(crate) async fn collect(
    response: hyper::Response<hyper::body::Incoming>,
    max: usize,
) -> anyhow::Result<Bytes> {
    Ok(Limited::new(response.into_body(), max)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the response: {e}"))?
        .to_bytes())
}

fn tls_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Whether `host` (as in a URL, IPv6 in brackets) is a loopback address or
/// `localhost`.
fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Percent-encode an approval id for a path segment (ids are `apr-` and
/// hex, but the argument is the user's).
pub(crate) fn encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_a_trailing_mcp_is_dropped() {
        let r = Remote::new("http://127.0.0.1:7410/mcp", "t").unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.prefix.as_str()),
            ("127.0.0.1", 7410, "")
        );
        let r = Remote::new("https://approve.example.com/airlock/", "t").unwrap();
        assert_eq!((r.port, r.prefix.as_str(), r.tls), (443, "/airlock", true));
        let r = Remote::new("http://[::1]:9000", "t").unwrap();
        assert_eq!(r.host, "::1");
        for bad in [
            "127.0.0.1:7410",
            "ftp://x",
            "http://",
            "http://a/?q=1",
            "http://u@h",
        ] {
            assert!(Remote::new(bad, "t").is_err(), "{bad}");
        }
        assert!(Remote::new("http://127.0.0.1:7410", " ").is_err());
        for token in ["tok\r", "tok\n", "t\u{0}k"] {
            let Err(refused) = Remote::new("http://127.0.0.1:7410", token) else {
                panic!("{token:?} accepted");
            };
            let message = format!("{:#}", refused.error);
            assert!(message.contains("control character"), "{message}");
        }
        assert_eq!(encode("apr-01ab/..%"), "apr-01ab%2F..%25");
    }

    #[test]
    fn plain_http_to_another_machine_is_refused_so_the_token_stays_secret() {
        for remote in [
            "http://approve.example.com",
            "http://10.0.0.7:7410",
            "http://0.0.0.0:7410",
            "http://[2001:db8::1]:7410",
            "http://localhost.evil.example",
            "http://127.0.0.1.nip.io",
        ] {
            let error = Remote::new(remote, "t").unwrap_err();
            let message = format!("{:#}", error.error);
            assert_eq!(error.code, exit::USAGE, "{remote}");
            assert!(message.contains("https://"), "{remote}: {message}");
            assert!(message.contains("in clear"), "{remote}: {message}");
        }
        for local in [
            "http://127.0.0.1:7410",
            "http://127.8.9.10",
            "http://[::1]:7410",
            "http://localhost:7410",
            "http://LOCALHOST",
        ] {
            assert!(!Remote::new(local, "t").unwrap().tls, "{local}");
        }
        assert!(Remote::new("https://10.0.0.7:7410", "t").unwrap().tls);
    }
}
