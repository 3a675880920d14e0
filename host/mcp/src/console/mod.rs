//! The approvers' and operators' console: server-rendered HTML at
//! `/console` on the `airlock serve --http` listener (behind its `Host`
//! and `Origin` checks).
//!
//! | method and path | what |
//! |---|---|
//! | `GET /console/login`, `POST /console/login` | sign in with an approver's token (form field `token`) |
//! | `POST /console/logout` | end the session |
//! | `GET /console/approvals[?state=…&page=N]` | approvals (pending by default) |
//! | `GET /console/approvals/{id}`, `POST` | one approval: everything it binds; approve or reject with a reason |
//! | `GET /console/audit[?plugin&tool&outcome&principal&event&page]` | the audit log's tail, filtered |
//! | `GET /console/audit/calls/{call_id}` | one call's records, from refusal or intent to outcome |
//! | `GET /console/audit/verify` | the audit chain verified |
//! | `GET /console/plugins`, `GET /console/plugins/{name}` | plugins, installed versions, rollouts; one plugin's grant and `inspect` findings |
//! | `GET /console/mode`, `POST` | the host mode (normal or read-only), switched as `airlock mode` does |
//! | `POST /console/plugins/{name}/rollback` | all of a plugin's traffic back (as `airlock rollback`) |
//! | `GET /console/alerts` | alert rules and pauses |
//! | `POST /console/alerts/pause`, `POST /console/alerts/resume` | pause a tool or plugin, or resume it (as `airlock alerts pause/resume`) |
//!
//! # Security
//! Everything on these pages — plugin and tool names, arguments, reasons,
//! principals — may come from a caller or a plugin, so all of it is
//! escaped by the templates (`maud` escapes every interpolated value) and
//! no page runs a script:
//! - every answer carries `Content-Security-Policy: default-src 'none';
//!   style-src 'self'; img-src 'self'; form-action 'self';
//!   frame-ancestors 'none'; base-uri 'none'` (nothing loads but the
//!   stylesheet, served from `/console/static/`, and the browser's own
//!   favicon request: no script at all, not even the console's own, and no
//!   inline style), `X-Frame-Options: DENY`, `X-Content-Type-Options:
//!   nosniff`, `Referrer-Policy: same-origin` and `Cache-Control:
//!   no-store`;
//! - only approvers' tokens sign in (the host policy's
//!   `approvals.approvers`, as on `/approvals`); a caller's token is refused and
//!   told so. Tokens travel in a POST body only, never in a URL;
//! - a session is a random 256-bit id in a cookie `HttpOnly;
//!   SameSite=Strict; Path=/console` (and `Secure` when the listener is not
//!   on loopback), kept server-side with an idle and an absolute expiry
//!   and a cap on their number;
//! - every POST must carry an `Origin` naming this server (the `Host` it
//!   was sent to) and, once signed in, the session's CSRF token in a
//!   hidden field, checked in constant time; no GET changes anything;
//! - form bodies are capped at [`MAX_FORM_BYTES`]; lists are paginated.

mod pages;
mod session;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use airlock_host::audit_log::{ChainRecord, Event, Filter};
use airlock_host::store::ApprovalState;
use airlock_host::{Host, Verdict};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::Markup;
use serde::Deserialize;

use crate::http::{CallerToken, HttpConfig, warn_refused};
use crate::server::McpServer;
use session::{SessionLimits, SessionView, Sessions};

/// The console's path.
pub const CONSOLE_PATH: &str = "/console";
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "airlock_console";
/// Largest form body the console reads.
pub const MAX_FORM_BYTES: usize = 16 * 1024;
/// Rows on one page of a list.
pub const PAGE_SIZE: usize = 50;
/// Deepest audit page (the newest `PAGE_SIZE * MAX_AUDIT_PAGES` records
/// are reachable by paging; older ones by filters).
pub const MAX_AUDIT_PAGES: usize = 40;
/// Longest filter value.
const MAX_FILTER_LEN: usize = 256;
/// Longest reason an approver may type (the host keeps 1024 bytes).
const MAX_REASON_LEN: usize = 2048;

/// The Content-Security-Policy of every console answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What every console handler shares.
pub(crate) struct Console {
    host: Arc<Host>,
    callers: Vec<CallerToken>,
    sessions: Sessions,
    /// Cookies are `Secure` (the listener is not on loopback: TLS is
    /// expected in front of it).
    secure_cookie: bool,
    /// Slots for the pages that read much ([`heavy`]).
    heavy: Arc<tokio::sync::Semaphore>,
}

/// Most heavy reads the console runs at once: a plugin's inspection
/// (reading its files, compiling its component, running it to list its
/// tools), a filtered scan, a call's story, a verification of the
/// whole audit log and a listing of decided approvals. Each runs on a blocking thread, which cannot be
/// stopped once started: without a bound, a signed-in browser reloading
/// such a page (or a script with a stolen session) would start one more
/// each time and fill the blocking pool and both cores.
const HEAVY_AT_ONCE: usize = 2;

