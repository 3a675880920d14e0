//! The call pipeline: the one path by which any tool runs.
//!
//! [`Pipeline::call`] runs the steps in order (see `docs/architecture.md`,
//! "The call pipeline"); each step is one function:
//!
//! | step | what | where |
//! |------|------|-------|
//! | 0 | check the caller's identifiers, before any is recorded | [`Pipeline::check_identifiers`] (here), `identifiers::check` |
//! | 1 | resolve `plugin/tool` to the version its rollout gives the caller (or the plugins directory's plugin) and an exposed tool | [`Pipeline::resolve`] (here), `releases.rs` |
//! | 2 | admit: the host's mode, paused tools, rate limits | [`Pipeline::admit`] (`gate.rs`) |
//! | 3 | validate the arguments: size cap, JSON, object, input schema | [`validate_arguments`] (here) |
//! | 4 | claim the idempotency key, or replay the first outcome | [`Pipeline::claim_key`] (`gate.rs`) |
//! | 5 | approval gate | [`Pipeline::approval_gate`] (`gate.rs`) |
//! | 6 | intent record in the audit log (no record, no call) | `CallRecord::started` (`audit.rs`) |
//! | 7–9 | instantiate, call the tool, validate its result | [`run::run_tool`] (`run.rs`) |
//! | 10 | outcome record | `CallRecord::finished` (`audit.rs`) |
//! | 11 | complete the idempotency key | [`gate::KeyClaim::complete`] (`gate.rs`) |
//!
//! Each step marks its end in the call's [`CallSummary`]; the finished
//! call is reported once, by [`Pipeline::observe`] (metrics and spans).
//!
//! A refusal at steps 0–5 gets one refusal record. The idempotency key
//! claimed at step 4 is held by a [`gate::KeyClaim`] guard: whatever ends the call
//! before the guest may run releases it, so a step added later cannot
//! forget to.

pub(crate) mod gate;
mod request;
pub(crate) mod run;

use std::sync::Arc;

use airlock_audit::AuditLog;
use serde_json::Value;

use crate::approvals::Approvals;
use crate::audit::CallRecord;
use crate::bindings::exports::airlock::plugin::tools::CallContext;
use crate::cache::CompiledCache;
use crate::engine::SharedEngine;
use crate::error::{CallError, CallResult};
use crate::grants::WorkspaceScope;
use crate::host::{HostConfig, PluginTable};
use crate::identifiers;
use crate::ledger::Ledger;
use crate::manifest::FileAccess;
use crate::mode::ModeWatch;
use crate::plugin::{Plugin, Tool};
use crate::ratelimit::Limiter;
use crate::releases::Served;
use crate::schema;
use crate::telemetry::{CallSummary, Step, Telemetry};
use crate::workspace::Workspace;

pub(crate) use gate::MAX_IDEMPOTENCY_KEY_BYTES;
pub use request::{CallRequest, CallResponse};
use run::PreparedCall;

/// The parts of a host the pipeline uses, borrowed for one call.
pub(crate) struct Pipeline<'h> {
    pub(crate) engine: &'h SharedEngine,
    pub(crate) config: &'h HostConfig,
    pub(crate) plugins: &'h PluginTable,
    pub(crate) audit: &'h AuditLog,
    pub(crate) ledger: &'h Ledger,
    pub(crate) workspace: &'h Workspace,
    /// The order of each workspace key's operations across calls.
    pub(crate) workspace_order: &'h crate::grants::KeyOrder,
    pub(crate) mode: &'h ModeWatch,
    pub(crate) limiter: &'h Limiter,
    /// Installed versions and rollouts.
    pub(crate) served: &'h Served,
    /// Compiled components, for versions loaded on first use.
    pub(crate) cache: Option<&'h CompiledCache>,
    /// This host's name in shared stores (its audit chain, its calls'
    /// idempotency claims).
    pub(crate) origin: &'h str,
    pub(crate) approvals: Approvals<'h>,
    /// Paused tools and plugins.
    pub(crate) pauses: &'h crate::alerts::Pauses,
    pub(crate) telemetry: &'h Telemetry,
    /// Cancelled when the audit log begins to close.
    pub(crate) audit_closing: &'h tokio_util::sync::CancellationToken,
}

