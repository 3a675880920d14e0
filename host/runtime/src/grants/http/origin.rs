//! Exact HTTP origins: `scheme://host[:port]`, nothing more.
//!
//! Manifests, the operator's `http_allow` list and every outgoing request are
//! reduced to an [`Origin`] by the same parser, so "is this request allowed"
//! is plain equality: same scheme, same host (compared in lowercase), same
//! port (default ports made explicit).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest origin text accepted (a DNS name is at most 253 bytes).
const MAX_ORIGIN_BYTES: usize = 300;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HttpScheme {
    /// Plain-text HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl HttpScheme {
    /// The scheme's name.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpScheme::Http => "http",
            HttpScheme::Https => "https",
        }
    }

    /// The port used when an origin names none.
    pub fn default_port(self) -> u16 {
        match self {
            HttpScheme::Http => 80,
            HttpScheme::Https => 443,
        }
    }
}

/// The host part of an origin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OriginHost {
    /// A DNS name, lowercase ASCII.
    Name(String),
    /// An IP address literal.
    Ip(IpAddr),
}

impl fmt::Display for OriginHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginHost::Name(name) => f.write_str(name),
            OriginHost::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            OriginHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// An exact origin: scheme, host and port. Displays without the port when it
/// is the scheme's default (`https://api.example.com`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: HttpScheme,
    /// DNS name or IP literal.
    pub host: OriginHost,
    /// Port, default ports made explicit.
    pub port: u16,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Origin {
    type Err = String;

    fn from_str(s: &str) -> Result<Origin, String> {
        Origin::parse(s)
    }
}

impl Origin {
    /// Parse `scheme://host[:port]`.
    ///
    /// # Errors
    /// A message saying what is wrong, naming the offending text: a scheme
    /// other than `http`/`https`, userinfo, a path (even `/`), a query, a
    /// fragment, a wildcard, an empty or malformed host or port.
    pub fn parse(text: &str) -> Result<Origin, String> {
        if text.len() > MAX_ORIGIN_BYTES {
            return Err(format!(
                "origin is {} bytes long, more than {MAX_ORIGIN_BYTES}",
                text.len()
            ));
        }
        if text.contains('*') {
            return Err(format!(
                "origin `{text}` contains a wildcard; list every origin exactly"
            ));
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!(
                "origin `{text}` is not `scheme://host[:port]` (for example `https://api.example.com`)"
            ));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => HttpScheme::Http,
            "https" => HttpScheme::Https,
            _ => {
                return Err(format!(
                    "origin `{text}` has scheme `{scheme}`; only http and https are supported"
                ));
            }
        };
        if let Some(at) = rest.find(['/', '?', '#']) {
            let what = match rest.as_bytes()[at] {
                b'/' => "a path",
                b'?' => "a query",
                _ => "a fragment",
            };
            return Err(format!(
                "origin `{text}` has {what} (`{}`); an origin is only scheme://host[:port], write `{}://{}`",
                &rest[at..],
                scheme.as_str(),
                &rest[..at]
            ));
        }
        if rest.contains('@') {
            return Err(format!(
                "origin `{text}` has userinfo (`…@`); credentials do not belong in an origin"
            ));
        }
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("origin `{text}` contains whitespace"));
        }
        let (host, port) = split_host_port(rest).map_err(|e| format!("origin `{text}`: {e}"))?;
        let host = parse_host(host).map_err(|e| format!("origin `{text}`: {e}"))?;
        let port = match port {
            None => scheme.default_port(),
            Some(p) => parse_port(p).map_err(|e| format!("origin `{text}`: {e}"))?,
        };
        Ok(Origin { scheme, host, port })
    }
}

/// Split `host[:port]`, where an IPv6 host is bracketed.
fn split_host_port(rest: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(after_bracket) = rest.strip_prefix('[') {
        let Some((inside, after)) = after_bracket.split_once(']') else {
            return Err("an IPv6 address must be closed with `]`".to_owned());
        };
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("unexpected `{after}` after the IPv6 address"))?,
            ),
        };
        return Ok((&rest[..inside.len() + 2], port));
    }
    match rest.split_once(':') {
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((rest, None)),
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err("empty port after `:`".to_owned());
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port `{port}` is not a number"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("port `{port}` is not between 1 and 65535")),
        Ok(p) => Ok(p),
    }
}

