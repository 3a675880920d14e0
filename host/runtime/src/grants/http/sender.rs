//! The request sender: resolve, vet every address, connect to a vetted
//! address, TLS, HTTP/1.1, and a capped, deadline-bounded response body.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as E, RequestOptions, WasiBody};

use super::{HttpGrant, HttpScheme, Origin, OriginHost, note, own_address, special_purpose};
use crate::limits::{HTTP_MAX_ADDRESSES, HTTP_MAX_BUFFER_BYTES};

/// The request URI for logs: no userinfo, no query (it may carry keys).
pub(super) fn redacted_uri(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("?");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let query = if uri.query().is_some() { "?…" } else { "" };
    format!("{scheme}://{authority}{}{query}", uri.path())
}

/// A hyper error as the guest's error code: the request body's own cap
/// (`super::capped_request_body`), which hyper wraps as a body error,
/// is passed on as itself, not as a protocol error.
fn from_hyper(error: hyper::Error) -> E {
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        if let Some(E::HttpRequestBodySize(size)) = inner.downcast_ref::<E>() {
            return E::HttpRequestBodySize(*size);
        }
        cause = inner.source();
    }
    E::from(error)
}

/// The origin a request goes to, by the same rules as the manifest's.
pub(super) fn request_origin(uri: &Uri) -> Result<Origin, String> {
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| "the request has no scheme".to_owned())?;
    let authority = uri
        .authority()
        .map(|a| a.as_str())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| "the request has no authority (host)".to_owned())?;
    if authority.contains('@') {
        // Said without quoting it: the userinfo is a credential, and this
        // message becomes a host note in the audit record.
        return Err(
            "the request's authority has userinfo (`…@`); credentials do not belong in a URL"
                .to_owned(),
        );
    }
    Origin::parse(&format!("{scheme}://{authority}"))
}

/// Everything one request needs, fixed when the guest sends it.
pub(super) struct Plan {
    origin: Origin,
    grant: Arc<HttpGrant>,
    connect_by: Instant,
    first_byte: Duration,
    between_bytes: Duration,
    deadline: Instant,
    notes: Arc<Mutex<Vec<String>>>,
    target: String,
}

/// `now + d`, but never past `cap` (and no overflow for absurd durations).
fn bounded(now: Instant, d: Duration, cap: Instant) -> Instant {
    now.checked_add(d).map_or(cap, |t| t.min(cap))
}

/// The shorter of the host's limit and the guest's own request option.
fn shorter(host: Duration, guest: Option<Duration>) -> Duration {
    guest.map_or(host, |g| g.min(host))
}

impl Plan {
    pub(super) fn new(
        origin: Origin,
        grant: Arc<HttpGrant>,
        options: Option<RequestOptions>,
        deadline: Instant,
        notes: Arc<Mutex<Vec<String>>>,
        target: String,
    ) -> Plan {
        let options = options.unwrap_or_default();
        let limits = grant.limits;
        let connect = shorter(limits.connect_timeout(), options.connect_timeout);
        Plan {
            connect_by: bounded(Instant::now(), connect, deadline),
            first_byte: shorter(limits.first_byte_timeout(), options.first_byte_timeout),
            between_bytes: shorter(limits.first_byte_timeout(), options.between_bytes_timeout),
            origin,
            grant,
            deadline,
            notes,
            target,
        }
    }

    fn note(&self, message: String) {
        note(&self.notes, &self.target, message);
    }
}

/// Any stream hyper can speak HTTP over.
trait Connection: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for T {}

type IoFuture = Box<dyn Future<Output = Result<(), E>> + Send>;

