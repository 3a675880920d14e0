//! Loading a plugin: manifest, pinned component, compiled code, tool list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_audit::text;
use airlock_names::MAX_TOOLS;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::bindings::PluginPre;
use crate::cache::{CacheStatus, CompiledCache};
use crate::engine::{PoolNeeds, SharedEngine};
use crate::error::{LoadError, LoadResult};
use crate::grants::{self, EffectiveGrant, Policy};
use crate::limits::Limits;
use crate::manifest::{MANIFEST_FILE, Manifest, Risk};
use crate::package::{self, Signer};
use crate::pipeline;
use crate::schema;
use crate::state::CallState;

/// Longest tool description kept.
const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Largest component file accepted.
pub(crate) const MAX_COMPONENT_BYTES: u64 = 512 * 1024 * 1024;

/// A loaded plugin: its manifest, pinned component and exposed tools.
pub struct Plugin {
    dir: PathBuf,
    manifest: Manifest,
    digest: String,
    manifest_digest: String,
    /// The manifest's version, shared (metrics labels).
    shared_version: Arc<str>,
    limits: Limits,
    tools: BTreeMap<String, Arc<Tool>>,
    undeclared: Vec<String>,
    cache: CacheStatus,
    grant: EffectiveGrant,
    imports: Vec<String>,
    signer: Option<Signer>,
    /// Signed: the digest of the `cases.jsonl` the signature covers
    /// (`None`: none), which the cases are held to when read later.
    signed_cases: Option<Option<String>>,
    /// Calls of this plugin running at once: `max_concurrency`, or its
    /// share of the host's instance pool when that is smaller.
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    /// How many `slots` there are.
    pub(crate) slots_limit: u64,
    /// The pool share every loaded version of this plugin's name takes
    /// from (`None` on demand): [`SharedEngine::share_gate`].
    pub(crate) share: Option<Arc<tokio::sync::Semaphore>>,
    /// What one instance takes from the host's instance pool.
    pub(crate) pool_needs: PoolNeeds,
    pub(crate) pre: PluginPre<CallState>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.manifest.plugin.name)
            .field("dir", &self.dir)
            .field("digest", &self.digest)
            .field("tools", &self.tools.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.manifest.plugin.name
    }

    /// The plugin's version.
    pub fn version(&self) -> &str {
        &self.manifest.plugin.version
    }

    /// The plugin's version, shared (metrics labels).
    pub(crate) fn shared_version(&self) -> &Arc<str> {
        &self.shared_version
    }

    /// The directory the plugin was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Lowercase hex SHA-256 of the component (checked against the manifest).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Lowercase hex SHA-256 of the manifest file.
    pub fn manifest_digest(&self) -> &str {
        &self.manifest_digest
    }

    /// The limits each call runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the compiled code came from the cache.
    pub fn cache_status(&self) -> CacheStatus {
        self.cache
    }

    /// The tools this plugin exposes (declared in the manifest and exported by
    /// the component), by name.
    pub fn tools(&self) -> impl Iterator<Item = &Tool> {
        self.tools.values().map(|t| &**t)
    }

    /// The exposed tools, shared.
    pub(crate) fn tools_arc(&self) -> impl Iterator<Item = Arc<Tool>> + '_ {
        self.tools.values().cloned()
    }

    /// The exposed tool `name`.
    pub fn tool(&self, name: &str) -> Option<&Arc<Tool>> {
        self.tools.get(name)
    }

    /// The effective grant: manifest ∩ operator policy.
    pub fn grant(&self) -> &EffectiveGrant {
        &self.grant
    }

    /// The interfaces the component imports.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// Tools the component exports that the manifest does not declare. They
    /// are never exposed.
    pub fn undeclared_tools(&self) -> &[String] {
        &self.undeclared
    }

    /// Who signed the plugin (`plugin.sig`): a key of the operator's
    /// `trusted_keys`, by its name, or an untrusted key when signatures are
    /// not required. `None`: not signed.
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }

    /// The plugin's evaluation cases (`cases.jsonl` in its directory),
    /// `None` when it has none. A signed plugin's cases are held to the
    /// digest its signature covers: cases edited since it was loaded are
    /// refused, not evaluated (they decide readiness).
    ///
    /// # Errors
    /// [`CasesError`](crate::CasesError) when the file cannot be read or
    /// parsed, or no longer matches the signature.
    pub fn cases(&self) -> Result<Option<crate::Cases>, crate::CasesError> {
        let path = self.dir.join(package::CASES_FILE);
        let bytes = match crate::Cases::read_bytes(&path) {
            Ok(bytes) => bytes,
            Err(crate::CasesError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                if let Some(Some(_)) = &self.signed_cases {
                    return Err(crate::CasesError::Unsigned {
                        path,
                        reason: "it is gone, but the plugin's signature covers cases".to_owned(),
                    });
                }
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if let Some(signed) = &self.signed_cases {
            let digest = hex::encode(Sha256::digest(&bytes));
            if signed.as_deref() != Some(digest.as_str()) {
                return Err(crate::CasesError::Unsigned {
                    path,
                    reason: match signed {
                        Some(_) => "it changed since the plugin was loaded: its digest is not the one the plugin's signature covers".to_owned(),
                        None => "it appeared after the plugin was loaded: the plugin's signature covers no cases".to_owned(),
                    },
                });
            }
        }
        crate::Cases::from_bytes(bytes).map(Some)
    }
}

/// One tool a plugin exposes.
pub struct Tool {
    /// `plugin/tool`, made once (every call names its tool).
    id: String,
    /// Shared, as the call's metrics labels hold them: a call clones
    /// them rather than copying the text.
    plugin: Arc<str>,
    name: Arc<str>,
    description: String,
    risk: Risk,
    risk_overridden: bool,
    redact: Vec<String>,
    approval_required: bool,
    idempotency_required: bool,
    approval_expiry_s: Option<u64>,
    rate_limit: Option<crate::ratelimit::Rate>,
    retry: Option<crate::manifest::RetryPolicy>,
    input_schema: Value,
    output_schema: Option<Value>,
    pub(crate) input_validator: schema::GuestSchema,
    pub(crate) output_validator: Option<schema::GuestSchema>,
}

#[cfg(feature = "fuzzing")]
impl Tool {
    /// A `read` tool of plugin `fuzz` with only an input schema, compiled
    /// as [`load`] compiles a guest's.
    pub(crate) fn with_input_schema(text: &str) -> Result<Tool, String> {
        let (input_schema, input_validator) = schema::compile_guest_schema(text, true)?;
        Ok(Tool {
            id: "fuzz/tool".to_owned(),
            plugin: "fuzz".into(),
            name: "tool".into(),
            description: String::new(),
            risk: Risk::Read,
            risk_overridden: false,
            redact: Vec::new(),
            approval_required: false,
            idempotency_required: false,
            approval_expiry_s: None,
            rate_limit: None,
            retry: None,
            input_schema,
            output_schema: None,
            input_validator,
            output_validator: None,
        })
    }
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool")
            .field("plugin", &self.plugin)
            .field("name", &self.name)
            .field("risk", &self.risk)
            .finish_non_exhaustive()
    }
}

