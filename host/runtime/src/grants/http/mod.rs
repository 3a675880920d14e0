//! `http`: outgoing requests through `wasi:http/outgoing-handler`, to an
//! allowlist of exact origins, at vetted addresses only.
//!
//! The manifest lists origins (`http = ["https://api.example.com"]`); the
//! operator's policy may forbid the capability, narrow the origins
//! (`http_allow`) and name the non-public addresses plugins may reach anyway
//! (`http_allow_private`). When granted, `wasi:http/types` and
//! `wasi:http/outgoing-handler` are linked with [`HttpHooks`] as the request
//! sender — the only one: `wasmtime-wasi-http` is built without its default
//! sender. Raw `wasi:sockets` are never linked.
//!
//! For every request the sender:
//! 1. counts it against the per-call limit (`connection-limit-reached`);
//! 2. refuses `CONNECT` (it opens tunnels) and, in read-only mode, every
//!    method but `GET`, `HEAD` and `OPTIONS`, a method-override header
//!    ([`METHOD_OVERRIDES`]) or query parameter ([`QUERY_METHOD_OVERRIDES`])
//!    and a body declared by `content-length` (one
//!    written without it is not sent); any other method, extension
//!    methods included, is the granted origin's to answer;
//! 3. reduces the URL to its origin and requires an exact match with the
//!    grant (`HTTP-request-denied`);
//! 4. resolves the host — at most `http_max_dns_lookups` blocking lookups
//!    in flight in the process (`DNS-timeout` past it) — and refuses the request if *any* address it
//!    resolves to is not public unicast ([`special_purpose`]) or is one of
//!    this machine's own interface addresses ([`own_address`]), and is not
//!    in the operator's `http_allow_private` (`destination-IP-prohibited`)
//!    — this is what stops DNS names pointing at loopback, private
//!    networks, this machine or the cloud metadata service. A name reaches such an address only when the
//!    operator also lists its origin in `http_private_origins`: the ranges
//!    alone would let any plugin point a domain of its own at them;
//! 5. connects to the vetted address itself (never resolving the name a
//!    second time, so the answer cannot change in between), does TLS with
//!    the origin's name for `https`, and speaks HTTP/1.1;
//! 6. caps the request body (`http_max_request_kb`: a larger
//!    `content-length` is refused, a streamed body cut off) and the
//!    response body, and bounds every wait by the call's deadline.
//!
//! Every refusal is returned to the guest as a `wasi:http` error code *and*
//! logged on the host (`tracing` target `airlock::http`, and the call's log).

mod address;
mod origin;
mod sender;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::uri::Scheme as UriScheme;
use serde::Serialize;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

pub use address::IpRange;
use address::{own_address, special_purpose};
pub use origin::{HttpScheme, Origin, OriginHost};
pub(crate) use sender::TlsClient;

use super::{CallSetup, EffectiveGrant, Factor, Policy, Resolve};
use crate::error::{LoadError as Error, LoadResult as Result};
use crate::limits::HttpLimits;
use crate::manifest::Capabilities;
use crate::state::CallState;

/// What a plugin may reach over HTTP: manifest origins ∩ policy, with the
/// operator's exceptions and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpGrant {
    /// Exact origins requests may go to.
    pub origins: Vec<Origin>,
    /// Non-public address ranges the operator lets requests connect to.
    pub allow_private: Vec<IpRange>,
    /// This plugin's origins whose names may resolve into `allow_private`
    /// (the operator's `http_private_origins`); an address origin needs
    /// none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub private_origins: Vec<Origin>,
    /// Requests per call, body size, timeouts.
    pub limits: HttpLimits,
    /// Certificate authorities trusted besides Mozilla's roots (the
    /// operator's `http_ca_certs`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ca_certs: Vec<std::path::PathBuf>,
    /// The TLS client those roots make.
    #[serde(skip)]
    pub(crate) tls: TlsClient,
    /// The bound on blocking DNS lookups in flight.
    #[serde(skip)]
    pub(crate) dns: sender::DnsLookups,
}

/// The manifest key.
const KEY: &str = "capabilities.http";