/// Send `request` according to `plan`.
///
/// # Errors
/// The `wasi:http` error the guest sees: `destination-IP-prohibited` for an
/// address that is not public and not allowed by the operator, DNS and
/// connection errors, TLS errors, timeouts, `HTTP-response-body-size` when
/// the body goes past the limit (reported while the guest reads it).
pub(super) async fn send(
    plan: Plan,
    mut request: http::Request<WasiBody>,
) -> Result<(http::Response<WasiBody>, IoFuture), E> {
    let connect_by = tokio::time::Instant::from_std(plan.connect_by);
    let addresses = resolve(&plan, connect_by).await?;
    let addresses = vet(&plan, addresses)?;
    // A timeout says which wait ran out, and which limit bounded it: the
    // guest's error code alone does not tell the operator what to change.
    let timed_out = |what: &str, error: E| {
        plan.note(format!(
            "{what} took longer than allowed (http_connect_timeout_ms, or the call's deadline)"
        ));
        error
    };
    let stream = match tokio::time::timeout_at(connect_by, connect(&addresses)).await {
        Ok(stream) => stream?,
        Err(_) => return Err(timed_out("connecting", E::ConnectionTimeout)),
    };
    let stream: Box<dyn Connection> = match plan.origin.scheme {
        HttpScheme::Http => Box::new(stream),
        HttpScheme::Https => {
            match tokio::time::timeout_at(connect_by, tls(&plan.grant.tls, &plan.origin, stream))
                .await
            {
                Ok(stream) => Box::new(stream?),
                Err(_) => return Err(timed_out("the TLS handshake", E::ConnectionTimeout)),
            }
        }
    };
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(HTTP_MAX_BUFFER_BYTES)
        .handshake(TokioIo::new(stream))
        .await?;

    // The request line carries only the path and query; the host is in the
    // `Host` header wasi:http already set from the authority.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| E::HttpRequestUriInvalid)?;

    let first_byte_by =
        tokio::time::Instant::from_std(bounded(Instant::now(), plan.first_byte, plan.deadline));
    let mut connection = Box::pin(connection);
    let mut connection_done = false;
    // Wait for the response head while driving the connection.
    let head = tokio::time::timeout_at(first_byte_by, async {
        let response = sender.send_request(request);
        tokio::pin!(response);
        loop {
            tokio::select! {
                head = &mut response => break head.map_err(from_hyper),
                ended = &mut connection, if !connection_done => {
                    connection_done = true;
                    if let Err(e) = ended {
                        break Err(from_hyper(e));
                    }
                }
            }
        }
    })
    .await;
    let head = match head {
        Ok(head) => head?,
        Err(_) => {
            // The wait covers sending the request (its body included: a
            // guest that never finishes one ends here) and the head.
            plan.note(
                "no response head in time: the request (its body included) was not sent, or the server did not answer, within http_first_byte_timeout_ms or the call's deadline"
                    .to_owned(),
            );
            return Err(E::ConnectionReadTimeout);
        }
    };
    drop(sender);

    let (parts, incoming) = head.into_parts();
    let body = CappedBody::new(incoming, &plan);
    let response = http::Response::from_parts(parts, body.boxed_unsync());
    let io: IoFuture = Box::new(async move {
        if connection_done {
            return Ok(());
        }
        connection.await.map_err(|e| {
            if e.is_timeout() {
                E::HttpResponseTimeout
            } else {
                E::from(e)
            }
        })
    });
    Ok((response, io))
}

/// A blocking name lookup: every address `host` resolves to at `port`.
pub(crate) type Resolver = Arc<dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync>;

/// The blocking DNS lookups requests may have in flight at once (policy
/// `http_max_dns_lookups`), shared by every grant of the process with the
/// same bound.
///
/// # Security
/// A name lookup runs on a blocking thread that cannot be cancelled: when a
/// request's connect timeout passes, its lookup goes on. Each lookup holds
/// a slot until it really ends, so a flood of names that answer slowly can
/// hold at most `bound` threads of the runtime's blocking pool (which the
/// audit log's flushes and the workspace store also use); requests past it
/// wait for a slot within their connect timeout, then get `DNS-timeout`.
/// One plugin holds at most half of them (`own`, shared by every grant of
/// the plugin's name: its versions loaded side by side for a canary, and
/// the grant a reload replaced whose lookups still run): a plugin whose
/// granted name is served by a nameserver that never answers cannot take
/// every slot from the others.
#[derive(Clone)]
pub(crate) struct DnsLookups {
    slots: Arc<tokio::sync::Semaphore>,
    bound: usize,
    /// The plugin's share of `slots`.
    own: Arc<tokio::sync::Semaphore>,
    own_bound: usize,
    resolver: Resolver,
}

