//! Metrics and traces: every metric family after real calls, the W3C
//! trace id in audit records, spans exported to a real OTLP/HTTP receiver
//! (decoded with the protocol's own messages), and an endpoint that is down
//! or never answers costing spans, never calls.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_host::audit_log::Filter;
use airlock_host::{
    ApprovalPolicy, Approver, CallError, CallRequest, Host, HostConfig, Policy, TelemetryConfig,
};
use airlock_tests::{PLUGINS_DIR, install, read, sha256_hex};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn shared_cache() -> &'static std::path::Path {
    static CACHE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn policy() -> Policy {
    Policy {
        approvals: ApprovalPolicy {
            approvers: vec![Approver {
                name: "alice".into(),
                token_sha256: sha256_hex(b"alice-token"),
                operator: false,
            }],
            ..ApprovalPolicy::default()
        },
        ..Policy::default()
    }
}

async fn host(telemetry: TelemetryConfig) -> Host {
    let host = Host::new(
        HostConfig::default()
            .cache_dir(shared_cache())
            .policy(policy())
            .telemetry(telemetry),
    )
    .unwrap();
    host.load_plugin(format!("{PLUGINS_DIR}/text"))
        .await
        .unwrap();
    host
}

fn slugify(text: &str) -> CallRequest {
    CallRequest::new("text/slugify", json!({ "text": text }).to_string())
}

