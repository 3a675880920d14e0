//! MCP over Streamable HTTP, and the approvers' endpoints.
//!
//! # Requests
//! Every request passes two checks before anything else, against DNS
//! rebinding and cross-site use from a browser:
//! - `Host` must name the server: a loopback name (`localhost`,
//!   `127.0.0.1`, `[::1]`, any port) or one of
//!   [`HttpConfig::allowed_hosts`]; otherwise `403`.
//! - `Origin`, when present, must be a loopback origin or one of
//!   [`HttpConfig::allowed_origins`]; otherwise `403`.
//!
//! With [`HttpConfig::behind_proxy`] no loopback name, origin or peer
//! vouches for anything: only the lists do.
//!
//! `/mcp` (the MCP endpoint) then requires `Authorization: Bearer <token>`
//! where the token's SHA-256 is one of [`HttpConfig::tokens`]; the call runs
//! as that entry's principal. With [`HttpConfig::oauth`], a token that is
//! none of those may instead be a JWT access token from a configured issuer
//! ([`crate::oauth`]); the protected resource metadata is then served at
//! `/.well-known/oauth-protected-resource`. No or an unknown token: `401`
//! with `WWW-Authenticate: Bearer` (and `resource_metadata="…"` with
//! OAuth); an issuer whose keys cannot be fetched: `503`. Bodies over
//! [`HttpConfig::max_request_bytes`] get `413`.
//!
//! # Metrics
//! `GET /metrics` serves the host's metrics ([`Host::metrics`]) in the
//! OpenMetrics text format, which Prometheus scrapes. Without
//! [`HttpConfig::metrics_token_sha256`] only loopback peers get them (`403`
//! for others; no one with [`HttpConfig::behind_proxy`]); with it, only requests bearing that token (`401` without),
//! wherever they come from. It is its own token: no caller's or
//! approver's.
//!
//! # Connections
//! [`serve`] runs hyper's HTTP/1 server itself (not `axum::serve`, which
//! has no header timeout) with two bounds against clients that hold
//! connections without using them:
//! - [`HttpConfig::header_read_timeout`]: a connection must deliver a
//!   request's whole head within it — from when the connection opens, and
//!   again from the end of each response on a keep-alive connection (so it
//!   is also the idle bound). A connection that does not is closed.
//! - [`HttpConfig::write_timeout`]: a write to the client that makes no
//!   progress for so long closes the connection (a client that pipelines
//!   requests and reads no answer would otherwise hold it forever: hyper
//!   reads no further head while an answer waits, so the header timeout
//!   never starts).
//! - [`HttpConfig::max_connections`]: connections open at once. One past
//!   the cap is accepted and closed at once (not left in the kernel's
//!   backlog), so a well-behaved client gets a prompt error to retry on.
//!   Callers' event streams (`GET /mcp`, open as long as their client
//!   likes) may take half of them at most, and one caller
//!   [`MAX_STREAMS_PER_CALLER`]: the rest stay for requests, approvers'
//!   and the console's among them.
//! - [`HttpConfig::max_connections_per_peer`]: connections one peer
//!   holds at once (default half of `max_connections`; an IPv6 peer is
//!   its /64, which one host usually has whole). One past it is closed at
//!   once as above, so no single address can take every connection —
//!   before any token is checked — and lock approvers out. Not applied
//!   behind a proxy, where every connection is the proxy's.
//! - Request bodies the listener holds at once (read before any token is
//!   checked): four of the largest, at least 64 MiB; past that a request
//!   is answered `503` at once.
//!
//! # Console
//! `/console` is the approvers' and operators' console in a browser
//! ([`crate::console`]): approver tokens only, a server-side session in an
//! `HttpOnly; SameSite=Strict` cookie, CSRF tokens and an `Origin` check on
//! every form, a strict CSP and no script.
//!
//! # Approvers
//! `/approvals` is not MCP and takes only *approver* tokens (the host
//! policy's `approvals.approvers`), never a caller's: `GET /approvals`
//! lists pending approvals (`?all=true`: every one, `?state=…`: those in
//! one state), `GET /approvals/{id}` shows one, `POST /approvals/{id}` with
//! `{"decision": "approve" | "reject", "reason": "…"}` decides one. A
//! caller token there gets `401`; an approver cannot decide on their own
//! call (the host refuses, `409`). An approval whose arguments were
//! redacted or cut before they were stored
//! ([`airlock_host::unseen_arguments`]) is approved only with
//! `"unseen": "acknowledged"` in the body (otherwise `409`): the tool
//! would receive values no approver can see.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use airlock_host::store::ApprovalState;
use airlock_host::{Host, Verdict};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result, config};
use crate::oauth::{OauthConfig, OauthErrorKind, OauthVerifier};
use crate::server::{McpServer, Principal};

/// The default address for `airlock serve --http`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7410";
/// Default cap on a request body.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;
/// The MCP endpoint's path.
pub const MCP_PATH: &str = "/mcp";
/// The metrics endpoint's path.
pub const METRICS_PATH: &str = "/metrics";
/// Default cap on connections open at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Largest `max_connections` a configuration may ask for.
pub const MAX_CONNECTIONS_CEILING: usize = 65_536;
/// Default time a connection has to deliver a request's head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a request has to deliver its whole body once its head is
/// in ([`HttpConfig::body_read_timeout`]).
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a write to a client may make no progress
/// ([`HttpConfig::write_timeout`]).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `header_read_timeout` a configuration may ask for.
pub const HEADER_READ_TIMEOUT_CEILING: Duration = Duration::from_secs(300);
/// How long a stopping server waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a stopping server leaves its streams open once its last call
/// has ended, for the answers to be written.
const ANSWER_FLUSH_GRACE: Duration = Duration::from_millis(500);
/// How long an answered request's stream is kept for a client to resume
/// it (a connection lost as the response was sent): long enough for a
/// retry, short enough that a fast caller's answers do not pile up.
const COMPLETED_RESPONSE_TTL: Duration = Duration::from_secs(5);
/// Most MCP sessions one caller may hold open at once; past it a new
/// `initialize` is refused (429) until one is closed or idles out.
pub const MAX_SESSIONS_PER_CALLER: usize = 64;
/// Most MCP sessions the server holds open at once, all callers together;
/// past it a new `initialize` is refused (503).
pub const MAX_SESSIONS: usize = 4096;
/// Most event streams (`GET /mcp`) one caller may hold open at once; past
/// it another is refused (429) until one closes.
pub const MAX_STREAMS_PER_CALLER: usize = 16;

/// Refused requests logged a second, at most; the rest are counted and
/// the count logged with the next one logged.
pub(crate) const REFUSALS_LOGGED_A_SECOND: u32 = 20;

/// The refusals logged in the current second, and those not logged.
#[derive(Debug)]
struct RefusalLog {
    second: Option<std::time::Instant>,
    logged: u32,
    unlogged: u64,
}

static REFUSAL_LOG: std::sync::Mutex<RefusalLog> = std::sync::Mutex::new(RefusalLog {
    second: None,
    logged: 0,
    unlogged: 0,
});

/// Whether a refused request may be logged now: `Some(n)`, with the `n`
/// refusals not logged since the last one that was; `None` past
/// [`REFUSALS_LOGGED_A_SECOND`] in this second.
///
/// # Security
/// Every refusal (a bad token, a foreign `Host`, a session over its
/// caller's count) is one warning, and anyone who can connect can make
/// thousands a second: unbounded, they fill the operator's disk and bury
/// what matters.
pub(crate) fn refusal_may_be_logged() -> Option<u64> {
    REFUSAL_LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .allow(std::time::Instant::now())
}

impl RefusalLog {
    /// See [`refusal_may_be_logged`]; `now` is the refusal's time.
    fn allow(&mut self, now: std::time::Instant) -> Option<u64> {
        if self
            .second
            .is_none_or(|start| now.saturating_duration_since(start) >= Duration::from_secs(1))
        {
            self.second = Some(now);
            self.logged = 0;
        }
        if self.logged >= REFUSALS_LOGGED_A_SECOND {
            self.unlogged = self.unlogged.saturating_add(1);
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// `tracing::warn!` for a refused request, within
/// [`refusal_may_be_logged`]'s bound.
macro_rules! warn_refused {
    ($($arg:tt)+) => {
        if let Some(unlogged) = $crate::http::refusal_may_be_logged() {
            if unlogged > 0 {
                tracing::warn!(unlogged, "requests refused and not logged (over {} a second)", $crate::http::REFUSALS_LOGGED_A_SECOND);
            }
            tracing::warn!($($arg)+);
        }
    };
}
pub(crate) use warn_refused;

/// One caller token: the SHA-256 (hex) of the secret and who it is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerToken {
    /// Who calls made with this token run as.
    pub principal: String,
    /// Lowercase or uppercase hex SHA-256 of the token, 64 digits. Only the
    /// hash is stored, so the config file does not hold the secret.
    pub token_sha256: String,
}

/// How the HTTP transport is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpConfig {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Listen on a non-loopback address (needs tokens, and `allowed_hosts`
    /// naming the server).
    pub allow_remote: bool,
    /// Caller tokens; at least one is required.
    pub tokens: Vec<CallerToken>,
    /// Origins (`scheme://host[:port]`) allowed besides loopback ones.
    pub allowed_origins: Vec<String>,
    /// Host names (or `host:port`) allowed besides loopback ones.
    pub allowed_hosts: Vec<String>,
    /// Largest request body.
    pub max_request_bytes: usize,
    /// Connections open at once; one more is closed as soon as it is
    /// accepted.
    pub max_connections: usize,
    /// Connections one peer address (an IPv6 peer: its /64) may hold at
    /// once; one more from it is closed as soon as it is accepted. `None`:
    /// half of `max_connections`, rounded up. Not applied when
    /// `behind_proxy`.
    pub max_connections_per_peer: Option<usize>,
    /// Time a connection has to deliver a request's head, from its start
    /// or from the end of its previous response (the keep-alive idle
    /// bound); then it is closed.
    pub header_read_timeout: Duration,
    /// Time a request has to deliver its whole body (at most
    /// `max_request_bytes`) once its head is in; then it is answered `408`
    /// and the connection closed. Without it a client trickling a body
    /// holds a connection (and a handler) as long as it likes — before any
    /// token is checked.
    pub body_read_timeout: Duration,
    /// Time a write to the client may make no progress (the client reads
    /// nothing); then the connection is closed. Without it a client that
    /// pipelines requests and never reads their answers holds a
    /// connection for as long as it likes: hyper stops reading (so no
    /// header timeout runs) while an answer waits to be written.
    pub write_timeout: Duration,
    /// SHA-256 (hex) of the token `/metrics` requires; `None`: `/metrics`
    /// answers loopback peers only.
    pub metrics_token_sha256: Option<String>,
    /// JWT access tokens from OAuth issuers, besides `tokens`.
    pub oauth: Option<OauthConfig>,
    /// A reverse proxy on this machine forwards clients to this listener,
    /// so a request from a loopback peer, or naming a loopback `Host` or
    /// `Origin`, may come from anywhere: nothing is trusted for being
    /// loopback. `Host` must be in `allowed_hosts` (required) and an
    /// `Origin` in `allowed_origins`; `/metrics` needs
    /// `metrics_token_sha256`; the console's cookie is `Secure` (the proxy
    /// speaks HTTPS to browsers).
    pub behind_proxy: bool,
}

impl HttpConfig {
    /// Listen on `addr` with `tokens`, loopback only, default limits.
    pub fn new(addr: SocketAddr, tokens: Vec<CallerToken>) -> HttpConfig {
        HttpConfig {
            addr,
            allow_remote: false,
            tokens,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: None,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            metrics_token_sha256: None,
            oauth: None,
            behind_proxy: false,
        }
    }

