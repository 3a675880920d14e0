//! Alert rules that act, against real guests: a tool failing on demand
//! trips its error-rate rule, the webhook (a real HTTP receiver on
//! loopback) gets the signed alert, the tool is paused until a human
//! resumes it; read-only and rollback takeovers; the takeover limit; and
//! webhooks that are down, slow or failing never delay a call and end up
//! recorded undelivered.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_host::audit_log::{Event, Record};
use airlock_host::{
    AlertConfig, AlertMetric, AlertRule, CallError, CallRequest, CallResponse, Host, HostConfig,
    Package, RolloutRequest, TakeoverAction, Webhook,
};
use airlock_tests::{PLUGINS_DIR, PluginDir, install, read};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const SECRET: &str = "webhook-secret-for-tests";

fn misbehave() -> PluginDir {
    install(
        "misbehave",
        &read(airlock_tests::MISBEHAVE),
        "[capabilities]\nlog = true\n\n\
         [[tools]]\nname = \"say\"\nrisk = \"write\"\n\n\
         [[tools]]\nname = \"echo\"\nrisk = \"read\"\n\n\
         [[tools]]\nname = \"fail\"\nrisk = \"read\"\n\n\
         [[tools]]\nname = \"panic\"\nrisk = \"read\"\n",
    )
}

async fn host_with(alerts: AlertConfig, data: &Path) -> (Host, PluginDir) {
    let plugin = misbehave();
    let host = Host::new(HostConfig::default().data_dir(data).alerts(alerts)).unwrap();
    host.load_plugin(plugin.path()).await.unwrap();
    (host, plugin)
}

async fn say(host: &Host, fail: bool) -> Result<Value, CallError> {
    host.call(CallRequest::new(
        "misbehave/say",
        json!({"text": "hello", "fail": fail}).to_string(),
    ))
    .await
    .map(|r| r.output)
}

fn records(host: &Host, event: Event) -> Vec<Record> {
    host.audit().flush().unwrap();
    host.audit()
        .records(0)
        .map(Result::unwrap)
        .filter(|r| r.entry.event == event)
        .collect()
}

/// What a test webhook receiver got: headers and body.
#[derive(Debug)]
struct Received {
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Its headers, with `name` set to `value`.
    fn headers_with(&self, name: &'static str, value: &str) -> http::HeaderMap {
        let mut headers = self.headers.clone();
        headers.insert(name, value.parse().unwrap());
        headers
    }

    /// Verify it as a receiver would, with the Standard Webhooks reference
    /// implementation, under the key `key`.
    fn verify(&self, key: &[u8]) -> Result<(), standardwebhooks::WebhookError> {
        standardwebhooks::Webhook::from_bytes(key.to_vec())
            .unwrap()
            .verify(&self.body, &self.headers)
    }
}

/// How a test receiver answers.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16),
    /// Read the request, never answer.
    Hang,
    /// 500 to the first request, 204 to the others.
    FailFirst,
}

/// An HTTP/1.1 receiver on loopback (hyper's server): every request it
/// reads is sent on the channel; it answers as told.
async fn receiver(answer: Answer) -> (String, mpsc::UnboundedReceiver<Received>) {
    use http_body_util::BodyExt as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (tx, answered) = (tx.clone(), Arc::clone(&answered));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (tx, answered) = (tx.clone(), Arc::clone(&answered));
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await?.to_bytes().to_vec();
                            let _ = tx.send(Received {
                                headers: parts.headers,
                                body,
                            });
                            let first =
                                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                            let status = match answer {
                                Answer::FailFirst if first => 500,
                                Answer::FailFirst => 204,
                                Answer::Status(status) => status,
                                Answer::Hang => {
                                    tokio::time::sleep(Duration::from_secs(60)).await;
                                    204
                                }
                            };
                            let mut response =
                                hyper::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, hyper::Error>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no webhook within 10 s")
        .unwrap()
}

