//! A security reviewer's report on one plugin: what the component imports
//! and exports next to what its manifest declares and what it is
//! effectively granted.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::LoadError;
use crate::grants::{self, Capability, EffectiveGrant, ImportClass};
use crate::host::Host;
use crate::limits::Limits;
use crate::manifest::{MANIFEST_FILE, Manifest, Risk};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a reviewer's attention (over-privilege).
    Warning,
    /// The plugin does not load.
    Error,
}

/// One observation about the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How serious.
    pub severity: Severity,
    /// What was found.
    pub message: String,
}

/// One imported interface and how the host treats it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Interface name, with version.
    pub interface: String,
    /// `baseline`, `granted`, `not_granted`, `never` or `unknown`.
    pub status: &'static str,
    /// The capability that gates or shapes it, if any.
    pub capability: Option<Capability>,
}

/// One capability: declared, effective, used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapabilityReport {
    /// The capability.
    pub capability: Capability,
    /// Its manifest key.
    pub key: &'static str,
    /// Whether the manifest declares it.
    pub declared: bool,
    /// Whether it is effectively granted (manifest ∩ policy).
    pub granted: bool,
    /// Whether the component imports an interface it affects.
    pub imported: bool,
}

/// One tool: declared in the manifest and/or exported by the component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolReport {
    /// Tool name.
    pub name: String,
    /// Risk class from the manifest (absent: not declared).
    pub risk: Option<Risk>,
    /// Exposed to callers (declared and exported).
    pub exposed: bool,
    /// Exported but not declared: hidden.
    pub hidden: bool,
}

/// The full report.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// Plugin name.
    pub plugin: String,
    /// Version.
    pub version: String,
    /// The manifest file.
    pub manifest: PathBuf,
    /// SHA-256 the manifest pins.
    pub sha256: String,
    /// Who signed the plugin (`plugin.sig`), when it is signed and the
    /// signature verifies.
    pub signer: Option<crate::Signer>,
    /// The component's imports.
    pub imports: Vec<ImportReport>,
    /// The component's exports.
    pub exports: Vec<String>,
    /// Every capability.
    pub capabilities: Vec<CapabilityReport>,
    /// The effective grant, when the policy allows the manifest.
    pub effective_grant: Option<EffectiveGrant>,
    /// Tools.
    pub tools: Vec<ToolReport>,
    /// Limits with their sources, when they are within the policy.
    pub limits: Option<Limits>,
    /// Errors and warnings.
    pub findings: Vec<Finding>,
}

