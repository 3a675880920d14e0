//! Plugin manifests (`plugin.toml`).
//!
//! A manifest is parsed in three steps, each with its own error:
//! 1. TOML syntax ([`Error::ManifestSyntax`], with line and column);
//! 2. the manifest JSON Schema kept in this crate
//!    (`schema/plugin-manifest.schema.json`): unknown fields, missing fields
//!    and wrong types, every failing field at once ([`Error::ManifestInvalid`]);
//!    Values with their own grammar (the `http` origins) are parsed here too,
//!    and a bad one is reported at its JSON path with what is wrong with it;
//! 3. consistency checks the schema cannot express: duplicate tool names, a
//!    component path that must stay inside the plugin directory, an origin
//!    listed twice ([`Error::ManifestRejected`]).

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::error::{LoadError as Error, LoadResult as Result, SchemaViolation};
use crate::grants::Origin;
use crate::schema;

/// File name of a plugin's manifest inside its directory.
pub const MANIFEST_FILE: &str = "plugin.toml";

/// The JSON Schema every manifest must satisfy (draft 2020-12).
pub const MANIFEST_SCHEMA: &str = include_str!("../schema/plugin-manifest.schema.json");

static MANIFEST_VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: serde_json::Value =
        serde_json::from_str(MANIFEST_SCHEMA).expect("the embedded manifest schema is JSON");
    jsonschema::validator_for(&schema).expect("the embedded manifest schema compiles")
});

/// A parsed and validated plugin manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Identity and pinned component.
    pub plugin: PluginSection,
    /// Declared capabilities; absent ones are not granted.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Declared limits; absent ones take host defaults.
    #[serde(default)]
    pub limits: DeclaredLimits,
    /// The tools the plugin exposes.
    pub tools: Vec<ToolDeclaration>,
}

/// The `[plugin]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSection {
    /// Plugin name, unique within a host.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// Human-readable description.
    #[serde(default)]
    pub description: Option<String>,
    /// Component file name, relative to the manifest's directory.
    pub component: String,
    /// Lowercase hex SHA-256 of the component.
    pub sha256: String,
}

/// The `[capabilities]` table. Absent means not granted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Structured logging to the host (`airlock:plugin/log`).
    #[serde(default)]
    pub log: bool,
    /// Real wall-clock and monotonic time.
    #[serde(default)]
    pub clocks: bool,
    /// Entropy (`wasi:random/random`, `wasi:random/insecure`).
    #[serde(default)]
    pub random: bool,
    /// Guest stdout/stderr kept in the call's log.
    #[serde(default)]
    pub stdio: bool,
    /// Environment variable names the guest may read.
    #[serde(default)]
    pub env: Vec<String>,
    /// Host directories preopened for the guest.
    #[serde(default)]
    pub files: Vec<FileGrant>,
    /// Workspace store access: `read-only` or `read-write`; absent means no
    /// workspace.
    #[serde(default)]
    pub workspace: Option<FileAccess>,
    /// Whose keys a call reaches: `session` (the default: the calling
    /// principal's keys in the call's session), `principal` (the calling
    /// principal's keys), or `plugin` (one set shared by every caller).
    #[serde(default)]
    pub workspace_scope: Option<crate::workspace::KeyScope>,
    /// Exact origins (`scheme://host[:port]`) the guest may send HTTP
    /// requests to through `wasi:http/outgoing-handler`.
    #[serde(default)]
    pub http: Vec<Origin>,
}

/// One `files` entry: a host directory the guest sees at `guest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGrant {
    /// Host directory, relative to the plugin directory or the operator's
    /// files root.
    pub host: String,
    /// Absolute guest path.
    pub guest: String,
    /// What the guest may do there.
    pub access: FileAccess,
}

/// Access to a preopened directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileAccess {
    /// Read files and list directories.
    ReadOnly,
    /// Also create, write, rename and delete.
    ReadWrite,
}

