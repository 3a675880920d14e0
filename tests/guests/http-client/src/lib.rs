//! A raw `wasi:http` client for the `http` capability's adversarial tests:
//! it sends exactly the scheme, authority and path it is given, as many
//! times as asked, reads every response body to the end (no limit of its
//! own), and reports each outcome — so the tests see what the *host*
//! allows, refuses and cuts off.

use airlock_sdk::{Context, JsonSchema, ToolError, plugin, schemars};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
pub struct RequestArgs {
    /// `http`, `https` or anything else (sent as-is).
    pub scheme: String,
    /// `host[:port]`, sent as-is.
    pub authority: String,
    /// Path and query (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// How many times to send it (default 1).
    #[serde(default)]
    pub times: Option<u32>,
    /// Log these lines first (to imitate or crowd out the host's notes).
    #[serde(default)]
    pub log: Vec<String>,
    /// Log the first of `log` this many more times.
    #[serde(default)]
    pub log_repeat: u32,
    /// After the requests: `fail` (a tool error) or `trap` (a panic)
    /// instead of returning the outcomes.
    #[serde(default)]
    pub then: Option<String>,
}

#[derive(Serialize, JsonSchema)]
pub struct Outcomes {
    /// One line per request: `status N, B bytes`, `error: <ErrorCode>` or
    /// `body error: <message>`.
    pub outcomes: Vec<String>,
}

pub fn request(args: RequestArgs, _: &Context) -> Result<Outcomes, ToolError> {
    for line in &args.log {
        airlock_sdk::log::warn(line);
    }
    if let Some(first) = args.log.first() {
        for _ in 0..args.log_repeat {
            airlock_sdk::log::warn(first);
        }
    }
    let path = args.path.unwrap_or_else(|| "/".to_owned());
    let outcomes: Vec<String> = (0..args.times.unwrap_or(1))
        .map(|_| net::send(&args.scheme, &args.authority, &path))
        .collect();
    match args.then.as_deref() {
        Some("fail") => Err(ToolError::failed(outcomes.join("; "))),
        Some("trap") => panic!("trapping after {} requests", outcomes.len()),
        _ => Ok(Outcomes { outcomes }),
    }
}

#[cfg(target_arch = "wasm32")]
mod net {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, Method, OutgoingRequest, Scheme};
    use wasi::io::streams::StreamError;

    pub(super) fn send(scheme: &str, authority: &str, path: &str) -> String {
        let request = OutgoingRequest::new(Fields::new());
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => Scheme::Other(other.to_owned()),
        };
        if request.set_method(&Method::Get).is_err()
            || request.set_scheme(Some(&scheme)).is_err()
            || request.set_authority(Some(authority)).is_err()
            || request.set_path_with_query(Some(path)).is_err()
        {
            return "invalid request".to_owned();
        }
        let pending = match outgoing_handler::handle(request, None) {
            Ok(pending) => pending,
            Err(code) => return format!("error: {code:?}"),
        };
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return format!("error: {code:?}"),
            Some(Err(())) | None => return "no response".to_owned(),
        };
        let status = response.status();
        let Ok(body) = response.consume() else {
            return "no body".to_owned();
        };
        let Ok(stream) = body.stream() else {
            return "no body stream".to_owned();
        };
        let mut bytes: u64 = 0;
        let outcome = loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes += chunk.len() as u64,
                Err(StreamError::Closed) => break format!("status {status}, {bytes} bytes"),
                Err(StreamError::LastOperationFailed(e)) => {
                    break format!("body error after {bytes} bytes: {}", e.to_debug_string());
                }
            }
        };
        drop(stream);
        drop(body);
        outcome
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod net {
    pub(super) fn send(_: &str, _: &str, _: &str) -> String {
        "wasi:http is only available in a wasm32 component".to_owned()
    }
}

plugin! {
    "request" => request: "Send GET requests exactly as given and report each outcome.",
}
