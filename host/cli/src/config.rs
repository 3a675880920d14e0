//! Host configuration: embedded defaults, a config file, environment, flags.

use std::path::{Path, PathBuf};

use airlock_host::MAX_ARGUMENT_BYTES_CEILING;
use airlock_host::audit_log::AuditConfig;
use anyhow::{Context as _, bail};
use serde::Deserialize;

/// The built-in configuration.
pub(crate) const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

/// A configuration file (`airlock.toml`). Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    plugins_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    max_argument_bytes: Option<usize>,
    max_instances: Option<u32>,
    max_instances_per_plugin: Option<u32>,
    zero_stacks: Option<bool>,
    principal: Option<String>,
    policy: Option<airlock_host::Policy>,
    audit: Option<AuditConfig>,
    serve: Option<ServeConfig>,
    store: Option<toml::Table>,
    alerts: Option<airlock_host::AlertConfig>,
    readiness: Option<airlock_host::ReadinessConfig>,
    telemetry: Option<TelemetrySection>,
}

/// `[telemetry]`: metrics and span export. Unknown keys are errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TelemetrySection {
    /// Count calls into the metric families (`/metrics`).
    pub metrics: bool,
    /// OTLP/HTTP endpoint spans are exported to (`http://127.0.0.1:4318`).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// How long one export may take, ms.
    pub otlp_timeout_ms: u64,
    /// Finished spans waiting for export, at most.
    pub max_queued_spans: usize,
    /// Export spans of calls whose caller does not sample them too.
    pub sample_all: bool,
}

impl Default for TelemetrySection {
    fn default() -> TelemetrySection {
        let defaults = airlock_host::TelemetryConfig::default();
        TelemetrySection {
            metrics: defaults.metrics,
            otlp_endpoint: None,
            service_name: defaults.service_name,
            otlp_timeout_ms: u64::try_from(defaults.otlp_timeout.as_millis()).unwrap_or(u64::MAX),
            max_queued_spans: defaults.max_queued_spans,
            sample_all: defaults.sample_all,
        }
    }
}

/// `[telemetry]` as the host's configuration, checked.
fn telemetry_config(section: TelemetrySection) -> anyhow::Result<airlock_host::TelemetryConfig> {
    let mut config = airlock_host::TelemetryConfig::default()
        .metrics(section.metrics)
        .otlp_timeout(std::time::Duration::from_millis(section.otlp_timeout_ms));
    config.otlp_endpoint = section.otlp_endpoint;
    config.service_name = section.service_name;
    config.max_queued_spans = section.max_queued_spans;
    config.sample_all = section.sample_all;
    config.validate().map_err(anyhow::Error::msg)?;
    Ok(config)
}

/// `[store]`: where the host keeps its state. `backend = "sled"` (the
/// default: databases in the data directory, one host) or `"postgres"`
/// (one database shared by any number of hosts, with the keys of
/// `airlock_host::PostgresConfig`); `origin` names this host among them.
/// `AIRLOCK_STORE_URL`, when set, replaces `url` (so the password need not
/// be in a file).
#[derive(Debug, Clone)]
pub(crate) struct StoreSettings {
    pub store: airlock_host::StoreConfig,
    pub origin: String,
}

