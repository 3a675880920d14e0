//! The host's metric families (Prometheus, by `prometheus-client`): what
//! each finished call adds, and the gauges a scrape reads from the host.
//!
//! # Security
//! Every label value is the host's own: a plugin, version or tool name of
//! a *resolved* call (names the operator installed), an error kind (a fixed
//! set), a store name. A call refused before it resolves carries empty
//! plugin and tool labels, so a caller naming made-up tools cannot grow
//! the number of series.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::CallSummary;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: Arc<str>,
    version: Arc<str>,
    tool: Arc<str>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    plugin: Arc<str>,
    tool: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PluginLabels {
    pub(super) plugin: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn duration_histogram() -> Histogram {
    // 50 µs to ~26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

fn fuel_histogram() -> Histogram {
    // 1,000 to ~4e12 units.
    Histogram::new(exponential_buckets(1_000.0, 4.0, 16))
}

/// The families, registered in one registry.
#[derive(Debug)]
pub(super) struct Metrics {
    pub(super) registry: Registry,
    calls: Family<CallLabels, Counter>,
    duration: Family<ToolLabels, Histogram, fn() -> Histogram>,
    fuel: Family<ToolLabels, Histogram, fn() -> Histogram>,
    refusals: Family<KindLabels, Counter>,
    replays: Family<ToolLabels, Counter>,
    rate_limited: Family<ToolLabels, Counter>,
    store_errors: Family<StoreLabels, Counter>,
    pub(super) approvals_pending: Gauge,
    pub(super) approval_oldest_age: FloatGauge,
    pub(super) instances_in_use: Gauge,
    pub(super) instances_max: Gauge,
    pub(super) call_slots_in_use: Family<PluginLabels, Gauge>,
    pub(super) call_slots_max: Family<PluginLabels, Gauge>,
    pub(super) audit_queue_depth: Gauge,
    pub(super) audit_checkpoint_age: FloatGauge,
    pub(super) alerts_firing: Gauge,
    /// The empty label value of a call that never resolved to a tool.
    unresolved: Arc<str>,
}

impl Metrics {
    pub(super) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("airlock");
        let m = Metrics {
            unresolved: Arc::from(""),
            calls: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            fuel: Family::new_with_constructor(fuel_histogram),
            refusals: Family::default(),
            replays: Family::default(),
            rate_limited: Family::default(),
            store_errors: Family::default(),
            approvals_pending: Gauge::default(),
            approval_oldest_age: FloatGauge::default(),
            instances_in_use: Gauge::default(),
            instances_max: Gauge::default(),
            call_slots_in_use: Family::default(),
            call_slots_max: Family::default(),
            audit_queue_depth: Gauge::default(),
            audit_checkpoint_age: FloatGauge::default(),
            alerts_firing: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "calls",
            "Finished tool calls, by plugin, version, tool and outcome (ok or the error kind; empty plugin and tool for calls refused before they resolved)",
            m.calls.clone(),
        );
        r.register_with_unit(
            "call_duration",
            "Wall time of a call through the whole pipeline",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register(
            "call_fuel",
            "Fuel a call's guest consumed (calls that ran)",
            m.fuel.clone(),
        );
        r.register(
            "refusals",
            "Calls refused before their guest ran, by error kind",
            m.refusals.clone(),
        );
        r.register(
            "idempotency_replays",
            "Calls answered by replaying an earlier outcome under the same idempotency key",
            m.replays.clone(),
        );
        r.register(
            "rate_limited",
            "Calls refused by a rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "store_errors",
            "Store failures met by calls (ledger, workspace, rate_limits, mode, plugins, backend, audit) and failed audit log writes (audit_write)",
            m.store_errors.clone(),
        );
        r.register(
            "approvals_pending",
            "Approvals waiting for a decision",
            m.approvals_pending.clone(),
        );
        r.register_with_unit(
            "approval_oldest_pending_age",
            "Age of the oldest approval waiting for a decision (0 when none)",
            Unit::Seconds,
            m.approval_oldest_age.clone(),
        );
        r.register(
            "instances_in_use",
            "Instance pool slots held by running calls",
            m.instances_in_use.clone(),
        );
        r.register(
            "instances_max",
            "Instance pool size (0: instances allocated on demand)",
            m.instances_max.clone(),
        );
        r.register(
            "call_slots_in_use",
            "A plugin's call slots held by running calls",
            m.call_slots_in_use.clone(),
        );
        r.register(
            "call_slots_max",
            "A plugin's call slots (its concurrency cap)",
            m.call_slots_max.clone(),
        );
        r.register(
            "audit_queue_depth",
            "Audit records sealed but not yet in the store",
            m.audit_queue_depth.clone(),
        );
        r.register_with_unit(
            "audit_last_checkpoint_age",
            "Time since the audit log last signed a checkpoint",
            Unit::Seconds,
            m.audit_checkpoint_age.clone(),
        );
        r.register(
            "alerts_firing",
            "Alert rules firing now",
            m.alerts_firing.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Count one finished call.
    pub(super) fn observe(&self, call: &CallSummary) {
        // Labels share the names the call's plugin and tool hold: a
        // lookup clones three `Arc`s, not three strings.
        let (plugin, version, tool) = match &call.resolved {
            Some(r) => (&r.plugin, &r.version, &r.tool),
            None => (&self.unresolved, &self.unresolved, &self.unresolved),
        };
        self.calls
            .get_or_create(&CallLabels {
                plugin: Arc::clone(plugin),
                version: Arc::clone(version),
                tool: Arc::clone(tool),
                outcome: call.outcome,
            })
            .inc();
        let tool_labels = ToolLabels {
            plugin: Arc::clone(plugin),
            tool: Arc::clone(tool),
        };
        self.duration
            .get_or_create(&tool_labels)
            .observe(call.duration.as_secs_f64());
        if call.ran {
            #[allow(clippy::cast_precision_loss)]
            self.fuel
                .get_or_create(&tool_labels)
                .observe(call.fuel_used as f64);
        } else if call.outcome != super::OK {
            self.refusals
                .get_or_create(&KindLabels { kind: call.outcome })
                .inc();
        }
        if call.replayed {
            self.replays.get_or_create(&tool_labels).inc();
        }
        if call.outcome == "rate_limited" {
            self.rate_limited.get_or_create(&tool_labels).inc();
        }
        if let Some(store) = call.store_error {
            self.store_errors
                .get_or_create(&StoreLabels { store })
                .inc();
        }
    }

    /// Bring the audit log's write-failure count up to `total`.
    pub(super) fn audit_write_failures(&self, total: u64) {
        let counter = self.store_errors.get_or_create(&StoreLabels {
            store: "audit_write",
        });
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    }
}