/// The value of the sample `name{labels}` in `metrics`, `labels` written
/// as the exposition writes them.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[tokio::test]
async fn metrics_count_calls_refusals_replays_rate_limits_and_read_the_host() {
    let host = host(TelemetryConfig::default()).await;
    // A rate-limited copy of the text plugin, and one whose tool needs
    // approval.
    let component = read(&format!("{PLUGINS_DIR}/text/text.wasm"));
    let limited = install(
        "limited",
        &component,
        "[capabilities]\nlog = true\n\n[[tools]]\nname = \"slugify\"\nrisk = \"read\"\nrate_limit = \"1/min\"\n",
    );
    host.load_plugin(limited.path()).await.unwrap();
    let gated = install(
        "gated",
        &component,
        "[capabilities]\nlog = true\n\n[[tools]]\nname = \"slugify\"\nrisk = \"write\"\napproval = \"required\"\n",
    );
    host.load_plugin(gated.path()).await.unwrap();

    for _ in 0..3 {
        host.call(slugify("Hello, World")).await.unwrap();
    }
    // A replay.
    host.call(slugify("again").idempotency_key("k1"))
        .await
        .unwrap();
    let replay = host
        .call(slugify("again").idempotency_key("k1"))
        .await
        .unwrap();
    assert!(replay.replayed_from.is_some());
    // Refusals: a tool the caller made up, bad arguments, a rate limit.
    for i in 0..5 {
        let e = host
            .call(CallRequest::new(format!("text/made-up-{i}"), "{}"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "unknown_tool");
    }
    let e = host
        .call(CallRequest::new("nobody/nothing", "{}"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "unknown_plugin");
    let e = host
        .call(CallRequest::new("text/slugify", "[]"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "arguments_not_object");
    let limited_call = || CallRequest::new("limited/slugify", json!({"text": "x"}).to_string());
    host.call(limited_call()).await.unwrap();
    let e = host.call(limited_call()).await.unwrap_err();
    assert_eq!(e.kind(), "rate_limited");
    // An approval left pending.
    let e = host
        .call(CallRequest::new(
            "gated/slugify",
            json!({"text": "x"}).to_string(),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "approval_pending");
    host.telemetry().set_alerts_firing(2);

    let metrics = host.metrics().unwrap();
    let version = host.plugin("text").unwrap().version().to_owned();
    assert_eq!(
        sample(
            &metrics,
            &format!(
                "airlock_calls_total{{plugin=\"text\",version=\"{version}\",tool=\"slugify\",outcome=\"ok\"}}"
            )
        ),
        Some(5.0),
        "{metrics}"
    );
    // Calls refused before they resolved carry no caller-chosen label: the
    // five made-up tools and the unknown plugin are two series, not six.
    assert_eq!(
        sample(
            &metrics,
            "airlock_calls_total{plugin=\"\",version=\"\",tool=\"\",outcome=\"unknown_tool\"}"
        ),
        Some(5.0),
        "{metrics}"
    );
    assert!(!metrics.contains("made-up"), "{metrics}");
    assert!(!metrics.contains("nobody"), "{metrics}");
    assert_eq!(
        sample(&metrics, "airlock_refusals_total{kind=\"unknown_tool\"}"),
        Some(5.0)
    );
    assert_eq!(
        sample(&metrics, "airlock_refusals_total{kind=\"unknown_plugin\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "airlock_refusals_total{kind=\"arguments_not_object\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "airlock_refusals_total{kind=\"rate_limited\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "airlock_rate_limited_total{plugin=\"limited\",tool=\"slugify\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "airlock_idempotency_replays_total{plugin=\"text\",tool=\"slugify\"}"
        ),
        Some(1.0)
    );
    // Latency: every call of the tool, replay included.
    assert_eq!(
        sample(
            &metrics,
            "airlock_call_duration_seconds_count{plugin=\"text\",tool=\"slugify\"}"
        ),
        Some(6.0),
        "{metrics}"
    );
    // Fuel: the calls that ran.
    assert_eq!(
        sample(
            &metrics,
            "airlock_call_fuel_count{plugin=\"text\",tool=\"slugify\"}"
        ),
        Some(4.0)
    );
    assert!(
        sample(
            &metrics,
            "airlock_call_fuel_sum{plugin=\"text\",tool=\"slugify\"}"
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(sample(&metrics, "airlock_approvals_pending"), Some(1.0));
    assert!(sample(&metrics, "airlock_approval_oldest_pending_age_seconds").is_some());
    assert_eq!(sample(&metrics, "airlock_alerts_firing"), Some(2.0));
    assert_eq!(sample(&metrics, "airlock_instances_in_use"), Some(0.0));
    assert!(sample(&metrics, "airlock_instances_max").unwrap() > 0.0);
    assert_eq!(
        sample(&metrics, "airlock_call_slots_in_use{plugin=\"text\"}"),
        Some(0.0)
    );
    assert!(sample(&metrics, "airlock_call_slots_max{plugin=\"text\"}").unwrap() >= 1.0);
    assert!(sample(&metrics, "airlock_audit_queue_depth").is_some());
    assert!(sample(&metrics, "airlock_audit_last_checkpoint_age_seconds").is_some());
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
}

#[tokio::test]
async fn metrics_off_counts_nothing_but_still_reads_the_host() {
    let host = host(TelemetryConfig::default().metrics(false)).await;
    host.call(slugify("x")).await.unwrap();
    let metrics = host.metrics().unwrap();
    assert!(!metrics.contains("airlock_calls_total{"), "{metrics}");
    assert_eq!(sample(&metrics, "airlock_approvals_pending"), Some(0.0));
}

#[tokio::test]
async fn a_traceparent_makes_the_w3c_trace_id_the_calls_trace_id_in_every_record() {
    let host = host(TelemetryConfig::default()).await;
    let response = host
        .call(slugify("x").traceparent(TRACEPARENT).trace_id("ignored"))
        .await
        .unwrap();
    assert_eq!(response.trace_id, TRACE_ID);
    let records = host
        .audit()
        .query(
            &Filter {
                call_id: Some(response.call_id.clone()),
                ..Filter::default()
            },
            10,
        )
        .unwrap();
    // One record (a `read` call done within the group-commit window), or
    // its intent and outcome.
    assert!(matches!(records.len(), 1 | 2), "{records:?}");
    assert_eq!(records.last().unwrap().entry.outcome.as_deref(), Some("ok"));
    for record in &records {
        assert_eq!(record.entry.trace_id.as_deref(), Some(TRACE_ID));
    }
    // A refused call's record carries it too.
    let e = host
        .call(CallRequest::new("text/nothing", "{}").traceparent(TRACEPARENT))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "unknown_tool");
    let (head, _) = host.audit().head().unwrap();
    let last = host.audit().get(head).unwrap().unwrap();
    assert_eq!(last.entry.trace_id.as_deref(), Some(TRACE_ID));
}

#[tokio::test]
async fn a_malformed_traceparent_is_refused_before_anything_runs() {
    let host = host(TelemetryConfig::default()).await;
    for bad in [
        "garbage",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx",
    ] {
        let e = host.call(slugify("x").traceparent(bad)).await.unwrap_err();
        assert_eq!(e.kind(), "invalid_traceparent", "{bad:?}");
        assert!(matches!(e, CallError::InvalidIdentifier { .. }));
    }
}

// ------------------------------------------------------------------ OTLP

/// A real OTLP/HTTP receiver: answers every POST to `/v1/traces` with 200
/// and keeps the decoded spans.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&spans);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let kept = Arc::clone(&kept);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let kept = Arc::clone(&kept);
                        async move { receive(request, &kept).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { url, spans }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

async fn receive(
    request: hyper::Request<hyper::body::Incoming>,
    kept: &Mutex<Vec<Span>>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, hyper::Error> {
    use http_body_util::BodyExt as _;
    assert_eq!(request.uri().path(), "/v1/traces");
    assert_eq!(request.headers()["content-type"], "application/x-protobuf");
    let body = request.into_body().collect().await?.to_bytes();
    let export = ExportTraceServiceRequest::decode(body).unwrap();
    let mut spans = kept.lock().unwrap();
    for resource in export.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref()?.value.clone());
        assert_eq!(service, Some(AnyValue::StringValue("airlock-test".into())));
        for scope in resource.scope_spans {
            spans.extend(scope.spans);
        }
    }
    Ok(hyper::Response::new(http_body_util::Full::new(
        bytes::Bytes::new(),
    )))
}

fn attribute(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.clone())
}

fn otlp(endpoint: &str) -> TelemetryConfig {
    let mut config = TelemetryConfig::default()
        .otlp_endpoint(endpoint)
        .otlp_timeout(Duration::from_secs(3));
    config.service_name = "airlock-test".into();
    config
}

async fn flush(host: &Arc<Host>) {
    let host = Arc::clone(host);
    tokio::task::spawn_blocking(move || host.telemetry().flush_spans())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_a_real_otlp_receiver_with_parent_links_and_attributes() {
    let receiver = Receiver::start().await;
    let host = Arc::new(host(otlp(&receiver.url)).await);
    assert!(host.telemetry().exports_spans());
    let ok = host
        .call(slugify("Hello").traceparent(TRACEPARENT))
        .await
        .unwrap();
    let refused = host
        .call(CallRequest::new("text/slugify", "[]"))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), "arguments_not_object");
    flush(&host).await;
    let spans = receiver.spans();

    // The call under the caller's span.
    let root = spans
        .iter()
        .find(|s| s.name == "airlock.call" && hex::encode(&s.trace_id) == TRACE_ID)
        .expect("the call's span");
    assert_eq!(hex::encode(&root.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(
        attribute(root, "airlock.call_id"),
        Some(AnyValue::StringValue(ok.call_id.clone()))
    );
    assert_eq!(
        attribute(root, "airlock.outcome"),
        Some(AnyValue::StringValue("ok".into()))
    );
    assert_eq!(
        attribute(root, "airlock.plugin"),
        Some(AnyValue::StringValue("text".into()))
    );
    assert_eq!(
        attribute(root, "airlock.tool"),
        Some(AnyValue::StringValue("text/slugify".into()))
    );
    assert!(matches!(
        attribute(root, "airlock.fuel_used"),
        Some(AnyValue::IntValue(fuel)) if fuel > 0
    ));
    let steps: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == root.span_id)
        .collect();
    let mut names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "airlock.admit",
            "airlock.approval",
            "airlock.complete",
            "airlock.idempotency",
            "airlock.identifiers",
            "airlock.intent",
            "airlock.outcome",
            "airlock.resolve",
            "airlock.run",
            "airlock.validate",
        ]
    );
    for step in &steps {
        assert_eq!(step.trace_id, root.trace_id);
        assert!(step.start_time_unix_nano >= root.start_time_unix_nano);
        assert!(step.end_time_unix_nano <= root.end_time_unix_nano);
    }

    // A refused call without a traceparent: a root span whose trace id is
    // the call id's, its steps up to the one that refused it, that one in
    // error.
    let refused_root = spans
        .iter()
        .find(|s| {
            s.name == "airlock.call"
                && attribute(s, "airlock.outcome")
                    == Some(AnyValue::StringValue("arguments_not_object".into()))
        })
        .expect("the refused call's span");
    assert!(refused_root.parent_span_id.is_empty());
    let call_id = match attribute(refused_root, "airlock.call_id") {
        Some(AnyValue::StringValue(id)) => id,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        hex::encode(&refused_root.trace_id),
        call_id.replace('-', "")
    );
    assert_eq!(refused_root.status.as_ref().unwrap().code, 2); // error
    let mut refused_steps: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == refused_root.span_id)
        .collect();
    refused_steps.sort_by_key(|s| s.start_time_unix_nano);
    let names: Vec<&str> = refused_steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "airlock.identifiers",
            "airlock.resolve",
            "airlock.admit",
            "airlock.validate"
        ]
    );
    assert_eq!(refused_steps[3].status.as_ref().unwrap().code, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsampled_traceparent_exports_nothing() {
    let receiver = Receiver::start().await;
    let host = Arc::new(host(otlp(&receiver.url)).await);
    let unsampled = TRACEPARENT.replace("-01", "-00");
    host.call(slugify("x").traceparent(unsampled))
        .await
        .unwrap();
    flush(&host).await;
    assert!(receiver.spans().is_empty());
}

/// With `sample_all`, a caller's unsampled `traceparent` does not keep its
/// call out of the traces: the span is a child of the caller's, in its
/// trace.
#[tokio::test(flavor = "multi_thread")]
async fn an_unsampled_traceparent_is_exported_when_the_operator_samples_all() {
    let receiver = Receiver::start().await;
    let mut config = otlp(&receiver.url);
    config.sample_all = true;
    let host = Arc::new(host(config).await);
    let unsampled = TRACEPARENT.replace("-01", "-00");
    host.call(slugify("x").traceparent(unsampled))
        .await
        .unwrap();
    flush(&host).await;
    let spans = receiver.spans();
    assert!(
        spans.iter().any(|s| s.name == "airlock.call"),
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
}

/// Calls with the exporter pointed at `endpoint` take about as long as
/// calls without one: the export never sits on a call's path.
async fn calls_are_not_delayed_by(endpoint: &str) {
    let host = Arc::new(host(otlp(endpoint)).await);
    let started = Instant::now();
    for i in 0..200 {
        let call = Instant::now();
        host.call(slugify(&format!("call {i}"))).await.unwrap();
        assert!(
            call.elapsed() < Duration::from_secs(2),
            "call {i} took {:?}",
            call.elapsed()
        );
    }
    // 200 calls well inside one export timeout (3 s) each would need.
    assert!(started.elapsed() < Duration::from_secs(20));
    // Flushing waits at most for the export timeout, and loses the spans.
    let flushed = Instant::now();
    flush(&host).await;
    assert!(flushed.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_otlp_endpoint_that_is_down_loses_spans_never_calls() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    calls_are_not_delayed_by(&endpoint).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_otlp_endpoint_that_never_answers_loses_spans_never_calls() {
    // Accepts connections, reads, never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer).await;
            let _ = stream.write_all(b"").await;
            held.push(stream);
        }
    });
    calls_are_not_delayed_by(&endpoint).await;
}

#[test]
fn malformed_telemetry_settings_are_config_errors_naming_the_key() {
    let cases: [(TelemetryConfig, &str); 5] = [
        (
            TelemetryConfig::default().otlp_endpoint("https://collector:4318"),
            "telemetry.otlp_endpoint",
        ),
        (
            TelemetryConfig::default().otlp_endpoint("http://"),
            "telemetry.otlp_endpoint",
        ),
        (
            TelemetryConfig::default().otlp_endpoint("http://a b"),
            "telemetry.otlp_endpoint",
        ),
        (
            TelemetryConfig::default().otlp_timeout(Duration::from_secs(3600)),
            "telemetry.otlp_timeout_ms",
        ),
        (
            {
                let mut c = TelemetryConfig::default();
                c.service_name = String::new();
                c
            },
            "telemetry.service_name",
        ),
    ];
    for (config, key) in cases {
        let error = Host::new(HostConfig::default().telemetry(config)).unwrap_err();
        assert_eq!(error.kind(), "config");
        assert!(error.to_string().contains(key), "{error}");
    }
}