/// Intersect the manifest's origins with the policy.
///
/// # Errors
/// [`Error::CapabilityDenied`] naming the first origin outside the
/// operator's `http_allow` list.
pub(super) fn resolve(
    plugin: &str,
    declared: &[Origin],
    policy: &Policy,
) -> Result<Option<HttpGrant>> {
    if declared.is_empty() {
        return Ok(None);
    }
    if let Some(allowed) = &policy.http_allow
        && let Some(origin) = declared.iter().find(|o| !allowed.contains(o))
    {
        return Err(Error::CapabilityDenied {
            plugin: plugin.to_owned(),
            capability: KEY.to_owned(),
            reason: format!("origin `{origin}` is not in the operator's http_allow list"),
        });
    }
    Ok(Some(HttpGrant {
        origins: declared.to_vec(),
        allow_private: policy.http_allow_private.clone(),
        private_origins: declared
            .iter()
            .filter(|o| policy.http_private_origins.contains(o))
            .cloned()
            .collect(),
        limits: HttpLimits::resolve(
            policy.http_max_requests,
            policy.http_max_response_kb,
            policy.http_max_request_kb,
            policy.http_connect_timeout_ms,
            policy.http_first_byte_timeout_ms,
        ),
        ca_certs: policy.http_ca_certs.clone(),
        tls: TlsClient::new(&policy.http_ca_certs)?,
        dns: sender::DnsLookups::shared(
            policy
                .http_max_dns_lookups
                .unwrap_or(crate::limits::DEFAULT_HTTP_MAX_DNS_LOOKUPS),
            plugin,
        ),
    }))
}

/// The `http` capability.
pub(super) struct Http;

impl Factor for Http {
    fn manifest_key(&self) -> &'static str {
        KEY
    }

    fn grant_example(&self) -> &'static str {
        "capabilities.http = [\"https://api.example.com\"]"
    }

    fn gated(&self) -> &'static [&'static str] {
        &["wasi:http/outgoing-handler", "wasi:http/types"]
    }

    fn shaped(&self) -> &'static [&'static str] {
        &[]
    }

    fn declared(&self, caps: &Capabilities) -> bool {
        !caps.http.is_empty()
    }

    /// Its limits must be at least 1 and its CA files must load.
    fn check_policy(&self, policy: &Policy) -> Result<()> {
        super::at_least_one(&[
            ("http_max_requests", policy.http_max_requests),
            ("http_max_response_kb", policy.http_max_response_kb),
            ("http_max_request_kb", policy.http_max_request_kb),
            ("http_connect_timeout_ms", policy.http_connect_timeout_ms),
            (
                "http_first_byte_timeout_ms",
                policy.http_first_byte_timeout_ms,
            ),
            ("http_max_dns_lookups", policy.http_max_dns_lookups),
        ])?;
        TlsClient::new(&policy.http_ca_certs)?;
        Ok(())
    }

    fn resolve(&self, cx: &Resolve<'_>, grant: &mut EffectiveGrant) -> Result<()> {
        grant.http = resolve(cx.plugin, &cx.caps.http, cx.policy)?;
        Ok(())
    }

    fn granted(&self, grant: &EffectiveGrant) -> bool {
        grant.http.is_some()
    }

    fn write_capable(&self, grant: &EffectiveGrant) -> Option<&'static str> {
        grant.http.is_some().then_some("http")
    }

    /// Link `wasi:http/types` and `wasi:http/outgoing-handler` when granted.
    fn link(&self, linker: &mut Linker<CallState>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
        if grant.http.is_some() {
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
        }
        Ok(())
    }

    /// The call's sender holds the grant, the deadline and read-only mode.
    fn configure(&self, call: &mut CallSetup<'_>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
        // The hooks were made for this call (deadline, mode, and the host
        // notes every capability writes to): only the grant is added.
        call.http_hooks.grant = grant.http.as_ref().map(|g| Arc::new(g.clone()));
        Ok(())
    }
}

/// One call's `wasi:http` sender: the grant, the call's deadline, how many
/// requests were sent, and what was refused.
pub(crate) struct HttpHooks {
    grant: Option<Arc<HttpGrant>>,
    /// The host is in read-only mode: only safe methods are sent.
    read_only: bool,
    deadline: Instant,
    sent: u64,
    notes: Notes,
}

