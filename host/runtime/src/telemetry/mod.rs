//! What the host tells its operator about the calls it runs: metrics
//! (Prometheus text, [`Host::metrics`](crate::Host::metrics)) and traces
//! (OpenTelemetry spans exported over OTLP/HTTP, feature `otlp`).
//!
//! Each finished call is reported once, by the pipeline, as a
//! [`CallSummary`]: what it was (plugin, version, tool), how it ended (`ok`
//! or its error kind), what it cost (wall time, fuel) and when each of its
//! steps ended. Everything here is computed from that summary after the
//! call: the steps themselves only read the clock.
//!
//! The host's state that is not about one call (approvals pending, the
//! instance pool, the audit log's queue and checkpoints) is read when the
//! metrics are scraped.

mod metrics;
#[cfg(feature = "otlp")]
mod otlp;
pub(crate) mod traceparent;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{CallError, CallResult, Store};
use crate::pipeline::{CallRequest, CallResponse};
use crate::plugin::{Plugin, Tool};
use traceparent::TraceParent;

/// The `outcome` of a call that succeeded.
pub(crate) const OK: &str = "ok";

/// Default time an OTLP export may take before it is abandoned.
pub const DEFAULT_OTLP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of finished spans waiting for export; past it, new spans
/// are dropped.
pub const DEFAULT_MAX_QUEUED_SPANS: usize = 8192;

/// What a host measures and where its traces go.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// Count calls into the metric families ([`Host::metrics`](crate::Host::metrics)).
    /// Off, the families stay empty (the scrape-time gauges are still
    /// read).
    pub metrics: bool,
    /// Where to export spans: an OTLP/HTTP endpoint (`http://host:4318`;
    /// `/v1/traces` is added when it has no path). `None`: no spans are
    /// built. Needs the `otlp` feature.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the exported spans.
    pub service_name: String,
    /// How long one export may take before it is abandoned (and its spans
    /// lost).
    pub otlp_timeout: Duration,
    /// Finished spans waiting for export, at most; more are dropped.
    pub max_queued_spans: usize,
    /// Export the spans of calls whose `traceparent` says the caller does
    /// not sample them too (default: off, the caller's choice is
    /// followed). On, a caller cannot keep its calls out of the traces by
    /// sending `-00`; the audit log and the metrics have every call
    /// either way.
    pub sample_all: bool,
}

impl Default for TelemetryConfig {
    fn default() -> TelemetryConfig {
        TelemetryConfig {
            metrics: true,
            otlp_endpoint: None,
            service_name: "airlock".to_owned(),
            otlp_timeout: DEFAULT_OTLP_TIMEOUT,
            max_queued_spans: DEFAULT_MAX_QUEUED_SPANS,
            sample_all: false,
        }
    }
}

impl TelemetryConfig {
    /// Export spans to `endpoint` (OTLP/HTTP).
    pub fn otlp_endpoint(mut self, endpoint: impl Into<String>) -> TelemetryConfig {
        self.otlp_endpoint = Some(endpoint.into());
        self
    }

    /// Count calls into the metric families, or not.
    pub fn metrics(mut self, on: bool) -> TelemetryConfig {
        self.metrics = on;
        self
    }

    /// Abandon an export after `timeout`.
    pub fn otlp_timeout(mut self, timeout: Duration) -> TelemetryConfig {
        self.otlp_timeout = timeout;
        self
    }

    /// Check the values.
    ///
    /// # Errors
    /// A message naming the key at fault (`telemetry.…`).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(endpoint) = &self.otlp_endpoint {
            // A collector's URL may carry a key (in its credentials or
            // query): errors show its scheme and host only.
            let shown = crate::alerts::redacted_url(endpoint);
            let Some(rest) = endpoint.strip_prefix("http://") else {
                return Err(format!(
                    "telemetry.otlp_endpoint {shown:?} must be an http:// URL (OTLP/HTTP; send to a local collector for TLS)"
                ));
            };
            let host = rest.split('/').next().unwrap_or_default();
            if host.is_empty()
                || endpoint.len() > 2048
                || endpoint
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(format!(
                    "telemetry.otlp_endpoint {shown:?} is not a URL like http://127.0.0.1:4318"
                ));
            }
            // The traces path is appended to an endpoint without one: after
            // a query it would be part of the query, and spans would go to
            // `/` (a 404 logged at debug level).
            if endpoint.contains(['?', '#']) {
                return Err(format!(
                    "telemetry.otlp_endpoint {shown:?} has a query or fragment: give the collector's URL alone (http://host:4318 or its full traces path)"
                ));
            }
            if !cfg!(feature = "otlp") {
                return Err(
                    "telemetry.otlp_endpoint is set but this build has no OTLP export (feature `otlp` of airlock-host)".into(),
                );
            }
        }
        if self.service_name.is_empty()
            || self.service_name.len() > 256
            || self.service_name.chars().any(char::is_control)
        {
            return Err(
                "telemetry.service_name must be 1-256 characters without control characters".into(),
            );
        }
        if self.otlp_timeout < Duration::from_millis(100)
            || self.otlp_timeout > Duration::from_secs(60)
        {
            return Err("telemetry.otlp_timeout_ms must be between 100 and 60000".into());
        }
        if !(16..=1_000_000).contains(&self.max_queued_spans) {
            return Err("telemetry.max_queued_spans must be between 16 and 1000000".into());
        }
        Ok(())
    }
}