/// A plugin's share of `bound` lookups: half, and at least one.
fn share_of(bound: usize) -> usize {
    (bound / 2).max(1)
}

impl std::fmt::Debug for DnsLookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsLookups")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

/// Two grants are equal when they allow as many lookups.
impl PartialEq for DnsLookups {
    fn eq(&self, other: &DnsLookups) -> bool {
        self.bound == other.bound
    }
}

impl Eq for DnsLookups {}

impl DnsLookups {
    /// The process's lookups bounded by `bound` (at least one), with the
    /// system resolver, for a grant of `plugin`.
    pub(crate) fn shared(bound: u64, plugin: &str) -> DnsLookups {
        type Slots = Arc<tokio::sync::Semaphore>;
        static SHARED: Mutex<BTreeMap<usize, Slots>> = Mutex::new(BTreeMap::new());
        // One entry per plugin name and bound the process ever granted.
        static OWN: Mutex<BTreeMap<(usize, String), Slots>> = Mutex::new(BTreeMap::new());
        let bound = usize::try_from(bound)
            .unwrap_or(usize::MAX)
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let slots = Arc::clone(
            SHARED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(bound)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(bound))),
        );
        let own = Arc::clone(
            OWN.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry((bound, plugin.to_owned()))
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(share_of(bound)))),
        );
        DnsLookups {
            slots,
            bound,
            own,
            own_bound: share_of(bound),
            resolver: Arc::new(|host, port| {
                use std::net::ToSocketAddrs as _;
                (host, port).to_socket_addrs().map(Iterator::collect)
            }),
        }
    }

    /// Lookups of their own, bounded by `bound`, done by `resolver`.
    #[cfg(test)]
    pub(crate) fn with_resolver(bound: usize, resolver: Resolver) -> DnsLookups {
        DnsLookups {
            slots: Arc::new(tokio::sync::Semaphore::new(bound)),
            bound,
            own: Arc::new(tokio::sync::Semaphore::new(share_of(bound))),
            own_bound: share_of(bound),
            resolver,
        }
    }

    /// Another plugin's grant on the same process-wide slots.
    #[cfg(test)]
    pub(crate) fn sibling(&self, resolver: Resolver) -> DnsLookups {
        DnsLookups {
            own: Arc::new(tokio::sync::Semaphore::new(self.own_bound)),
            resolver,
            ..self.clone()
        }
    }
}

