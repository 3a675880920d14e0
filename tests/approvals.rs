//! Approvals, idempotency keys and read-only mode against the real `billing`
//! plugin and the real ledger: every refusal has its own kind, and nothing
//! runs that should not.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use airlock_host::audit_log::Event;
use airlock_host::store::ApprovalState;
use airlock_host::{
    ApprovalPolicy, Approver, CallError, CallRequest, Error, Host, HostConfig, Policy, Verdict,
    unseen_arguments,
};
use airlock_tests::{PLUGINS_DIR, sha256_hex};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const ALICE: &str = "alice-secret-token";

fn policy(approvers: bool) -> Policy {
    Policy {
        approvals: ApprovalPolicy {
            approvers: if approvers {
                vec![Approver {
                    name: "alice".into(),
                    token_sha256: sha256_hex(ALICE.as_bytes()),
                    operator: false,
                }]
            } else {
                Vec::new()
            },
            ..ApprovalPolicy::default()
        },
        ..Policy::default()
    }
}

async fn billing(config: HostConfig) -> Host {
    let host = Host::new(config).unwrap();
    host.load_plugin(format!("{PLUGINS_DIR}/billing"))
        .await
        .unwrap();
    host.load_plugin(format!("{PLUGINS_DIR}/notes"))
        .await
        .unwrap();
    host.call(CallRequest::new(
        "billing/open-account",
        json!({"account": "9182", "balance_cents": 0}).to_string(),
    ))
    .await
    .unwrap();
    host
}

fn refund(amount: u64) -> String {
    json!({"account": "9182", "amount_cents": amount, "reason": "damaged goods"}).to_string()
}

fn request(amount: u64, key: &str) -> CallRequest {
    CallRequest::new("billing/refund", refund(amount))
        .principal("agent-1")
        .idempotency_key(key)
        .reason("customer complaint #77")
}

async fn balance(host: &Host) -> u64 {
    let out = host
        .call(CallRequest::new(
            "billing/lookup",
            json!({"account": "9182"}).to_string(),
        ))
        .await
        .unwrap()
        .output;
    out["balance_cents"].as_u64().unwrap()
}

fn pending_id(err: CallError) -> String {
    match err {
        CallError::ApprovalPending { approval_id, .. } => approval_id,
        other => panic!("expected approval_pending, got {other}"),
    }
}

fn kind<T: std::fmt::Debug, E: Into<Error> + std::fmt::Debug>(
    result: Result<T, E>,
) -> &'static str {
    Into::<Error>::into(result.unwrap_err()).kind()
}

#[tokio::test]
async fn a_refund_waits_for_approval_runs_once_and_is_on_the_record() {
    let host = billing(HostConfig::default().policy(policy(true))).await;
    // No key: refused before anything else.
    let no_key = CallRequest::new("billing/refund", refund(2400)).principal("agent-1");
    assert_eq!(kind(host.call(no_key).await), "idempotency_key_required");

    let id = pending_id(host.call(request(2400, "k1")).await.unwrap_err());
    assert_eq!(balance(&host).await, 0, "nothing ran while pending");
    let pending = host.approvals(Some(ApprovalState::Pending)).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].caller_reason.as_deref(),
        Some("customer complaint #77")
    );
    assert_eq!(pending[0].principal, "agent-1");

    // Still pending: resuming says so.
    let again = host.call(request(2400, "k1").approval_id(&id)).await;
    assert_eq!(kind(again), "approval_pending");

    // The caller can never approve; a wrong token neither.
    let own = host
        .decide(&id, "agent-1", ALICE, Verdict::Approve, None)
        .await;
    assert_eq!(kind(own), "decision_refused");
    let forged = host
        .decide(&id, "alice", "guess", Verdict::Approve, None)
        .await;
    assert_eq!(kind(forged), "decision_refused");

    let approved = host
        .decide(&id, "alice", ALICE, Verdict::Approve, Some("verified"))
        .await
        .unwrap();
    assert_eq!(approved.state, ApprovalState::Approved);

    // Other arguments, another principal, another key: not covered.
    assert_eq!(
        kind(host.call(request(9999, "k1").approval_id(&id)).await),
        "approval_mismatch"
    );
    // Another principal's approval is answered as one that does not exist,
    // whatever its arguments: what it was given for is not theirs to learn
    // (it said "it was given for billing/refund", or "other arguments"
    // until a guess was right).
    let unknown = host
        .call(
            request(2400, "k1")
                .approval_id("apr-no-such")
                .principal("agent-2"),
        )
        .await
        .unwrap_err();
    for amount in [2400, 9999] {
        let other = request(amount, "k1").approval_id(&id).principal("agent-2");
        let answer = host.call(other).await.unwrap_err();
        assert_eq!(answer.kind(), unknown.kind());
        assert_eq!(
            answer.to_string().replace(&id, "ID"),
            unknown.to_string().replace("apr-no-such", "ID")
        );
    }
    assert_eq!(
        kind(host.call(request(2400, "k2").approval_id(&id)).await),
        "approval_mismatch"
    );

    let done = host
        .call(request(2400, "k1").approval_id(&id))
        .await
        .unwrap();
    assert_eq!(done.approval_id.as_deref(), Some(id.as_str()));
    assert_eq!(balance(&host).await, 2400);

    // A retry with the same key replays; the approval is spent.
    let replay = host
        .call(request(2400, "k1").approval_id(&id))
        .await
        .unwrap();
    assert_eq!(replay.replayed_from.as_deref(), Some(done.call_id.as_str()));
    assert_eq!(balance(&host).await, 2400, "paid once");
    assert_eq!(
        host.approval(&id).unwrap().unwrap().state,
        ApprovalState::Consumed
    );

    let events: Vec<Event> = host
        .audit()
        .records(1)
        .map(|r| r.unwrap().entry)
        .filter(|e| e.tool.as_deref() == Some("refund"))
        .map(|e| e.event)
        .collect();
    for expected in [
        Event::CallRefused,
        Event::ApprovalRequested,
        Event::ApprovalDecided,
        Event::CallStarted,
        Event::CallFinished,
        Event::CallReplayed,
    ] {
        assert!(
            events.contains(&expected),
            "{expected} missing from {events:?}"
        );
    }
}

