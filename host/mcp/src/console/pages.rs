//! The console's pages, as `maud` templates: every `(value)` below is
//! HTML-escaped by the macro; nothing here writes unescaped text
//! (`PreEscaped` appears nowhere), so a hostile tool name, argument,
//! reason or principal is shown as text, never run as markup.

use airlock_host::audit_log::text::TRUNCATED_MARK;
use airlock_host::audit_log::{ChainRecord, KeySource};
use airlock_host::store::{Approval, ApprovalState, Mode};
use airlock_host::{AlertStatus, InspectReport, Pause, Plugin, Severity};
use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, html};

use super::session::SessionView;
use super::{AuditFilters, PAGE_SIZE};
use crate::control::Verdict;

/// `text` as one URL path segment: unreserved characters kept, every
/// other byte percent-encoded.
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `ms` since the Unix epoch as an RFC 3339 time (UTC, seconds).
fn time(ms: u64) -> String {
    airlock_host::clock::rfc3339_seconds(ms)
}

/// A span of `ms` milliseconds, roughly, in words.
fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d", s / 86_400),
    }
}

fn ago(at_ms: u64, now_ms: u64) -> String {
    format!("{} ago", span(now_ms.saturating_sub(at_ms)))
}

fn until(at_ms: u64, now_ms: u64) -> String {
    if at_ms <= now_ms {
        format!("{} ago", span(now_ms - at_ms))
    } else {
        format!("in {}", span(at_ms - now_ms))
    }
}

/// Text at most `max` characters long, marked when cut.
fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max).collect();
    cut.push('…');
    cut
}

/// Arguments (or a result) as the approver reads them: pretty JSON when it
/// parses, else the text as stored; redacted values and the truncation mark
/// highlighted.
fn marked_json(text: &str) -> Markup {
    let pretty = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_owned());
    html! { pre.args { (marked(&pretty)) } }
}

/// Length of a redactor's token, `[redacted:` and 16 hex digits and `]`.
const TOKEN_LEN: usize = 27;

/// Where the first redactor's token in `text` starts. Exactly its shape:
/// a `[redacted:` that a caller wrote and a `]` further on must not mark
/// the keys and values between them as hidden by the host.
fn redaction_token(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = text[from..].find("[redacted:") {
        let start = from + found;
        let token = text.as_bytes().get(start..start + TOKEN_LEN);
        if token.is_some_and(|t| t[10..26].iter().all(u8::is_ascii_hexdigit) && t[26] == b']') {
            return Some(start);
        }
        from = start + 1;
    }
    None
}

/// `text` with the redactor's `[redacted:…]` tokens and the truncation
/// mark in `<mark>`s, everything escaped.
fn marked(text: &str) -> Markup {
    let mut parts: Vec<(bool, &str, &str)> = Vec::new();
    let mut rest = text;
    loop {
        let redacted = redaction_token(rest).map(|start| (start, start + TOKEN_LEN, "redacted"));
        // Only where the host cut: at the very end of what was kept. The
        // same text inside a caller's value is the caller's, and marking
        // it would tell the approver the arguments were cut when they
        // were not.
        let cut = rest
            .ends_with(TRUNCATED_MARK)
            .then(|| rest.len() - TRUNCATED_MARK.len())
            .map(|start| (start, start + TRUNCATED_MARK.len(), "cut"));
        let next = match (redacted, cut) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        let Some((start, end, class)) = next else {
            parts.push((false, rest, ""));
            break;
        };
        parts.push((false, &rest[..start], ""));
        parts.push((true, &rest[start..end], class));
        rest = &rest[end..];
    }
    html! {
        @for (mark, text, class) in parts {
            @if mark {
                mark class=(class) title=(if class == "cut" { "cut here: the rest is not kept" } else { "redacted before it was stored" }) { (text) }
            } @else {
                (text)
            }
        }
    }
}