fn errors_rule(window: Duration) -> AlertRule {
    AlertRule::new("say-errors", AlertMetric::ErrorRate, window, 0.5)
        .tools("misbehave/say")
        .min_calls(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_tool_trips_its_rule_signs_the_webhook_and_is_paused_until_resumed() {
    let data = tempfile::tempdir().unwrap();
    let (url, mut hook) = receiver(Answer::Status(200)).await;
    let mut alerts = AlertConfig::default();
    alerts.webhooks.push(Webhook::new("ops", &url, SECRET));
    alerts.rules.push(
        errors_rule(Duration::from_secs(60))
            .webhook("ops")
            .takeover(TakeoverAction::PauseTool),
    );
    let (host, _plugin) = host_with(alerts, data.path()).await;

    assert!(say(&host, false).await.is_ok());
    assert!(say(&host, true).await.is_err());
    assert!(host.alerts().is_empty(), "1 failure of 2 is under 0.5");
    assert!(say(&host, true).await.is_err());

    // Fired: on the list, on the record, paused.
    let firing = host.alerts();
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(
        (firing[0].state, firing[0].tool.as_deref()),
        ("firing", Some("say"))
    );
    assert_eq!(firing[0].takeover.as_deref(), Some("pause_tool"));
    let fired = records(&host, Event::AlertFired);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].entry.decision.as_deref(), Some("say-errors"));
    let takeovers = records(&host, Event::Takeover);
    assert_eq!(takeovers.len(), 1);
    assert_eq!(takeovers[0].entry.decision.as_deref(), Some("pause"));
    assert_eq!(
        takeovers[0].entry.principal.as_deref(),
        Some("alert:say-errors")
    );
    let paused = say(&host, false).await.unwrap_err();
    assert_eq!(paused.kind(), "tool_paused");
    assert_eq!(paused.class(), airlock_host::ErrorClass::Refused);
    assert!(paused.to_string().contains("alert:say-errors"), "{paused}");
    // Other tools of the plugin still run.
    host.call(CallRequest::new("misbehave/echo", "{}"))
        .await
        .unwrap();
    let pauses = host.pauses().unwrap();
    assert_eq!(pauses.len(), 1);
    assert_eq!(pauses[0].target, "misbehave/say");

    // The webhook got the alert, signed as Standard Webhooks specifies:
    // a receiver's library verifies it under the secret, and refuses it
    // under another, with the body or its id changed, or replayed with
    // another time (the signature covers the timestamp).
    let got = next(&mut hook).await;
    got.verify(SECRET.as_bytes()).unwrap();
    let refused = |result: Result<(), standardwebhooks::WebhookError>| {
        matches!(
            result,
            Err(standardwebhooks::WebhookError::InvalidSignature)
        )
    };
    assert!(refused(got.verify(b"another secret of length")));
    let tampered = Received {
        headers: got.headers.clone(),
        body: [&got.body[..], b" "].concat(),
    };
    assert!(refused(tampered.verify(SECRET.as_bytes())));
    let key = standardwebhooks::Webhook::from_bytes(SECRET.as_bytes().to_vec()).unwrap();
    let sent_at: i64 = got.header("webhook-timestamp").unwrap().parse().unwrap();
    for (header, value) in [
        ("webhook-id", "msg_another".to_owned()),
        ("webhook-timestamp", (sent_at + 1).to_string()),
    ] {
        let error = key
            .verify(&got.body, &got.headers_with(header, &value))
            .unwrap_err();
        assert!(
            matches!(error, standardwebhooks::WebhookError::InvalidSignature),
            "{header}: {error}"
        );
    }
    // An old capture sent again is refused for its age, its signature
    // valid or not.
    let old = (sent_at - 600).to_string();
    assert!(matches!(
        key.verify(&got.body, &got.headers_with("webhook-timestamp", &old)),
        Err(standardwebhooks::WebhookError::TimestampTooOldError)
    ));
    assert!(got.header("webhook-id").unwrap().starts_with("msg_"));
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["rule"], "say-errors");
    assert_eq!(body["state"], "firing");
    assert_eq!(body["plugin"], "misbehave");
    assert_eq!(body["tool"], "say");
    assert_eq!(body["metric"], "error_rate");

    // A human resumes it: recorded, and the tool runs again.
    let resumed = host
        .resume("misbehave/say", "ops-alice", Some("fixed upstream"))
        .await
        .unwrap();
    assert!(resumed.is_some());
    assert!(
        host.resume("misbehave/say", "ops-alice", None)
            .await
            .unwrap()
            .is_none()
    );
    let undone = records(&host, Event::TakeoverUndone);
    assert_eq!(undone.len(), 1);
    assert_eq!(undone[0].entry.principal.as_deref(), Some("ops-alice"));
    assert!(say(&host, false).await.is_ok());
    assert!(host.pauses().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_resolves_when_its_value_falls_and_the_webhook_hears_it() {
    let data = tempfile::tempdir().unwrap();
    let (url, mut hook) = receiver(Answer::Status(204)).await;
    let mut alerts = AlertConfig::default();
    alerts.webhooks.push(Webhook::new("ops", &url, SECRET));
    alerts
        .rules
        .push(errors_rule(Duration::from_millis(400)).webhook("ops"));
    let (host, _plugin) = host_with(alerts, data.path()).await;
    for _ in 0..3 {
        let _ = say(&host, true).await;
    }
    assert_eq!(host.alerts()[0].state, "firing");
    assert_eq!(
        serde_json::from_slice::<Value>(&next(&mut hook).await.body).unwrap()["state"],
        "firing"
    );
    // No calls: the window empties and the alert resolves at a check.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let moved = host.check_alerts().await.unwrap();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].state, "resolved");
    assert_eq!(host.alerts()[0].state, "resolved");
    assert_eq!(records(&host, Event::AlertResolved).len(), 1);
    let resolved: Value = serde_json::from_slice(&next(&mut hook).await.body).unwrap();
    assert_eq!(resolved["state"], "resolved");
    // Nothing more to move.
    assert!(host.check_alerts().await.unwrap().is_empty());
}

/// A `resolved` raised while its `firing` waits to be tried again goes
/// out after it: a receiver never sees an alert resolve, then fire. (Each
/// went out on its own: the `resolved` overtook the `firing` retrying, and
/// the receiver was left with the alert firing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alerts_resolved_never_overtakes_its_firing_being_retried() {
    let data = tempfile::tempdir().unwrap();
    let (url, mut hook) = receiver(Answer::FailFirst).await;
    let mut alerts = AlertConfig::default();
    alerts.webhooks.push(
        Webhook::new("ops", &url, SECRET)
            .max_attempts(3)
            .backoff(Duration::from_secs(2)),
    );
    alerts
        .rules
        .push(errors_rule(Duration::from_millis(300)).webhook("ops"));
    let (host, _plugin) = host_with(alerts, data.path()).await;
    for _ in 0..3 {
        let _ = say(&host, true).await;
    }
    let state = |r: Received| {
        serde_json::from_slice::<Value>(&r.body).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // The first attempt is refused; the next waits 2 s.
    let first = next(&mut hook).await;
    first.verify(SECRET.as_bytes()).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let moved = host.check_alerts().await.unwrap();
    assert_eq!(moved[0].state, "resolved");
    let retried = next(&mut hook).await;
    let resolved = next(&mut hook).await;
    // A retry is the same delivery (its id), signed again at its own time;
    // the resolution is another delivery.
    retried.verify(SECRET.as_bytes()).unwrap();
    assert_eq!(retried.header("webhook-id"), first.header("webhook-id"));
    let time = |r: &Received| -> i64 { r.header("webhook-timestamp").unwrap().parse().unwrap() };
    assert!(time(&retried) > time(&first), "{retried:?} {first:?}");
    assert_ne!(resolved.header("webhook-id"), first.header("webhook-id"));
    assert_eq!(state(first), "firing");
    assert_eq!(state(retried), "firing");
    assert_eq!(state(resolved), "resolved");
}

/// A webhook configured with a Standard Webhooks secret (`whsec_` and
/// base64, as a receiver's library generates it) signs with the key it
/// encodes: the receiver verifies with the same string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_webhooks_secret_signs_with_the_key_it_encodes() {
    const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let data = tempfile::tempdir().unwrap();
    let (url, mut hook) = receiver(Answer::Status(204)).await;
    let mut alerts = AlertConfig::default();
    alerts.webhooks.push(Webhook::new("ops", &url, WHSEC));
    alerts
        .rules
        .push(errors_rule(Duration::from_secs(60)).webhook("ops"));
    let (host, _plugin) = host_with(alerts, data.path()).await;
    for _ in 0..3 {
        let _ = say(&host, true).await;
    }
    let got = next(&mut hook).await;
    let receiver = standardwebhooks::Webhook::new(WHSEC).unwrap();
    receiver.verify(&got.body, &got.headers).unwrap();
    // Not the secret's text as a key.
    assert!(got.verify(WHSEC.as_bytes()).is_err());
}