impl std::fmt::Debug for HttpHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpHooks")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl HttpHooks {
    /// Hooks for one call that must finish by `deadline`.
    pub(crate) fn new(grant: Option<&HttpGrant>, deadline: Instant, read_only: bool) -> HttpHooks {
        HttpHooks {
            grant: grant.map(|g| Arc::new(g.clone())),
            read_only,
            deadline,
            sent: 0,
            notes: Arc::default(),
        }
    }

    /// The call's host notes: what the sender refused or hit on the
    /// guest's behalf (recorded apart from the guest's log). A handle, to
    /// be read once the store — and with it every HTTP task of the call —
    /// is gone ([`take_notes`]).
    pub(crate) fn notes(&self) -> Notes {
        Arc::clone(&self.notes)
    }
}

/// A call's host notes, shared with its HTTP tasks.
pub(crate) type Notes = Arc<Mutex<Vec<String>>>;

/// Take the notes written so far.
pub(crate) fn take_notes(notes: &Notes) -> Vec<String> {
    match notes.lock() {
        Ok(mut notes) => std::mem::take(&mut *notes),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    }
}

/// Notes kept (and logged to the operator) per call: a guest looping on
/// refused requests gets this many, then one line saying the rest were
/// dropped, so neither the host's memory nor its log grows with it.
const MAX_NOTES: usize = 32;

/// Bytes of a request's target quoted in a note (its path is the guest's).
const MAX_TARGET_BYTES: usize = 256;

/// Bytes of a note's message (an error's text may quote the peer).
const MAX_MESSAGE_BYTES: usize = 256;

/// A refusal or failure worth telling the operator about: logged now, and
/// kept for the call's host notes, up to [`MAX_NOTES`] a call.
fn note(notes: &Mutex<Vec<String>>, target: &str, message: String) {
    let target = airlock_audit::text::bounded(target, MAX_TARGET_BYTES);
    let message = airlock_audit::text::bounded(&message, MAX_MESSAGE_BYTES);
    if host_note(notes, format!("http {target}: {message}")) {
        tracing::warn!(target: "airlock::http", request = %target, "{message}");
    }
}