fn parse_host(host: &str) -> Result<OriginHost, String> {
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    if let Some(inside) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inside
            .parse::<Ipv6Addr>()
            .map(|ip| OriginHost::Ip(IpAddr::V6(ip)))
            .map_err(|_| format!("`{host}` is not an IPv6 address"));
    }
    if !host.is_ascii() {
        return Err(format!(
            "host `{host}` is not ASCII; write internationalised names in their punycode (`xn--`) form"
        ));
    }
    let host = host.to_ascii_lowercase();
    if host.len() > 253 {
        return Err("host name is longer than 253 bytes".to_owned());
    }
    let labels: Vec<&str> = host.split('.').collect();
    // Resolvers read a name whose last label is numeric as an IPv4 address
    // (`127.1`, `0x7f.1`, `2130706433`); only accept the dotted-quad form.
    let last = labels.last().copied().unwrap_or_default();
    let numeric_tail = !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || (last.starts_with("0x") && last[2..].bytes().all(|b| b.is_ascii_hexdigit())));
    if numeric_tail {
        return match host.parse::<Ipv4Addr>() {
            Ok(ip) => Ok(OriginHost::Ip(IpAddr::V4(ip))),
            Err(_) => Err(format!(
                "host `{host}` looks numeric but is not a dotted-quad IPv4 address"
            )),
        };
    }
    for label in &labels {
        if label.is_empty() {
            return Err(format!(
                "host `{host}` has an empty label (leading, trailing or double `.`)"
            ));
        }
        if label.len() > 63 {
            return Err(format!("host `{host}` has a label longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "host `{host}` may only contain letters, digits, `-`, `_` and `.`"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "host `{host}` has a label starting or ending with `-`"
            ));
        }
    }
    Ok(OriginHost::Name(host))
}

impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Origin, D::Error> {
        let text = String::deserialize(deserializer)?;
        Origin::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Origin {
        Origin::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        match Origin::parse(text) {
            Ok(o) => panic!("{text} parsed as {o:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn exact_origins_parse_and_normalise() {
        let o = ok("https://api.example.com");
        assert_eq!(o.scheme, HttpScheme::Https);
        assert_eq!(o.host, OriginHost::Name("api.example.com".into()));
        assert_eq!(o.port, 443);
        assert_eq!(o.to_string(), "https://api.example.com");
        // Default ports and case are normalised away.
        assert_eq!(ok("HTTPS://API.Example.com:443"), o);
        assert_eq!(
            ok("http://example.com:80").to_string(),
            "http://example.com"
        );
        assert_eq!(
            ok("http://127.0.0.1:8080").to_string(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            ok("http://127.0.0.1:8080").host,
            OriginHost::Ip("127.0.0.1".parse().unwrap())
        );
        let v6 = ok("https://[2001:DB8::1]:8443");
        assert_eq!(v6.host, OriginHost::Ip("2001:db8::1".parse().unwrap()));
        assert_eq!(v6.to_string(), "https://[2001:db8::1]:8443");
        assert_eq!(ok("http://[::1]").port, 80);
        assert_ne!(ok("http://example.com"), ok("https://example.com"));
        assert_ne!(ok("http://example.com:8080"), ok("http://example.com"));
    }

    #[test]
    fn anything_beyond_an_origin_is_refused_with_a_specific_reason() {
        for (text, reason) in [
            ("https://api.example.com/", "has a path (`/`)"),
            ("https://api.example.com/v1", "has a path (`/v1`)"),
            ("https://api.example.com?x=1", "has a query"),
            ("https://api.example.com#top", "has a fragment"),
            ("https://user:pw@api.example.com", "userinfo"),
            ("https://*.example.com", "wildcard"),
            ("*", "wildcard"),
            ("ftp://example.com", "scheme `ftp`"),
            ("example.com", "is not `scheme://host[:port]`"),
            ("https://", "no host"),
            ("https://:443", "no host"),
            ("https://example.com:", "empty port"),
            ("https://example.com:0", "between 1 and 65535"),
            ("https://example.com:65536", "between 1 and 65535"),
            ("https://example.com:+1", "not a number"),
            ("https://example..com", "empty label"),
            ("https://example.com.", "empty label"),
            ("https://-bad.example.com", "starting or ending with `-`"),
            ("https://exa mple.com", "whitespace"),
            ("https://bücher.de", "punycode"),
            ("https://127.1", "dotted-quad"),
            ("https://0x7f000001", "dotted-quad"),
            ("https://2130706433", "dotted-quad"),
            ("https://[::1", "closed with `]`"),
            ("https://[not-v6]", "not an IPv6 address"),
            ("https://[::1]x", "unexpected `x`"),
        ] {
            let e = err(text);
            assert!(e.contains(reason), "{text}: {e}");
        }
        assert!(err(&format!("https://{}.com", "a".repeat(300))).contains("bytes long"));
    }

    #[test]
    fn serde_round_trips_the_normalised_form() {
        let o: Origin = serde_json::from_str("\"https://Example.com:443\"").unwrap();
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            "\"https://example.com\""
        );
        let e = serde_json::from_str::<Origin>("\"https://example.com/x\"").unwrap_err();
        assert!(e.to_string().contains("has a path"), "{e}");
    }
}