/// A serializable description of a tool, as `airlock tools list --json`
/// prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ToolInfo {
    /// `plugin/tool`.
    pub id: String,
    /// Plugin name.
    pub plugin: String,
    /// Tool name.
    pub name: String,
    /// What the tool does.
    pub description: String,
    /// Risk class from the manifest.
    pub risk: Risk,
    /// JSON Schema of the arguments.
    pub input_schema: Value,
    /// JSON Schema of the result, if declared.
    pub output_schema: Option<Value>,
}

impl Tool {
    /// `plugin/tool`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The plugin's name and the tool's, shared (metrics labels).
    pub(crate) fn shared_names(&self) -> (&Arc<str>, &Arc<str>) {
        (&self.plugin, &self.name)
    }

    /// The plugin this tool belongs to.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// Tool name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the tool does, as the component describes it.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Risk class: the operator's (policy `risk`) when it gives one, else
    /// the manifest's.
    pub fn risk(&self) -> Risk {
        self.risk
    }

    /// Whether the operator's policy set the risk class.
    pub fn risk_overridden(&self) -> bool {
        self.risk_overridden
    }

    /// Whether the manifest requires approval for every call.
    pub fn approval_required(&self) -> bool {
        self.approval_required
    }

    /// Whether calls must carry an idempotency key.
    pub fn idempotency_required(&self) -> bool {
        self.idempotency_required
    }