/// Keep `text` among the call's host notes, up to [`MAX_NOTES`] a call
/// (then one line saying the rest were dropped); whether it was kept (to
/// be logged: neither the host's memory nor its log grows with a guest
/// looping on refusals). Every capability that refuses something on a
/// guest's behalf notes it here.
pub(crate) fn host_note(notes: &Mutex<Vec<String>>, text: String) -> bool {
    let mut notes = match notes.lock() {
        Ok(notes) => notes,
        Err(poisoned) => poisoned.into_inner(),
    };
    match notes.len().cmp(&MAX_NOTES) {
        std::cmp::Ordering::Less => {}
        std::cmp::Ordering::Equal => {
            tracing::warn!(
                target: "airlock::host_notes",
                "more than {MAX_NOTES} host notes in one call; the rest are dropped"
            );
            notes.push(format!(
                "host: more than {MAX_NOTES} notes in this call; the rest are dropped"
            ));
            return false;
        }
        std::cmp::Ordering::Greater => return false,
    }
    notes.push(text);
    true
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

fn refused(error: wasmtime_wasi_http::Error) -> SendFuture {
    Box::new(async move { Err(error) })
}

/// Largest write to an outgoing request body the host buffers, and the
/// most such writes it holds per body (wasmtime-wasi-http's defaults: one
/// of 1 MiB). A body's buffer lives in host memory, outside the guest's
/// `memory_mb`, until its request is sent: a guest that fills bodies and
/// never sends them held 1 MiB each, up to the resource table's bound per
/// call. Larger bodies still go out, in more writes.
pub(crate) const OUTGOING_BODY_CHUNK_BYTES: usize = 64 * 1024;
const OUTGOING_BODY_BUFFER_CHUNKS: usize = 1;
/// Most a header map the guest builds (`fields`) may hold, in
/// wasmtime-wasi-http's measure of its in-memory size (somewhat above the
/// bytes on the wire). Its default, 128 KiB, let a guest hold 32 MiB of
/// host memory per call in header maps it never sent, outside its
/// `memory_mb`; 32 KiB leaves room for large cookies and tokens.
pub(crate) const FIELDS_BYTES: usize = 32 * 1024;
// What one call's unsent bodies and header maps can hold at most: its
// whole resource table in whichever of the two is larger. (A copy of a
// received response's headers is not held to `FIELDS_BYTES`: it keeps
// the response head, at most `HTTP_MAX_BUFFER_BYTES`, in wasmtime's
// measure a little more.)
const _: () = assert!(
    crate::limits::MAX_RESOURCES * OUTGOING_BODY_CHUNK_BYTES * OUTGOING_BODY_BUFFER_CHUNKS
        <= 16 * 1024 * 1024
);
const _: () = assert!(crate::limits::MAX_RESOURCES * FIELDS_BYTES <= 16 * 1024 * 1024);

impl WasiHttpHooks for HttpHooks {
    fn is_supported_scheme(&mut self, scheme: &UriScheme) -> bool {
        *scheme == UriScheme::HTTP || *scheme == UriScheme::HTTPS
    }

    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        OUTGOING_BODY_BUFFER_CHUNKS
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        OUTGOING_BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        use wasmtime_wasi_http::Error as E;

        let target = format!(
            "{} {}",
            request.method(),
            sender::redacted_uri(request.uri())
        );
        let Some(grant) = self.grant.clone() else {
            note(
                &self.notes,
                &target,
                "refused: http is not granted".to_owned(),
            );
            return refused(E::HttpRequestDenied);
        };
        self.sent += 1;
        if self.sent > grant.limits.max_requests.value {
            note(
                &self.notes,
                &target,
                format!(
                    "refused: more than {} requests in one call",
                    grant.limits.max_requests.value
                ),
            );
            return refused(E::ConnectionLimitReached);
        }
        if request.method() == http::Method::CONNECT {
            note(
                &self.notes,
                &target,
                "refused: CONNECT (tunnels) is not allowed".to_owned(),
            );
            return refused(E::HttpRequestMethodInvalid);
        }
        if self.read_only
            && ![http::Method::GET, http::Method::HEAD, http::Method::OPTIONS]
                .contains(request.method())
        {
            note(
                &self.notes,
                &target,
                format!(
                    "refused: {} while the host is in read-only mode (only GET, HEAD and OPTIONS are sent)",
                    request.method()
                ),
            );
            return refused(E::HttpRequestMethodInvalid);
        }
        if self.read_only {
            // A GET can still ask for a write: by a header many servers
            // and gateways honour, or by a body a server acts on.
            if let Some(header) = header_method_override(request.headers()) {
                note(
                    &self.notes,
                    &target,
                    format!(
                        "refused: header {header} (it asks the server for another method) while the host is in read-only mode"
                    ),
                );
                return refused(E::HttpRequestDenied);
            }
            if let Some(name) = query_method_override(request.uri()) {
                note(
                    &self.notes,
                    &target,
                    format!(
                        "refused: query parameter {name} (it asks the server for another method) while the host is in read-only mode"
                    ),
                );
                return refused(E::HttpRequestDenied);
            }
            if let Some(length) = request.headers().get(http::header::CONTENT_LENGTH)
                && length.as_bytes() != b"0"
            {
                note(
                    &self.notes,
                    &target,
                    format!(
                        "refused: a request body (content-length {}) while the host is in read-only mode",
                        String::from_utf8_lossy(length.as_bytes())
                    ),
                );
                return refused(E::HttpRequestDenied);
            }
            // Nor one written without a length: the request goes without
            // it, and the guest's writes to it fail.
            *request.body_mut() = empty_body();
        }
        let origin = match sender::request_origin(request.uri()) {
            Ok(origin) => origin,
            Err(reason) => {
                note(&self.notes, &target, format!("refused: {reason}"));
                return refused(E::HttpRequestUriInvalid);
            }
        };
        if !grant.origins.contains(&origin) {
            note(
                &self.notes,
                &target,
                format!("refused: origin {origin} is not granted (capabilities.http)"),
            );
            return refused(E::HttpRequestDenied);
        }
        let limit = grant.limits.max_request_bytes();
        for length in request.headers().get_all(http::header::CONTENT_LENGTH) {
            // (wasi-http takes only digits and one such header; refused
            // here too, not skipped, should that ever change.)
            let declared = std::str::from_utf8(length.as_bytes())
                .ok()
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse::<u64>().ok());
            let why = match declared {
                Some(declared) if declared <= limit => continue,
                Some(declared) => format!(
                    "refused: a request body of {declared} bytes (content-length), over the limit of {limit} bytes (http_max_request_kb)"
                ),
                None => "refused: a content-length that is not a number of bytes".to_owned(),
            };
            note(&self.notes, &target, why);
            return refused(E::HttpRequestBodySize(Some(limit)));
        }
        let body = std::mem::replace(request.body_mut(), empty_body());
        *request.body_mut() = capped_request_body(body, limit, Arc::clone(&self.notes), &target);
        let plan = sender::Plan::new(
            origin,
            grant,
            options,
            self.deadline,
            Arc::clone(&self.notes),
            target,
        );
        // Keep the call's span (plugin, tool) on the task that sends.
        let span = tracing::Span::current();
        Box::new(tracing::Instrument::instrument(
            sender::send(plan, request),
            span,
        ))
    }
}