impl<'h> Pipeline<'h> {
    /// Run one tool call, `call_id` ([`new_call_id`]), through every step
    /// (see [`Host::call`](crate::Host::call)); with its outcome, the
    /// version of the plugin it resolved to (`None`: it did not resolve),
    /// which a failure does not carry, for the alert rules.
    pub(crate) async fn call(
        &self,
        request: &CallRequest,
        call_id: String,
    ) -> (CallResult<CallResponse>, Option<Arc<str>>) {
        let mut summary = CallSummary::start(request, call_id, self.telemetry.exports_spans());
        let result = self.steps(request, &mut summary).await;
        summary.finish(&result);
        self.observe(&summary);
        let version = match (&summary.resolved, &summary.routed_version) {
            (Some(resolved), _) => Some(Arc::clone(&resolved.version)),
            (None, routed) => routed.as_deref().map(Arc::from),
        };
        (result, version)
    }

    /// Report a finished call, once: the one place every call's outcome
    /// reaches whatever watches calls. (The alert rules, which may act
    /// through the whole host, are told by `Host::call`, right after.)
    fn observe(&self, summary: &CallSummary) {
        // Metrics and spans.
        self.telemetry.observe(summary);
    }

    /// The steps, in order, each marking its end in `summary`.
    async fn steps(
        &self,
        request: &CallRequest,
        summary: &mut CallSummary,
    ) -> CallResult<CallResponse> {
        self.approvals.sweep_if_due();
        let call_id = summary.call_id.clone();
        // 0. Identifiers, before any of them is recorded.
        let mut record = self.check_identifiers(request, summary).await?;
        summary.mark(Step::Identifiers);
        // 1. Resolve. The plugin is held (an `Arc`) until the call's
        // outcome, even if it is unloaded meanwhile.
        let (held_plugin, held_tool) = match self
            .resolve_routed(request, &mut summary.routed_version)
            .await
        {
            Ok(found) => found,
            Err(error) => {
                record.redact_at(self.known_pointers(&request.tool));
                record.arguments(&request.arguments, None);
                return Err(record.refused(error).await);
            }
        };
        let (plugin, tool) = (&*held_plugin, &*held_tool);
        record.resolved(plugin, tool);
        record.idempotency_key(request.idempotency_key.as_deref());
        summary.resolved(plugin, tool);
        summary.mark(Step::Resolve);
        // 2. Admit: the host's mode, paused tools, rate limits.
        let mut read_only = match self.admit(plugin, tool, &request.principal).await {
            Ok(read_only) => read_only,
            Err(error) => {
                record.arguments(&request.arguments, None);
                return Err(record.refused(error).await);
            }
        };
        let admitted = std::time::Instant::now();
        summary.mark(Step::Admit);
        // 3. Validate arguments before anything runs.
        let arguments =
            match validate_arguments(tool, &request.arguments, self.config.max_argument_bytes) {
                Ok(arguments) => arguments,
                Err(error) => {
                    record.arguments(&request.arguments, None);
                    return Err(record.refused(error).await);
                }
            };
        record.arguments(&request.arguments, Some(&arguments));
        summary.mark(Step::Validate);
        // 4. Idempotency: claim the key, or replay the first outcome. From
        // here until the guest may run, leaving releases the key.
        let claim = match self
            .claim_key(request, plugin, tool, &record, &call_id)
            .await
        {
            Ok(gate::Claimed::Run(claim)) => claim,
            Ok(gate::Claimed::Replay(mut replay)) => {
                replay.trace_id.clone_from(&summary.trace_id);
                return Ok(replay);
            }
            Err(error) => return Err(record.refused(error).await),
        };
        summary.mark(Step::Idempotency);
        // 5. Approval gate.
        let approval_id = match self
            .approval_gate(request, plugin, tool, &record, &call_id)
            .await
        {
            Ok(Some(approved)) => {
                record.approval(&approved.id);
                read_only = approved.read_only;
                Some(approved.id)
            }
            Ok(None) => None,
            Err(error) => return Err(record.refused(error).await),
        };
        summary.mark(Step::Approval);
        // 6. Intent record: no record, no call. (A `read` call of a plugin
        // that can only read holds it while it runs, within the log's
        // group-commit window: see `CallRecord::started`.)
        record.started().await?;
        summary.mark(Step::Intent);
        summary.ran = true;
        // The run sets it once the guest may start: from then on a
        // dropped call leaves its key's outcome unknown, not free.
        let started = claim.started();
        // 7–9. Instantiate, call, validate the output.
        let context = CallContext {
            trace_id: summary.trace_id.clone(),
            call_id,
            principal: request.principal.clone(),
        };
        tracing::debug!(tool = %tool.id(), call_id = %context.call_id, "calling tool");
        // A call run under an approval is also checked against the
        // rollout again: a rollback made while it waited for its slots
        // takes the version it was approved for out of service.
        let approval_ref = approval_id.as_deref();
        let recheck = || {
            let read_only = self.mode_and_pauses_now(plugin, tool)?;
            if let Some(id) = approval_ref {
                self.still_routed(id, request, plugin)?;
            }
            Ok(read_only)
        };
        // Boxed: the run's future is most of a call's state, and inline it
        // would be copied whole each time the futures around it move.
        let mut run = Box::pin(run::run_tool(
            self.engine,
            PreparedCall {
                plugin,
                tool,
                arguments: &arguments,
                context,
                workspace: self.workspace_scope(plugin, request, read_only),
                read_only,
                cancel: request.cancel.as_ref(),
                started: started.as_deref(),
                recheck: &recheck,
                admitted,
                approved: approval_ref.is_some(),
            },
        ));
        let (mut result, stats) = match record.held_for() {
            Some(window) => {
                // Polled first: a call done at its first poll never
                // registers the timer.
                tokio::select! {
                    biased;
                    done = &mut run => done,
                    // Past the window, or the log closing (it waits for
                    // what is held): the intent is written now.
                    () = tokio::time::sleep(window) => {
                        record.write_held_intent().await;
                        run.await
                    }
                    () = self.audit_closing.cancelled() => {
                        record.write_held_intent().await;
                        run.await
                    }
                }
            }
            None => run.await,
        };
        if let Ok(response) = &mut result {
            // (A copy: the run, which `recheck` lends it to, is still
            // held here. None but for approved calls.)
            response.approval_id.clone_from(&approval_id);
        }
        summary.fuel_used = stats.fuel_used;
        summary.mark(Step::Run);
        // 10. Outcome record. A call with no record at all (its intent
        // held, and the log refusing it now) does not return its result.
        if let Err(e) = record.finished(&result, &stats).await {
            result = Err(CallError::AuditUnavailable(e));
        }
        summary.mark(Step::Outcome);
        // 11. Complete the idempotency key.
        claim.complete(&result);
        summary.mark(Step::Complete);
        result
    }

