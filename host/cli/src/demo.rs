//! `airlock demo`: the real pipeline on the installed example plugins.
//!
//! Every step is a real call through [`airlock_host::Host::call`]: the
//! arguments are validated against the tool's schema, the tool runs in a
//! fresh sandboxed instance under its limits, and the result is validated.
//! Steps that are expected to be refused show what the host says instead.
//! The demo fails (non-zero exit) if any step's outcome differs from what it
//! expects, so it doubles as a smoke test.

use airlock_host::audit_log::Event;
use airlock_host::{CallRequest, Host};
use serde_json::json;

use crate::config::Settings;
use crate::{Calls, Failure, load_host};

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

pub async fn run(settings: &Settings) -> Result<u8, Failure> {
    println!(
        "Airlock demo — plugins from {}\n",
        settings.plugins_dir.display()
    );
    let (host, report) = load_host(settings, Calls::Recorded).await?;
    for failure in &report.failed {
        println!(
            "  ! {} did not load: {}",
            failure.dir.display(),
            failure.error
        );
    }
    if host.plugins().is_empty() {
        return Err(anyhow::anyhow!(
            "no plugins in {}; build the examples with scripts/build-guests",
            settings.plugins_dir.display()
        )
        .into());
    }
    println!("Loaded plugins (component digest pinned by each manifest):");
    for plugin in host.plugins() {
        println!(
            "  {} {}  sha256:{}…  compiled code: {:?}",
            plugin.name(),
            plugin.version(),
            &plugin.digest()[..16],
            plugin.cache_status()
        );
        for tool in plugin.tools() {
            println!(
                "    - {:<16} [{}] {}",
                tool.name(),
                tool.risk().as_str(),
                tool.description()
            );
        }
    }

    let (first_seq, _) = host.audit().head()?;
    let mut mismatches = 0;
    for (i, step) in steps().into_iter().enumerate() {
        println!("\n{}. {}", i + 1, step.title);
        println!("   $ airlock call {} --args '{}'", step.tool, step.args);
        let request =
            CallRequest::new(step.tool, step.args.to_string()).principal(&settings.principal);
        let outcome = host.call(request).await;
        let got = match &outcome {
            Ok(response) => {
                let text = serde_json::to_string_pretty(&response.output).unwrap_or_default();
                println!(
                    "   ok ({} µs, {} fuel):",
                    response.duration.as_micros(),
                    response.fuel_used
                );
                for line in text.lines() {
                    println!("     {line}");
                }
                for line in &response.logs {
                    println!("     [log {}] {}", line.level, line.message);
                }
                None
            }
            Err(error) => {
                let e = error.to_json();
                println!("   {}: {}", e["kind"].as_str().unwrap_or("error"), error);
                for v in error.violations() {
                    println!("     - {v}");
                }
                Some(error.kind())
            }
        };
        if got != step.expect_error {
            mismatches += 1;
            println!("   ✗ expected {}", step.expect_error.unwrap_or("success"));
        }
    }
    print_audit(&host, first_seq)?;
    println!();
    if mismatches > 0 || !report.failed.is_empty() {
        return Err(anyhow::anyhow!("{mismatches} demo steps did not behave as expected").into());
    }
    println!("All {} steps behaved as expected.", steps().len());
    Ok(0)
}

/// What this run left in the audit log, and the log's verification.
fn print_audit(host: &Host, after: u64) -> anyhow::Result<()> {
    println!(
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
        println!(
            "  #{:<5} {:<13} {:<22} {}",
            record.seq,
            e.event.as_str(),
            tool,
            e.outcome.as_deref().unwrap_or("")
        );
        if e.event == Event::CallRefused
            && tool == "notes/add"
            && let Some(args) = &e.args
        {
            println!("          arguments as recorded (redacted): {args}");
        }
    }
    match host.audit().verify(&[])? {
        Ok(report) => println!(
            "  verified: {} records, hash chain intact, {} signed checkpoints",
            report.records, report.checkpoints
        ),
        Err(failure) => anyhow::bail!("the audit log does not verify: {failure}"),
    }
    Ok(())
}