/// Headers asking a server to take a request for another method
/// (`X-HTTP-Method-Override: DELETE` on a GET): refused in read-only mode.
/// (`X-Original-Method` is what some proxies pass on for the method they
/// were asked for; a server behind one may take it at its word.)
const METHOD_OVERRIDES: [&str; 4] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
];

/// The first header of `headers` in [`METHOD_OVERRIDES`], by that name
/// (the guest's spelling is not echoed). The `http` crate lowercases
/// names; `_` counts as `-`, as CGI, Rack and PHP-FPM see them
/// (`X_HTTP_METHOD_OVERRIDE` reaches an application as
/// `HTTP_X_HTTP_METHOD_OVERRIDE`, like the dashed name).
fn header_method_override(headers: &http::HeaderMap) -> Option<&'static str> {
    headers.keys().find_map(|name| {
        let name = name.as_str().replace('_', "-");
        METHOD_OVERRIDES.iter().find(|o| **o == name).copied()
    })
}

/// Query parameters asking a server to take a request for another method
/// (`?_method=DELETE`). The frameworks known to read one (Rails, Laravel,
/// Symfony, Express's method-override) honour it on POST only, which
/// read-only mode refuses anyway: this is defence in depth against an
/// application that reads it on a GET, refused on any method.
const QUERY_METHOD_OVERRIDES: [&str; 3] = ["_method", "x-http-method-override", "x-method-override"];

/// The first parameter of `uri`'s query that asks for another method (by
/// its name in [`QUERY_METHOD_OVERRIDES`]: the guest's spelling is not
/// echoed). Names are read as servers read them: split at `&` and `;`,
/// percent-decoded, `+` a space; compared without case or surrounding
/// spaces, with PHP's renaming (`.`, a space and an unclosed `[` become
/// `_`) and an array suffix (`_method[]`, `_method[0]`) cut.
fn query_method_override(uri: &http::Uri) -> Option<&'static str> {
    let query = uri.query()?;
    query.split([';', '&']).find_map(|pair| {
        let (name, _) = form_urlencoded::parse(pair.as_bytes()).next()?;
        let name = name.trim();
        let name = match name.find('[') {
            Some(open) if name[open..].contains(']') => &name[..open],
            _ => name,
        };
        let name: String = name
            .chars()
            .map(|c| if matches!(c, '.' | ' ' | '[') { '_' } else { c })
            .collect();
        QUERY_METHOD_OVERRIDES
            .iter()
            .find(|o| name.eq_ignore_ascii_case(o))
            .copied()
    })
}

