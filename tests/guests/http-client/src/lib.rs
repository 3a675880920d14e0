//! A raw `wasi:http` client for the `http` capability's adversarial tests:
//! it sends exactly the method, scheme, authority, path, headers and body
//! it is given, as many times as asked, reads every response body to the
//! end (no limit of its own), and reports each outcome — so the tests see
//! what the *host* allows, refuses and cuts off.

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
    /// The method (default `GET`), sent as-is.
    #[serde(default)]
    pub method: Option<String>,
    /// Headers, each `[name, value]`, sent as-is.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// A body, written after the request is handed to the host.
    #[serde(default)]
    pub body: Option<String>,
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
    /// `body error: <message>`; after `; `, what became of the request
    /// body when there was one (`body sent`, `body not sent: <why>`).
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
    let path = args.path.clone().unwrap_or_else(|| "/".to_owned());
    let outcomes: Vec<String> = (0..args.times.unwrap_or(1))
        .map(|_| net::send(&args, &path))
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
    use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    use wasi::io::streams::StreamError;

    pub(super) fn send(args: &super::RequestArgs, path: &str) -> String {
        let headers = Fields::new();
        for (name, value) in &args.headers {
            if let Err(e) = headers.append(name, value.as_bytes()) {
                return format!("invalid header {name}: {e:?}");
            }
        }
        let request = OutgoingRequest::new(headers);
        let scheme = match args.scheme.as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => Scheme::Other(other.to_owned()),
        };
        let method = match args.method.as_deref().unwrap_or("GET") {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_owned()),
        };
        if request.set_method(&method).is_err()
            || request.set_scheme(Some(&scheme)).is_err()
            || request.set_authority(Some(&args.authority)).is_err()
            || request.set_path_with_query(Some(path)).is_err()
        {
            return "invalid request".to_owned();
        }
        // Taken only to write one: a request whose body is never taken is
        // sent without one.
        let outgoing = match &args.body {
            Some(_) => match request.body() {
                Ok(outgoing) => Some(outgoing),
                Err(()) => return "no request body".to_owned(),
            },
            None => None,
        };
        let pending = match outgoing_handler::handle(request, None) {
            Ok(pending) => pending,
            Err(code) => return format!("error: {code:?}"),
        };
        let sent = outgoing
            .zip(args.body.as_deref())
            .map(|(outgoing, body)| write_body(outgoing, body));
        pending.subscribe().block();
        let outcome = receive(&pending);
        match sent {
            Some(sent) => format!("{outcome}; {sent}"),
            None => outcome,
        }
    }

    /// Write `body` and finish it: `body sent`, or why not.
    fn write_body(outgoing: OutgoingBody, body: &str) -> String {
        let Ok(stream) = outgoing.write() else {
            return "body not sent: no stream".to_owned();
        };
        let written = body
            .as_bytes()
            .chunks(4096)
            .try_for_each(|chunk| stream.blocking_write_and_flush(chunk));
        drop(stream);
        let finished = OutgoingBody::finish(outgoing, None);
        match (written, finished) {
            (Ok(()), Ok(())) => "body sent".to_owned(),
            (Err(e), _) => format!("body not sent: {e:?}"),
            (_, Err(code)) => format!("body not sent: {code:?}"),
        }
    }

    fn receive(pending: &wasi::http::types::FutureIncomingResponse) -> String {
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
    pub(super) fn send(_: &super::RequestArgs, _: &str) -> String {
        "wasi:http is only available in a wasm32 component".to_owned()
    }
}

plugin! {
    "request" => request: "Send requests exactly as given and report each outcome.",
}
