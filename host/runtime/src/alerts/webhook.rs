//! Alert webhooks: a JSON POST signed per the Standard Webhooks
//! specification, off every call's path.
//!
//! A call that trips a rule only puts the alert on its webhook's bounded
//! queue ([`Outbox::send`] never waits); a background task per webhook
//! delivers it, at most [`MAX_IN_FLIGHT`] deliveries at once, each attempt
//! bounded by the webhook's `timeout`, retried with doubling backoff up to
//! its `max_attempts`. Each webhook has its own queue and task, so a
//! receiver that never answers delays only its own alerts, never the
//! pager's. The alerts of one rule and target go out one after another,
//! in the order they were raised (a `resolved` never overtakes its
//! `firing` retrying). An alert that cannot be delivered — every attempt
//! failed, the queue was full, or the host stopped first — is recorded in
//! the audit log (`alert_undelivered`) instead: [`Outbox::close`] gives
//! deliveries under way a grace period when the host stops, then records
//! what is left.
//!
//! # Security
//! Every attempt is signed with the webhook's secret as [Standard
//! Webhooks](https://www.standardwebhooks.com/) specifies: `webhook-id`
//! (one per delivery — an alert's firing and its resolution are two —
//! the same on every retry), `webhook-timestamp` (the
//! attempt's time, Unix seconds) and `webhook-signature: v1,BASE64`, the
//! HMAC-SHA256 of `id.timestamp.body`. A receiver verifying it with any
//! Standard Webhooks library refuses what a host without the secret sent,
//! a delivery replayed after its tolerance (five minutes), and — keeping
//! the ids it has seen that long — one replayed within it. The URL is the
//! operator's own configuration, not a plugin's: it is not vetted like a
//! guest's HTTP request.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use airlock_audit::{AuditLog, Durability, Entry, Event};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use wasmtime_wasi_http::io::TokioIo;

use super::rules::Webhook;

/// Alerts waiting for delivery at most; more are recorded undelivered.
pub(crate) const QUEUE: usize = 256;
/// Deliveries in progress at once.
pub(crate) const MAX_IN_FLIGHT: usize = 8;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Deliveries of one alert (rule and target) waiting behind the one being
/// delivered, at most: an alert flapping around its threshold while the
/// receiver is slow queued one per flip, without bound. Past it the oldest
/// waiting is recorded undelivered ([`SUPERSEDED`]): the receiver still
/// gets the newest states, in order.
pub(crate) const MAX_WAITING_PER_ALERT: usize = 16;
/// How long a stopping host waits for what is left to be recorded
/// undelivered, after its grace period.
const RECORDING_LEFT: Duration = Duration::from_secs(5);
/// The prefix of a Standard Webhooks secret: base64 of the key follows.
pub(super) const SECRET_PREFIX: &str = "whsec_";

/// Where a webhook posts: scheme, host, port and path of its URL.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    https: bool,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

impl Target {
    /// Parse an `http://` or `https://` URL.
    pub(crate) fn parse(url: &str) -> Result<Target, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("the scheme must be http or https".to_owned()),
        };
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| "the URL has no host".to_owned())?;
        if authority.as_str().contains('@') {
            return Err("the URL may not hold credentials (user@host)".to_owned());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Target {
            https,
            host,
            port,
            authority: authority.as_str().to_owned(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        })
    }
}