/// `body`, failing with `HTTP-request-body-size` (and a note) at the
/// chunk that would take it past `limit` bytes, which is not sent: hyper
/// then abandons the request.
fn capped_request_body(body: WasiBody, limit: u64, notes: Notes, target: &str) -> WasiBody {
    use http_body_util::BodyExt;
    use wasmtime_wasi_http::Error as E;
    let target = target.to_owned();
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    http_body_util::Limited::new(body, cap)
        .map_err(move |error| match error.downcast::<E>() {
            // The guest's own body error, passed on.
            Ok(error) => *error,
            Err(_) => {
                note(
                    &notes,
                    &target,
                    format!(
                        "stopped: the request body is larger than the limit of {limit} bytes (http_max_request_kb)"
                    ),
                );
                E::HttpRequestBodySize(Some(limit))
            }
        })
        .boxed_unsync()
}

/// A request body with nothing in it.
fn empty_body() -> WasiBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::<bytes::Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(list: &[&str]) -> Vec<Origin> {
        list.iter().map(|o| Origin::parse(o).unwrap()).collect()
    }

    #[test]
    fn a_method_override_header_is_found_with_underscores_too() {
        let found = |name: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("accept", http::HeaderValue::from_static("*/*"));
            headers.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_static("DELETE"),
            );
            header_method_override(&headers)
        };
        assert_eq!(found("X-HTTP-Method-Override"), Some("x-http-method-override"));
        assert_eq!(found("X_HTTP_METHOD_OVERRIDE"), Some("x-http-method-override"));
        assert_eq!(found("x-original_method"), Some("x-original-method"));
        assert_eq!(found("x-http-method-overrides"), None);
        assert_eq!(found("x-method"), None);
    }

    #[test]
    fn a_method_override_in_the_query_is_found_however_spelled() {
        let found = |uri: &str| query_method_override(&uri.parse::<http::Uri>().unwrap());
        assert_eq!(found("http://a.example/x?_method=DELETE"), Some("_method"));
        assert_eq!(found("http://a.example/x?q=1&_METHOD=put"), Some("_method"));
        // Percent-encoded as a server decodes it: `%5F` is `_`, `+` a space.
        assert_eq!(found("http://a.example/x?%5Fmethod=DELETE"), Some("_method"));
        assert_eq!(found("http://a.example/x?_method+=DELETE"), Some("_method"));
        assert_eq!(
            found("http://a.example/x?X-HTTP-Method-Override=PATCH"),
            Some("x-http-method-override")
        );
        // Split at `;` too; array suffixes and PHP's renaming.
        assert_eq!(found("http://a.example/x?a=1;_method=DELETE"), Some("_method"));
        assert_eq!(found("http://a.example/x?_method[]=DELETE"), Some("_method"));
        assert_eq!(found("http://a.example/x?_method%5B0%5D=DELETE"), Some("_method"));
        assert_eq!(found("http://a.example/x?.method=DELETE"), Some("_method"));
        assert_eq!(found("http://a.example/x?[method=DELETE"), Some("_method"));
        assert_eq!(found("http://a.example/x?q=_method"), None);
        assert_eq!(found("http://a.example/x?method=DELETE"), None);
        assert_eq!(found("http://a.example/_method"), None);
        assert_eq!(found("http://a.example/x"), None);
    }

    #[test]
    fn policy_allow_list_narrows_the_manifest() {
        let declared = origins(&["https://api.example.com", "http://127.0.0.1:8080"]);
        let grant = resolve("p", &declared, &Policy::default())
            .unwrap()
            .unwrap();
        assert_eq!(grant.origins, declared);
        assert_eq!(grant.limits.max_requests.value, 16);

        let policy = Policy {
            http_allow: Some(origins(&["https://api.example.com:443"])),
            ..Policy::default()
        };
        let err = resolve("p", &declared, &policy).unwrap_err();
        let Error::CapabilityDenied {
            capability, reason, ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(capability, "capabilities.http");
        assert!(reason.contains("`http://127.0.0.1:8080`"), "{reason}");
        assert!(reason.contains("http_allow"), "{reason}");
        resolve("p", &declared[..1], &policy).unwrap().unwrap();
        assert_eq!(resolve("p", &[], &policy).unwrap(), None);
    }
}