/// The console's routes for `server` on the listener `config` describes.
pub(crate) fn routes(server: &McpServer, config: &HttpConfig) -> Router {
    router_for(Arc::new(Console {
        host: Arc::clone(server.host()),
        callers: config.tokens.clone(),
        sessions: Sessions::new(SessionLimits::default()),
        secure_cookie: config.behind_proxy || !config.addr.ip().is_loopback(),
        heavy: Arc::new(tokio::sync::Semaphore::new(HEAVY_AT_ONCE)),
    }))
}

fn router_for(console: Arc<Console>) -> Router {
    Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", axum::routing::post(logout))
        .route("/console/approvals", get(approvals))
        .route("/console/approvals/{id}", get(approval).post(decide))
        .route("/console/audit", get(audit))
        .route("/console/audit/verify", get(verify))
        .route("/console/audit/calls/{call_id}", get(call_story))
        .route("/console/plugins", get(plugins))
        .route("/console/plugins/{name}", get(plugin))
        .route("/console/mode", get(mode).post(set_mode))
        .route(
            "/console/plugins/{name}/rollback",
            axum::routing::post(rollback),
        )
        .route("/console/alerts", get(alerts))
        .route("/console/alerts/pause", axum::routing::post(pause))
        .route("/console/alerts/resume", axum::routing::post(resume))
        .route("/console/static/console.css", get(stylesheet))
        .route("/console/{*rest}", get(not_found).post(not_found))
        .layer(middleware::map_response(security_headers))
        .with_state(console)
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: under it a browser sends `Origin: null` with
        // a form POST, and the same-origin check refuses every form.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

// ------------------------------------------------------------ answers

/// An HTML page with `status`.
fn html(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        visible_reordering(markup.into_string()),
    )
        .into_response()
}

/// `page` with every character that reorders what a reader sees or shows
/// as nothing ([`misleads_between`](airlock_host::audit_log::text::misleads_between):
/// a joiner or selector only out of the place its script needs it)
/// written as a visible `\u{…}` escape: a caller's reason or arguments
/// cannot read to an approver as something they are not. The console's
/// own templates hold none, so only what came from outside changes.
fn visible_reordering(page: String) -> String {
    use airlock_host::audit_log::text::{joins, misleads, misleads_between};
    use std::fmt::Write as _;
    if !page.chars().any(|c| misleads(c) || joins(c)) {
        return page;
    }
    let mut out = String::with_capacity(page.len() + 32);
    let mut before = None;
    let mut chars = page.chars().peekable();
    while let Some(c) = chars.next() {
        if misleads_between(before, c, chars.peek().copied()) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
        before = Some(c);
    }
    out
}

/// `303 See Other` to `to` (a fixed console path).
fn see_other(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// An error page for a signed-in approver (`None`: the signed-out layout).
fn error_page(status: StatusCode, who: Option<&SessionView>, message: &str) -> Response {
    html(status, pages::error(who, status, message))
}

async fn not_found() -> Response {
    error_page(StatusCode::NOT_FOUND, None, "no such console page")
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

/// Run `work` (store reads and writes block) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(format!("the request failed: {e}")))
}

/// `work` on a blocking thread once one of the console's [`HEAVY_AT_ONCE`]
/// slots is free. A request that goes away while it waits for a slot
/// starts nothing; one whose work has started holds its slot until the
/// work is done, since blocking work cannot be stopped.
async fn heavy<T: Send + 'static>(
    console: &Console,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let slot = Arc::clone(&console.heavy)
        .acquire_owned()
        .await
        .map_err(|_| "the console is shutting down".to_owned())?;
    blocking(move || {
        let _slot = slot;
        work()
    })
    .await
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ------------------------------------------------------------ sessions

/// The session cookie's value in `headers`, if any.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
}

impl Console {
    /// The live session of the request, with its cookie's id.
    fn session(&self, headers: &HeaderMap) -> Option<(String, SessionView)> {
        let id = session_cookie(headers)?;
        let view = self.sessions.get(id)?;
        Some((id.to_owned(), view))
    }

    /// The `Set-Cookie` value for session `id` (`None`: clear it).
    fn cookie(&self, id: Option<&str>) -> String {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        match id {
            Some(id) => format!(
                "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path={CONSOLE_PATH}; Max-Age={}{secure}",
                self.sessions.limits().lifetime.as_secs()
            ),
            None => format!(
                "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path={CONSOLE_PATH}; Max-Age=0{secure}"
            ),
        }
    }
}

/// The answer to a request refused on the way to its handler's work
/// (boxed: a response is large).
type Refused = Box<Response>;

/// The signed-in approver, or the answer that sends the browser to log in.
fn signed_in(console: &Console, headers: &HeaderMap) -> Result<SessionView, Refused> {
    console
        .session(headers)
        .map(|(_, view)| view)
        .ok_or_else(|| Box::new(see_other("/console/login")))
}