    /// Connections one peer may hold at once; `None` behind a proxy, where
    /// the peer is always the proxy.
    pub(crate) fn per_peer_cap(&self) -> Option<usize> {
        if self.behind_proxy {
            return None;
        }
        Some(
            self.max_connections_per_peer
                .unwrap_or(self.max_connections.div_ceil(2))
                .max(1),
        )
    }

    /// Whether being loopback (the peer, a `Host` or an `Origin`) vouches
    /// for a request: yes, unless a proxy forwards to this listener.
    pub(crate) fn trusts_loopback(&self) -> bool {
        !self.behind_proxy
    }

    /// Check what every listener needs, callers' or approvers': a loopback
    /// address unless `allow_remote`, then `allowed_hosts`; valid origins;
    /// limits within their ranges. The caller tokens are not checked.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key at fault.
    pub fn validate_listener(&self) -> Result<()> {
        if !self.addr.ip().is_loopback() && !self.allow_remote {
            return Err(config(format!(
                "{} is not a loopback address; listening beyond this machine needs serve.allow_remote = true (or --allow-remote)",
                self.addr
            )));
        }
        if self.allow_remote && !self.addr.ip().is_loopback() && self.allowed_hosts.is_empty() {
            return Err(config(
                "a remote listener needs serve.allowed_hosts naming the host clients connect to (DNS rebinding protection)",
            ));
        }
        if self.behind_proxy {
            if self.allowed_hosts.is_empty() {
                return Err(config(
                    "serve.behind_proxy needs serve.allowed_hosts naming the host clients connect to (behind a proxy, loopback names are not trusted)",
                ));
            }
            // Listing a loopback name would trust it again: every request
            // through a proxy that rewrites `Host` to its upstream's
            // address would pass, whatever name its client used.
            if let Some(host) = self.allowed_hosts.iter().find(|h| may_name_this_machine(h)) {
                return Err(config(format!(
                    "serve.allowed_hosts: `{host}` is a loopback name, which behind a proxy (serve.behind_proxy) names every request; have the proxy pass the client's Host on (nginx: proxy_set_header Host $host) and list that"
                )));
            }
            if let Some(origin) = self
                .allowed_origins
                .iter()
                .find(|o| parse_origin(o).is_some_and(|(_, host)| may_name_this_machine(&host)))
            {
                return Err(config(format!(
                    "serve.allowed_origins: `{origin}` is a loopback origin, which behind a proxy (serve.behind_proxy) is any page on a client's own machine; list the origins browsers load the console from"
                )));
            }
        }
        if self.max_request_bytes < 1024 {
            return Err(config("serve.max_request_bytes must be at least 1024"));
        }
        if !(1..=MAX_CONNECTIONS_CEILING).contains(&self.max_connections) {
            return Err(config(format!(
                "serve.max_connections must be between 1 and {MAX_CONNECTIONS_CEILING}"
            )));
        }
        if let Some(per_peer) = self.max_connections_per_peer {
            if !(1..=self.max_connections).contains(&per_peer) {
                return Err(config(format!(
                    "serve.max_connections_per_peer must be between 1 and serve.max_connections ({})",
                    self.max_connections
                )));
            }
            if self.behind_proxy {
                return Err(config(
                    "serve.max_connections_per_peer cannot apply behind a proxy (serve.behind_proxy): every connection comes from the proxy; limit clients at the proxy",
                ));
            }
        }
        if self.body_read_timeout < Duration::from_millis(100)
            || self.body_read_timeout > HEADER_READ_TIMEOUT_CEILING
        {
            return Err(Error::Config {
                message: format!(
                    "serve.body_read_timeout_ms must be between 100 and {}",
                    HEADER_READ_TIMEOUT_CEILING.as_millis()
                ),
            });
        }
        if self.write_timeout < Duration::from_millis(100)
            || self.write_timeout > HEADER_READ_TIMEOUT_CEILING
        {
            return Err(config(format!(
                "serve.write_timeout_ms must be between 100 and {}",
                HEADER_READ_TIMEOUT_CEILING.as_millis()
            )));
        }
        if self.header_read_timeout < Duration::from_millis(100)
            || self.header_read_timeout > HEADER_READ_TIMEOUT_CEILING
        {
            return Err(config(format!(
                "serve.header_read_timeout_ms must be between 100 and {}",
                HEADER_READ_TIMEOUT_CEILING.as_millis()
            )));
        }
        for origin in &self.allowed_origins {
            if parse_origin(origin).is_none() {
                return Err(config(format!(
                    "serve.allowed_origins: `{origin}` is not an origin (scheme://host[:port])"
                )));
            }
        }
        Ok(())
    }

    /// Check the configuration; `approver_hashes` are the approvers' token
    /// hashes, which no caller token may share.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key at fault.
    pub fn validate(&self, approver_hashes: &[String]) -> Result<()> {
        self.validate_listener()?;
        if self.tokens.is_empty() && self.oauth.is_none() {
            return Err(config(
                "serving over HTTP needs at least one caller token ([[serve.tokens]] with principal and token_sha256) or [serve.oauth] issuers",
            ));
        }
        if let Some(oauth) = &self.oauth {
            oauth.validate()?;
        }
        if let Some(metrics) = &self.metrics_token_sha256 {
            let hash = metrics.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(config(
                    "serve.metrics_token_sha256 must be 64 hex digits (the SHA-256 of the token, e.g. `printf %s \"$TOKEN\" | sha256sum`)",
                ));
            }
            if self
                .tokens
                .iter()
                .map(|t| &t.token_sha256)
                .chain(approver_hashes)
                .any(|other| other.eq_ignore_ascii_case(&hash))
            {
                return Err(config(
                    "serve.metrics_token_sha256 is also a caller's or an approver's token: /metrics takes a token of its own",
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, token) in self.tokens.iter().enumerate() {
            let key = format!("serve.tokens[{i}]");
            let hash = token.token_sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(config(format!(
                    "{key}.token_sha256 must be 64 hex digits (the SHA-256 of the token, e.g. `printf %s \"$TOKEN\" | sha256sum`)"
                )));
            }
            let principal = &token.principal;
            if principal.is_empty()
                || principal.len() > 256
                || principal.chars().any(char::is_control)
            {
                return Err(config(format!(
                    "{key}.principal must be 1-256 characters without control characters"
                )));
            }
            if !seen.insert(hash.clone()) {
                return Err(config(format!(
                    "{key}.token_sha256 repeats an earlier token"
                )));
            }
            if approver_hashes
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&hash))
            {
                return Err(config(format!(
                    "{key} is also an approver's token: callers and approvers must authenticate separately"
                )));
            }
        }
        if let Some(oauth) = &self.oauth {
            oauth.check_principals_apart(self.tokens.iter().map(|t| t.principal.as_str()))?;
        }
        Ok(())
    }
}

/// Checks shared by every route.
#[derive(Debug)]
pub(crate) struct Guard {
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) allowed_hosts: Vec<String>,
    /// Loopback `Host`s and `Origin`s pass without being listed (no proxy
    /// forwards to the listener).
    pub(crate) loopback: bool,
}

impl Guard {
    /// Loopback `Host`s and `Origin`s only (the control socket's).
    pub(crate) fn loopback_only() -> Guard {
        Guard {
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            loopback: true,
        }
    }
}

/// How much body a request may send, and how fast; and how many bytes of
/// bodies the listener holds at once.
#[derive(Debug, Clone)]
pub(crate) struct BodyBound {
    max_bytes: usize,
    timeout: Duration,
    /// Bytes of request bodies read (or being read) and not yet let go,
    /// all requests together: a permit a byte.
    in_flight: Arc<Semaphore>,
    /// The same per peer address (an IPv6 peer: its /64), and the most
    /// one may hold: half the room, so that one peer's slow bodies cannot
    /// take it all. `None`: not counted per peer (behind a proxy, where
    /// every request is the proxy's; the control socket).
    per_peer: Option<(usize, PeerCounts)>,
}

/// What one request's body holds against its peer (bytes, in the
/// peers' [`PeerCounts`]), given back when dropped (when the request is
/// answered).
#[derive(Debug)]
struct PeerHeld {
    bytes: PeerCounts,
    peer: PeerKey,
    cap: usize,
    held: usize,
}

impl PeerHeld {
    /// `n` more bytes, unless the peer would hold more than its cap.
    fn take(&mut self, n: usize) -> bool {
        let taken = self.bytes.add(self.peer, n, self.cap);
        if taken {
            self.held += n;
        }
        taken
    }
}

impl Drop for PeerHeld {
    fn drop(&mut self) {
        if self.held > 0 {
            self.bytes.give_back(self.peer, self.held);
        }
    }
}

/// Least room for request bodies held at once, whatever the size bound.
const MIN_BODY_BYTES_IN_FLIGHT: usize = 64 << 20;

impl BodyBound {
    /// Bodies of at most `max_bytes`, delivered within `timeout`; room for
    /// four bodies of the largest size held at once, at least
    /// [`MIN_BODY_BYTES_IN_FLIGHT`] bytes.
    pub(crate) fn new(max_bytes: usize, timeout: Duration) -> BodyBound {
        let room = max_bytes.saturating_mul(4).max(MIN_BODY_BYTES_IN_FLIGHT);
        BodyBound::with_room(max_bytes, timeout, room)
    }

    /// Bodies of at most `max_bytes`, within `timeout`, `room` bytes of
    /// them held at once.
    fn with_room(max_bytes: usize, timeout: Duration, room: usize) -> BodyBound {
        BodyBound {
            max_bytes,
            timeout,
            in_flight: Arc::new(Semaphore::new(room.min(Semaphore::MAX_PERMITS))),
            per_peer: None,
        }
    }

    /// The same, one peer address holding at most half the room.
    fn per_peer(self) -> BodyBound {
        let room = self.in_flight.available_permits();
        BodyBound {
            per_peer: Some((room.div_ceil(2), PeerCounts::default())),
            ..self
        }
    }
}

/// Caller tokens by hash, and the OAuth issuers' tokens.
#[derive(Debug)]
struct Callers {
    tokens: Vec<CallerToken>,
    max_request_bytes: usize,
    oauth: Option<OauthVerifier>,
    /// The SDK's sessions (closed and idle ones leave it).
    sessions: Arc<LocalSessionManager>,
    /// Who opened each session, and the sessions being opened.
    session_owners: std::sync::Mutex<SessionOwners>,
    /// Event streams open, by caller.
    streams: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Most event streams open at once, all callers together: half the
    /// listener's connections, so that streams held open cannot take the
    /// connections approvers, the console and calls need.
    max_streams: usize,
}

/// Who opened each open session, to count a caller's; and the `initialize`
/// requests in flight, which count too until they answer (so concurrent
/// ones cannot all pass the check before any session exists).
#[derive(Debug, Default)]
struct SessionOwners {
    /// Each open session's opener, and when it was recorded (a count of
    /// sessions recorded before it: see [`Callers::open_session`]).
    by_session: std::collections::HashMap<String, (String, u64)>,
    /// Sessions recorded so far.
    recorded: u64,
    opening: std::collections::HashMap<String, usize>,
}

impl SessionOwners {
    fn opening_total(&self) -> usize {
        self.opening.values().sum()
    }

