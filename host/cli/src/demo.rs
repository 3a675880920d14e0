//! `airlock demo`: the real pipeline on the installed example plugins.
//!
//! Every step is a real call through [`airlock_host::Host::call`]: the
//! arguments are validated against the tool's schema, the tool runs in a
//! fresh sandboxed instance under its limits, and the result is validated.
//! Steps that are expected to be refused show what the host says instead.
//! The demo fails (non-zero exit) if any step's outcome differs from what it
//! expects, so it doubles as a smoke test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_host::Approver;
use airlock_host::audit_log::Event;
use airlock_host::{
    AlertMetric, AlertRule, CASES_FILE, CallRequest, CallResponse, Cases, Host, HostConfig,
    MANIFEST_FILE, Package, ReadinessConfig, ReleaseError, RolloutRequest, TakeoverAction,
    TrustedKey, Verdict, Webhook, generate_signing_key,
};
use airlock_mcp::http::HttpConfig;
use airlock_mcp::{McpServer, ServeOptions};
use anyhow::Context as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::{Calls, Failure, host_config};

struct Step {
    title: &'static str,
    tool: &'static str,
    args: serde_json::Value,
    /// `None` if the call should succeed, else the expected error kind.
    expect_error: Option<&'static str>,
}

fn steps() -> Vec<Step> {
    vec![
        Step {
            title: "Count words, lines and characters",
            tool: "text/stats",
            args: json!({"text": "Airlock runs every tool in a sandbox.\nEvery call is checked twice."}),
            expect_error: None,
        },
        Step {
            title: "Make a URL slug",
            tool: "text/slugify",
            args: json!({"text": "Héllo, Wörld! Airlock 0.1 is here"}),
            expect_error: None,
        },
        Step {
            title: "Extract e-mail addresses with a (size-capped) regex",
            tool: "text/regex-extract",
            args: json!({
                "pattern": r"[\w.+-]+@[\w-]+\.[\w.]+",
                "text": "Write to ops@example.com or security@airlock.dev; not to nobody@",
            }),
            expect_error: None,
        },
        Step {
            title: "Query a JSON document with a JSON Pointer",
            tool: "json/query",
            args: json!({"document": {"orders": [{"id": 7, "total": 12.5}]}, "pointer": "/orders/0/total"}),
            expect_error: None,
        },
        Step {
            title: "Apply an RFC 7386 merge patch",
            tool: "json/merge-patch",
            args: json!({"target": {"name": "demo", "tags": ["a"], "debug": true}, "patch": {"debug": null, "tags": ["a", "b"]}}),
            expect_error: None,
        },
        Step {
            title: "Search the one directory the `files` plugin is granted (read-only, seen as /docs)",
            tool: "files/search",
            args: json!({"query": "deadline"}),
            expect_error: None,
        },
        Step {
            title: "The sandbox holds: reading outside the granted directory is denied",
            tool: "files/read",
            args: json!({"path": "/docs/../plugin.toml"}),
            expect_error: Some("tool_error"),
        },
        Step {
            title: "The network is an allowlist: `fetch` may not reach the cloud metadata service (refused before connecting)",
            tool: "fetch/get",
            args: json!({"url": "http://169.254.169.254/latest/meta-data/"}),
            expect_error: Some("tool_error"),
        },
        Step {
            title: "Refused before the guest runs: arguments fail the schema (every path named)",
            tool: "text/slugify",
            args: json!({"txt": "typo in the field name", "separator": 42}),
            expect_error: Some("arguments_invalid"),
        },
        Step {
            title: "The guest runs and reports an error: an invalid regular expression",
            tool: "text/regex-extract",
            args: json!({"pattern": "([unclosed", "text": "abc"}),
            expect_error: Some("tool_error"),
        },
        Step {
            title: "Refused: a field the schema does not allow — and the password in it never reaches the audit log",
            tool: "notes/add",
            args: json!({"title": "Demo", "body": "Airlock keeps state between calls.", "tags": ["demo"], "password": "hunter2"}),
            expect_error: Some("arguments_invalid"),
        },
        Step {
            title: "Keep a note in the plugin's workspace (state that survives the call)",
            tool: "notes/add",
            args: json!({"title": "Demo", "body": "Airlock keeps state between calls.", "tags": ["demo"]}),
            expect_error: None,
        },
        Step {
            title: "Read it back in another call (a fresh instance: only the workspace remembers)",
            tool: "notes/get",
            args: json!({"title": "demo"}),
            expect_error: None,
        },
        Step {
            title: "Refused: a tool that is not installed",
            tool: "text/delete-everything",
            args: json!({}),
            expect_error: Some("unknown_tool"),
        },
    ]
}