/// The host's metrics and span export: [`Host::telemetry`](crate::Host::telemetry).
pub struct Telemetry {
    config: TelemetryConfig,
    metrics: metrics::Metrics,
    #[cfg(feature = "otlp")]
    spans: Option<otlp::Spans>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Metrics, and spans exported where `config` says.
    pub(crate) fn new(config: TelemetryConfig) -> Result<Telemetry, String> {
        config.validate()?;
        #[cfg(feature = "otlp")]
        let spans = match &config.otlp_endpoint {
            Some(endpoint) => Some(otlp::Spans::new(endpoint, &config)?),
            None => None,
        };
        Ok(Telemetry {
            metrics: metrics::Metrics::new(),
            #[cfg(feature = "otlp")]
            spans,
            config,
        })
    }

    /// How it is set up.
    pub fn config(&self) -> &TelemetryConfig {
        &self.config
    }

    /// Whether spans are built and exported.
    pub fn exports_spans(&self) -> bool {
        #[cfg(feature = "otlp")]
        return self.spans.is_some();
        #[cfg(not(feature = "otlp"))]
        false
    }

    /// Report one finished call: count it, and build its spans.
    pub(crate) fn observe(&self, call: &CallSummary) {
        if self.config.metrics {
            self.metrics.observe(call);
        }
        #[cfg(feature = "otlp")]
        if let Some(spans) = &self.spans {
            spans.record(call);
        }
    }

    /// Set the `airlock_alerts_firing` gauge: how many alert rules fire now.
    pub fn set_alerts_firing(&self, firing: u64) {
        self.metrics
            .alerts_firing
            .set(i64::try_from(firing).unwrap_or(i64::MAX));
    }

    /// Send the spans queued for export now, waiting until they are sent or
    /// the export times out. It blocks the thread: from async code, call it
    /// through `spawn_blocking`. Without span export, nothing happens.
    pub fn flush_spans(&self) {
        #[cfg(feature = "otlp")]
        if let Some(spans) = &self.spans {
            spans.flush();
        }
    }

    /// Set the gauges read from the host at scrape time, then encode every
    /// family in the Prometheus text format.
    pub(crate) fn encode(&self, gauges: &ScrapeGauges) -> String {
        let m = &self.metrics;
        m.approvals_pending
            .set(i64::try_from(gauges.approvals_pending).unwrap_or(i64::MAX));
        m.approval_oldest_age
            .set(gauges.oldest_pending_approval.as_secs_f64());
        m.instances_in_use.set(i64::from(gauges.instances_in_use));
        m.instances_max.set(i64::from(gauges.instances_max));
        m.call_slots_in_use.clear();
        m.call_slots_max.clear();
        for (plugin, in_use, max) in &gauges.call_slots {
            let labels = metrics::PluginLabels {
                plugin: plugin.clone(),
            };
            m.call_slots_in_use
                .get_or_create(&labels)
                .set(i64::try_from(*in_use).unwrap_or(i64::MAX));
            m.call_slots_max
                .get_or_create(&labels)
                .set(i64::try_from(*max).unwrap_or(i64::MAX));
        }
        m.audit_queue_depth
            .set(i64::try_from(gauges.audit.queued).unwrap_or(i64::MAX));
        m.audit_checkpoint_age
            .set(gauges.audit.since_checkpoint.as_secs_f64());
        m.audit_write_failures(gauges.audit.write_failures);
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &m.registry) {
            // Writing to a String does not fail; keep what was written.
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        text
    }
}