fn store_settings(
    table: Option<toml::Table>,
    url_override: Option<String>,
) -> anyhow::Result<StoreSettings> {
    let mut table = table.unwrap_or_default();
    let backend = match table.remove("backend") {
        None => "sled".to_owned(),
        Some(toml::Value::String(b)) => b,
        Some(other) => {
            bail!("store.backend must be a string (\"sled\" or \"postgres\"), not {other}")
        }
    };
    let origin = match table.remove("origin") {
        None => airlock_host::audit_log::DEFAULT_ORIGIN.to_owned(),
        Some(toml::Value::String(o)) => o,
        Some(other) => bail!("store.origin must be a string, not {other}"),
    };
    if origin.is_empty()
        || origin.len() > 64
        || origin.starts_with(['.', '-'])
        || !origin
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        bail!(
            "invalid store.origin {origin:?}: 1-64 characters of A-Z a-z 0-9 . _ -, not starting with . or -"
        );
    }
    let store = match backend.as_str() {
        "sled" => {
            if let Some(key) = table.keys().next() {
                bail!(
                    "store.{key} applies to backend = \"postgres\" only (this configuration's backend is sled)"
                );
            }
            if url_override.is_some() {
                bail!(
                    "AIRLOCK_STORE_URL is set but the store backend is sled; set store.backend = \"postgres\" or unset it"
                );
            }
            airlock_host::StoreConfig::Sled
        }
        "postgres" => {
            if let Some(url) = url_override {
                table.insert("url".to_owned(), toml::Value::String(url));
            }
            let config: airlock_host::PostgresConfig = toml::Value::Table(table)
                .try_into()
                .map_err(|e| anyhow::anyhow!("invalid [store] for postgres: {e}"))?;
            airlock_host::StoreConfig::Postgres(config)
        }
        other => bail!("unknown store.backend {other:?}: \"sled\" or \"postgres\""),
    };
    Ok(StoreSettings { store, origin })
}

/// `[serve]`: how `airlock serve` serves MCP. Unknown keys are errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ServeConfig {
    /// Listen address for `--http` given without one.
    pub http_addr: std::net::SocketAddr,
    /// Allow a non-loopback listen address.
    pub allow_remote: bool,
    /// A reverse proxy on this machine forwards clients: nothing is
    /// trusted for being loopback (needs `allowed_hosts`).
    pub behind_proxy: bool,
    /// Caller tokens for HTTP: `[[serve.tokens]] principal, token_sha256`.
    pub tokens: Vec<airlock_mcp::http::CallerToken>,
    /// Browser origins allowed besides loopback ones.
    pub allowed_origins: Vec<String>,
    /// Host names allowed in `Host` besides loopback ones.
    pub allowed_hosts: Vec<String>,
    /// Largest HTTP request body, bytes.
    pub max_request_bytes: usize,
    /// HTTP connections open at once (MCP and approvals listeners each).
    pub max_connections: usize,
    /// HTTP connections one peer address (IPv6: its /64) holds at once;
    /// `None`: half of `max_connections`.
    pub max_connections_per_peer: Option<usize>,
    /// Time an HTTP connection has to send a request's head, ms (also how
    /// long a keep-alive connection may sit idle).
    pub header_read_timeout_ms: u64,
    /// Time an HTTP request has to send its whole body once its head is
    /// in, ms.
    pub body_read_timeout_ms: u64,
    /// Time a write to an HTTP client may make no progress, ms.
    pub write_timeout_ms: u64,
    /// Tool calls running at once over all clients.
    pub max_concurrent_calls: usize,
    /// Tool calls one principal runs at once.
    pub max_calls_per_principal: usize,
    /// Seconds a call waits for an approver before answering
    /// `approval_pending` (0: answer at once).
    pub approval_wait_s: u64,
    /// How often the plugins directory is scanned for changes, ms (0: never).
    pub reload_interval_ms: u64,
    /// SHA-256 (hex) of the token `/metrics` requires; without one it
    /// answers loopback peers only.
    pub metrics_token_sha256: Option<String>,
    /// OAuth 2.1 resource server: `[serve.oauth] resource` and
    /// `[[serve.oauth.issuers]] issuer, jwks_uri, principal_claim,
    /// principal_prefix`.
    pub oauth: Option<airlock_mcp::oauth::OauthConfig>,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            http_addr: airlock_mcp::http::default_addr(),
            allow_remote: false,
            behind_proxy: false,
            tokens: Vec::new(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_request_bytes: airlock_mcp::http::DEFAULT_MAX_REQUEST_BYTES,
            max_connections: airlock_mcp::http::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: None,
            header_read_timeout_ms: u64::try_from(
                airlock_mcp::http::DEFAULT_HEADER_READ_TIMEOUT.as_millis(),
            )
            .unwrap_or(u64::MAX),
            body_read_timeout_ms: u64::try_from(
                airlock_mcp::http::DEFAULT_BODY_READ_TIMEOUT.as_millis(),
            )
            .unwrap_or(u64::MAX),
            write_timeout_ms: u64::try_from(airlock_mcp::http::DEFAULT_WRITE_TIMEOUT.as_millis())
                .unwrap_or(u64::MAX),
            max_concurrent_calls: airlock_mcp::DEFAULT_MAX_CONCURRENT_CALLS,
            max_calls_per_principal: airlock_mcp::DEFAULT_MAX_CALLS_PER_PRINCIPAL,
            approval_wait_s: 0,
            reload_interval_ms: 1000,
            metrics_token_sha256: None,
            oauth: None,
        }
    }
}

