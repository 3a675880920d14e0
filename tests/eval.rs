//! Evaluation and replay against the real example plugins: a plugin's
//! shipped cases pass, the example release 0.2.0's regression is caught,
//! cases run in a scratch workspace (approval-required tools too), a case
//! that exhausts fuel says so, and recorded calls are replayed, or skipped
//! and counted when their arguments were redacted, cut, or not kept.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use airlock_host::audit_log::{AuditConfig, Event, Filter};
use airlock_host::{
    CASES_FILE, CallRequest, Cases, Host, HostConfig, MANIFEST_FILE, ReplayPlan, ReplaySkips,
};
use airlock_tests::{PLUGINS_DIR, RELEASES_DIR};
use serde_json::json;

fn text_v1() -> PathBuf {
    Path::new(PLUGINS_DIR).join("text")
}

fn text_v2() -> PathBuf {
    Path::new(RELEASES_DIR).join("text-0.2.0")
}

async fn host_with(dir: &Path) -> (Host, std::sync::Arc<airlock_host::Plugin>) {
    let host = Host::new(HostConfig::default()).unwrap();
    let plugin = host.load_plugin(dir).await.unwrap();
    (host, plugin)
}

fn shipped_cases() -> Cases {
    Cases::from_file(&text_v1().join(CASES_FILE)).unwrap()
}

#[tokio::test]
async fn the_shipped_cases_pass_on_text_0_1_0() {
    let (host, plugin) = host_with(&text_v1()).await;
    let report = host.evaluate(&plugin, &shipped_cases()).await.unwrap();
    assert!(report.all_passed(), "{report:#?}");
    assert_eq!(report.passed, shipped_cases().len());
    assert_eq!(report.version, "0.1.0");
    // Cases that ran the guest cost fuel and time; a refused one neither.
    let basic = &report.cases[0];
    assert!(basic.fuel_used > 0 && basic.wall_us > 0, "{basic:?}");
    let refused = report
        .cases
        .iter()
        .find(|c| c.name == "slugify-needs-text")
        .unwrap();
    assert_eq!(refused.outcome, "arguments_invalid");
    assert_eq!(refused.fuel_used, 0);
}

#[tokio::test]
async fn eval_catches_the_regression_of_text_0_2_0() {
    let (host, plugin) = host_with(&text_v2()).await;
    assert_eq!(plugin.version(), "0.2.0");
    let report = host.evaluate(&plugin, &shipped_cases()).await.unwrap();
    assert!(!report.all_passed());
    let failed: Vec<&str> = report
        .cases
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failed, ["slugify-folds-accents"]);
    let case = &report.cases[1];
    assert_eq!(case.line, 2);
    assert_eq!(case.failures[0].check, "output");
    assert_eq!(case.failures[0].at, "/slug");
    assert_eq!(case.failures[0].expected, json!("creme-brulee-a-la-carte"));
    assert!(
        case.failures[0]
            .message
            .starts_with("at /slug: expected \"creme-brulee-a-la-carte\", got \"cr-me"),
        "{}",
        case.failures[0].message
    );
    // The release ships the same cases, and widens the grant.
    assert!(text_v2().join(CASES_FILE).is_file());
    let manifest = std::fs::read_to_string(text_v2().join(MANIFEST_FILE)).unwrap();
    assert!(manifest.contains("clocks = true"));
}