    /// Step 0: check the caller's identifiers before any of them is
    /// recorded. A refusal's record carries only bounded, escaped, marked
    /// forms; otherwise the call's record, to be filled by the steps.
    async fn check_identifiers(
        &self,
        request: &CallRequest,
        summary: &CallSummary,
    ) -> CallResult<CallRecord<'h>> {
        let call_id = summary.call_id.as_str();
        if let Err(error) = identifiers::check(request) {
            let trace_id = request
                .trace_id
                .as_deref()
                .map_or_else(|| call_id.to_owned(), identifiers::trace_id_for_record);
            let mut record = CallRecord::new(
                self.audit,
                call_id,
                &trace_id,
                &identifiers::principal_for_record(&request.principal),
                &request.tool,
                self.config.max_argument_bytes,
            );
            // Refused before its tool is resolved: the manifest's
            // pointers of the tool it names, if a loaded plugin has it,
            // redact its arguments' copy all the same.
            record.redact_at(self.known_pointers(&request.tool));
            record.arguments(&request.arguments, None);
            return Err(record.refused(error).await);
        }
        // The W3C trace id when a traceparent is given.
        Ok(CallRecord::new(
            self.audit,
            call_id,
            &summary.trace_id,
            &request.principal,
            &request.tool,
            self.config.max_argument_bytes,
        ))
    }

    /// Step 1: resolve `plugin/tool` to a loaded plugin and an exposed tool.
    /// With a rollout for the plugin, the version its rollout gives this
    /// caller (loaded on first use); without one, the plugin loaded from
    /// the plugins directory.
    pub(crate) async fn resolve(
        &self,
        request: &CallRequest,
    ) -> CallResult<(Arc<Plugin>, Arc<Tool>)> {
        self.resolve_routed(request, &mut None).await
    }

    /// [`resolve`](Self::resolve), setting `routed_out` to the version
    /// the plugin's rollout gives this caller when that version fails to
    /// load for a fault of its own (not the store's being unreachable):
    /// the alert rules count it against that version.
    async fn resolve_routed(
        &self,
        request: &CallRequest,
        routed_out: &mut Option<String>,
    ) -> CallResult<(Arc<Plugin>, Arc<Tool>)> {
        let reference = request.tool.as_str();
        let (plugin_name, tool_name) =
            reference
                .split_once('/')
                .ok_or_else(|| CallError::BadToolReference {
                    reference: reference.to_owned(),
                })?;
        let routed =
            self.served
                .version_for(plugin_name, &request.principal, request.session.as_deref())?;
        let plugin = match routed.as_deref() {
            // Boxed: loading a version is rare and its future large.
            Some(version) => Box::pin(self.served.load(
                self.engine,
                self.cache,
                &self.config.policy,
                plugin_name,
                version,
            ))
            .await
            .map_err(|e| {
                // The version's own fault (its record or copy damaged, its
                // manifest or component refused) is counted against it;
                // the store's failure (unreachable, locked) is the host's.
                if !crate::host::is_the_hosts(&e) {
                    *routed_out = Some(version.to_owned());
                }
                match e {
                    crate::Error::Store(e) => CallError::Store(e),
                    other => CallError::Config {
                        message: format!(
                            "{plugin_name} {version}, which its rollout serves, cannot be loaded: {}",
                            crate::error::chain(&other)
                        ),
                    },
                }
            })?,
            None => self
                .plugins
                .get(plugin_name)
                .ok_or_else(|| CallError::UnknownPlugin {
                    plugin: plugin_name.to_owned(),
                })?,
        };
        let tool = plugin
            .tool(tool_name)
            .cloned()
            .ok_or_else(|| CallError::UnknownTool {
                plugin: plugin_name.to_owned(),
                tool: tool_name.to_owned(),
            })?;
        Ok((plugin, tool))
    }

    /// The manifest's `redact` pointers of `tool_id` (`plugin/tool`) in
    /// every loaded version of its plugin (the directory's and the served
    /// ones), for a call refused before it was resolved.
    fn known_pointers(&self, tool_id: &str) -> Vec<String> {
        let Some((plugin, tool)) = tool_id.split_once('/') else {
            return Vec::new();
        };
        let mut pointers = Vec::new();
        let served = self.served.all_loaded();
        let versions = self
            .plugins
            .get(plugin)
            .into_iter()
            .chain(served.into_iter().filter(|p| p.name() == plugin));
        for version in versions {
            if let Some(tool) = version.tool(tool) {
                for pointer in tool.redact() {
                    if !pointers.contains(pointer) {
                        pointers.push(pointer.clone());
                    }
                }
            }
        }
        pointers
    }

    /// The workspace a call of `plugin` may use, if it is granted one.
    fn workspace_scope(
        &self,
        plugin: &Plugin,
        request: &CallRequest,
        read_only: bool,
    ) -> Option<WorkspaceScope> {
        plugin.grant().workspace.map(|access| {
            WorkspaceScope::new(
                self.workspace.clone(),
                self.workspace_order.clone(),
                plugin.name(),
                plugin
                    .grant()
                    .workspace_scope
                    .owner(&request.principal, request.session.as_deref()),
                // Read-only mode stops writes at the grant, whatever the
                // tool's declared risk.
                access == FileAccess::ReadWrite && !read_only,
                plugin.limits().workspace_quota(),
            )
        })
    }
}