/// Whether a POST comes from a page of this server: `Origin` present and
/// naming the `Host` the request was sent to with the scheme browsers
/// reach the console by (`https` where cookies are `Secure`: a proxy or
/// TLS in front; `http` on loopback), and no `Sec-Fetch-Site` saying
/// otherwise.
fn same_origin(headers: &HeaderMap, secure: bool) -> Result<(), &'static str> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return Err("a console form must be sent by a browser from this server (no Origin header)");
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let scheme = if secure { "https://" } else { "http://" };
    let authority = origin
        .get(..scheme.len())
        .filter(|s| s.eq_ignore_ascii_case(scheme))
        .and_then(|_| origin.get(scheme.len()..));
    if !authority.is_some_and(|a| !host.is_empty() && a.eq_ignore_ascii_case(host)) {
        return Err(
            "a console form must be sent from this server's own pages (Origin does not match)",
        );
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|s| s.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(
            "a console form must be sent from this server's own pages (cross-site request)",
        );
    }
    Ok(())
}

/// A POST's form fields, after the checks every console POST passes:
/// same origin, a form body within [`MAX_FORM_BYTES`].
fn form_fields(
    console: &Console,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Vec<(String, String)>, Refused> {
    if let Err(message) = same_origin(headers, console.secure_cookie) {
        warn_refused!("console POST refused: {message}");
        return Err(Box::new(error_page(StatusCode::FORBIDDEN, None, message)));
    }
    if body.len() > MAX_FORM_BYTES {
        return Err(Box::new(error_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            &format!("form over {MAX_FORM_BYTES} bytes"),
        )));
    }
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !form_type.is_some_and(|t| t.eq_ignore_ascii_case("application/x-www-form-urlencoded")) {
        return Err(Box::new(error_page(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            "a console form is sent as application/x-www-form-urlencoded",
        )));
    }
    serde_urlencoded::from_bytes(body).map_err(|e| {
        Box::new(error_page(
            StatusCode::BAD_REQUEST,
            None,
            &format!("the form cannot be read: {e}"),
        ))
    })
}