/// The HMAC key a webhook's secret stands for: a Standard Webhooks secret
/// (`whsec_` and base64, as receivers' libraries generate them) the bytes
/// it encodes, any other secret its own bytes.
pub(crate) fn signing_key(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix(SECRET_PREFIX) {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            // Not the decoder's error: it quotes a byte of the secret.
            .map_err(|_| format!("a secret starting {SECRET_PREFIX} must be base64 after it")),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// The `webhook-*` headers of one attempt: its id, timestamp and signature.
struct Signed {
    id: String,
    timestamp: String,
    signature: String,
}

/// Sign one attempt of `body` under `key`, made at `timestamp` (Unix
/// seconds).
fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Result<Signed, String> {
    let signature = standardwebhooks::Webhook::from_bytes(key.to_vec())
        .and_then(|hook| hook.sign(id, timestamp, body))
        .map_err(|e| format!("cannot sign the alert: {e}"))?;
    Ok(Signed {
        id: id.to_owned(),
        timestamp: timestamp.to_string(),
        signature,
    })
}

/// One alert for one webhook.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) webhook: Arc<Webhook>,
    pub(crate) body: Bytes,
    /// For the record when undelivered.
    pub(crate) rule: String,
    pub(crate) plugin: Option<String>,
    pub(crate) tool: Option<String>,
    pub(crate) version: Option<String>,
}

/// An alert's rule and target: plugin, tool and version.
type AlertKey = (String, Option<String>, Option<String>, Option<String>);

impl Delivery {
    /// The alert it is about: its rule and target (each version's alert
    /// is its own).
    fn alert(&self) -> AlertKey {
        (
            self.rule.clone(),
            self.plugin.clone(),
            self.tool.clone(),
            self.version.clone(),
        )
    }
}

/// The delivery tasks running, to wait for when the host stops.
#[derive(Debug, Default)]
struct Running {
    count: AtomicUsize,
    none: Notify,
}

impl Running {
    /// Run `task`, counted until it ends.
    fn spawn(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.count.fetch_add(1, Ordering::SeqCst);
        let running = Arc::clone(self);
        runtime.spawn(async move {
            let _counted = Counted(running);
            task.await;
        });
    }

    /// Until no task runs.
    async fn none(&self) {
        loop {
            let ended = self.none.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// Counts its task as running until dropped (the task ended, or was
/// dropped with its runtime).
struct Counted(Arc<Running>);

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.none.notify_waiters();
        }
    }
}

/// Each webhook's delivery queue and background task (started with its
/// first alert, on the runtime that raised it), by webhook name.
#[derive(Debug)]
pub(crate) struct Outbox {
    queues: Mutex<HashMap<String, mpsc::Sender<Delivery>>>,
    audit: AuditLog,
    tls: Option<crate::grants::TlsClient>,
    running: Arc<Running>,
    /// Set when the host stops: alerts raised after it are recorded
    /// undelivered at once.
    closed: AtomicBool,
    /// Cancelled when the grace period is over: deliveries stop and
    /// record what they could not deliver.
    stopping: CancellationToken,
}

impl Outbox {
    pub(crate) fn new(audit: AuditLog) -> Outbox {
        Outbox {
            queues: Mutex::new(HashMap::new()),
            audit,
            // Without a usable TLS configuration only http:// webhooks work;
            // an https:// one is then recorded undelivered with the reason.
            tls: crate::grants::TlsClient::new(&[]).ok(),
            running: Arc::default(),
            closed: AtomicBool::new(false),
            stopping: CancellationToken::new(),
        }
    }

    /// The host stops: wait up to `grace` for the queued alerts and those
    /// being retried to be delivered, then stop them and record each one
    /// left undelivered (bounded too). Alerts raised after this are
    /// recorded undelivered at once.
    pub(crate) async fn close(&self, grace: Duration) {
        self.closed.store(true, Ordering::SeqCst);
        // Each webhook's task delivers what is queued, then ends.
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        if tokio::time::timeout(grace, self.running.none())
            .await
            .is_err()
        {
            self.stopping.cancel();
            if tokio::time::timeout(RECORDING_LEFT, self.running.none())
                .await
                .is_err()
            {
                tracing::error!(
                    "alerts left undelivered when the host stopped could not all be recorded"
                );
            }
        }
    }

    /// Queue `delivery` without waiting: when the queue is full, or no
    /// runtime can run the sender, it is recorded undelivered at once.
    pub(crate) fn send(&self, delivery: Delivery) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(rule = %delivery.rule, "no async runtime to deliver an alert webhook on");
            return;
        };
        if self.closed.load(Ordering::SeqCst) {
            let audit = self.audit.clone();
            let why = "the host was stopping".to_owned();
            self.running
                .spawn(&runtime, record_undelivered(audit, delivery, 0, why));
            return;
        }
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = queues
            .entry(delivery.webhook.name.clone())
            .or_insert_with(|| {
                let (sender, receiver) = mpsc::channel(QUEUE);
                self.running.spawn(
                    &runtime,
                    deliver_all(
                        receiver,
                        Sending {
                            audit: self.audit.clone(),
                            tls: self.tls.as_ref().map(crate::grants::TlsClient::config),
                            stopping: self.stopping.clone(),
                            running: Arc::clone(&self.running),
                            runtime: runtime.clone(),
                        },
                    ),
                );
                sender
            });
        if let Err(error) = sender.try_send(delivery) {
            let (delivery, why) = match error {
                mpsc::error::TrySendError::Full(d) => (d, "the delivery queue is full"),
                mpsc::error::TrySendError::Closed(d) => (d, "the delivery task stopped"),
            };
            if matches!(why, "the delivery task stopped") {
                // Start a new task with the webhook's next alert.
                queues.remove(&delivery.webhook.name);
            }
            let audit = self.audit.clone();
            self.running.spawn(
                &runtime,
                record_undelivered(audit, delivery, 0, why.to_owned()),
            );
        }
    }
}

