//! The console's security properties, through the whole HTTP application
//! (`http::router`, with its Host and Origin checks) and a real host
//! holding a pending approval for the `billing` example plugin.

use std::net::SocketAddr;
use std::sync::Arc;

use airlock_host::store::{Approval, ApprovalKind, ApprovalState};
use airlock_host::{ApprovalPolicy, Approver, CallError, CallRequest, Host, HostConfig, Policy};
use airlock_tests::{PLUGINS_DIR, sha256_hex};
use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::service::Service as _;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::http::{CallerToken, HttpConfig, default_addr, router};
use crate::{McpServer, ServeOptions};

const ALICE: &str = "alice-approver-secret";
const MALLORY: &str = "mallory-approver-secret";
const CALLER: &str = "agent-caller-secret";
const HOST: &str = "127.0.0.1:7410";
const ORIGIN: &str = "http://127.0.0.1:7410";
const HOSTILE: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&";

struct Fixture {
    _dir: tempfile::TempDir,
    host: Arc<Host>,
    app: Router,
    host_header: &'static str,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// How a fixture's listener is reached.
#[derive(Clone, Copy, PartialEq)]
enum Reached {
    /// On loopback, directly.
    Loopback,
    /// From other machines.
    Remote,
    /// Through a reverse proxy on the same machine.
    BehindProxy,
}

async fn fixture_on(addr: SocketAddr, reached: Reached) -> Fixture {
    fixture_with(addr, reached, std::convert::identity).await
}

/// The approvers of the fixtures' hosts.
fn approvers_policy() -> Policy {
    let approver = |name: &str, secret: &str, operator: bool| Approver {
        name: name.into(),
        token_sha256: sha256_hex(secret.as_bytes()),
        operator,
    };
    Policy {
        approvals: ApprovalPolicy {
            // alice also takes over; mallory only approves.
            approvers: vec![
                approver("alice", ALICE, true),
                approver("mallory", MALLORY, false),
            ],
            ..ApprovalPolicy::default()
        },
        ..Policy::default()
    }
}

async fn fixture_with(
    addr: SocketAddr,
    reached: Reached,
    config: impl FnOnce(HostConfig) -> HostConfig,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(
        Host::new(config(
            HostConfig::default()
                .data_dir(dir.path().join("data"))
                .policy(approvers_policy()),
        ))
        .unwrap(),
    );
    host.load_plugin(format!("{PLUGINS_DIR}/billing"))
        .await
        .unwrap();
    host.call(CallRequest::new(
        "billing/open-account",
        json!({"account": "9182", "balance_cents": 0}).to_string(),
    ))
    .await
    .unwrap();
    let server = McpServer::new(Arc::clone(&host), ServeOptions::default());
    let mut config = HttpConfig::new(
        addr,
        vec![CallerToken {
            principal: "agent-1".into(),
            token_sha256: sha256_hex(CALLER.as_bytes()),
        }],
    );
    let host_header = if reached != Reached::Loopback {
        config.allow_remote = reached == Reached::Remote;
        config.behind_proxy = reached == Reached::BehindProxy;
        config.allowed_hosts = vec!["console.example".into()];
        config.allowed_origins = vec!["https://console.example".into()];
        "console.example"
    } else {
        HOST
    };
    let app = router(&server, &config, CancellationToken::new()).unwrap();
    Fixture {
        _dir: dir,
        host,
        app,
        host_header,
    }
}

async fn fixture() -> Fixture {
    fixture_on(default_addr(), Reached::Loopback).await
}

impl Fixture {
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.host_header);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let service = TowerToHyperService::new(self.app.clone());
        let response = service
            .call(
                request
                    .body(axum::body::Body::from(body.to_owned()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str, cookie: &str) -> Answer {
        self.send("GET", path, &[("cookie", cookie)], "").await
    }

    /// A form POST from this server's own page.
    async fn post(&self, path: &str, cookie: &str, form: &[(&str, &str)]) -> Answer {
        let body = serde_urlencoded::to_string(form).unwrap();
        self.send(
            "POST",
            path,
            &[
                ("cookie", cookie),
                ("origin", ORIGIN),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            &body,
        )
        .await
    }

    /// Sign in with `token`: the cookie header to send, and the CSRF token.
    async fn login(&self, token: &str) -> (String, String) {
        let answer = self.post("/console/login", "", &[("token", token)]).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        let set = answer.header(header::SET_COOKIE);
        let cookie = set.split(';').next().unwrap().to_owned();
        let page = self.get("/console/mode", &cookie).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let csrf = page
            .body
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_owned();
        (cookie, csrf)
    }

    /// A refund by `principal` that waits for a decision: its approval id.
    async fn pending(&self, principal: &str, reason: &str) -> String {
        let call = CallRequest::new(
            "billing/refund",
            json!({"account": "9182", "amount_cents": 240_000, "reason": reason, "card_last4": "4242"})
                .to_string(),
        )
        .principal(principal)
        .idempotency_key(format!("key-{}", now_ms()))
        .reason(reason);
        match self.host.call(call).await {
            Err(CallError::ApprovalPending { approval_id, .. }) => approval_id,
            other => panic!("expected approval_pending, got {other:?}"),
        }
    }

    fn state(&self, id: &str) -> ApprovalState {
        self.host.approval(id).unwrap().unwrap().state
    }
}

#[tokio::test]
async fn only_an_approvers_token_signs_in_and_a_callers_is_refused_and_told_so() {
    let f = fixture().await;
    let caller = f.post("/console/login", "", &[("token", CALLER)]).await;
    assert_eq!(caller.status, StatusCode::FORBIDDEN);
    assert!(
        caller.body.contains("caller&#39;s token") || caller.body.contains("caller's token"),
        "{}",
        caller.body
    );
    assert!(caller.headers.get(header::SET_COOKIE).is_none());
    let unknown = f.post("/console/login", "", &[("token", "guess")]).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert!(unknown.body.contains("unknown token"), "{}", unknown.body);
    assert!(unknown.headers.get(header::SET_COOKIE).is_none());
    let empty = f.post("/console/login", "", &[("token", " ")]).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    let extra = f
        .post("/console/login", "", &[("token", ALICE), ("as", "root")])
        .await;
    assert_eq!(extra.status, StatusCode::BAD_REQUEST);
    // A token in the URL is not read: the login page, no session.
    let url = f.get(&format!("/console/login?token={ALICE}"), "").await;
    assert_eq!(url.status, StatusCode::OK);
    assert!(url.headers.get(header::SET_COOKIE).is_none());
    // Signed out, a page sends the browser to sign in.
    let page = f.get("/console/approvals", "").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.header(header::LOCATION), "/console/login");
    let forged = f.get("/console/approvals", "airlock_console=00ff").await;
    assert_eq!(forged.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_session_cookie_is_httponly_strict_scoped_and_secure_off_loopback() {
    let f = fixture().await;
    let answer = f.post("/console/login", "", &[("token", ALICE)]).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.header(header::LOCATION), "/console/approvals");
    let cookie = answer.header(header::SET_COOKIE);
    let id = cookie
        .strip_prefix("airlock_console=")
        .and_then(|c| c.split(';').next())
        .unwrap();
    assert_eq!(id.len(), 64, "{cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.split("; ").any(|p| p == flag), "{flag}: {cookie}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(!answer.body.contains(id));
    // Signing in again from that browser ends its first session.
    let first = format!("airlock_console={id}");
    assert_eq!(f.get("/console/mode", &first).await.status, StatusCode::OK);
    let again = f.post("/console/login", &first, &[("token", ALICE)]).await;
    assert_eq!(again.status, StatusCode::SEE_OTHER);
    assert!(!again.header(header::SET_COOKIE).contains(id));
    assert_eq!(
        f.get("/console/mode", &first).await.status,
        StatusCode::SEE_OTHER
    );

    // Off loopback, and on loopback behind a proxy (which speaks HTTPS
    // to the browser), the cookie is Secure.
    for (addr, reached) in [
        (SocketAddr::from(([0, 0, 0, 0], 7410)), Reached::Remote),
        (default_addr(), Reached::BehindProxy),
    ] {
        let f = fixture_on(addr, reached).await;
        let answer = f
            .send(
                "POST",
                "/console/login",
                &[
                    ("origin", "https://console.example"),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                &format!("token={ALICE}"),
            )
            .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        let cookie = answer.header(header::SET_COOKIE);
        assert!(cookie.split("; ").any(|p| p == "Secure"), "{cookie}");
    }
}

#[tokio::test]
async fn every_console_answer_carries_the_strict_csp_and_no_caching() {
    let f = fixture().await;
    let (cookie, _) = f.login(ALICE).await;
    for (path, cookie) in [
        ("/console/login", ""),
        ("/console", ""),
        ("/console/approvals", ""),
        ("/console/static/console.css", ""),
        ("/console/nothing/here", ""),
        ("/console/approvals", cookie.as_str()),
        ("/console/audit", cookie.as_str()),
    ] {
        let answer = f.get(path, cookie).await;
        assert_eq!(
            answer.header(header::CONTENT_SECURITY_POLICY),
            CONTENT_SECURITY_POLICY,
            "{path}"
        );
        // Nothing but the stylesheet loads: no script, even same-origin.
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'none';"));
        assert!(!CONTENT_SECURITY_POLICY.contains("script-src"));
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
        assert_eq!(answer.header(header::X_FRAME_OPTIONS), "DENY", "{path}");
        assert_eq!(answer.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(answer.header(header::CACHE_CONTROL), "no-store");
        assert_eq!(answer.header(header::REFERRER_POLICY), "same-origin");
        // No inline script or style anywhere.
        assert!(!answer.body.contains("<script"), "{path}");
        assert!(!answer.body.contains("<style"), "{path}");
        assert!(!answer.body.contains("style="), "{path}");
    }
    let css = f.get("/console/static/console.css", "").await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.header(header::CONTENT_TYPE).starts_with("text/css"));
}

#[tokio::test]
async fn a_post_without_the_sessions_csrf_token_or_from_another_origin_changes_nothing() {
    let f = fixture().await;
    let id = f.pending("agent-1", "damaged goods").await;
    let (cookie, csrf) = f.login(ALICE).await;
    let (_, other_csrf) = f.login(ALICE).await;
    let path = format!("/console/approvals/{id}");
    let approve = |token: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![("csrf", token), ("decision", "approve")]
    };
    // No token, a wrong one, another session's, two of them.
    for form in [
        vec![("decision", "approve")],
        approve("0000"),
        vec![("csrf", other_csrf.as_str()), ("decision", "approve")],
        vec![
            ("csrf", csrf.as_str()),
            ("csrf", "0000"),
            ("decision", "approve"),
        ],
    ] {
        let answer = f.post(&path, &cookie, &form).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{form:?}");
        assert!(answer.body.contains("CSRF"), "{}", answer.body);
        assert_eq!(f.state(&id), ApprovalState::Pending);
    }
    let form = format!("csrf={csrf}&decision=approve");
    // No Origin; another origin (refused by the listener's guard); a
    // loopback origin that is not this server; a cross-site fetch.
    for headers in [
        vec![],
        vec![("origin", "https://evil.example")],
        vec![("origin", "http://localhost:9999")],
        vec![("origin", "null")],
        // This server's host and port, but a page served over another
        // scheme (regression: the scheme was not compared).
        vec![("origin", "https://127.0.0.1:7410")],
        vec![("origin", ORIGIN), ("sec-fetch-site", "cross-site")],
    ] {
        let mut all = vec![
            ("cookie", cookie.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        all.extend(headers.iter().copied());
        let answer = f.send("POST", &path, &all, &form).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{headers:?}");
        assert_eq!(f.state(&id), ApprovalState::Pending);
    }
    // Not a form; too large a form.
    let answer = f
        .send(
            "POST",
            &path,
            &[
                ("cookie", cookie.as_str()),
                ("origin", ORIGIN),
                ("content-type", "application/json"),
            ],
            "{}",
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = "x".repeat(MAX_FORM_BYTES + 1);
    let answer = f
        .post(
            &path,
            &cookie,
            &[("csrf", &csrf), ("decision", "approve"), ("reason", &big)],
        )
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    // A GET never decides.
    let answer = f
        .get(&format!("{path}?csrf={csrf}&decision=approve"), &cookie)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(f.state(&id), ApprovalState::Pending);
    // Without a session, even with a token.
    let answer = f
        .post(&path, "", &[("csrf", &csrf), ("decision", "approve")])
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    // The real thing — whose card digits the page does not show: approved
    // only when the approver says so.
    let page = f.get(&path, &cookie).await;
    assert!(
        page.body
            .contains("Not every value of these arguments is shown")
            && page.body.contains("name=\"unseen\" value=\"acknowledged\""),
        "{}",
        page.body
    );
    let answer = f
        .post(
            &path,
            &cookie,
            &[
                ("csrf", &csrf),
                ("decision", "approve"),
                ("reason", "checked"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert!(
        answer.body.contains("not approved: values were redacted"),
        "{}",
        answer.body
    );
    assert_eq!(f.state(&id), ApprovalState::Pending);
    let answer = f
        .post(
            &path,
            &cookie,
            &[
                ("csrf", &csrf),
                ("decision", "approve"),
                ("reason", "checked"),
                ("unseen", "acknowledged"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let approval = f.host.approval(&id).unwrap().unwrap();
    assert_eq!(approval.state, ApprovalState::Approved);
    assert_eq!(approval.decided_by.as_deref(), Some("alice"));
    assert_eq!(approval.decision_reason.as_deref(), Some("checked"));
}

/// Arguments shown whole need no more than the button: the approver's
/// acknowledgement is asked only where something is hidden.
#[tokio::test]
async fn arguments_shown_whole_are_approved_with_the_button_alone() {
    let f = fixture().await;
    let call = CallRequest::new(
        "billing/refund",
        json!({"account": "9182", "amount_cents": 1_200, "reason": "late delivery"}).to_string(),
    )
    .principal("agent-1")
    .idempotency_key("key-whole")
    .reason("late delivery");
    let id = match f.host.call(call).await {
        Err(CallError::ApprovalPending { approval_id, .. }) => approval_id,
        other => panic!("expected approval_pending, got {other:?}"),
    };
    let (cookie, csrf) = f.login(ALICE).await;
    let path = format!("/console/approvals/{id}");
    let page = f.get(&path, &cookie).await;
    assert!(page.body.contains("late delivery"), "{}", page.body);
    assert!(!page.body.contains("name=\"unseen\""), "{}", page.body);
    let answer = f
        .post(&path, &cookie, &[("csrf", &csrf), ("decision", "approve")])
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert_eq!(f.state(&id), ApprovalState::Approved);
}

#[tokio::test]
async fn a_rejection_needs_a_reason_and_an_approver_cannot_decide_their_own_call() {
    let f = fixture().await;
    let own = f.pending("mallory", "mine").await;
    let (cookie, csrf) = f.login(MALLORY).await;
    let page = f.get(&format!("/console/approvals/{own}"), &cookie).await;
    assert!(page.body.contains("your own call"), "{}", page.body);
    let answer = f
        .post(
            &format!("/console/approvals/{own}"),
            &cookie,
            &[
                ("csrf", &csrf),
                ("decision", "approve"),
                ("unseen", "acknowledged"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert!(
        answer.body.contains("cannot decide on their own call"),
        "{}",
        answer.body
    );
    assert_eq!(f.state(&own), ApprovalState::Pending);

    let other = f.pending("agent-1", "theirs").await;
    let path = format!("/console/approvals/{other}");
    let answer = f
        .post(&path, &cookie, &[("csrf", &csrf), ("decision", "reject")])
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert!(answer.body.contains("needs a reason"), "{}", answer.body);
    let answer = f
        .post(&path, &cookie, &[("csrf", &csrf), ("decision", "maybe")])
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let answer = f
        .post(
            &path,
            &cookie,
            &[
                ("csrf", &csrf),
                ("decision", "reject"),
                ("reason", "not ours"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(f.state(&other), ApprovalState::Rejected);
    // Decided: the first decision stands.
    let answer = f
        .post(&path, &cookie, &[("csrf", &csrf), ("decision", "approve")])
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(f.state(&other), ApprovalState::Rejected);
}

#[tokio::test]
async fn a_call_made_again_under_an_approval_tells_the_approvals_story_too() {
    let f = fixture().await;
    let arguments =
        json!({"account": "9182", "amount_cents": 240_000, "reason": "twice"}).to_string();
    let call = || {
        CallRequest::new("billing/refund", arguments.clone())
            .principal("agent-1")
            .idempotency_key("story-twice")
    };
    let id = match f.host.call(call()).await {
        Err(CallError::ApprovalPending { approval_id, .. }) => approval_id,
        other => panic!("expected approval_pending, got {other:?}"),
    };
    let first_call = f.host.approval(&id).unwrap().unwrap().call_id;
    let (cookie, csrf) = f.login(ALICE).await;
    let answer = f
        .post(
            &format!("/console/approvals/{id}"),
            &cookie,
            &[
                ("csrf", &csrf),
                ("decision", "reject"),
                ("reason", "not ours"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    // The call again, under the rejected approval: another call, refused.
    let mut again = call();
    again.approval_id = Some(id.clone());
    let refused = f.host.call(again).await.unwrap_err();
    assert_eq!(refused.kind(), "approval_rejected", "{refused}");
    let filter = Filter {
        approval_id: Some(id.clone()),
        event: Some(Event::CallRefused),
        ..Filter::default()
    };
    let records = f.host.audit().query(&filter, 10).unwrap();
    let second_call = records
        .iter()
        .filter_map(|r| r.entry.call_id.clone())
        .find(|call| *call != first_call)
        .expect("the refusal of the call made again names its approval");
    let story = f
        .get(&format!("/console/audit/calls/{second_call}"), &cookie)
        .await;
    assert_eq!(story.status, StatusCode::OK);
    for part in [
        "approval_requested",
        "approval_decided",
        "not ours",
        first_call.as_str(),
    ] {
        assert!(story.body.contains(part), "{part}: {}", story.body);
    }
    // Another principal naming the approval is answered as if it did not
    // exist, and its call is not put among the approval's records.
    let mut foreign = CallRequest::new("billing/refund", arguments.clone())
        .principal("agent-2")
        .idempotency_key("story-foreign");
    foreign.approval_id = Some(id.clone());
    let refused = f.host.call(foreign).await.unwrap_err();
    assert_eq!(refused.kind(), "approval_unknown", "{refused}");
    let under = f
        .host
        .audit()
        .query(
            &Filter {
                approval_id: Some(id.clone()),
                ..Filter::default()
            },
            100,
        )
        .unwrap();
    assert!(
        under
            .iter()
            .all(|r| r.entry.principal.as_deref() != Some("agent-2")),
        "{under:?}"
    );
    // And the first call's story goes on to the call made under it.
    let story = f
        .get(&format!("/console/audit/calls/{first_call}"), &cookie)
        .await;
    assert!(story.body.contains(&second_call), "{}", story.body);
    assert!(!story.body.contains("agent-2"), "{}", story.body);
}

#[tokio::test]
async fn hostile_arguments_reasons_and_principals_are_shown_as_text() {
    let f = fixture().await;
    let id = f.pending(HOSTILE, HOSTILE).await;
    let (cookie, _) = f.login(ALICE).await;
    for path in [
        "/console/approvals".to_owned(),
        format!("/console/approvals/{id}"),
        "/console/audit".to_owned(),
        format!("/console/audit?principal={}", pages::segment(HOSTILE)),
    ] {
        let page = f.get(&path, &cookie).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(
            !page.body.contains("<script>alert"),
            "{path}: {}",
            page.body
        );
        assert!(!page.body.contains("<img"), "{path}");
        assert!(page.body.contains("&lt;script&gt;alert(1)"), "{path}");
    }
    // The card number is redacted, and marked so.
    let page = f.get(&format!("/console/approvals/{id}"), &cookie).await;
    assert!(!page.body.contains("4242"), "{}", page.body);
    assert!(
        page.body.contains("<mark class=\"redacted\""),
        "{}",
        page.body
    );

    // What no real plugin can be named, the templates escape all the same.
    let approval = Approval {
        id: HOSTILE.into(),
        kind: ApprovalKind::Call,
        state: ApprovalState::Pending,
        plugin: HOSTILE.into(),
        component_digest: HOSTILE.into(),
        plugin_version: Some(HOSTILE.into()),
        manifest_digest: Some(HOSTILE.into()),
        tool: HOSTILE.into(),
        risk: HOSTILE.into(),
        args_digest: HOSTILE.into(),
        args: HOSTILE.into(),
        args_truncated: true,
        args_redacted: None,
        principal: HOSTILE.into(),
        session: Some(HOSTILE.into()),
        idempotency_key: Some(HOSTILE.into()),
        caller_reason: Some(HOSTILE.into()),
        call_id: HOSTILE.into(),
        created_ms: 0,
        expires_ms: 0,
        decided_by: Some(HOSTILE.into()),
        decided_ms: None,
        decision_reason: Some(HOSTILE.into()),
        consumed_by_call: Some(HOSTILE.into()),
        unknown_fields: serde_json::Map::from_iter([(HOSTILE.into(), HOSTILE.into())]),
    };
    let (_, who) = Sessions::new(SessionLimits::default())
        .create("<b>alice</b>", "t", true)
        .unwrap();
    let page = pages::approval(&who, &approval, Some(HOSTILE), 0).into_string();
    assert!(
        page.contains("Terms this host does not know"),
        "a newer host's terms are not shown: {page}"
    );
    for html in [
        page,
        pages::approvals(&who, std::slice::from_ref(&approval), "all", 0, 0).into_string(),
        pages::error(Some(&who), StatusCode::CONFLICT, HOSTILE).into_string(),
    ] {
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>alice"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
        // Attribute values cannot be closed early either.
        assert!(!html.contains("\"'&\""), "{html}");
        assert!(!html.contains("href=\"/console/approvals/<"), "{html}");
    }
}

#[tokio::test]
async fn a_reason_that_reorders_its_text_is_shown_with_the_reordering_visible() {
    // Regression: U+202E in a caller's reason showed "small refund of
    // $5000" for what reads, logically, "small refund \u{202e}0005$ fo".
    let f = fixture().await;
    // U+061C (the Arabic letter mark) reorders runs of digits around it.
    // Invisible ones hide text: U+200B in a name, a tag character.
    let sneaky = "small refund \u{202e}0005$ fo\u{2066}x\u{2069}\u{200f} \u{61c}10 - 5000 bank\u{200b}.evil\u{e0041} ba\u{200d}nk می\u{200c}خواهم";
    let id = f.pending("agent", sneaky).await;
    let (cookie, _) = f.login(ALICE).await;
    for path in [
        "/console/approvals".to_owned(),
        format!("/console/approvals/{id}"),
    ] {
        let page = f.get(&path, &cookie).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(
            !page
                .body
                .chars()
                .any(airlock_host::audit_log::text::misleads),
            "{path}: {}",
            page.body
        );
        assert!(
            page.body.contains(
                // A joiner beside ASCII is shown; the non-joiner inside a
                // Persian word is the word's own.
                "small refund \\u{202e}0005$ fo\\u{2066}x\\u{2069}\\u{200f} \\u{61c}10 - 5000 bank\\u{200b}.evil\\u{e0041} ba\\u{200d}nk می\u{200c}خواهم"
            ),
            "{path}: {}",
            page.body
        );
    }
}

#[tokio::test]
async fn a_page_number_past_the_end_is_an_empty_page_not_a_crash() {
    let f = fixture().await;
    let (cookie, _) = f.login(ALICE).await;
    for page in ["1000", &usize::MAX.to_string()] {
        let answer = f
            .get(
                &format!("/console/approvals?state=all&page={page}"),
                &cookie,
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "page {page}: {}",
            answer.body
        );
        assert!(
            answer.body.contains("← newer"),
            "page {page}: {}",
            answer.body
        );
        assert!(
            !answer.body.contains("older →"),
            "page {page}: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn a_session_ends_at_logout_and_its_cookie_is_cleared() {
    let f = fixture().await;
    let (cookie, csrf) = f.login(ALICE).await;
    // A logout without the token is refused like any POST.
    let answer = f.post("/console/logout", &cookie, &[]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(f.get("/console/mode", &cookie).await.status, StatusCode::OK);
    let answer = f.post("/console/logout", &cookie, &[("csrf", &csrf)]).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let cleared = answer.header(header::SET_COOKIE);
    assert!(cleared.starts_with("airlock_console=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let after = f.get("/console/mode", &cookie).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(after.header(header::LOCATION), "/console/login");
}

#[tokio::test]
async fn an_expired_session_sends_the_browser_back_to_sign_in() {
    let console = Console {
        host: Arc::new(Host::new(HostConfig::default()).unwrap()),
        callers: Vec::new(),
        sessions: Sessions::new(SessionLimits {
            idle: std::time::Duration::from_millis(50),
            lifetime: std::time::Duration::from_secs(60),
            max_sessions: 4,
        }),
        secure_cookie: false,
        heavy: Arc::new(tokio::sync::Semaphore::new(HEAVY_AT_ONCE)),
    };
    let (id, _) = console.sessions.create("alice", ALICE, true).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::COOKIE,
        format!("other=1; {SESSION_COOKIE}={id}").parse().unwrap(),
    );
    assert!(signed_in(&console, &headers).is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    let answer = signed_in(&console, &headers).unwrap_err();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_pages_show_the_audit_trail_plugins_and_switch_the_mode_on_the_record() {
    let f = fixture().await;
    let id = f.pending("agent-1", "damaged goods").await;
    let (cookie, csrf) = f.login(ALICE).await;
    let list = f.get("/console/approvals", &cookie).await;
    assert!(list.body.contains(&id), "{}", list.body);
    assert!(list.body.contains("billing/refund"));
    let detail = f.get(&format!("/console/approvals/{id}"), &cookie).await;
    for field in [
        "irreversible",
        "agent-1",
        "damaged goods",
        "Expires",
        "Arguments digest",
    ] {
        assert!(detail.body.contains(field), "{field}: {}", detail.body);
    }
    let call_id = f.host.approval(&id).unwrap().unwrap().call_id;
    let story = f
        .get(&format!("/console/audit/calls/{call_id}"), &cookie)
        .await;
    assert_eq!(story.status, StatusCode::OK);
    assert!(story.body.contains("approval_requested"), "{}", story.body);
    let filtered = f
        .get(
            "/console/audit?plugin=billing&tool=refund&event=approval_requested",
            &cookie,
        )
        .await;
    assert_eq!(filtered.status, StatusCode::OK);
    assert!(filtered.body.contains("approval_requested"));
    assert!(!filtered.body.contains("open-account"));
    for bad in [
        "/console/audit?event=nothing",
        "/console/audit?page=999",
        "/console/audit?page=-1",
        "/console/approvals?state=maybe",
    ] {
        assert_eq!(
            f.get(bad, &cookie).await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let long = format!("/console/audit?plugin={}", "p".repeat(300));
    assert_eq!(f.get(&long, &cookie).await.status, StatusCode::BAD_REQUEST);
    let verify = f.get("/console/audit/verify", &cookie).await;
    assert!(verify.body.contains("Verified"), "{}", verify.body);
    let plugins = f.get("/console/plugins", &cookie).await;
    assert!(plugins.body.contains("/console/plugins/billing"));
    let billing = f.get("/console/plugins/billing", &cookie).await;
    assert_eq!(billing.status, StatusCode::OK);
    assert!(billing.body.contains("Findings"), "{}", billing.body);
    assert!(billing.body.contains("workspace"), "{}", billing.body);
    assert!(!billing.body.contains("now holds another version"));
    assert_eq!(
        f.get("/console/plugins/nothing", &cookie).await.status,
        StatusCode::NOT_FOUND
    );
    // A plugin whose directory changed since it loaded: the findings are
    // the directory's, and the page says they are not the loaded version's.
    let copy = tempfile::tempdir().unwrap();
    let dir = copy.path().join("json");
    std::fs::create_dir(&dir).unwrap();
    for file in ["plugin.toml", "json.wasm"] {
        std::fs::copy(format!("{PLUGINS_DIR}/json/{file}"), dir.join(file)).unwrap();
    }
    f.host.load_plugin(&dir).await.unwrap();
    let page = || f.get("/console/plugins/json", &cookie);
    let moved = |body: &str| body.contains("now holds another version");
    let loaded = page().await;
    assert_eq!(loaded.status, StatusCode::OK);
    assert!(!moved(&loaded.body), "{}", loaded.body);
    // The manifest alone edited (a grant widened, say) is another version.
    let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
    std::fs::write(dir.join("plugin.toml"), format!("{manifest}\n# edited\n")).unwrap();
    let edited = page().await;
    assert!(moved(&edited.body), "{}", edited.body);
    std::fs::write(dir.join("plugin.toml"), &manifest).unwrap();
    assert!(!moved(&page().await.body));
    // So is another component, pinned by the manifest.
    let mut other = std::fs::read(dir.join("json.wasm")).unwrap();
    // A custom section: another component, the same code.
    other.extend_from_slice(&[0, 6, 5, b'o', b't', b'h', b'e', b'r']);
    let repinned = manifest.replace(
        &sha256_hex(&std::fs::read(dir.join("json.wasm")).unwrap()),
        &sha256_hex(&other),
    );
    std::fs::write(dir.join("json.wasm"), &other).unwrap();
    std::fs::write(dir.join("plugin.toml"), repinned).unwrap();
    let json = page().await;
    assert_eq!(json.status, StatusCode::OK);
    assert!(moved(&json.body), "{}", json.body);
    assert_eq!(
        f.get("/console/alerts", &cookie).await.status,
        StatusCode::OK
    );

    let answer = f
        .post(
            "/console/mode",
            &cookie,
            &[
                ("csrf", &csrf),
                ("mode", "read_only"),
                ("reason", "incident 42"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let mode = f.host.mode().unwrap().unwrap();
    assert!(mode.read_only);
    assert_eq!(mode.by, "alice");
    let page = f.get("/console/mode", &cookie).await;
    assert!(page.body.contains("READ-ONLY"), "{}", page.body);
    let records = f
        .host
        .audit()
        .query(
            &Filter {
                event: Some(Event::ModeChanged),
                ..Default::default()
            },
            10,
        )
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].entry.reason.as_deref(), Some("incident 42"));
    let answer = f
        .post(
            "/console/mode",
            &cookie,
            &[("csrf", &csrf), ("mode", "off")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

/// An approver without `operator = true` signed in to the console could
/// lift read-only mode, resume a tool an alert paused, or roll a plugin
/// back: takeovers were any approver's.
#[tokio::test]
async fn an_approver_who_is_not_an_operator_cannot_take_over() {
    let f = fixture().await;
    f.host
        .pause("billing/refund", "alice", Some("incident 9"))
        .await
        .unwrap();
    f.host
        .set_mode(true, "alice", Some("incident 9"))
        .await
        .unwrap();
    let (cookie, csrf) = f.login(MALLORY).await;
    for (path, form) in [
        ("/console/mode", vec![("mode", "normal")]),
        ("/console/alerts/resume", vec![("target", "billing/refund")]),
        ("/console/alerts/pause", vec![("target", "notes/add")]),
        ("/console/plugins/billing/rollback", vec![]),
    ] {
        let mut fields = vec![("csrf", csrf.as_str()), ("reason", "mine now")];
        fields.extend(form);
        let answer = f.post(path, &cookie, &fields).await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            answer.body
        );
        assert!(
            answer.body.contains("operator = true"),
            "{path}: {}",
            answer.body
        );
    }
    // Nothing changed.
    assert!(f.host.mode().unwrap().unwrap().read_only);
    let pauses = f.host.pauses().unwrap();
    assert_eq!(pauses.len(), 1);
    assert_eq!(pauses[0].target, "billing/refund");
    // The pages show no takeover form to them.
    for path in ["/console/mode", "/console/alerts"] {
        let page = f.get(path, &cookie).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(
            !page.body.contains("action=\"/console/mode\"")
                && !page.body.contains("action=\"/console/alerts/"),
            "{path}: {}",
            page.body
        );
        assert!(page.body.contains("operators"), "{path}: {}", page.body);
    }
    // An operator does what they could not.
    let (cookie, csrf) = f.login(ALICE).await;
    let answer = f
        .post(
            "/console/mode",
            &cookie,
            &[("csrf", &csrf), ("mode", "normal")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert!(!f.host.mode().unwrap().unwrap().read_only);
}

#[test]
fn the_session_cookie_is_found_among_others() {
    let mut headers = HeaderMap::new();
    headers.append(header::COOKIE, "a=1; airlock_console_x=2".parse().unwrap());
    assert_eq!(session_cookie(&headers), None);
    headers.append(header::COOKIE, "b=2;airlock_console=abc ".parse().unwrap());
    assert_eq!(session_cookie(&headers), Some("abc"));
}

#[tokio::test]
async fn an_approver_pauses_and_resumes_a_tool_on_the_record_and_a_bad_target_or_rollback_is_refused()
 {
    let f = fixture().await;
    let (cookie, csrf) = f.login(ALICE).await;
    let answer = f
        .post(
            "/console/alerts/pause",
            &cookie,
            &[
                ("csrf", &csrf),
                ("target", "billing/refund"),
                ("reason", "incident 7"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let pauses = f.host.pauses().unwrap();
    assert_eq!(pauses.len(), 1);
    assert_eq!(pauses[0].by, "alice");
    let page = f.get("/console/alerts", &cookie).await;
    assert!(page.body.contains("billing/refund"), "{}", page.body);
    assert!(page.body.contains("incident 7"));
    let answer = f
        .post(
            "/console/alerts/resume",
            &cookie,
            &[("csrf", &csrf), ("target", "billing/refund")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert!(f.host.pauses().unwrap().is_empty());
    let undone = f
        .host
        .audit()
        .query(
            &Filter {
                event: Some(Event::TakeoverUndone),
                ..Default::default()
            },
            10,
        )
        .unwrap();
    assert_eq!(undone.len(), 1);
    // A malformed target, a missing one, no token, one this host does not
    // serve (a typo pauses nothing): refused, nothing paused.
    for form in [
        vec![("csrf", csrf.as_str()), ("target", "../x y")],
        vec![("csrf", csrf.as_str())],
        vec![("target", "billing")],
        vec![("csrf", csrf.as_str()), ("target", "billing/refnud")],
        vec![("csrf", csrf.as_str()), ("target", "biling")],
    ] {
        let answer = f.post("/console/alerts/pause", &cookie, &form).await;
        assert!(
            answer.status.is_client_error(),
            "{form:?}: {}",
            answer.status
        );
        assert!(f.host.pauses().unwrap().is_empty());
    }
    let typo = f
        .post(
            "/console/alerts/pause",
            &cookie,
            &[("csrf", &csrf), ("target", "billing/refnud")],
        )
        .await;
    assert_eq!(typo.status, StatusCode::BAD_REQUEST);
    assert!(typo.body.contains("has no such tool here"), "{}", typo.body);
    // Forced, it holds (for a tool other hosts serve).
    let forced = f
        .post(
            "/console/alerts/pause",
            &cookie,
            &[("csrf", &csrf), ("target", "other/tool"), ("force", "on")],
        )
        .await;
    assert_eq!(forced.status, StatusCode::SEE_OTHER, "{}", forced.body);
    assert_eq!(f.host.pauses().unwrap()[0].target, "other/tool");
    f.host.resume("other/tool", "alice", None).await.unwrap();
    // Nothing to roll back: the host's refusal, shown (with or without the
    // change the page saw, whatever a client puts there).
    for change in [
        None,
        Some("<script>"),
        Some("0193a1b2-0000-7000-8000-000000000000"),
    ] {
        let mut form = vec![("csrf", csrf.as_str())];
        form.extend(change.map(|c| ("change", c)));
        let answer = f
            .post("/console/plugins/billing/rollback", &cookie, &form)
            .await;
        assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
        assert!(!answer.body.contains("<script>"), "{}", answer.body);
    }
    // A name no plugin can have: the approver's mistake, named, not a
    // store failure (regression: answered 409 "the store … failed").
    for name in ["%3Cx%3E", "..", "%C3%A9", &"a".repeat(200)] {
        let answer = f
            .post(
                &format!("/console/plugins/{name}/rollback"),
                &cookie,
                &[("csrf", &csrf)],
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{name}: {}",
            answer.body
        );
        assert!(
            answer.body.contains("is not a plugin name"),
            "{name}: {}",
            answer.body
        );
    }
    let answer = f
        .post(
            "/console/plugins/billing/rollback",
            &cookie,
            &[("reason", "x")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn heavy_pages_wait_for_a_slot_and_give_it_back() {
    let host = Arc::new(Host::new(HostConfig::default()).unwrap());
    host.load_plugin(format!("{PLUGINS_DIR}/billing"))
        .await
        .unwrap();
    let console = Arc::new(Console {
        host,
        callers: Vec::new(),
        sessions: Sessions::new(SessionLimits::default()),
        secure_cookie: false,
        heavy: Arc::new(tokio::sync::Semaphore::new(HEAVY_AT_ONCE)),
    });
    let (session, _) = console.sessions.create("alice", ALICE, true).unwrap();
    let app = router_for(Arc::clone(&console));
    let get = |path: &'static str| {
        let app = app.clone();
        let cookie = format!("{SESSION_COOKIE}={session}");
        async move {
            let request = hyper::Request::get(path)
                .header(header::COOKIE, cookie)
                .body(axum::body::Body::empty())
                .unwrap();
            let response = TowerToHyperService::new(app).call(request).await.unwrap();
            response.status()
        }
    };
    // Every slot taken: the pages that read much wait, the others do not.
    let taken = Arc::clone(&console.heavy)
        .acquire_many_owned(u32::try_from(HEAVY_AT_ONCE).unwrap())
        .await
        .unwrap();
    for path in [
        "/console/plugins/billing",
        "/console/audit",
        "/console/audit/verify",
        "/console/approvals?state=all",
        "/console/approvals?state=rejected",
    ] {
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(300), get(path)).await;
        assert!(waiting.is_err(), "{path} ran without a slot");
    }
    assert_eq!(get("/console/plugins").await, StatusCode::OK);
    assert_eq!(get("/console/approvals").await, StatusCode::OK);
    // The requests that gave up hold nothing: once the slots are free,
    // every page is served.
    drop(taken);
    assert_eq!(console.heavy.available_permits(), HEAVY_AT_ONCE);
    for path in [
        "/console/plugins/billing",
        "/console/audit",
        "/console/audit/verify",
        "/console/approvals?state=all",
    ] {
        assert_eq!(get(path).await, StatusCode::OK, "{path}");
    }
    assert_eq!(console.heavy.available_permits(), HEAVY_AT_ONCE);
}

/// One plugin's rollout record that cannot be read: the plugins page
/// names it, its contents escaped, and lists the rest (it failed whole,
/// leaving an operator blind in the incident).
#[tokio::test]
async fn the_plugins_page_names_an_unreadable_rollout_and_lists_the_rest() {
    let f = fixture().await;
    let (cookie, _) = f.login(ALICE).await;
    for plugin in ["json", "text"] {
        let dir = std::path::PathBuf::from(format!("{PLUGINS_DIR}/{plugin}"));
        let package = airlock_host::Package::open(&dir).unwrap();
        let installed = f.host.install(&package, "ops").await.unwrap();
        f.host
            .set_rollout(&airlock_host::RolloutRequest::new(
                plugin,
                installed.version.version,
                100,
                "ops",
            ))
            .await
            .unwrap();
    }
    // The json plugin's record replaced by one naming a plugin whose name
    // is markup (refused, named in the error the page shows).
    let record = airlock_tests::find_file(f._dir.path(), "rollouts/json.json");
    let mut stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    stored["rollout"]["plugin"] = json!(HOSTILE);
    std::fs::write(&record, stored.to_string()).unwrap();
    tokio::time::sleep(airlock_host::ROLLOUT_REFRESH + std::time::Duration::from_millis(100)).await;

    let page = f.get("/console/plugins", &cookie).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body
            .contains("The rollout record of <code>json</code> cannot be read"),
        "{}",
        page.body
    );
    assert!(page.body.contains("json.json"), "{}", page.body);
    // The markup is shown as text.
    assert!(
        page.body
            .contains("holds the rollout of plugin `&lt;script&gt;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script>"), "{}", page.body);
    // The readable rollout is listed.
    assert!(page.body.contains("<td>text</td>"), "{}", page.body);
    let listing = f.host.rollout_listing().unwrap();
    assert_eq!(listing.rollouts.len(), 1);
    assert_eq!(listing.rollouts[0].plugin, "text");
    assert_eq!(listing.unreadable.len(), 1);
    assert_eq!(listing.unreadable[0].plugin, "json");

    // One installed version's record replaced by one naming a plugin whose
    // name is markup: the page names that record, its text escaped, and
    // lists the other versions (it failed whole).
    let versions_dir = airlock_tests::find_file(f._dir.path(), "rollouts/text.json")
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("versions/json");
    let record = std::fs::read_dir(&versions_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let mut stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    stored["plugin"] = json!(HOSTILE);
    std::fs::write(&record, stored.to_string()).unwrap();
    assert!(f.host.installed(None).is_err());
    let page = f.get("/console/plugins", &cookie).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("The record of <code>json</code>"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("of plugin `&lt;script&gt;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script>"), "{}", page.body);
    assert!(
        page.body
            .contains("could not list the installed versions at once"),
        "{}",
        page.body
    );
    // The readable version is listed, alone (its installer's cell is the
    // versions table's only).
    assert_eq!(
        page.body.matches("<td>ops</td>").count(),
        1,
        "{}",
        page.body
    );
    let listing = f.host.installed_listing(None).unwrap();
    assert_eq!(listing.versions.len(), 1, "{listing:?}");
    assert_eq!(listing.versions[0].plugin, "text");
    assert_eq!(listing.unreadable.len(), 1, "{listing:?}");
    assert_eq!(listing.unreadable[0].plugin, "json");
}

/// Hosts sharing a store each keep their own chain: an approval asked for
/// on one host, decided on another's console and used on the first is one
/// story, and the log page lists every chain, each record by its place.
#[tokio::test]
async fn the_story_and_the_log_take_in_every_hosts_chain() {
    use airlock_host::StoreConfig;
    let stores = airlock_host::store::Stores::memory();
    let shared = stores.clone();
    let f = fixture_with(default_addr(), Reached::Loopback, move |config| {
        config.store(StoreConfig::Custom(shared)).origin("host-a")
    })
    .await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = Host::new(
        HostConfig::default()
            .data_dir(other_dir.path())
            .policy(approvers_policy())
            .store(StoreConfig::Custom(stores))
            .origin("host-b"),
    )
    .unwrap();
    other
        .load_plugin(format!("{PLUGINS_DIR}/billing"))
        .await
        .unwrap();
    let call = || {
        CallRequest::new(
            "billing/refund",
            json!({"account": "9182", "amount_cents": 240_000, "reason": "elsewhere"}).to_string(),
        )
        .principal("agent-1")
        .idempotency_key("across-hosts")
    };
    let id = match other.call(call()).await {
        Err(CallError::ApprovalPending { approval_id, .. }) => approval_id,
        other => panic!("expected approval_pending, got {other:?}"),
    };
    let asked = other.approval(&id).unwrap().unwrap().call_id;
    let (cookie, csrf) = f.login(ALICE).await;
    let answer = f
        .post(
            &format!("/console/approvals/{id}"),
            &cookie,
            &[
                ("csrf", &csrf),
                ("decision", "approve"),
                ("reason", "decided on host a"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let mut again = call();
    again.approval_id = Some(id.clone());
    other.call(again).await.unwrap();
    let used = other
        .approval(&id)
        .unwrap()
        .unwrap()
        .consumed_by_call
        .expect("consumed");
    let story = f
        .get(&format!("/console/audit/calls/{asked}"), &cookie)
        .await;
    assert_eq!(story.status, StatusCode::OK);
    let at = |part: &str| {
        story
            .body
            .find(part)
            .unwrap_or_else(|| panic!("{part}: {}", story.body))
    };
    // Asked on host b, decided here, run on host b: in that order.
    assert!(at("approval_requested") < at("decided on host a"));
    assert!(at("decided on host a") < at(&used));
    assert!(story.body.contains("#host-b:"), "{}", story.body);
    let log = f
        .get("/console/audit?event=approval_requested", &cookie)
        .await;
    assert_eq!(log.status, StatusCode::OK);
    assert!(log.body.contains("host-b:"), "{}", log.body);
    // Both chains verified, each against the key it is known by.
    let verify = f.get("/console/audit/verify", &cookie).await;
    assert_eq!(verify.status, StatusCode::OK);
    // Host b's key is not on host a: its chain is shown unvouched.
    for part in [
        "every chain (2) holds, but 1 of them UNVOUCHED",
        "<code>host-a</code> (this host)</h2>",
        "this host's own key",
        "<code>host-b</code> — UNVOUCHED",
    ] {
        assert!(verify.body.contains(part), "{part}: {}", verify.body);
    }
}

/// A story's records: each chain in its own order (its seqs, whatever its
/// clock said), the chains merged by time, a record read twice once.
#[test]
fn a_story_keeps_each_chain_in_order_and_merges_them_by_time() {
    use airlock_host::audit_log::{Entry, Record};
    let record = |origin: &str, seq: u64, time_ms: u64| ChainRecord {
        origin: origin.into(),
        record: Record {
            seq,
            time_ms,
            entry: Entry::new(Event::CallFinished),
            prev_hash: String::new(),
            hash: String::new(),
        },
    };
    // Host a's clock went back between its records 1 and 2.
    let story = in_story_order(vec![
        record("a", 2, 50),
        record("b", 1, 75),
        record("a", 1, 100),
        record("b", 1, 75),
        record("b", 2, 120),
    ]);
    let order: Vec<_> = story
        .iter()
        .map(|r| (r.origin.as_str(), r.record.seq))
        .collect();
    assert_eq!(order, [("b", 1), ("a", 1), ("a", 2), ("b", 2)]);
}

/// Of the calls made under an approval, a story shows the newest
/// `MAX_STORY_APPROVAL_CALLS` (it kept the oldest), beside the approval's
/// own records.
#[tokio::test]
async fn a_story_shows_the_newest_calls_made_under_its_approval() {
    let f = fixture().await;
    let call = || {
        CallRequest::new(
            "billing/refund",
            json!({"account": "9182", "amount_cents": 240_000, "reason": "many"}).to_string(),
        )
        .principal("agent-1")
        .idempotency_key("story-many")
    };
    let id = match f.host.call(call()).await {
        Err(CallError::ApprovalPending { approval_id, .. }) => approval_id,
        other => panic!("expected approval_pending, got {other:?}"),
    };
    let asked = f.host.approval(&id).unwrap().unwrap().call_id;
    f.host
        .decide(&id, "alice", ALICE, Verdict::Reject, Some("no"))
        .await
        .unwrap();
    for _ in 0..MAX_STORY_APPROVAL_CALLS + 5 {
        let mut again = call();
        again.approval_id = Some(id.clone());
        assert!(f.host.call(again).await.is_err());
    }
    let refusals = f
        .host
        .audit()
        .query(
            &Filter {
                approval_id: Some(id.clone()),
                event: Some(Event::CallRefused),
                ..Filter::default()
            },
            1000,
        )
        .unwrap();
    let calls: Vec<String> = refusals
        .iter()
        .filter_map(|r| r.entry.call_id.clone())
        .filter(|c| *c != asked)
        .collect();
    assert_eq!(calls.len(), MAX_STORY_APPROVAL_CALLS + 5);
    let (cookie, _) = f.login(ALICE).await;
    let story = f
        .get(&format!("/console/audit/calls/{asked}"), &cookie)
        .await;
    assert_eq!(story.status, StatusCode::OK);
    let newest = calls.last().unwrap();
    let oldest = calls.first().unwrap();
    assert!(
        story.body.contains(newest.as_str()),
        "the newest call is missing"
    );
    assert!(
        !story.body.contains(oldest.as_str()),
        "the oldest call is shown"
    );
    assert!(story.body.contains("approval_decided"), "{}", story.body);
}