/// Every address the origin's host resolves to, by `connect_by`.
async fn resolve(plan: &Plan, connect_by: tokio::time::Instant) -> Result<Vec<SocketAddr>, E> {
    let host = match &plan.origin.host {
        OriginHost::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, plan.origin.port)]),
        OriginHost::Name(name) => name.clone(),
    };
    let dns = &plan.grant.dns;
    let own = tokio::time::timeout_at(connect_by, Arc::clone(&dns.own).acquire_owned()).await;
    let Ok(Ok(own)) = own else {
        plan.note(format!(
            "refused: {} of this plugin's DNS lookups are in flight, its share of the host's limit (half of http_max_dns_lookups)",
            dns.own_bound
        ));
        return Err(E::DnsTimeout);
    };
    let slot = tokio::time::timeout_at(connect_by, Arc::clone(&dns.slots).acquire_owned()).await;
    let Ok(Ok(slot)) = slot else {
        plan.note(format!(
            "refused: {} DNS lookups are in flight, the host's limit (http_max_dns_lookups)",
            dns.bound
        ));
        return Err(E::DnsTimeout);
    };
    let resolver = Arc::clone(&dns.resolver);
    let port = plan.origin.port;
    // The slot goes with the lookup, not with this request: it is freed
    // when the lookup ends, even after the request gave up on it.
    let lookup = tokio::task::spawn_blocking(move || {
        let _slots = (own, slot);
        resolver(&host, port)
    });
    let found = match tokio::time::timeout_at(connect_by, lookup).await {
        Err(_) => return Err(E::DnsTimeout),
        Ok(Err(_)) => {
            return Err(E::DnsError {
                rcode: Some("the lookup did not complete".to_owned()),
                info_code: None,
            });
        }
        Ok(Ok(found)) => found.map_err(|e| E::DnsError {
            rcode: Some(e.to_string()),
            info_code: None,
        })?,
    };
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for address in found {
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    if addresses.is_empty() {
        return Err(E::DestinationNotFound);
    }
    Ok(addresses)
}

/// Refuse the request if *any* address is not public and not allowed by the
/// operator: a name with one public and one private address could be
/// steered to either.
fn vet(plan: &Plan, mut addresses: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, E> {
    for address in &addresses {
        let ip = address.ip();
        let Some(reason) = special_purpose(ip)
            .map(str::to_owned)
            .or_else(|| own_address(ip))
        else {
            continue;
        };
        let excepted = plan.grant.allow_private.iter().any(|r| r.contains(ip));
        let note = match &plan.origin.host {
            OriginHost::Ip(_) if excepted => continue,
            OriginHost::Ip(_) => format!(
                "refused: {ip} is {reason}; not reachable unless the operator allows it (http_allow_private)"
            ),
            // The name's owner chooses what it resolves to: the exception
            // holds for names the operator vouches for, not for any.
            OriginHost::Name(_) if excepted && plan.grant.private_origins.contains(&plan.origin) => {
                continue;
            }
            OriginHost::Name(name) if excepted => format!(
                "refused: {name} resolves to {ip}, which is {reason}; http_allow_private allows the address, but a name reaches it only when the operator lists its origin ({}) in http_private_origins",
                plan.origin
            ),
            OriginHost::Name(name) => format!(
                "refused: {name} resolves to {ip}, which is {reason}; not reachable unless the operator allows it (http_allow_private, and the origin in http_private_origins)"
            ),
        };
        plan.note(note);
        return Err(E::DestinationIpProhibited);
    }
    addresses.truncate(HTTP_MAX_ADDRESSES);
    Ok(addresses)
}

/// Connect to the first vetted address that accepts.
async fn connect(addresses: &[SocketAddr]) -> Result<TcpStream, E> {
    let mut last = E::DestinationNotFound;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                // Latency over throughput for small API calls; failure to set
                // it changes nothing about correctness.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => {
                tracing::debug!(target: "airlock::http", %address, error = %e, "connect failed");
                last = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => E::ConnectionRefused,
                    std::io::ErrorKind::TimedOut => E::ConnectionTimeout,
                    std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::HostUnreachable => E::DestinationUnavailable,
                    _ => E::Connect(e),
                };
            }
        }
    }
    Err(last)
}

/// A TLS client configuration: rustls with the `ring` provider, Mozilla's
/// roots (webpki-roots) plus the operator's CAs, HTTP/1.1 by ALPN. Without
/// operator CAs every grant shares one, built once.
#[derive(Clone)]
pub(crate) struct TlsClient(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClient")
    }
}

/// Two grants are equal when they trust the same roots; their `ca_certs`
/// say so, this compares nothing.
impl PartialEq for TlsClient {
    fn eq(&self, _: &TlsClient) -> bool {
        true
    }
}

impl Eq for TlsClient {}

