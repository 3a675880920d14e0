//! The `fetch` plugin: one tool, `get`, that sends an HTTP GET through
//! `wasi:http/outgoing-handler` and returns the status, a few response
//! headers and the body as text, truncated to `max_bytes`.
//!
//! The guest has no network of its own: the host sends the request, and only
//! to the origins the manifest lists (and the operator allows), at public
//! addresses unless the operator says otherwise. When the host refuses, the
//! tool reports it as `denied` with the `wasi:http` error code.

use std::collections::BTreeMap;

use airlock_sdk::{Context, JsonSchema, ToolError, plugin, schemars};
use serde::{Deserialize, Serialize};

/// Body bytes returned when the caller does not say.
const DEFAULT_MAX_BYTES: u32 = 64 * 1024;
/// Most body bytes one call returns.
const MAX_BYTES: u32 = 1024 * 1024;
/// Longest URL accepted.
const MAX_URL_BYTES: usize = 8 * 1024;
/// Response headers worth returning; the rest are dropped.
const KEPT_HEADERS: &[&str] = &[
    "cache-control",
    "content-length",
    "content-type",
    "etag",
    "last-modified",
    "location",
];

/// Arguments of `get`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetArgs {
    /// An absolute `http://` or `https://` URL whose origin the plugin is
    /// granted.
    #[schemars(length(min = 1, max = 8192))]
    pub url: String,
    /// Return at most this many body bytes (default 65536, at most 1048576).
    /// The host may cap the body lower.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1_048_576))]
    pub max_bytes: Option<u32>,
}

/// Result of `get`.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Fetched {
    /// HTTP status code.
    pub status: u16,
    /// Selected response headers (lowercase names): cache-control,
    /// content-length, content-type, etag, last-modified, location.
    pub headers: BTreeMap<String, String>,
    /// The body, decoded as UTF-8 (invalid sequences replaced), truncated to
    /// `max_bytes`.
    pub body: String,
    /// Body bytes returned.
    pub bytes: u64,
    /// Whether the body was longer than `max_bytes` (or could not be read
    /// past it).
    pub truncated: bool,
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlScheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

/// A URL split the way `wasi:http` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Scheme.
    pub scheme: UrlScheme,
    /// `host[:port]`.
    pub authority: String,
    /// Path and query, starting with `/` (the fragment is dropped).
    pub path_with_query: String,
}