#[tokio::test]
async fn a_case_that_exhausts_its_fuel_reports_fuel_exhausted() {
    // The text plugin with too little fuel for a long text (enough to load).
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(text_v1()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let manifest = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
    let manifest = manifest.replace("fuel = 2_000_000_000", "fuel = 5_000_000");
    std::fs::write(dir.path().join(MANIFEST_FILE), manifest).unwrap();
    let (host, plugin) = host_with(dir.path()).await;
    let long = "Crème brûlée ".repeat(20_000);
    let cases = Cases::parse(&format!(
        "{}\n{}\n",
        json!({"name": "long", "tool": "slugify", "arguments": {"text": long}, "expect": {"error": "fuel_exhausted"}}),
        json!({"name": "long-expecting-ok", "tool": "slugify", "arguments": {"text": long}}),
    ))
    .unwrap();
    let report = host.evaluate(&plugin, &cases).await.unwrap();
    assert!(report.cases[0].passed, "{:?}", report.cases[0]);
    assert_eq!(report.cases[0].outcome, "fuel_exhausted");
    assert_eq!(report.cases[0].fuel_used, 5_000_000);
    let second = &report.cases[1];
    assert!(!second.passed);
    assert_eq!(second.outcome, "fuel_exhausted");
    assert_eq!(second.failures[0].check, "outcome");
}

#[tokio::test]
async fn cases_run_in_a_scratch_workspace_and_approval_tools_run_too() {
    // The host's own state: one account in its real workspace.
    let data = tempfile::tempdir().unwrap();
    let host = Host::new(HostConfig::default().data_dir(data.path())).unwrap();
    let plugin = host
        .load_plugin(Path::new(PLUGINS_DIR).join("billing"))
        .await
        .unwrap();
    host.call(CallRequest::new(
        "billing/open-account",
        r#"{"account": "real", "balance_cents": 100}"#,
    ))
    .await
    .unwrap();
    let (records_before, _) = host.audit().head().unwrap();
    let cases = Cases::parse(concat!(
        r#"{"name": "open", "tool": "open-account", "arguments": {"account": "acct-1", "balance_cents": 500}, "expect": {"pointers": [{"pointer": "/balance_cents", "equals": 500}]}}"#,
        "\n",
        r#"{"name": "refund", "tool": "refund", "arguments": {"account": "acct-1", "amount_cents": 250, "reason": "eval"}, "expect": {"pointers": [{"pointer": "/balance_cents", "equals": 750}, {"pointer": "/call_id", "matches": "^eval-"}]}}"#,
        "\n",
        r#"{"name": "no-real-account", "tool": "lookup", "arguments": {"account": "real"}, "expect": {"error": "tool_error"}}"#,
        "\n",
    ))
    .unwrap();
    let report = host.evaluate(&plugin, &cases).await.unwrap();
    assert!(report.all_passed(), "{report:#?}");
    // Nothing reached the host's workspace or its audit log.
    let account = host
        .call(CallRequest::new(
            "billing/lookup",
            r#"{"account": "acct-1"}"#,
        ))
        .await
        .unwrap_err();
    assert_eq!(account.kind(), "tool_error");
    let (records_after, _) = host.audit().head().unwrap();
    // Only the failed lookup just made (its intent and outcome).
    assert_eq!(records_after, records_before + 2);
    // A second run starts from an empty scratch workspace again.
    let again = host.evaluate(&plugin, &cases).await.unwrap();
    assert!(again.all_passed(), "{again:#?}");
}

#[tokio::test]
async fn a_plugin_of_another_host_is_refused() {
    let (_first, plugin) = host_with(&text_v1()).await;
    let (second, _) = host_with(&text_v2()).await;
    let error = second
        .evaluate(&plugin, &shipped_cases())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "config");
    assert!(error.to_string().contains("another host"), "{error}");
}

/// A host recording `text/slugify` calls with replayable argument copies.
async fn recording_host() -> Host {
    let audit = AuditConfig {
        replayable: vec!["text/slugify".to_owned()],
        ..AuditConfig::default()
    };
    let host = Host::new(HostConfig::default().audit(audit).max_argument_bytes(5_000)).unwrap();
    host.load_plugin(text_v1()).await.unwrap();
    host
}