    /// Forget the owners of sessions closed since: those recorded before
    /// `recorded_before` whose session is not in `open` (a snapshot of the
    /// SDK's sessions taken after `recorded_before` was read). An owner
    /// recorded later is kept whatever the snapshot says: its session may
    /// have opened after the snapshot.
    fn prune(&mut self, open: &std::collections::HashSet<String>, recorded_before: u64) {
        self.by_session
            .retain(|id, (_, recorded)| open.contains(id) || *recorded >= recorded_before);
    }

    /// Record `principal` as the opener of `session`.
    fn record(&mut self, session: &str, principal: &str) {
        let recorded = self.recorded;
        self.recorded += 1;
        self.by_session
            .insert(session.to_owned(), (principal.to_owned(), recorded));
    }
}

/// A session being opened by `principal`: counted against the limits
/// until dropped (the `initialize` answered or failed), and recorded as
/// the session's owner if it opened one.
struct Opening {
    callers: Arc<Callers>,
    principal: String,
}

impl Opening {
    fn opened(self, session: &str) {
        self.callers.owners().record(session, &self.principal);
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        let mut owners = self.callers.owners();
        if let Some(n) = owners.opening.get_mut(&self.principal) {
            *n -= 1;
            if *n == 0 {
                owners.opening.remove(&self.principal);
            }
        }
    }
}

impl Callers {
    fn owners(&self) -> std::sync::MutexGuard<'_, SessionOwners> {
        self.session_owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A session `principal` may open now, counted until it is open; or
    /// why it may not.
    async fn open_session(self: &Arc<Self>, principal: &str) -> Result<Opening, Response> {
        // Owners recorded from here on are kept whatever the snapshot below
        // says: a session is in the SDK's table before its opener is
        // recorded (after its `initialize` is answered), but one recorded
        // after this point may have opened after the snapshot was taken.
        let recorded_before = self.owners().recorded;
        let open: std::collections::HashSet<String> = self
            .sessions
            .sessions
            .read()
            .await
            .keys()
            .map(ToString::to_string)
            .collect();
        let mut owners = self.owners();
        owners.prune(&open, recorded_before);
        let total = open.len() + owners.opening_total();
        if total >= MAX_SESSIONS {
            warn_refused!(
                sessions = total,
                "MCP session refused: the server holds its most"
            );
            return Err(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "the server holds its most MCP sessions ({MAX_SESSIONS}); try again later"
                ),
            ));
        }
        let held = owners
            .by_session
            .values()
            .filter(|(p, _)| p == principal)
            .count()
            + owners.opening.get(principal).copied().unwrap_or(0);
        if held >= MAX_SESSIONS_PER_CALLER {
            warn_refused!(
                principal,
                held,
                "MCP session refused: the caller holds its most"
            );
            return Err(plain(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "this caller holds {held} open MCP sessions, the most allowed \
                     ({MAX_SESSIONS_PER_CALLER}); close one (HTTP DELETE with its \
                     Mcp-Session-Id) or let one idle out"
                ),
            ));
        }
        *owners.opening.entry(principal.to_owned()).or_default() += 1;
        Ok(Opening {
            callers: Arc::clone(self),
            principal: principal.to_owned(),
        })
    }
}

/// An event stream `principal` holds open, counted against the limits
/// until its response body is dropped (the stream ended or its client
/// went away).
struct StreamSlot {
    callers: Arc<Callers>,
    principal: String,
}

impl StreamSlot {
    /// Kept alive by whatever calls this (the stream's body).
    fn held(&self) {}
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.callers.stream_counts();
        if let Some(n) = streams.get_mut(&self.principal) {
            *n -= 1;
            if *n == 0 {
                streams.remove(&self.principal);
            }
        }
    }
}

impl Callers {
    fn stream_counts(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for one more event stream of `principal`; or why not.
    ///
    /// # Security
    /// An event stream lasts as long as its client keeps it open (the
    /// header and body timeouts are over once it answers): without these
    /// bounds one caller opening streams takes every connection of the
    /// listener, approvers' and the console's among them.
    fn open_stream(self: &Arc<Self>, principal: &str) -> Result<StreamSlot, Box<Response>> {
        let mut streams = self.stream_counts();
        let total: usize = streams.values().sum();
        if total >= self.max_streams {
            warn_refused!(
                streams = total,
                "MCP event stream refused: the server holds its most"
            );
            return Err(Box::new(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "the server holds its most MCP event streams ({}); try again later",
                    self.max_streams
                ),
            )));
        }
        let held = streams.get(principal).copied().unwrap_or(0);
        if held >= MAX_STREAMS_PER_CALLER {
            warn_refused!(
                principal,
                held,
                "MCP event stream refused: the caller holds its most"
            );
            return Err(Box::new(plain(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "this caller holds {held} open MCP event streams, the most allowed \
                     ({MAX_STREAMS_PER_CALLER}); close one first"
                ),
            )));
        }
        *streams.entry(principal.to_owned()).or_default() += 1;
        Ok(StreamSlot {
            callers: Arc::clone(self),
            principal: principal.to_owned(),
        })
    }

    fn principal(&self, token: &str) -> Option<String> {
        self.tokens
            .iter()
            .find(|t| airlock_audit::token::matches_sha256(token, &t.token_sha256))
            .map(|t| t.principal.clone())
    }
}

/// The whole HTTP application: `/mcp` for callers, `/approvals` and the
/// `/console` ([`crate::console`]) for approvers, `/metrics` for scrapers,
/// behind the Host and Origin checks.
///
/// When `shutdown` is cancelled the server takes no new call, lets the
/// calls running finish (up to [`CALL_GRACE`], within [`serve`]'s grace
/// for connections), and only then closes its MCP streams: cancelled with
/// them, a running call was stopped mid-run, its client got no result and
/// its idempotency key's outcome became unknown. (Built outside a tokio
/// runtime, the streams close at once.)
///
/// # Errors
/// [`Error::Config`] from [`HttpConfig::validate`].
pub fn router(
    server: &McpServer,
    config: &HttpConfig,
    shutdown: CancellationToken,
) -> Result<Router> {
    config.validate(&approver_hashes(server.host()))?;
    if config.behind_proxy && config.allowed_origins.is_empty() {
        tracing::warn!(
            "behind a proxy with no serve.allowed_origins: every browser request that sends an Origin (the console's sign-in and forms) is refused; MCP clients are not affected"
        );
    }
    let rmcp_config = StreamableHttpServerConfig::default()
        // Host and Origin are checked by this crate's guard (with the
        // configured lists), before authentication.
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_max_request_body_bytes(config.max_request_bytes)
        .with_cancellation_token(streams_until_calls_end(server, shutdown));
    let factory = {
        let server = server.clone();
        move || Ok(server.handler(None))
    };
    let mut sessions = LocalSessionManager::default();
    // rmcp keeps each answered request's stream, response included, for a
    // client to resume: 60 s by default, pruned only when the session's
    // next message comes. A caller answered as fast as it can ask held
    // its rate times a minute of responses (gigabytes of `tools/list`),
    // and kept them for the session's idle timeout once it went quiet.
    sessions.session_config.completed_cache_ttl = COMPLETED_RESPONSE_TTL;
    let sessions = Arc::new(sessions);
    let mcp = StreamableHttpService::new(factory, Arc::clone(&sessions), rmcp_config);
    let oauth = config.oauth.clone().map(OauthVerifier::new).transpose()?;
    let metadata = config
        .oauth
        .as_ref()
        .map(|o| (o.metadata_paths(), o.metadata()));
    let callers = Arc::new(Callers {
        tokens: config.tokens.clone(),
        max_request_bytes: config.max_request_bytes,
        oauth,
        sessions,
        session_owners: std::sync::Mutex::default(),
        streams: std::sync::Mutex::default(),
        max_streams: (config.max_connections / 2).max(1),
    });
    let mut mcp_routes = Router::new()
        .route_service(MCP_PATH, mcp)
        .layer(middleware::from_fn_with_state(callers, authenticate_caller));
    // Added after the token layer: the metadata is public (RFC 9728).
    if let Some((paths, document)) = metadata {
        for path in paths {
            let document = document.clone();
            mcp_routes = mcp_routes.route(&path, get(move || std::future::ready(Json(document))));
        }
    }
    let metrics_routes = Router::new()
        .route(METRICS_PATH, get(serve_metrics))
        .with_state(Arc::new(MetricsAccess {
            host: Arc::clone(server.host()),
            token_sha256: config.metrics_token_sha256.clone(),
            loopback_peers: config.trusts_loopback(),
        }));
    Ok(behind_listener_checks(
        mcp_routes
            .merge(approvals_routes(server))
            .merge(metrics_routes)
            .merge(crate::console::routes(server, config)),
        config,
    ))
}

/// Only the approvers' endpoints (for a stdio server's approvers), behind
/// the Host and Origin checks, for a listener set up by `config` (its
/// caller tokens are not used).
///
/// # Errors
/// [`Error::Config`] from [`HttpConfig::validate_listener`]: like the MCP
/// listener, a non-loopback address needs `allow_remote` and
/// `allowed_hosts`.
pub fn approvals_router(server: &McpServer, config: &HttpConfig) -> Result<Router> {
    config.validate_listener()?;
    Ok(behind_listener_checks(approvals_routes(server), config))
}

/// `router` behind what every listener checks, outermost first: `Host` and
/// `Origin`, then the whole body read within its time and size bounds.
fn behind_listener_checks(router: Router, config: &HttpConfig) -> Router {
    behind_checks(router, guard(config), body_bound(config))
}

/// [`behind_listener_checks`] with the guard and bound given.
pub(crate) fn behind_checks(router: Router, guard: Arc<Guard>, bound: BodyBound) -> Router {
    router
        .layer(middleware::from_fn_with_state(bound, read_body_in_time))
        .layer(middleware::from_fn_with_state(guard, check_host_and_origin))
}

fn body_bound(config: &HttpConfig) -> BodyBound {
    let bound = BodyBound::new(config.max_request_bytes, config.body_read_timeout);
    // Per peer where connections are counted per peer: not behind a proxy.
    if config.per_peer_cap().is_some() {
        bound.per_peer()
    } else {
        bound
    }
}

/// Why a body was not read.
enum BodyRefused {
    TooLarge,
    NoRoom,
    PeerNoRoom,
    Broken,
}

/// Read `body` whole, at most `bound.max_bytes`, each chunk taking its
/// size from `bound.in_flight` into `held`, and from its peer's share
/// into `peer_held`.
async fn read_bounded(
    mut body: axum::body::Body,
    bound: &BodyBound,
    held: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    peer_held: &mut Option<PeerHeld>,
) -> std::result::Result<bytes::Bytes, BodyRefused> {
    use http_body_util::BodyExt as _;
    let mut bytes = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(BodyRefused::Broken);
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if bytes.len().saturating_add(data.len()) > bound.max_bytes {
            return Err(BodyRefused::TooLarge);
        }
        let size = u32::try_from(data.len()).map_err(|_| BodyRefused::TooLarge)?;
        if let Some(peer) = peer_held
            && !peer.take(data.len())
        {
            return Err(BodyRefused::PeerNoRoom);
        }
        let Ok(permit) = Arc::clone(&bound.in_flight).try_acquire_many_owned(size) else {
            return Err(BodyRefused::NoRoom);
        };
        match held {
            Some(held) => held.merge(permit),
            None => *held = Some(permit),
        }
        bytes.extend_from_slice(&data);
    }
    Ok(bytes.freeze())
}