fn check_serve(serve: ServeConfig) -> anyhow::Result<ServeConfig> {
    if serve.max_concurrent_calls == 0 {
        bail!("serve.max_concurrent_calls must be at least 1");
    }
    if serve.max_calls_per_principal == 0 {
        bail!("serve.max_calls_per_principal must be at least 1");
    }
    if serve.approval_wait_s > 24 * 3600 {
        bail!("serve.approval_wait_s must be at most 86400");
    }
    if let Some(hash) = &serve.metrics_token_sha256
        && (hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        bail!(
            "serve.metrics_token_sha256 must be 64 hex digits (the SHA-256 of the token, e.g. `printf %s \"$TOKEN\" | sha256sum`)"
        );
    }
    if serve.reload_interval_ms != 0 && serve.reload_interval_ms < 100 {
        bail!("serve.reload_interval_ms must be 0 (no reloading) or at least 100");
    }
    // These bound the control socket too, which every `serve` opens: held
    // here, not only where an HTTP listener checks them (with stdio alone,
    // `max_request_bytes = 0` refused every operator's command).
    if serve.max_request_bytes < 1024 {
        bail!("serve.max_request_bytes must be at least 1024");
    }
    let ceiling = airlock_mcp::http::HEADER_READ_TIMEOUT_CEILING.as_millis();
    for (key, ms) in [
        ("serve.header_read_timeout_ms", serve.header_read_timeout_ms),
        ("serve.body_read_timeout_ms", serve.body_read_timeout_ms),
        ("serve.write_timeout_ms", serve.write_timeout_ms),
    ] {
        if !(100..=ceiling).contains(&u128::from(ms)) {
            bail!("{key} must be between 100 and {ceiling}");
        }
    }
    Ok(serve)
}

/// Settings after every layer is applied.
#[derive(Debug)]
pub(crate) struct Settings {
    pub plugins_dir: PathBuf,
    pub data_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub max_argument_bytes: usize,
    pub max_instances: u32,
    pub max_instances_per_plugin: Option<u32>,
    /// Pooled fiber stacks zeroed between calls (`zero_stacks`, default on).
    pub zero_stacks: bool,
    pub principal: String,
    pub policy: airlock_host::Policy,
    pub audit: AuditConfig,
    pub serve: ServeConfig,
    pub store: StoreSettings,
    /// `[alerts]`: rules, webhooks (their secrets read), takeover limit.
    pub alerts: airlock_host::AlertConfig,
    /// `[readiness]`: which checks are required.
    pub readiness: airlock_host::ReadinessConfig,
    pub telemetry: airlock_host::TelemetryConfig,
}

/// Overrides from flags and environment variables.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    pub config: Option<PathBuf>,
    pub plugins_dir: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub principal: Option<String>,
    /// `AIRLOCK_STORE_URL`: the PostgreSQL store's URL.
    pub store_url: Option<String>,
}

fn parse(text: &str, origin: &str) -> anyhow::Result<ConfigFile> {
    toml::from_str(text).with_context(|| format!("invalid configuration in {origin}"))
}

fn resolve_relative(path: PathBuf, base: &Path) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

/// The default data directory: `$XDG_DATA_HOME/airlock`, else
/// `~/.local/share/airlock`.
fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("airlock"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/airlock")),
        None => bail!(
            "cannot choose a data directory: neither XDG_DATA_HOME nor HOME is set; pass --data-dir"
        ),
    }
}

/// Largest configuration file read (a config is a few KiB; a path linked
/// to a device is refused, not read until memory runs out).
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