impl TlsClient {
    /// The client trusting Mozilla's roots and the CA certificates in the
    /// PEM files `ca_certs`.
    ///
    /// # Errors
    /// [`LoadError::Config`](crate::LoadError::Config) naming
    /// `policy.http_ca_certs` and the file that cannot be read, holds no
    /// certificate, or holds an invalid one.
    pub(crate) fn new(ca_certs: &[std::path::PathBuf]) -> crate::error::LoadResult<TlsClient> {
        static SHARED: OnceLock<Result<TlsClient, String>> = OnceLock::new();
        let config_error = |message: String| crate::error::LoadError::Config { message };
        if ca_certs.is_empty() {
            return SHARED
                .get_or_init(|| build(Vec::new()).map(|c| TlsClient(Arc::new(c))))
                .clone()
                .map_err(config_error);
        }
        let mut extra = Vec::new();
        for path in ca_certs {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let bad = |why: String| {
                config_error(format!("policy.http_ca_certs: {}: {why}", path.display()))
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
            if certs.is_empty() {
                return Err(bad("holds no CERTIFICATE block".into()));
            }
            for cert in certs {
                // Checked one by one, so the error names its file.
                rustls::RootCertStore::empty()
                    .add(cert.clone())
                    .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
                extra.push(cert);
            }
        }
        build(extra)
            .map(|c| TlsClient(Arc::new(c)))
            .map_err(config_error)
    }

    /// The rustls configuration, for other clients of the host (alert
    /// webhooks).
    pub(crate) fn config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.0)
    }
}

