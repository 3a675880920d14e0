//! The MCP view of the host's tools: names, schemas and annotations.
//!
//! # Names
//! The tool `plugin/tool` is the MCP tool `plugin__tool`. Plugin and tool
//! names are lowercase letters, digits, `-` and `_`, start with a letter and
//! never contain `__` (the runtime enforces this at load), so the mapping is
//! stable and cannot collide. It is checked anyway: a tool whose MCP name
//! would break MCP's name rules (1–128 characters from `A-Z a-z 0-9 _ - .`)
//! or collide with another's is left out, with a warning naming it and why.

use std::collections::BTreeMap;
use std::sync::Arc;

use airlock_host::{Risk, Tool};
use rmcp::model::{JsonObject, ToolAnnotations};
use serde_json::Value;

/// Separator between plugin and tool in an MCP tool name.
pub const NAME_SEPARATOR: &str = "__";
/// Longest MCP tool name.
pub const MAX_NAME_LEN: usize = 128;

/// The MCP name of the tool `plugin/tool`: `plugin__tool`.
pub fn mcp_tool_name(plugin: &str, tool: &str) -> String {
    format!("{plugin}{NAME_SEPARATOR}{tool}")
}

/// Whether `name` follows MCP's tool name rules.
pub fn valid_mcp_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// MCP annotations for a risk class. They are hints for clients deciding
/// what to confirm with a user, so each errs on the side of more caution:
///
/// | risk | readOnly | destructive | idempotent | openWorld |
/// | --- | --- | --- | --- | --- |
/// | `read` | true | false | true | false |
/// | `write` | false | true | false | false |
/// | `external` | false | true | false | true |
/// | `irreversible` | false | true | false | true |
///
/// `write` is marked destructive because the class does not promise
/// additive-only changes (deleting a workspace key is a `write`); what sets
/// it apart from `external` and `irreversible` is that it changes only state
/// the host owns (`openWorldHint = false`). `irreversible` — the class of a
/// tool whose manifest says nothing — is assumed to reach the world.
pub fn annotations(risk: Risk) -> ToolAnnotations {
    let (read_only, destructive, idempotent, open_world) = match risk {
        Risk::Read => (true, false, true, false),
        Risk::Write => (false, true, false, false),
        Risk::External | Risk::Irreversible => (false, true, false, true),
    };
    ToolAnnotations::new()
        .read_only(read_only)
        .destructive(destructive)
        .idempotent(idempotent)
        .open_world(open_world)
}

/// One tool as MCP clients see it.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    /// The host's tool.
    pub tool: Arc<Tool>,
    /// Whether results carry `structuredContent` (the tool declares an
    /// object output schema).
    pub structured: bool,
    /// The MCP tool definition.
    pub definition: rmcp::model::Tool,
}

/// A tool left out of the catalog, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusion {
    /// `plugin/tool`.
    pub tool: String,
    /// Why it is not served.
    pub reason: String,
}

/// Something an operator should know about one tool of a catalog (a tool
/// left out, a schema not served as declared). The catalog does not log
/// it: [`crate::McpServer`] logs each once per loaded plugin version, since
/// catalogs are rebuilt whenever the served plugins change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogWarning {
    /// The plugin's name.
    pub plugin: String,
    /// `plugin/tool`.
    pub tool: String,
    /// What is wrong.
    pub message: String,
}

/// Every served tool by MCP name, built from a snapshot of the host's
/// tools.
#[derive(Debug, Default)]
pub struct Catalog {
    entries: BTreeMap<String, CatalogEntry>,
    excluded: Vec<Exclusion>,
    warnings: Vec<CatalogWarning>,
}