/// Read a request's whole body, at most `max_bytes`, within `timeout`,
/// before any handler (or token check) sees the request: a body that
/// trickles is answered `408`, one too large `413`. Bodies here are small
/// JSON documents, so holding one in memory costs what the size bound
/// allows.
///
/// # Security
/// Bodies are read before any token is checked, so what the listener
/// holds of them at once is bounded too (`BodyBound::in_flight`): past it
/// a request is answered `503` at once, and unauthenticated clients
/// sending large bodies slowly cannot grow the server's memory past
/// that room.
async fn read_body_in_time(
    State(bound): State<BodyBound>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    // Held until the request is answered: its body is in memory till then.
    let mut held = None;
    let peer = parts
        .extensions
        .get::<PeerIp>()
        .and_then(|p| p.0)
        .map(PeerKey::of);
    let mut peer_held = match (&bound.per_peer, peer) {
        (Some((cap, bytes)), Some(peer)) => Some(PeerHeld {
            bytes: bytes.clone(),
            peer,
            cap: *cap,
            held: 0,
        }),
        _ => None,
    };
    let read = tokio::time::timeout(
        bound.timeout,
        read_bounded(body, &bound, &mut held, &mut peer_held),
    );
    let closing = |status: StatusCode, message: &str| {
        let mut response = plain(status, message);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    };
    let bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(BodyRefused::TooLarge)) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body over {} bytes", bound.max_bytes),
            );
        }
        Ok(Err(BodyRefused::NoRoom)) => {
            warn_refused!("request refused: the server holds its most request bodies");
            return closing(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server holds as many request bodies as it may; try again shortly",
            );
        }
        Ok(Err(BodyRefused::PeerNoRoom)) => {
            warn_refused!("request refused: its peer holds as many request bodies as one peer may");
            return closing(
                StatusCode::SERVICE_UNAVAILABLE,
                "this address holds as many request bodies as one may; try again shortly",
            );
        }
        Ok(Err(BodyRefused::Broken)) => {
            return closing(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        }
        Err(_) => {
            tracing::debug!("request body not delivered in time");
            return closing(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "request body not delivered within {} ms",
                    bound.timeout.as_millis()
                ),
            );
        }
    };
    let response = next
        .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await;
    drop((held, peer_held));
    response
}

fn guard(config: &HttpConfig) -> Arc<Guard> {
    Arc::new(Guard {
        allowed_origins: config.allowed_origins.clone(),
        allowed_hosts: config.allowed_hosts.clone(),
        loopback: config.trusts_loopback(),
    })
}

fn approver_hashes(host: &Host) -> Vec<String> {
    host.config()
        .policy
        .approvals
        .approvers
        .iter()
        .map(|a| a.token_sha256.clone())
        .collect()
}

/// How long a shutting-down server lets running calls finish before it
/// closes its MCP streams (and with them the calls): less than the grace
/// connections get, so their answers go out.
pub const CALL_GRACE: Duration = Duration::from_secs(8);
const _: () = assert!(CALL_GRACE.as_secs() < SHUTDOWN_GRACE.as_secs());

/// The token rmcp's streams end with: cancelled once `shutdown` is and the
/// calls running have finished (or [`CALL_GRACE`] passed).
fn streams_until_calls_end(server: &McpServer, shutdown: CancellationToken) -> CancellationToken {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return shutdown;
    };
    let streams = CancellationToken::new();
    let server = server.clone();
    let stop = streams.clone();
    runtime.spawn(async move {
        shutdown.cancelled().await;
        server.finish_calls(CALL_GRACE).await;
        // A call gives its slot back as its handler returns, before rmcp
        // has written its answer to the stream: ending the streams at
        // once raced that write, and a loaded machine lost the answer
        // (`a_call_running_when_the_server_is_stopped_finishes_and_is_answered`).
        tokio::time::sleep(ANSWER_FLUSH_GRACE).await;
        stop.cancel();
    });
    streams
}

/// Serve `router` on `listener` until `shutdown` is cancelled, within
/// `config`'s connection bounds ([`HttpConfig::max_connections`],
/// [`HttpConfig::header_read_timeout`]). On shutdown, stop accepting, let
/// requests in progress finish (up to 10 s) and close idle connections.
///
/// # Security
/// Without these bounds, clients that open connections and send a partial
/// request head (or nothing) hold sockets and tasks for as long as they
/// like; past the cap, new connections would wait in the kernel's backlog
/// with no answer.
///
/// # Errors
/// None at present: a failed accept is logged and retried.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    config: &HttpConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    serve_connections(
        listener,
        router,
        ConnectionBounds {
            max_connections: config.max_connections,
            max_per_peer: config.per_peer_cap(),
            header_read_timeout: config.header_read_timeout,
            write_timeout: config.write_timeout,
        },
        shutdown,
    )
    .await;
    Ok(())
}

/// Where connections come from: a TCP listener, or the control socket
/// (which refuses peers of another user before they are served).
pub(crate) trait Accept: Send {
    /// One connection.
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    /// The next connection to serve with a label for logs; `None` when one
    /// was accepted and refused, or accepting failed (after a pause when
    /// the process is out of something).
    fn accept(&mut self) -> impl Future<Output = Option<(Self::Stream, String)>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&mut self) -> Option<(tokio::net::TcpStream, String)> {
        match tokio::net::TcpListener::accept(self).await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                Some((stream, peer.to_string()))
            }
            Err(error) => {
                accept_failed(&error).await;
                None
            }
        }
    }
}

/// How many connections a listener holds open, and how long each has to
/// deliver a request's head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionBounds {
    pub(crate) max_connections: usize,
    /// Connections one peer address may hold (`None`: no such bound).
    pub(crate) max_per_peer: Option<usize>,
    pub(crate) header_read_timeout: Duration,
    /// How long a write to the peer may make no progress.
    pub(crate) write_timeout: Duration,
}

/// Whom a connection counts against for [`ConnectionBounds::max_per_peer`]:
/// an IPv4 address, or an IPv6 address's /64 (a host is usually given a
/// whole /64, so counting single IPv6 addresses would bound nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PeerKey {
    V4(std::net::Ipv4Addr),
    V6Net([u8; 8]),
}

impl PeerKey {
    fn of(ip: IpAddr) -> PeerKey {
        match ip {
            IpAddr::V4(v4) => PeerKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey::V4(v4),
                None => {
                    let mut net = [0; 8];
                    net.copy_from_slice(&v6.octets()[..8]);
                    PeerKey::V6Net(net)
                }
            },
        }
    }
}

/// Counts per peer: connections open, or bytes of request bodies held.
/// Entries go when their count does, so the map holds at most one entry
/// per open connection (or held body).
#[derive(Debug, Default, Clone)]
struct PeerCounts(Arc<std::sync::Mutex<std::collections::HashMap<PeerKey, usize>>>);

impl PeerCounts {
    /// `n` more for `peer`, unless it would then hold more than `cap`.
    fn add(&self, peer: PeerKey, n: usize, cap: usize) -> bool {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.get(&peer).copied().unwrap_or(0);
        match count.checked_add(n).filter(|after| *after <= cap) {
            Some(after) => {
                counts.insert(peer, after);
                true
            }
            None => false,
        }
    }

    /// `n` fewer for `peer`; its entry goes with its count.
    fn give_back(&self, peer: PeerKey, n: usize) {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&peer) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                counts.remove(&peer);
            }
        }
    }

    /// One more connection for `peer`, unless it already holds `cap`.
    fn take(&self, peer: PeerKey, cap: usize) -> Option<PeerSlot> {
        self.add(peer, 1, cap).then(|| PeerSlot {
            counts: self.clone(),
            peer,
        })
    }
}

/// A connection counted against its peer, given back when dropped.
#[derive(Debug)]
struct PeerSlot {
    counts: PeerCounts,
    peer: PeerKey,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        self.counts.give_back(self.peer, 1);
    }
}

/// [`serve`]'s loop, for any listener: HTTP/1 with the header timeout and
/// the connection cap; on shutdown, stop accepting and let requests in
/// progress finish (up to 10 s).
pub(crate) async fn serve_connections<L: Accept>(
    mut listener: L,
    router: Router,
    bounds: ConnectionBounds,
    shutdown: CancellationToken,
) {
    let max = bounds.max_connections.clamp(1, MAX_CONNECTIONS_CEILING);
    let slots = Arc::new(Semaphore::new(max));
    let peers = PeerCounts::default();
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The timer makes hyper enforce the header timeout (without one it
    // silently does not).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_read_timeout)
        .keep_alive(true);
    let mut refusing = false;
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Some(accepted) => accepted,
                None => continue,
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Closed now rather than queued: the client sees it at once.
            if !refusing {
                tracing::warn!(
                    max_connections = max,
                    "HTTP connection limit reached: closing new connections until one ends"
                );
            }
            refusing = true;
            tracing::debug!(%peer, "connection refused: at the connection limit");
            drop(stream);
            continue;
        };
        refusing = false;
        // The peer's address, for handlers that answer loopback peers only.
        let peer_ip = PeerIp(peer.parse::<SocketAddr>().ok().map(|a| a.ip()));
        let peer_slot = match (bounds.max_per_peer, peer_ip.0) {
            (Some(cap), Some(ip)) => {
                let Some(peer_slot) = peers.take(PeerKey::of(ip), cap) else {
                    warn_refused!(
                        %peer,
                        max_connections_per_peer = cap,
                        "connection refused: the peer holds as many connections as one peer may"
                    );
                    drop(stream);
                    continue;
                };
                Some(peer_slot)
            }
            _ => None,
        };
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(bounds.write_timeout));
        let connection = builder.serve_connection(
            TokioIo::new(Box::pin(stream)),
            WithPeer {
                inner: TowerToHyperService::new(router.clone()),
                peer: peer_ip,
            },
        );
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slots = (slot, peer_slot);
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, error = %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open {} s after shutdown began; closing them",
            SHUTDOWN_GRACE.as_secs()
        );
    }
}

/// The address a request's connection came from (`None`: not a TCP
/// connection), set on every request by [`serve_connections`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerIp(pub(crate) Option<IpAddr>);

/// A connection's service: the router, with the peer's address in each
/// request's extensions.
#[derive(Clone)]
struct WithPeer {
    inner: TowerToHyperService<Router>,
    peer: PeerIp,
}

impl<B> hyper::service::Service<hyper::Request<B>> for WithPeer
where
    TowerToHyperService<Router>: hyper::service::Service<hyper::Request<B>>,
{
    type Response =
        <TowerToHyperService<Router> as hyper::service::Service<hyper::Request<B>>>::Response;
    type Error = <TowerToHyperService<Router> as hyper::service::Service<hyper::Request<B>>>::Error;
    type Future =
        <TowerToHyperService<Router> as hyper::service::Service<hyper::Request<B>>>::Future;

    fn call(&self, mut request: hyper::Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.peer);
        self.inner.call(request)
    }
}

/// Who may read `/metrics`, and from what.
struct MetricsAccess {
    host: Arc<Host>,
    token_sha256: Option<String>,
    /// Loopback peers may read without a token (no proxy forwards to the
    /// listener).
    loopback_peers: bool,
}