pub(crate) async fn run(settings: &Settings) -> Result<u8, Failure> {
    outln!(
        "Airlock demo — plugins from {}\n",
        settings.plugins_dir.display()
    );
    // The demo host's own approver: a token made for this run, of which the
    // host keeps only the hash (no secret lives in any configuration).
    let approver_token = hex::encode(random_bytes::<32>()?);
    let run_id = hex::encode(random_bytes::<4>()?);
    // The on-call pager the demo's alert rule posts to: a webhook receiver
    // on loopback that checks each alert's signature.
    let mut pager = Pager::start().await?;
    let host = Arc::new(demo_host(settings, &approver_token, &pager).await?);
    if host.plugins().is_empty() {
        return Err(anyhow::anyhow!(
            "no plugins in {}; build the examples with scripts/build-guests",
            settings.plugins_dir.display()
        )
        .into());
    }
    outln!("Loaded plugins (component digest pinned by each manifest):");
    for plugin in host.plugins() {
        outln!(
            "  {} {}  sha256:{}…  compiled code: {:?}",
            plugin.name(),
            plugin.version(),
            &plugin.digest()[..16],
            plugin.cache_status()
        );
        for tool in plugin.tools() {
            outln!(
                "    - {:<16} [{}] {}",
                tool.name(),
                tool.risk().as_str(),
                // A plugin's own text: nothing of it reaches the terminal
                // as a control sequence.
                crate::terminal::escape(tool.description())
            );
        }
    }

    let (first_seq, _) = host.audit().head()?;
    let mut demo = Demo {
        host: &host,
        principal: &settings.principal,
        step: 0,
        mismatches: 0,
    };
    for step in steps() {
        demo.title(step.title);
        outln!("   $ airlock call {} --args '{}'", step.tool, step.args);
        let request =
            CallRequest::new(step.tool, step.args.to_string()).principal(&settings.principal);
        let outcome = host.call(request).await;
        demo.expect(&outcome, step.expect_error);
    }
    // Approvals, idempotency, rate limits and read-only mode, on an account
    // made for this run (so the demo can be run again on the same data).
    let story = story(&mut demo, settings, &run_id, &approver_token).await;
    // Whatever happened above, leave the demo's data directory writable.
    if host.mode()?.is_some_and(|m| m.read_only) {
        host.set_mode(false, "demo", Some("the demo ends")).await?;
    }
    story?;
    let alerted = alert(&mut demo, &mut pager).await;
    // Whatever happened above, leave the failing tool unpaused.
    if host.pauses()?.iter().any(|p| p.target == FAILING_TOOL) {
        host.resume(FAILING_TOOL, "demo", Some("the demo ends"))
            .await?;
    }
    pager.stop().await;
    alerted?;
    readiness(&mut demo).await?;
    release(&mut demo, settings, &approver_token).await?;
    hot_reload(&mut demo, settings).await?;
    python_plugin(&mut demo, settings).await?;
    print_audit(&host, first_seq)?;
    outln!();
    if demo.mismatches > 0 {
        return Err(
            anyhow::anyhow!("{} demo steps did not behave as expected", demo.mismatches).into(),
        );
    }
    outln!("All {} steps behaved as expected.", demo.step);
    Ok(0)
}

/// A host on the plugins directory whose policy adds the demo's approver
/// and a rate limit to run into, and an alert rule that pauses a failing
/// tool and pages `pager`. Every plugin must load.
async fn demo_host(
    settings: &Settings,
    approver_token: &str,
    pager: &Pager,
) -> anyhow::Result<Host> {
    let mut policy = settings.policy.clone();
    policy.approvals.approvers.push(Approver {
        name: APPROVER.into(),
        token_sha256: hex::encode(Sha256::digest(approver_token.as_bytes())),
        operator: true,
    });
    policy
        .rate_limits
        .tools
        .insert(RATE_LIMITED_TOOL.into(), "2/s".into());
    let mut alerts = settings.alerts.clone();
    alerts
        .webhooks
        .push(Webhook::new(PAGER, &pager.url, &pager.secret));
    alerts.rules.push(alert_rule());
    let host = Host::new(
        host_config(settings, Calls::Recorded)
            .policy(policy)
            .alerts(alerts),
    )?;
    if !settings.plugins_dir.is_dir() {
        anyhow::bail!(
            "plugins directory {} does not exist; build the examples with scripts/build-guests",
            settings.plugins_dir.display()
        );
    }
    let report = host.load_plugins_dir(&settings.plugins_dir).await?;
    if let Some(failure) = report.failed.first() {
        anyhow::bail!(
            "plugin in {} did not load: {}",
            failure.dir.display(),
            failure.error
        );
    }
    Ok(host)
}

/// The demo's approver (named in its host's policy only).
const APPROVER: &str = "demo-approver";
/// The tool the demo host limits to two calls a second.
const RATE_LIMITED_TOOL: &str = "json/query";
/// The tool that starts failing, its alert rule, and the webhook it pages.
const FAILING_TOOL: &str = "text/regex-extract";
const ALERT_RULE: &str = "regex-errors";
const PAGER: &str = "demo-pager";

/// Fires when 60 % of the tool's last five minutes of calls (four at
/// least) failed, and pauses it.
fn alert_rule() -> AlertRule {
    AlertRule::new(
        ALERT_RULE,
        AlertMetric::ErrorRate,
        Duration::from_secs(300),
        0.6,
    )
    .tools(FAILING_TOOL)
    .min_calls(4)
    .webhook(PAGER)
    .takeover(TakeoverAction::PauseTool)
}

fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(bytes)
}

