//! JSON Schema helpers shared by manifests, tool arguments and tool results.

use serde_json::Value;

use crate::error::SchemaViolation;

/// Largest schema text a guest may declare for one tool.
pub(crate) const MAX_SCHEMA_BYTES: usize = 256 * 1024;

/// Most violations reported for one document; the rest are summarised.
const MAX_VIOLATIONS: usize = 64;

/// Every place where `instance` fails `validator`, capped at
/// [`MAX_VIOLATIONS`] entries (a final entry says how many were left out).
pub(crate) fn violations(
    validator: &jsonschema::Validator,
    instance: &Value,
) -> Vec<SchemaViolation> {
    let mut out = Vec::new();
    let mut omitted = 0usize;
    for error in validator.iter_errors(instance) {
        if out.len() < MAX_VIOLATIONS {
            out.push(SchemaViolation {
                path: error.instance_path().to_string(),
                message: error.to_string(),
            });
        } else {
            omitted += 1;
        }
    }
    if omitted > 0 {
        out.push(SchemaViolation {
            path: String::new(),
            message: format!("{omitted} more violations not shown"),
        });
    }
    out
}

/// Compile a schema supplied by a guest.
///
/// # Security
/// The text comes from untrusted plugin code: its size is capped, and the
/// crate is built without remote or file `$ref` resolution, so compiling a
/// schema never touches the network or the file system. `pattern` and
/// `patternProperties` are matched by the linear-time `regex` engine, not
/// the backtracking one: validation runs on the host, outside any fuel or
/// deadline, and a backtracking pattern (`^(a|a)*(?=b)$`) cost about a
/// million steps for each string it was tried on. Lookaround and
/// backreferences are therefore refused when the plugin loads.
pub(crate) fn compile_guest_schema(
    text: &str,
    require_object: bool,
) -> Result<(Value, jsonschema::Validator), String> {
    if text.len() > MAX_SCHEMA_BYTES {
        return Err(format!(
            "schema is {} bytes, more than the limit of {MAX_SCHEMA_BYTES}",
            text.len()
        ));
    }
    let schema: Value =
        serde_json::from_str(text).map_err(|e| format!("schema is not JSON: {e}"))?;
    if !(schema.is_object() || schema.is_boolean()) {
        return Err("schema must be a JSON object".to_owned());
    }
    if require_object && schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err("input schema must have `\"type\": \"object\"` at its root".to_owned());
    }
    let validator = jsonschema::options()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(&schema)
        .map_err(|e| format!("schema does not compile: {e}"))?;
    Ok((schema, validator))
}

/// The JSON type name of `value`, for error messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_schemas_are_checked() {
        assert!(
            compile_guest_schema("{", true)
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(
            compile_guest_schema("[]", true)
                .unwrap_err()
                .contains("JSON object")
        );
        assert!(
            compile_guest_schema(r#"{"type":"string"}"#, true)
                .unwrap_err()
                .contains("type")
        );
        assert!(
            compile_guest_schema(r#"{"type":"object","minLength":"x"}"#, true)
                .unwrap_err()
                .contains("compile")
        );
        compile_guest_schema(r#"{"type":"string"}"#, false).unwrap();
        let big = format!(
            r#"{{"type":"object","description":"{}"}}"#,
            "x".repeat(MAX_SCHEMA_BYTES)
        );
        assert!(
            compile_guest_schema(&big, true)
                .unwrap_err()
                .contains("limit")
        );
    }

    /// Found with the `tool_arguments` fuzz target, by a hand-made input
    /// (`fuzz/regressions/tool_arguments/`): with the
    /// backtracking engine, each string matched against this pattern cost
    /// a million steps of host CPU, outside fuel and deadline; 40 strings
    /// in the arguments kept the host busy for most of a minute.
    #[test]
    fn guest_schema_with_backtracking_pattern_cannot_stall_argument_validation() {
        let schema = r#"{"type":"object","properties":{"a":{"type":"array","items":{"type":"string","pattern":"^(a|a)*(?=b)$"}}}}"#;
        let err = compile_guest_schema(schema, true).unwrap_err();
        assert!(err.contains("compile"), "{err}");
        // Patterns the linear engine takes stay linear, however nested.
        let schema = r#"{"type":"object","properties":{"a":{"type":"array","items":{"type":"string","pattern":"^(a+)+$"}}}}"#;
        let (_, validator) = compile_guest_schema(schema, true).unwrap();
        let items: Vec<String> = (0..2000)
            .map(|i| format!("{}!{i}", "a".repeat(40)))
            .collect();
        let started = std::time::Instant::now();
        let found = violations(&validator, &serde_json::json!({ "a": items }));
        assert_eq!(found.len(), 65, "64 shown and a summary");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn remote_refs_are_never_fetched() {
        let err = compile_guest_schema(
            r#"{"type":"object","properties":{"a":{"$ref":"http://169.254.169.254/latest"}}}"#,
            true,
        )
        .unwrap_err();
        assert!(err.contains("compile"), "{err}");
    }

    #[test]
    fn every_violation_is_reported_with_its_path() {
        let (_, v) = compile_guest_schema(
            r#"{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}},"required":["c"]}"#,
            true,
        )
        .unwrap();
        let found = violations(&v, &serde_json::json!({"a": "x", "b": 1}));
        let paths: Vec<_> = found.iter().map(|v| v.path.as_str()).collect();
        assert!(
            paths.contains(&"/a") && paths.contains(&"/b") && paths.contains(&""),
            "{found:?}"
        );
    }
}
