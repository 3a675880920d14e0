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
    /// output schema).
    pub structured: bool,
    /// Whether the output schema is not an object schema and is served
    /// wrapped ([`wrap_output_schema`]): `structuredContent` is then
    /// `{"result": output}`.
    pub wrapped: bool,
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
                let ids: Vec<String> = same.iter().map(|t| t.id().to_owned()).collect();
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
            let Some(input) = object_schema(&standard_schema(tool.input_schema())) else {
                catalog.exclude(
                    tool,
                    "its input schema is not a JSON Schema of type object, which MCP requires"
                        .to_owned(),
                );
                continue;
            };
            let (output, wrapped) = match tool.output_schema().map(standard_schema) {
                Some(schema) => match object_schema(&schema) {
                    Some(object) => (Some(object), false),
                    None => (Some(wrap_output_schema(&schema)), true),
                },
                None => (None, false),
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
            meta.insert("airlock/tool".into(), Value::String(tool.id().to_owned()));
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
                    wrapped,
                    definition,
                },
            );
        }
        catalog
    }

    fn exclude(&mut self, tool: &Tool, reason: String) {
        self.warn(tool, format!("tool not served over MCP: {reason}"));
        self.excluded.push(Exclusion {
            tool: tool.id().to_owned(),
            reason,
        });
    }

    fn warn(&mut self, tool: &Tool, message: String) {
        self.warnings.push(CatalogWarning {
            plugin: tool.plugin().to_owned(),
            tool: tool.id().to_owned(),
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

/// The `format` values JSON Schema 2020-12 defines (its format vocabulary,
/// section 7.3 of the validation spec).
pub const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// `schema` as clients get it: plain JSON Schema 2020-12, every `format`
/// that standard does not define removed from every subschema (the Rust
/// SDK's derive marks integers `uint64`, `int32`… and floats `double`,
/// which clients validating against the standard warn about on every
/// listing). Bounds such as `minimum: 0` stay, and `format` as a property
/// name or inside `const`/`enum`/`default` values is data, left alone.
/// The host validates arguments against the schema as the plugin declared
/// it; unknown formats never constrained that validation.
pub fn standard_schema(schema: &Value) -> Value {
    use schemars::transform::Transform as _;
    let Ok(mut parsed) = schemars::Schema::try_from(schema.clone()) else {
        return schema.clone();
    };
    let mut restrict = schemars::transform::RestrictFormats::default();
    restrict.infer_from_meta_schema = false;
    restrict.allowed_formats.extend(
        STANDARD_FORMATS
            .iter()
            .map(|f| std::borrow::Cow::Borrowed(*f)),
    );
    restrict.transform(&mut parsed);
    parsed.to_value()
}

/// The key a wrapped output goes under.
pub const WRAPPED_RESULT: &str = "result";

/// An output schema that is not an object schema (an array, a string, a
/// union...) as the object schema MCP requires:
/// `{"type": "object", "properties": {"result": schema}, "required":
/// ["result"]}`. Definitions (`$defs`, `definitions`) and `$schema` move to
/// the wrapper's root so `#/$defs/...` references still resolve; any other
/// reference into the schema (`#`, `#/items`) gets the `#/properties/result`
/// prefix.
pub fn wrap_output_schema(schema: &Value) -> JsonObject {
    let mut inner = schema.clone();
    let mut root = JsonObject::new();
    if let Value::Object(object) = &mut inner {
        for key in ["$schema", "$defs", "definitions"] {
            if let Some(value) = object.remove(key) {
                root.insert(key.into(), value);
            }
        }
    }
    rebase_refs(&mut inner);
    root.insert("type".into(), Value::String("object".into()));
    let mut properties = JsonObject::new();
    properties.insert(WRAPPED_RESULT.into(), inner);
    root.insert("properties".into(), Value::Object(properties));
    root.insert("required".into(), serde_json::json!([WRAPPED_RESULT]));
    root
}

/// Point local references that are not into the hoisted definitions at the
/// schema's new place.
fn rebase_refs(value: &mut Value) {
    match value {
        Value::Object(object) => {
            for (key, item) in object.iter_mut() {
                if key == "$ref"
                    && let Value::String(target) = item
                    && (target == "#" || target.starts_with("#/"))
                    && !target.starts_with("#/$defs/")
                    && !target.starts_with("#/definitions/")
                {
                    *target = format!("#/properties/{WRAPPED_RESULT}{}", &target[1..]);
                } else {
                    rebase_refs(item);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rebase_refs),
        _ => {}
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
    fn a_non_object_output_schema_is_wrapped_with_its_definitions_at_the_root() {
        let schema = serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": {"Note": {"type": "object", "properties": {"next": {"$ref": "#"}}}},
            "type": "array",
            "items": {"$ref": "#/$defs/Note"},
            "maxItems": 10,
        });
        let wrapped = Value::Object(wrap_output_schema(&schema));
        assert_eq!(
            wrapped,
            serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$defs": {"Note": {"type": "object", "properties": {"next": {"$ref": "#"}}}},
                "type": "object",
                "properties": {"result": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/Note"},
                    "maxItems": 10,
                }},
                "required": ["result"],
            })
        );
        let union = serde_json::json!({"anyOf": [{"type": "string"}, {"type": "array", "items": {"$ref": "#/anyOf/0"}}]});
        let wrapped = Value::Object(wrap_output_schema(&union));
        assert_eq!(
            wrapped["properties"]["result"]["anyOf"][1]["items"]["$ref"],
            "#/properties/result/anyOf/0"
        );
    }

    #[test]
    fn only_standard_formats_are_served() {
        let schema = serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "n": {"type": "integer", "format": "uint64", "minimum": 0},
                "small": {"type": "integer", "format": "uint8", "minimum": 0, "maximum": 255},
                "when": {"type": "string", "format": "date-time"},
                "id": {"type": "string", "format": "uuid"},
                "format": {"type": "string", "const": {"format": "uint"}},
                "list": {"type": "array", "items": {"type": "number", "format": "double"}},
                "either": {"anyOf": [{"type": "integer", "format": "int32"}, {"type": "null"}]},
                "ref": {"$ref": "#/$defs/Count"},
            },
            "$defs": {"Count": {"type": "integer", "format": "uint16", "minimum": 0}},
        });
        let served = standard_schema(&schema);
        let p = &served["properties"];
        assert_eq!(p["n"], serde_json::json!({"type": "integer", "minimum": 0}));
        assert_eq!(
            p["small"],
            serde_json::json!({"type": "integer", "minimum": 0, "maximum": 255})
        );
        assert_eq!(p["when"]["format"], "date-time");
        assert_eq!(p["id"]["format"], "uuid");
        // A property named `format`, and data that looks like a schema,
        // are not schema keywords.
        assert_eq!(p["format"]["const"], serde_json::json!({"format": "uint"}));
        assert!(p["list"]["items"].get("format").is_none());
        assert!(p["either"]["anyOf"][0].get("format").is_none());
        assert!(served["$defs"]["Count"].get("format").is_none());
        assert_eq!(served["$defs"]["Count"]["minimum"], 0);
        // Not a schema at all: served as it is (the catalog refuses it).
        assert_eq!(standard_schema(&serde_json::json!(3)), serde_json::json!(3));
        assert_eq!(
            standard_schema(&serde_json::json!(true)),
            serde_json::json!(true)
        );
    }

    /// Every `format` in `schema`'s subschemas (not in data).
    fn formats(schema: &Value, found: &mut Vec<String>) {
        let Value::Object(object) = schema else {
            if let Value::Array(items) = schema {
                items.iter().for_each(|i| formats(i, found));
            }
            return;
        };
        for (key, value) in object {
            match key.as_str() {
                "format" => {
                    if let Value::String(f) = value {
                        found.push(f.clone());
                    }
                }
                "const" | "enum" | "default" | "examples" => {}
                "properties" | "$defs" | "definitions" | "patternProperties" => {
                    if let Value::Object(map) = value {
                        map.values().for_each(|v| formats(v, found));
                    }
                }
                _ => formats(value, found),
            }
        }
    }

    #[tokio::test]
    async fn every_example_plugin_is_listed_with_standard_formats_only() {
        let host = airlock_host::Host::new(airlock_host::HostConfig::default()).unwrap();
        let report = host
            .load_plugins_dir(airlock_tests::PLUGINS_DIR)
            .await
            .unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        let catalog = Catalog::build(&host.tools());
        assert_eq!(
            catalog.entries().count(),
            airlock_tests::EXAMPLE_TOOLS.len()
        );
        let mut integers = 0;
        for (name, entry) in catalog.entries() {
            let definition = serde_json::to_value(&entry.definition).unwrap();
            for key in ["inputSchema", "outputSchema"] {
                let mut found = Vec::new();
                formats(&definition[key], &mut found);
                for format in found {
                    assert!(
                        STANDARD_FORMATS.contains(&format.as_str()),
                        "{name} {key}: format `{format}`"
                    );
                }
                integers += definition[key].to_string().matches("\"minimum\":0").count();
            }
        }
        // The unsigned integers keep their bound.
        assert!(integers > 0);
    }

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