/// Split an absolute http(s) URL. The host checks the origin; this only
/// makes sure the request is well formed and says what is wrong otherwise.
pub fn parse_url(url: &str) -> Result<Target, ToolError> {
    if url.len() > MAX_URL_BYTES {
        return Err(ToolError::invalid_input(format!(
            "the URL is longer than {MAX_URL_BYTES} bytes"
        )));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ToolError::invalid_input(
            "the URL contains whitespace or control characters",
        ));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(ToolError::invalid_input(format!(
            "`{url}` is not an absolute URL; write for example https://example.com/path"
        )));
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => UrlScheme::Http,
        "https" => UrlScheme::Https,
        other => {
            return Err(ToolError::invalid_input(format!(
                "scheme `{other}` is not supported; use http or https"
            )));
        }
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() {
        return Err(ToolError::invalid_input(format!("`{url}` names no host")));
    }
    if authority.contains('@') {
        return Err(ToolError::invalid_input(
            "credentials in the URL (`user@host`) are not supported",
        ));
    }
    let path_with_query = match path {
        "" => "/".to_owned(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    Ok(Target {
        scheme,
        authority: authority.to_owned(),
        path_with_query,
    })
}

/// Keep the headers in [`KEPT_HEADERS`], values decoded lossily; repeated
/// headers are joined with `, `.
pub fn select_headers(entries: &[(String, Vec<u8>)]) -> BTreeMap<String, String> {
    let mut kept: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in entries {
        let name = name.to_ascii_lowercase();
        if !KEPT_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let value = String::from_utf8_lossy(value).into_owned();
        kept.entry(name)
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    kept
}

/// Send `GET url` and read at most `max_bytes` of the body.
pub fn get(args: GetArgs, _: &Context) -> Result<Fetched, ToolError> {
    let target = parse_url(&args.url)?;
    let max_bytes = args.max_bytes.unwrap_or(DEFAULT_MAX_BYTES).min(MAX_BYTES);
    net::get(&target, u64::from(max_bytes))
}

#[cfg(target_arch = "wasm32")]
mod net {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{ErrorCode, Fields, Method, OutgoingRequest, Scheme};
    use wasi::io::streams::StreamError;

    use super::{Fetched, Target, ToolError, UrlScheme, select_headers};

    /// Largest read asked of the body stream at once.
    const CHUNK: u64 = 64 * 1024;

    /// A tool error for a `wasi:http` error code: refusals by the host are
    /// `denied`, everything else `failed`.
    fn http_error(what: &str, code: &ErrorCode) -> ToolError {
        match code {
            ErrorCode::HttpRequestDenied => ToolError::denied(format!(
                "{what}: the host refused the request: its origin is not granted (HTTP-request-denied)"
            )),
            ErrorCode::DestinationIpProhibited => ToolError::denied(format!(
                "{what}: the host refused the destination: its address is not public and not allowed (destination-IP-prohibited)"
            )),
            ErrorCode::ConnectionLimitReached => ToolError::denied(format!(
                "{what}: the host allows no more requests in this call (connection-limit-reached)"
            )),
            other => ToolError::failed(format!("{what}: {other:?}")),
        }
    }

    pub(super) fn get(target: &Target, max_bytes: u64) -> Result<Fetched, ToolError> {
        let headers = Fields::new();
        for (name, value) in [
            ("user-agent", &b"airlock-fetch/0.1"[..]),
            ("accept", &b"*/*"[..]),
        ] {
            headers
                .append(name, value)
                .map_err(|e| ToolError::failed(format!("setting {name}: {e:?}")))?;
        }
        let request = OutgoingRequest::new(headers);
        let scheme = match target.scheme {
            UrlScheme::Http => Scheme::Http,
            UrlScheme::Https => Scheme::Https,
        };
        let invalid = |what: &str| ToolError::invalid_input(format!("invalid {what} in the URL"));
        request
            .set_method(&Method::Get)
            .map_err(|()| invalid("method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("scheme"))?;
        request
            .set_authority(Some(&target.authority))
            .map_err(|()| invalid("host"))?;
        request
            .set_path_with_query(Some(&target.path_with_query))
            .map_err(|()| invalid("path"))?;

        let pending =
            outgoing_handler::handle(request, None).map_err(|e| http_error("sending", &e))?;
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(http_error("sending", &code)),
            Some(Err(())) | None => {
                return Err(ToolError::failed("the response was not available"));
            }
        };
        let status = response.status();
        let headers = select_headers(&response.headers().entries());

        let body = response
            .consume()
            .map_err(|()| ToolError::failed("the response body was already taken"))?;
        let stream = body
            .stream()
            .map_err(|()| ToolError::failed("the response body stream was already taken"))?;
        let mut bytes = Vec::new();
        let mut truncated = false;
        loop {
            let wanted = (max_bytes + 1 - bytes.len() as u64).min(CHUNK);
            match stream.blocking_read(wanted) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                // The caller has all it asked for; whatever stops the body
                // after that (the host's size cap, a reset) only means there
                // was more.
                Err(StreamError::LastOperationFailed(_)) if bytes.len() as u64 >= max_bytes => {
                    truncated = true;
                    break;
                }
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(match wasi::http::types::http_error_code(&e) {
                        Some(code) => http_error("reading the body", &code),
                        None => {
                            ToolError::failed(format!("reading the body: {}", e.to_debug_string()))
                        }
                    });
                }
            }
            if bytes.len() as u64 > max_bytes {
                truncated = true;
                bytes.truncate(max_bytes as usize);
                break;
            }
        }
        drop(stream);
        drop(body);
        Ok(Fetched {
            status,
            headers,
            bytes: bytes.len() as u64,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            truncated,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod net {
    use super::{Fetched, Target, ToolError};

    /// Outside a component there is no `wasi:http` to send with.
    pub(super) fn get(_: &Target, _: u64) -> Result<Fetched, ToolError> {
        Err(ToolError::failed(
            "fetch sends requests through wasi:http and only works as a wasm32-wasip2 component",
        ))
    }
}

plugin! {
    "get" => get: "HTTP GET of a URL whose origin this plugin is granted: returns the status, selected headers and the body text, truncated to max_bytes.",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_for_wasi_http() {
        assert_eq!(
            parse_url("https://www.rfc-editor.org/rfc/rfc9110.txt?x=1#section-1").unwrap(),
            Target {
                scheme: UrlScheme::Https,
                authority: "www.rfc-editor.org".into(),
                path_with_query: "/rfc/rfc9110.txt?x=1".into(),
            }
        );
        let t = parse_url("HTTP://127.0.0.1:8080").unwrap();
        assert_eq!(t.scheme, UrlScheme::Http);
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path_with_query, "/");
        assert_eq!(
            parse_url("http://[::1]:8080?q").unwrap().path_with_query,
            "/?q"
        );
    }

    #[test]
    fn bad_urls_are_invalid_input() {
        for (url, reason) in [
            ("example.com/x", "not an absolute URL"),
            ("ftp://example.com", "scheme `ftp`"),
            ("https:///path", "names no host"),
            ("https://user@example.com/", "credentials"),
            ("https://exa mple.com", "whitespace"),
        ] {
            match parse_url(url) {
                Err(ToolError::InvalidInput(m)) => assert!(m.contains(reason), "{url}: {m}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn selected_headers_only() {
        let kept = select_headers(&[
            ("Content-Type".into(), b"text/plain".to_vec()),
            ("set-cookie".into(), b"secret".to_vec()),
            ("cache-control".into(), b"no-cache".to_vec()),
            ("cache-control".into(), b"private".to_vec()),
        ]);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept["content-type"], "text/plain");
        assert_eq!(kept["cache-control"], "no-cache, private");
    }
}