fn layout(title: &str, who: Option<&SessionView>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Airlock console · " (title) }
                link rel="stylesheet" href="/console/static/console.css";
            }
            body {
                header {
                    span.brand { "Airlock console" }
                    @if who.is_some() {
                        nav {
                            a href="/console/approvals" { "Approvals" }
                            a href="/console/audit" { "Audit log" }
                            a href="/console/plugins" { "Plugins" }
                            a href="/console/mode" { "Mode" }
                            a href="/console/alerts" { "Alerts" }
                        }
                    }
                    @if let Some(who) = who {
                        div.who {
                            span { "Signed in as " strong { (who.approver) } }
                            form.inline method="post" action="/console/logout" {
                                (csrf(who))
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn csrf(who: &SessionView) -> Markup {
    html! { input type="hidden" name="csrf" value=(who.csrf); }
}

pub(crate) fn error(who: Option<&SessionView>, status: StatusCode, message: &str) -> Markup {
    layout(
        "error",
        who,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.notice.error { (message) }
            p { a href="/console" { "Back to the console" } }
        },
    )
}

pub(crate) fn login(message: Option<&str>) -> Markup {
    layout(
        "sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(message) = message { p.notice.error role="alert" { (message) } }
            form.login method="post" action="/console/login" autocomplete="off" {
                label for="token" { "Approver token" }
                input #token type="password" name="token" required autofocus size="48";
                " "
                button.primary type="submit" { "Sign in" }
                p.muted { "Approvers only (the host policy's approvals.approvers). Callers' tokens are refused." }
            }
        },
    )
}

fn state(state: ApprovalState) -> Markup {
    html! { span class={ "state state-" (state.as_str()) } { (state.as_str()) } }
}

fn risk(risk: &str) -> Markup {
    html! { span class={ "risk-" (risk) } { (risk) } }
}

const STATE_CHOICES: [&str; 7] = [
    "pending",
    "approved",
    "rejected",
    "expired",
    "cancelled",
    "consumed",
    "all",
];

pub(crate) fn approvals(
    who: &SessionView,
    list: &[Approval],
    state_name: &str,
    page: usize,
    now_ms: u64,
) -> Markup {
    // `page` comes from the query string: saturating, so a huge one is an
    // empty page, not an overflow.
    let skip = page.saturating_mul(PAGE_SIZE);
    let shown: Vec<&Approval> = list.iter().skip(skip).take(PAGE_SIZE).collect();
    let more = list.len() > skip.saturating_add(PAGE_SIZE);
    layout(
        "approvals",
        Some(who),
        html! {
            h1 { "Approvals" }
            p {
                @for choice in STATE_CHOICES {
                    @if choice == state_name { strong { (choice) } } @else {
                        a href={ "/console/approvals?state=" (choice) } { (choice) }
                    }
                    " "
                }
            }
            @if shown.is_empty() {
                p.notice { "No " (state_name) " approvals." }
            } @else {
                table #approvals {
                    thead { tr {
                        th { "Approval" } th { "Tool" } th { "Risk" } th { "Principal" }
                        th { "Session" } th { "Caller's reason" } th { "Asked" } th { "Expires" } th { "State" }
                    } }
                    tbody {
                        @for a in &shown {
                            tr {
                                td { a href={ "/console/approvals/" (segment(&a.id)) } { (a.id) } }
                                td { code { (a.plugin) "/" (a.tool) } }
                                td { (risk(&a.risk)) }
                                td { (a.principal) }
                                td { (a.session.as_deref().unwrap_or("–")) }
                                td { (short(a.caller_reason.as_deref().unwrap_or("–"), 120)) }
                                td { (ago(a.created_ms, now_ms)) }
                                td { (until(a.expires_ms, now_ms)) }
                                td { (state(a.state)) }
                            }
                        }
                    }
                }
            }
            div.pager {
                @if page > 0 {
                    a href={ "/console/approvals?state=" (state_name) "&page=" (page - 1) } { "← newer" }
                }
                @if more {
                    a href={ "/console/approvals?state=" (state_name) "&page=" (page + 1) } { "older →" }
                }
            }
        },
    )
}

pub(crate) fn approval(
    who: &SessionView,
    a: &Approval,
    notice: Option<&str>,
    now_ms: u64,
) -> Markup {
    let own = a.principal == who.approver;
    layout(
        &format!("approval {}", a.id),
        Some(who),
        html! {
            h1 { "Approval " code { (a.id) } " " (state(a.state)) }
            @if let Some(notice) = notice { p.notice.error role="alert" { (notice) } }
            dl.fields {
                dt { "Decides on" } dd { (a.kind.as_str()) }
                dt { "Tool" } dd { code { (a.plugin) "/" (a.tool) } }
                @if let Some(version) = &a.plugin_version { dt { "Version" } dd { (version) } }
                dt { "Risk" } dd { (risk(&a.risk)) }
                dt { "Principal" } dd { (a.principal) }
                dt { "Session" } dd { (a.session.as_deref().unwrap_or("none")) }
                dt { "Idempotency key" } dd { (a.idempotency_key.as_deref().unwrap_or("none")) }
                dt { "Caller's reason" } dd { (a.caller_reason.as_deref().unwrap_or("none given")) }
                dt { "Asked" } dd { (time(a.created_ms)) " (" (ago(a.created_ms, now_ms)) ")" }
                dt { "Expires" } dd { (time(a.expires_ms)) " (" (until(a.expires_ms, now_ms)) ")" }
                dt { "Call" } dd { a href={ "/console/audit/calls/" (segment(&a.call_id)) } { code { (a.call_id) } } }
                dt { "Component digest" } dd { code { (a.component_digest) } }
                @if let Some(digest) = &a.manifest_digest { dt { "Manifest digest" } dd { code { (digest) } } }
                dt { "Arguments digest" } dd { code { (a.args_digest) } }
                @if let Some(by) = &a.decided_by {
                    dt { "Decided by" } dd { (by) @if let Some(at) = a.decided_ms { " at " (time(at)) } }
                    dt { "Decision reason" } dd { (a.decision_reason.as_deref().unwrap_or("none given")) }
                }
                @if let Some(call) = &a.consumed_by_call {
                    dt { "Consumed by" } dd { a href={ "/console/audit/calls/" (segment(call)) } { code { (call) } } }
                }
            }
            @if !a.unknown_fields.is_empty() {
                h2 { "Terms this host does not know" }
                p.notice.warn {
                    "A newer Airlock wrote these terms into the approval. This host keeps them but does not check them, and runs no call under this approval; a host of that version does."
                }
                dl.fields {
                    @for (name, value) in &a.unknown_fields {
                        dt { code { (name) } } dd { code { (short(&value.to_string(), 512)) } }
                    }
                }
            }
            h2 { "Arguments (redacted)" }
            @if a.args_truncated {
                p.notice.warn { "These arguments were cut at the audit copy's size cap: the part after the mark is not shown. The approval is bound to the digest of the whole arguments." }
            }
            (marked_json(&a.args))
            @if a.state == ApprovalState::Pending {
                @if own {
                    p.notice.warn { "This is your own call: the host refuses a decision on it by you." }
                }
                form.decide method="post" action={ "/console/approvals/" (segment(&a.id)) } {
                    (csrf(who))
                    label for="reason" { "Reason (required to reject)" }
                    textarea #reason name="reason" maxlength="2048" {}
                    @if let Some(hidden) = airlock_host::unseen_arguments(a) {
                        p.notice.warn {
                            "Not every value of these arguments is shown: " (hidden)
                            ". The tool receives them as the caller sent them."
                        }
                        p {
                            label.unseen {
                                input type="checkbox" name="unseen" value="acknowledged";
                                " I approve without seeing every value"
                            }
                        }
                    }
                    p {
                        button.approve type="submit" name="decision" value="approve" { "Approve" }
                        " "
                        button.reject type="submit" name="decision" value="reject" { "Reject" }
                    }
                }
            }
        },
    )
}

fn outcome(outcome: Option<&str>) -> Markup {
    match outcome {
        None => html! { "–" },
        Some("ok") => html! { span.outcome-ok { "ok" } },
        Some(other) => html! { span.outcome-bad { (other) } },
    }
}

fn audit_link(filters: &AuditFilters, page: usize) -> String {
    let mut f = filters.clone();
    f.page = page;
    format!(
        "/console/audit?{}",
        serde_urlencoded::to_string(&f).unwrap_or_default()
    )
}

pub(crate) fn audit(
    who: &SessionView,
    filters: &AuditFilters,
    own_origin: &str,
    records: &[ChainRecord],
    unreadable: &[(String, String)],
    more: bool,
) -> Markup {
    layout(
        "audit log",
        Some(who),
        html! {
            h1 { "Audit log" }
            p { a href="/console/audit/verify" { "Verify the chain" } }
            (unreadable_chains(unreadable))
            form.filters method="get" action="/console/audit" {
                @for (name, value) in [("plugin", &filters.plugin), ("tool", &filters.tool), ("outcome", &filters.outcome), ("principal", &filters.principal), ("event", &filters.event)] {
                    div {
                        label for={ "f-" (name) } { (name) }
                        input id={ "f-" (name) } type="text" name=(name) value=(value) maxlength="256";
                    }
                }
                button type="submit" { "Filter" }
            }
            @if records.is_empty() {
                p.notice { "No records." }
            } @else {
                table #audit {
                    thead { tr {
                        th { "#" } th { "Time" } th { "Event" } th { "Principal" } th { "Tool" }
                        th { "Decision" } th { "Outcome" } th { "Reason" } th { "Call" }
                    } }
                    tbody {
                        @for chained in records {
                            @let r = &chained.record;
                            tr {
                                td { (seq(chained, own_origin)) }
                                td { (time(r.time_ms)) }
                                td { (r.entry.event.as_str()) }
                                td { (r.entry.principal.as_deref().unwrap_or("–")) }
                                td { code {
                                    (r.entry.plugin.as_deref().unwrap_or(""))
                                    @if let Some(tool) = &r.entry.tool { "/" (tool) }
                                } }
                                td { (r.entry.decision.as_deref().unwrap_or("–")) }
                                td { (outcome(r.entry.outcome.as_deref())) }
                                td { (short(r.entry.reason.as_deref().unwrap_or(""), 160)) }
                                td {
                                    @if let Some(call) = &r.entry.call_id {
                                        a href={ "/console/audit/calls/" (segment(call)) } { "story" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            div.pager {
                @if filters.page > 0 { a href=(audit_link(filters, filters.page - 1)) { "← newer" } }
                @if more { a href=(audit_link(filters, filters.page + 1)) { "older →" } }
            }
        },
    )
}

/// A record's place: its seq in this host's chain, `origin:seq` in
/// another host's (hosts sharing a store each keep their own chain).
fn seq(chained: &ChainRecord, own_origin: &str) -> String {
    if chained.origin == own_origin {
        chained.record.seq.to_string()
    } else {
        format!("{}:{}", chained.origin, chained.record.seq)
    }
}

/// A notice for each chain a query could not read: its records are not
/// on the page.
fn unreadable_chains(chains: &[(String, String)]) -> Markup {
    html! {
        @for (origin, why) in chains {
            p.notice.error role="alert" {
                "The audit chain " code { (origin) } " could not be read in full: none of its records from where it failed on are shown ("
                (why) "). Run airlock audit verify."
            }
        }
    }
}

pub(crate) fn call_story(
    who: &SessionView,
    call_id: &str,
    own_origin: &str,
    records: &[ChainRecord],
    unreadable: &[(String, String)],
) -> Markup {
    layout(
        &format!("call {call_id}"),
        Some(who),
        html! {
            h1 { "Call " code { (call_id) } }
            p.muted {
                "Every record of this call, oldest first: refusal or intent, approval, outcome. "
                "With them, the records of each approval the call names: its request, its decision, "
                "and the other calls made under it, each marked with its own call."
            }
            (unreadable_chains(unreadable))
            @for chained in records {
                @let r = &chained.record;
                h2 { "#" (seq(chained, own_origin)) " " (r.entry.event.as_str()) " · " (time(r.time_ms)) }
                dl.fields {
                    @if let Some(v) = r.entry.call_id.as_ref().filter(|v| v.as_str() != call_id) {
                        dt { "Another call" } dd { a href={ "/console/audit/calls/" (segment(v)) } { code { (v) } } }
                    }
                    @if let Some(v) = &r.entry.principal { dt { "Principal" } dd { (v) } }
                    @if let Some(v) = &r.entry.plugin {
                        dt { "Plugin" } dd { code { (v) } @if let Some(ver) = &r.entry.plugin_version { " " (ver) } }
                    }
                    @if let Some(v) = &r.entry.tool { dt { "Tool" } dd { code { (v) } } }
                    @if let Some(v) = &r.entry.risk { dt { "Risk" } dd { (risk(v)) } }
                    @if let Some(v) = &r.entry.decision { dt { "Decision" } dd { (v) } }
                    @if let Some(v) = &r.entry.reason { dt { "Reason" } dd { (marked(v)) } }
                    @if let Some(v) = &r.entry.approval_id {
                        dt { "Approval" } dd { a href={ "/console/approvals/" (segment(v)) } { code { (v) } } }
                    }
                    @if let Some(v) = &r.entry.idempotency_key { dt { "Idempotency key" } dd { (v) } }
                    @if let Some(v) = &r.entry.trace_id { dt { "Trace" } dd { code { (v) } } }
                    @if let Some(v) = &r.entry.outcome { dt { "Outcome" } dd { (outcome(Some(v))) } }
                    @if let Some(v) = r.entry.fuel_used { dt { "Fuel" } dd { (v) } }
                    @if let Some(v) = r.entry.wall_us { dt { "Wall time" } dd { (v) " µs" } }
                    @if let Some(v) = &r.entry.args_digest { dt { "Arguments digest" } dd { code { (v) } } }
                    @if let Some(v) = &r.entry.result_digest { dt { "Result digest" } dd { code { (v) } } }
                    dt { "Hash" } dd { code { (r.hash) } }
                }
                @if let Some(args) = &r.entry.args {
                    h2 { "Arguments" @if r.entry.args_truncated { " (cut at the size cap)" } }
                    (marked_json(args))
                }
                @if let Some(result) = &r.entry.result {
                    h2 { "Result" @if r.entry.result_truncated { " (cut at the size cap)" } }
                    (marked_json(result))
                }
                @if let Some(logs) = &r.entry.logs {
                    h2 { "Logs" @if r.entry.logs_truncated { " (cut at the size cap)" } }
                    (marked_json(logs))
                }
                @if let Some(notes) = &r.entry.host_notes {
                    h2 { "Host notes" @if r.entry.host_notes_truncated { " (cut at the size cap)" } }
                    (marked_json(notes))
                }
            }
        },
    )
}

/// One chain's verification, as the verify page shows it.
pub(crate) struct ChainVerdict {
    /// Whose chain.
    pub(crate) origin: String,
    /// This host's own.
    pub(crate) own: bool,
    pub(crate) verdict: Verdict,
    /// The key its checkpoints were checked against, hex.
    pub(crate) public_key: Option<String>,
    pub(crate) key_source: KeySource,
}

/// Where a chain's key came from, in words.
fn key_source(source: &KeySource) -> String {
    match source {
        KeySource::Given => "given".to_owned(),
        KeySource::Own => "this host's own key".to_owned(),
        KeySource::File { path } => format!("from {}", path.display()),
        KeySource::Named => {
            "named by the chain's own checkpoints: no one vouched for it, so it proves the chain against no one who could rewrite its checkpoints too".to_owned()
        }
        KeySource::None => "none: the chain has no checkpoints, so only its links and hashes are checked".to_owned(),
    }
}

pub(crate) fn verify(who: &SessionView, chains: &[ChainVerdict]) -> Markup {
    let failed = chains
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Failed { .. }))
        .count();
    // Checked against a key the chain names itself, or none: whoever could
    // write it could have written a chain that verifies.
    let unvouched = chains
        .iter()
        .filter(|c| matches!(c.key_source, KeySource::Named | KeySource::None))
        .count();
    layout(
        "verify",
        Some(who),
        html! {
            h1 { "Audit chain verification" }
            @if failed == 0 && unvouched == 0 {
                p.notice.ok #verdict { "Verified: every chain (" (chains.len()) ") holds." }
            } @else if failed == 0 {
                p.notice.warn #verdict {
                    "Verified: every chain (" (chains.len()) ") holds, but " (unvouched)
                    " of them UNVOUCHED: checked against no key anyone vouched for (copy each host's keys/ORIGIN.pub into this host's audit keys directory)."
                }
            } @else {
                p.notice.error #verdict { "FAILED: " (failed) " of " (chains.len()) " chains." }
            }
            @for chain in chains {
                h2 {
                    "Chain " code { (chain.origin) } @if chain.own { " (this host)" }
                    @if matches!(chain.key_source, KeySource::Named | KeySource::None) { " — UNVOUCHED" }
                }
                @match &chain.verdict {
                    Verdict::Passed { records, checkpoints, head_hash, unsigned_tail, .. } => {
                        p.notice.ok { "Verified: " (records) " records, " (checkpoints) " signed checkpoints; every hash links." }
                        dl.fields {
                            dt { "Head hash" } dd { code { (head_hash.as_deref().unwrap_or("none")) } }
                            dt { "Records after the last checkpoint" } dd { (unsigned_tail) }
                            dt { "Checkpoint key" } dd { code { (chain.public_key.as_deref().unwrap_or("none")) } " — " (key_source(&chain.key_source)) }
                        }
                    }
                    Verdict::Failed { seq, problem, .. } => {
                        p.notice.error { "Verification FAILED at record " (seq) ": " (problem) }
                        dl.fields {
                            dt { "Checkpoint key" } dd { code { (chain.public_key.as_deref().unwrap_or("none")) } " — " (key_source(&chain.key_source)) }
                        }
                    }
                }
            }
            p.muted { "Each chain checked against its own checkpoints. For checkpoints kept elsewhere, use airlock audit verify --trusted." }
        },
    )
}

pub(crate) fn plugins(
    who: &SessionView,
    loaded: &[std::sync::Arc<Plugin>],
    installed: Result<&airlock_host::InstalledListing, &str>,
    listing: &airlock_host::RolloutListing,
) -> Markup {
    let rollouts = &listing.rollouts;
    layout(
        "plugins",
        Some(who),
        html! {
            h1 { "Plugins" }
            @for u in &listing.unreadable {
                p.notice.error role="alert" {
                    "The rollout record of " code { (u.plugin) } " cannot be read, so its calls are refused: " (u.error)
                    ". Restore it from a backup, or remove it and roll out again."
                }
            }
            @if let Some(why) = &listing.partial {
                p.notice.warn {
                    "The store could not list the rollouts at once (" (why) "): they were read one by one, for each plugin with a record."
                }
            }
            @if loaded.is_empty() { p.notice { "No plugin is loaded." } } @else {
                table #plugins {
                    thead { tr { th { "Plugin" } th { "Version" } th { "Tools" } th { "Signer" } th { "Component digest" } } }
                    tbody {
                        @for p in loaded {
                            tr {
                                td { a href={ "/console/plugins/" (segment(p.name())) } { (p.name()) } }
                                td { (p.version()) }
                                td {
                                    @for t in p.tools() {
                                        code { (t.name()) } " " (risk(t.risk().as_str()))
                                        @if t.approval_required() { " · approval" }
                                        br;
                                    }
                                }
                                td { (p.signer().map(|s| s.to_string()).unwrap_or_else(|| "unsigned".to_owned())) }
                                td { code { (short(p.digest(), 16)) } }
                            }
                        }
                    }
                }
            }
            h2 { "Installed versions" }
            @match installed {
                Ok(installed) => { (versions_table(installed)) }
                Err(message) => { p.notice.error role="alert" { "The installed versions cannot be listed: " (message) } }
            }
            h2 { "Rollouts" }
            @if rollouts.is_empty() { p.muted { "No rollout." } } @else {
                table {
                    thead { tr { th { "Plugin" } th { "Serving" } th { "Canary" } th { "Previous" } th { "Roll back" } } }
                    tbody {
                        @for r in rollouts {
                            tr {
                                td { (r.plugin) }
                                td { (r.serving) }
                                td { @if let Some(c) = &r.canary { (c.version) " at " (c.percent) "%" } @else { "–" } }
                                td { (r.previous.as_deref().unwrap_or("–")) }
                                td {
                                    @if !who.operator {
                                        span.muted { "operators only" }
                                    } @else if r.canary.is_some() || r.previous.is_some() {
                                        form.inline method="post" action={ "/console/plugins/" (segment(&r.plugin)) "/rollback" } {
                                            (csrf(who))
                                            input type="hidden" name="change" value=(r.change.id);
                                            input type="text" name="reason" placeholder="reason" maxlength=(airlock_host::MAX_CHANGE_REASON_BYTES);
                                            " "
                                            button.reject type="submit" { "Roll back" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn versions_table(listing: &airlock_host::InstalledListing) -> Markup {
    let installed = &listing.versions;
    html! {
        @for u in &listing.unreadable {
            p.notice.error role="alert" {
                "The record of " code { (u.plugin) } " " code { (u.version) } " cannot be read: " (u.error)
                ". Restore it from a backup, or remove it and install the version's package again."
            }
        }
        @if let Some(why) = &listing.partial {
            p.notice.warn {
                "The store could not list the installed versions at once (" (why) "): they were read one by one."
            }
        }
        @if installed.is_empty() {
            @if listing.unreadable.is_empty() {
                p.muted { "No version installed in the store (plugins load from the plugins directory)." }
            }
        } @else {
            table {
                thead { tr { th { "Plugin" } th { "Version" } th { "Installed" } th { "By" } th { "Signer" } th { "Component digest" } } }
                tbody {
                    @for v in installed {
                        tr {
                            td { (v.plugin) } td { (v.version) } td { (time(v.installed_ms)) }
                            td { (v.installed_by) } td { (v.signer.as_deref().unwrap_or("unsigned")) }
                            td { code { (short(&v.component_digest, 16)) } }
                        }
                    }
                }
            }
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

pub(crate) fn plugin(
    who: &SessionView,
    loaded: &Plugin,
    report: Result<&InspectReport, &String>,
    moved: bool,
    versions: Result<&airlock_host::InstalledListing, &str>,
) -> Markup {
    let grant = serde_json::to_string_pretty(loaded.grant()).unwrap_or_default();
    layout(
        &format!("plugin {}", loaded.name()),
        Some(who),
        html! {
            h1 { "Plugin " code { (loaded.name()) } " " (loaded.version()) }
            dl.fields {
                dt { "Component digest" } dd { code { (loaded.digest()) } }
                dt { "Manifest digest" } dd { code { (loaded.manifest_digest()) } }
                dt { "Signer" } dd { (loaded.signer().map(|s| s.to_string()).unwrap_or_else(|| "unsigned".to_owned())) }
            }
            h2 { "Findings (inspect)" }
            @match report {
                Ok(report) => {
                    @if moved {
                        p.notice.warn {
                            "The plugin's directory now holds another version (manifest or component) than the one loaded: what follows describes the directory's, not the version serving calls."
                        }
                    }
                    @if report.findings.is_empty() { p.notice.ok { "No findings." } } @else {
                        table #findings {
                            thead { tr { th { "Severity" } th { "Finding" } } }
                            tbody {
                                @for f in &report.findings {
                                    tr {
                                        td { @match f.severity { Severity::Error => span.outcome-bad { "error" }, Severity::Warning => span.risk-external { "warning" } } }
                                        td { (f.message) }
                                    }
                                }
                            }
                        }
                    }
                    h2 { "Capabilities" }
                    table {
                        thead { tr { th { "Capability" } th { "Declared" } th { "Granted" } th { "Imported" } } }
                        tbody {
                            @for c in &report.capabilities {
                                tr { td { code { (c.key) } } td { (yes(c.declared)) } td { (yes(c.granted)) } td { (yes(c.imported)) } }
                            }
                        }
                    }
                    h2 { "Tools" }
                    table {
                        thead { tr { th { "Tool" } th { "Risk" } th { "State" } } }
                        tbody {
                            @for t in &report.tools {
                                tr {
                                    td { code { (t.name) } }
                                    td { (t.risk.map(|r| r.as_str()).unwrap_or("–")) }
                                    td { @if t.hidden { "hidden (exported, not declared)" } @else if t.exposed { "exposed" } @else { "not exposed" } }
                                }
                            }
                        }
                    }
                }
                Err(message) => { p.notice.error { "Cannot inspect: " (message) } }
            }
            h2 { "Effective grant" }
            pre { (grant) }
            h2 { "Installed versions" }
            @match versions {
                Ok(versions) => { (versions_table(versions)) }
                Err(message) => { p.notice.error { (message) } }
            }
        },
    )
}

/// What a page shows an approver who is not an operator where a takeover
/// form would be.
const NOT_AN_OPERATOR: &str =
    "Takeovers are for operators: your approver entry does not say operator = true.";

pub(crate) fn mode(who: &SessionView, mode: Option<&Mode>) -> Markup {
    let read_only = mode.is_some_and(|m| m.read_only);
    layout(
        "mode",
        Some(who),
        html! {
            h1 { "Host mode" }
            p.notice.(if read_only { "warn" } else { "ok" }) #mode {
                @if read_only { "READ-ONLY: every tool that is not read is refused." } @else { "Normal." }
            }
            @if let Some(m) = mode {
                dl.fields {
                    dt { "Switched by" } dd { (m.by) }
                    dt { "At" } dd { (time(m.at_ms)) }
                    dt { "Reason" } dd { (m.reason.as_deref().unwrap_or("none given")) }
                }
            }
            @if !who.operator {
                p.muted { (NOT_AN_OPERATOR) }
            } @else {
            form.decide method="post" action="/console/mode" {
                (csrf(who))
                input type="hidden" name="mode" value=(if read_only { "normal" } else { "read_only" });
                label for="reason" { "Reason (recorded in the audit log)" }
                textarea #reason name="reason" maxlength="2048" {}
                p {
                    @if read_only {
                        button.primary type="submit" { "Back to normal" }
                    } @else {
                        button.reject type="submit" { "Switch to read-only" }
                    }
                }
            }
            }
        },
    )
}

pub(crate) fn alerts(who: &SessionView, alerts: &[AlertStatus], pauses: &[Pause]) -> Markup {
    layout(
        "alerts",
        Some(who),
        html! {
            h1 { "Alerts" }
            @if alerts.is_empty() { p.muted { "No alert rule is configured." } } @else {
                table {
                    thead { tr { th { "Rule" } th { "Metric" } th { "State" } th { "Watches" } th { "Value" } th { "Threshold" } th { "Takeover" } } }
                    tbody {
                        @for a in alerts {
                            tr {
                                td { (a.rule) } td { (a.metric) } td { (a.state) }
                                td {
                                    (a.plugin.as_deref().unwrap_or("all")) @if let Some(t) = &a.tool { "/" (t) }
                                    @if let Some(v) = &a.version { " " (v) }
                                }
                                td { (a.value.map(|v| v.to_string()).unwrap_or_else(|| "–".to_owned())) }
                                td { (a.threshold) }
                                td { (a.takeover.as_deref().unwrap_or("–")) }
                            }
                        }
                    }
                }
            }
            h2 { "Paused tools" }
            @if pauses.is_empty() { p.muted { "Nothing is paused." } } @else {
                table {
                    thead { tr { th { "Target" } th { "By" } th { "At" } th { "Reason" } th { "Resume" } } }
                    tbody {
                        @for p in pauses {
                            tr {
                                td { code { (p.target) } } td { (p.by) } td { (time(p.at_ms)) } td { (p.reason.as_deref().unwrap_or("")) }
                                td {
                                    @if !who.operator { span.muted { "operators only" } } @else {
                                    form.inline method="post" action="/console/alerts/resume" {
                                        (csrf(who))
                                        input type="hidden" name="target" value=(p.target);
                                        input type="text" name="reason" placeholder="reason" maxlength="2048";
                                        " "
                                        button.primary type="submit" { "Resume" }
                                    }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Pause a tool or plugin" }
            @if !who.operator {
                p.muted { (NOT_AN_OPERATOR) }
            } @else {
            form.filters method="post" action="/console/alerts/pause" {
                (csrf(who))
                div {
                    label for="pause-target" { "plugin/tool or plugin" }
                    input #pause-target type="text" name="target" required maxlength="256";
                }
                div {
                    label for="pause-reason" { "reason (recorded)" }
                    input #pause-reason type="text" name="reason" maxlength="2048";
                }
                div {
                    input #pause-force type="checkbox" name="force";
                    label for="pause-force" { "even if this host does not serve it (it pauses on every host)" }
                }
                button.reject type="submit" { "Pause" }
            }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("apr-01_x.y~"), "apr-01_x.y~");
        assert_eq!(segment("a/b?c#d e"), "a%2Fb%3Fc%23d%20e");
        assert_eq!(segment("<\"'>"), "%3C%22%27%3E");
    }

    #[test]
    fn redactions_and_cuts_are_marked_and_the_rest_escaped() {
        let html = marked("{\"card\":\"[redacted:0123456789abcdef]\",\"x\":\"<b>\"…[truncated]")
            .into_string();
        assert!(html.contains("<mark class=\"redacted\""), "{html}");
        assert!(
            html.contains(">[redacted:0123456789abcdef]</mark>"),
            "{html}"
        );
        assert!(html.contains("<mark class=\"cut\""), "{html}");
        assert!(html.contains("&lt;b&gt;"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        // An unclosed marker is text.
        assert_eq!(marked("[redacted:").into_string(), "[redacted:");
        // A caller's `[redacted:` and a later `]` do not mark what lies
        // between as hidden: only the redactor's token, exactly.
        let spoof = "{\"a\":\"[redacted:\",\"amount\":1000000,\"b\":\"]\"}";
        assert!(!marked(spoof).into_string().contains("<mark"), "{spoof}");
        let html = marked("[redacted:zz][redacted:0123456789ABCDEF] and ]").into_string();
        assert_eq!(
            html,
            "[redacted:zz]<mark class=\"redacted\" title=\"redacted before it was stored\">[redacted:0123456789ABCDEF]</mark> and ]"
        );
        // A cut mark anywhere but at the end is a caller's text.
        let html = marked("{\"note\":\"…[truncated]\"}").into_string();
        assert!(!html.contains("<mark"), "{html}");
    }

    #[test]
    fn spans_read_as_words() {
        assert_eq!(span(59_999), "59 s");
        assert_eq!(span(61_000), "1 min");
        assert_eq!(span(3_660_000), "1 h 1 min");
        assert_eq!(until(1_000, 61_000), "1 min ago");
        assert_eq!(until(121_000, 61_000), "in 1 min");
        assert_eq!(short("abcdef", 3), "abc…");
    }
}