/// What a webhook's task delivers with.
#[derive(Clone)]
struct Sending {
    audit: AuditLog,
    tls: Option<Arc<rustls::ClientConfig>>,
    stopping: CancellationToken,
    running: Arc<Running>,
    runtime: tokio::runtime::Handle,
}

/// The alerts waiting behind one being delivered, by alert.
type Lines = Mutex<HashMap<AlertKey, VecDeque<Delivery>>>;

/// The background task: deliver each queued alert, a few at once, those
/// of one alert (rule and target) one after another in order.
async fn deliver_all(mut receiver: mpsc::Receiver<Delivery>, sending: Sending) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let lines: Arc<Lines> = Arc::default();
    loop {
        let delivery = tokio::select! {
            biased;
            () = sending.stopping.cancelled() => break,
            next = receiver.recv() => match next {
                Some(delivery) => delivery,
                None => return,
            },
        };
        let alert = delivery.alert();
        {
            let mut lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(waiting) = lines.get_mut(&alert) {
                // Its alert's earlier one is being delivered: this one goes
                // after it.
                waiting.push_back(delivery);
                if waiting.len() > MAX_WAITING_PER_ALERT
                    && let Some(oldest) = waiting.pop_front()
                {
                    sending.running.spawn(
                        &sending.runtime,
                        record_undelivered(sending.audit.clone(), oldest, 0, SUPERSEDED.to_owned()),
                    );
                }
                continue;
            }
            lines.insert(alert.clone(), VecDeque::new());
        }
        let slot = tokio::select! {
            biased;
            () = sending.stopping.cancelled() => {
                record_undelivered(sending.audit.clone(), delivery, 0, STOPPED.to_owned()).await;
                break;
            }
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (lines, task) = (Arc::clone(&lines), sending.clone());
        sending.running.spawn(&sending.runtime, async move {
            let _slot = slot;
            let mut next = Some(delivery);
            while let Some(delivery) = next {
                deliver(delivery, &task).await;
                let mut lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
                next = lines.get_mut(&alert).and_then(VecDeque::pop_front);
                if next.is_none() {
                    lines.remove(&alert);
                }
            }
        });
    }
    // The host stopped: what is still queued was never sent.
    receiver.close();
    while let Ok(delivery) = receiver.try_recv() {
        record_undelivered(sending.audit.clone(), delivery, 0, STOPPED.to_owned()).await;
    }
}

/// Why an alert the host stopped before sending is undelivered.
const STOPPED: &str = "the host stopped before it was sent";
/// Why an alert dropped from its line is undelivered.
const SUPERSEDED: &str = "superseded: newer states of the same alert were waiting behind it";