/// `GET /metrics`: the host's metrics, to loopback peers (no token
/// configured) or to bearers of the metrics token.
async fn serve_metrics(State(access): State<Arc<MetricsAccess>>, request: Request) -> Response {
    match &access.token_sha256 {
        Some(hash) => match bearer(request.headers()) {
            None => return unauthorized(None),
            Some(token) if !airlock_audit::token::matches_sha256(token, hash) => {
                warn_refused!("/metrics refused: unknown bearer token");
                return unauthorized(Some("invalid_token"));
            }
            Some(_) => {}
        },
        None if !access.loopback_peers => {
            warn_refused!("/metrics refused: behind a proxy, metrics need a token");
            return plain(
                StatusCode::FORBIDDEN,
                "behind a proxy (serve.behind_proxy) no peer is trusted for being loopback; set serve.metrics_token_sha256 to serve metrics to bearers of that token",
            );
        }
        None => {
            let peer = request.extensions().get::<PeerIp>().and_then(|p| p.0);
            if !peer.is_some_and(|ip| ip.is_loopback()) {
                warn_refused!(peer = ?peer, "/metrics refused: not a loopback peer");
                return plain(
                    StatusCode::FORBIDDEN,
                    "metrics are served to loopback peers only; set serve.metrics_token_sha256 to serve them to bearers of that token",
                );
            }
        }
    }
    // Reading the approvals may wait for the store: off the executor.
    let host = Arc::clone(&access.host);
    match tokio::task::spawn_blocking(move || host.metrics()).await {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the metrics");
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the metrics cannot be read now",
            )
        }
        Err(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics cannot be read",
        ),
    }
}

/// After a failed `accept`: go on at once when one connection failed;
/// wait a moment when the process is out of something (file descriptors),
/// so the loop does not spin.
pub(crate) async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %error, "cannot accept a connection; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Bind `addr`.
///
/// # Errors
/// [`Error::Bind`].
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

pub(crate) fn plain(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

async fn check_host_and_origin(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let host_ok = host.is_some_and(|h| {
        (guard.loopback && host_is_loopback(h))
            || guard.allowed_hosts.iter().any(|allowed| {
                allowed.eq_ignore_ascii_case(h) || allowed.eq_ignore_ascii_case(strip_port(h))
            })
    });
    if !host_ok {
        warn_refused!(host = ?host, "request refused: Host not allowed");
        return plain(
            StatusCode::FORBIDDEN,
            "Host header does not name this server",
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let allowed = (guard.loopback
            && parse_origin(origin).is_some_and(|(_, host)| host_is_loopback(&host)))
            || guard
                .allowed_origins
                .iter()
                .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin));
        if !allowed {
            warn_refused!(origin = %origin, "request refused: Origin not allowed");
            return plain(StatusCode::FORBIDDEN, "Origin not allowed");
        }
    }
    next.run(request).await
}

/// The bearer token of `headers`; none when it is longer than any token
/// Airlock takes ([`MAX_TOKEN_BYTES`](crate::oauth::MAX_TOKEN_BYTES)): it
/// is hashed once per configured token before it is known to be anyone's,
/// and a header may be hundreds of kilobytes.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    // The refusal's text says so.
    const _: () = assert!(crate::oauth::MAX_TOKEN_BYTES == 16384);
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && token.len() <= crate::oauth::MAX_TOKEN_BYTES)
        .then_some(token)
}

fn unauthorized(error: Option<&str>) -> Response {
    let challenge = match error {
        Some(e) => format!("Bearer realm=\"airlock\", error=\"{e}\""),
        None => "Bearer realm=\"airlock\"".to_owned(),
    };
    let mut response = plain(
        StatusCode::UNAUTHORIZED,
        if error.is_some() {
            "invalid token"
        } else {
            "authentication required: Authorization: Bearer <token> (at most 16384 bytes)"
        },
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// `401` from `/mcp`: [`unauthorized`], with the protected resource
/// metadata's URL when OAuth is on (RFC 9728 section 5.1).
fn unauthorized_caller(callers: &Callers, error: Option<&str>) -> Response {
    let mut response = unauthorized(error);
    if let Some(oauth) = &callers.oauth {
        let challenge = match error {
            Some(e) => format!(
                "Bearer resource_metadata=\"{}\", error=\"{e}\"",
                oauth.config().metadata_url()
            ),
            None => format!(
                "Bearer resource_metadata=\"{}\"",
                oauth.config().metadata_url()
            ),
        };
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

async fn authenticate_caller(
    State(callers): State<Arc<Callers>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = bearer(request.headers()) else {
        return unauthorized_caller(&callers, None);
    };
    let principal = match (callers.principal(token), &callers.oauth) {
        (Some(principal), _) => principal,
        (None, None) => {
            warn_refused!("MCP request refused: unknown bearer token");
            return unauthorized_caller(&callers, Some("invalid_token"));
        }
        (None, Some(oauth)) => match oauth.verify(token).await {
            Ok(principal) => principal,
            Err(error) if error.kind == OauthErrorKind::JwksUnavailable => {
                warn_refused!(error = %error, "MCP request refused: the issuer's keys cannot be fetched");
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the token's issuer cannot be reached to check it; try again later",
                );
            }
            Err(error) => {
                warn_refused!(error = %error, "MCP request refused: access token refused");
                return unauthorized_caller(&callers, Some("invalid_token"));
            }
        },
    };
    // A session id the SDK would not read (not visible ASCII) is refused:
    // the SDK takes it for none.
    if let Some(id) = request.headers().get("mcp-session-id")
        && !id.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "Mcp-Session-Id must be visible ASCII",
        );
    }
    // A session is its opener's: another caller naming it (to read its
    // event stream, or close it) finds none; nor does anyone name a
    // session with no opener on record (none this server opened).
    if let Some(id) = request.headers().get("mcp-session-id")
        && !id
            .to_str()
            .ok()
            .and_then(|id| {
                callers
                    .owners()
                    .by_session
                    .get(id)
                    .map(|(owner, _)| *owner == principal)
            })
            .unwrap_or(false)
    {
        warn_refused!(
            principal,
            "MCP request refused: names another caller's session"
        );
        return plain(StatusCode::NOT_FOUND, "no such MCP session for this caller");
    }
    request
        .extensions_mut()
        .insert(Principal(principal.clone()));
    if request.method() == axum::http::Method::GET {
        // An event stream: bounded per caller and in all while it is open.
        let slot = match callers.open_stream(&principal) {
            Ok(slot) => slot,
            Err(refused) => return *refused,
        };
        let (parts, body) = next.run(request).await.into_parts();
        let body = http_body_util::BodyExt::map_frame(body, move |frame| {
            slot.held();
            frame
        });
        return Response::from_parts(parts, axum::body::Body::new(body));
    }
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    // Read the body here (bounded) so that a body over the limit is a 413
    // and one that is not JSON a JSON-RPC parse error, whatever the SDK
    // would answer.
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, callers.max_request_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body over {} bytes", callers.max_request_bytes),
            );
        }
    };
    let message = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(message) => message,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "jsonrpc": "2.0",
                    "id": null,
                    "error": {"code": -32700, "message": format!("Parse error: {e}")},
                })),
            )
                .into_response();
        }
    };
    if let Some(refused) = malformed_message(&message) {
        return refused;
    }
    // `subscriptions/listen` (2026-07-28 clients) answers with an event
    // stream that lasts as long as its client reads: bounded as a `GET`
    // stream is (it was not, and one caller's listens took every
    // connection its address may hold — approvers' and the console's).
    if listens(&message) {
        let slot = match callers.open_stream(&principal) {
            Ok(slot) => slot,
            Err(refused) => return *refused,
        };
        let request = Request::from_parts(parts, axum::body::Body::from(bytes));
        let (parts, body) = next.run(request).await.into_parts();
        let body = http_body_util::BodyExt::map_frame(body, move |frame| {
            slot.held();
            frame
        });
        return Response::from_parts(parts, axum::body::Body::new(body));
    }
    // An `initialize` without a session id opens a session: bounded per
    // caller and in all.
    let opens_session = !parts.headers.contains_key("mcp-session-id")
        && message.get("method").and_then(serde_json::Value::as_str) == Some("initialize");
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    if !opens_session {
        return next.run(request).await;
    }
    let opening = match callers.open_session(&principal).await {
        Ok(opening) => opening,
        Err(refused) => return refused,
    };
    // On a task of its own, so that it records the session's owner
    // whatever its client does: the SDK puts a session in its table before
    // it answers, and a client that went away in between (its request
    // dropped here) would otherwise leave a session no one owns, outside
    // every caller's count.
    let opened = tokio::spawn(
        async move {
            let response = next.run(request).await;
            if let Some(id) = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
            {
                opening.opened(id);
            }
            response
        }
        .instrument(tracing::Span::current()),
    );
    match opened.await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "MCP initialize failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the MCP session could not be opened",
            )
        }
    }
}

/// The JSON-RPC error for a message the SDK would answer with the wrong
/// code: one that is not an object or a batch (the SDK: `415`), and a
/// `tools/call` whose params are not `{"name": string, "arguments"?:
/// object}` (the SDK: `-32601`, method not found). `None` for anything
/// else, which goes on to the SDK.
/// Whether `message` (or a message of a batch) is a `subscriptions/listen`
/// request: its answer is an event stream held open.
fn listens(message: &serde_json::Value) -> bool {
    let one = |m: &serde_json::Value| {
        m.get("method").and_then(serde_json::Value::as_str) == Some("subscriptions/listen")
    };
    match message {
        serde_json::Value::Array(batch) => batch.iter().any(one),
        other => one(other),
    }
}

fn malformed_message(message: &serde_json::Value) -> Option<Response> {
    let error = |status: StatusCode, id: &serde_json::Value, code: i64, text: &str| {
        (
            status,
            Json(json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {"code": code, "message": text},
            })),
        )
            .into_response()
    };
    let Some(object) = message.as_object() else {
        return (!message.is_array()).then(|| {
            error(
                StatusCode::BAD_REQUEST,
                &serde_json::Value::Null,
                -32600,
                "Invalid Request: a JSON-RPC message is an object",
            )
        });
    };
    let id = object.get("id")?;
    if object.get("method").and_then(serde_json::Value::as_str) != Some("tools/call") {
        return None;
    }
    let params = object.get("params").and_then(serde_json::Value::as_object);
    let named = params
        .and_then(|p| p.get("name"))
        .is_some_and(serde_json::Value::is_string);
    let arguments_fit = params
        .and_then(|p| p.get("arguments"))
        .is_none_or(|a| a.is_object() || a.is_null());
    (!(named && arguments_fit)).then(|| {
        error(
            StatusCode::OK,
            id,
            -32602,
            "Invalid params: tools/call takes {\"name\": string, \"arguments\": object}",
        )
    })
}

// ---------------------------------------------------------------- approvers

fn approvals_routes(server: &McpServer) -> Router {
    Router::new()
        .route("/approvals", get(list_approvals))
        .route("/approvals/{id}", post(decide).get(show_approval))
        .with_state(server.clone())
}

/// The approver whose token `headers` carry: `(name, token)`; else the
/// `WWW-Authenticate` error to answer with (`None`: no token at all).
fn approver(host: &Host, headers: &HeaderMap) -> Result<(String, String), Option<&'static str>> {
    let Some(token) = bearer(headers) else {
        return Err(None);
    };
    let policy = &host.config().policy.approvals;
    policy
        .approvers
        .iter()
        .find_map(|a| policy.authenticate(&a.name, token))
        .map(|a| (a.name.clone(), token.to_owned()))
        .ok_or(Some("invalid_token"))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<ApprovalState>,
    /// Every state (overrides `state`).
    #[serde(default)]
    all: bool,
}