/// Numbered steps and the count of those that surprised us.
struct Demo<'a> {
    host: &'a Arc<Host>,
    principal: &'a str,
    step: usize,
    mismatches: usize,
}

impl Demo<'_> {
    fn title(&mut self, title: &str) {
        self.step += 1;
        outln!("\n{}. {title}", self.step);
    }

    /// Print a call's outcome; count it if it is not `expected` (`None`:
    /// success, else the error kind).
    fn expect(
        &mut self,
        outcome: &Result<CallResponse, airlock_host::CallError>,
        expected: Option<&str>,
    ) -> Option<&'static str> {
        let got = show(outcome);
        if got != expected {
            self.mismatches += 1;
            outln!("   ✗ expected {}", expected.unwrap_or("success"));
        }
        got
    }

    async fn call(
        &mut self,
        request: CallRequest,
        shown: &str,
        expected: Option<&str>,
    ) -> Result<CallResponse, airlock_host::CallError> {
        outln!("   $ airlock call {shown}");
        let outcome = self.host.call(request).await;
        self.expect(&outcome, expected);
        outcome
    }
}

/// Print a call's outcome; `None` for a success, else the error kind.
fn show(outcome: &Result<CallResponse, airlock_host::CallError>) -> Option<&'static str> {
    match outcome {
        Ok(response) => {
            let text = crate::terminal::json_text(
                serde_json::to_string_pretty(&response.output).unwrap_or_default(),
            );
            match &response.replayed_from {
                Some(first) => outln!("   ok, replayed from call {first} (not run again):"),
                None => outln!(
                    "   ok ({} µs, {} fuel):",
                    response.duration.as_micros(),
                    response.fuel_used
                ),
            }
            for line in text.lines() {
                outln!("     {line}");
            }
            for line in &response.logs {
                outln!(
                    "     [log {}] {}",
                    line.level,
                    crate::terminal::escape(&line.message)
                );
            }
            for note in &response.host_notes {
                outln!("     [host] {}", crate::terminal::escape(note));
            }
            None
        }
        Err(error) => {
            let e = error.to_json();
            outln!(
                "   {}: {}",
                e["kind"].as_str().unwrap_or("error"),
                crate::terminal::escape_lines(&error.to_string())
            );
            for v in error.violations() {
                outln!("     - {}", crate::terminal::escape(&v.to_string()));
            }
            Some(error.kind())
        }
    }
}