/// What a scrape reads from the host.
#[derive(Debug)]
pub(crate) struct ScrapeGauges {
    pub(crate) approvals_pending: usize,
    pub(crate) oldest_pending_approval: Duration,
    pub(crate) instances_in_use: u32,
    pub(crate) instances_max: u32,
    /// `(plugin, slots in use, slots)`.
    pub(crate) call_slots: Vec<(String, u64, u64)>,
    pub(crate) audit: airlock_audit::AuditHealth,
}

/// The pipeline's steps, as spans name them.
#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Identifiers,
    Resolve,
    Admit,
    Validate,
    Idempotency,
    Approval,
    Intent,
    Run,
    Outcome,
    Complete,
}

#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
impl Step {
    const ALL: [Step; 10] = [
        Step::Identifiers,
        Step::Resolve,
        Step::Admit,
        Step::Validate,
        Step::Idempotency,
        Step::Approval,
        Step::Intent,
        Step::Run,
        Step::Outcome,
        Step::Complete,
    ];

    /// The span's name.
    pub(crate) fn span_name(self) -> &'static str {
        match self {
            Step::Identifiers => "airlock.identifiers",
            Step::Resolve => "airlock.resolve",
            Step::Admit => "airlock.admit",
            Step::Validate => "airlock.validate",
            Step::Idempotency => "airlock.idempotency",
            Step::Approval => "airlock.approval",
            Step::Intent => "airlock.intent",
            Step::Run => "airlock.run",
            Step::Outcome => "airlock.outcome",
            Step::Complete => "airlock.complete",
        }
    }
}

/// What the call resolved to.
#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub(crate) plugin: Arc<str>,
    pub(crate) version: Arc<str>,
    pub(crate) tool: Arc<str>,
    pub(crate) risk: &'static str,
}

/// One finished call, as the pipeline reports it (once, from
/// `Pipeline::call`).
#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
#[derive(Debug)]
pub(crate) struct CallSummary {
    pub(crate) call_id: String,
    /// The trace id its audit records carry.
    pub(crate) trace_id: String,
    /// The W3C trace id of its spans.
    pub(crate) otel_trace_id: Option<[u8; 16]>,
    /// The caller's span, from a valid `traceparent`.
    pub(crate) parent: Option<TraceParent>,
    /// `plugin/tool` once resolved; before, the reference as given, cut to
    /// 128 bytes (it is caller data).
    pub(crate) tool_ref: String,
    pub(crate) resolved: Option<Resolved>,
    /// The version the plugin's rollout routed it to, known before it was
    /// resolved (kept when that version failed to load).
    pub(crate) routed_version: Option<String>,
    /// `ok`, or the error's kind.
    pub(crate) outcome: &'static str,
    /// The call got past its intent record (steps 7–9 were entered).
    pub(crate) ran: bool,
    /// Answered by an idempotency replay.
    pub(crate) replayed: bool,
    pub(crate) fuel_used: u64,
    /// Wall time through the whole pipeline.
    pub(crate) duration: Duration,
    pub(crate) started_at: SystemTime,
    started: Instant,
    /// Which steps ended, and when, from `started` (when `timed`; else
    /// `Duration::ZERO`).
    marks: [Option<Duration>; Step::ALL.len()],
    /// Whether the steps are timed: only spans use their times, and a
    /// clock read per step is a tenth of a call's clock reads.
    timed: bool,
    /// The step that ended the call with an error.
    pub(crate) failed_at: Option<Step>,
    /// The store whose failure ended the call.
    pub(crate) store_error: Option<&'static str>,
}

/// The tool a call named, for its span before it is resolved: as named
/// when it is a plausible `plugin/tool` (at most 128 bytes of visible
/// ASCII), else bounded and escaped.
fn tool_for_span(tool: &str) -> String {
    if tool.len() <= 128 && tool.bytes().all(|b| b.is_ascii_graphic()) {
        tool.to_owned()
    } else {
        crate::identifiers::marked(tool)
    }
}

#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
impl CallSummary {
    /// A call starting now; `timed`: time each step (for its span).
    pub(crate) fn start(request: &CallRequest, call_id: String, timed: bool) -> CallSummary {
        let parent = request
            .traceparent
            .as_deref()
            .and_then(|t| TraceParent::parse(t).ok());
        // A call refused for its identifiers still has a span: what the
        // caller sent goes into it as the audit record has it, bounded and
        // escaped, never as sent (megabytes of control characters).
        let trace_id = match &parent {
            Some(parent) => parent.trace_id_hex(),
            None => request
                .trace_id
                .as_deref()
                .map_or_else(|| call_id.clone(), crate::identifiers::trace_id_for_record),
        };
        let otel_trace_id = match &parent {
            Some(parent) => Some(parent.trace_id),
            None => traceparent::trace_id_for(request.trace_id.as_deref(), &call_id),
        };
        CallSummary {
            trace_id,
            otel_trace_id,
            parent,
            tool_ref: tool_for_span(&request.tool),
            call_id,
            resolved: None,
            routed_version: None,
            outcome: OK,
            ran: false,
            replayed: false,
            fuel_used: 0,
            duration: Duration::ZERO,
            started_at: SystemTime::now(),
            started: Instant::now(),
            marks: [None; Step::ALL.len()],
            timed,
            failed_at: None,
            store_error: None,
        }
    }