#[tokio::test]
async fn without_an_approver_nothing_needing_approval_runs() {
    let host = billing(HostConfig::default().policy(policy(false))).await;
    assert_eq!(
        kind(host.call(request(100, "k")).await),
        "approval_unavailable"
    );
    assert_eq!(balance(&host).await, 0);
}

#[tokio::test]
async fn rejected_expired_and_reused_approvals_refuse() {
    let host = billing(HostConfig::default().policy(policy(true))).await;
    let id = pending_id(host.call(request(100, "r1")).await.unwrap_err());
    let no_reason = host
        .decide(&id, "alice", ALICE, Verdict::Reject, None)
        .await;
    assert_eq!(kind(no_reason), "decision_refused");
    host.decide(&id, "alice", ALICE, Verdict::Reject, Some("not eligible"))
        .await
        .unwrap();
    let err = host
        .call(request(100, "r1").approval_id(&id))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "approval_rejected");
    assert!(err.to_string().contains("not eligible"), "{err}");
    // Terminal: a later approve does not flip it.
    assert_eq!(
        kind(
            host.decide(&id, "alice", ALICE, Verdict::Approve, None)
                .await
        ),
        "decision_refused"
    );
    assert_eq!(
        kind(host.call(request(100, "r1").approval_id("apr-nope")).await),
        "approval_unknown"
    );
    assert_eq!(balance(&host).await, 0);
}

#[tokio::test]
async fn an_approval_expires_and_the_call_does_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = airlock_tests::install(
        "billing",
        &airlock_tests::read(&format!("{PLUGINS_DIR}/billing/billing.wasm")),
        "[capabilities]\nworkspace = \"read-write\"\n\n[[tools]]\nname = \"open-account\"\nrisk = \"write\"\n\n[[tools]]\nname = \"lookup\"\nrisk = \"read\"\n\n[[tools]]\nname = \"refund\"\nrisk = \"irreversible\"\napproval = \"required\"\nidempotency = \"required\"\napproval_expiry_s = 1\n",
    );
    let host = Host::new(
        HostConfig::default()
            .data_dir(dir.path())
            .policy(policy(true)),
    )
    .unwrap();
    host.load_plugin(plugin.path()).await.unwrap();
    host.call(CallRequest::new(
        "billing/open-account",
        json!({"account": "9182"}).to_string(),
    ))
    .await
    .unwrap();
    let id = pending_id(host.call(request(5, "e1")).await.unwrap_err());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        kind(host.call(request(5, "e1").approval_id(&id)).await),
        "approval_expired"
    );
    assert_eq!(
        kind(
            host.decide(&id, "alice", ALICE, Verdict::Approve, None)
                .await
        ),
        "decision_refused"
    );
    assert_eq!(balance(&host).await, 0);
    let expired = host
        .audit()
        .records(1)
        .filter(|r| r.as_ref().unwrap().entry.event == Event::ApprovalExpired)
        .count();
    assert_eq!(expired, 1);
}