impl Settings {
    pub(crate) fn load(overrides: Overrides) -> anyhow::Result<Settings> {
        // An empty path is the current directory (or, in a file, the
        // file's own): the data directory's databases and keys written
        // wherever the command was run from, never what was meant.
        for (flag, path) in [
            ("--config", &overrides.config),
            ("--data-dir", &overrides.data_dir),
            ("--cache-dir", &overrides.cache_dir),
            ("--plugins-dir", &overrides.plugins_dir),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                bail!("{flag} is empty: give it a path");
            }
        }
        let mut layer = parse(DEFAULT_CONFIG, "the built-in configuration")?;
        if let Some(path) = &overrides.config {
            let text = airlock_host::store::file::read_text_capped(path, MAX_CONFIG_BYTES)
                .with_context(|| format!("cannot read configuration file {}", path.display()))?;
            let file = parse(&text, &path.display().to_string())?;
            for (key, value) in [
                ("plugins_dir", &file.plugins_dir),
                ("data_dir", &file.data_dir),
                ("cache_dir", &file.cache_dir),
                (
                    "policy.files_root",
                    &file.policy.as_ref().and_then(|p| p.files_root.clone()),
                ),
            ] {
                if value.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                    bail!(
                        "{}: `{key}` is empty: give it a path, or leave it out for the default",
                        path.display()
                    );
                }
            }
            let base = path.parent().unwrap_or(Path::new("."));
            if let Some(dir) = file.plugins_dir {
                layer.plugins_dir = Some(resolve_relative(dir, base));
            }
            if let Some(dir) = file.data_dir {
                layer.data_dir = Some(resolve_relative(dir, base));
            }
            if let Some(dir) = file.cache_dir {
                layer.cache_dir = Some(resolve_relative(dir, base));
            }
            if file.max_argument_bytes.is_some() {
                layer.max_argument_bytes = file.max_argument_bytes;
            }
            if file.max_instances.is_some() {
                layer.max_instances = file.max_instances;
            }
            if file.max_instances_per_plugin.is_some() {
                layer.max_instances_per_plugin = file.max_instances_per_plugin;
            }
            if file.zero_stacks.is_some() {
                layer.zero_stacks = file.zero_stacks;
            }
            if file.principal.is_some() {
                layer.principal = file.principal;
            }
            if file.audit.is_some() {
                layer.audit = file.audit;
            }
            if file.serve.is_some() {
                layer.serve = file.serve;
            }
            if let Some(mut store) = file.store {
                // A trust anchor: relative to the file, as every path in it
                // is, never to wherever the command was started from.
                if let Some(toml::Value::String(ca)) = store.get("ca_file") {
                    let resolved = resolve_relative(PathBuf::from(ca), base);
                    store.insert(
                        "ca_file".to_owned(),
                        toml::Value::String(resolved.to_string_lossy().into_owned()),
                    );
                }
                layer.store = Some(store);
            }
            if file.alerts.is_some() {
                layer.alerts = file.alerts;
            }
            if file.readiness.is_some() {
                layer.readiness = file.readiness;
            }
            if file.telemetry.is_some() {
                layer.telemetry = file.telemetry;
            }
            if let Some(mut policy) = file.policy {
                policy.files_root = policy.files_root.map(|root| resolve_relative(root, base));
                policy.http_ca_certs = policy
                    .http_ca_certs
                    .into_iter()
                    .map(|path| resolve_relative(path, base))
                    .collect();
                layer.policy = Some(policy);
            }
        }
        let data_dir = match overrides.data_dir.or(layer.data_dir) {
            Some(dir) => dir,
            None => default_data_dir()?,
        };
        let cache_dir = overrides
            .cache_dir
            .or(layer.cache_dir)
            .unwrap_or_else(|| data_dir.join("cache"));
        let plugins_dir = overrides
            .plugins_dir
            .or(layer.plugins_dir)
            .unwrap_or_else(|| data_dir.join("plugins"));
        let principal = overrides
            .principal
            .or(layer.principal)
            .unwrap_or_else(|| "local".to_owned());
        if principal.is_empty() || principal.len() > 256 || principal.chars().any(char::is_control)
        {
            bail!(
                "invalid principal {principal:?}: must be 1-256 characters without control characters"
            );
        }
        let max_argument_bytes = layer
            .max_argument_bytes
            .unwrap_or(airlock_host::DEFAULT_MAX_ARGUMENT_BYTES);
        if max_argument_bytes == 0 || max_argument_bytes > MAX_ARGUMENT_BYTES_CEILING {
            bail!("max_argument_bytes must be between 1 and {MAX_ARGUMENT_BYTES_CEILING}");
        }
        Ok(Settings {
            plugins_dir,
            data_dir,
            cache_dir,
            max_argument_bytes,
            max_instances: layer
                .max_instances
                .unwrap_or(airlock_host::DEFAULT_MAX_INSTANCES),
            max_instances_per_plugin: match layer.max_instances_per_plugin {
                Some(0) => bail!("max_instances_per_plugin must be at least 1"),
                other => other,
            },
            zero_stacks: layer.zero_stacks.unwrap_or(true),
            principal,
            policy: layer.policy.unwrap_or_default(),
            audit: check_audit(layer.audit.unwrap_or_default())?,
            serve: check_serve(layer.serve.unwrap_or_default())?,
            store: store_settings(layer.store, overrides.store_url)?,
            alerts: layer
                .alerts
                .unwrap_or_default()
                .resolve()
                .map_err(|e| anyhow::anyhow!("invalid [alerts]: {e}"))?,
            readiness: layer.readiness.unwrap_or_default(),
            telemetry: telemetry_config(layer.telemetry.unwrap_or_default())?,
        })
    }
}