/// The `[limits]` table: what the manifest asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredLimits {
    /// Fuel (roughly, WebAssembly instructions) per call.
    pub fuel: Option<u64>,
    /// Wall-clock deadline per call, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Maximum linear memory per instance, in MiB.
    pub memory_mb: Option<u64>,
    /// Maximum size of a call's result, in KiB.
    pub max_output_kb: Option<u64>,
    /// Most instances of this plugin running at once.
    pub max_concurrency: Option<u64>,
    /// Most workspace keys the plugin may hold (all sessions).
    pub workspace_keys: Option<u64>,
    /// Most workspace bytes (keys, values, blobs), in MiB.
    pub workspace_mb: Option<u64>,
    /// Most workspace blobs.
    pub workspace_blobs: Option<u64>,
}

/// One `[[tools]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDeclaration {
    /// Tool name, as the component exports it.
    pub name: String,
    /// Risk class; absent means [`Risk::Irreversible`].
    #[serde(default)]
    pub risk: Risk,
    /// JSON Pointers (RFC 6901; a `*` segment matches every element) into
    /// the arguments and result whose values are redacted before anything
    /// is written to the audit log.
    #[serde(default)]
    pub redact: Vec<String>,
    /// `"required"`: every call waits for a human approval. The operator's
    /// policy may require it for more tools, never fewer.
    #[serde(default)]
    pub approval: Option<Requirement>,
    /// `"required"`: calls must carry an idempotency key.
    #[serde(default)]
    pub idempotency: Option<Requirement>,
    /// How long an approval request waits for a decision, in seconds
    /// (default: the policy's).
    #[serde(default)]
    pub approval_expiry_s: Option<u64>,
    /// Calls per period across all callers, `N/unit` (`10/min`).
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// Retry the call on transient host-side failures (`host_busy`,
    /// `plugin_busy`, `store_unavailable`) — only for a `read` tool or a
    /// call with an idempotency key.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
}

/// A tool's retry policy (`retry = { attempts = 3, backoff_ms = 100,
/// budget_ms = 2000 }`): the host runs a call again, as a new call on the
/// record under the same trace id, when an attempt fails with `host_busy`,
/// `plugin_busy` or `store_unavailable` — never another failure, and only
/// when running it again cannot repeat an effect (a `read` tool, or a call
/// with an idempotency key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (2 to 10).
    pub attempts: u32,
    /// Wait before the second attempt, doubled before each next one
    /// (default 100 ms, at most 10 000).
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// No attempt starts past this many milliseconds after the first began
    /// (default 5000, at most 60 000).
    #[serde(default = "default_budget_ms")]
    pub budget_ms: u64,
}

fn default_backoff_ms() -> u64 {
    100
}

fn default_budget_ms() -> u64 {
    5000
}

impl RetryPolicy {
    /// Check the bounds.
    ///
    /// # Errors
    /// A message naming the field out of bounds.
    pub(crate) fn check(&self) -> Result<(), String> {
        if !(2..=10).contains(&self.attempts) {
            return Err("retry.attempts must be between 2 and 10".to_owned());
        }
        self.check_bounds()
    }

    /// Check the bounds of an operator's policy, where `attempts = 1`
    /// turns a manifest's retries off.
    ///
    /// # Errors
    /// A message naming the field out of bounds.
    pub(crate) fn check_policy(&self) -> Result<(), String> {
        if !(1..=10).contains(&self.attempts) {
            return Err("attempts must be between 1 and 10".to_owned());
        }
        self.check_bounds().map_err(|e| e.replacen("retry.", "", 1))
    }

    fn check_bounds(&self) -> Result<(), String> {
        if self.backoff_ms > 10_000 {
            return Err("retry.backoff_ms must be at most 10000".to_owned());
        }
        if !(1..=60_000).contains(&self.budget_ms) {
            return Err("retry.budget_ms must be between 1 and 60000".to_owned());
        }
        Ok(())
    }
}

/// A per-tool requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// Always.
    Required,
}

