//! The conformance suite: what every backend must do, run against each.
//!
//! A backend's tests invoke [`conformance_tests!`](crate::conformance_tests)
//! with two functions: one returning fresh, empty [`Stores`], and one
//! returning another handle on the same data (another pool, another
//! process's view) — so the races below run between "hosts", not only
//! between threads.
//!
//! Each check panics with a message naming what failed.

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde_json::json;

use crate::{
    Approval, ApprovalState, AuditWrite, Changed, Claim, ErrorKind, IdempotencyState, Installed,
    KeyHeads, KeyOwner, KeyRef, Ledger, Marker, Mode, Quota, Rate, Releases, Rollout,
    RolloutAction, RolloutChange, Stores, Transition, Usage, VersionFiles, Workspace,
    WorkspaceError,
};

/// Generate one `#[test]` per check, for a backend.
///
/// `$fresh` is an expression of type `fn() -> Stores` (empty stores),
/// `$peer` of type `fn(&Stores) -> Stores` (another handle on the same
/// data).
#[macro_export]
macro_rules! conformance_tests {
    ($fresh:expr, $peer:expr) => {
        $crate::conformance_tests!(single_origin: $fresh, $peer);
        $crate::conformance_tests!(@each $fresh, $peer; audit_chains_of_origins_are_separate);
    };
    // A backend whose audit store holds one origin's chain (sled: one
    // host per data directory) runs every check but the one of many
    // origins, and shows its refusal of a second origin on its own.
    (single_origin: $fresh:expr, $peer:expr) => {
        $crate::conformance_tests!(@each $fresh, $peer;
            approvals_move_through_their_lifecycle,
            an_approval_keeps_the_fields_a_newer_host_wrote,
            an_approval_id_is_taken_once,
            racing_decisions_have_one_winner,
            an_overdue_approval_expires_once,
            one_idempotency_key_is_claimed_once_across_hosts,
            an_idempotency_key_settles_once,
            recovery_touches_only_the_hosts_own_keys,
            the_sweep_forgets_only_what_retention_allows,
            key_heads_select_keys_in_flight_and_keys_finished_before,
            an_outcome_too_deep_to_decode_is_still_listed_and_swept,
            meta_values_round_trip,
            racing_meta_swaps_lose_no_write,
            workspace_writes_account_usage,
            a_refused_workspace_write_changes_nothing,
            workspace_quotas_hold_under_concurrent_writers,
            workspace_keys_list_by_owner_and_prefix,
            blobs_are_stored_once,
            rate_limits_take_all_or_nothing,
            rate_limits_are_shared_by_hosts,
            the_mode_is_seen_by_every_host,
            audit_chains_are_gap_free_and_never_fork,
            audit_markers_follow_their_records,
            installed_versions_never_change,
            racing_rollout_changes_have_one_winner,
        );
    };
    (@each $fresh:expr, $peer:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::conformance::$check($fresh, $peer);
            }
        )*
    };
}

/// How a backend makes its stores.
pub type Fresh = fn() -> Stores;
/// How a backend opens another handle on the same data.
pub type Peer = fn(&Stores) -> Stores;

const DAY: Duration = Duration::from_secs(86_400);

/// A pending approval of `billing/refund` for `principal`, for tests of a
/// backend beyond this suite.
pub fn approval(id: &str, principal: &str, created_ms: u64, expires_ms: u64) -> Approval {
    Approval {
        id: id.to_owned(),
        kind: crate::ApprovalKind::Call,
        state: ApprovalState::Pending,
        plugin: "billing".into(),
        component_digest: "sha256:00".into(),
        plugin_version: Some("0.1.0".into()),
        manifest_digest: Some("sha256:01".into()),
        tool: "refund".into(),
        risk: "irreversible".into(),
        args_digest: "digest".into(),
        args: "{\"amount\":5}".into(),
        args_truncated: false,
        args_redacted: Some(false),
        principal: principal.to_owned(),
        session: None,
        idempotency_key: None,
        caller_reason: None,
        call_id: format!("call-{id}"),
        created_ms,
        expires_ms,
        decided_by: None,
        decided_ms: None,
        decision_reason: None,
        consumed_by_call: None,
        unknown_fields: serde_json::Map::new(),
    }
}

fn threads<T: Send + 'static>(n: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let f = Arc::new(f);
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let f = f.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                f(i)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("a conformance thread panicked"))
        .collect()
}