impl InspectReport {
    /// Whether any finding is an error (the plugin does not load).
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Whether `interface` (versioned) is one whose presence or behaviour
/// `capability` controls.
fn affected(capability: Capability, interface: &str) -> bool {
    let name = unversioned(interface);
    capability.interfaces().any(|i| i == name)
}

/// The names a component imports and exports (its own, not those of the
/// components and modules inside it), once it validates as a component.
fn component_names(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    use wasmparser::{Parser, Payload, Validator};
    if !Parser::is_component(bytes) {
        return Err("not a WebAssembly component (a core module or other bytes)".to_owned());
    }
    // wasmparser's default features, a superset of the engine's (which
    // wasmtime keeps to itself): what the engine refuses beyond them, the
    // load that follows a clean report says.
    Validator::new()
        .validate_all(bytes)
        .map_err(|e| e.to_string())?;
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    // Nested modules and components come through the same iterator, each
    // from its `Version` to its `End`.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| e.to_string())? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    imports.push(import.map_err(|e| e.to_string())?.name.0.to_owned());
                }
            }
            Payload::ComponentExportSection(section) if depth == 1 => {
                for export in section {
                    exports.push(export.map_err(|e| e.to_string())?.name.0.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

fn unversioned(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

impl Host {
    /// Inspect the plugin in `dir` without adding it to the host.
    ///
    /// # Errors
    /// Only when there is nothing to report on: the manifest cannot be read
    /// or parsed, or the component cannot be read or compiled. Everything
    /// else — digest mismatch, imports not granted, policy refusals, tool
    /// list problems — is a [`Finding`] in the report.
    pub async fn inspect(&self, dir: impl AsRef<Path>) -> crate::Result<InspectReport> {
        let dir = dir.as_ref();
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest_text = crate::plugin::read_manifest(&manifest_path)?;
        let manifest = Manifest::parse(&manifest_text, &manifest_path)?;
        let manifest_digest = hex::encode(Sha256::digest(manifest_text.as_bytes()));
        let component_path = manifest.component_path(dir);
        // The loader's own read: a regular file within the size limit, so a
        // hostile plugin directory (a FIFO, /dev/zero, a huge file) is refused
        // here too instead of hanging or exhausting memory.
        let bytes = crate::plugin::read_component(&component_path)?;
        let mut findings = Vec::new();
        let digest = hex::encode(Sha256::digest(&bytes));
        if digest != manifest.plugin.sha256 {
            findings.push(Finding {
                severity: Severity::Error,
                message: format!(
                    "component sha256 is {digest}, but the manifest pins {}",
                    manifest.plugin.sha256
                ),
            });
        }
        let policy = &self.config().policy;
        let signer = match crate::package::check_dir_signature(
            dir,
            &manifest,
            &manifest_digest,
            &digest,
            policy,
        ) {
            Ok(signed) => signed.map(|(signer, _)| signer),
            Err(e) => {
                findings.push(Finding {
                    severity: Severity::Error,
                    message: e.to_string(),
                });
                None
            }
        };
        if let Some(signer) = signer.as_ref().filter(|s| !s.is_trusted()) {
            findings.push(Finding {
                severity: Severity::Warning,
                message: format!(
                    "signed by {}, {}",
                    signer.key(),
                    crate::package::why_untrusted(policy, signer.key())
                ),
            });
        }
        // Validated and read, not compiled: a component whose digest or
        // signature failed is never handed to the compiler (loading it
        // below happens only when nothing is wrong).
        let (import_names, exports) =
            component_names(&bytes).map_err(|reason| LoadError::InvalidComponent {
                path: component_path.clone(),
                reason,
            })?;

        let grant = match grants::effective(&manifest, policy, dir) {
            Ok(grant) => Some(grant),
            Err(e) => {
                findings.push(Finding {
                    severity: Severity::Error,
                    message: e.to_string(),
                });
                None
            }
        };
        let empty = EffectiveGrant::default();
        let effective = grant.as_ref().unwrap_or(&empty);

        let imports: Vec<ImportReport> = import_names
            .iter()
            .map(|interface| {
                let class = grants::classify(interface);
                let (status, capability) = match class {
                    ImportClass::Baseline => (
                        "baseline",
                        Capability::ALL
                            .into_iter()
                            .find(|c| affected(*c, interface)),
                    ),
                    ImportClass::Gated(c) if effective.has(c) => ("granted", Some(c)),
                    ImportClass::Gated(c) => ("not_granted", Some(c)),
                    ImportClass::Never => ("never", None),
                    ImportClass::Unknown => ("unknown", None),
                };
                ImportReport {
                    interface: interface.clone(),
                    status,
                    capability,
                }
            })
            .collect();
        for import in &imports {
            let message = match (import.status, import.capability) {
                ("not_granted", Some(c)) => format!(
                    "imports {} but is not granted it (set `{}`)",
                    import.interface,
                    c.grant_example()
                ),
                ("never", _) => format!(
                    "imports {}, which is never available to plugins",
                    import.interface
                ),
                ("unknown", _) => format!(
                    "imports {}, which this host does not provide",
                    import.interface
                ),
                _ => continue,
            };
            findings.push(Finding {
                severity: Severity::Error,
                message,
            });
        }

        let caps = &manifest.capabilities;
        let capabilities: Vec<CapabilityReport> = Capability::ALL
            .into_iter()
            .map(|capability| {
                let declared = capability.declared(caps);
                let imported = import_names.iter().any(|i| affected(capability, i));
                CapabilityReport {
                    capability,
                    key: capability.manifest_key(),
                    declared,
                    granted: grant.as_ref().is_some_and(|g| g.has(capability)),
                    imported,
                }
            })
            .collect();
        for c in &capabilities {
            if c.granted && !c.imported {
                findings.push(Finding {
                    severity: Severity::Warning,
                    message: format!(
                        "`{}` is granted but the component never uses it (over-privilege)",
                        c.key
                    ),
                });
            }
        }
        if let Some(g) = &grant {
            let writes = g.write_capable();
            if !writes.is_empty() {
                for t in &manifest.tools {
                    let id = format!("{}/{}", manifest.plugin.name, t.name);
                    let risk = policy.risk.get(&id).copied().unwrap_or(t.risk);
                    if risk == Risk::Read {
                        findings.push(Finding {
                            severity: Severity::Warning,
                            message: format!(
                                "tool `{}` is declared `read` but its plugin holds write-capable grants ({}): it gets no approval or flushed intent by its class unless the operator sets its risk (policy `risk`); read-only mode narrows those grants to reading",
                                t.name,
                                writes.join(", ")
                            ),
                        });
                    }
                }
            }
            for name in &g.env_missing {
                findings.push(Finding {
                    severity: Severity::Warning,
                    message: format!("env `{name}` is declared but the operator provides no value; the guest will not see it"),
                });
            }
        }

        let limits = match Limits::resolve(&manifest.limits, &policy.limits) {
            Ok(limits) => Some(limits),
            Err((limit, asked, ceiling)) => {
                findings.push(Finding {
                    severity: Severity::Error,
                    message: format!(
                        "{limit} = {asked} is above the ceiling of {ceiling} (the operator sets ceilings in [policy.limits])"
                    ),
                });
                None
            }
        };

        // Tools need the component to run; only do that if nothing above
        // already stops it from loading.
        let mut tools: Vec<ToolReport> = manifest
            .tools
            .iter()
            .map(|t| ToolReport {
                name: t.name.clone(),
                risk: Some(t.risk),
                exposed: false,
                hidden: false,
            })
            .collect();
        if findings.iter().all(|f| f.severity != Severity::Error) {
            match crate::plugin::load(self.engine(), self.cache(), policy, dir).await {
                Ok(plugin) => {
                    for tool in &mut tools {
                        tool.exposed = plugin.tool(&tool.name).is_some();
                    }
                    for hidden in plugin.undeclared_tools() {
                        tools.push(ToolReport {
                            name: hidden.clone(),
                            risk: None,
                            exposed: false,
                            hidden: true,
                        });
                        findings.push(Finding {
                            severity: Severity::Warning,
                            message: format!("tool `{hidden}` is exported but not declared; it is hidden from callers"),
                        });
                    }
                }
                Err(e) => findings.push(Finding {
                    severity: Severity::Error,
                    message: e.to_string(),
                }),
            }
        }
        findings.sort_by_key(|f| std::cmp::Reverse(f.severity));

        Ok(InspectReport {
            plugin: manifest.plugin.name.clone(),
            version: manifest.plugin.version.clone(),
            manifest: manifest_path,
            sha256: manifest.plugin.sha256.clone(),
            signer,
            imports,
            exports,
            capabilities,
            effective_grant: grant,
            tools,
            limits,
            findings,
        })
    }
}