    /// The manifest's rate limit for this tool.
    pub fn rate_limit(&self) -> Option<crate::ratelimit::Rate> {
        self.rate_limit
    }

    /// The manifest's retry policy for this tool.
    pub fn retry(&self) -> Option<crate::manifest::RetryPolicy> {
        self.retry
    }

    /// Approval expiry the manifest sets, in seconds.
    pub fn approval_expiry_s(&self) -> Option<u64> {
        self.approval_expiry_s
    }

    /// JSON Pointers redacted from this tool's arguments and results in the
    /// audit log (from the manifest).
    pub fn redact(&self) -> &[String] {
        &self.redact
    }

    /// JSON Schema of the arguments.
    pub fn input_schema(&self) -> &Value {
        &self.input_schema
    }

    /// JSON Schema of the result, if the component declares one.
    pub fn output_schema(&self) -> Option<&Value> {
        self.output_schema.as_ref()
    }

    /// A serializable description.
    pub fn info(&self) -> ToolInfo {
        ToolInfo {
            id: self.id().to_owned(),
            plugin: self.plugin.to_string(),
            name: self.name.to_string(),
            description: self.description.clone(),
            risk: self.risk,
            input_schema: self.input_schema.clone(),
            output_schema: self.output_schema.clone(),
        }
    }
}

/// Load the plugin in `dir`.
pub(crate) async fn load(
    engine: &SharedEngine,
    cache: Option<&CompiledCache>,
    policy: &Policy,
    dir: &Path,
) -> LoadResult<Plugin> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest_text = read_manifest(&manifest_path)?;
    let manifest = Manifest::parse(&manifest_text, &manifest_path)?;
    let manifest_digest = hex::encode(Sha256::digest(manifest_text.as_bytes()));
    let name = manifest.plugin.name.clone();
    let component_path = manifest.component_path(dir);

    let bytes = read_component(&component_path)?;
    let digest = hex::encode(Sha256::digest(&bytes));
    if digest != manifest.plugin.sha256 {
        return Err(LoadError::DigestMismatch {
            path: component_path,
            expected: manifest.plugin.sha256.clone(),
            actual: digest,
        });
    }
    check_header(&bytes).map_err(|reason| LoadError::InvalidComponent {
        path: component_path.clone(),
        reason,
    })?;
    // Signature before compiling: an untrusted component is not compiled.
    let signed = package::check_dir_signature(dir, &manifest, &manifest_digest, &digest, policy)?;
    let (signer, signed_cases) = match signed {
        Some((signer, cases)) => (Some(signer), Some(cases)),
        None => (None, None),
    };

    let compiled = match cache {
        Some(cache) => cache.load_or_compile(engine, &digest, &bytes),
        None => {
            wasmtime::component::Component::new(engine, &bytes).map(|c| (c, CacheStatus::Disabled))
        }
    };
    let (component, cache_status) = compiled.map_err(|e| LoadError::InvalidComponent {
        path: component_path.clone(),
        reason: format!("{e:#}"),
    })?;
    tracing::info!(plugin = %name, digest = %digest, cache = ?cache_status, "component ready");

    // Effective grant, then the imports against it: a component importing
    // an interface it is not granted fails here, by name.
    let grant = grants::effective(&manifest, policy, dir)?;
    let imports: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    grants::check_imports(&name, imports.iter().map(String::as_str), &grant)?;
    let linker = grants::linker(engine, &grant).map_err(|e| LoadError::Engine {
        message: format!("cannot link host interfaces: {e:#}"),
    })?;
    let instance_pre = linker
        .instantiate_pre(&component)
        .map_err(|e| LoadError::WrongWorld {
            plugin: name.clone(),
            reason: format!("{e:#}"),
        })?;
    let pre = PluginPre::new(instance_pre).map_err(|e| LoadError::WrongWorld {
        plugin: name.clone(),
        reason: format!("{e:#}"),
    })?;

    let limits =
        Limits::resolve(&manifest.limits, &policy.limits).map_err(|(limit, asked, ceiling)| {
            LoadError::LimitAboveCeiling {
                plugin: name.clone(),
                limit,
                asked,
                ceiling,
            }
        })?;
    let pool_needs = PoolNeeds::of(&component);
    let slots_limit = engine
        .plugin_share(pool_needs)
        .map_or(limits.max_concurrency.value, |share| {
            limits.max_concurrency.value.min(u64::from(share))
        })
        // The semaphore's own maximum.
        .min(u64::try_from(tokio::sync::Semaphore::MAX_PERMITS).unwrap_or(u64::MAX));
    let descriptors =
        pipeline::run::list_tools(engine, &pre, pool_needs, &limits, &name, &grant).await?;
    let (tools, undeclared) = reconcile(&manifest, descriptors, &policy.risk)?;

    Ok(Plugin {
        dir: dir.to_owned(),
        shared_version: manifest.plugin.version.as_str().into(),
        manifest,
        digest,
        manifest_digest,
        limits,
        tools,
        undeclared,
        cache: cache_status,
        slots: Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(slots_limit).unwrap_or(usize::MAX),
        )),
        slots_limit,
        share: engine.share_gate(&name),
        grant,
        imports,
        signer,
        signed_cases,
        pool_needs,
        pre,
    })
}

