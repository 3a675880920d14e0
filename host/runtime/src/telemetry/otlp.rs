//! OpenTelemetry spans for each call and each of its pipeline steps,
//! exported over OTLP/HTTP (protobuf).
//!
//! Spans are built once the call has finished, from the times its steps
//! recorded ([`CallSummary`]), with their real start and end times: the
//! call itself carries no span machinery. They go to the SDK's batch
//! processor, whose queue is bounded (a full queue drops spans) and whose
//! export runs on its own thread with a timeout: an endpoint that is slow
//! or down loses spans, never delays a call.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags,
    TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracerProvider,
    Tracer,
};

use super::{CallSummary, OK, TelemetryConfig};

thread_local! {
    /// The trace id the next root span gets (see [`CallTraceIds`]).
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Ids for spans: random, except a root span's trace id, which is the
/// call's own (set just before it is built, on the same thread), so the
/// `trace_id` of a call's audit records leads to its spans.
#[derive(Debug)]
struct CallTraceIds(RandomIdGenerator);

impl IdGenerator for CallTraceIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .with(Cell::take)
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// The exporter and the tracer spans are built with.
#[derive(Debug)]
pub(super) struct Spans {
    provider: Option<SdkTracerProvider>,
    tracer: Tracer,
    /// [`TelemetryConfig::sample_all`].
    sample_all: bool,
}

/// `endpoint` with the OTLP traces path when it has no path of its own.
pub(super) fn traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    if after_scheme.contains('/') {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

impl Spans {
    /// Set up export to `config.otlp_endpoint`.
    ///
    /// # Errors
    /// A message when the exporter cannot be built.
    pub(super) fn new(endpoint: &str, config: &TelemetryConfig) -> Result<Spans, String> {
        let url = traces_url(endpoint);
        let timeout = config.otlp_timeout;
        // The blocking HTTP client starts its own runtime thread: built on
        // a plain thread, never inside the caller's async runtime.
        let exporter = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    opentelemetry_otlp::SpanExporter::builder()
                        .with_http()
                        .with_endpoint(url.clone())
                        .with_timeout(timeout)
                        .build()
                })
                .join()
        })
        .map_err(|_| "the OTLP exporter could not be built".to_owned())?
        .map_err(|e| format!("the OTLP exporter could not be built: {e}"))?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(config.max_queued_spans)
                    .with_scheduled_delay(Duration::from_millis(500))
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_id_generator(CallTraceIds(RandomIdGenerator::default()))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("airlock");
        Ok(Spans {
            provider: Some(provider),
            tracer,
            sample_all: config.sample_all,
        })
    }

    /// Export what is queued now; blocks until it is sent or the export
    /// timeout passes (call it off the async executor).
    pub(super) fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            tracing::debug!(error = %e, "spans not exported");
        }
    }

    /// Build the spans of one finished call: `airlock.call` (a child of the
    /// caller's span when it gave a `traceparent`), and one child per step
    /// it went through.
    pub(super) fn record(&self, call: &CallSummary) {
        let Some(trace_id) = call.otel_trace_id else {
            return;
        };
        let parent = match call.parent {
            Some(parent) if !parent.sampled && !self.sample_all => return,
            Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(parent.trace_id),
                SpanId::from_bytes(parent.parent_id),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            )),
            None => {
                NEXT_TRACE_ID.with(|next| next.set(Some(TraceId::from_bytes(trace_id))));
                Context::new()
            }
        };
        let start = call.started_at;
        let at = |offset: Duration| start + offset;
        let mut attributes = vec![
            KeyValue::new("airlock.call_id", call.call_id.clone()),
            KeyValue::new("airlock.trace_id", call.trace_id.clone()),
            KeyValue::new("airlock.outcome", call.outcome),
            KeyValue::new("airlock.tool", call.tool_ref.clone()),
        ];
        if let Some(r) = &call.resolved {
            attributes.push(KeyValue::new("airlock.plugin", Arc::clone(&r.plugin)));
            attributes.push(KeyValue::new(
                "airlock.plugin.version",
                Arc::clone(&r.version),
            ));
            attributes.push(KeyValue::new("airlock.risk", r.risk));
        }
        if call.ran {
            attributes.push(KeyValue::new(
                "airlock.fuel_used",
                i64::try_from(call.fuel_used).unwrap_or(i64::MAX),
            ));
        }
        if call.replayed {
            attributes.push(KeyValue::new("airlock.replayed", true));
        }
        let root = self.tracer.build_with_context(
            SpanBuilder::from_name("airlock.call")
                .with_kind(SpanKind::Server)
                .with_start_time(start)
                .with_attributes(attributes),
            &parent,
        );
        NEXT_TRACE_ID.with(|next| next.set(None));
        let cx = parent.with_span(root);
        let mut step_start = Duration::ZERO;
        for (step, end) in call.steps() {
            let mut span = self.tracer.build_with_context(
                SpanBuilder::from_name(Cow::Borrowed(step.span_name()))
                    .with_kind(SpanKind::Internal)
                    .with_start_time(at(step_start)),
                &cx,
            );
            if call.failed_at == Some(step) {
                span.set_status(Status::error(call.outcome));
            }
            span.end_with_timestamp(at(end));
            step_start = end;
        }
        let root = cx.span();
        if call.outcome != OK {
            root.set_status(Status::error(call.outcome));
        }
        root.end_with_timestamp(at(call.duration));
    }
}

impl Drop for Spans {
    /// Shut the exporter down off the executor: it flushes what is queued,
    /// which may wait for its timeout when the endpoint is down.
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = std::thread::Builder::new()
                .name("airlock-otlp-shutdown".into())
                .spawn(move || {
                    if let Err(e) = provider.shutdown() {
                        tracing::debug!(error = %e, "span exporter shutdown");
                    }
                });
        }
    }
}