/// When the host stops, alerts still being tried get a grace period, then
/// each is recorded undelivered, saying so. (A process that exited
/// dropped them: neither delivered nor recorded.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_left_when_the_host_stops_are_recorded_undelivered() {
    let data = tempfile::tempdir().unwrap();
    let (hanging, mut hanging_rx) = receiver(Answer::Hang).await;
    let (failing, mut failing_rx) = receiver(Answer::Status(500)).await;
    let mut alerts = AlertConfig::default();
    for (name, url) in [("hanging", &hanging), ("failing", &failing)] {
        alerts.webhooks.push(
            Webhook::new(name, url, SECRET)
                .max_attempts(5)
                .timeout(Duration::from_secs(30))
                .backoff(Duration::from_secs(30)),
        );
    }
    alerts.rules.push(
        errors_rule(Duration::from_secs(60))
            .min_calls(1)
            .webhook("hanging")
            .webhook("failing"),
    );
    let (host, _plugin) = host_with(alerts, data.path()).await;
    assert!(say(&host, true).await.is_err());
    // One attempt under way, one waiting to try again.
    next(&mut hanging_rx).await;
    next(&mut failing_rx).await;
    assert!(records(&host, Event::AlertUndelivered).is_empty());
    host.close_alerts(Duration::from_millis(200)).await;
    let mut reasons: Vec<String> = records(&host, Event::AlertUndelivered)
        .iter()
        .map(|r| r.entry.reason.clone().unwrap())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "webhook failing: 1 attempt(s); the host stopped before another attempt; the last answered HTTP 500",
            "webhook hanging: 1 attempt(s); the host stopped during the attempt",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_down_slow_or_failing_never_delay_a_call_and_are_recorded_undelivered() {
    let data = tempfile::tempdir().unwrap();
    // Down: a port nothing listens on.
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", listener.local_addr().unwrap())
    };
    let (slow, _slow_rx) = receiver(Answer::Hang).await;
    let (failing, mut failing_rx) = receiver(Answer::Status(500)).await;
    let mut alerts = AlertConfig::default();
    // A call waiting for the slow one would take at least 4 s.
    for (name, url) in [("down", &down), ("slow", &slow), ("failing", &failing)] {
        alerts.webhooks.push(
            Webhook::new(name, url, SECRET)
                .max_attempts(2)
                .timeout(Duration::from_secs(2))
                .backoff(Duration::from_millis(50)),
        );
    }
    alerts.rules.push(
        errors_rule(Duration::from_secs(60))
            .min_calls(1)
            .webhook("down")
            .webhook("slow")
            .webhook("failing"),
    );
    let (host, _plugin) = host_with(alerts, data.path()).await;
    // Warm the plugin, then time the call that fires the alert.
    assert!(
        host.call(CallRequest::new("misbehave/echo", "{}"))
            .await
            .is_ok()
    );
    let started = Instant::now();
    assert!(say(&host, true).await.is_err());
    let took = started.elapsed();
    assert_eq!(host.alerts().len(), 1);
    assert!(
        took < Duration::from_millis(1500),
        "the call that fired waited for its webhooks: {took:?}"
    );
    // The failing receiver saw both attempts.
    next(&mut failing_rx).await;
    next(&mut failing_rx).await;
    // Every webhook ends up recorded undelivered, within its bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    let undelivered = loop {
        let found = records(&host, Event::AlertUndelivered);
        if found.len() == 3 || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut reasons: Vec<String> = undelivered
        .iter()
        .map(|r| r.entry.reason.clone().unwrap())
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].starts_with("webhook down: 2 attempt(s); cannot connect"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("webhook failing: 2 attempt(s); answered HTTP 500"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].starts_with("webhook slow: 2 attempt(s); no answer within 2s"),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_takeover_switches_the_host_and_the_takeover_limit_holds() {
    let data = tempfile::tempdir().unwrap();
    let mut alerts = AlertConfig::default();
    alerts.max_takeovers_per_hour = 1;
    alerts.rules.push(
        AlertRule::new(
            "traps",
            AlertMetric::ErrorRate,
            Duration::from_secs(60),
            0.5,
        )
        .tools("misbehave/panic")
        .min_calls(1)
        .takeover(TakeoverAction::ReadOnly),
    );
    alerts.rules.push(
        AlertRule::new(
            "fails",
            AlertMetric::ErrorRate,
            Duration::from_secs(60),
            0.5,
        )
        .tools("misbehave/fail")
        .min_calls(1)
        .takeover(TakeoverAction::PauseTool),
    );
    let (host, _plugin) = host_with(alerts, data.path()).await;
    let trap = host
        .call(CallRequest::new("misbehave/panic", "{}"))
        .await
        .unwrap_err();
    assert_eq!(trap.kind(), "guest_trap");
    let mode = host.mode().unwrap().unwrap();
    assert!(mode.read_only);
    assert_eq!(mode.by, "alert:traps");
    // Writes are refused; reads run.
    assert_eq!(
        say(&host, false).await.unwrap_err().kind(),
        "read_only_mode"
    );
    host.call(CallRequest::new("misbehave/echo", "{}"))
        .await
        .unwrap();
    // The second rule fires, but the limit of one takeover an hour holds:
    // recorded as suppressed, and the tool is not paused.
    let failed = host
        .call(CallRequest::new("misbehave/fail", "{}"))
        .await
        .unwrap_err();
    assert_eq!(failed.kind(), "tool_error");
    let decisions: Vec<String> = records(&host, Event::Takeover)
        .into_iter()
        .map(|r| r.entry.decision.unwrap())
        .collect();
    assert_eq!(decisions, ["read_only", "suppressed"]);
    assert!(host.pauses().unwrap().is_empty());
    let failed = host
        .call(CallRequest::new("misbehave/fail", "{}"))
        .await
        .unwrap_err();
    assert_eq!(failed.kind(), "tool_error", "not paused");
    assert_eq!(records(&host, Event::ModeChanged).len(), 1);
}

/// A copy of the built `text` plugin as `version`.
fn text_version(version: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(PLUGINS_DIR).join("text");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let manifest = dir.path().join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text.replacen(
        "version = \"0.1.0\"",
        &format!("version = \"{version}\""),
        1,
    );
    std::fs::write(&manifest, text).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_takeover_stops_the_canary_that_trips_its_rule() {
    let data = tempfile::tempdir().unwrap();
    let mut alerts = AlertConfig::default();
    alerts.rules.push(
        AlertRule::new(
            "refusals",
            AlertMetric::RefusalsPerMinute,
            Duration::from_secs(60),
            3.0,
        )
        .tools("text/*")
        .takeover(TakeoverAction::Rollback),
    );
    let host =
        Arc::new(Host::new(HostConfig::default().data_dir(data.path()).alerts(alerts)).unwrap());
    let (one, two) = (text_version("1.0.0"), text_version("2.0.0"));
    for dir in [&one, &two] {
        host.install(&Package::from_dir(dir.path()).unwrap(), "ops")
            .await
            .unwrap();
    }
    host.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
        .await
        .unwrap();
    host.set_rollout(&RolloutRequest::new("text", "2.0.0", 99, "ops"))
        .await
        .unwrap();
    assert!(host.rollouts().unwrap()[0].canary.is_some());
    // Arguments its schema refuses: three refusals a minute trip the rule.
    for _ in 0..3 {
        let refused = host
            .call(CallRequest::new(
                "text/slugify",
                json!({"text": 5}).to_string(),
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), "arguments_invalid");
    }
    let rollout = &host.rollouts().unwrap()[0];
    assert!(rollout.canary.is_none(), "{rollout:?}");
    assert_eq!(rollout.serving, "1.0.0");
    let decisions: Vec<String> = records(&host, Event::Takeover)
        .into_iter()
        .map(|r| r.entry.decision.unwrap())
        .collect();
    assert_eq!(decisions, ["rollback"]);
}

/// An alert's rollback undoes one change, never more: firing again (or
/// firing on another host for the same incident) after its rollback
/// stopped the canary, it rolled the serving version back too, to an older
/// one an upgrade had replaced. The second is refused and recorded; an
/// operator can still roll back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alerts_rollback_undoes_one_change_never_two() {
    let data = tempfile::tempdir().unwrap();
    let mut alerts = AlertConfig::default();
    // A refused rollback gives its count back: at two an hour, the third
    // firing below is not suppressed.
    alerts.max_takeovers_per_hour = 2;
    alerts.rules.push(
        AlertRule::new(
            "refusals",
            AlertMetric::RefusalsPerMinute,
            Duration::from_secs(1),
            3.0,
        )
        .tools("text/*")
        .takeover(TakeoverAction::Rollback),
    );
    let host =
        Arc::new(Host::new(HostConfig::default().data_dir(data.path()).alerts(alerts)).unwrap());
    let versions = [
        text_version("1.0.0"),
        text_version("2.0.0"),
        text_version("3.0.0"),
    ];
    for dir in &versions {
        host.install(&Package::from_dir(dir.path()).unwrap(), "ops")
            .await
            .unwrap();
    }
    // The canary takes (nearly) every call: the calls refused below are
    // its own, so its alert's rollback stops it.
    for (version, percent) in [("1.0.0", 100), ("2.0.0", 100), ("3.0.0", 99)] {
        host.set_rollout(&RolloutRequest::new("text", version, percent, "ops"))
            .await
            .unwrap();
    }
    let refuse = || async {
        let refused = host
            .call(CallRequest::new(
                "text/slugify",
                json!({"text": 5}).to_string(),
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), "arguments_invalid");
    };
    // One refusal a second is 60 a minute: the rule fires, the canary stops.
    refuse().await;
    let rollout = host.rollouts().unwrap()[0].clone();
    assert_eq!(
        (rollout.serving.as_str(), rollout.canary.is_none()),
        ("2.0.0", true)
    );
    // Fired again on the version that serves now (its own alert), twice,
    // a window apart: that version is not the one a rollback took out.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        host.check_alerts().await.unwrap();
        refuse().await;
    }
    let rollout = host.rollouts().unwrap()[0].clone();
    assert_eq!(rollout.serving, "2.0.0", "not walked back to 1.0.0");
    let takeovers = records(&host, Event::Takeover);
    let made: Vec<(&str, &str)> = takeovers
        .iter()
        .map(|r| {
            (
                r.entry.decision.as_deref().unwrap_or(""),
                r.entry.reason.as_deref().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(made.len(), 3, "{made:?}");
    for (decision, reason) in &made[1..] {
        assert_eq!(*decision, "rollback", "not suppressed: {made:?}");
        assert!(reason.contains("already a rollback"), "{made:?}");
    }
    // An operator decides to go further.
    host.rollback("text", "ops", Some("back to 1.0.0"))
        .await
        .unwrap();
    assert_eq!(host.rollouts().unwrap()[0].serving, "1.0.0");

    // A canary an operator stops: the alert firing after on its calls
    // does not undo the change before (2.0.0 → 3.0.0 stays).
    for (version, percent) in [("2.0.0", 100), ("3.0.0", 100), ("1.0.0", 50)] {
        host.set_rollout(&RolloutRequest::new("text", version, percent, "ops"))
            .await
            .unwrap();
    }
    host.rollback("text", "ops", Some("stop the canary"))
        .await
        .unwrap();
    let rollout = host.rollouts().unwrap()[0].clone();
    assert_eq!(
        (rollout.serving.as_str(), rollout.canary.is_none()),
        ("3.0.0", true)
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    host.check_alerts().await.unwrap();
    refuse().await;
    assert_eq!(
        host.rollouts().unwrap()[0].serving,
        "3.0.0",
        "an alert after an operator's rollback undoes nothing"
    );
    let takeovers = records(&host, Event::Takeover);
    let last = takeovers.last().unwrap();
    assert!(
        last.entry
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("already a rollback (by ops)")),
        "{:?}",
        last.entry.reason
    );
}

/// Each version is evaluated on its own and an alert names it: the
/// serving version failing while a canary ran rolled back the canary — an
/// innocent one, and the failing version went on serving. The rollback
/// is refused now, recorded; the canary failing stops the canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alerts_rollback_takes_out_the_failing_version_never_an_innocent_canary() {
    let data = tempfile::tempdir().unwrap();
    let mut alerts = AlertConfig::default();
    alerts.rules.push(
        AlertRule::new(
            "refusals",
            AlertMetric::RefusalsPerMinute,
            Duration::from_secs(60),
            3.0,
        )
        .tools("text/*")
        .takeover(TakeoverAction::Rollback),
    );
    let host =
        Arc::new(Host::new(HostConfig::default().data_dir(data.path()).alerts(alerts)).unwrap());
    let (one, two) = (text_version("1.0.0"), text_version("2.0.0"));
    for dir in [&one, &two] {
        host.install(&Package::from_dir(dir.path()).unwrap(), "ops")
            .await
            .unwrap();
    }
    host.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
        .await
        .unwrap();
    host.set_rollout(&RolloutRequest::new("text", "2.0.0", 50, "ops"))
        .await
        .unwrap();
    // A caller of each version (the split is sticky by principal).
    let mut callers: [Option<String>; 2] = [None, None];
    for i in 0..200 {
        let principal = format!("agent-{i}");
        let ran = host
            .call(
                CallRequest::new("text/slugify", json!({"text": "Hi"}).to_string())
                    .principal(&principal),
            )
            .await
            .unwrap();
        let slot = usize::from(ran.plugin_version == "2.0.0");
        callers[slot].get_or_insert(principal);
        if callers.iter().all(Option::is_some) {
            break;
        }
    }
    let [Some(on_serving), Some(on_canary)] = callers else {
        panic!("no caller of each version in 200: {callers:?}");
    };
    let refuse = |principal: String| {
        let host = Arc::clone(&host);
        async move {
            for _ in 0..3 {
                let refused = host
                    .call(
                        CallRequest::new("text/slugify", json!({"text": 5}).to_string())
                            .principal(&principal),
                    )
                    .await
                    .unwrap_err();
                assert_eq!(refused.kind(), "arguments_invalid");
            }
        }
    };
    refuse(on_serving).await;
    let rollout = host.rollouts().unwrap()[0].clone();
    assert_eq!(
        rollout.canary.map(|c| c.version).as_deref(),
        Some("2.0.0"),
        "the canary is not the version failing"
    );
    let fired = records(&host, Event::AlertFired);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].entry.plugin_version.as_deref(), Some("1.0.0"));
    let takeover = records(&host, Event::Takeover);
    let reason = takeover[0].entry.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains("text 1.0.0 is failing") && reason.contains("not the version failing"),
        "{reason}"
    );
    let listed = host.alerts();
    assert!(
        listed
            .iter()
            .any(|a| a.state == "firing" && a.version.as_deref() == Some("1.0.0")),
        "{listed:?}"
    );

    refuse(on_canary).await;
    let rollout = host.rollouts().unwrap()[0].clone();
    assert!(rollout.canary.is_none(), "{rollout:?}");
    assert_eq!(rollout.serving, "1.0.0");
    let fired = records(&host, Event::AlertFired);
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert_eq!(fired[1].entry.plugin_version.as_deref(), Some("2.0.0"));
}