/// A signed-in approver's form: the checks of [`form_fields`], then the
/// session and its CSRF token; the fields without the token, parsed as
/// `T`.
fn session_form<T: serde::de::DeserializeOwned>(
    console: &Console,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(String, SessionView, T), Refused> {
    let fields = form_fields(console, headers, body)?;
    let Some((id, view)) = console.session(headers) else {
        return Err(Box::new(error_page(
            StatusCode::UNAUTHORIZED,
            None,
            "your console session has ended: sign in again",
        )));
    };
    let mut csrf = fields.iter().filter(|(k, _)| k == "csrf");
    let token_ok = match (csrf.next(), csrf.next()) {
        (Some((_, token)), None) => view.csrf_matches(token),
        _ => false,
    };
    if !token_ok {
        warn_refused!(approver = %view.approver, "console POST refused: bad CSRF token");
        return Err(Box::new(error_page(
            StatusCode::FORBIDDEN,
            Some(&view),
            "the form's CSRF token does not match this session: reload the page and try again",
        )));
    }
    let rest: Vec<_> = fields.into_iter().filter(|(k, _)| k != "csrf").collect();
    let encoded = serde_urlencoded::to_string(&rest).unwrap_or_default();
    let parsed = serde_urlencoded::from_str(&encoded).map_err(|e| {
        Box::new(error_page(
            StatusCode::BAD_REQUEST,
            Some(&view),
            &format!("the form cannot be read: {e}"),
        ))
    })?;
    Ok((id, view, parsed))
}

// ------------------------------------------------------------ login

async fn home(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match console.session(&headers) {
        Some(_) => see_other("/console/approvals"),
        None => see_other("/console/login"),
    }
}

async fn login_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if console.session(&headers).is_some() {
        return see_other("/console/approvals");
    }
    html(StatusCode::OK, pages::login(None))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginForm {
    token: String,
}

/// Who a console login token belongs to.
#[derive(Debug, PartialEq, Eq)]
enum TokenOwner {
    /// An approver, by name, and whether they may take over.
    Approver { name: String, operator: bool },
    /// A caller (refused).
    Caller,
    /// Nobody configured.
    Unknown,
}

fn token_owner(host: &Host, callers: &[CallerToken], token: &str) -> TokenOwner {
    let policy = &host.config().policy.approvals;
    if let Some(approver) = policy
        .approvers
        .iter()
        .find_map(|a| policy.authenticate(&a.name, token))
    {
        return TokenOwner::Approver {
            name: approver.name.clone(),
            operator: approver.operator,
        };
    }
    if callers
        .iter()
        .any(|c| airlock_audit::token::matches_sha256(token, &c.token_sha256))
    {
        return TokenOwner::Caller;
    }
    TokenOwner::Unknown
}

async fn login(State(console): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = match form_fields(&console, &headers, &body) {
        Ok(fields) => fields,
        Err(response) => return *response,
    };
    let encoded = serde_urlencoded::to_string(&fields).unwrap_or_default();
    let form: LoginForm = match serde_urlencoded::from_str(&encoded) {
        Ok(form) => form,
        Err(_) => {
            return html(
                StatusCode::BAD_REQUEST,
                pages::login(Some("the login form has one field: token")),
            );
        }
    };
    let token = form.token.trim();
    if token.is_empty() {
        return html(
            StatusCode::BAD_REQUEST,
            pages::login(Some("enter your approver token")),
        );
    }
    let (name, operator) = match token_owner(&console.host, &console.callers, token) {
        TokenOwner::Approver { name, operator } => (name, operator),
        TokenOwner::Caller => {
            warn_refused!("console login refused: a caller's token");
            return html(
                StatusCode::FORBIDDEN,
                pages::login(Some(
                    "this is a caller's token: the console takes approvers' tokens only (approvals.approvers), never a caller's",
                )),
            );
        }
        TokenOwner::Unknown => {
            warn_refused!("console login refused: unknown token");
            return html(
                StatusCode::UNAUTHORIZED,
                pages::login(Some("unknown token: sign in with an approver's token")),
            );
        }
    };
    // A new session replaces the one this browser had (never reused: no
    // session fixation).
    if let Some(old) = session_cookie(&headers) {
        console.sessions.remove(old);
    }
    let (id, _) = match console.sessions.create(&name, token, operator) {
        Ok(created) => created,
        Err(_) => {
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "no randomness available for a session id",
            );
        }
    };
    tracing::info!(approver = %name, operator, "console login");
    let mut response = see_other("/console/approvals");
    if let Ok(value) = HeaderValue::from_str(&console.cookie(Some(&id))) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    let (id, _, Empty {}) = match session_form(&console, &headers, &body) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    console.sessions.remove(&id);
    let mut response = see_other("/console/login");
    if let Ok(value) = HeaderValue::from_str(&console.cookie(None)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

// ------------------------------------------------------------ approvals

#[derive(Debug, Default, Deserialize)]
struct ApprovalsQuery {
    /// A state, or `all`.
    state: Option<String>,
    page: Option<usize>,
}

async fn approvals(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    query: Result<Query<ApprovalsQuery>, QueryRejection>,
) -> Response {
    let who = match signed_in(&console, &headers) {
        Ok(who) => who,
        Err(response) => return *response,
    };
    let Query(query) = match query {
        Ok(query) => query,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, Some(&who), &e.body_text()),
    };
    let state_name = query.state.unwrap_or_else(|| "pending".to_owned());
    let state = match state_name.as_str() {
        "all" => None,
        name => match ApprovalState::parse(name) {
            Some(state) => Some(state),
            None => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    Some(&who),
                    &format!("no approval state `{name}`"),
                );
            }
        },
    };
    let page = query.page.unwrap_or(0);
    let host = Arc::clone(&console.host);
    let read = move || host.approvals(state).map_err(|e| e.to_string());
    // Pending requests are few (each waits on a caller, and they expire);
    // decided ones pile up for the ledger's retention, and `all` reads
    // them all: a heavy read, bounded like the others.
    let listed = if state == Some(ApprovalState::Pending) {
        blocking(read).await
    } else {
        heavy(&console, read).await
    };
    match listed {
        Ok(list) => html(
            StatusCode::OK,
            pages::approvals(&who, &list, &state_name, page, now_ms()),
        ),
        Err(message) => error_page(StatusCode::INTERNAL_SERVER_ERROR, Some(&who), &message),
    }
}

async fn approval(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let who = match signed_in(&console, &headers) {
        Ok(who) => who,
        Err(response) => return *response,
    };
    show_approval(&console, &who, &id, StatusCode::OK, None).await
}

