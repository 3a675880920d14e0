//! How to reach the database: [`PostgresConfig`], the `[store]` section of
//! the host's configuration when `backend = "postgres"`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use airlock_store::{ErrorKind, StoreError};
use percent_encoding::percent_decode_str;
use serde::Deserialize;

/// Whether the connection is encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain TCP (a database on loopback or a private network).
    #[default]
    Disable,
    /// TLS, the server's certificate verified against Mozilla's roots
    /// (compiled in) or, with `ca_file`, against that file's certificates
    /// only. A server without TLS is refused.
    Require,
}

/// Where the PostgreSQL store is and how to use it.
///
/// Deserialized from the `[store]` section (`backend = "postgres"`); every
/// field but `url` has a default. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database` (or libpq's
    /// `key=value` form). An `sslmode` in it is overridden by `tls`.
    pub url: String,
    /// Most connections this host keeps open.
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
    /// How long opening one connection may take, in ms.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long an operation waits for a free connection when all
    /// `pool_size` are busy, in ms; then it fails as unavailable.
    #[serde(default = "defaults::pool_wait_ms")]
    pub pool_wait_ms: u64,
    /// Most time one statement may run on the server (its
    /// `statement_timeout`, which includes waiting for row locks), in ms.
    #[serde(default = "defaults::statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// `disable` or `require`.
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM file of the CAs to trust instead of Mozilla's roots (with
    /// `tls = "require"`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

mod defaults {
    pub(super) fn pool_size() -> usize {
        16
    }
    pub(super) fn connect_timeout_ms() -> u64 {
        5_000
    }
    pub(super) fn pool_wait_ms() -> u64 {
        2_000
    }
    pub(super) fn statement_timeout_ms() -> u64 {
        5_000
    }
}

/// The most connections one host may ask for.
pub const MAX_POOL_SIZE: usize = 1_000;
/// The longest any of the timeouts may be: an hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

impl PostgresConfig {
    /// The database at `url`, everything else at its default.
    pub fn new(url: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            pool_size: defaults::pool_size(),
            connect_timeout_ms: defaults::connect_timeout_ms(),
            pool_wait_ms: defaults::pool_wait_ms(),
            statement_timeout_ms: defaults::statement_timeout_ms(),
            tls: TlsMode::Disable,
            ca_file: None,
        }
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn pool_wait(&self) -> Duration {
        Duration::from_millis(self.pool_wait_ms)
    }

    pub(crate) fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms)
    }

    /// The client's configuration, checked: what `open` connects with,
    /// and the TLS setup.
    pub(crate) fn client_config(&self) -> Result<(tokio_postgres::Config, Tls), StoreError> {
        let mut config = tokio_postgres::Config::from_str(&self.url).map_err(|e| {
            StoreError::with_source(
                ErrorKind::Config,
                format!(
                    "store url {:?} is not a PostgreSQL url (postgres://user:password@host:port/database)",
                    self.redacted_url()
                ),
                e,
            )
        })?;
        if config.get_hosts().is_empty() {
            return Err(config_error(format!(
                "store url {:?} names no host",
                self.redacted_url()
            )));
        }
        if config.get_dbname().is_none() {
            return Err(config_error(format!(
                "store url {:?} names no database",
                self.redacted_url()
            )));
        }
        if config.get_user().is_none() {
            return Err(config_error(format!(
                "store url {:?} names no user",
                self.redacted_url()
            )));
        }
        if self.pool_size == 0 || self.pool_size > MAX_POOL_SIZE {
            return Err(config_error(format!(
                "store pool_size is 1 to {MAX_POOL_SIZE}, not {}",
                self.pool_size
            )));
        }
        for (name, ms) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("pool_wait_ms", self.pool_wait_ms),
            ("statement_timeout_ms", self.statement_timeout_ms),
        ] {
            if ms == 0 || ms > MAX_TIMEOUT_MS {
                return Err(config_error(format!(
                    "store {name} is 1 to {MAX_TIMEOUT_MS}, not {ms}"
                )));
            }
        }
        config
            .connect_timeout(self.connect_timeout())
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("airlock")
            // Every statement is bounded on the server too; row-lock waits
            // count. And every session reads committed data, whatever the
            // database's or role's default: the compare-and-swap statements
            // are written for it (under a stricter default the loser of a
            // race failed with a serialization error instead of finding the
            // winner's row).
            .options(format!(
                "-c statement_timeout={} -c default_transaction_isolation=read\\ committed",
                self.statement_timeout_ms
            ));
        let tls = match self.tls {
            TlsMode::Disable => {
                if self.ca_file.is_some() {
                    return Err(config_error(
                        "store ca_file is set but tls is \"disable\": set tls = \"require\"",
                    ));
                }
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Tls::Disable
            }
            TlsMode::Require => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Tls::Require(Arc::new(self.rustls_config()?))
            }
        };
        Ok((config, tls))
    }

    fn rustls_config(&self) -> Result<rustls::ClientConfig, StoreError> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;

        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<_, _>>())
                    .map_err(|e| {
                        StoreError::with_source(
                            ErrorKind::Config,
                            format!("store ca_file {} cannot be read as PEM", path.display()),
                            e,
                        )
                    })?;
                if certs.is_empty() {
                    return Err(config_error(format!(
                        "store ca_file {} holds no certificate",
                        path.display()
                    )));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        StoreError::with_source(
                            ErrorKind::Config,
                            format!(
                                "store ca_file {} holds a certificate rustls refuses",
                                path.display()
                            ),
                            e,
                        )
                    })?;
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| {
                StoreError::with_source(ErrorKind::Config, "store tls cannot be set up", e)
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(config)
    }

    /// `postgres at host:port/database`, for messages.
    pub(crate) fn describe(&self, config: &tokio_postgres::Config) -> String {
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "?".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let db = config.get_dbname().unwrap_or("?");
        format!("postgres at {host}:{port}/{db}")
    }
}