#[tokio::test]
async fn replay_reruns_kept_calls_and_counts_those_skipped() {
    let host = recording_host().await;
    let call = |tool: &str, arguments: serde_json::Value| {
        host.call(CallRequest::new(tool, arguments.to_string()))
    };
    call("text/slugify", json!({"text": "Hello, World!"}))
        .await
        .unwrap();
    call("text/slugify", json!({"text": "Crème brûlée"}))
        .await
        .unwrap();
    // Redacted: a card number in the arguments.
    call("text/slugify", json!({"text": "card 4111 1111 1111 1111"}))
        .await
        .unwrap();
    // Cut: 1,600 newlines are 3,200 bytes of arguments but 9,600 bytes
    // of canonical copy, over the 5,000-byte argument cap.
    call("text/slugify", json!({"text": "\n".repeat(1_600)}))
        .await
        .unwrap();
    // Not replayable: no copy kept.
    call("text/stats", json!({"text": "Hi"})).await.unwrap();
    // A refused call has no intent: not considered.
    call("text/slugify", json!({"text": 3})).await.unwrap_err();

    let filter = Filter {
        plugin: Some("text".into()),
        ..Filter::default()
    };
    let records = host.audit().query(&filter, 1000).unwrap();
    // `read` calls: each recorded once, its outcome carrying its intent.
    let intents: Vec<_> = records
        .iter()
        .filter(|r| r.entry.event == Event::CallStarted || r.entry.carries_intent())
        .collect();
    assert_eq!(intents[0].entry.args_redacted, Some(false));
    assert_eq!(intents[2].entry.args_redacted, Some(true));
    assert!(intents[3].entry.args_truncated);
    assert_eq!(intents[4].entry.args_redacted, None);
    // The log still verifies with the new field in it.
    let verified = host.audit().verify(&[]).unwrap();
    assert!(verified.is_ok(), "{verified:?}");
    assert_eq!(intents.len(), 5);

    let plan = ReplayPlan::from_records(records.iter().map(|r| (None, r)), "text", 100);
    assert_eq!(plan.calls().len(), 2);
    assert_eq!(
        plan.skipped,
        ReplaySkips {
            redacted: 1,
            cut: 1,
            no_copy: 1,
            unfinished: 0,
            not_read: 0,
            host_outcome: 0,
            ambiguous: 0,
        }
    );

    // Against the same version: the same.
    let report = host
        .replay(&host.plugin("text").unwrap(), &plan)
        .await
        .unwrap();
    assert_eq!((report.replayed, report.same, report.different), (2, 2, 0));

    // Against 0.2.0: the accented call differs.
    let (v2_host, v2) = host_with(&text_v2()).await;
    let report = v2_host.replay(&v2, &plan).await.unwrap();
    assert_eq!((report.replayed, report.same, report.different), (2, 1, 1));
    assert_eq!(report.errors, 0);
    assert_eq!(report.skipped.redacted, 1);
    assert_eq!(report.skipped.cut, 1);
    let different = report.calls.iter().find(|c| !c.same).unwrap();
    let diff = different.diff.as_ref().unwrap();
    assert_eq!(diff.at, "/slug");
    assert_eq!(diff.expected, json!("creme-brulee"));

    // Against a version where slugify is no longer `read`: not run (it
    // may now have effects, and would get the callers' arguments).
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("text");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(text_v1()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let manifest = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let edited = text.replacen(
        "name = \"slugify\"\nrisk = \"read\"",
        "name = \"slugify\"\nrisk = \"irreversible\"",
        1,
    );
    assert_ne!(edited, text, "the manifest names slugify's risk");
    std::fs::write(&manifest, edited).unwrap();
    let (w_host, writes) = host_with(&dir).await;
    let report = w_host.replay(&writes, &plan).await.unwrap();
    assert_eq!(report.replayed, 0, "{report:?}");
    assert_eq!(report.skipped.not_read, 2);
    // Chosen against that version, they are skipped as they are chosen:
    // a limit of one does not take one of them for the call to replay.
    // (Taken, they left nothing to replay while another tool's call could
    // be.)
    let against = ReplayPlan::from_records_against(records.iter().map(|r| (None, r)), &writes, 1);
    assert!(against.calls().is_empty(), "{against:?}");
    assert_eq!(against.skipped.not_read, 2, "{against:?}");
}

#[tokio::test]
async fn an_approval_shows_a_replayable_tools_arguments_cut_as_any_other() {
    let audit = AuditConfig {
        replayable: vec!["billing/refund".to_owned()],
        max_copy_bytes: 64,
        ..AuditConfig::default()
    };
    let policy = airlock_host::Policy {
        approvals: airlock_host::ApprovalPolicy {
            approvers: vec![airlock_host::Approver {
                name: "alice".into(),
                token_sha256: airlock_tests::sha256_hex(b"token"),
                operator: false,
            }],
            ..airlock_host::ApprovalPolicy::default()
        },
        ..airlock_host::Policy::default()
    };
    let host = Host::new(HostConfig::default().audit(audit).policy(policy)).unwrap();
    host.load_plugin(Path::new(PLUGINS_DIR).join("billing"))
        .await
        .unwrap();
    let arguments = json!({"account": "a", "amount_cents": 5, "reason": "r".repeat(200)});
    let error = host
        .call(CallRequest::new("billing/refund", arguments.to_string()).idempotency_key("k1"))
        .await
        .unwrap_err();
    let airlock_host::CallError::ApprovalPending { approval_id, .. } = error else {
        panic!("{error}");
    };
    let approval = host.approval(&approval_id).unwrap().unwrap();
    assert!(approval.args.len() <= 64, "{}", approval.args);
    assert!(approval.args_truncated);
    // The log's record keeps the whole (redacted) copy.
    let filter = Filter {
        plugin: Some("billing".into()),
        event: Some(Event::ApprovalRequested),
        ..Filter::default()
    };
    let records = host.audit().query(&filter, 10).unwrap();
    let record = &records[0].entry;
    assert_eq!(record.args_redacted, Some(false));
    assert!(!record.args_truncated);
    assert!(record.args.as_ref().unwrap().len() > 200);
}