/// Deliver one alert, retrying with backoff; record it undelivered when
/// every attempt fails, or the host stops first.
async fn deliver(delivery: Delivery, sending: &Sending) {
    let hook = Arc::clone(&delivery.webhook);
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let audit = sending.audit.clone();
    // A webhook's configuration is checked before it is used (a secret
    // that does not decode, or a short key, never reaches here) and an
    // alert is JSON: what cannot be signed is recorded undelivered at
    // once, never sent unsigned, under an empty key, or retried in vain.
    let key = match signing_key(hook.secret.as_deref().unwrap_or_default()) {
        Ok(key) if !key.is_empty() => key,
        Ok(_) => {
            let why = "the webhook has no secret to sign with".to_owned();
            record_undelivered(audit, delivery, 0, why).await;
            return;
        }
        Err(why) => {
            record_undelivered(audit, delivery, 0, why).await;
            return;
        }
    };
    if let Err(why) = sign(&key, &id, 0, &delivery.body) {
        record_undelivered(audit, delivery, 0, why).await;
        return;
    }
    let mut backoff = hook.backoff.min(MAX_BACKOFF);
    let mut last = String::new();
    for attempt in 1..=hook.max_attempts {
        if sending.stopping.is_cancelled() {
            let why = if attempt == 1 {
                STOPPED.to_owned()
            } else {
                format!("the host stopped before another attempt; the last {last}")
            };
            record_undelivered(audit, delivery, attempt - 1, why).await;
            return;
        }
        let sent = tokio::select! {
            biased;
            () = sending.stopping.cancelled() => {
                let why = "the host stopped during the attempt".to_owned();
                record_undelivered(audit, delivery, attempt, why).await;
                return;
            }
            sent = tokio::time::timeout(hook.timeout, async {
                // Signed at each attempt: a receiver's tolerance counts
                // from the attempt, not from the alert.
                let now = i64::try_from(crate::mode::now_ms() / 1000).unwrap_or(i64::MAX);
                let signed = sign(&key, &id, now, &delivery.body)?;
                post(&hook.url, sending.tls.as_ref(), &delivery.body, &signed).await
            }) => sent,
        };
        match sent {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                tracing::debug!(webhook = %hook.name, rule = %delivery.rule, attempt, "alert delivered");
                return;
            }
            Ok(Ok(status)) => last = format!("answered HTTP {status}"),
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = format!(
                    "no answer within {}",
                    humantime::format_duration(hook.timeout)
                )
            }
        }
        tracing::warn!(webhook = %hook.name, rule = %delivery.rule, attempt, error = %last, "alert webhook attempt failed");
        if attempt < hook.max_attempts {
            tokio::select! {
                () = sending.stopping.cancelled() => {}
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    record_undelivered(audit, delivery, hook.max_attempts, last).await;
}

async fn record_undelivered(audit: AuditLog, delivery: Delivery, attempts: u32, why: String) {
    tracing::error!(webhook = %delivery.webhook.name, rule = %delivery.rule, attempts, error = %why, "alert webhook undelivered");
    let mut entry = Entry::new(Event::AlertUndelivered);
    entry.decision = Some(delivery.rule.clone());
    entry.plugin = delivery.plugin;
    entry.tool = delivery.tool;
    entry.plugin_version = delivery.version;
    entry.reason = Some(format!(
        "webhook {}: {attempts} attempt(s); {why}",
        delivery.webhook.name
    ));
    if let Err(e) = crate::audit::append(&audit, &entry, Durability::Flushed).await {
        tracing::error!(error = %e, "cannot record an undelivered alert");
    }
}

/// Any stream hyper can speak HTTP over.
trait Connection: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for T {}

/// One attempt: POST `body` to `url`; the response's status.
async fn post(
    url: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    body: &Bytes,
    signed: &Signed,
) -> Result<u16, String> {
    let target = Target::parse(url)?;
    let stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let stream: Box<dyn Connection> = if target.https {
        let config = tls.ok_or("no TLS configuration for an https webhook")?;
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| format!("invalid host name: {e}"))?;
        Box::new(
            tokio_rustls::TlsConnector::from(Arc::clone(config))
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?,
        )
    } else {
        Box::new(stream)
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(connection);
    let request = http::Request::post(target.path.as_str())
        .header(http::header::HOST, target.authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "airlock-alerts")
        .header(standardwebhooks::HEADER_WEBHOOK_ID, signed.id.as_str())
        .header(
            standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
            signed.timestamp.as_str(),
        )
        .header(
            standardwebhooks::HEADER_WEBHOOK_SIGNATURE,
            signed.signature.as_str(),
        )
        .body(Full::new(body.clone()))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender.send_request(request).await;
    driver.abort();
    response
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("HTTP: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_refused() {
        let t = Target::parse("http://127.0.0.1:9000/hook?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 9000, "/hook?x=1")
        );
        assert!(Target::parse("https://ops.example").unwrap().https);
        assert_eq!(Target::parse("https://ops.example").unwrap().port, 443);
        for bad in ["ftp://x", "http://", "nonsense", "http://u:p@host/"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    /// A receiver on loopback that accepts connections and never answers
    /// (nor closes them): its URL, and the task holding them.
    async fn silent_receiver() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        (url, held)
    }

    #[tokio::test]
    async fn alerts_beyond_the_queue_are_recorded_undelivered_at_once() {
        // Every delivery in flight holds its slot for the whole timeout.
        let (url, _held) = silent_receiver().await;
        let audit = AuditLog::temporary(airlock_audit::AuditConfig::default()).unwrap();
        let outbox = Outbox::new(audit.clone());
        let hook = Arc::new(
            Webhook::new("slow", &url, "0123456789abcdef0123")
                .timeout(Duration::from_secs(30))
                .max_attempts(1),
        );
        let sent = QUEUE + MAX_IN_FLIGHT + 20;
        for _ in 0..sent {
            outbox.send(Delivery {
                webhook: Arc::clone(&hook),
                body: Bytes::from_static(b"{}"),
                rule: "r".to_owned(),
                plugin: None,
                tool: None,
                version: None,
            });
        }
        // `send` never waited; what did not fit is on the record.
        let full = || {
            audit.flush().unwrap();
            audit
                .records(0)
                .map(Result::unwrap)
                .filter(|r| {
                    r.entry.event == Event::AlertUndelivered
                        && r.entry
                            .reason
                            .as_deref()
                            .is_some_and(|why| why.ends_with("the delivery queue is full"))
                })
                .count()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while full() < 20 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let recorded = full();
        assert!(
            (20..=sent - QUEUE).contains(&recorded),
            "{recorded} of {sent} recorded as not queued"
        );
    }

    /// What cannot be signed — a webhook whose secret gives no key (a
    /// configuration never checked), a body that is not text — is never
    /// posted nor retried: it is recorded undelivered at once.
    #[tokio::test]
    async fn what_cannot_be_signed_is_recorded_undelivered_unsent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let audit = AuditLog::temporary(airlock_audit::AuditConfig::default()).unwrap();
        let outbox = Outbox::new(audit.clone());
        let unchecked = |secret: &str| {
            let mut hook = Webhook::new("unchecked", &url, secret).max_attempts(5);
            hook.backoff = Duration::from_secs(30);
            Arc::new(hook)
        };
        let cases = [
            (unchecked(""), &b"{}"[..], "no secret to sign with"),
            (unchecked("whsec_***"), &b"{}"[..], "must be base64"),
            (
                unchecked("0123456789abcdef0123"),
                &b"\xff\xfe"[..],
                "cannot sign the alert",
            ),
        ];
        for (n, (webhook, body, _)) in cases.iter().enumerate() {
            outbox.send(Delivery {
                webhook: Arc::clone(webhook),
                body: Bytes::copy_from_slice(body),
                rule: format!("r{n}"),
                plugin: None,
                tool: None,
                version: None,
            });
        }
        let undelivered = || {
            audit.flush().unwrap();
            audit
                .records(0)
                .map(Result::unwrap)
                .filter(|r| r.entry.event == Event::AlertUndelivered)
                .filter_map(|r| r.entry.reason)
                .collect::<Vec<_>>()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while undelivered().len() < cases.len() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reasons = undelivered();
        assert_eq!(reasons.len(), cases.len(), "{reasons:?}");
        for (_, _, why) in &cases {
            assert!(
                reasons
                    .iter()
                    .any(|r| r.contains("0 attempt(s)") && r.contains(why)),
                "{why}: {reasons:?}"
            );
        }
        // Nothing was posted.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), listener.accept())
                .await
                .is_err()
        );
    }

    /// One alert flapping while its receiver hangs: its deliveries wait in
    /// its line behind the one in flight, and the line is bounded (it grew
    /// with every flip); the oldest waiting are recorded undelivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_alerts_waiting_deliveries_are_bounded() {
        let (url, _held) = silent_receiver().await;
        let audit = AuditLog::temporary(airlock_audit::AuditConfig::default()).unwrap();
        let outbox = Outbox::new(audit.clone());
        let hook = Arc::new(
            Webhook::new("slow", &url, "0123456789abcdef0123")
                .timeout(Duration::from_secs(30))
                .max_attempts(1),
        );
        let sent = 100;
        for _ in 0..sent {
            outbox.send(Delivery {
                webhook: Arc::clone(&hook),
                body: Bytes::from_static(b"{}"),
                rule: "flapping".to_owned(),
                plugin: Some("a".to_owned()),
                tool: Some("b".to_owned()),
                version: None,
            });
            // The delivery task takes each from the queue as it comes.
            tokio::task::yield_now().await;
        }
        let superseded = || {
            audit.flush().unwrap();
            audit
                .records(0)
                .map(Result::unwrap)
                .filter(|r| {
                    r.entry.event == Event::AlertUndelivered
                        && r.entry
                            .reason
                            .as_deref()
                            .is_some_and(|why| why.contains("; superseded:"))
                })
                .count()
        };
        // One in flight, at most `MAX_WAITING_PER_ALERT` waiting: the rest
        // (less any still in the queue) are on the record.
        let expected = sent - 1 - MAX_WAITING_PER_ALERT;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while superseded() < expected && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(superseded(), expected);
    }

    /// Each version's alert is its own: two versions' alerts flapping at
    /// once shared one line, so one version's states pushed out the
    /// other's, recorded as superseded by "newer states of the same alert".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_versions_alert_has_its_own_delivery_line() {
        let (url, _held) = silent_receiver().await;
        let audit = AuditLog::temporary(airlock_audit::AuditConfig::default()).unwrap();
        let outbox = Outbox::new(audit.clone());
        let hook = Arc::new(
            Webhook::new("slow", &url, "0123456789abcdef0123")
                .timeout(Duration::from_secs(30))
                .max_attempts(1),
        );
        let sent = 100;
        for i in 0..sent {
            outbox.send(Delivery {
                webhook: Arc::clone(&hook),
                body: Bytes::from_static(b"{}"),
                rule: "flapping".to_owned(),
                plugin: Some("a".to_owned()),
                tool: Some("b".to_owned()),
                version: Some(if i % 2 == 0 { "1.0.0" } else { "2.0.0" }.to_owned()),
            });
            tokio::task::yield_now().await;
        }
        let superseded = |version: &str| {
            audit.flush().unwrap();
            audit
                .records(0)
                .map(Result::unwrap)
                .filter(|r| {
                    r.entry.event == Event::AlertUndelivered
                        && r.entry.plugin_version.as_deref() == Some(version)
                        && r.entry
                            .reason
                            .as_deref()
                            .is_some_and(|why| why.contains("; superseded:"))
                })
                .count()
        };
        // Each version: one in flight, at most `MAX_WAITING_PER_ALERT`
        // waiting, the rest of its 50 on the record.
        let expected = sent / 2 - 1 - MAX_WAITING_PER_ALERT;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while (superseded("1.0.0") < expected || superseded("2.0.0") < expected)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            (superseded("1.0.0"), superseded("2.0.0")),
            (expected, expected)
        );
    }

    /// A receiver that never answers held every delivery slot and the one
    /// queue, and the pager's alerts waited behind it (then were recorded
    /// undelivered): each webhook now has its queue and slots.
    #[tokio::test]
    async fn a_webhook_that_never_answers_does_not_delay_another() {
        let (silent_url, _held) = silent_receiver().await;
        let pager = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pager_url = format!("http://{}/", pager.local_addr().unwrap());
        let (heard, mut hear) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            while let Ok((mut stream, _)) = pager.accept().await {
                let heard = heard.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = heard.send(());
                });
            }
        });
        let audit = AuditLog::temporary(airlock_audit::AuditConfig::default()).unwrap();
        let outbox = Outbox::new(audit);
        let slow = Arc::new(
            Webhook::new("slow", &silent_url, "0123456789abcdef0123")
                .timeout(Duration::from_secs(60))
                .max_attempts(1),
        );
        let page = Arc::new(Webhook::new("pager", &pager_url, "0123456789abcdef0123"));
        let delivery = |webhook: &Arc<Webhook>| Delivery {
            webhook: Arc::clone(webhook),
            body: Bytes::from_static(b"{}"),
            rule: "r".to_owned(),
            plugin: None,
            tool: None,
            version: None,
        };
        for _ in 0..QUEUE + MAX_IN_FLIGHT {
            outbox.send(delivery(&slow));
        }
        outbox.send(delivery(&page));
        tokio::time::timeout(Duration::from_secs(20), hear.recv())
            .await
            .expect("the pager's alert waited behind the silent webhook")
            .unwrap();
    }

    #[test]
    fn the_signature_is_the_standard_webhooks_one() {
        // The specification's example: a `whsec_` secret is the key it
        // encodes.
        let key = signing_key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let signed = sign(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body).unwrap();
        assert_eq!(
            signed.signature,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        assert_eq!(signed.timestamp, "1649367553");
        // Any other secret is its own bytes; a malformed `whsec_` is refused.
        assert_eq!(
            signing_key("plain text secret").unwrap(),
            b"plain text secret"
        );
        assert!(signing_key("whsec_***").is_err());
        // A body that is not UTF-8 cannot be signed (alerts are JSON).
        assert!(sign(&key, "msg_1", 0, b"\xff").is_err());
    }
}