/// The part of the tour that needs people: an approval decided from a
/// second process, the agent's resumption and retry, a rate limit, and a
/// read-only takeover.
async fn story(
    demo: &mut Demo<'_>,
    settings: &Settings,
    run_id: &str,
    approver_token: &str,
) -> anyhow::Result<()> {
    let host = demo.host;
    let principal = demo.principal.to_owned();
    let account = format!("acct-{run_id}");
    let key = format!("refund-{run_id}");
    let refund_args = json!({"account": account, "amount_cents": 240_000, "reason": "damaged goods", "card_last4": "4242"});
    let refund = |key: &str| {
        CallRequest::new("billing/refund", refund_args.to_string())
            .principal(&principal)
            .idempotency_key(key)
            .reason("the customer's parcel arrived damaged")
    };
    let shown_refund =
        format!("billing/refund --idempotency-key {key} --reason '…' --args '{refund_args}'");

    demo.title("Open an account (the billing plugin keeps accounts in its workspace)");
    let args = json!({"account": account, "balance_cents": 0});
    demo.call(
        CallRequest::new("billing/open-account", args.to_string()).principal(&principal),
        &format!("billing/open-account --args '{args}'"),
        None,
    )
    .await
    .ok();

    demo.title(
        "An agent asks for a $2,400 refund: irreversible, so it waits for a human (it has not run)",
    );
    let pending = demo
        .call(refund(&key), &shown_refund, Some("approval_pending"))
        .await;
    let approval_id = match &pending {
        Err(error) => error.to_json()["approval_id"].as_str().map(str::to_owned),
        Ok(_) => None,
    };
    let Some(approval_id) = approval_id else {
        anyhow::bail!("the refund did not wait for an approval");
    };

    demo.title("An approver decides from another process, with their own token, on the host's approver endpoint");
    let server = McpServer::new(Arc::clone(host), ServeOptions::default());
    let config = HttpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), Vec::new());
    let router = airlock_mcp::http::approvals_router(&server, &config)?;
    let listener = airlock_mcp::http::bind(config.addr).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { airlock_mcp::http::serve(listener, router, &config, shutdown).await }
    });
    // The card digits were redacted before the approval was stored: the
    // approver cannot see them, yet the tool would receive them. A plain
    // approval is refused; the approver says so to grant it.
    outln!(
        "   $ AIRLOCK_APPROVER_TOKEN=… airlock approvals approve {approval_id} --server {url} --reason 'verified with the customer'"
    );
    let plain =
        approve_from_another_process(settings, &approval_id, &url, approver_token, false).await;
    match plain {
        Err(error) if error.to_string().contains("--unseen") => {
            outln!(
                "     refused: the card digits were redacted before the approval was stored, so no approver can see what the tool would receive"
            );
        }
        Err(error) => {
            demo.mismatches += 1;
            outln!("   ✗ the approver's command failed otherwise: {error:#}");
        }
        Ok(_) => {
            demo.mismatches += 1;
            outln!("   ✗ approved without seeing every value");
        }
    }
    outln!(
        "   $ AIRLOCK_APPROVER_TOKEN=… airlock approvals approve {approval_id} --server {url} --reason 'verified with the customer' --unseen"
    );
    let decided =
        approve_from_another_process(settings, &approval_id, &url, approver_token, true).await;
    shutdown.cancel();
    let _ = serving.await;
    match decided {
        Ok(text) => {
            for line in text.lines() {
                outln!("     {line}");
            }
        }
        Err(error) => {
            demo.mismatches += 1;
            outln!("   ✗ the approver's command failed: {error:#}");
        }
    }

    demo.title("The agent resumes with the approval: the refund runs, once");
    demo.call(
        refund(&key).approval_id(&approval_id),
        &format!("{shown_refund} --approval-id {approval_id}"),
        None,
    )
    .await
    .ok();

    demo.title("The agent retries with the same idempotency key: the outcome is replayed, the refund does not run again");
    let retried = demo
        .call(
            refund(&key).approval_id(&approval_id),
            &format!("{shown_refund} --approval-id {approval_id}"),
            None,
        )
        .await;
    if retried.is_ok_and(|r| r.replayed_from.is_none()) {
        demo.mismatches += 1;
        outln!("   ✗ expected a replay");
    }

    let lookup_args = json!({"account": account});
    let lookup =
        || CallRequest::new("billing/lookup", lookup_args.to_string()).principal(&principal);
    let shown_lookup = format!("billing/lookup --args '{lookup_args}'");
    demo.title("The account was paid once");
    demo.call(lookup(), &shown_lookup, None).await.ok();

    demo.title(&format!(
        "A rate limit (this demo host allows {RATE_LIMITED_TOOL} twice a second): hit, then recovered after retry_after_ms"
    ));
    let args = json!({"document": {"status": "green"}, "pointer": "/status"});
    let query = || CallRequest::new(RATE_LIMITED_TOOL, args.to_string()).principal(&principal);
    outln!("   $ airlock call {RATE_LIMITED_TOOL} --args '{args}'   (until refused)");
    let mut admitted = 0;
    let mut retry_after = None;
    while admitted < 10 {
        match host.call(query()).await {
            Ok(_) => admitted += 1,
            Err(error) if admitted == 0 => {
                demo.mismatches += 1;
                outln!("   ✗ refused before the limit: {error}");
                break;
            }
            Err(error) => {
                let e = error.to_json();
                outln!("   ok within the limit, then {}: {error}", error.kind());
                retry_after = e["retry_after_ms"].as_u64();
                break;
            }
        }
    }
    match retry_after {
        Some(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            outln!("   … after retry_after_ms:");
            demo.call(
                query(),
                &format!("{RATE_LIMITED_TOOL} --args '{args}'"),
                None,
            )
            .await
            .ok();
        }
        None => {
            demo.mismatches += 1;
            outln!("   ✗ expected rate_limited");
        }
    }

    demo.title("Human takeover: read-only mode refuses the refund before anything else is checked");
    outln!("   $ airlock mode read-only --reason 'incident drill'");
    host.set_mode(true, "demo-operator", Some("incident drill"))
        .await?;
    let second = format!("refund-{run_id}-2");
    demo.call(
        refund(&second),
        &shown_refund.replace(&key, &second),
        Some("read_only_mode"),
    )
    .await
    .ok();

    demo.title("…while reads go on; then back to normal");
    demo.call(lookup(), &shown_lookup, None).await.ok();
    outln!("   $ airlock mode normal");
    host.set_mode(false, "demo-operator", Some("drill over"))
        .await?;
    outln!("   normal mode: every tool runs again");
    Ok(())
}

/// The on-call pager: an HTTP receiver on loopback for the alert webhook,
/// handing each delivery (its headers and body) to the demo.
struct Pager {
    url: String,
    secret: String,
    deliveries: tokio::sync::mpsc::Receiver<(axum::http::HeaderMap, axum::body::Bytes)>,
    shutdown: CancellationToken,
    serving: tokio::task::JoinHandle<()>,
}

impl Pager {
    async fn start() -> anyhow::Result<Pager> {
        let (send, deliveries) = tokio::sync::mpsc::channel(16);
        let router = axum::Router::new().route(
            "/alerts",
            axum::routing::post(
                |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    // A full queue drops the delivery; the demo then says
                    // it saw none.
                    let _ = send.try_send((headers, body));
                    axum::http::StatusCode::NO_CONTENT
                },
            ),
        );
        let config = HttpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), Vec::new());
        let listener = airlock_mcp::http::bind(config.addr).await?;
        let url = format!("http://{}/alerts", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                if let Err(error) =
                    airlock_mcp::http::serve(listener, router, &config, shutdown).await
                {
                    tracing::warn!(%error, "the demo's webhook receiver stopped");
                }
            }
        });
        Ok(Pager {
            url,
            secret: hex::encode(random_bytes::<32>()?),
            deliveries,
            shutdown,
            serving,
        })
    }

    /// The next alert delivered within ten seconds, if one is.
    async fn next(&mut self) -> Option<(axum::http::HeaderMap, axum::body::Bytes)> {
        tokio::time::timeout(Duration::from_secs(10), self.deliveries.recv())
            .await
            .ok()
            .flatten()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.serving.await;
    }
}