/// The manifest at `path`, read under the size a package may hold: a
/// manifest linked to a device or a huge file is refused, not read whole.
pub(crate) fn read_manifest(path: &Path) -> LoadResult<String> {
    let bytes = match package::read_capped(path, package::MAX_MANIFEST_BYTES) {
        Err(LoadError::PackageInvalid { path, message }) => {
            return Err(LoadError::ManifestSyntax { path, message });
        }
        read => read?,
    };
    package::manifest_text(path, bytes)
}

pub(crate) fn read_component(path: &Path) -> LoadResult<Vec<u8>> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LoadError::ComponentMissing {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(LoadError::io(path, e)),
    };
    if !meta.is_file() {
        return Err(LoadError::InvalidComponent {
            path: path.to_owned(),
            reason: "not a regular file".to_owned(),
        });
    }
    check_component_size(path, meta.len())?;
    // Bounded again: the file may have changed since it was measured.
    let bytes =
        package::read_at_most(path, MAX_COMPONENT_BYTES).map_err(|e| LoadError::io(path, e))?;
    check_component_size(path, bytes.len() as u64)?;
    Ok(bytes)
}

/// Refuse a component of `len` bytes over the loader's size limit.
pub(crate) fn check_component_size(path: &Path, len: u64) -> LoadResult<()> {
    if len > MAX_COMPONENT_BYTES {
        return Err(LoadError::InvalidComponent {
            path: path.to_owned(),
            reason: format!("{len} bytes is larger than the limit of {MAX_COMPONENT_BYTES}"),
        });
    }
    Ok(())
}

/// Tell a component from a core module or something else entirely, so the
/// error says what to do.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a WebAssembly binary (bad magic number)".to_owned());
    }
    match &bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(
            "this is a core WebAssembly module, not a component; build for wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
                .to_owned(),
        ),
        other => Err(format!("unsupported WebAssembly version or layer {other:02x?}")),
    }
}

/// Exposed tools by name.
type ExposedTools = BTreeMap<String, Arc<Tool>>;