/// A canary that does not load here fails its callers before a version
/// is resolved: those failures were the tool's, with no version, and the
/// rollback they tripped was aimed at nothing in particular. They count
/// against the version the rollout routed them to, so the canary stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_does_not_load_is_the_version_its_alert_rolls_back() {
    let data = tempfile::tempdir().unwrap();
    let mut alerts = AlertConfig::default();
    alerts.rules.push(
        AlertRule::new(
            "errors",
            AlertMetric::ErrorRate,
            Duration::from_secs(60),
            0.5,
        )
        .min_calls(3)
        .tools("text/*")
        .takeover(TakeoverAction::Rollback),
    );
    let config = || {
        HostConfig::default()
            .data_dir(data.path())
            .alerts(alerts.clone())
    };
    {
        let host = Host::new(config()).unwrap();
        for version in ["1.0.0", "2.0.0"] {
            let dir = text_version(version);
            host.install(&Package::from_dir(dir.path()).unwrap(), "ops")
                .await
                .unwrap();
        }
        host.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
            .await
            .unwrap();
        host.set_rollout(&RolloutRequest::new("text", "2.0.0", 99, "ops"))
            .await
            .unwrap();
    }
    // The data directory's copy of 2.0.0 edited: it no longer loads.
    airlock_tests::edit_materialized(data.path(), "2.0.0");
    let host = Host::new(config()).unwrap();
    for _ in 0..3 {
        let failed = host
            .call(CallRequest::new(
                "text/slugify",
                json!({"text": "Hi"}).to_string(),
            ))
            .await;
        assert!(failed.is_err(), "{failed:?}");
    }
    let fired = records(&host, Event::AlertFired);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].entry.plugin_version.as_deref(), Some("2.0.0"));
    let rollout = host.rollouts().unwrap()[0].clone();
    assert!(rollout.canary.is_none(), "{rollout:?}");
    assert_eq!(rollout.serving, "1.0.0");
}