/// A tool that starts failing trips its alert rule: the pager gets the
/// signed alert, the tool is paused until an operator resumes it.
async fn alert(demo: &mut Demo<'_>, pager: &mut Pager) -> anyhow::Result<()> {
    let host = demo.host;
    let principal = demo.principal.to_owned();
    demo.title(&format!(
        "A tool starts failing: the alert rule `{ALERT_RULE}` (error rate of {FAILING_TOOL} ≥ 60 % over 5 min) fires, pages on-call and pauses the tool"
    ));
    outln!(
        "   [[alerts.rules]] name = \"{ALERT_RULE}\", metric = \"error_rate\", tools = \"{FAILING_TOOL}\", threshold = 0.6, window = \"5m\", min_calls = 4, webhooks = [\"{PAGER}\"], takeover = \"pause_tool\""
    );
    let args = json!({"pattern": "(unclosed", "text": "upstream sent a broken pattern"});
    let shown = format!("{FAILING_TOOL} --args '{args}'");
    // It fails until the rule pauses it (a few calls: the window needs
    // four, with the demo's earlier calls of the tool among them).
    let mut paused = false;
    for _ in 0..5 {
        outln!("   $ airlock call {shown}");
        let outcome = host
            .call(CallRequest::new(FAILING_TOOL, args.to_string()).principal(&principal))
            .await;
        // The regex error's caret diagram aside: its first and last lines.
        match &outcome {
            Err(error) if matches!(error.kind(), "tool_error" | "tool_paused") => {
                let message = error.to_string();
                let mut lines = message.lines();
                let first = lines.next().unwrap_or_default();
                match lines.last() {
                    Some(last) => outln!("   {}: {first} … {}", error.kind(), last.trim()),
                    None => outln!("   {}: {first}", error.kind()),
                }
                if error.kind() == "tool_paused" {
                    paused = true;
                    break;
                }
            }
            _ => {
                show(&outcome);
                break;
            }
        }
    }
    if !paused {
        demo.mismatches += 1;
        outln!("   ✗ expected the tool to be paused");
    }
    match pager.next().await {
        Some((headers, body)) => {
            // As a receiver would: the Standard Webhooks reference
            // implementation, under the shared secret.
            let verified = standardwebhooks::Webhook::from_bytes(pager.secret.as_bytes().to_vec())
                .and_then(|receiver| receiver.verify(&body, &headers));
            let alert: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            outln!(
                "   on-call's webhook got: {} {} on {}/{} {} (value {}, threshold {}), takeover {}",
                alert["rule"].as_str().unwrap_or("?"),
                alert["state"].as_str().unwrap_or("?"),
                alert["plugin"].as_str().unwrap_or("?"),
                alert["tool"].as_str().unwrap_or("?"),
                alert["version"].as_str().unwrap_or("?"),
                alert["value"]
                    .as_f64()
                    .map_or("?".into(), |v| format!("{v:.2}")),
                alert["threshold"],
                alert["takeover"].as_str().unwrap_or("none"),
            );
            match verified {
                Ok(()) => outln!(
                    "   webhook-signature: v1,… verified (Standard Webhooks: the HMAC of its id, timestamp and body under the shared secret)"
                ),
                Err(error) => {
                    demo.mismatches += 1;
                    outln!("   ✗ the alert's signature does not verify: {error}");
                }
            }
        }
        None => {
            demo.mismatches += 1;
            outln!("   ✗ no alert reached the webhook");
        }
    }

    demo.title("On-call looks, then resumes the tool by hand (the pause and its undoing are on the record)");
    outln!("   $ airlock alerts");
    for status in host.alerts() {
        outln!(
            "   {:<9} {:<14} {}/{}  {} {:.2} ≥ {}  takeover: {}",
            status.state,
            status.rule,
            status.plugin.as_deref().unwrap_or("-"),
            status.tool.as_deref().unwrap_or("-"),
            status.metric,
            status.value.unwrap_or(f64::NAN),
            status.threshold,
            status.takeover.as_deref().unwrap_or("none"),
        );
    }
    for pause in host.pauses()? {
        outln!("   paused    {:<14} by {}", pause.target, pause.by);
    }
    outln!("   $ airlock alerts resume {FAILING_TOOL} --reason 'upstream fixed its patterns'");
    host.resume(
        FAILING_TOOL,
        "demo-operator",
        Some("upstream fixed its patterns"),
    )
    .await?;
    let args = json!({"pattern": "[0-9]+", "text": "order 66 shipped in 3 boxes"});
    demo.call(
        CallRequest::new(FAILING_TOOL, args.to_string()).principal(&principal),
        &format!("{FAILING_TOOL} --args '{args}'"),
        None,
    )
    .await
    .ok();
    Ok(())
}