/// The TLS side of a connection.
#[derive(Clone)]
pub(crate) enum Tls {
    Disable,
    Require(Arc<rustls::ClientConfig>),
}

fn config_error(message: impl Into<String>) -> StoreError {
    StoreError::new(ErrorKind::Config, message)
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("pool_wait_ms", &self.pool_wait_ms)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `url` with any password replaced by `***`: the `user:password@` of a
/// URL and a `password` in its query, or the `password` of the
/// `key=value` form, read as libpq (and tokio-postgres) read them.
///
/// # Security
/// This runs on text that failed to parse too, so wherever it cannot tell
/// it hides: a URL's user information runs to its last `@` (a password
/// may hold `/`, `?` or `@`), query keys are compared decoded and in any
/// case, and a `key=value` text it cannot read past a point is shown only
/// up to it when what follows might hold a password.
fn redact(url: &str) -> String {
    // Any `scheme://`: a URL of another scheme is refused, but shown.
    match url.find("://") {
        Some(i)
            if !url[..i].is_empty()
                && url[..i]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            redact_url(url, i + 3)
        }
        _ => redact_keywords(url),
    }
}

/// [`redact`] for a URL whose authority starts at byte `start`.
fn redact_url(url: &str, start: usize) -> String {
    let mut out = url.to_owned();
    if let Some(at) = out.rfind('@').filter(|&at| at >= start)
        && let Some(colon) = out[start..at].find(':')
    {
        out.replace_range(start + colon + 1..at, "***");
    }
    let Some(query_start) = out.find('?').map(|q| q + 1) else {
        return out;
    };
    let params: Vec<String> = out[query_start..]
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _)) if is_password_key(&percent_decode_str(key).decode_utf8_lossy()) => {
                format!("{key}=***")
            }
            _ => param.to_owned(),
        })
        .collect();
    format!("{}{}", &out[..query_start], params.join("&"))
}

fn is_password_key(key: &str) -> bool {
    key.trim().eq_ignore_ascii_case("password")
}