    /// `step` has ended.
    pub(crate) fn mark(&mut self, step: Step) {
        self.marks[step as usize] = Some(if self.timed {
            self.started.elapsed()
        } else {
            Duration::ZERO
        });
    }

    /// The call resolved to `tool` of `plugin`.
    pub(crate) fn resolved(&mut self, plugin: &Plugin, tool: &Tool) {
        self.tool_ref = tool.id().to_owned();
        let (plugin_name, tool_name) = tool.shared_names();
        self.resolved = Some(Resolved {
            plugin: Arc::clone(plugin_name),
            version: Arc::clone(plugin.shared_version()),
            tool: Arc::clone(tool_name),
            risk: tool.risk().as_str(),
        });
    }

    /// The call has ended with `result`.
    pub(crate) fn finish(&mut self, result: &CallResult<CallResponse>) {
        self.duration = self.started.elapsed();
        let error = match result {
            Ok(response) => {
                self.replayed = response.replayed_from.is_some();
                return;
            }
            Err(error) => error,
        };
        self.outcome = error.kind();
        self.store_error = store_of(error);
        if matches!(error, CallError::ReplayedFailure { .. }) {
            self.replayed = true;
        }
        self.failed_at = if self.ran {
            Some(Step::Run)
        } else {
            // The step under way when it was refused ends now.
            let next = Step::ALL
                .into_iter()
                .find(|step| self.marks[*step as usize].is_none());
            if let Some(step) = next {
                self.marks[step as usize] = Some(self.duration);
            }
            next
        };
    }

    /// The steps the call went through, in order, with when each ended.
    pub(crate) fn steps(&self) -> impl Iterator<Item = (Step, Duration)> + '_ {
        Step::ALL
            .into_iter()
            .filter_map(|step| self.marks[step as usize].map(|end| (step, end)))
    }
}

/// The store whose failure `error` is, as metrics name it.
fn store_of(error: &CallError) -> Option<&'static str> {
    match error {
        CallError::AuditUnavailable(_) => Some("audit"),
        CallError::Store(e) => Some(match e.store {
            Store::Ledger => "ledger",
            Store::Workspace => "workspace",
            Store::RateLimits => "rate_limits",
            Store::Mode => "mode",
            Store::Plugins => "plugins",
            Store::Backend => "backend",
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collector's URL may carry a key: a refused endpoint is named by
    /// its scheme and host alone.
    #[test]
    fn a_refused_endpoint_is_not_quoted_whole() {
        for endpoint in [
            "http://collector:4318/v1/traces?api_key=s3cret",
            "https://user:s3cret@collector:4318",
            "http://collector:4318/v1/traces s3cret",
        ] {
            let err = TelemetryConfig::default()
                .otlp_endpoint(endpoint)
                .validate()
                .unwrap_err();
            assert!(!err.contains("s3cret"), "{err}");
            assert!(err.contains("collector:4318"), "{err}");
        }
    }

    /// A span named what the caller sent as it was sent: a 2 MB trace id
    /// of control characters was queued as such, 8,192 spans deep. Now it
    /// carries the audit record's bounded, escaped form.
    #[test]
    fn a_callers_trace_id_and_tool_reach_a_span_bounded_and_escaped() {
        let hostile = format!("\u{1b}[31m{}", "A".repeat(2_000_000));
        let request = CallRequest::new(format!("x/{hostile}"), "{}").trace_id(hostile.clone());
        let call = CallSummary::start(&request, "call-1".to_owned(), false);
        for text in [&call.trace_id, &call.tool_ref] {
            assert!(text.len() < 100, "{} bytes", text.len());
            assert!(!text.chars().any(char::is_control), "{text:?}");
            assert!(text.starts_with("[invalid, "), "{text:?}");
        }
        let fine = CallRequest::new("text/slugify", "{}").trace_id("trace-7");
        let call = CallSummary::start(&fine, "call-2".to_owned(), false);
        assert_eq!(call.trace_id, "trace-7");
        assert_eq!(call.tool_ref, "text/slugify");
    }
}