/// Create, read, approve, consume; terminal states do not change.
pub fn approvals_move_through_their_lifecycle(fresh: Fresh, _peer: Peer) {
    let ledger = Ledger::new(fresh().ledger);
    ledger
        .create_approval(&approval("a1", "agent", 100, 10_000))
        .expect("create");
    let (read, expired) = ledger.approval("a1", 200).expect("read").expect("exists");
    assert_eq!(read.state, ApprovalState::Pending);
    assert!(!expired);
    let approved = ledger
        .transition("a1", ApprovalState::Pending, 300, |a| {
            a.state = ApprovalState::Approved;
            a.decided_by = Some("alice".into());
            a.decided_ms = Some(300);
        })
        .expect("approve");
    let Transition::Done(approved) = approved else {
        panic!("approving a pending approval did not move it: {approved:?}");
    };
    assert_eq!(approved.decided_by.as_deref(), Some("alice"));
    let again = ledger
        .transition("a1", ApprovalState::Pending, 310, |a| {
            a.state = ApprovalState::Rejected;
        })
        .expect("second decision");
    assert!(
        matches!(&again, Transition::Already(a) if a.state == ApprovalState::Approved),
        "a second decision changed a decided approval: {again:?}"
    );
    let consumed = ledger
        .transition("a1", ApprovalState::Approved, 400, |a| {
            a.state = ApprovalState::Consumed;
            a.consumed_by_call = Some("call-2".into());
        })
        .expect("consume");
    assert!(matches!(consumed, Transition::Done(_)));
    assert_eq!(
        ledger
            .transition("missing", ApprovalState::Pending, 400, |_| {})
            .expect("missing"),
        Transition::NotFound
    );
    let all = ledger.approvals(None, 500).expect("list").list;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, ApprovalState::Consumed);
    assert_eq!(all[0].consumed_by_call.as_deref(), Some("call-2"));
    let consumed = ledger
        .approvals(Some(ApprovalState::Consumed), 500)
        .expect("list consumed")
        .list;
    assert_eq!(consumed.len(), 1);
    let pending = ledger
        .approvals(Some(ApprovalState::Pending), 500)
        .expect("list pending")
        .list;
    assert!(pending.is_empty());
}

/// Fields of an approval this version does not know (a newer host's,
/// sharing the store) survive a decision and a use made by this one.
pub fn an_approval_keeps_the_fields_a_newer_host_wrote(fresh: Fresh, peer: Peer) {
    let stores = fresh();
    let newer: Approval = serde_json::from_value(json!({
        "id": "a1", "kind": "call", "state": "pending", "plugin": "billing",
        "component_digest": "sha256:00", "tool": "refund", "risk": "irreversible",
        "args_digest": "digest", "args": "{}", "principal": "agent",
        "idempotency_key": null, "caller_reason": null, "call_id": "call-a1",
        "created_ms": 100, "expires_ms": 10_000, "decided_by": null,
        "decided_ms": null, "decision_reason": null, "consumed_by_call": null,
        "only_in_region": "eu-west", "limits": {"max": [1, 2]},
    }))
    .expect("an approval with fields this version does not know parses");
    assert_eq!(newer.unknown_fields.len(), 2);
    Ledger::new(stores.ledger.clone())
        .create_approval(&newer)
        .expect("create");
    let ledger = Ledger::new(peer(&stores).ledger);
    for (from, to) in [
        (ApprovalState::Pending, ApprovalState::Approved),
        (ApprovalState::Approved, ApprovalState::Consumed),
    ] {
        let moved = ledger
            .transition("a1", from, 200, |a| a.state = to)
            .expect("transition");
        assert!(matches!(moved, Transition::Done(_)), "{moved:?}");
        let (read, _) = ledger.approval("a1", 300).expect("read").expect("exists");
        assert_eq!(read.state, to);
        assert_eq!(
            read.unknown_fields, newer.unknown_fields,
            "moving it to {to:?} lost fields"
        );
    }
    let listed = ledger.approvals(None, 300).expect("list").list;
    assert_eq!(listed[0].unknown_fields, newer.unknown_fields);
}

/// A second approval with a taken id is a conflict, and changes nothing.
pub fn an_approval_id_is_taken_once(fresh: Fresh, _peer: Peer) {
    let ledger = Ledger::new(fresh().ledger);
    ledger
        .create_approval(&approval("dup", "agent", 1, 10_000))
        .expect("create");
    let mut other = approval("dup", "mallory", 2, 10_000);
    other.args = "{\"amount\":5000}".into();
    let err = ledger
        .create_approval(&other)
        .expect_err("a taken id was accepted");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let (stored, _) = ledger.approval("dup", 3).expect("read").expect("exists");
    assert_eq!(stored.principal, "agent");
}