/// Step 3: validate the arguments before anything runs.
pub(crate) fn validate_arguments(
    tool: &Tool,
    arguments: &str,
    max_bytes: usize,
) -> CallResult<Value> {
    if arguments.len() > max_bytes {
        return Err(CallError::ArgumentsTooLarge {
            size: arguments.len(),
            limit: max_bytes,
        });
    }
    let value: Value =
        serde_json::from_str(arguments).map_err(|e| CallError::ArgumentsNotJson {
            message: e.to_string(),
        })?;
    if !value.is_object() {
        return Err(CallError::ArgumentsNotObject {
            found: schema::type_name(&value),
        });
    }
    if schema::deeper_than(&value, crate::limits::MAX_JSON_DEPTH) {
        return Err(CallError::ArgumentsNotJson {
            message: format!(
                "nested deeper than {} levels of arrays and objects (the host's limit)",
                crate::limits::MAX_JSON_DEPTH
            ),
        });
    }
    let violations = tool.input_validator.violations(&value);
    if !violations.is_empty() {
        return Err(CallError::ArgumentsInvalid {
            tool: tool.id().to_owned(),
            violations,
        });
    }
    Ok(value)
}

/// A unique, time-ordered call id (UUID v7).
pub(crate) fn new_call_id() -> String {
    // Encoded straight into a buffer: `to_string` goes through the
    // formatting machinery, growing the string as it writes.
    let mut buffer = uuid::Uuid::encode_buffer();
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buffer)
        .to_owned()
}