fn build(
    extra: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// TLS over `stream`, verifying the certificate for the origin's host.
async fn tls(
    client: &TlsClient,
    origin: &Origin,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, E> {
    use rustls::pki_types::ServerName;

    let config = Arc::clone(&client.0);
    let name = match &origin.host {
        OriginHost::Ip(ip) => ServerName::IpAddress((*ip).into()),
        OriginHost::Name(name) => ServerName::try_from(name.clone()).map_err(|e| E::DnsError {
            rcode: Some(format!("invalid DNS name: {e}")),
            info_code: None,
        })?,
    };
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| {
            let tls_error = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            match tls_error {
                Some(rustls::Error::InvalidCertificate(_)) => E::TlsCertificateError,
                Some(rustls::Error::AlertReceived(alert)) => E::TlsAlertReceived {
                    alert_id: Some(u8::from(*alert)),
                    alert_message: Some(format!("{alert:?}")),
                },
                Some(_) => E::TlsProtocolError,
                None => E::Tls(e),
            }
        })
}

/// A response body that stops at the size limit and times out between
/// chunks (never later than the call's deadline). Nothing is buffered here:
/// chunks go to the guest as it reads them.
struct CappedBody {
    incoming: hyper::body::Incoming,
    limit: u64,
    received: u64,
    between_bytes: Duration,
    deadline: Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    notes: Arc<Mutex<Vec<String>>>,
    target: String,
}

impl CappedBody {
    fn new(incoming: hyper::body::Incoming, plan: &Plan) -> CappedBody {
        let wake = bounded(Instant::now(), plan.between_bytes, plan.deadline);
        CappedBody {
            incoming,
            limit: plan.grant.limits.max_response_bytes(),
            received: 0,
            between_bytes: plan.between_bytes,
            deadline: plan.deadline,
            timer: Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
                wake,
            ))),
            done: false,
            notes: Arc::clone(&plan.notes),
            target: plan.target.clone(),
        }
    }

    fn fail(&mut self, error: E) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        self.done = true;
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = E;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    this.received = this.received.saturating_add(len);
                    if this.received > this.limit {
                        note(
                            &this.notes,
                            &this.target,
                            format!(
                                "stopped: the response body is larger than the limit of {} bytes (http_max_response_kb)",
                                this.limit
                            ),
                        );
                        return this.fail(E::HttpResponseBodySize(Some(this.limit)));
                    }
                }
                let wake = bounded(Instant::now(), this.between_bytes, this.deadline);
                this.timer
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(wake));
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) if e.is_timeout() => this.fail(E::HttpResponseTimeout),
            Poll::Ready(Some(Err(e))) => this.fail(E::Hyper(e)),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => this.fail(E::ConnectionReadTimeout),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_origins_follow_the_manifest_rules() {
        let uri: Uri = "https://API.example.com:443/v1?key=secret".parse().unwrap();
        assert_eq!(
            request_origin(&uri).unwrap(),
            Origin::parse("https://api.example.com").unwrap()
        );
        assert_eq!(redacted_uri(&uri), "https://API.example.com:443/v1?…");
        let uri: Uri = "http://user:pw-secret@example.com/x".parse().unwrap();
        let err = request_origin(&uri).unwrap_err();
        assert!(err.contains("userinfo") && !err.contains("pw-secret"), "{err}");
        assert_eq!(redacted_uri(&uri), "http://example.com/x");
        let uri: Uri = "/relative".parse().unwrap();
        assert!(request_origin(&uri).is_err());
    }

    /// The operator's exception for an address holds for an origin that
    /// is that address, and for a name only when the operator lists the
    /// name's origin too: a plugin resolving a domain of its own to the
    /// excepted address (another plugin's local service) is refused.
    #[test]
    fn a_name_reaches_an_excepted_address_only_when_its_origin_is_listed() {
        let grant = |private_origins: Vec<Origin>| {
            Arc::new(HttpGrant {
                origins: Vec::new(),
                allow_private: vec![crate::grants::IpRange::parse("127.0.0.1").unwrap()],
                private_origins,
                limits: crate::limits::HttpLimits::resolve(None, None, None, None, None),
                ca_certs: Vec::new(),
                tls: TlsClient::new(&[]).unwrap(),
                dns: DnsLookups::shared(1, "test"),
            })
        };
        let loopback = vec![SocketAddr::from(([127, 0, 0, 1], 8080))];
        let vetted = |origin: &str, grant: Arc<HttpGrant>, addresses: Vec<SocketAddr>| {
            let notes = Arc::new(Mutex::new(Vec::new()));
            let plan = Plan::new(
                Origin::parse(origin).unwrap(),
                grant,
                None,
                Instant::now() + Duration::from_secs(10),
                Arc::clone(&notes),
                format!("GET {origin}/"),
            );
            let result = vet(&plan, addresses);
            let notes = notes.lock().unwrap().clone();
            (result, notes)
        };
        // The address itself: the exception holds.
        let (result, notes) = vetted("http://127.0.0.1:8080", grant(Vec::new()), loopback.clone());
        assert_eq!(result.unwrap(), loopback, "{notes:?}");
        // A name the operator did not list: refused, saying what to add.
        let (result, notes) = vetted(
            "http://rebound.attacker.example:8080",
            grant(Vec::new()),
            loopback.clone(),
        );
        assert!(matches!(result, Err(E::DestinationIpProhibited)));
        assert!(
            notes.iter().any(|n| n.contains("rebound.attacker.example resolves to 127.0.0.1")
                && n.contains("http_private_origins")
                && n.contains("http://rebound.attacker.example:8080")),
            "{notes:?}"
        );
        // Listed: it reaches the excepted address, and only that one.
        let listed = || grant(vec![Origin::parse("http://billing.internal:8080").unwrap()]);
        let (result, notes) = vetted("http://billing.internal:8080", listed(), loopback.clone());
        assert_eq!(result.unwrap(), loopback, "{notes:?}");
        let (result, notes) = vetted(
            "http://billing.internal:8080",
            listed(),
            vec![SocketAddr::from(([10, 0, 0, 1], 8080))],
        );
        assert!(matches!(result, Err(E::DestinationIpProhibited)));
        assert!(
            notes.iter().any(|n| n.contains("not reachable unless the operator allows it")),
            "{notes:?}"
        );
        // Another origin of the same name (other port) is not listed.
        let (result, _) = vetted("http://billing.internal:9090", listed(), loopback);
        assert!(matches!(result, Err(E::DestinationIpProhibited)));
    }

    /// A name its author controls pointed at this machine's own public
    /// address: reached over loopback, past a firewall guarding it from
    /// outside. Refused by `vet`; another public address passes.
    #[test]
    fn a_name_resolving_to_this_machines_own_address_is_refused() {
        let own = std::net::IpAddr::from([192, 0, 43, 10]);
        crate::grants::http::address::pretend_own(own);
        let grant = Arc::new(HttpGrant {
            origins: Vec::new(),
            allow_private: Vec::new(),
            private_origins: Vec::new(),
            limits: crate::limits::HttpLimits::resolve(None, None, None, None, None),
            ca_certs: Vec::new(),
            tls: TlsClient::new(&[]).unwrap(),
            dns: DnsLookups::shared(1, "test"),
        });
        let vetted = |ip: std::net::IpAddr| {
            let notes = Arc::new(Mutex::new(Vec::new()));
            let plan = Plan::new(
                Origin::parse("https://app.attacker.example").unwrap(),
                Arc::clone(&grant),
                None,
                Instant::now() + Duration::from_secs(10),
                Arc::clone(&notes),
                "GET https://app.attacker.example/".to_owned(),
            );
            let result = vet(&plan, vec![SocketAddr::new(ip, 443)]);
            let notes = notes.lock().unwrap().clone();
            (result, notes)
        };
        let (result, notes) = vetted(own);
        assert!(matches!(result, Err(E::DestinationIpProhibited)), "{notes:?}");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("192.0.43.10") && n.contains("this machine's own interfaces")),
            "{notes:?}"
        );
        let (result, notes) = vetted(std::net::IpAddr::from([93, 184, 216, 34]));
        assert!(result.is_ok(), "{notes:?}");
    }

    #[test]
    fn waits_are_bounded_by_the_deadline() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(1);
        assert_eq!(bounded(now, Duration::from_secs(5), deadline), deadline);
        assert_eq!(
            bounded(now, Duration::from_millis(10), deadline),
            now + Duration::from_millis(10)
        );
        assert_eq!(bounded(now, Duration::MAX, deadline), deadline);
        assert_eq!(
            shorter(Duration::from_secs(5), Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            shorter(Duration::from_secs(5), Some(Duration::from_secs(9))),
            Duration::from_secs(5)
        );
    }

    /// A flood of slow lookups holds at most the bound's threads: requests
    /// past it wait within their connect timeout, then get `DNS-timeout`
    /// without starting a lookup; a slot is freed when its lookup ends.
    #[tokio::test]
    async fn slow_dns_answers_hold_at_most_the_bound_of_blocking_threads() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let started = Arc::new(AtomicUsize::new(0));
        let resolver: Resolver = {
            let started = Arc::clone(&started);
            Arc::new(move |_host, port| {
                // The first lookup answers long after any request's
                // timeout; later ones at once.
                if started.fetch_add(1, Ordering::SeqCst) == 0 {
                    std::thread::sleep(Duration::from_millis(600));
                }
                Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
            })
        };
        let grant = Arc::new(HttpGrant {
            origins: Vec::new(),
            allow_private: Vec::new(),
            private_origins: Vec::new(),
            limits: crate::limits::HttpLimits::resolve(None, None, None, Some(100), None),
            ca_certs: Vec::new(),
            tls: TlsClient::new(&[]).unwrap(),
            dns: DnsLookups::with_resolver(1, resolver),
        });
        let notes = Arc::new(Mutex::new(Vec::new()));
        let attempt = || {
            let plan = Plan::new(
                Origin::parse("http://slow.example").unwrap(),
                Arc::clone(&grant),
                None,
                Instant::now() + Duration::from_secs(10),
                Arc::clone(&notes),
                "GET http://slow.example/".to_owned(),
            );
            async move {
                let connect_by = tokio::time::Instant::from_std(plan.connect_by);
                resolve(&plan, connect_by).await
            }
        };
        // The slow lookup times out for its request but keeps its slot...
        assert!(matches!(attempt().await, Err(E::DnsTimeout)));
        // ...so the next requests wait, time out, and start no thread.
        for _ in 0..3 {
            assert!(matches!(attempt().await, Err(E::DnsTimeout)));
        }
        assert_eq!(started.load(Ordering::SeqCst), 1);
        assert!(
            notes
                .lock()
                .unwrap()
                .iter()
                .any(|n| n.contains("http_max_dns_lookups")),
            "{notes:?}"
        );
        // Once the slow lookup ends, its slot is free again.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let found = attempt().await.unwrap();
        assert_eq!(found, vec![SocketAddr::from(([127, 0, 0, 1], 80))]);
        assert_eq!(started.load(Ordering::SeqCst), 2);
    }

    /// A plugin whose names never resolve holds at most half the
    /// process's lookups: another plugin's lookup still gets a slot.
    #[tokio::test]
    async fn one_plugin_holds_at_most_half_the_lookups() {
        let hanging: Resolver = Arc::new(|_host, _port| {
            std::thread::sleep(Duration::from_millis(400));
            Ok(Vec::new())
        });
        let answering: Resolver =
            Arc::new(|_host, port| Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]));
        let shared = DnsLookups::with_resolver(4, hanging);
        let grant = |dns: DnsLookups| {
            Arc::new(HttpGrant {
                origins: Vec::new(),
                allow_private: Vec::new(),
                private_origins: Vec::new(),
                limits: crate::limits::HttpLimits::resolve(None, None, None, Some(100), None),
                ca_certs: Vec::new(),
                tls: TlsClient::new(&[]).unwrap(),
                dns,
            })
        };
        let (hostile, other) = (grant(shared.clone()), grant(shared.sibling(answering)));
        let notes = Arc::new(Mutex::new(Vec::new()));
        let attempt = |grant: &Arc<HttpGrant>| {
            let plan = Plan::new(
                Origin::parse("http://slow.example").unwrap(),
                Arc::clone(grant),
                None,
                Instant::now() + Duration::from_secs(10),
                Arc::clone(&notes),
                "GET http://slow.example/".to_owned(),
            );
            async move {
                let connect_by = tokio::time::Instant::from_std(plan.connect_by);
                resolve(&plan, connect_by).await
            }
        };
        for _ in 0..4 {
            assert!(matches!(attempt(&hostile).await, Err(E::DnsTimeout)));
        }
        assert!(
            notes
                .lock()
                .unwrap()
                .iter()
                .any(|n| n.contains("this plugin's DNS lookups")),
            "{notes:?}"
        );
        assert_eq!(
            attempt(&other).await.unwrap(),
            vec![SocketAddr::from(([127, 0, 0, 1], 80))]
        );
    }

    /// Every grant of one plugin (two versions loaded for a canary, the
    /// grant a reload replaced) shares the plugin's half: each had a half
    /// of its own, so a plugin with a canary could hold every slot.
    #[test]
    fn lookups_with_the_same_bound_share_their_slots_and_a_plugin_its_half() {
        let a = DnsLookups::shared(3, "p");
        let b = DnsLookups::shared(3, "p");
        let other = DnsLookups::shared(3, "q");
        assert!(Arc::ptr_eq(&a.slots, &b.slots));
        assert!(Arc::ptr_eq(&a.slots, &other.slots));
        assert!(Arc::ptr_eq(&a.own, &b.own), "one plugin, one half");
        assert!(!Arc::ptr_eq(&a.own, &other.own));
        assert_eq!(DnsLookups::shared(0, "p").bound, 1);
    }
}