/// What a tool can do to the world.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Reads only; no side effects.
    Read,
    /// Changes state the host owns (for example the workspace).
    Write,
    /// Talks to external systems.
    External,
    /// Has effects that cannot be undone. The default when a manifest says
    /// nothing, so forgetting to classify a tool fails safe.
    #[default]
    Irreversible,
}

impl Risk {
    /// Every risk class, least to most dangerous.
    pub const ALL: [Risk; 4] = [Risk::Read, Risk::Write, Risk::External, Risk::Irreversible];

    /// The manifest spelling of this risk class.
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Read => "read",
            Risk::Write => "write",
            Risk::External => "external",
            Risk::Irreversible => "irreversible",
        }
    }
}

impl Manifest {
    /// Read and validate the manifest at `path`.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, otherwise the errors of
    /// [`Manifest::parse`].
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = airlock_store::file::read_text_capped(path, crate::package::MAX_MANIFEST_BYTES)
            .map_err(|e| Error::io(path, e))?;
        Manifest::parse(&text, path)
    }

    /// Parse and validate manifest text; `path` is only used in errors.
    ///
    /// # Errors
    /// [`Error::ManifestSyntax`] for TOML syntax errors,
    /// [`Error::ManifestInvalid`] listing every field that fails the
    /// manifest schema, [`Error::ManifestRejected`] for duplicate tool names
    /// or a component path outside the plugin directory.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
        let value: toml::Table = toml::from_str(text).map_err(|e| Error::ManifestSyntax {
            path: path.to_owned(),
            message: e.message().to_owned() + &location(text, e.span()),
        })?;
        let json = serde_json::to_value(&value).map_err(|e| Error::ManifestRejected {
            path: path.to_owned(),
            message: format!("cannot be represented as JSON: {e}"),
        })?;
        let violations = schema::violations(&MANIFEST_VALIDATOR, &json);
        if !violations.is_empty() {
            return Err(Error::ManifestInvalid {
                path: path.to_owned(),
                violations,
            });
        }
        let manifest: Manifest =
            serde_path_to_error::deserialize(json).map_err(|e| Error::ManifestInvalid {
                path: path.to_owned(),
                violations: vec![SchemaViolation {
                    path: json_pointer(e.path()),
                    message: e.inner().to_string(),
                }],
            })?;
        manifest.check(path)?;
        Ok(manifest)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let reject = |message: String| Error::ManifestRejected {
            path: path.to_owned(),
            message,
        };
        let mut seen = HashSet::new();
        for tool in &self.tools {
            if !seen.insert(tool.name.as_str()) {
                return Err(reject(format!("tool `{}` is declared twice", tool.name)));
            }
        }
        component_relative_path(&self.plugin.component).map_err(reject)?;
        let mut guests = HashSet::new();
        for grant in &self.capabilities.files {
            if Path::new(&grant.guest)
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            {
                return Err(reject(format!(
                    "files: guest path `{}` may not contain `.` or `..`",
                    grant.guest
                )));
            }
            if !guests.insert(grant.guest.trim_end_matches('/')) {
                return Err(reject(format!(
                    "files: guest path `{}` is granted twice",
                    grant.guest
                )));
            }
        }
        let mut origins = HashSet::new();
        for origin in &self.capabilities.http {
            if !origins.insert(origin) {
                return Err(reject(format!(
                    "http: origin `{origin}` is listed twice (default ports and letter case do not make origins different)"
                )));
            }
        }
        Ok(())
    }

    /// The component's path, given the directory holding the manifest.
    pub fn component_path(&self, plugin_dir: &Path) -> PathBuf {
        // `check` guarantees a plain relative path without `..`.
        plugin_dir.join(&self.plugin.component)
    }

    /// The declaration of tool `name`, if the manifest has one.
    pub fn tool(&self, name: &str) -> Option<&ToolDeclaration> {
        self.tools.iter().find(|t| t.name == name)
    }
}

/// A serde path (`capabilities.http[1]`) as a JSON Pointer
/// (`/capabilities/http/1`), like schema violations.
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        pointer.push('/');
        match segment {
            Segment::Seq { index } => pointer.push_str(&index.to_string()),
            Segment::Map { key } => pointer.push_str(&key.replace('~', "~0").replace('/', "~1")),
            Segment::Enum { variant } => pointer.push_str(variant),
            Segment::Unknown => pointer.push('?'),
        }
    }
    pointer
}