fn check_audit(audit: AuditConfig) -> anyhow::Result<AuditConfig> {
    if audit.checkpoint_every == 0 {
        bail!("audit.checkpoint_every must be at least 1");
    }
    if audit.checkpoint_interval_s == 0 {
        bail!("audit.checkpoint_interval_s must be at least 1");
    }
    if !(1..=60_000).contains(&audit.group_commit_ms) {
        bail!("audit.group_commit_ms must be between 1 and 60000");
    }
    if audit.max_copy_bytes > 1024 * 1024 {
        bail!("audit.max_copy_bytes must be at most 1048576");
    }
    for tool in &audit.replayable {
        let valid = |part: &str| {
            !part.is_empty() && !part.chars().any(|c| c.is_control() || c.is_whitespace())
        };
        match tool.split_once('/') {
            Some((plugin, name)) if valid(plugin) && valid(name) && !name.contains('/') => {}
            _ => bail!("audit.replayable: {tool:?} is not a tool reference (plugin/tool)"),
        }
    }
    Ok(audit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_section_is_read_and_checked() {
        let file = parse(
            "[serve]\nallowed_origins = [\"https://app.example.com\"]\nmax_concurrent_calls = 4\n[[serve.tokens]]\nprincipal = \"agent-1\"\ntoken_sha256 = \"00\"\n",
            "t",
        )
        .unwrap();
        let serve = file.serve.unwrap();
        assert_eq!(serve.tokens[0].principal, "agent-1");
        assert_eq!(serve.max_concurrent_calls, 4);
        assert_eq!(serve.http_addr, airlock_mcp::http::default_addr());
        let file = parse(
            "[serve.oauth]\nresource = \"https://mcp.example.com/mcp\"\n[[serve.oauth.issuers]]\nissuer = \"https://id.example.com\"\njwks_uri = \"https://id.example.com/jwks\"\n",
            "t",
        )
        .unwrap();
        let oauth = file.serve.unwrap().oauth.unwrap();
        assert_eq!(oauth.issuers[0].principal_claim, "sub");
        assert_eq!(oauth.issuers[0].principal_prefix, "");
        let err = parse(
            "[serve.oauth]\nresource = \"https://x/mcp\"\n[[serve.oauth.issuers]]\nissuer = \"i\"\njwks = \"j\"\n",
            "t",
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown field `jwks`"),
            "{err:#}"
        );
        let err = parse("[serve]\ntoken = \"x\"", "t").unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown field `token`"),
            "{err:#}"
        );
        let zero = ServeConfig {
            max_concurrent_calls: 0,
            ..ServeConfig::default()
        };
        assert!(
            check_serve(zero)
                .unwrap_err()
                .to_string()
                .contains("max_concurrent_calls")
        );
    }

    #[test]
    fn replayable_tools_are_plugin_slash_tool() {
        let file = parse("[audit]\nreplayable = [\"text/slugify\"]\n", "t").unwrap();
        let audit = check_audit(file.audit.unwrap()).unwrap();
        assert_eq!(audit.replayable, ["text/slugify"]);
        for bad in ["slugify", "text/", "/x", "a/b/c", "text/slug ify"] {
            let audit = AuditConfig {
                replayable: vec![bad.to_owned()],
                ..AuditConfig::default()
            };
            let err = check_audit(audit).unwrap_err().to_string();
            assert!(err.contains("audit.replayable"), "{bad}: {err}");
        }
    }

    /// Settings loaded from a config file holding `text`.
    fn load(text: &str) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("airlock.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load(Overrides {
            config: Some(path),
            ..Default::default()
        })
    }

    /// A held call's arguments are kept whole in its record and approval:
    /// the cap on them has a ceiling, and 0 is no cap at all.
    #[test]
    fn max_argument_bytes_is_refused_at_zero_and_past_its_ceiling() {
        for bad in [0, MAX_ARGUMENT_BYTES_CEILING + 1] {
            let err = load(&format!("max_argument_bytes = {bad}\n")).unwrap_err();
            assert!(
                format!("{err:#}").contains("max_argument_bytes must be between 1 and"),
                "{bad}: {err:#}"
            );
        }
        let s = load(&format!(
            "max_argument_bytes = {MAX_ARGUMENT_BYTES_CEILING}\n"
        ))
        .unwrap();
        assert_eq!(s.max_argument_bytes, MAX_ARGUMENT_BYTES_CEILING);
    }

    #[test]
    fn telemetry_sample_all_is_read_and_off_by_default() {
        assert!(!load("").unwrap().telemetry.sample_all);
        assert!(
            load("[telemetry]\nsample_all = true\n")
                .unwrap()
                .telemetry
                .sample_all
        );
        let err = load("[telemetry]\nsample_all = \"yes\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("sample_all"), "{err:#}");
    }

    /// The database's CA file is a trust anchor: relative to the config
    /// file, as its other paths are — it was read from wherever the
    /// command started, a directory someone else may write to.
    #[test]
    fn the_store_ca_file_is_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("airlock.toml");
        std::fs::write(
            &path,
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://a@127.0.0.1/db\"\ntls = \"require\"\nca_file = \"db-ca.pem\"\n",
        )
        .unwrap();
        let s = Settings::load(Overrides {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        let airlock_host::StoreConfig::Postgres(config) = &s.store.store else {
            panic!("not postgres");
        };
        assert_eq!(config.ca_file, Some(dir.path().join("db-ca.pem")));
    }

    /// The control socket's bounds are checked whatever the transport.
    #[test]
    fn serve_bounds_are_checked_without_an_http_listener() {
        for (text, key) in [
            (
                "[serve]\nmax_request_bytes = 0\n",
                "serve.max_request_bytes",
            ),
            (
                "[serve]\nheader_read_timeout_ms = 0\n",
                "serve.header_read_timeout_ms",
            ),
            (
                "[serve]\nbody_read_timeout_ms = 99\n",
                "serve.body_read_timeout_ms",
            ),
            (
                "[serve]\nwrite_timeout_ms = 300001\n",
                "serve.write_timeout_ms",
            ),
        ] {
            let err = load(text).unwrap_err();
            assert!(format!("{err:#}").contains(key), "{text}: {err:#}");
        }
        load("[serve]\nmax_request_bytes = 1024\nheader_read_timeout_ms = 100\n").unwrap();
    }

    #[test]
    fn builtin_config_parses() {
        parse(DEFAULT_CONFIG, "builtin").unwrap();
    }

    #[test]
    fn policy_is_read_with_paths_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("airlock.toml");
        std::fs::write(
            &path,
            "[policy]\nforbid = [\"files\"]\nfiles_root = \"shared\"\nenv = { REGION = \"eu\" }\n[policy.limits]\nfuel = 10\n",
        )
        .unwrap();
        let s = Settings::load(Overrides {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert!(s.policy.forbid.contains(&airlock_host::Capability::Files));
        assert_eq!(s.policy.files_root, Some(dir.path().join("shared")));
        assert_eq!(s.policy.env["REGION"], "eu");
        assert_eq!(s.policy.limits.fuel, Some(10));
        let err = parse("[policy]\nforbid = [\"teleport\"]", "t").unwrap_err();
        assert!(format!("{err:#}").contains("teleport"), "{err:#}");
    }

    #[test]
    fn http_policy_is_read_and_checked() {
        let file = parse(
            "[policy]\nforbid = [\"http\"]\nhttp_allow = [\"https://API.example.com:443\"]\nhttp_allow_private = [\"127.0.0.1\", \"10.0.0.0/8\"]\nhttp_private_origins = [\"http://Billing.internal:80\"]\nhttp_max_requests = 4\n",
            "t",
        )
        .unwrap();
        let policy = file.policy.unwrap();
        assert!(policy.forbid.contains(&airlock_host::Capability::Http));
        let allow: Vec<String> = policy
            .http_allow
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(allow, ["https://api.example.com"]);
        assert_eq!(policy.http_allow_private.len(), 2);
        assert_eq!(
            policy.http_private_origins,
            [airlock_host::Origin::parse("http://billing.internal").unwrap()]
        );
        assert_eq!(policy.http_max_requests, Some(4));
        for (bad, reason) in [
            ("http_allow = [\"https://x.example/path\"]", "has a path"),
            ("http_allow_private = [\"10.0.0.1/8\"]", "10.0.0.0/8"),
            ("http_allow_private = false", "invalid type"),
            (
                "http_private_origins = [\"billing.internal\"]",
                "billing.internal",
            ),
        ] {
            let err = parse(&format!("[policy]\n{bad}"), "t").unwrap_err();
            assert!(format!("{err:#}").contains(reason), "{bad}: {err:#}");
        }
    }

    #[test]
    fn resource_bounds_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("airlock.toml");
        std::fs::write(
            &path,
            "max_instances_per_plugin = 3\n[policy]\nlog_max_lines = 50\nhttp_max_dns_lookups = 2\n",
        )
        .unwrap();
        let s = Settings::load(Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.max_instances_per_plugin, Some(3));
        assert_eq!(s.policy.log_max_lines, Some(50));
        assert_eq!(s.policy.http_max_dns_lookups, Some(2));
        std::fs::write(&path, "max_instances_per_plugin = 0\n").unwrap();
        let err = Settings::load(Overrides {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("max_instances_per_plugin"),
            "{err:#}"
        );
    }

    #[test]
    fn stack_zeroing_is_on_unless_turned_off() {
        assert!(load("").unwrap().zero_stacks);
        assert!(load("zero_stacks = true\n").unwrap().zero_stacks);
        assert!(!load("zero_stacks = false\n").unwrap().zero_stacks);
        let err = load("zero_stacks = \"no\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("invalid type"), "{err:#}");
        // The built-in defaults say it too.
        assert!(parse(DEFAULT_CONFIG, "default").unwrap().zero_stacks == Some(true));
    }

    #[test]
    fn read_intents_are_held_unless_turned_off() {
        assert!(load("").unwrap().audit.hold_read_intents);
        assert!(
            !load("[audit]\nhold_read_intents = false\n")
                .unwrap()
                .audit
                .hold_read_intents
        );
        let err = load("[audit]\nhold_read_intents = \"no\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("invalid type"), "{err:#}");
        let err = load("[audit]\nhold_read_intent = true\n").unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }

    #[test]
    fn store_section_is_read_and_checked() {
        let table = |text: &str| parse(text, "test").unwrap().store;
        let sled = store_settings(None, None).unwrap();
        assert!(matches!(sled.store, airlock_host::StoreConfig::Sled));
        assert_eq!(sled.origin, "local");
        let pg = store_settings(
            table("[store]\nbackend = \"postgres\"\norigin = \"host-a\"\nurl = \"postgres://u:p@db/a\"\npool_size = 4"),
            None,
        )
        .unwrap();
        assert_eq!(pg.origin, "host-a");
        let airlock_host::StoreConfig::Postgres(config) = pg.store else {
            panic!("not postgres");
        };
        assert_eq!(config.pool_size, 4);
        // The environment's URL wins over the file's.
        let pg = store_settings(
            table("[store]\nbackend = \"postgres\"\nurl = \"postgres://file/a\""),
            Some("postgres://env/b".into()),
        )
        .unwrap();
        let airlock_host::StoreConfig::Postgres(config) = pg.store else {
            panic!("not postgres");
        };
        assert_eq!(config.url, "postgres://env/b");
        for (text, url, expect) in [
            (
                "[store]\nbackend = \"mysql\"",
                None,
                "unknown store.backend",
            ),
            (
                "[store]\nbackend = 3",
                None,
                "store.backend must be a string",
            ),
            (
                "[store]\npool_size = 4",
                None,
                "store.pool_size applies to backend = \"postgres\" only",
            ),
            ("[store]\norigin = \"../a\"", None, "invalid store.origin"),
            ("[store]\norigin = \"\"", None, "invalid store.origin"),
            (
                "[store]\nbackend = \"postgres\"",
                None,
                "invalid [store] for postgres",
            ),
            (
                "[store]\nbackend = \"postgres\"\nurl = \"x\"\npool = 3",
                None,
                "invalid [store] for postgres",
            ),
            (
                "[store]",
                Some("postgres://env/b".to_owned()),
                "AIRLOCK_STORE_URL is set but the store backend is sled",
            ),
        ] {
            let err = store_settings(table(text), url).unwrap_err();
            assert!(format!("{err:#}").contains(expect), "{text}: {err:#}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse("plugin_dir = \"x\"", "test").unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown field `plugin_dir`"),
            "{err:#}"
        );
    }

    /// An empty path was the current directory (the file's, in a file):
    /// the data directory's databases and keys landed wherever the
    /// command ran, and `--out`'s guard against the data directory failed
    /// open.
    #[test]
    fn empty_paths_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for key in ["plugins_dir", "data_dir", "cache_dir"] {
            let path = dir.path().join("airlock.toml");
            std::fs::write(&path, format!("{key} = \"\"")).unwrap();
            let err = Settings::load(Overrides {
                config: Some(path),
                ..Default::default()
            })
            .unwrap_err();
            assert!(
                format!("{err:#}").contains(&format!("`{key}` is empty")),
                "{err:#}"
            );
        }
        let path = dir.path().join("airlock.toml");
        std::fs::write(&path, "[policy]\nfiles_root = \"\"").unwrap();
        let err = Settings::load(Overrides {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("`policy.files_root` is empty"),
            "{err:#}"
        );
        for (flag, overrides) in [
            (
                "--data-dir",
                Overrides {
                    data_dir: Some("".into()),
                    ..Default::default()
                },
            ),
            (
                "--cache-dir",
                Overrides {
                    cache_dir: Some("".into()),
                    ..Default::default()
                },
            ),
            (
                "--plugins-dir",
                Overrides {
                    plugins_dir: Some("".into()),
                    ..Default::default()
                },
            ),
            (
                "--config",
                Overrides {
                    config: Some("".into()),
                    ..Default::default()
                },
            ),
        ] {
            let err = Settings::load(overrides).unwrap_err();
            assert_eq!(
                format!("{err:#}"),
                format!("{flag} is empty: give it a path")
            );
        }
    }

    #[test]
    fn file_paths_are_relative_to_the_file_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("airlock.toml");
        std::fs::write(
            &path,
            "plugins_dir = \"p\"\ndata_dir = \"d\"\nprincipal = \"ops\"",
        )
        .unwrap();
        let s = Settings::load(Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.plugins_dir, dir.path().join("p"));
        assert_eq!(s.data_dir, dir.path().join("d"));
        assert_eq!(s.principal, "ops");
        let s = Settings::load(Overrides {
            config: Some(path),
            plugins_dir: Some("/elsewhere".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.plugins_dir, PathBuf::from("/elsewhere"));
    }
}