/// Approve and reject racing from two hosts: exactly one decision wins.
pub fn racing_decisions_have_one_winner(fresh: Fresh, peer: Peer) {
    let a = fresh();
    let b = peer(&a);
    Ledger::new(a.ledger.clone())
        .create_approval(&approval("race", "agent", 1, 1_000_000))
        .expect("create");
    let ledgers = [Ledger::new(a.ledger), Ledger::new(b.ledger)];
    let outcomes = threads(8, move |i| {
        let state = if i % 2 == 0 {
            ApprovalState::Approved
        } else {
            ApprovalState::Rejected
        };
        ledgers[i % 2]
            .transition("race", ApprovalState::Pending, 10, |a| {
                a.state = state;
                a.decided_by = Some(format!("approver-{i}"));
            })
            .expect("decide")
    });
    let winners: Vec<_> = outcomes
        .iter()
        .filter_map(|t| match t {
            Transition::Done(a) => Some(a.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "decisions that won: {winners:?}");
    for outcome in &outcomes {
        if let Transition::Already(a) = outcome {
            assert_eq!(a, &winners[0], "a loser saw another decision");
        }
    }
}

/// Readers racing past the deadline: the approval expires, and exactly one
/// reader is told it expired it (so the expiry is recorded once).
pub fn an_overdue_approval_expires_once(fresh: Fresh, peer: Peer) {
    let a = fresh();
    let b = peer(&a);
    Ledger::new(a.ledger.clone())
        .create_approval(&approval("late", "agent", 1, 100))
        .expect("create");
    let ledgers = [Ledger::new(a.ledger), Ledger::new(b.ledger)];
    let seen = threads(8, move |i| {
        ledgers[i % 2]
            .approval("late", 200)
            .expect("read")
            .expect("exists")
    });
    assert!(seen.iter().all(|(a, _)| a.state == ApprovalState::Expired));
    assert_eq!(seen.iter().filter(|(_, expired)| *expired).count(), 1);
}

/// 32 claims of one key split over two hosts: exactly one is granted, and
/// every other sees it held.
pub fn one_idempotency_key_is_claimed_once_across_hosts(fresh: Fresh, peer: Peer) {
    let a = fresh();
    let b = peer(&a);
    let ledgers = [Ledger::new(a.ledger), Ledger::new(b.ledger)];
    let key = KeyRef::new("agent", "billing", "refund", "order-17");
    let claims = threads(32, move |i| {
        ledgers[i % 2]
            .claim(
                &key,
                "digest",
                (&format!("call-{i}"), ["host-a", "host-b"][i % 2]),
                1_000,
                DAY,
            )
            .expect("claim")
    });
    let granted = claims.iter().filter(|c| **c == Claim::Claimed).count();
    assert_eq!(granted, 1, "claims granted: {granted}");
    // Another principal's key of the same name is its own.
    let ledger = Ledger::new(fresh().ledger);
    let mine = KeyRef::new("agent", "billing", "refund", "k");
    let theirs = KeyRef::new("other", "billing", "refund", "k");
    assert_eq!(
        ledger.claim(&mine, "d", ("c1", "h"), 1, DAY).expect("mine"),
        Claim::Claimed
    );
    assert_eq!(
        ledger
            .claim(&theirs, "d", ("c2", "h"), 1, DAY)
            .expect("theirs"),
        Claim::Claimed
    );
}

/// Complete, mark unknown, release: each settles an in-flight key once;
/// a finished key is replaced only after its retention.
pub fn an_idempotency_key_settles_once(fresh: Fresh, _peer: Peer) {
    let ledger = Ledger::new(fresh().ledger);
    let key = KeyRef::new("agent", "billing", "refund", "done");
    assert_eq!(
        ledger
            .claim(&key, "d", ("c1", "h"), 1_000, DAY)
            .expect("claim"),
        Claim::Claimed
    );
    ledger
        .complete(&key, Ok(json!({"refund": "r-1"})))
        .expect("complete");
    // Settling again (a late cancel) changes nothing.
    ledger.mark_unknown(&key).expect("late mark");
    ledger.release(&key).expect("late release");
    let Claim::Existing(entry) = ledger
        .claim(&key, "d", ("c2", "h"), 2_000, DAY)
        .expect("retry")
    else {
        panic!("a completed key was claimed again");
    };
    assert_eq!(
        entry.state,
        IdempotencyState::Completed {
            call_id: "c1".into(),
            outcome: Ok(json!({"refund": "r-1"}))
        }
    );
    // Past its retention the key is free again.
    let later = 1_000 + DAY.as_millis() as u64 + 1;
    assert_eq!(
        ledger
            .claim(&key, "d", ("c3", "h"), later, DAY)
            .expect("reuse"),
        Claim::Claimed
    );

    let unknown = KeyRef::new("agent", "billing", "refund", "cut");
    ledger
        .claim(&unknown, "d", ("c4", "h"), 1_000, DAY)
        .expect("claim");
    ledger.mark_unknown(&unknown).expect("mark");
    let Claim::Existing(entry) = ledger
        .claim(&unknown, "d", ("c5", "h"), 1_001, DAY)
        .expect("retry")
    else {
        panic!("a key of unknown outcome was claimed again");
    };
    assert_eq!(
        entry.state,
        IdempotencyState::Unknown {
            call_id: "c4".into()
        }
    );

    let released = KeyRef::new("agent", "billing", "refund", "held");
    ledger
        .claim(&released, "d", ("c6", "h"), 1_000, DAY)
        .expect("claim");
    ledger.release(&released).expect("release");
    assert_eq!(
        ledger
            .claim(&released, "d", ("c7", "h"), 1_001, DAY)
            .expect("claim again"),
        Claim::Claimed
    );
}

/// A host that starts again makes its own in-flight keys unknown, never
/// another host's.
pub fn recovery_touches_only_the_hosts_own_keys(fresh: Fresh, peer: Peer) {
    let a = fresh();
    let b = peer(&a);
    let ledger_a = Ledger::new(a.ledger);
    let ledger_b = Ledger::new(b.ledger);
    let mine = KeyRef::new("agent", "p", "t", "mine");
    let theirs = KeyRef::new("agent", "p", "t", "theirs");
    ledger_a
        .claim(&mine, "d", ("c1", "host-a"), 1, DAY)
        .expect("claim");
    ledger_b
        .claim(&theirs, "d", ("c2", "host-b"), 1, DAY)
        .expect("claim");
    let recovery = ledger_a.recover("host-a").expect("recover");
    assert_eq!(recovery.changed, vec![mine.clone()]);
    assert!(recovery.unreadable.is_empty(), "{recovery:?}");
    let state = |key: &KeyRef| match ledger_b.claim(key, "d", ("c9", "host-b"), 2, DAY) {
        Ok(Claim::Existing(e)) => e.state,
        other => panic!("unexpected claim: {other:?}"),
    };
    assert!(matches!(state(&mine), IdempotencyState::Unknown { .. }));
    assert!(matches!(state(&theirs), IdempotencyState::InFlight { .. }));
}

/// What a host starting and the sweep list: the keys in flight, and the
/// keys finished before a time — each exactly those on a store that
/// holds no entry from before the head columns.
pub fn key_heads_select_keys_in_flight_and_keys_finished_before(fresh: Fresh, _peer: Peer) {
    let stores = fresh();
    let ledger = Ledger::new(stores.ledger.clone());
    let key = |name: &str| KeyRef::new("agent", "p", "t", name);
    for (name, created, finish) in [
        ("old", 0, true),
        ("new", 5_000, true),
        ("running", 0, false),
    ] {
        ledger
            .claim(&key(name), "d", (name, "h"), created, DAY)
            .expect("claim");
        if finish {
            ledger.complete(&key(name), Ok(json!(1))).expect("complete");
        }
    }
    let names = |which: KeyHeads| {
        let listing = stores.ledger.key_heads(which).expect("key heads");
        assert!(listing.unreadable.is_empty(), "{listing:?}");
        let mut names: Vec<String> = listing.keys.into_iter().map(|(k, _)| k.key).collect();
        names.sort();
        names
    };
    assert_eq!(names(KeyHeads::InFlight), ["running"]);
    assert_eq!(names(KeyHeads::FinishedBefore(1_000)), ["old"]);
    assert_eq!(names(KeyHeads::FinishedBefore(0)), Vec::<String>::new());
    assert_eq!(names(KeyHeads::FinishedBefore(10_000)), ["new", "old"]);
}

/// The sweep expires overdue approvals (reporting them), forgets terminal
/// approvals and finished keys past retention, and nothing else.
pub fn the_sweep_forgets_only_what_retention_allows(fresh: Fresh, _peer: Peer) {
    let ledger = Ledger::new(fresh().ledger);
    let hour = Duration::from_secs(3600);
    ledger
        .create_approval(&approval("old", "agent", 0, 1_000))
        .expect("create");
    ledger
        .transition("old", ApprovalState::Pending, 10, |a| {
            a.state = ApprovalState::Rejected;
            a.decided_ms = Some(10);
        })
        .expect("reject");
    ledger
        .create_approval(&approval("overdue", "agent", 0, 1_000))
        .expect("create");
    ledger
        .create_approval(&approval("live", "agent", 0, 100 * 3_600_000))
        .expect("create");
    let finished = KeyRef::new("agent", "p", "t", "finished");
    ledger
        .claim(&finished, "d", ("c1", "h"), 0, DAY)
        .expect("claim");
    ledger.complete(&finished, Ok(json!(1))).expect("complete");
    let running = KeyRef::new("agent", "p", "t", "running");
    ledger
        .claim(&running, "d", ("c2", "h"), 0, DAY)
        .expect("claim");

    let now = 2 * 3_600_000;
    let report = ledger.sweep(now, hour, hour).expect("sweep");
    assert_eq!(
        report
            .expired
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        ["overdue"]
    );
    assert_eq!(report.approvals_removed, 1, "only `old` was past retention");
    assert_eq!(report.keys_removed, 1, "in-flight keys are never removed");
    let left = ledger.approvals(None, now).expect("list").list;
    let ids: HashSet<_> = left.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, HashSet::from(["overdue", "live"]));
    assert!(matches!(
        ledger
            .claim(&running, "d", ("c3", "h"), now, DAY)
            .expect("claim"),
        Claim::Existing(_)
    ));
}

/// An entry whose outcome nests deeper than JSON is read back (stores
/// written before results were held to 64 levels) neither stops recovery
/// nor the sweep: both read entries without their outcomes, and the sweep
/// forgets it after its retention like any other.
pub fn an_outcome_too_deep_to_decode_is_still_listed_and_swept(fresh: Fresh, _peer: Peer) {
    let ledger = Ledger::new(fresh().ledger);
    let deep = KeyRef::new("agent", "p", "t", "deep");
    ledger
        .claim(&deep, "d", ("c1", "h"), 0, DAY)
        .expect("claim");
    let mut outcome = json!(1);
    for _ in 0..300 {
        outcome = json!([outcome]);
    }
    ledger.complete(&deep, Ok(outcome)).expect("complete");
    let running = KeyRef::new("agent", "p", "t", "running");
    ledger
        .claim(&running, "d", ("c2", "h"), 0, DAY)
        .expect("claim");

    let recovery = ledger.recover("h").expect("recover");
    assert_eq!(recovery.changed, vec![running]);
    assert!(recovery.unreadable.is_empty(), "{recovery:?}");
    let report = ledger.sweep(2 * 86_400_000, DAY, DAY).expect("sweep");
    assert_eq!(report.keys_removed, 2, "{report:?}");
    assert!(report.unreadable.is_empty(), "{report:?}");
    assert_eq!(
        ledger
            .claim(&deep, "d", ("c3", "h"), 2 * 86_400_000, DAY)
            .expect("claim"),
        Claim::Claimed
    );
}

/// Meta values round-trip and are seen by another host.
pub fn meta_values_round_trip(fresh: Fresh, peer: Peer) {
    let a = fresh();
    let b = peer(&a);
    assert_eq!(a.ledger.meta("m").expect("read"), None);
    a.ledger.set_meta("m", "one").expect("set");
    a.ledger.set_meta("m", "two").expect("set");
    assert_eq!(b.ledger.meta("m").expect("read").as_deref(), Some("two"));
}

/// A meta value changes only over the value a writer read: of two hosts
/// swapping from one value one wins, and writers that read, change and
/// swap until they win lose no one's change (paused tools were lost when
/// each host wrote and read back its own table).
pub fn racing_meta_swaps_lose_no_write(fresh: Fresh, peer: Peer) {
    let a = fresh();
    let b = peer(&a);
    assert!(a.ledger.swap_meta("m", None, "one").expect("swap"));
    assert!(!b.ledger.swap_meta("m", None, "two").expect("swap"));
    assert!(!b.ledger.swap_meta("m", Some("zero"), "two").expect("swap"));
    assert!(b.ledger.swap_meta("m", Some("one"), "two").expect("swap"));
    assert!(!a.ledger.swap_meta("m", Some("one"), "three").expect("swap"));
    assert_eq!(a.ledger.meta("m").expect("read").as_deref(), Some("two"));

    let hosts = [a, b];
    let ledgers: Vec<_> = hosts.iter().map(|h| h.ledger.clone()).collect();
    let ledgers = Arc::new(ledgers);
    threads(8, move |i| {
        let ledger = &ledgers[i % 2];
        loop {
            let current = ledger.meta("set").expect("read");
            let mut items: Vec<String> = current
                .as_deref()
                .map(|c| {
                    c.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            items.push(format!("w{i}"));
            if ledger
                .swap_meta("set", current.as_deref(), &items.join(","))
                .expect("swap")
            {
                break;
            }
        }
    });
    let stored = hosts[0].ledger.meta("set").expect("read").expect("written");
    let items: HashSet<&str> = stored.split(',').collect();
    assert_eq!(items.len(), 8, "a write was lost: {stored}");
}

const QUOTA: Quota = Quota {
    max_keys: 100,
    max_bytes: 1 << 20,
    max_blobs: 10,
};

/// Set, overwrite, delete: usage follows every write.
pub fn workspace_writes_account_usage(fresh: Fresh, _peer: Peer) {
    let ws = Workspace::new(fresh().workspace);
    let owner = KeyOwner::Principal("agent".into());
    ws.set("notes", &owner, "a", b"12345", QUOTA).expect("set");
    ws.set("notes", &owner, "b", b"xy", QUOTA).expect("set");
    assert_eq!(
        ws.usage("notes").expect("usage"),
        Usage {
            keys: 2,
            blobs: 0,
            bytes: 6 + 3
        }
    );
    ws.set("notes", &owner, "a", b"1", QUOTA)
        .expect("overwrite");
    assert_eq!(ws.usage("notes").expect("usage").bytes, 2 + 3);
    assert_eq!(
        ws.get("notes", &owner, "a").expect("get").as_deref(),
        Some(&b"1"[..])
    );
    assert!(ws.delete("notes", &owner, "a").expect("delete"));
    assert!(!ws.delete("notes", &owner, "a").expect("delete again"));
    assert_eq!(
        ws.usage("notes").expect("usage"),
        Usage {
            keys: 1,
            blobs: 0,
            bytes: 3
        }
    );
    assert_eq!(ws.get("notes", &owner, "a").expect("get"), None);
    let plugins = ws.plugins().expect("plugins");
    assert_eq!(plugins.len(), 1);
    assert_eq!(plugins[0].0, "notes");
    let entries = ws.entries("notes").expect("entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].key, "b");
    assert_eq!(entries[0].owner, owner);
    assert_eq!(entries[0].size, 2);
    ws.flush().expect("flush");
}

/// A write over quota is refused and changes neither data nor usage.
pub fn a_refused_workspace_write_changes_nothing(fresh: Fresh, _peer: Peer) {
    let ws = Workspace::new(fresh().workspace);
    let owner = KeyOwner::Plugin;
    let small = Quota {
        max_keys: 1,
        max_bytes: 10,
        max_blobs: 1,
    };
    ws.set("p", &owner, "k", b"v", small).expect("first key");
    assert!(matches!(
        ws.set("p", &owner, "k2", b"v", small),
        Err(WorkspaceError::QuotaExceeded(_))
    ));
    assert!(matches!(
        ws.set("p", &owner, "k", b"0123456789", small),
        Err(WorkspaceError::QuotaExceeded(_))
    ));
    assert_eq!(
        ws.get("p", &owner, "k").expect("get").as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(ws.get("p", &owner, "k2").expect("get"), None);
    assert_eq!(
        ws.usage("p").expect("usage"),
        Usage {
            keys: 1,
            blobs: 0,
            bytes: 2
        }
    );
    assert!(matches!(
        ws.put_blob("p", b"0123456789", small),
        Err(WorkspaceError::QuotaExceeded(_))
    ));
    assert!(ws.blobs("p").expect("blobs").is_empty());
    assert!(matches!(
        ws.set("p", &owner, "", b"v", small),
        Err(WorkspaceError::Invalid(_))
    ));
}

/// 24 writers on two hosts, 8 keys allowed: exactly 8 succeed, and usage
/// says 8.
pub fn workspace_quotas_hold_under_concurrent_writers(fresh: Fresh, peer: Peer) {
    let a = fresh();
    let b = peer(&a);
    let spaces = [
        Workspace::new(a.workspace.clone()),
        Workspace::new(b.workspace),
    ];
    let quota = Quota {
        max_keys: 8,
        max_bytes: 1 << 20,
        max_blobs: 1,
    };
    let results = threads(24, move |i| {
        spaces[i % 2].set("p", &KeyOwner::Plugin, &format!("k{i:02}"), b"v", quota)
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 8, "writes accepted under an 8-key quota");
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, WorkspaceError::QuotaExceeded(_)), "{e}");
        }
    }
    let ws = Workspace::new(peer(&a).workspace);
    let usage = ws.usage("p").expect("usage");
    assert_eq!(usage.keys, 8);
    assert_eq!(usage.bytes, 8 * 4);
    assert_eq!(ws.entries("p").expect("entries").len(), 8);
}

/// Listing sees only the owner's keys, by prefix, in order, paged.
pub fn workspace_keys_list_by_owner_and_prefix(fresh: Fresh, _peer: Peer) {
    let ws = Workspace::new(fresh().workspace);
    let alice = KeyOwner::Session {
        principal: "alice".into(),
        session: "s1".into(),
    };
    let bob = KeyOwner::Session {
        principal: "bob".into(),
        session: "s1".into(),
    };
    for key in ["note/2", "note/1", "other", "note/3", "nota"] {
        ws.set("notes", &alice, key, b"v", QUOTA).expect("set");
    }
    ws.set("notes", &bob, "note/9", b"v", QUOTA).expect("set");
    ws.set("other", &alice, "note/8", b"v", QUOTA).expect("set");
    let list = |prefix: &str, after: Option<&str>, limit| {
        ws.list_keys("notes", &alice, prefix, after, limit)
            .expect("list")
    };
    assert_eq!(list("note/", None, 10), ["note/1", "note/2", "note/3"]);
    assert_eq!(list("note/", None, 2), ["note/1", "note/2"]);
    assert_eq!(list("note/", Some("note/2"), 10), ["note/3"]);
    assert_eq!(
        list("", None, 10),
        ["nota", "note/1", "note/2", "note/3", "other"]
    );
    assert_eq!(list("", Some("note/3"), 10), ["other"]);
    assert_eq!(list("zzz", None, 10), Vec::<String>::new());
    assert_eq!(
        ws.list_keys("notes", &bob, "", None, 10).expect("bob"),
        ["note/9"]
    );
    assert_eq!(ws.get("notes", &bob, "note/1").expect("get"), None);
}

/// A blob is stored once per plugin, counted once.
pub fn blobs_are_stored_once(fresh: Fresh, _peer: Peer) {
    let ws = Workspace::new(fresh().workspace);
    let r1 = ws.put_blob("p", b"artifact", QUOTA).expect("put");
    let r2 = ws.put_blob("p", b"artifact", QUOTA).expect("put again");
    assert_eq!(r1, r2);
    assert_eq!(
        ws.get_blob("p", &r1).expect("get").as_deref(),
        Some(&b"artifact"[..])
    );
    assert_eq!(ws.get_blob("q", &r1).expect("other plugin"), None);
    assert_eq!(ws.usage("p").expect("usage").blobs, 1);
    assert_eq!(ws.blobs("p").expect("blobs"), [(r1, 8)]);
    assert!(matches!(
        ws.get_blob("p", "sha256:zz"),
        Err(WorkspaceError::Invalid(_))
    ));
}

/// One token from every bucket or from none; refusals say which and when.
pub fn rate_limits_take_all_or_nothing(fresh: Fresh, _peer: Peer) {
    let limits = fresh().limits;
    let two = Rate::parse("2/hour").expect("rate");
    let five = Rate::parse("5/hour").expect("rate");
    let both = vec![("tool".to_owned(), two), ("principal".to_owned(), five)];
    assert_eq!(limits.take(&both, 1_000).expect("take"), None);
    assert_eq!(limits.take(&both, 1_000).expect("take"), None);
    let (scope, wait) = limits
        .take(&both, 1_000)
        .expect("take")
        .expect("the third call is refused");
    assert_eq!(scope, "tool");
    assert!(wait > Duration::from_secs(60), "{wait:?}");
    let principal_only = vec![("principal".to_owned(), five)];
    for _ in 0..3 {
        assert_eq!(limits.take(&principal_only, 1_000).expect("take"), None);
    }
    assert!(limits.take(&principal_only, 1_000).expect("take").is_some());
    // Refilled with time.
    assert_eq!(limits.take(&both, 1_000 + 3_600_000).expect("take"), None);
}

/// Two hosts drawing from one 10-token bucket get 10 tokens, not 20.
pub fn rate_limits_are_shared_by_hosts(fresh: Fresh, peer: Peer) {
    let a = fresh();
    let b = peer(&a);
    let stores = [a.limits, b.limits];
    let rate = Rate::parse("10/hour").expect("rate");
    let taken = threads(30, move |i| {
        stores[i % 2]
            .take(&[("shared".to_owned(), rate)], 5_000)
            .expect("take")
            .is_none()
    });
    let granted = taken.iter().filter(|t| **t).count();
    assert_eq!(granted, 10, "tokens granted from a 10-token bucket");
}

/// A switch on one host is seen by the other.
pub fn the_mode_is_seen_by_every_host(fresh: Fresh, peer: Peer) {
    let a = fresh();
    let b = peer(&a);
    assert_eq!(b.mode.get().expect("read"), None);
    let mode = Mode {
        read_only: true,
        id: "switch-1".into(),
        by: "oncall".into(),
        reason: Some("incident 42".into()),
        at_ms: 7,
    };
    a.mode.set(&mode).expect("set");
    assert_eq!(b.mode.get().expect("read"), Some(mode.clone()));
    let back = Mode {
        read_only: false,
        id: "switch-2".into(),
        ..mode
    };
    b.mode.set(&back).expect("set");
    assert_eq!(a.mode.get().expect("read"), Some(back));
}

fn write(seq: u64, marker: Marker) -> AuditWrite {
    AuditWrite {
        seq,
        bytes: format!("{{\"seq\":{seq}}}").into_bytes(),
        marker,
    }
}

/// Records go in order from 1; a gap or a second writer of one seq is a
/// conflict that stores nothing.
pub fn audit_chains_are_gap_free_and_never_fork(fresh: Fresh, peer: Peer) {
    let a = fresh();
    let audit = a.audit.clone();
    assert_eq!(audit.head("h").expect("head"), None);
    audit
        .write("h", &[write(1, Marker::None), write(2, Marker::None)])
        .expect("write");
    let err = audit
        .write("h", &[write(4, Marker::None)])
        .expect_err("a gap was accepted");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let err = audit
        .write("h", &[write(2, Marker::None)])
        .expect_err("a rewrite was accepted");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(audit.head("h").expect("head").map(|(s, _)| s), Some(2));
    // Two hosts claiming one origin race for seq 3: one wins.
    let b = peer(&a);
    let stores = [a.audit.clone(), b.audit];
    let results = threads(8, move |i| {
        let mut w = write(3, Marker::None);
        w.bytes = format!("{{\"writer\":{i}}}").into_bytes();
        stores[i % 2].write("h", &[w])
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    let records = audit.records("h", 1, 10).expect("records");
    assert_eq!(
        records.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        audit.record("h", 2).expect("record").as_deref(),
        Some(&b"{\"seq\":2}"[..])
    );
    assert_eq!(audit.records("h", 2, 1).expect("page").len(), 1);
    assert_eq!(audit.last_checkpoint("h").expect("no checkpoint"), None);
    audit.put_checkpoint("h", 3, b"signed").expect("checkpoint");
    audit.put_checkpoint("h", 1, b"first").expect("checkpoint");
    assert_eq!(
        audit.checkpoints("h").expect("checkpoints"),
        [(1, b"first".to_vec()), (3, b"signed".to_vec())]
    );
    // The one at the highest seq, whatever order they were stored in.
    assert_eq!(
        audit.last_checkpoint("h").expect("last checkpoint"),
        Some((3, b"signed".to_vec()))
    );
    audit.flush().expect("flush");
}

/// An intent opens its call's marker, an outcome closes it.
pub fn audit_markers_follow_their_records(fresh: Fresh, _peer: Peer) {
    let audit = fresh().audit;
    audit
        .write(
            "h",
            &[
                write(1, Marker::Open("c1".into())),
                write(2, Marker::Open("c2".into())),
                write(3, Marker::Close("c1".into())),
            ],
        )
        .expect("write");
    assert_eq!(audit.open_calls("h").expect("open"), [("c2".to_owned(), 2)]);
    audit.clear_open_call("h", "c2").expect("clear");
    assert!(audit.open_calls("h").expect("open").is_empty());
}

/// Each origin has its own chain; every origin is listed.
pub fn audit_chains_of_origins_are_separate(fresh: Fresh, peer: Peer) {
    let a = fresh();
    let b = peer(&a);
    a.audit
        .write("host-a", &[write(1, Marker::Open("x".into()))])
        .expect("a");
    b.audit
        .write("host-b", &[write(1, Marker::None), write(2, Marker::None)])
        .expect("b");
    assert_eq!(a.audit.head("host-a").expect("head").map(|h| h.0), Some(1));
    assert_eq!(a.audit.head("host-b").expect("head").map(|h| h.0), Some(2));
    assert!(b.audit.open_calls("host-b").expect("open").is_empty());
    let mut origins = a.audit.origins().expect("origins");
    origins.sort();
    assert_eq!(origins, ["host-a", "host-b"]);
}

fn files<'a>(manifest: &'a [u8], component: &'a [u8]) -> VersionFiles<'a> {
    VersionFiles {
        manifest,
        component,
        component_file: "text.wasm",
        cases: None,
        signature: None,
    }
}

/// A version is installed once, seen by every host with its files; the
/// same files again are a no-op, other files under its version a conflict.
pub fn installed_versions_never_change(fresh: Fresh, peer: Peer) {
    let a = fresh();
    let b = peer(&a);
    let (ra, rb) = (Releases::new(a.plugins), Releases::new(b.plugins));
    let first = match ra
        .install(
            "text",
            "1.0.0",
            files(b"manifest", b"component one"),
            None,
            "ops",
            1,
        )
        .expect("install")
    {
        Installed::New(v) => v,
        other => panic!("first install: {other:?}"),
    };
    assert_eq!(
        rb.version("text", "1.0.0").expect("read"),
        Some(first.clone()),
        "another host sees the installed version"
    );
    assert_eq!(
        rb.artifact(&first.component_digest).expect("artifact"),
        b"component one",
        "another host reads the component"
    );
    assert!(matches!(
        rb.install("text", "1.0.0", files(b"manifest", b"component one"), None, "ops2", 2)
            .expect("reinstall"),
        Installed::Already(ref v) if *v == first
    ));
    let err = rb
        .install(
            "text",
            "1.0.0",
            files(b"manifest", b"component two"),
            None,
            "ops",
            3,
        )
        .expect_err("other files under a taken version");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    ra.install(
        "text",
        "2.0.0",
        files(b"manifest 2", b"component two"),
        None,
        "ops",
        4,
    )
    .expect("second version");
    let versions: Vec<String> = rb
        .versions(Some("text"))
        .expect("list")
        .into_iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, ["1.0.0", "2.0.0"], "versions side by side");
    let name = |v: &str| ("text".to_owned(), v.to_owned());
    assert_eq!(
        rb.version_names(None).expect("names"),
        [name("1.0.0"), name("2.0.0")],
        "the versions' names, without reading them"
    );
    assert_eq!(rb.version_names(Some("json")).expect("names"), []);
    assert!(rb.version("text", "3.0.0").expect("read").is_none());
    assert!(
        rb.artifact(&"0".repeat(64)).is_err(),
        "a missing artifact is an error"
    );
}

fn rollout(serving: &str, by: &str) -> Rollout {
    Rollout {
        plugin: "text".into(),
        serving: serving.into(),
        canary: None,
        previous: None,
        change: RolloutChange {
            id: format!("change-{by}"),
            action: RolloutAction::Activate,
            by: by.into(),
            reason: None,
            at_ms: 1,
            approval_id: None,
        },
    }
}

/// Two operators changing one rollout at once from two hosts: one wins,
/// the other is told what is there now.
pub fn racing_rollout_changes_have_one_winner(fresh: Fresh, peer: Peer) {
    let a = fresh();
    let b = peer(&a);
    let (ra, rb) = (Releases::new(a.plugins), Releases::new(b.plugins));
    assert!(matches!(
        ra.change(None, rollout("1.0.0", "first")).expect("first"),
        Changed::Done(_)
    ));
    assert!(
        matches!(rb.change(None, rollout("1.0.0", "late")).expect("late"), Changed::Lost(Some(ref r)) if r.change.by == "first"),
        "a second first rollout loses"
    );
    for round in 0..5 {
        let current = ra.rollout("text").expect("read").expect("some");
        let stores = [ra.clone(), rb.clone()];
        let current = Arc::new(current);
        let won = threads(8, move |i| {
            let next = rollout(&format!("{round}.{i}"), &format!("op-{i}"));
            matches!(
                stores[i % 2].change(Some(&current), next).expect("change"),
                Changed::Done(_)
            )
        });
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: exactly one of eight racing changes wins"
        );
    }
    assert_eq!(rb.rollouts().expect("list").len(), 1);
    assert_eq!(rb.rollout_names().expect("names"), ["text"]);
}

#[cfg(test)]
mod memory {
    fn fresh() -> crate::Stores {
        crate::Stores::memory()
    }
    fn peer(stores: &crate::Stores) -> crate::Stores {
        stores.clone()
    }
    crate::conformance_tests!(fresh, peer);
}