#[tokio::test]
async fn approve_racing_reject_has_exactly_one_winner() {
    let host = Arc::new(billing(HostConfig::default().policy(policy(true))).await);
    for round in 0..10 {
        let id = pending_id(
            host.call(request(1, &format!("race{round}")))
                .await
                .unwrap_err(),
        );
        let (a, b) = (host.clone(), host.clone());
        let (i1, i2) = (id.clone(), id.clone());
        let approve =
            tokio::spawn(
                async move { a.decide(&i1, "alice", ALICE, Verdict::Approve, None).await },
            );
        let reject = tokio::spawn(async move {
            b.decide(&i2, "alice", ALICE, Verdict::Reject, Some("no"))
                .await
        });
        let (approve, reject) = (approve.await.unwrap(), reject.await.unwrap());
        assert!(
            approve.is_ok() != reject.is_ok(),
            "exactly one decision wins"
        );
        let state = host.approval(&id).unwrap().unwrap().state;
        let winner = if approve.is_ok() {
            ApprovalState::Approved
        } else {
            ApprovalState::Rejected
        };
        assert_eq!(state, winner);
        // On the record: each decision before it took effect, the
        // winner's once; the loser's, if it got that far, followed by a
        // `lost` saying it did not take effect.
        let decisions: Vec<String> = decided(&host, &id);
        let count = |d: &str| decisions.iter().filter(|x| x.as_str() == d).count();
        let loser = if approve.is_ok() {
            "rejected"
        } else {
            "approved"
        };
        assert_eq!(count(winner.as_str()), 1, "{decisions:?}");
        assert_eq!(count(loser), count("lost"), "{decisions:?}");
        assert_ne!(
            decisions.last().map(String::as_str),
            Some(loser),
            "{decisions:?}"
        );
    }
}

/// The decisions recorded on approval `id`, oldest first.
fn decided(host: &Host, id: &str) -> Vec<String> {
    host.audit()
        .records(1)
        .map(|r| r.unwrap().entry)
        .filter(|e| e.event == Event::ApprovalDecided && e.approval_id.as_deref() == Some(id))
        .map(|e| e.decision.unwrap_or_default())
        .collect()
}

/// A decision is recorded before it takes effect: one the audit log
/// cannot record leaves the approval pending. (It was stored first: the
/// approver was told it failed, yet the call could then run with no
/// record of who allowed it.)
#[tokio::test]
async fn a_decision_the_audit_log_cannot_record_does_not_take_effect() {
    let host = billing(HostConfig::default().policy(policy(true))).await;
    let id = pending_id(host.call(request(7, "unrecorded")).await.unwrap_err());
    host.audit().close().unwrap();
    let refused = host
        .decide(&id, "alice", ALICE, Verdict::Approve, None)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), "audit_unavailable", "{refused}");
    assert_eq!(
        host.approval(&id).unwrap().unwrap().state,
        ApprovalState::Pending
    );
}

/// An approval the approver's own read expires is recorded as expired
/// then: nothing else would (no sweep sees an expired approval again).
#[tokio::test]
async fn an_approval_expiring_as_an_approver_decides_is_recorded() {
    let plugin = airlock_tests::install(
        "billing",
        &airlock_tests::read(&format!("{PLUGINS_DIR}/billing/billing.wasm")),
        "[capabilities]\nworkspace = \"read-write\"\nworkspace_scope = \"plugin\"\n\n[[tools]]\nname = \"refund\"\nrisk = \"irreversible\"\napproval = \"required\"\nidempotency = \"required\"\napproval_expiry_s = 1\n",
    );
    let host = Host::new(HostConfig::default().policy(policy(true))).unwrap();
    host.load_plugin(plugin.path()).await.unwrap();
    let id = pending_id(host.call(request(10, "decide-exp")).await.unwrap_err());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refused = host
        .decide(&id, "alice", ALICE, Verdict::Approve, None)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("already expired"), "{refused}");
    let expired = host
        .audit()
        .records(1)
        .map(|r| r.unwrap().entry)
        .filter(|e| e.event == Event::ApprovalExpired && e.approval_id.as_deref() == Some(&id))
        .count();
    assert_eq!(expired, 1);
    assert!(decided(&host, &id).is_empty(), "no decision took effect");
}

#[tokio::test]
async fn a_hundred_concurrent_calls_with_one_key_execute_once() {
    let host = Arc::new(billing(HostConfig::default()).await);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            host.call(
                CallRequest::new(
                    "notes/add",
                    json!({"title": "once", "body": "x"}).to_string(),
                )
                .idempotency_key("same-key"),
            )
            .await
        }));
    }
    let (mut executed, mut replayed, mut in_use) = (0, 0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) if r.replayed_from.is_none() => executed += 1,
            Ok(_) => replayed += 1,
            Err(e) if e.kind() == "idempotency_in_use" => in_use += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(executed, 1, "replayed {replayed}, in use {in_use}");
    assert_eq!(executed + replayed + in_use, 100);
    let started = host
        .audit()
        .records(1)
        .filter(|r| {
            let e = &r.as_ref().unwrap().entry;
            e.event == Event::CallStarted && e.idempotency_key.as_deref() == Some("same-key")
        })
        .count();
    assert_eq!(started, 1);
    // Same key, other arguments.
    let other = CallRequest::new(
        "notes/add",
        json!({"title": "twice", "body": "y"}).to_string(),
    )
    .idempotency_key("same-key");
    assert_eq!(kind(host.call(other).await), "idempotency_mismatch");
}