async fn list_approvals(
    State(server): State<McpServer>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = approver(server.host(), &headers) {
        return unauthorized(error);
    }
    let state = if query.all {
        None
    } else {
        Some(query.state.unwrap_or(ApprovalState::Pending))
    };
    // Reading the ledger may wait for the store: off the executor.
    let host = Arc::clone(server.host());
    match tokio::task::spawn_blocking(move || host.approvals(state)).await {
        Ok(Ok(approvals)) => Json(json!({"approvals": approvals})).into_response(),
        Ok(Err(error)) => plain(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
        Err(error) => plain(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

async fn show_approval(
    State(server): State<McpServer>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = approver(server.host(), &headers) {
        return unauthorized(error);
    }
    let host = Arc::clone(server.host());
    let found = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || host.approval(&id)).await
    };
    match found {
        Ok(Ok(Some(approval))) => Json(json!({"approval": approval})).into_response(),
        Ok(Ok(None)) => plain(StatusCode::NOT_FOUND, &format!("no approval {id}")),
        Ok(Err(error)) => plain(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
        Err(error) => plain(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    decision: DecisionKind,
    reason: Option<String>,
    /// The approver approves although argument values cannot be shown.
    unseen: Option<Acknowledged>,
}

/// `"unseen": "acknowledged"`, the one value the field takes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Acknowledged {
    Acknowledged,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DecisionKind {
    Approve,
    Reject,
}

async fn decide(
    State(server): State<McpServer>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (name, token) = match approver(server.host(), &headers) {
        Ok(found) => found,
        Err(error) => return unauthorized(error),
    };
    let decision: Decision = match serde_json::from_slice(&body) {
        Ok(decision) => decision,
        Err(e) => {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected {{\"decision\": \"approve\" | \"reject\", \"reason\": \"...\"}} (and \"unseen\": \"acknowledged\" to approve arguments that cannot be shown whole): {e}"
                ),
            );
        }
    };
    let verdict = Verdict::from_answers(
        matches!(decision.decision, DecisionKind::Approve),
        matches!(decision.unseen, Some(Acknowledged::Acknowledged)),
    );
    match server
        .host()
        .decide(&id, &name, &token, verdict, decision.reason.as_deref())
        .await
    {
        Ok(approval) => Json(json!({"approval": approval})).into_response(),
        Err(error @ airlock_host::Error::UnseenArguments { .. }) => plain(
            StatusCode::CONFLICT,
            &format!(
                "{error} (send \"unseen\": \"acknowledged\" with the decision; `airlock approvals approve --unseen`)"
            ),
        ),
        Err(error @ airlock_host::Error::DecisionRefused { .. }) => {
            plain(StatusCode::CONFLICT, &error.to_string())
        }
        Err(error) => plain(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

// ---------------------------------------------------------------- helpers

/// `(scheme, host)` of an origin `scheme://host[:port]`.
fn parse_origin(origin: &str) -> Option<(String, String)> {
    let (scheme, rest) = origin.split_once("://")?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains('/') {
        return None;
    }
    Some((scheme.to_owned(), strip_port(rest).to_owned()))
}

/// `host` without its `:port` (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

fn host_is_loopback(host: &str) -> bool {
    let name = strip_port(host);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let literal = name.trim_start_matches('[').trim_end_matches(']');
    literal.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `host` (a `Host` value or an origin's host, with or without a
/// port) may name this machine in any spelling: what
/// [`host_is_loopback`] accepts, and also a trailing dot, `*.localhost`,
/// the unspecified addresses, IPv4-mapped loopback, and numeric forms
/// other than a dotted quad (`127.1`, `2130706433`, `0x7f.1`) that some
/// resolvers read as addresses. For refusing list entries behind a
/// proxy, where erring wide is safe.
fn may_name_this_machine(host: &str) -> bool {
    let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    let literal = name.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_unspecified())
        }
        // Digits, dots and hex digits (with an `x`) only, yet not an
        // address: a shorthand some resolvers take for one.
        Err(_) => {
            !literal.is_empty()
                && literal.starts_with(|c: char| c.is_ascii_digit())
                && literal
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == '.' || c == 'x')
        }
    }
}

/// The default listen address.
pub fn default_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7410))
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn peers_are_counted_by_address_and_ipv6_by_its_64() {
        let key = |ip: &str| PeerKey::of(ip.parse().unwrap());
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        let counts = PeerCounts::default();
        let first = counts.take(key("10.0.0.1"), 2).unwrap();
        let second = counts.take(key("10.0.0.1"), 2).unwrap();
        assert!(counts.take(key("10.0.0.1"), 2).is_none());
        let other = counts.take(key("10.0.0.2"), 2).unwrap();
        drop(first);
        let third = counts.take(key("10.0.0.1"), 2).unwrap();
        drop((second, third, other));
        // Entries go with their last connection.
        assert!(counts.0.lock().unwrap().is_empty());
    }

    #[test]
    fn the_per_peer_bound_is_checked_and_off_behind_a_proxy() {
        let mut config = HttpConfig::new(default_addr(), Vec::new());
        assert_eq!(config.per_peer_cap(), Some(DEFAULT_MAX_CONNECTIONS / 2));
        config.max_connections = 5;
        assert_eq!(config.per_peer_cap(), Some(3));
        config.max_connections = 1;
        assert_eq!(config.per_peer_cap(), Some(1));
        config.max_connections = 8;
        for bad in [0, 9] {
            config.max_connections_per_peer = Some(bad);
            let err = config.validate_listener().unwrap_err().to_string();
            assert!(err.contains("serve.max_connections_per_peer"), "{err}");
        }
        config.max_connections_per_peer = Some(8);
        config.validate_listener().unwrap();
        assert_eq!(config.per_peer_cap(), Some(8));
        config.behind_proxy = true;
        config.allowed_hosts = vec!["mcp.example.com".into()];
        let err = config.validate_listener().unwrap_err().to_string();
        assert!(err.contains("behind a proxy"), "{err}");
        config.max_connections_per_peer = None;
        config.validate_listener().unwrap();
        assert_eq!(config.per_peer_cap(), None);
    }

    #[test]
    fn loopback_hosts_and_origins() {
        for ok in [
            "localhost",
            "localhost:7410",
            "127.0.0.1:1",
            "[::1]:80",
            "127.9.9.9",
        ] {
            assert!(host_is_loopback(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7410",
            "10.0.0.1",
            "localhost.evil.example",
        ] {
            assert!(!host_is_loopback(bad), "{bad}");
        }
        assert_eq!(
            parse_origin("http://localhost:3000").unwrap().1,
            "localhost"
        );
        assert_eq!(parse_origin("https://[::1]").unwrap().1, "[::1]");
        assert!(parse_origin("null").is_none());
        assert!(parse_origin("ftp://x").is_none());
    }

    fn token(principal: &str, secret: &str) -> CallerToken {
        CallerToken {
            principal: principal.into(),
            token_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let addr = default_addr();
        let err =
            |c: HttpConfig, approvers: &[String]| c.validate(approvers).unwrap_err().to_string();
        assert!(err(HttpConfig::new(addr, vec![]), &[]).contains("at least one caller token"));
        let bad = CallerToken {
            principal: "a".into(),
            token_sha256: "abc".into(),
        };
        assert!(
            err(HttpConfig::new(addr, vec![bad]), &[]).contains("serve.tokens[0].token_sha256")
        );
        let t = token("agent", "s3cret");
        assert!(err(HttpConfig::new(addr, vec![t.clone(), t.clone()]), &[]).contains("repeats"));
        assert!(
            err(
                HttpConfig::new(addr, vec![t.clone()]),
                std::slice::from_ref(&t.token_sha256)
            )
            .contains("also an approver")
        );
        let remote = HttpConfig::new(SocketAddr::from(([0, 0, 0, 0], 7410)), vec![t.clone()]);
        assert!(err(remote.clone(), &[]).contains("serve.allow_remote"));
        // The approvers' listener needs no caller token, but the same care.
        let approvals = HttpConfig::new(SocketAddr::from(([0, 0, 0, 0], 7411)), vec![]);
        let message = approvals.validate_listener().unwrap_err().to_string();
        assert!(message.contains("--allow-remote"), "{message}");
        HttpConfig::new(addr, vec![]).validate_listener().unwrap();
        let mut remote = remote;
        remote.allow_remote = true;
        assert!(err(remote.clone(), &[]).contains("allowed_hosts"));
        remote.allowed_hosts = vec!["mcp.example.com".into()];
        remote.validate(&[]).unwrap();
        let mut limits = HttpConfig::new(addr, vec![t.clone()]);
        limits.max_connections = 0;
        assert!(err(limits.clone(), &[]).contains("serve.max_connections"));
        limits.max_connections = 1;
        limits.header_read_timeout = Duration::from_millis(10);
        assert!(err(limits.clone(), &[]).contains("serve.header_read_timeout_ms"));
        limits.header_read_timeout = Duration::from_secs(3600);
        assert!(err(limits, &[]).contains("serve.header_read_timeout_ms"));
        HttpConfig::new(addr, vec![t]).validate(&[]).unwrap();
    }

    #[test]
    fn tokens_map_to_principals_by_hash() {
        let callers = Callers {
            tokens: vec![token("agent-1", "one"), token("agent-2", "two")],
            max_request_bytes: 1024,
            oauth: None,
            sessions: Arc::default(),
            session_owners: std::sync::Mutex::default(),
            streams: std::sync::Mutex::default(),
            max_streams: 1,
        };
        assert_eq!(callers.principal("two").as_deref(), Some("agent-2"));
        assert_eq!(callers.principal("three"), None);
    }

    /// `GET /metrics` through a connection's service, as `peer` with
    /// `token`: the status and body.
    async fn scrape(
        metrics_token: Option<&str>,
        peer: Option<IpAddr>,
        token: Option<&str>,
    ) -> (StatusCode, String) {
        let mut config =
            HttpConfig::new(default_addr(), vec![token_of("agent-1", "caller-secret")]);
        config.metrics_token_sha256 =
            metrics_token.map(|t| hex::encode(Sha256::digest(t.as_bytes())));
        let mut request = hyper::Request::get(METRICS_PATH).header(header::HOST, "127.0.0.1:7410");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        send(
            &config,
            peer,
            request.body(axum::body::Body::empty()).unwrap(),
        )
        .await
    }

    /// `request` through a connection's service of a server set up by
    /// `config`, from `peer`: the status and body.
    async fn send(
        config: &HttpConfig,
        peer: Option<IpAddr>,
        request: hyper::Request<axum::body::Body>,
    ) -> (StatusCode, String) {
        use http_body_util::BodyExt as _;
        use hyper::service::Service as _;
        let host = Arc::new(Host::new(airlock_host::HostConfig::default()).unwrap());
        let server = McpServer::new(host, crate::ServeOptions::default());
        let router = router(&server, config, CancellationToken::new()).unwrap();
        let service = WithPeer {
            inner: TowerToHyperService::new(router),
            peer: PeerIp(peer),
        };
        let response = service.call(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn behind_a_proxy_nothing_passes_for_being_loopback() {
        // A reverse proxy on the same machine makes every client a
        // loopback peer, and forwards whatever Host and Origin it was
        // sent: none of them vouches for a request.
        let mut config =
            HttpConfig::new(default_addr(), vec![token_of("agent-1", "caller-secret")]);
        config.behind_proxy = true;
        let err = config.validate(&[]).unwrap_err().to_string();
        assert!(err.contains("serve.allowed_hosts"), "{err}");
        // Listing a loopback name or origin would trust it again.
        for host in [
            "127.0.0.1:7410",
            "localhost",
            "[::1]",
            "LOCALHOST.",
            "app.localhost:8080",
            "127.1",
            "2130706433",
            "0x7f.1",
            "0.0.0.0:7410",
            "[::]",
            "[::ffff:127.0.0.1]:80",
        ] {
            config.allowed_hosts = vec!["mcp.example.com".into(), host.into()];
            let err = config.validate(&[]).unwrap_err().to_string();
            assert!(err.contains(host) && err.contains("loopback"), "{err}");
        }
        // Public names and addresses are fine, digits included.
        config.allowed_hosts = vec![
            "mcp.example.com".into(),
            "203.0.113.7:443".into(),
            "3com.example".into(),
        ];
        config.validate(&[]).unwrap();
        config.allowed_hosts = vec!["mcp.example.com".into()];
        config.allowed_origins = vec!["http://localhost:3000".into()];
        let err = config.validate(&[]).unwrap_err().to_string();
        assert!(err.contains("serve.allowed_origins"), "{err}");
        config.allowed_origins = vec!["https://app.example.com".into()];
        config.validate(&[]).unwrap();
        let loopback = Some(IpAddr::from([127, 0, 0, 1]));
        let get = |path: &str, host: &str, origin: Option<&str>, token: Option<&str>| {
            let mut request = hyper::Request::get(path).header(header::HOST, host);
            if let Some(origin) = origin {
                request = request.header(header::ORIGIN, origin);
            }
            if let Some(token) = token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            request.body(axum::body::Body::empty()).unwrap()
        };
        // /metrics: a loopback peer without a token is refused, saying why.
        let (status, body) = send(
            &config,
            loopback,
            get(METRICS_PATH, "mcp.example.com", None, None),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("serve.behind_proxy"), "{body}");
        // Loopback Host names are refused; the listed one passes the guard
        // (and meets the approvals endpoint's token check).
        for host in ["127.0.0.1:7410", "localhost", "[::1]:7410"] {
            let (status, body) = send(&config, loopback, get("/approvals", host, None, None)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{host}: {body}");
            assert!(body.contains("Host"), "{host}: {body}");
        }
        let (status, _) = send(
            &config,
            loopback,
            get("/approvals", "mcp.example.com", None, None),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // Loopback origins are refused; the listed one passes.
        for origin in ["http://localhost:3000", "http://127.0.0.1"] {
            let (status, body) = send(
                &config,
                loopback,
                get("/approvals", "mcp.example.com", Some(origin), None),
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{origin}: {body}");
            assert!(body.contains("Origin"), "{origin}: {body}");
        }
        let (status, _) = send(
            &config,
            loopback,
            get(
                "/approvals",
                "mcp.example.com",
                Some("https://app.example.com"),
                None,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // With a metrics token, its bearers read the metrics.
        config.metrics_token_sha256 = Some(hex::encode(Sha256::digest(b"metrics-secret")));
        let (status, body) = send(
            &config,
            loopback,
            get(
                METRICS_PATH,
                "mcp.example.com",
                None,
                Some("metrics-secret"),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    fn token_of(principal: &str, secret: &str) -> CallerToken {
        CallerToken {
            principal: principal.into(),
            token_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        }
    }

    #[tokio::test]
    async fn metrics_answer_loopback_peers_only_without_a_token() {
        let loopback = Some(IpAddr::from([127, 0, 0, 1]));
        let (status, body) = scrape(None, loopback, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("airlock_approvals_pending"), "{body}");
        let v6 = Some("::1".parse().unwrap());
        assert_eq!(scrape(None, v6, None).await.0, StatusCode::OK);
        for other in [
            Some(IpAddr::from([10, 0, 0, 7])),
            Some(IpAddr::from([192, 168, 1, 2])),
            Some("2001:db8::1".parse().unwrap()),
            None,
        ] {
            let (status, body) = scrape(None, other, None).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{other:?}");
            assert!(body.contains("loopback"), "{body}");
            // A caller's token does not open it either.
            let (status, _) = scrape(None, other, Some("caller-secret")).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{other:?}");
        }
    }

    #[tokio::test]
    async fn metrics_with_a_token_answer_its_bearers_only_wherever_they_are() {
        let remote = Some(IpAddr::from([10, 0, 0, 7]));
        let loopback = Some(IpAddr::from([127, 0, 0, 1]));
        let token = Some("metrics-secret");
        for peer in [remote, loopback] {
            assert_eq!(scrape(token, peer, None).await.0, StatusCode::UNAUTHORIZED);
            assert_eq!(
                scrape(token, peer, Some("caller-secret")).await.0,
                StatusCode::UNAUTHORIZED
            );
            assert_eq!(
                scrape(token, peer, Some("metrics-secret ")).await.0,
                StatusCode::OK
            );
            assert_eq!(
                scrape(token, peer, Some("metrics-secreT")).await.0,
                StatusCode::UNAUTHORIZED
            );
            let (status, body) = scrape(token, peer, Some("metrics-secret")).await;
            assert_eq!(status, StatusCode::OK);
            assert!(body.ends_with("# EOF\n"), "{body}");
        }
    }

    #[test]
    fn a_metrics_token_must_be_a_digest_of_its_own() {
        let mut config = HttpConfig::new(default_addr(), vec![token_of("agent-1", "caller")]);
        config.metrics_token_sha256 = Some("abc".into());
        let error = config.validate(&[]).unwrap_err().to_string();
        assert!(error.contains("serve.metrics_token_sha256"), "{error}");
        config.metrics_token_sha256 = Some(config.tokens[0].token_sha256.to_uppercase());
        let error = config.validate(&[]).unwrap_err().to_string();
        assert!(error.contains("serve.metrics_token_sha256"), "{error}");
        assert!(error.contains("its own"), "{error}");
        let approver = hex::encode(Sha256::digest(b"approver"));
        config.metrics_token_sha256 = Some(approver.clone());
        assert!(config.validate(&[approver]).is_err());
        config.metrics_token_sha256 = Some(hex::encode(Sha256::digest(b"metrics")));
        config.validate(&[]).unwrap();
    }

    /// A server for `callers` (principal, secret) with `max_connections`,
    /// whose requests are sent straight to its service.
    fn mcp_service(callers: &[(&str, &str)], max_connections: usize) -> WithPeer {
        let host = Arc::new(Host::new(airlock_host::HostConfig::default()).unwrap());
        let server = McpServer::new(host, crate::ServeOptions::default());
        let mut config = HttpConfig::new(
            default_addr(),
            callers.iter().map(|(p, s)| token_of(p, s)).collect(),
        );
        config.max_connections = max_connections;
        WithPeer {
            inner: TowerToHyperService::new(
                router(&server, &config, CancellationToken::new()).unwrap(),
            ),
            peer: PeerIp(Some(IpAddr::from([127, 0, 0, 1]))),
        }
    }

    /// `method /mcp` as the bearer of `secret`, in `session`: the answer,
    /// its body unread.
    async fn mcp(
        service: &WithPeer,
        method: &str,
        secret: &str,
        session: Option<&str>,
        body: &str,
    ) -> hyper::Response<axum::body::Body> {
        use hyper::service::Service as _;
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(MCP_PATH)
            .header(header::HOST, "127.0.0.1:7410")
            .header(header::AUTHORIZATION, format!("Bearer {secret}"))
            .header(header::ACCEPT, "application/json, text/event-stream");
        if method == "POST" {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        let response = service
            .call(
                request
                    .body(axum::body::Body::from(body.to_owned()))
                    .unwrap(),
            )
            .await
            .unwrap();
        response.map(axum::body::Body::new)
    }

    const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    const PING: &str = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;

    /// A session opened by the bearer of `secret`: its id; `None` when
    /// refused (with the status).
    async fn open(service: &WithPeer, secret: &str) -> Result<String, StatusCode> {
        let response = mcp(service, "POST", secret, None, INITIALIZE).await;
        if response.status() != StatusCode::OK {
            return Err(response.status());
        }
        Ok(response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned())
    }

    /// The SDK answered a body that is no JSON-RPC object with `415`, and a
    /// `tools/call` with malformed params with "method not found": both
    /// now get the JSON-RPC code that says what is wrong.
    #[tokio::test]
    async fn malformed_messages_get_the_json_rpc_code_that_names_them() {
        use http_body_util::BodyExt as _;
        let service = mcp_service(&[("alice", "alice-secret")], 16);
        let session = open(&service, "alice-secret").await.unwrap();
        let answer = |body: &'static str| {
            let (service, session) = (&service, session.clone());
            async move {
                let response = mcp(service, "POST", "alice-secret", Some(&session), body).await;
                let status = response.status();
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                let text = String::from_utf8_lossy(&bytes).into_owned();
                // A JSON body, or the message event of a stream (after
                // its empty priming event).
                let json = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .find(|data| !data.is_empty())
                    .unwrap_or(&text)
                    .to_owned();
                (
                    status,
                    serde_json::from_str::<serde_json::Value>(&json).unwrap_or_default(),
                )
            }
        };
        for body in ["42", "\"tools/list\"", "null", "true"] {
            let (status, json) = answer(body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(json["error"]["code"], -32600, "{body}: {json}");
        }
        let (status, json) = answer("{not json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["error"]["code"], -32700, "{json}");
        for body in [
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":[1]}"#,
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":3}}"#,
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"text__stats","arguments":[1]}}"#,
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#,
        ] {
            let (status, json) = answer(body).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(json["error"]["code"], -32602, "{body}: {json}");
            assert_eq!(json["id"], 7, "{body}: {json}");
        }
        // Well-formed, it goes on to the SDK: an unknown tool is its answer.
        let (status, json) = answer(
            r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"no__such","arguments":{}}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json["id"], 8, "{status} {json}");
        assert_eq!(json["error"]["data"]["kind"], "unknown_tool", "{json}");
    }

    /// A handler behind `bound` that holds a request whose body starts
    /// with `hold` (and so its body) until `release` is notified, telling
    /// `entered` it got it; it answers the body's length. `send(peer,
    /// body)` posts a body, from `peer` when given.
    struct Holding {
        entered: Arc<tokio::sync::Notify>,
        release: Arc<tokio::sync::Notify>,
        service: TowerToHyperService<Router>,
    }

    impl Holding {
        fn new(bound: BodyBound) -> Holding {
            let entered = Arc::new(tokio::sync::Notify::new());
            let release = Arc::new(tokio::sync::Notify::new());
            let app = {
                let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
                Router::new().route(
                    "/",
                    post(move |body: bytes::Bytes| async move {
                        if body.starts_with(b"hold") {
                            entered.notify_one();
                            release.notified().await;
                        }
                        body.len().to_string()
                    }),
                )
            };
            let service = TowerToHyperService::new(
                app.layer(middleware::from_fn_with_state(bound, read_body_in_time)),
            );
            Holding {
                entered,
                release,
                service,
            }
        }

        fn send(
            &self,
            peer: Option<&str>,
            body: String,
        ) -> impl Future<Output = (StatusCode, String)> + Send + use<> {
            use http_body_util::BodyExt as _;
            use hyper::service::Service as _;
            let service = self.service.clone();
            let peer = peer.map(|p| PeerIp(Some(p.parse().unwrap())));
            async move {
                let mut request = hyper::Request::post("/")
                    .body(axum::body::Body::from(body))
                    .unwrap();
                if let Some(peer) = peer {
                    request.extensions_mut().insert(peer);
                }
                let response = service.call(request).await.unwrap();
                let status = response.status();
                let text = response.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&text).into_owned())
            }
        }
    }

    #[tokio::test]
    async fn request_bodies_held_at_once_are_bounded_before_any_token_is_checked() {
        let app = Holding::new(BodyBound::with_room(800, Duration::from_secs(5), 1000));
        let send = |body: String| app.send(None, body);
        let held = tokio::spawn(send(format!("hold{}", "x".repeat(596))));
        app.entered.notified().await;
        // 600 + 600 is past the room: refused at once, saying why.
        let (status, text) = send("y".repeat(600)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert!(text.contains("request bodies"), "{text}");
        // Small ones still fit; one over the size bound is a 413.
        assert_eq!(send("z".repeat(300)).await.0, StatusCode::OK);
        assert_eq!(send("z".repeat(801)).await.0, StatusCode::PAYLOAD_TOO_LARGE);
        // Answered, the first gives its room back.
        app.release.notify_one();
        assert_eq!(held.await.unwrap(), (StatusCode::OK, "600".to_owned()));
        assert_eq!(
            send("y".repeat(600)).await,
            (StatusCode::OK, "600".to_owned())
        );
    }

    /// One peer address's slow bodies cannot take the whole room: it holds
    /// half at most, and other peers are still served.
    #[tokio::test]
    async fn one_peer_holds_at_most_half_the_room_for_request_bodies() {
        let app = Holding::new(BodyBound::with_room(800, Duration::from_secs(5), 1000).per_peer());
        let send = |from: &str, body: String| app.send(Some(from), body);
        let held = tokio::spawn(send("10.0.0.1", format!("hold{}", "x".repeat(396))));
        app.entered.notified().await;
        // 400 + 200 is past the peer's half (500): refused, saying why.
        let (status, text) = send("10.0.0.1", "y".repeat(200)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert!(text.contains("this address"), "{text}");
        // Up to its half it is served, and another peer within the room.
        assert_eq!(send("10.0.0.1", "z".repeat(100)).await.0, StatusCode::OK);
        assert_eq!(send("10.0.0.2", "z".repeat(500)).await.0, StatusCode::OK);
        // An IPv6 peer is its /64: two addresses in one share a half.
        let v6 = tokio::spawn(send("2001:db8::1", format!("hold{}", "x".repeat(396))));
        app.entered.notified().await;
        let (status, _) = send("2001:db8::2", "y".repeat(200)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        // Answered, the held bodies give their share back.
        app.release.notify_one();
        app.release.notify_one();
        assert_eq!(held.await.unwrap(), (StatusCode::OK, "400".to_owned()));
        assert_eq!(v6.await.unwrap(), (StatusCode::OK, "400".to_owned()));
        assert_eq!(
            send("10.0.0.1", "y".repeat(500)).await,
            (StatusCode::OK, "500".to_owned())
        );
    }

    #[test]
    fn refusals_are_logged_at_most_so_many_a_second_and_the_rest_counted() {
        let mut log = RefusalLog {
            second: None,
            logged: 0,
            unlogged: 0,
        };
        let start = std::time::Instant::now();
        for _ in 0..REFUSALS_LOGGED_A_SECOND {
            assert_eq!(log.allow(start), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(log.allow(start + Duration::from_millis(999)), None);
        }
        // The next second logs again, first saying how many were not.
        assert_eq!(log.allow(start + Duration::from_secs(1)), Some(1000));
        assert_eq!(log.allow(start + Duration::from_secs(1)), Some(0));
    }

    #[test]
    fn a_session_recorded_while_the_table_is_pruned_keeps_its_owner() {
        // Regression: a request counting sessions took its snapshot of the
        // open ones, another's session opened and its owner was recorded,
        // then the first pruned every owner missing from its snapshot —
        // the new one among them, leaving that session uncounted.
        let mut owners = SessionOwners::default();
        owners.record("s1", "agent-1");
        owners.record("s2", "agent-1");
        let recorded_before = owners.recorded;
        let open: std::collections::HashSet<String> = ["s1".to_owned()].into();
        owners.record("s3", "agent-1");
        owners.prune(&open, recorded_before);
        let mut kept: Vec<&str> = owners.by_session.keys().map(String::as_str).collect();
        kept.sort_unstable();
        // s2 closed before the snapshot; s3 opened after it.
        assert_eq!(kept, ["s1", "s3"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sessions_answer_their_opener_only_and_are_capped_per_caller_under_a_storm() {
        let service = mcp_service(&[("agent-1", "one"), ("agent-2", "two")], 256);
        // Many `initialize`s at once: exactly the cap opens (regression:
        // an owner recorded while another request pruned the table was
        // dropped, its session then uncounted and open to anyone).
        let storm = (0..MAX_SESSIONS_PER_CALLER + 40).map(|_| {
            let service = service.clone();
            tokio::spawn(async move { open(&service, "one").await })
        });
        let mut opened = Vec::new();
        for done in storm {
            match done.await.unwrap() {
                Ok(id) => opened.push(id),
                Err(status) => assert_eq!(status, StatusCode::TOO_MANY_REQUESTS),
            }
        }
        assert_eq!(opened.len(), MAX_SESSIONS_PER_CALLER);
        assert_eq!(
            open(&service, "one").await,
            Err(StatusCode::TOO_MANY_REQUESTS)
        );
        // Each answers its opener, and no one else.
        for id in &opened {
            let theirs = mcp(&service, "POST", "one", Some(id), PING).await;
            assert_eq!(theirs.status(), StatusCode::OK, "{id}");
            let other = mcp(&service, "POST", "two", Some(id), PING).await;
            assert_eq!(other.status(), StatusCode::NOT_FOUND, "{id}");
            let other = mcp(&service, "GET", "two", Some(id), "").await;
            assert_eq!(other.status(), StatusCode::NOT_FOUND, "{id}");
        }
        // A session id no one opened finds nothing either.
        let made_up = mcp(&service, "POST", "one", Some("not-a-session"), PING).await;
        assert_eq!(made_up.status(), StatusCode::NOT_FOUND);
        // The other caller's own count is untouched.
        open(&service, "two").await.unwrap();
    }

    /// A client that goes away while its `initialize` is being answered
    /// (the SDK has put the session in its table, the answer is not back)
    /// still has the session counted as its own: it was left open, no
    /// one's, outside every caller's count (one caller could fill the
    /// server's cap with them).
    #[tokio::test]
    async fn a_session_whose_opener_went_away_before_the_answer_counts_as_theirs() {
        use hyper::service::Service as _;
        use std::task::Poll;
        let service = mcp_service(&[("agent-1", "one")], 256);
        let request = hyper::Request::builder()
            .method("POST")
            .uri(MCP_PATH)
            .header(header::HOST, "127.0.0.1:7410")
            .header(header::AUTHORIZATION, "Bearer one")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(INITIALIZE))
            .unwrap();
        {
            // One thread: the session's worker answers only when this test
            // yields, so the request polled until it waits is one whose
            // session the SDK has opened and not answered; then its client
            // goes away (the request is dropped).
            let mut call = std::pin::pin!(service.call(request));
            let pending =
                std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx).is_pending())).await;
            assert!(pending, "answered at once");
        }
        for n in 1..MAX_SESSIONS_PER_CALLER {
            assert!(open(&service, "one").await.is_ok(), "session {n}");
        }
        assert_eq!(
            open(&service, "one").await,
            Err(StatusCode::TOO_MANY_REQUESTS),
            "the abandoned session counts"
        );
    }

    #[tokio::test]
    async fn event_streams_are_capped_per_caller_and_in_all_leaving_connections_to_others() {
        // 40 connections: 20 for event streams at most.
        let service = mcp_service(&[("agent-1", "one"), ("agent-2", "two")], 40);
        let one = open(&service, "one").await.unwrap();
        let two = open(&service, "two").await.unwrap();
        let mut held = Vec::new();
        for _ in 0..MAX_STREAMS_PER_CALLER {
            let stream = mcp(&service, "GET", "one", Some(&one), "").await;
            assert_eq!(stream.status(), StatusCode::OK);
            held.push(stream);
        }
        let refused = mcp(&service, "GET", "one", Some(&one), "").await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        // The other caller gets what is left of the server's share.
        for _ in MAX_STREAMS_PER_CALLER..20 {
            let stream = mcp(&service, "GET", "two", Some(&two), "").await;
            assert_eq!(stream.status(), StatusCode::OK);
            held.push(stream);
        }
        let refused = mcp(&service, "GET", "two", Some(&two), "").await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Requests other than streams still pass.
        let ping = mcp(&service, "POST", "one", Some(&one), PING).await;
        assert_eq!(ping.status(), StatusCode::OK);
        // A stream closed (its body dropped) gives its slot back.
        drop(held.swap_remove(0));
        let stream = mcp(&service, "GET", "two", Some(&two), "").await;
        assert_eq!(stream.status(), StatusCode::OK);
    }

    /// A bearer token longer than any Airlock takes is refused before it
    /// is hashed (once per configured token, and a header may be hundreds
    /// of kilobytes); one of the longest length is still checked.
    #[tokio::test]
    async fn an_overlong_bearer_token_is_refused_unhashed() {
        let service = mcp_service(&[("agent-1", "one")], 40);
        let long: &'static str = Box::leak(
            "a".repeat(crate::oauth::MAX_TOKEN_BYTES + 1)
                .into_boxed_str(),
        );
        let refused = mcp(&service, "POST", long, None, PING).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let body = http_body_util::BodyExt::collect(refused.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("at most 16384 bytes"),
            "{body:?}"
        );
        let longest = "a".repeat(crate::oauth::MAX_TOKEN_BYTES);
        let refused = mcp(&service, "POST", &longest, None, PING).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(
            refused.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
    }

    /// A `subscriptions/listen` request (the 2026-07-28 protocol: no
    /// session) answers with an event stream held open as long as its
    /// client reads: counted as a `GET` stream is. It was not counted at
    /// all, and one caller's listens filled every connection its address
    /// may hold.
    #[tokio::test]
    async fn listen_streams_are_capped_as_event_streams_are() {
        use hyper::service::Service as _;
        let service = mcp_service(&[("agent-1", "one"), ("agent-2", "two")], 40);
        let listen = |secret: &'static str| {
            let service = &service;
            async move {
                let body = json!({
                    "jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen",
                    "params": {
                        "notifications": {"toolsListChanged": true},
                        "_meta": {
                            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                            "io.modelcontextprotocol/clientCapabilities": {},
                        },
                    },
                });
                let request = hyper::Request::builder()
                    .method("POST")
                    .uri(MCP_PATH)
                    .header(header::HOST, "127.0.0.1:7410")
                    .header(header::AUTHORIZATION, format!("Bearer {secret}"))
                    .header(header::ACCEPT, "application/json, text/event-stream")
                    .header(header::CONTENT_TYPE, "application/json")
                    .header("mcp-protocol-version", "2026-07-28")
                    .header("mcp-method", "subscriptions/listen")
                    .body(axum::body::Body::from(body.to_string()))
                    .unwrap();
                service.call(request).await.unwrap()
            }
        };
        let mut held = Vec::new();
        for _ in 0..MAX_STREAMS_PER_CALLER {
            let stream = listen("one").await;
            assert_eq!(stream.status(), StatusCode::OK);
            assert_eq!(
                stream.headers()[header::CONTENT_TYPE],
                "text/event-stream",
                "a held stream"
            );
            held.push(stream);
        }
        let refused = listen("one").await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        // A `GET` stream shares the caller's share.
        let two = open(&service, "two").await.unwrap();
        let refused = mcp(&service, "GET", "one", None, "").await;
        assert_ne!(refused.status(), StatusCode::OK);
        // The other caller still gets its streams.
        let stream = mcp(&service, "GET", "two", Some(&two), "").await;
        assert_eq!(stream.status(), StatusCode::OK);
        // A listen closed gives its slot back.
        drop(held.swap_remove(0));
        let again = listen("one").await;
        assert_eq!(again.status(), StatusCode::OK);
    }
}