#[test]
fn malformed_alert_rules_are_refused_when_the_host_starts() {
    let mut alerts = AlertConfig::default();
    alerts.rules.push(
        AlertRule::new("r", AlertMetric::ErrorRate, Duration::from_secs(60), 0.5).webhook("nope"),
    );
    let error = Host::new(HostConfig::default().alerts(alerts)).unwrap_err();
    assert_eq!(error.kind(), "config");
    assert!(
        error.to_string().contains("alerts.rules[0].webhooks[0]"),
        "{error}"
    );
}

// ------------------------------------------------------------- retries

/// `misbehave` with one call slot, a one-second timeout, and a retry
/// policy on `echo` (read) and `say` (write).
fn one_slot() -> PluginDir {
    install(
        "misbehave",
        &read(airlock_tests::MISBEHAVE),
        "[capabilities]\nlog = true\n\n\
         [limits]\ntimeout_ms = 1000\nmax_concurrency = 1\nfuel = 1_000_000_000_000_000\n\n\
         [[tools]]\nname = \"spin\"\nrisk = \"read\"\n\n\
         [[tools]]\nname = \"echo\"\nrisk = \"read\"\nretry = { attempts = 3, backoff_ms = 50, budget_ms = 5000 }\n\n\
         [[tools]]\nname = \"say\"\nrisk = \"write\"\nretry = { attempts = 3, backoff_ms = 50, budget_ms = 5000 }\n",
    )
}