impl Catalog {
    /// Build the catalog for `tools`, with a warning (see
    /// [`Catalog::warnings`]) for each tool left out and each output schema
    /// omitted.
    pub fn build(tools: &[Arc<Tool>]) -> Catalog {
        let mut by_name: BTreeMap<String, Vec<&Arc<Tool>>> = BTreeMap::new();
        for tool in tools {
            by_name
                .entry(mcp_tool_name(tool.plugin(), tool.name()))
                .or_default()
                .push(tool);
        }
        let mut catalog = Catalog::default();
        for (name, same) in by_name {
            if same.len() > 1 {
                let ids: Vec<String> = same.iter().map(|t| t.id()).collect();
                for tool in &same {
                    catalog.exclude(
                        tool,
                        format!("its MCP name `{name}` is shared by {}", ids.join(", ")),
                    );
                }
                continue;
            }
            let tool = same[0];
            if !valid_mcp_name(&name) {
                catalog.exclude(
                    tool,
                    format!(
                        "its MCP name `{name}` breaks MCP's tool name rules (1-{MAX_NAME_LEN} characters from A-Z a-z 0-9 _ - .)"
                    ),
                );
                continue;
            }
            let Some(input) = object_schema(tool.input_schema()) else {
                catalog.exclude(
                    tool,
                    "its input schema is not a JSON Schema of type object, which MCP requires"
                        .to_owned(),
                );
                continue;
            };
            let output = match tool.output_schema() {
                Some(schema) => {
                    let object = object_schema(schema);
                    if object.is_none() {
                        catalog.warn(
                            tool,
                            "output schema not served: MCP requires an output schema of type object; results carry text content only".to_owned(),
                        );
                    }
                    object
                }
                None => None,
            };
            let mut definition = rmcp::model::Tool::new_with_raw(
                name.clone(),
                Some(tool.description().to_owned().into()),
                Arc::new(input),
            )
            .with_annotations(annotations(tool.risk()));
            let structured = output.is_some();
            if let Some(output) = output {
                definition = definition.with_raw_output_schema(Arc::new(output));
            }
            let mut meta = JsonObject::new();
            meta.insert("airlock/tool".into(), Value::String(tool.id()));
            meta.insert(
                "airlock/risk".into(),
                Value::String(tool.risk().as_str().to_owned()),
            );
            definition = definition.with_meta(meta.into());
            catalog.entries.insert(
                name,
                CatalogEntry {
                    tool: Arc::clone(tool),
                    structured,
                    definition,
                },
            );
        }
        catalog
    }

    fn exclude(&mut self, tool: &Tool, reason: String) {
        self.warn(tool, format!("tool not served over MCP: {reason}"));
        self.excluded.push(Exclusion {
            tool: tool.id(),
            reason,
        });
    }

    fn warn(&mut self, tool: &Tool, message: String) {
        self.warnings.push(CatalogWarning {
            plugin: tool.plugin().to_owned(),
            tool: tool.id(),
            message,
        });
    }

    /// What an operator should know about this catalog's tools.
    pub fn warnings(&self) -> &[CatalogWarning] {
        &self.warnings
    }

    /// The tool served as `name`.
    pub fn get(&self, name: &str) -> Option<&CatalogEntry> {
        self.entries.get(name)
    }

    /// Every served tool, by MCP name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &CatalogEntry)> {
        self.entries
            .iter()
            .map(|(name, entry)| (name.as_str(), entry))
    }

    /// The MCP tool definitions, by name.
    pub fn definitions(&self) -> Vec<rmcp::model::Tool> {
        self.entries
            .values()
            .map(|e| e.definition.clone())
            .collect()
    }

    /// Tools left out, and why.
    pub fn excluded(&self) -> &[Exclusion] {
        &self.excluded
    }

    /// Whether `other` serves exactly the same definitions.
    pub fn same_tools(&self, other: &Catalog) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|((a, x), (b, y))| a == b && x.definition == y.definition)
    }
}

/// `schema` as a JSON object if it is a schema of type object.
fn object_schema(schema: &Value) -> Option<JsonObject> {
    let object = schema.as_object()?;
    (object.get("type") == Some(&Value::String("object".into()))).then(|| object.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_mcp_rules() {
        assert_eq!(
            mcp_tool_name("text", "regex-extract"),
            "text__regex-extract"
        );
        assert!(valid_mcp_name("text__regex-extract"));
        assert!(!valid_mcp_name(""));
        assert!(!valid_mcp_name("a/b"));
        assert!(!valid_mcp_name(&"a".repeat(129)));
        assert!(valid_mcp_name(&"a".repeat(128)));
    }

    #[test]
    fn annotations_follow_the_risk_class() {
        let read = annotations(Risk::Read);
        assert_eq!(read.read_only_hint, Some(true));
        assert_eq!(read.open_world_hint, Some(false));
        let write = annotations(Risk::Write);
        assert_eq!(write.read_only_hint, Some(false));
        assert_eq!(write.destructive_hint, Some(true));
        assert_eq!(write.open_world_hint, Some(false));
        for risk in [Risk::External, Risk::Irreversible] {
            let a = annotations(risk);
            assert_eq!(a.read_only_hint, Some(false));
            assert_eq!(a.destructive_hint, Some(true));
            assert_eq!(a.idempotent_hint, Some(false));
            assert_eq!(a.open_world_hint, Some(true));
        }
    }

    #[test]
    fn only_object_schemas_are_served() {
        assert!(object_schema(&serde_json::json!({"type": "object"})).is_some());
        assert!(object_schema(&serde_json::json!({"type": "string"})).is_none());
        assert!(object_schema(&serde_json::json!(true)).is_none());
        assert!(object_schema(&serde_json::json!({"anyOf": []})).is_none());
    }
}