/// Check the component's tool list against the manifest. Returns the exposed
/// tools and the names of undeclared (hidden) ones.
fn reconcile(
    manifest: &Manifest,
    descriptors: Vec<crate::bindings::exports::airlock::plugin::tools::ToolDescriptor>,
    overrides: &BTreeMap<String, Risk>,
) -> LoadResult<(ExposedTools, Vec<String>)> {
    let plugin = &manifest.plugin.name;
    let shared_plugin: Arc<str> = plugin.as_str().into();
    let invalid = |reason: String| LoadError::InvalidToolList {
        plugin: plugin.clone(),
        reason,
    };
    if descriptors.len() > MAX_TOOLS {
        return Err(invalid(format!(
            "{} tools exported, more than the limit of {MAX_TOOLS}",
            descriptors.len()
        )));
    }
    let mut exported = BTreeMap::new();
    for d in descriptors {
        if !airlock_names::is_valid_tool_name(&d.name) {
            return Err(invalid(format!(
                "tool name {:?} is not lowercase letters, digits, `-` and `_` (starting with a letter, at most 64 bytes, no `__`)",
                text::prefix(&d.name, 80)
            )));
        }
        if exported.contains_key(&d.name) {
            return Err(invalid(format!("tool `{}` is exported twice", d.name)));
        }
        exported.insert(d.name.clone(), d);
    }

    let mut tools = BTreeMap::new();
    // Regular expressions of all the schemas: bounded for the plugin, not
    // only each schema, since a plugin has up to MAX_TOOLS tools.
    let mut patterns = 0;
    for declared in &manifest.tools {
        let Some(d) = exported.remove(&declared.name) else {
            return Err(LoadError::ToolNotExported {
                plugin: plugin.clone(),
                tool: declared.name.clone(),
            });
        };
        let (input_schema, input_validator) =
            schema::compile_guest_schema(&d.input_schema, true)
                .map_err(|e| invalid(format!("tool `{}`: input {e}", d.name)))?;
        let (output_schema, output_validator) = match &d.output_schema {
            Some(text) => {
                let (s, v) = schema::compile_guest_schema(text, false)
                    .map_err(|e| invalid(format!("tool `{}`: output {e}", d.name)))?;
                (Some(s), Some(v))
            }
            None => (None, None),
        };
        patterns +=
            input_validator.patterns() + output_validator.as_ref().map_or(0, |v| v.patterns());
        if patterns > schema::MAX_PATTERNS {
            return Err(invalid(format!(
                "the tools' schemas hold more than {} regular expressions (`pattern`, `patternProperties`) in all, through tool `{}`",
                schema::MAX_PATTERNS,
                d.name
            )));
        }
        let rate_limit = declared
            .rate_limit
            .as_deref()
            .map(crate::ratelimit::Rate::parse)
            .transpose()
            .map_err(|e| invalid(format!("tool `{}`: {e}", d.name)))?;
        if let Some(retry) = &declared.retry {
            retry
                .check()
                .map_err(|e| invalid(format!("tool `{}`: {e}", d.name)))?;
        }
        let overridden = overrides.get(&format!("{plugin}/{}", d.name)).copied();
        tools.insert(
            d.name.clone(),
            Arc::new(Tool {
                id: format!("{plugin}/{}", d.name),
                plugin: Arc::clone(&shared_plugin),
                description: text::prefix(&d.description, MAX_DESCRIPTION_BYTES).to_owned(),
                name: d.name.into(),
                risk_overridden: overridden.is_some(),
                risk: overridden.unwrap_or(declared.risk),
                redact: declared.redact.clone(),
                approval_required: declared.approval.is_some(),
                idempotency_required: declared.idempotency.is_some(),
                approval_expiry_s: declared.approval_expiry_s,
                rate_limit,
                retry: declared.retry,
                input_schema,
                output_schema,
                input_validator,
                output_validator,
            }),
        );
    }
    let undeclared: Vec<String> = exported.into_keys().collect();
    if !undeclared.is_empty() {
        tracing::info!(plugin = %plugin, tools = ?undeclared, "component exports tools the manifest does not declare; they are not exposed");
    }
    Ok((tools, undeclared))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_apart() {
        assert!(check_header(b"hello world").unwrap_err().contains("magic"));
        assert!(
            check_header(b"\0asm\x01\0\0\0")
                .unwrap_err()
                .contains("core WebAssembly module")
        );
        check_header(b"\0asm\x0d\0\x01\0").unwrap();
    }
}