/// A component path must be relative and stay inside the plugin directory.
fn component_relative_path(component: &str) -> std::result::Result<(), String> {
    let path = Path::new(component);
    for part in path.components() {
        match part {
            Component::Normal(_) => {}
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "component path `{component}` must be relative to the plugin directory and may not contain `..`"
                ));
            }
        }
    }
    if path.components().all(|c| matches!(c, Component::CurDir)) {
        return Err(format!("component path `{component}` names no file"));
    }
    Ok(())
}

/// " at line L, column C" for a byte span in `text`.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = &text.as_bytes()[..span.start.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    format!(" (line {line}, column {column})")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn parse(text: &str) -> Result<Manifest> {
        Manifest::parse(text, Path::new("plugin.toml"))
    }

    fn valid() -> String {
        format!(
            r#"
[plugin]
name = "text"
version = "0.1.0"
component = "text.wasm"
sha256 = "{DIGEST}"

[capabilities]
log = true

[limits]
fuel = 1_000_000

[[tools]]
name = "stats"
risk = "read"

[[tools]]
name = "slugify"
"#
        )
    }

    #[test]
    fn parses_a_valid_manifest() {
        let m = parse(&valid()).unwrap();
        assert_eq!(m.plugin.name, "text");
        assert!(m.capabilities.log);
        assert_eq!(m.limits.fuel, Some(1_000_000));
        assert_eq!(m.limits.timeout_ms, None);
        assert_eq!(m.tools[0].risk, Risk::Read);
        assert_eq!(
            m.tools[1].risk,
            Risk::Irreversible,
            "absent risk fails safe"
        );
    }

    #[test]
    fn not_toml_is_a_syntax_error_with_location() {
        let err = parse("[plugin\nname = 1").unwrap_err();
        assert!(matches!(err, Error::ManifestSyntax { .. }), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn unknown_fields_are_rejected_everywhere() {
        let text = valid().replace("log = true", "log = true\nnetwork = true") + "\n[extra]\n";
        let err = parse(&text).unwrap_err();
        let Error::ManifestInvalid { violations, .. } = &err else {
            panic!("{err}");
        };
        let paths: Vec<_> = violations.iter().map(|v| v.path.as_str()).collect();
        assert!(paths.contains(&""), "{violations:?}");
        assert!(paths.contains(&"/capabilities"), "{violations:?}");
    }

    #[test]
    fn missing_and_mistyped_fields_are_all_reported() {
        let text = valid()
            .replace("version = \"0.1.0\"\n", "")
            .replace("fuel = 1_000_000", "fuel = \"lots\"");
        let err = parse(&text).unwrap_err();
        let Error::ManifestInvalid { violations, .. } = &err else {
            panic!("{err}");
        };
        assert!(
            violations
                .iter()
                .any(|v| v.path == "/plugin" && v.message.contains("version")),
            "{violations:?}"
        );
        assert!(
            violations.iter().any(|v| v.path == "/limits/fuel"),
            "{violations:?}"
        );
    }

    #[test]
    fn bad_names_risks_and_digests_are_rejected() {
        for (from, to, path) in [
            ("name = \"text\"", "name = \"Text\"", "/plugin/name"),
            ("name = \"text\"", "name = \"a__b\"", "/plugin/name"),
            (DIGEST, "abc", "/plugin/sha256"),
            ("risk = \"read\"", "risk = \"harmless\"", "/tools/0/risk"),
        ] {
            let err = parse(&valid().replace(from, to)).unwrap_err();
            assert!(
                err.violations().iter().any(|v| v.path == path),
                "{to}: {err}"
            );
        }
    }

    #[test]
    fn an_approval_expiry_past_seven_days_or_of_zero_is_rejected() {
        let tool = "name = \"slugify\"";
        assert!(valid().contains(tool));
        for (expiry, ok) in [
            ("1", true),
            ("604_800", true),
            ("0", false),
            ("604_801", false),
            ("9_223_372_036_854_775_807", false),
        ] {
            let text = valid().replacen(tool, &format!("{tool}\napproval_expiry_s = {expiry}"), 1);
            match parse(&text) {
                Ok(m) => assert!(ok, "{expiry} accepted: {:?}", m.tools[1].approval_expiry_s),
                Err(err) => {
                    assert!(!ok, "{expiry}: {err}");
                    assert!(err.to_string().contains("approval_expiry_s"), "{err}");
                }
            }
        }
    }

    #[test]
    fn duplicate_tool_names_are_rejected() {
        let err = parse(&valid().replace("\"slugify\"", "\"stats\"")).unwrap_err();
        assert!(matches!(err, Error::ManifestRejected { .. }), "{err}");
        assert!(err.to_string().contains("`stats` is declared twice"));
    }

    #[test]
    fn component_path_must_stay_inside_the_plugin_directory() {
        for bad in ["../x.wasm", "/etc/passwd", "a/../../x.wasm", "."] {
            let err = parse(&valid().replace("text.wasm", bad)).unwrap_err();
            assert!(
                matches!(err, Error::ManifestRejected { .. }),
                "{bad}: {err}"
            );
        }
        parse(&valid().replace("text.wasm", "build/text.wasm")).unwrap();
    }

    #[test]
    fn http_origins_are_parsed_and_normalised() {
        let text = valid().replace(
            "log = true",
            "log = true\nhttp = [\"HTTPS://API.example.com:443\", \"http://127.0.0.1:8080\"]",
        );
        let m = parse(&text).unwrap();
        let origins: Vec<String> = m
            .capabilities
            .http
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            origins,
            ["https://api.example.com", "http://127.0.0.1:8080"]
        );
    }

    #[test]
    fn malformed_http_origins_are_rejected_at_their_path_with_the_reason() {
        for (origin, reason) in [
            ("https://api.example.com/v1", "has a path (`/v1`)"),
            ("https://api.example.com?q=1", "has a query"),
            ("https://api.example.com#x", "has a fragment"),
            ("https://me@api.example.com", "userinfo"),
            ("https://*.example.com", "wildcard"),
            ("ftp://example.com", "only http and https"),
            ("https://example.com:99999", "between 1 and 65535"),
        ] {
            let text = valid().replace(
                "log = true",
                &format!("log = true\nhttp = [\"https://ok.example.com\", \"{origin}\"]"),
            );
            let err = parse(&text).unwrap_err();
            let Error::ManifestInvalid { violations, .. } = &err else {
                panic!("{origin}: {err}");
            };
            assert_eq!(violations[0].path, "/capabilities/http/1", "{origin}");
            assert!(violations[0].message.contains(origin), "{err}");
            assert!(violations[0].message.contains(reason), "{origin}: {err}");
        }
    }

    #[test]
    fn duplicate_http_origins_are_rejected() {
        let text = valid().replace(
            "log = true",
            "log = true\nhttp = [\"https://api.example.com\", \"https://API.example.com:443\"]",
        );
        let err = parse(&text).unwrap_err();
        assert!(matches!(err, Error::ManifestRejected { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("origin `https://api.example.com` is listed twice"),
            "{err}"
        );
        // Exact duplicates are already caught by the schema.
        let text = valid().replace(
            "log = true",
            "log = true\nhttp = [\"https://a.example\", \"https://a.example\"]",
        );
        let err = parse(&text).unwrap_err();
        assert!(
            err.violations()
                .iter()
                .any(|v| v.path == "/capabilities/http"),
            "{err}"
        );
    }

    #[test]
    fn no_tools_is_invalid() {
        let text = valid();
        let cut = text.find("[[tools]]").unwrap();
        let err = parse(&text[..cut]).unwrap_err();
        assert!(
            err.violations().iter().any(|v| v.message.contains("tools")),
            "{err}"
        );
    }
}