/// [`redact`] for libpq's `key = value` form: pairs split by whitespace,
/// `=` with any whitespace around it, values quoted (`'…'`, `\` escaping)
/// or plain up to unescaped whitespace.
fn redact_keywords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
                      out: &mut String| {
        while let Some(&(_, c)) = chars.peek() {
            if !c.is_whitespace() {
                break;
            }
            out.push(c);
            chars.next();
        }
    };
    loop {
        skip_space(&mut chars, &mut out);
        let Some(&(key_start, _)) = chars.peek() else {
            return out;
        };
        let mut key_end = text.len();
        while let Some(&(i, c)) = chars.peek() {
            if c.is_whitespace() || c == '=' {
                key_end = i;
                break;
            }
            chars.next();
        }
        let key = &text[key_start..key_end];
        out.push_str(key);
        skip_space(&mut chars, &mut out);
        if chars.next_if(|&(_, c)| c == '=').is_none() {
            // Not `key = value`: what follows is not shown if it might
            // hold a password.
            let rest = chars.peek().map_or("", |&(i, _)| &text[i..]);
            if is_password_key(key) || rest.to_ascii_lowercase().contains("pass") {
                out.push_str("***");
            } else {
                out.push_str(rest);
            }
            return out;
        }
        out.push('=');
        skip_space(&mut chars, &mut out);
        let mut value = String::new();
        if chars.next_if(|&(_, c)| c == '\'').is_some() {
            value.push('\'');
            let mut escaped = false;
            for (_, c) in chars.by_ref() {
                value.push(c);
                match c {
                    '\\' if !escaped => escaped = true,
                    '\'' if !escaped => break,
                    _ => escaped = false,
                }
            }
        } else {
            let mut escaped = false;
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() && !escaped {
                    break;
                }
                escaped = c == '\\' && !escaped;
                value.push(c);
                chars.next();
            }
        }
        out.push_str(if is_password_key(key) { "***" } else { &value });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        for url in [
            "postgres://airlock:s3cret@db:5432/airlock",
            "postgresql://airlock:s3cret@db/airlock?sslmode=disable",
            "postgres://airlock@db/airlock?password=s3cret&application_name=x",
            "host=db user=airlock password=s3cret dbname=airlock",
            "host=db user=airlock password='s3 cret' dbname=airlock",
        ] {
            let config = PostgresConfig::new(url);
            let shown = format!("{config:?}");
            assert!(!shown.contains("s3"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
            assert!(shown.contains("airlock"), "{shown}");
        }
        assert_eq!(
            redact("postgres://u:p@h:1/d?x=1"),
            "postgres://u:***@h:1/d?x=1"
        );
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(
            redact("host=h mypassword=x password=y dbname=d"),
            "host=h mypassword=x password=*** dbname=d"
        );
        // Leaked once: spaces around `=`, and a `/` in a URL's password.
        assert_eq!(
            redact("host=h password = s3cret dbname=d"),
            "host=h password = *** dbname=d"
        );
        assert_eq!(
            redact("host=h password=\ts3cret user=u password\t=  's3 cret'"),
            "host=h password=\t*** user=u password\t=  ***"
        );
        assert_eq!(
            redact("postgres://u:s3/cr@et@h:1/d?sslmode=disable"),
            "postgres://u:***@h:1/d?sslmode=disable"
        );
        assert_eq!(redact("password"), "password***");
        assert_eq!(redact("password ="), "password =***");
        // Leaked in review: each as tokio-postgres reads it.
        for (url, shown) in [
            ("postgres://u:s3?cret@h", "postgres://u:***@h"),
            ("postgres://u:s3@cr@et@h/d", "postgres://u:***@h/d"),
            ("POSTGRES://u:s3cret@h/d", "POSTGRES://u:***@h/d"),
            (
                "postgres://u@h/d?pass%77ord=s3cret&x=1",
                "postgres://u@h/d?pass%77ord=***&x=1",
            ),
            (
                "postgres://u@h/d?password=s3 cret",
                "postgres://u@h/d?password=***",
            ),
            (
                "postgres://u@h/d?PASSWORD=s3cret",
                "postgres://u@h/d?PASSWORD=***",
            ),
            (
                "host=h password=ab&cd dbname=d",
                "host=h password=*** dbname=d",
            ),
            (
                "host=h password=ab\\ cd dbname=d",
                "host=h password=*** dbname=d",
            ),
            (
                "host=h password=\ns3cret dbname=d",
                "host=h password=\n*** dbname=d",
            ),
            ("host=h password\n=s3cret", "host=h password\n=***"),
            ("host=h\rpassword=s3cret", "host=h\rpassword=***"),
            ("host=h\u{a0}password=s3cret", "host=h\u{a0}password=***"),
            ("host=h PASSWORD=s3cret", "host=h PASSWORD=***"),
            (
                "host=h password='s3 \\' cret' dbname=d",
                "host=h password=*** dbname=d",
            ),
            ("host=h nonsense password s3cret", "host=h nonsense ***"),
            ("mysql://u:s3cret@h/d", "mysql://u:***@h/d"),
            ("host=h password=x://y", "host=h password=***"),
            ("password=x://y@h", "password=***"),
            ("host=h nonsense rest", "host=h nonsense rest"),
            ("password=s3cret", "password=***"),
        ] {
            assert_eq!(redact(url), shown, "{url:?}");
        }
        for url in [
            "host=h password = s3cret dbname=d",
            "postgres://u:s3/cret@h/d",
            "postgres://u:s3cret@h/d?password = s3cret2",
            "postgres://u:s3?cret@h",
            "host=h PASSWORD=s3cret",
            "host=h password=\ns3cret",
        ] {
            let err = PostgresConfig::new(url).client_config().err();
            if let Some(err) = err {
                let mut text = err.to_string();
                let mut source = std::error::Error::source(&err);
                while let Some(cause) = source {
                    text = format!("{text}: {cause}");
                    source = cause.source();
                }
                assert!(!text.contains("s3"), "{text}");
            }
            assert!(!format!("{:?}", PostgresConfig::new(url)).contains("s3"));
        }
    }

    #[test]
    fn the_section_deserializes_with_defaults_and_refuses_unknown_fields() {
        let config: PostgresConfig =
            serde_json::from_str(r#"{"url": "postgres://u:p@h/d"}"#).expect("minimal");
        assert_eq!(config, PostgresConfig::new("postgres://u:p@h/d"));
        let full: PostgresConfig = serde_json::from_str(
            r#"{"url": "postgres://u:p@h/d", "pool_size": 4, "connect_timeout_ms": 100,
                "pool_wait_ms": 200, "statement_timeout_ms": 300, "tls": "require",
                "ca_file": "ca.pem"}"#,
        )
        .expect("full");
        assert_eq!(full.tls, TlsMode::Require);
        assert_eq!(full.pool_size, 4);
        let err =
            serde_json::from_str::<PostgresConfig>(r#"{"url": "postgres://u:p@h/d", "pool": 4}"#)
                .expect_err("unknown field");
        assert!(err.to_string().contains("unknown field `pool`"), "{err}");
        assert!(
            serde_json::from_str::<PostgresConfig>(r#"{"url": "x", "tls": "prefer"}"#).is_err()
        );
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let kind = |config: PostgresConfig| match config.client_config() {
            Ok(_) => None,
            Err(e) => Some((e.kind(), e.to_string())),
        };
        let (k, msg) = kind(PostgresConfig::new("mysql://u:p@h/d")).expect("bad scheme");
        assert_eq!(k, ErrorKind::Config);
        assert!(!msg.contains(":p@"), "{msg}");
        let (k, msg) = kind(PostgresConfig::new("postgres://u:p@h:notaport/d")).expect("port");
        assert_eq!(k, ErrorKind::Config, "{msg}");
        let (k, msg) = kind(PostgresConfig::new("postgres://u:p@h")).expect("no db");
        assert_eq!(k, ErrorKind::Config);
        assert!(msg.contains("names no database"), "{msg}");
        let mut config = PostgresConfig::new("postgres://u:p@h/d");
        config.pool_size = 0;
        assert!(kind(config.clone()).expect("pool").1.contains("pool_size"));
        config.pool_size = 2;
        config.pool_wait_ms = 0;
        assert!(
            kind(config.clone())
                .expect("wait")
                .1
                .contains("pool_wait_ms")
        );
        config.pool_wait_ms = 10;
        config.ca_file = Some("ca.pem".into());
        assert!(kind(config.clone()).expect("ca").1.contains("ca_file"));
        config.tls = TlsMode::Require;
        let (k, msg) = kind(config.clone()).expect("missing ca file");
        assert_eq!(k, ErrorKind::Config);
        assert!(msg.contains("ca.pem"), "{msg}");
        config.ca_file = None;
        assert!(kind(config).is_none());
    }
}