#[tokio::test]
async fn pending_approvals_survive_a_restart_and_stay_decidable() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        HostConfig::default()
            .data_dir(dir.path())
            .policy(policy(true))
    };
    let id = {
        let host = billing(config()).await;
        pending_id(host.call(request(700, "restart")).await.unwrap_err())
    };
    let host = Host::new(config()).unwrap();
    host.load_plugin(format!("{PLUGINS_DIR}/billing"))
        .await
        .unwrap();
    let pending = host.approvals(Some(ApprovalState::Pending)).unwrap();
    assert_eq!(
        pending.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    host.decide(&id, "alice", ALICE, Verdict::Approve, None)
        .await
        .unwrap();
    host.call(request(700, "restart").approval_id(&id))
        .await
        .unwrap();
    assert_eq!(balance(&host).await, 700);
}

#[tokio::test]
async fn read_only_mode_serves_lookups_and_refuses_refunds() {
    let dir = tempfile::tempdir().unwrap();
    let host = billing(
        HostConfig::default()
            .data_dir(dir.path())
            .policy(policy(true)),
    )
    .await;
    host.set_mode(true, "ops-oncall", Some("incident 42"))
        .await
        .unwrap();
    let err = host.call(request(1, "ro")).await.unwrap_err();
    assert_eq!(err.kind(), "read_only_mode");
    assert!(err.to_string().contains("incident 42"), "{err}");
    assert_eq!(balance(&host).await, 0, "lookups still served");
    // Another process (the CLI) flips it back through the mode file.
    airlock_host::write_mode(
        dir.path(),
        &airlock_host::store::Mode {
            read_only: false,
            id: "switch-2".into(),
            by: "ops-oncall".into(),
            reason: None,
            at_ms: 0,
        },
    )
    .unwrap();
    assert_eq!(kind(host.call(request(1, "ro")).await), "approval_pending");
    let switches: Vec<Value> = host
        .audit()
        .records(1)
        .map(|r| r.unwrap().entry)
        .filter(|e| e.event == Event::ModeChanged)
        .map(|e| json!(e.decision))
        .collect();
    assert_eq!(switches, [json!("read_only"), json!("normal")]);
}