/// Two `spin` calls that hold `misbehave`'s one call slot for about a
/// second each, one after the other: calls arriving meanwhile wait a
/// second, then get `plugin_busy`. Each ends `deadline_exceeded`.
async fn hold_the_slot(host: &Arc<Host>) -> [JoinHandle<Result<CallResponse, CallError>>; 2] {
    let spin = || {
        let host = Arc::clone(host);
        tokio::spawn(async move { host.call(CallRequest::new("misbehave/spin", "{}")).await })
    };
    let first = spin();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = spin();
    tokio::time::sleep(Duration::from_millis(50)).await;
    [first, second]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_only_for_reads_and_keyed_calls() {
    let data = tempfile::tempdir().unwrap();
    let plugin = one_slot();
    let host = Arc::new(Host::new(HostConfig::default().data_dir(data.path())).unwrap());
    host.load_plugin(plugin.path()).await.unwrap();
    let [first, second] = hold_the_slot(&host).await;
    let echo = tokio::spawn({
        let host = Arc::clone(&host);
        async move {
            host.call(CallRequest::new("misbehave/echo", r#"{"a":1}"#))
                .await
        }
    });
    let write = tokio::spawn({
        let host = Arc::clone(&host);
        async move {
            host.call(
                CallRequest::new("misbehave/say", r#"{"text":"x"}"#).trace_id("unkeyed-write"),
            )
            .await
        }
    });
    let keyed = tokio::spawn({
        let host = Arc::clone(&host);
        async move {
            host.call(
                CallRequest::new("misbehave/say", r#"{"text":"y"}"#)
                    .trace_id("keyed-write")
                    .idempotency_key("say-once"),
            )
            .await
        }
    });
    // A write without a key is not run again: its busy refusal stands.
    assert_eq!(write.await.unwrap().unwrap_err().kind(), "plugin_busy");
    // The read waits out the second spin on its next attempt.
    let echoed = echo.await.unwrap().unwrap();
    assert_eq!(echoed.output, json!({"a": 1}));
    // A keyed write is: the failure released its key, it never ran.
    assert_eq!(keyed.await.unwrap().unwrap().output, json!({"done": true}));
    for spin in [first, second] {
        assert_eq!(spin.await.unwrap().unwrap_err().kind(), "deadline_exceeded");
    }
    // Each attempt is on the record, under one trace id.
    let outcomes = |trace: &str| -> Vec<String> {
        records(&host, Event::CallFinished)
            .into_iter()
            .filter(|r| r.entry.trace_id.as_deref() == Some(trace))
            .map(|r| r.entry.outcome.clone().unwrap())
            .collect()
    };
    // Without a trace id of the caller's, the first attempt's call id is
    // every attempt's.
    assert_ne!(echoed.trace_id, echoed.call_id);
    assert_eq!(outcomes(&echoed.trace_id), ["plugin_busy", "ok"]);
    assert_eq!(outcomes("unkeyed-write"), ["plugin_busy"]);
    assert_eq!(outcomes("keyed-write"), ["plugin_busy", "ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_retry_policy_replaces_the_manifests() {
    use airlock_host::{Policy, RetryPolicy};
    let data = tempfile::tempdir().unwrap();
    // `echo` asks for retries in its manifest; `say` does not.
    let plugin = install(
        "misbehave",
        &read(airlock_tests::MISBEHAVE),
        "[capabilities]\nlog = true\n\n\
         [limits]\ntimeout_ms = 1000\nmax_concurrency = 1\nfuel = 1_000_000_000_000_000\n\n\
         [[tools]]\nname = \"spin\"\nrisk = \"read\"\n\n\
         [[tools]]\nname = \"echo\"\nrisk = \"read\"\nretry = { attempts = 3, backoff_ms = 50, budget_ms = 5000 }\n\n\
         [[tools]]\nname = \"say\"\nrisk = \"write\"\n",
    );
    // The operator turns the plugin's retries off, but for `say`.
    let mut policy = Policy::default();
    let retry = |attempts| RetryPolicy {
        attempts,
        backoff_ms: 50,
        budget_ms: 5000,
    };
    policy.retry.insert("misbehave/*".into(), retry(1));
    policy.retry.insert("misbehave/say".into(), retry(3));
    let host =
        Arc::new(Host::new(HostConfig::default().data_dir(data.path()).policy(policy)).unwrap());
    host.load_plugin(plugin.path()).await.unwrap();
    let [first, second] = hold_the_slot(&host).await;
    let echo = tokio::spawn({
        let host = Arc::clone(&host);
        async move {
            host.call(CallRequest::new("misbehave/echo", r#"{"a":1}"#))
                .await
        }
    });
    let keyed = tokio::spawn({
        let host = Arc::clone(&host);
        async move {
            host.call(
                CallRequest::new("misbehave/say", r#"{"text":"y"}"#).idempotency_key("say-once"),
            )
            .await
        }
    });
    // The manifest's retries are off: the busy refusal stands.
    assert_eq!(echo.await.unwrap().unwrap_err().kind(), "plugin_busy");
    // The policy's: the keyed write waits out the second spin.
    assert_eq!(keyed.await.unwrap().unwrap().output, json!({"done": true}));
    for spin in [first, second] {
        assert_eq!(spin.await.unwrap().unwrap_err().kind(), "deadline_exceeded");
    }
}

#[test]
fn a_retry_policy_out_of_bounds_or_naming_no_tool_is_refused() {
    use airlock_host::{Policy, RetryPolicy};
    let retry = |attempts, budget_ms| RetryPolicy {
        attempts,
        backoff_ms: 100,
        budget_ms,
    };
    for (name, policy, expected) in [
        ("billing", retry(3, 1000), "policy.retry: `billing` is not"),
        (
            "Billing/*",
            retry(3, 1000),
            "policy.retry: `Billing/*` is not",
        ),
        ("billing/re fund", retry(3, 1000), "is not a `plugin/tool`"),
        (
            "billing/refund",
            retry(0, 1000),
            "policy.retry.\"billing/refund\": attempts must be between 1 and 10",
        ),
        (
            "billing/*",
            retry(11, 1000),
            "attempts must be between 1 and 10",
        ),
        (
            "billing/*",
            retry(3, 0),
            "policy.retry.\"billing/*\": budget_ms must be between 1 and 60000",
        ),
    ] {
        let mut p = Policy::default();
        p.retry.insert(name.into(), policy);
        let error = Host::new(HostConfig::default().policy(p)).unwrap_err();
        assert_eq!(error.kind(), "config", "{name}");
        assert!(error.to_string().contains(expected), "{name}: {error}");
    }
}

// ----------------------------------------------------------- readiness

#[tokio::test]
async fn readiness_passes_a_ready_plugin_and_names_what_an_unready_one_misses() {
    use airlock_host::{ReadinessCheck, ReadinessConfig};
    let data = tempfile::tempdir().unwrap();
    let ready = install(
        "steady",
        &read(airlock_tests::MISBEHAVE),
        "[capabilities]\nlog = true\n\n[limits]\nfuel = 1_000_000_000\ntimeout_ms = 2000\nmemory_mb = 32\n\n\
         [[tools]]\nname = \"echo\"\nrisk = \"read\"\n",
    );
    // `say` writes without an idempotency key, and its `password`
    // argument is not redacted; `fail` is irreversible without a rate
    // limit; the limits are the host's defaults.
    let unready = install(
        "shaky",
        &read(airlock_tests::MISBEHAVE),
        "[capabilities]\nlog = true\n\n\
         [[tools]]\nname = \"say\"\nrisk = \"write\"\n\n\
         [[tools]]\nname = \"fail\"\nrisk = \"irreversible\"\n",
    );
    // `steady` ships a case that passes; `shaky` one that fails.
    std::fs::write(
        ready.path().join("cases.jsonl"),
        r#"{"name": "echo", "tool": "echo", "arguments": {"a": 1}, "expect": {"output": {"a": 1}}}"#,
    )
    .unwrap();
    std::fs::write(
        unready.path().join("cases.jsonl"),
        r#"{"name": "fail", "tool": "fail", "arguments": {}, "expect": {"output": {"done": true}}}"#,
    )
    .unwrap();
    let host = Host::new(HostConfig::default().data_dir(data.path())).unwrap();
    host.load_plugin(ready.path()).await.unwrap();
    host.load_plugin(unready.path()).await.unwrap();
    let config = ReadinessConfig::default();

    let reports = host.readiness(None, &config).await.unwrap();
    assert_eq!(reports.len(), 2);
    let steady = reports.iter().find(|r| r.plugin == "steady").unwrap();
    assert!(steady.ready, "{steady:?}");
    assert!(steady.missing_required.is_empty());
    // Not required by default, so warnings: no rollback target, no
    // checkpoint yet, no alert rules, no approver.
    let warned: Vec<ReadinessCheck> = steady.warnings.iter().map(|f| f.check).collect();
    for check in [
        ReadinessCheck::RollbackTarget,
        ReadinessCheck::AuditDurable,
        ReadinessCheck::AlertRules,
        ReadinessCheck::Approver,
    ] {
        assert!(warned.contains(&check), "{check:?} in {warned:?}");
    }
    assert!(steady.passed.contains(&ReadinessCheck::ReadOnlyTakeover));
    assert!(
        steady.passed.contains(&ReadinessCheck::EvalCases),
        "{steady:?}"
    );

    let shaky = host
        .readiness(Some("shaky"), &config)
        .await
        .unwrap()
        .remove(0);
    assert!(!shaky.ready);
    let missing: Vec<(ReadinessCheck, Option<&str>)> = shaky
        .missing_required
        .iter()
        .map(|f| (f.check, f.tool.as_deref()))
        .collect();
    assert_eq!(
        missing,
        [
            (ReadinessCheck::Limits, None),
            (ReadinessCheck::RateLimit, Some("fail")),
            (ReadinessCheck::Idempotency, Some("fail")),
            (ReadinessCheck::Idempotency, Some("say")),
            (ReadinessCheck::Redaction, Some("say")),
        ]
    );
    let eval = shaky
        .warnings
        .iter()
        .find(|f| f.check == ReadinessCheck::EvalCases)
        .unwrap();
    assert_eq!(eval.reason, "1 of 1 evaluation cases fail");
    let redaction = &shaky.missing_required[4];
    assert!(redaction.reason.contains("/password"), "{redaction:?}");
    assert!(redaction.fix.contains("redact"), "{redaction:?}");
    // The operator chooses: with nothing required, it is ready with
    // warnings.
    let lenient = ReadinessConfig::requiring([]);
    let shaky = host
        .readiness(Some("shaky"), &lenient)
        .await
        .unwrap()
        .remove(0);
    assert!(shaky.ready);
    assert!(!shaky.warnings.is_empty());
    // An unknown plugin is an error, not an empty report.
    let unknown = host.readiness(Some("nope"), &config).await.unwrap_err();
    assert_eq!(unknown.kind(), "unknown_plugin");
}

#[tokio::test]
async fn the_alerts_firing_gauge_follows_the_alerts() {
    let data = tempfile::tempdir().unwrap();
    let mut alerts = AlertConfig::default();
    alerts
        .rules
        .push(errors_rule(Duration::from_millis(300)).min_calls(1));
    let (host, _plugin) = host_with(alerts, data.path()).await;
    let gauge = |host: &Host| {
        host.metrics()
            .unwrap()
            .lines()
            .find(|l| l.starts_with("airlock_alerts_firing "))
            .map(str::to_owned)
    };
    assert_eq!(gauge(&host).as_deref(), Some("airlock_alerts_firing 0"));
    let _ = say(&host, true).await;
    assert_eq!(gauge(&host).as_deref(), Some("airlock_alerts_firing 1"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    host.check_alerts().await.unwrap();
    assert_eq!(gauge(&host).as_deref(), Some("airlock_alerts_firing 0"));
}