async fn show_approval(
    console: &Console,
    who: &SessionView,
    id: &str,
    status: StatusCode,
    notice: Option<&str>,
) -> Response {
    let host = Arc::clone(&console.host);
    let owned = id.to_owned();
    match blocking(move || host.approval(&owned).map_err(|e| e.to_string())).await {
        Ok(Some(approval)) => html(status, pages::approval(who, &approval, notice, now_ms())),
        Ok(None) => error_page(
            StatusCode::NOT_FOUND,
            Some(who),
            &format!("no approval {id}"),
        ),
        Err(message) => error_page(StatusCode::INTERNAL_SERVER_ERROR, Some(who), &message),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DecisionKind {
    Approve,
    Reject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionForm {
    decision: DecisionKind,
    #[serde(default)]
    reason: String,
    /// `acknowledged`: the approver approves arguments not shown whole
    /// ([`airlock_host::unseen_arguments`]).
    #[serde(default)]
    unseen: Option<String>,
}

async fn decide(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (_, who, form) = match session_form::<DecisionForm>(&console, &headers, &body) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    if form.reason.len() > MAX_REASON_LEN {
        return show_approval(
            &console,
            &who,
            &id,
            StatusCode::BAD_REQUEST,
            Some(&format!("a reason is at most {MAX_REASON_LEN} bytes")),
        )
        .await;
    }
    let reason = Some(form.reason.trim()).filter(|r| !r.is_empty());
    let verdict = Verdict::from_answers(
        matches!(form.decision, DecisionKind::Approve),
        form.unseen.as_deref() == Some("acknowledged"),
    );
    match console
        .host
        .decide(&id, &who.approver, &who.token, verdict, reason)
        .await
    {
        Ok(_) => {
            tracing::info!(approver = %who.approver, approval = %id, ?verdict, "console decision");
            see_other(&format!("/console/approvals/{}", pages::segment(&id)))
        }
        Err(airlock_host::Error::UnseenArguments { hidden, .. }) => {
            show_approval(
                &console,
                &who,
                &id,
                StatusCode::BAD_REQUEST,
                Some(&format!(
                    "not approved: {hidden}, so the page cannot show what the tool would receive; tick \"I approve without seeing every value\" to approve anyway"
                )),
            )
            .await
        }
        Err(error @ airlock_host::Error::DecisionRefused { .. }) => {
            show_approval(
                &console,
                &who,
                &id,
                StatusCode::CONFLICT,
                Some(&error.to_string()),
            )
            .await
        }
        Err(error) => error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(&who),
            &error.to_string(),
        ),
    }
}

// ------------------------------------------------------------ audit

/// The audit page's filters, as the form and its links carry them.
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
pub(crate) struct AuditFilters {
    #[serde(default)]
    pub(crate) plugin: String,
    #[serde(default)]
    pub(crate) tool: String,
    #[serde(default)]
    pub(crate) outcome: String,
    #[serde(default)]
    pub(crate) principal: String,
    #[serde(default)]
    pub(crate) event: String,
    #[serde(default)]
    pub(crate) page: usize,
}

impl AuditFilters {
    fn filter(&self) -> Result<Filter, String> {
        let field = |name: &str, value: &str| -> Result<Option<String>, String> {
            let value = value.trim();
            if value.len() > MAX_FILTER_LEN {
                return Err(format!("the {name} filter is over {MAX_FILTER_LEN} bytes"));
            }
            Ok((!value.is_empty()).then(|| value.to_owned()))
        };
        let event = match field("event", &self.event)? {
            None => None,
            Some(name) => Some(
                serde_json::from_value::<Event>(serde_json::Value::String(name.clone()))
                    .map_err(|_| format!("no audit event `{name}`"))?,
            ),
        };
        if self.page >= MAX_AUDIT_PAGES {
            return Err(format!(
                "the console pages back {MAX_AUDIT_PAGES} pages; narrow the filters to reach older records"
            ));
        }
        Ok(Filter {
            plugin: field("plugin", &self.plugin)?,
            tool: field("tool", &self.tool)?,
            principal: field("principal", &self.principal)?,
            outcome: field("outcome", &self.outcome)?,
            event,
            ..Filter::default()
        })
    }
}

async fn audit(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    query: Result<Query<AuditFilters>, QueryRejection>,
) -> Response {
    let who = match signed_in(&console, &headers) {
        Ok(who) => who,
        Err(response) => return *response,
    };
    let Query(filters) = match query {
        Ok(query) => query,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, Some(&who), &e.body_text()),
    };
    let filter = match filters.filter() {
        Ok(filter) => filter,
        Err(message) => return error_page(StatusCode::BAD_REQUEST, Some(&who), &message),
    };
    let host = Arc::clone(&console.host);
    let limit = (filters.page + 1) * PAGE_SIZE + 1;
    let read = heavy(&console, move || {
        // Every chain of the store (each host sharing a database keeps its
        // own), merged by time, newest first; one that cannot be read is
        // named on the page, not the end of it.
        let found = host
            .audit()
            .query_every_chain(&filter, limit)
            .map_err(|e| e.to_string())?;
        let mut records = found.records;
        records.reverse();
        Ok((records, unreadable(found.unreadable)))
    })
    .await;
    match read {
        Ok((records, unreadable)) => {
            let more = records.len() == limit;
            let shown: Vec<_> = records
                .into_iter()
                .skip(filters.page * PAGE_SIZE)
                .take(PAGE_SIZE)
                .collect();
            html(
                StatusCode::OK,
                pages::audit(
                    &who,
                    &filters,
                    console.host.audit().origin(),
                    &shown,
                    &unreadable,
                    more && filters.page + 1 < MAX_AUDIT_PAGES,
                ),
            )
        }
        Err(message) => error_page(StatusCode::INTERNAL_SERVER_ERROR, Some(&who), &message),
    }
}

/// The chains a query could not read, and why, for the page.
fn unreadable(chains: Vec<(String, airlock_host::audit_log::Error)>) -> Vec<(String, String)> {
    chains
        .into_iter()
        .map(|(origin, e)| (origin, e.to_string()))
        .collect()
}

/// Most records one call's story shows.
const MAX_STORY_RECORDS: usize = 1000;
/// Most approvals whose records one call's story takes in.
const MAX_STORY_APPROVALS: usize = 2;
/// Most records of the calls made under each of those approvals it shows
/// (the newest); the approval's own records (request, decision, expiry)
/// are shown whatever their number.
const MAX_STORY_APPROVAL_CALLS: usize = 100;
/// Most records of each kind of an approval's own (request, decision,
/// expiry) a story shows: one of each is written, more only by a
/// recovery that wrote one again.
const MAX_STORY_APPROVAL_OWN: usize = 4;

/// The records of call `call_id` and of the approvals it names, oldest
/// first: a call made again under an approval is another call, and its
/// story would otherwise end at "approval … does not allow this call"
/// without the request and decision it speaks of (nor the first call,
/// which asked). Each approval's records carry every call made under it.
/// Every chain of the store is read: hosts sharing a database each keep
/// their own, and an approval asked for on one host may be decided on
/// another's console and used on a third.
fn story_records(host: &Host, call_id: String) -> Result<Story, String> {
    let audit = host.audit();
    let mut unreadable_chains = Vec::new();
    let mut query = |filter: Filter, limit| {
        let found = audit
            .query_every_chain(&filter, limit)
            .map_err(|e| e.to_string())?;
        for (origin, why) in unreadable(found.unreadable) {
            if !unreadable_chains.iter().any(|(o, _)| *o == origin) {
                unreadable_chains.push((origin, why));
            }
        }
        Ok::<_, String>(found.records)
    };
    // The call's own records are all kept; of each approval's, its own
    // and the newest of the calls made under it, so many calls made under
    // one approval never push out the call's records nor the approval's
    // request and decision.
    let mut records = query(
        Filter {
            call_id: Some(call_id),
            ..Filter::default()
        },
        MAX_STORY_RECORDS,
    )?;
    let mut approvals: Vec<String> = Vec::new();
    for chained in &records {
        if let Some(id) = &chained.record.entry.approval_id
            && !approvals.contains(id)
            && approvals.len() < MAX_STORY_APPROVALS
        {
            approvals.push(id.clone());
        }
    }
    // An approval's own records (request, decision, expiry) are a few;
    // each is read by itself, so no number of calls made under it pushes
    // them out. The calls: the newest.
    const OWN: [Event; 3] = [
        Event::ApprovalRequested,
        Event::ApprovalDecided,
        Event::ApprovalExpired,
    ];
    for approval_id in approvals {
        for event in OWN {
            records.extend(query(
                Filter {
                    approval_id: Some(approval_id.clone()),
                    event: Some(event),
                    ..Filter::default()
                },
                MAX_STORY_APPROVAL_OWN,
            )?);
        }
        let under = query(
            Filter {
                approval_id: Some(approval_id),
                ..Filter::default()
            },
            MAX_STORY_APPROVAL_CALLS + MAX_STORY_APPROVAL_OWN * OWN.len(),
        )?;
        records.extend(
            under
                .into_iter()
                .rev()
                .filter(|chained| !OWN.contains(&chained.record.entry.event))
                .take(MAX_STORY_APPROVAL_CALLS),
        );
    }
    Ok(Story {
        records: in_story_order(records),
        unreadable: unreadable_chains,
    })
}

/// A call's records, and the chains that could not be read for them.
struct Story {
    records: Vec<ChainRecord>,
    unreadable: Vec<(String, String)>,
}

/// `records` without repeats, each chain in its own order (its sequence
/// numbers, whatever the clock said) and the chains merged by time.
fn in_story_order(mut records: Vec<ChainRecord>) -> Vec<ChainRecord> {
    records.sort_by(|a, b| (&a.origin, a.record.seq).cmp(&(&b.origin, b.record.seq)));
    records.dedup_by(|a, b| a.origin == b.origin && a.record.seq == b.record.seq);
    let mut chains: Vec<std::collections::VecDeque<ChainRecord>> = Vec::new();
    for chained in records {
        match chains.last_mut() {
            Some(chain)
                if chain
                    .back()
                    .is_some_and(|last| last.origin == chained.origin) =>
            {
                chain.push_back(chained);
            }
            _ => chains.push(std::collections::VecDeque::from([chained])),
        }
    }
    let mut out = Vec::new();
    while let Some(next) = chains
        .iter_mut()
        .filter(|chain| !chain.is_empty())
        .min_by_key(|chain| chain.front().map(|r| (r.record.time_ms, r.origin.clone())))
    {
        out.extend(next.pop_front());
    }
    out
}

async fn call_story(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(call_id): Path<String>,
) -> Response {
    let who = match signed_in(&console, &headers) {
        Ok(who) => who,
        Err(response) => return *response,
    };
    if call_id.len() > MAX_FILTER_LEN {
        return error_page(StatusCode::BAD_REQUEST, Some(&who), "call id too long");
    }
    let host = Arc::clone(&console.host);
    let id = call_id.clone();
    let read = heavy(&console, move || story_records(&host, id)).await;
    match read {
        Ok(story) if story.records.is_empty() && story.unreadable.is_empty() => error_page(
            StatusCode::NOT_FOUND,
            Some(&who),
            &format!("no audit record of call {call_id}"),
        ),
        Ok(story) => html(
            StatusCode::OK,
            pages::call_story(
                &who,
                &call_id,
                console.host.audit().origin(),
                &story.records,
                &story.unreadable,
            ),
        ),
        Err(message) => error_page(StatusCode::INTERNAL_SERVER_ERROR, Some(&who), &message),
    }
}

async fn verify(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let who = match signed_in(&console, &headers) {
        Ok(who) => who,
        Err(response) => return *response,
    };
    let host = Arc::clone(&console.host);
    let read = heavy(&console, move || {
        // Every chain of the store: hosts sharing a database each keep
        // their own, against the key each is known by.
        let log = host.audit();
        let chains = log.verify_all(&[]).map_err(|e| e.to_string())?;
        Ok(chains
            .into_iter()
            .map(|chain| pages::ChainVerdict {
                own: chain.origin == log.origin(),
                verdict: crate::control::Verdict::from(&chain.result),
                public_key: chain.public_key,
                key_source: chain.key_source,
                origin: chain.origin,
            })
            .collect::<Vec<_>>())
    })
    .await;
    match read {
        Ok(chains) => html(StatusCode::OK, pages::verify(&who, &chains)),
        Err(message) => error_page(StatusCode::INTERNAL_SERVER_ERROR, Some(&who), &message),
    }
}

// ------------------------------------------------------------ plugins

async fn plugins(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let who = match signed_in(&console, &headers) {
        Ok(who) => who,
        Err(response) => return *response,
    };
    let host = Arc::clone(&console.host);
    let read = blocking(move || {
        // Shown on the page when it cannot be read, not failing it: the
        // loaded plugins and rollouts are what an operator needs then.
        let installed = host.installed_listing(None).map_err(|e| e.to_string());
        let rollouts = host.rollout_listing().map_err(|e| e.to_string())?;
        Ok((host.plugins(), installed, rollouts))
    })
    .await;
    match read {
        Ok((loaded, installed, rollouts)) => html(
            StatusCode::OK,
            pages::plugins(
                &who,
                &loaded,
                installed.as_ref().map_err(String::as_str),
                &rollouts,
            ),
        ),
        Err(message) => error_page(StatusCode::INTERNAL_SERVER_ERROR, Some(&who), &message),
    }
}

async fn plugin(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let who = match signed_in(&console, &headers) {
        Ok(who) => who,
        Err(response) => return *response,
    };
    let Some(loaded) = console.host.plugin(&name) else {
        return error_page(
            StatusCode::NOT_FOUND,
            Some(&who),
            &format!("no plugin `{name}` is loaded"),
        );
    };
    // Off the async workers: inspecting reads the plugin's files, may
    // compile its component (without a cache) and runs it to list its
    // tools — seconds that would stall every request sharing the worker.
    let host = Arc::clone(&console.host);
    let dir = loaded.dir().to_owned();
    let runtime = tokio::runtime::Handle::current();
    let inspected = heavy(&console, move || {
        let report = runtime
            .block_on(host.inspect(&dir))
            .map_err(|e| e.to_string())?;
        // What the directory's manifest is now (the report describes it).
        let manifest = std::fs::read(dir.join(airlock_host::MANIFEST_FILE))
            .map(|bytes| airlock_host::audit_log::sha256_hex(&bytes))
            .ok();
        Ok((report, manifest))
    })
    .await;
    // The directory may hold another version than the loaded one (edited,
    // or replaced, since it loaded): its findings are not the loaded one's.
    let moved = inspected.as_ref().is_ok_and(|(report, manifest)| {
        report.sha256 != loaded.digest() || manifest.as_deref() != Some(loaded.manifest_digest())
    });
    let report = inspected.map(|(report, _)| report);
    let host = Arc::clone(&console.host);
    let plugin_name = name.clone();
    let versions = blocking(move || {
        host.installed_listing(Some(&plugin_name))
            .map_err(|e| e.to_string())
    })
    .await;
    html(
        StatusCode::OK,
        pages::plugin(
            &who,
            &loaded,
            report.as_ref(),
            moved,
            versions.as_ref().map_err(String::as_str),
        ),
    )
}

// ------------------------------------------------------------ mode and alerts

async fn mode(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let who = match signed_in(&console, &headers) {
        Ok(who) => who,
        Err(response) => return *response,
    };
    let host = Arc::clone(&console.host);
    match blocking(move || host.mode().map_err(|e| e.to_string())).await {
        Ok(mode) => html(StatusCode::OK, pages::mode(&who, mode.as_ref())),
        Err(message) => error_page(StatusCode::INTERNAL_SERVER_ERROR, Some(&who), &message),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ModeChoice {
    Normal,
    ReadOnly,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeForm {
    mode: ModeChoice,
    #[serde(default)]
    reason: String,
}

async fn set_mode(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, who, form) = match session_form::<ModeForm>(&console, &headers, &body) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    if let Err(response) = operator(&who) {
        return *response;
    }
    if form.reason.len() > MAX_REASON_LEN {
        return error_page(
            StatusCode::BAD_REQUEST,
            Some(&who),
            &format!("a reason is at most {MAX_REASON_LEN} bytes"),
        );
    }
    let read_only = matches!(form.mode, ModeChoice::ReadOnly);
    let reason = Some(form.reason.trim()).filter(|r| !r.is_empty());
    match console
        .host
        .set_mode(read_only, &who.approver, reason)
        .await
    {
        Ok(_) => {
            tracing::info!(approver = %who.approver, read_only, "console mode switch");
            see_other("/console/mode")
        }
        Err(error) => error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(&who),
            &error.to_string(),
        ),
    }
}

async fn alerts(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let who = match signed_in(&console, &headers) {
        Ok(who) => who,
        Err(response) => return *response,
    };
    let host = Arc::clone(&console.host);
    match blocking(move || {
        let pauses = host.pauses().map_err(|e| e.to_string())?;
        Ok((host.alerts(), pauses))
    })
    .await
    {
        Ok((alerts, pauses)) => html(StatusCode::OK, pages::alerts(&who, &alerts, &pauses)),
        Err(message) => error_page(StatusCode::INTERNAL_SERVER_ERROR, Some(&who), &message),
    }
}

/// A takeover (mode, pause, resume, rollback) is an operator's: an
/// approver without `operator = true` gets `403` and nothing changes.
fn operator(who: &SessionView) -> Result<(), Refused> {
    if who.operator {
        return Ok(());
    }
    warn_refused!(approver = %who.approver, "console takeover refused: not an operator");
    Err(Box::new(error_page(
        StatusCode::FORBIDDEN,
        Some(who),
        "takeovers (mode, pause, resume, roll back) are for operators: this approver's entry in [[policy.approvals.approvers]] does not say operator = true",
    )))
}

/// A host error from an operator's action as a page: `400` for what the
/// request got wrong (a malformed target), `409` for what the host
/// refuses in this state (nothing to roll back), `500` for the host's own
/// failures.
fn action_refused(who: &SessionView, error: &airlock_host::Error) -> Response {
    let status = if matches!(
        error,
        airlock_host::Error::Config { .. }
            | airlock_host::Error::Release(airlock_host::ReleaseError::InvalidPluginName { .. })
    ) {
        StatusCode::BAD_REQUEST
    } else {
        match error.class() {
            airlock_host::ErrorClass::Host => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::CONFLICT,
        }
    };
    error_page(status, Some(who), &error.to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackForm {
    #[serde(default)]
    reason: String,
    /// The id of the rollout change the page showed: the rollback is
    /// refused if the rollout changed since (a second click, a page left
    /// open).
    #[serde(default)]
    change: Option<String>,
}

async fn rollback(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let (_, who, form) = match session_form::<RollbackForm>(&console, &headers, &body) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    if let Err(response) = operator(&who) {
        return *response;
    }
    if form.reason.len() > MAX_REASON_LEN {
        return error_page(
            StatusCode::BAD_REQUEST,
            Some(&who),
            &format!("a reason is at most {MAX_REASON_LEN} bytes"),
        );
    }
    let reason = Some(form.reason.trim()).filter(|r| !r.is_empty());
    let done = match form.change.as_deref() {
        Some(seen) => {
            console
                .host
                .rollback_if_unchanged(&name, &who.approver, reason, seen)
                .await
        }
        None => console.host.rollback(&name, &who.approver, reason).await,
    };
    match done {
        Ok(_) => {
            tracing::info!(approver = %who.approver, plugin = %name, "console rollback");
            see_other("/console/plugins")
        }
        Err(error) => action_refused(&who, &error),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseForm {
    target: String,
    #[serde(default)]
    reason: String,
    /// The checkbox "even if this host does not serve it" (`on` when
    /// ticked).
    #[serde(default)]
    force: Option<String>,
}

async fn pause(State(console): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    pause_or_resume(&console, &headers, &body, true).await
}

async fn resume(State(console): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    pause_or_resume(&console, &headers, &body, false).await
}

async fn pause_or_resume(
    console: &Console,
    headers: &HeaderMap,
    body: &Bytes,
    pause: bool,
) -> Response {
    let (_, who, form) = match session_form::<PauseForm>(console, headers, body) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    if let Err(response) = operator(&who) {
        return *response;
    }
    if form.reason.len() > MAX_REASON_LEN {
        return error_page(
            StatusCode::BAD_REQUEST,
            Some(&who),
            &format!("a reason is at most {MAX_REASON_LEN} bytes"),
        );
    }
    let target = form.target.trim();
    let reason = Some(form.reason.trim()).filter(|r| !r.is_empty());
    let done = if pause {
        if form.force.is_none()
            && let Err(error) = console.host.check_pause_target(target).await
        {
            return action_refused(&who, &error);
        }
        console
            .host
            .pause(target, &who.approver, reason)
            .await
            .map(|_| ())
    } else {
        console
            .host
            .resume(target, &who.approver, reason)
            .await
            .map(|_| ())
    };
    match done {
        Ok(()) => {
            tracing::info!(approver = %who.approver, %target, pause, "console takeover");
            see_other("/console/alerts")
        }
        Err(error) => action_refused(&who, &error),
    }
}

#[cfg(test)]
mod tests;