/// `airlock readiness` on the example plugins: what each still lacks for
/// production (the required checks; it lists the warnings too).
async fn readiness(demo: &mut Demo<'_>) -> anyhow::Result<()> {
    demo.title(
        "Before production: `airlock readiness` checks each plugin against the launch checklist",
    );
    outln!("   $ airlock readiness");
    let reports = demo
        .host
        .readiness(None, &ReadinessConfig::default())
        .await?;
    for report in &reports {
        if report.ready {
            outln!("   {} {}: ready", report.plugin, report.version);
            continue;
        }
        outln!("   {} {}: NOT READY", report.plugin, report.version);
        for finding in &report.missing_required {
            let what = match &finding.tool {
                Some(tool) => format!("{}/{tool}", finding.plugin),
                None => finding.plugin.clone(),
            };
            outln!("     missing {:<12} {what}", finding.check.as_str());
        }
    }
    if reports.iter().all(|r| r.ready) {
        demo.mismatches += 1;
        outln!("   ✗ expected an example plugin that is not ready");
    }
    outln!("   (exit 11 when a plugin is not ready; `[readiness] required` chooses the checks)");
    Ok(())
}

/// `airlock approvals approve ID --server URL` as a separate process (this
/// very binary), as an approver at another terminal would run it. Returns
/// what it printed.
async fn approve_from_another_process(
    settings: &Settings,
    id: &str,
    url: &str,
    token: &str,
    unseen: bool,
) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find the airlock binary")?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("--plugins-dir")
        .arg(&settings.plugins_dir)
        .arg("--data-dir")
        .arg(&settings.data_dir)
        .args(["approvals", "approve", id, "--server", url])
        .args(["--reason", "verified with the customer"])
        .args(unseen.then_some("--unseen"))
        .env("AIRLOCK_APPROVER_TOKEN", token)
        .env_remove("AIRLOCK_SERVER")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .context("the approver's command did not finish in 30 s")?
        .context("cannot run the approver's command")?;
    if !output.status.success() {
        anyhow::bail!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What this run left in the audit log, and the log's verification.
fn print_audit(host: &Host, after: u64) -> anyhow::Result<()> {
    outln!(
        "\nThe audit log ({}) — every call above, on the record:",
        host.audit().path().display()
    );
    for record in host.audit().records(after + 1) {
        let record = record?;
        let e = &record.entry;
        let tool = match (&e.plugin, &e.tool) {
            (Some(p), Some(t)) => format!("{p}/{t}"),
            (_, Some(t)) => t.clone(),
            _ => "-".into(),
        };
        // A `read` call done within the group-commit window is one record.
        let whole = if e.carries_intent() {
            "  (intent and outcome in one record)"
        } else {
            ""
        };
        outln!(
            "  #{:<5} {:<18} {:<22} {}{whole}",
            record.seq,
            e.event.as_str(),
            tool,
            e.outcome.as_deref().unwrap_or("")
        );
        if e.event == Event::CallRefused
            && tool == "notes/add"
            && let Some(args) = &e.args
        {
            outln!("          arguments as recorded (redacted): {args}");
        }
        // What the host refused on the guest's behalf, in a field the
        // guest cannot write (its own log lines are in `logs`).
        if let Some(notes) = &e.host_notes {
            outln!("          the host's notes on the call: {notes}");
        }
    }
    // Sign a checkpoint at the head now (the host also signs on a timer,
    // every `checkpoint_every` records and when it closes), so the
    // verification below covers this run's records with a signature.
    host.audit().checkpoint()?;
    match host.audit().verify(&[])? {
        Ok(report) if report.checkpoints > 0 => outln!(
            "  verified: {} records, hash chain intact, {} signed checkpoint{}",
            report.records,
            report.checkpoints,
            if report.checkpoints == 1 { "" } else { "s" }
        ),
        Ok(_) => anyhow::bail!("the audit log verifies but has no signed checkpoint"),
        Err(failure) => anyhow::bail!("the audit log does not verify: {failure}"),
    }
    Ok(())
}

/// Releasing a new version, on a host of its own (a scratch data
/// directory, so the demo's own host keeps serving the plugins directory
/// run after run): `text` 0.1.0 and the example release 0.2.0 side by side,
/// 0.2.0's own cases catching its regression, its wider grant waiting for
/// the approver, a 10% canary sticky by caller, and the rollback.
/// `scripts/release-scenario` does the same with the CLI, signatures
/// included.
async fn release(
    demo: &mut Demo<'_>,
    settings: &Settings,
    approver_token: &str,
) -> anyhow::Result<()> {
    let current = settings.plugins_dir.join("text");
    let Some(next) = settings
        .plugins_dir
        .parent()
        .map(|p| p.join("releases/text-0.2.0"))
        .filter(|p| p.join(MANIFEST_FILE).is_file())
    else {
        outln!(
            "\n(no example release next to the plugins directory: the release steps are skipped)"
        );
        return Ok(());
    };
    let scratch = tempfile::tempdir()?;
    // Two signing keys, each trusted for its team's plugins only, and
    // nothing runs unsigned on this host.
    let keys = scratch.path().join("keys");
    std::fs::create_dir(&keys)?;
    let release_key = keys.join("release.key");
    let billing_key = keys.join("billing-team.key");
    let mut policy = settings.policy.clone();
    policy.trusted_keys = [
        (
            "release".to_owned(),
            TrustedKey::for_plugins(generate_signing_key(&release_key)?, ["text"]),
        ),
        (
            "billing-team".to_owned(),
            TrustedKey::for_plugins(generate_signing_key(&billing_key)?, ["billing"]),
        ),
    ]
    .into();
    policy.require_signature = true;
    policy.approvals.approvers.push(Approver {
        name: APPROVER.into(),
        token_sha256: hex::encode(Sha256::digest(approver_token.as_bytes())),
        operator: true,
    });
    let host = Host::new(
        HostConfig::default()
            .data_dir(scratch.path())
            .cache_dir(&settings.cache_dir)
            .policy(policy),
    )?;

    demo.title(
        "Releasing a new version: text 0.1.0 and 0.2.0 signed and installed side by side; 0.1.0 serves",
    );
    outln!(
        "   [policy] require_signature = true; trusted_keys: release for text, billing-team for billing"
    );
    let plugins = settings.plugins_dir.display();
    // Another team's key does not vouch for text, signature or not.
    let mut foreign = Package::from_dir(&next)?;
    foreign.sign(&billing_key)?;
    outln!(
        "   $ airlock plugins sign text-0.2.0 --key billing-team.key && airlock plugins install …"
    );
    match host.install(&foreign, "release-manager").await {
        Err(error) if error.kind() == "signer_untrusted" => {
            outln!("   signer_untrusted: {error}");
        }
        other => {
            demo.mismatches += 1;
            outln!("   ✗ expected signer_untrusted, got {other:?}");
        }
    }
    for (dir, shown) in [
        (&current, format!("{plugins}/text")),
        (&next, format!("{plugins}/../releases/text-0.2.0")),
    ] {
        let mut package = Package::from_dir(dir)?;
        package.sign(&release_key)?;
        let report = host.install(&package, "release-manager").await?;
        outln!(
            "   $ airlock plugins sign {shown} --key release.key; airlock plugins install {shown}\n     → text {} (sha256:{}…), signed by {}",
            report.version.version,
            &report.version.component_digest[..16],
            report
                .version
                .signer
                .as_deref()
                .and_then(|s| s.split(" (").next())
                .unwrap_or("nobody")
        );
    }
    host.set_rollout(&RolloutRequest::new(
        "text",
        "0.1.0",
        100,
        "release-manager",
    ))
    .await?;
    outln!("   $ airlock rollout text 0.1.0 --percent 100   → 0.1.0 serves every caller");

    demo.title("Its own cases catch 0.2.0's regression before any caller sees it");
    outln!("   $ airlock eval text@0.2.0");
    let candidate = host.plugin_version("text", "0.2.0").await?;
    let cases = Cases::from_file(&next.join(CASES_FILE))?;
    let report = host.evaluate(&candidate, &cases).await?;
    for case in report.cases.iter().filter(|c| !c.passed) {
        outln!("   FAIL {}", case.name);
        for failure in &case.failures {
            outln!("     {failure}");
        }
    }
    outln!("   {} of {} cases pass", report.passed, report.cases.len());
    if report.all_passed() {
        demo.mismatches += 1;
        outln!("   ✗ expected the regression to be caught");
    }

    demo.title("0.2.0 asks for more than 0.1.0, so its canary waits for the approver");
    outln!("   $ airlock rollout text 0.2.0 --percent 10");
    let approval = match host
        .set_rollout(&RolloutRequest::new("text", "0.2.0", 10, "release-manager"))
        .await
    {
        Err(airlock_host::Error::Release(ReleaseError::ApprovalRequired {
            approval_id,
            widens,
            ..
        })) => {
            outln!("   upgrade_approval_pending: {approval_id}");
            for w in &widens {
                outln!("     + {w}");
            }
            approval_id
        }
        other => {
            demo.mismatches += 1;
            outln!("   ✗ expected upgrade_approval_pending, got {other:?}");
            return Ok(());
        }
    };
    outln!("   $ airlock approvals approve {approval} --reason 'canary it'   (the approver)");
    host.decide(
        &approval,
        APPROVER,
        approver_token,
        Verdict::Approve,
        Some("canary it"),
    )
    .await?;
    host.set_rollout(
        &RolloutRequest::new("text", "0.2.0", 10, "release-manager").approval(&approval),
    )
    .await?;
    outln!("   $ airlock rollout text 0.2.0 --percent 10 --approval {approval}   → a 10% canary");

    demo.title("Twenty callers: each sticks to its side; on 0.2.0 the accents vanish");
    let mut on_canary = Vec::new();
    for i in 1..=20 {
        let principal = format!("agent-{i}");
        let response = host
            .call(
                CallRequest::new("text/slugify", r#"{"text":"Crème brûlée"}"#)
                    .principal(&principal),
            )
            .await?;
        if response.plugin_version == "0.2.0" {
            on_canary.push((principal, response.output));
        }
    }
    outln!("   {} of 20 callers on 0.2.0", on_canary.len());
    if let Some((principal, output)) = on_canary.first() {
        outln!("   {principal} on 0.2.0: {output}");
    }

    demo.title("One command rolls it back: every caller on 0.1.0 again");
    outln!("   $ airlock rollback text --reason 'accents dropped'");
    host.rollback("text", "oncall", Some("accents dropped"))
        .await?;
    if let Some((principal, _)) = on_canary.first() {
        let response = host
            .call(
                CallRequest::new("text/slugify", r#"{"text":"Crème brûlée"}"#).principal(principal),
            )
            .await?;
        outln!(
            "   {principal} on {}: {}",
            response.plugin_version,
            response.output
        );
        if response.plugin_version != "0.1.0" {
            demo.mismatches += 1;
            outln!("   ✗ expected 0.1.0 after the rollback");
        }
    }
    let _ = host.audit().close();
    Ok(())
}

/// `airlock serve` following its plugins directory (on a copy of `text`,
/// served by a host of its own): a manifest edited while the plugin
/// serves is loaded beside it and swapped in, on the audit log's record
/// with what it widens.
async fn hot_reload(demo: &mut Demo<'_>, settings: &Settings) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let plugins = scratch.path().join("plugins");
    let text = plugins.join("text");
    std::fs::create_dir_all(&text)?;
    for entry in std::fs::read_dir(settings.plugins_dir.join("text"))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), text.join(entry.file_name()))?;
        }
    }
    let host = Arc::new(Host::new(
        HostConfig::default()
            .cache_dir(&settings.cache_dir)
            .plugins_dir(&plugins),
    )?);
    let server = McpServer::new(Arc::clone(&host), ServeOptions::default());
    server.reload(&plugins).await?;
    demo.title("`airlock serve` follows its plugins directory: text gets a longer timeout while it serves, on the record");
    let manifest = text.join(MANIFEST_FILE);
    let before = std::fs::read_to_string(&manifest)?;
    let after = before.replacen("timeout_ms = 2_000", "timeout_ms = 5_000", 1);
    if after == before {
        demo.mismatches += 1;
        outln!("   ✗ the text manifest has no `timeout_ms = 2_000` to change");
        return Ok(());
    }
    outln!("   $ sed -i 's/timeout_ms = 2_000/timeout_ms = 5_000/' plugins/text/plugin.toml");
    std::fs::write(&manifest, &after)?;
    let report = server.reload(&plugins).await?;
    let records = host.audit().query(
        &airlock_host::audit_log::Filter {
            event: Some(Event::PluginChanged),
            ..Default::default()
        },
        10,
    )?;
    match (report.reloaded.as_slice(), records.as_slice()) {
        ([reloaded], [record]) if reloaded == "text" => {
            let entry = &record.entry;
            let reason = entry.reason.as_deref().unwrap_or_default();
            outln!(
                "   reloaded within serve.reload_interval_ms; the old version served until the new one was ready"
            );
            outln!(
                "   audit #{}: plugin_changed {} {} {} — {}",
                record.seq,
                entry.decision.as_deref().unwrap_or_default(),
                entry.plugin.as_deref().unwrap_or_default(),
                entry.plugin_version.as_deref().unwrap_or_default(),
                reason
                    .rsplit_once("; ")
                    .map_or(reason, |(_, widens)| widens)
            );
        }
        _ => {
            demo.mismatches += 1;
            outln!("   ✗ expected one recorded reload of text: {report:?}, {records:?}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The Python example plugin (issue 19): its own step, at the end.

/// The Python example plugin `csv-stats`, built by `scripts/build-guests`
/// next to the plugins directory (kept out of it: an interpreter is a large
/// component to compile, and not every user of the examples needs it),
/// loaded into the demo's host and called like any other plugin.
async fn python_plugin(demo: &mut Demo<'_>, settings: &Settings) -> anyhow::Result<()> {
    let Some(dir) = settings
        .plugins_dir
        .parent()
        .map(|p| p.join("python-plugins/csv-stats"))
        .filter(|p| p.join(MANIFEST_FILE).is_file())
    else {
        outln!("\n(no Python example plugin next to the plugins directory: its step is skipped)");
        return Ok(());
    };
    demo.title("A plugin written in Python (csv-stats, built with componentize-py): same sandbox, same pipeline");
    let plugin = demo.host.load_plugin(&dir).await?;
    outln!(
        "   loaded {} {} from {}/../python-plugins/csv-stats (sha256:{}…)",
        plugin.name(),
        plugin.version(),
        settings.plugins_dir.display(),
        &plugin.digest()[..16]
    );
    let args = json!({"csv": "city,population,area_km2\nOslo,709000,454\nBergen,291000,465\nTromsø,,2521\n"});
    let request =
        CallRequest::new("csv-stats/summarize", args.to_string()).principal(demo.principal);
    demo.call(
        request,
        &format!("csv-stats/summarize --args '{args}'"),
        None,
    )
    .await
    .ok();
    // Its schema, derived from Python type hints, refuses a typo as the
    // host's validation does for every plugin.
    let args = json!({"csv": "a\n1\n", "delimeter": ";"});
    let request =
        CallRequest::new("csv-stats/summarize", args.to_string()).principal(demo.principal);
    demo.call(
        request,
        &format!("csv-stats/summarize --args '{args}'"),
        Some("arguments_invalid"),
    )
    .await
    .ok();
    Ok(())
}