/// Poll until `principal` has a pending approval; its id.
async fn pending_of(host: &Host, principal: &str) -> String {
    for _ in 0..500 {
        let pending = host.approvals(Some(ApprovalState::Pending)).unwrap();
        if let Some(a) = pending.iter().find(|a| a.principal == principal) {
            return a.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no pending approval of {principal}");
}

/// A call admitted before a switch to read-only mode (or a pause), that
/// waited for its plugin's slot meanwhile, ran once the slot was free:
/// during an incident, the calls queued behind a busy plugin — often the
/// ones causing it — still wrote. The mode and the pauses are checked
/// again before the guest starts; the call never ran, so its idempotency
/// key is free for a later try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_for_a_slot_are_held_to_a_mode_switch_or_pause_made_meanwhile() {
    let data = tempfile::tempdir().unwrap();
    let host = Arc::new(Host::new(HostConfig::default().data_dir(data.path())).unwrap());
    let plugin = airlock_tests::install(
        "queue",
        &airlock_tests::read(airlock_tests::MISBEHAVE),
        "[capabilities]\nlog = true\n\n[limits]\ntimeout_ms = 20000\nmax_concurrency = 1\nfuel = 1_000_000_000_000_000\n\n\
         [[tools]]\nname = \"spin\"\nrisk = \"read\"\n\n[[tools]]\nname = \"echo\"\nrisk = \"write\"\n",
    );
    host.load_plugin(plugin.path()).await.unwrap();
    let spawn = |tool: &'static str, key: &'static str, cancel: CancellationToken| {
        let host = Arc::clone(&host);
        tokio::spawn(async move {
            host.call(
                CallRequest::new(tool, r#"{"n":1}"#)
                    .idempotency_key(key)
                    .cancel_on(cancel),
            )
            .await
        })
    };

    for (hold, key) in [("mode", "queued-1"), ("pause", "queued-2")] {
        // The spin holds the one slot until it is cancelled; the write
        // waits (within its 20 s).
        let stop_spin = CancellationToken::new();
        let spin = spawn(
            "queue/spin",
            if hold == "mode" { "spin-1" } else { "spin-2" },
            stop_spin.clone(),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let queued = spawn("queue/echo", key, CancellationToken::new());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!queued.is_finished(), "the write waits for the slot");
        match hold {
            "mode" => {
                host.set_mode(true, "ops-oncall", Some("incident"))
                    .await
                    .unwrap();
            }
            _ => {
                host.pause("queue/echo", "ops-oncall", Some("takeover"))
                    .await
                    .unwrap();
            }
        }
        stop_spin.cancel();
        assert_eq!(kind(spin.await.unwrap()), "cancelled");
        let expected = if hold == "mode" {
            "read_only_mode"
        } else {
            "tool_paused"
        };
        assert_eq!(kind(queued.await.unwrap()), expected);
        match hold {
            "mode" => {
                host.set_mode(false, "ops-oncall", None).await.unwrap();
            }
            _ => {
                host.resume("queue/echo", "ops-oncall", None).await.unwrap();
            }
        }
        // Never ran: the same key runs now, not a replay of the refusal.
        let again = host
            .call(CallRequest::new("queue/echo", r#"{"n":1}"#).idempotency_key(key))
            .await
            .unwrap();
        assert_eq!(again.output, json!({"n": 1}));
        assert!(again.replayed_from.is_none());
    }
}

/// A call that waited for its approval was admitted before the wait: a
/// switch to read-only mode, or a pause of the tool, made while a human
/// decided, did not hold for it — approved, it ran the refund. Both are
/// checked again before the approval is used, which is left for a later
/// call.
#[tokio::test]
async fn a_call_waiting_for_approval_is_held_to_a_mode_switch_or_pause_made_meanwhile() {
    let host = Arc::new(billing(HostConfig::default().policy(policy(true))).await);
    let wait = |key: &'static str| {
        let host = Arc::clone(&host);
        tokio::spawn(async move {
            host.call(request(2400, key).wait_for_approval(Duration::from_secs(60)))
                .await
        })
    };

    let waiting = wait("k-mode");
    let id = pending_of(&host, "agent-1").await;
    host.set_mode(true, "ops-oncall", Some("incident 43"))
        .await
        .unwrap();
    host.decide(&id, "alice", ALICE, Verdict::Approve, None)
        .await
        .unwrap();
    assert_eq!(kind(waiting.await.unwrap()), "read_only_mode");
    assert_eq!(balance(&host).await, 0, "nothing ran in read-only mode");
    let state = host.approval(&id).unwrap().unwrap().state;
    assert_eq!(state, ApprovalState::Approved, "left for a later call");
    host.set_mode(false, "ops-oncall", None).await.unwrap();

    let paused = wait("k-pause");
    // The first approval is approved, not pending: only the second is.
    let second = pending_of(&host, "agent-1").await;
    assert_ne!(second, id);
    host.pause("billing/refund", "ops-oncall", Some("takeover"))
        .await
        .unwrap();
    host.decide(&second, "alice", ALICE, Verdict::Approve, None)
        .await
        .unwrap();
    assert_eq!(kind(paused.await.unwrap()), "tool_paused");
    assert_eq!(balance(&host).await, 0, "nothing ran while paused");
    host.resume("billing/refund", "ops-oncall", None)
        .await
        .unwrap();

    // Back to normal: each approval serves its own call, once.
    host.call(request(2400, "k-mode").approval_id(&id))
        .await
        .unwrap();
    host.call(request(2400, "k-pause").approval_id(&second))
        .await
        .unwrap();
    assert_eq!(balance(&host).await, 4800);
}

/// A wait for approval longer than `Instant` can hold waits until the
/// approval is decided or expires (it panicked the call).
#[tokio::test]
async fn an_unbounded_wait_for_approval_does_not_panic() {
    let host = Arc::new(billing(HostConfig::default().policy(policy(true))).await);
    let waiting = {
        let host = Arc::clone(&host);
        tokio::spawn(async move {
            host.call(request(2400, "k-max").wait_for_approval(Duration::MAX))
                .await
        })
    };
    let id = pending_of(&host, "agent-1").await;
    host.decide(&id, "alice", ALICE, Verdict::Reject, Some("no"))
        .await
        .unwrap();
    assert_eq!(kind(waiting.await.unwrap()), "approval_rejected");
}

#[tokio::test]
async fn a_store_failure_refuses_the_call() {
    let host = billing(HostConfig::default().policy(policy(true))).await;
    host.audit().close().unwrap();
    // The approval request cannot be recorded: nothing is pending, nothing runs.
    assert_eq!(kind(host.call(request(3, "sf")).await), "audit_unavailable");
    assert!(
        host.approvals(None).unwrap().is_empty(),
        "no unrecorded approval exists"
    );
    // Even a lookup needs its record: with the log closed it does not run.
    let lookup = host
        .call(CallRequest::new(
            "billing/lookup",
            json!({"account": "9182"}).to_string(),
        ))
        .await;
    assert_eq!(kind(lookup), "audit_unavailable");
}

#[tokio::test]
async fn a_rate_limit_is_hit_says_when_to_retry_and_recovers() {
    let mut policy = Policy::default();
    policy.rate_limits.principal = Some("3/s".into());
    let host = billing(HostConfig::default().policy(policy)).await;
    let lookup = || {
        CallRequest::new("billing/lookup", json!({"account": "9182"}).to_string())
            .principal("agent-9")
    };
    for _ in 0..3 {
        host.call(lookup()).await.unwrap();
    }
    let err = host.call(lookup()).await.unwrap_err();
    let CallError::RateLimited {
        scope,
        retry_after_ms,
    } = &err
    else {
        panic!("expected rate_limited, got {err}");
    };
    assert_eq!(scope, "principal agent-9");
    assert!(
        *retry_after_ms > 0 && *retry_after_ms <= 1000,
        "{retry_after_ms}"
    );
    // Another principal has its own bucket.
    host.call(lookup().principal("agent-10")).await.unwrap();
    // The refusal is on the record.
    let refused = host
        .audit()
        .records(1)
        .filter(|r| r.as_ref().unwrap().entry.outcome.as_deref() == Some("rate_limited"))
        .count();
    assert_eq!(refused, 1);
    tokio::time::sleep(Duration::from_millis(*retry_after_ms + 50)).await;
    host.call(lookup()).await.unwrap();
}

#[test]
fn a_bad_rate_in_the_policy_is_a_config_error() {
    let mut policy = Policy::default();
    policy
        .rate_limits
        .plugins
        .insert("billing".into(), "lots/min".into());
    let err = Host::new(HostConfig::default().policy(policy)).unwrap_err();
    assert_eq!(err.kind(), "config");
    assert!(
        err.to_string()
            .contains("policy.rate_limits.plugins.billing"),
        "{err}"
    );
}

#[tokio::test]
async fn manifest_plugin_and_named_principal_limits_each_apply() {
    use airlock_tests::{MISBEHAVE, install, read};
    let plugin = install(
        "misbehave",
        &read(MISBEHAVE),
        "[capabilities]\nlog = true\n\n[[tools]]\nname = \"echo\"\nrisk = \"read\"\nrate_limit = \"2/hour\"\n\n[[tools]]\nname = \"now\"\nrisk = \"read\"\n",
    );
    let mut policy = Policy::default();
    policy.rate_limits.principal = Some("100/hour".into());
    policy
        .rate_limits
        .principals
        .insert("batch".into(), "1/hour".into());
    policy
        .rate_limits
        .plugins
        .insert("misbehave".into(), "4/hour".into());
    let host = Host::new(HostConfig::default().policy(policy)).unwrap();
    host.load_plugin(plugin.path()).await.unwrap();
    let call = |tool: &str, who: &str| {
        host.call(CallRequest::new(format!("misbehave/{tool}"), "{}").principal(who))
    };
    let scope = |result: Result<_, CallError>| match result {
        Err(CallError::RateLimited { scope, .. }) => scope,
        other => panic!("expected rate_limited, got {other:?}"),
    };
    // The manifest's limit on `echo` holds across callers.
    call("echo", "a").await.unwrap();
    call("echo", "b").await.unwrap();
    assert_eq!(scope(call("echo", "c").await), "tool misbehave/echo");
    // The named principal's own limit replaces the default one.
    call("now", "batch").await.unwrap();
    assert_eq!(scope(call("now", "batch").await), "principal batch");
    // The plugin's limit covers every tool and caller: 2 echo + 1 now so far
    // (refused calls take no token).
    call("now", "a").await.unwrap();
    assert_eq!(scope(call("now", "b").await), "plugin misbehave");
}

/// An approval given for a call in one session, resumed from another: the
/// session changes what the guest reaches (its workspace keys), so it is
/// part of what was approved.
#[tokio::test]
async fn approved_refund_resumed_with_another_session_is_refused() {
    let host = billing(HostConfig::default().policy(policy(true))).await;
    let id = pending_id(
        host.call(request(700, "sess-1").session("s1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        host.approval(&id).unwrap().unwrap().session.as_deref(),
        Some("s1")
    );
    host.decide(&id, "alice", ALICE, Verdict::Approve, None)
        .await
        .unwrap();
    for other in [Some("s2"), None] {
        let mut resumed = request(700, "sess-1").approval_id(&id);
        if let Some(s) = other {
            resumed = resumed.session(s);
        }
        let err = host.call(resumed).await.unwrap_err();
        assert_eq!(err.kind(), "approval_mismatch", "{other:?}: {err}");
        assert!(err.to_string().contains("session"), "{err}");
    }
    assert_eq!(balance(&host).await, 0);
    // The call as approved still runs, once.
    host.call(request(700, "sess-1").session("s1").approval_id(&id))
        .await
        .unwrap();
    assert_eq!(balance(&host).await, 700);
}

/// An approved approval nobody uses must not stay usable forever.
#[tokio::test]
async fn an_approved_approval_never_used_expires_and_is_recorded() {
    let mut p = policy(true);
    p.approvals.approved_expiry_s = 1;
    let host = billing(HostConfig::default().policy(p)).await;
    let id = pending_id(host.call(request(300, "late")).await.unwrap_err());
    host.decide(&id, "alice", ALICE, Verdict::Approve, None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = host
        .call(request(300, "late").approval_id(&id))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "approval_expired");
    assert!(err.to_string().contains("not used in time"), "{err}");
    assert_eq!(balance(&host).await, 0);
    let expired: Vec<_> = host
        .audit()
        .records(1)
        .map(|r| r.unwrap().entry)
        .filter(|e| e.event == Event::ApprovalExpired)
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        expired[0].reason.as_deref(),
        Some("approved but not used in time")
    );
}

/// An approval that expires while an approver lists them used to change
/// state with nothing on the record.
#[tokio::test]
async fn an_approval_expiring_on_listing_is_recorded() {
    let plugin = airlock_tests::install(
        "billing",
        &airlock_tests::read(&format!("{PLUGINS_DIR}/billing/billing.wasm")),
        "[capabilities]\nworkspace = \"read-write\"\nworkspace_scope = \"plugin\"\n\n[[tools]]\nname = \"open-account\"\nrisk = \"write\"\n\n[[tools]]\nname = \"lookup\"\nrisk = \"read\"\n\n[[tools]]\nname = \"refund\"\nrisk = \"irreversible\"\napproval = \"required\"\nidempotency = \"required\"\napproval_expiry_s = 1\n",
    );
    let host = Host::new(HostConfig::default().policy(policy(true))).unwrap();
    host.load_plugin(plugin.path()).await.unwrap();
    let id = pending_id(host.call(request(10, "list-exp")).await.unwrap_err());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let all = host.approvals(None).unwrap();
    assert_eq!(all[0].state, ApprovalState::Expired);
    let recorded = host
        .audit()
        .records(1)
        .map(|r| r.unwrap().entry)
        .filter(|e| e.event == Event::ApprovalExpired && e.approval_id.as_deref() == Some(&id))
        .count();
    assert_eq!(recorded, 1);
    // Listing again records nothing more.
    host.approvals(None).unwrap();
    let again = host
        .audit()
        .records(1)
        .filter(|r| r.as_ref().unwrap().entry.event == Event::ApprovalExpired)
        .count();
    assert_eq!(again, 1);
}

/// A caller flooding approvers with requests is stopped at the policy's
/// bound; other principals can still ask.
#[tokio::test]
async fn pending_approval_flood_by_one_principal_is_bounded() {
    let mut p = policy(true);
    p.approvals.max_pending_per_principal = 3;
    let host = billing(HostConfig::default().policy(p)).await;
    for i in 0..3 {
        pending_id(
            host.call(request(1, &format!("flood-{i}")))
                .await
                .unwrap_err(),
        );
    }
    let err = host.call(request(1, "flood-3")).await.unwrap_err();
    assert_eq!(err.kind(), "too_many_pending_approvals", "{err}");
    assert_eq!(host.approvals(None).unwrap().len(), 3);
    let other = CallRequest::new("billing/refund", refund(1))
        .principal("agent-2")
        .idempotency_key("other-1");
    pending_id(host.call(other).await.unwrap_err());
}

/// The bound held only for requests one after the other: concurrent calls
/// of one principal each counted the pending requests before any of them
/// stored its own, and all were stored — a caller fanning out got as many
/// approval requests in front of the approvers as it had calls in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_of_one_principal_stay_within_the_bound() {
    let mut p = policy(true);
    p.approvals.max_pending_per_principal = 3;
    let host = Arc::new(billing(HostConfig::default().policy(p)).await);
    let calls: Vec<_> = (0..32)
        .map(|i| {
            let host = Arc::clone(&host);
            tokio::spawn(async move { host.call(request(1, &format!("fan-{i}"))).await })
        })
        .collect();
    let mut kinds = std::collections::BTreeMap::new();
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        *kinds.entry(err.kind()).or_insert(0) += 1;
    }
    assert_eq!(kinds.get("approval_pending"), Some(&3), "{kinds:?}");
    assert_eq!(
        kinds.get("too_many_pending_approvals"),
        Some(&29),
        "{kinds:?}"
    );
    assert_eq!(host.approvals(None).unwrap().len(), 3);
}

/// The ledger used to grow forever: finished keys and decided approvals
/// are forgotten after their retention (the audit log keeps the history).
#[tokio::test]
async fn the_ledger_sweeper_forgets_what_is_past_retention() {
    let mut p = policy(true);
    p.approvals.retention_s = 0;
    p.approvals.idempotency_retention_s = 0;
    let host = billing(HostConfig::default().policy(p)).await;
    let id = pending_id(host.call(request(5, "sweep")).await.unwrap_err());
    host.decide(&id, "alice", ALICE, Verdict::Approve, None)
        .await
        .unwrap();
    host.call(request(5, "sweep").approval_id(&id))
        .await
        .unwrap();
    // A pending approval is never swept.
    let pending = pending_id(host.call(request(6, "sweep-2")).await.unwrap_err());
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = host.sweep_ledger().unwrap();
    assert_eq!(report.approvals_removed, 1);
    assert_eq!(report.keys_removed, 1);
    assert!(host.approval(&id).unwrap().is_none());
    assert_eq!(
        host.approval(&pending).unwrap().unwrap().state,
        ApprovalState::Pending
    );
}

#[tokio::test]
async fn arguments_no_approver_can_see_are_approved_only_as_unseen() {
    let host = billing(HostConfig::default().policy(policy(true))).await;
    let held = |key: &str| {
        CallRequest::new(
            "billing/refund",
            json!({"account": "9182", "amount_cents": 2400, "reason": "lost",
                "card_last4": "4242"})
            .to_string(),
        )
        .principal("agent-1")
        .idempotency_key(key)
    };
    let id = pending_id(host.call(held("unseen-1")).await.unwrap_err());
    let stored = host.approval(&id).unwrap().unwrap();
    assert!(!stored.args.contains("4242"), "{}", stored.args);
    assert_eq!(
        unseen_arguments(&stored),
        Some("values were redacted before they were stored")
    );
    // A plain approval is refused, and changes nothing.
    let refused = host
        .decide(&id, "alice", ALICE, Verdict::Approve, Some("ok"))
        .await;
    let message = refused.as_ref().unwrap_err().to_string();
    assert!(message.contains("values were redacted"), "{message}");
    assert_eq!(kind(refused), "unseen_arguments");
    let still = host.approval(&id).unwrap().unwrap();
    assert_eq!(still.state, ApprovalState::Pending);
    assert!(decided(&host, &id).is_empty());
    // Said so, it is granted, and the call runs with the caller's values.
    let approved = host
        .decide(&id, "alice", ALICE, Verdict::ApproveUnseen, Some("ok"))
        .await
        .unwrap();
    assert_eq!(approved.state, ApprovalState::Approved);
    host.call(held("unseen-1").approval_id(&id)).await.unwrap();
    assert_eq!(balance(&host).await, 2400);
    // A rejection needs no acknowledgement; a call whose arguments are
    // all shown needs none to be approved.
    let other = pending_id(host.call(held("unseen-2")).await.unwrap_err());
    host.decide(&other, "alice", ALICE, Verdict::Reject, Some("no"))
        .await
        .unwrap();
    let plain = pending_id(host.call(request(100, "seen-1")).await.unwrap_err());
    assert_eq!(
        unseen_arguments(&host.approval(&plain).unwrap().unwrap()),
        None
    );
    host.decide(&plain, "alice", ALICE, Verdict::Approve, None)
        .await
        .unwrap();
    // Redaction's mark written by the caller is a value the approver sees
    // as the tool will get it: approved plainly (the host knows it
    // redacted nothing), where searching the copy for the mark would have
    // made every approver of such a call approve "unseen".
    let marked = CallRequest::new(
        "billing/refund",
        json!({"account": "9182", "amount_cents": 100, "reason": "[redacted: sha256 0000]"})
            .to_string(),
    )
    .principal("agent-1")
    .idempotency_key("seen-2");
    let marked = pending_id(host.call(marked).await.unwrap_err());
    let stored = host.approval(&marked).unwrap().unwrap();
    assert!(
        stored.args.contains("[redacted: sha256 0000]"),
        "{}",
        stored.args
    );
    assert_eq!(stored.args_redacted, Some(false));
    assert_eq!(unseen_arguments(&stored), None);
    host.decide(&marked, "alice", ALICE, Verdict::Approve, None)
        .await
        .unwrap();
    // An approval stored before the flag was kept falls back to the marks.
    let mut older = stored;
    older.args_redacted = None;
    assert_eq!(
        unseen_arguments(&older),
        Some("values were redacted before they were stored")
    );
}

/// An approval a newer host wrote may bind the call by terms this host
/// does not know: it is never used here (the call does not run, the
/// approval stays unused), and deciding it here keeps those terms.
#[tokio::test]
async fn an_approval_with_terms_this_host_does_not_know_is_kept_whole_and_not_used() {
    let data = tempfile::tempdir().unwrap();
    let stores = airlock_host::store::Stores::memory();
    let ledger = airlock_host::store::Ledger::new(stores.ledger.clone());
    let host = billing(
        HostConfig::default()
            .data_dir(data.path())
            .policy(policy(true))
            .store(airlock_host::StoreConfig::Custom(stores)),
    )
    .await;
    let id = pending_id(host.call(request(900, "newer")).await.unwrap_err());
    // A newer host's term, as it would have written it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    ledger
        .transition(&id, ApprovalState::Pending, now, |a| {
            a.unknown_fields
                .insert("only_in_region".into(), json!("eu-west"));
        })
        .unwrap();
    host.decide(&id, "alice", ALICE, Verdict::Approve, None)
        .await
        .unwrap();
    let decided = host.approval(&id).unwrap().unwrap();
    assert_eq!(decided.state, ApprovalState::Approved);
    assert_eq!(
        decided.unknown_fields.get("only_in_region"),
        Some(&json!("eu-west")),
        "the decision erased a newer host's term"
    );
    let err = host
        .call(request(900, "newer").approval_id(&id))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "approval_mismatch", "{err}");
    assert!(
        err.to_string().contains("\"only_in_region\"") && err.to_string().contains("newer"),
        "{err}"
    );
    assert_eq!(balance(&host).await, 0, "the refund ran");
    let kept = host.approval(&id).unwrap().unwrap();
    assert_eq!(kept.state, ApprovalState::Approved, "the approval was used");
}
