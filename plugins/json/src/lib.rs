//! The `json` plugin: JSON Pointer queries, formatting and RFC 7386 merge
//! patches. Pure functions.

use airlock_sdk::{Context, JsonSchema, ToolError, plugin, schemars};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Arguments of `query`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryArgs {
    /// The JSON document to query.
    pub document: Value,
    /// RFC 6901 JSON Pointer, e.g. `/orders/0/total`; empty for the whole document.
    pub pointer: String,
}

/// Result of `query`.
#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct QueryResult {
    /// Whether the pointer resolved.
    pub found: bool,
    /// The value at the pointer (absent when not found).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

pub fn query(args: QueryArgs, _: &Context) -> Result<QueryResult, ToolError> {
    if !args.pointer.is_empty() && !args.pointer.starts_with('/') {
        return Err(ToolError::invalid_input(format!(
            "`{}` is not a JSON Pointer: it must be empty or start with `/`",
            args.pointer
        )));
    }
    let value = args.document.pointer(&args.pointer).cloned();
    Ok(QueryResult {
        found: value.is_some(),
        value,
    })
}

/// Arguments of `format`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FormatArgs {
    /// The JSON document to format.
    pub document: Value,
    /// Spaces per indentation level; 0 minifies (default 2).
    #[serde(default)]
    #[schemars(range(max = 8))]
    pub indent: Option<u8>,
    /// Sort object keys (recursively) instead of keeping their order.
    #[serde(default)]
    pub sort_keys: bool,
}

/// Result of `format`.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Formatted {
    /// The formatted JSON text.
    pub text: String,
}

pub fn format(args: FormatArgs, _: &Context) -> Result<Formatted, ToolError> {
    let indent = args.indent.unwrap_or(2);
    if indent > 8 {
        return Err(ToolError::invalid_input("indent must be at most 8"));
    }
    let document = if args.sort_keys {
        sorted(args.document)
    } else {
        args.document
    };
    let text = if indent == 0 {
        serde_json::to_string(&document)?
    } else {
        let spaces = vec![b' '; indent as usize];
        let mut out = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(&spaces);
        let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
        document.serialize(&mut ser)?;
        String::from_utf8(out)?
    };
    Ok(Formatted { text })
}

fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Arguments of `merge-patch`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MergePatchArgs {
    /// The document to patch.
    pub target: Value,
    /// RFC 7386 merge patch: objects merge recursively, `null` deletes a member,
    /// anything else replaces.
    pub patch: Value,
}

/// Result of `merge-patch`.
#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Patched {
    /// The patched document.
    pub result: Value,
}

pub fn merge_patch(args: MergePatchArgs, _: &Context) -> Result<Patched, ToolError> {
    Ok(Patched {
        result: apply_merge_patch(args.target, args.patch),
    })
}

/// RFC 7386, section 2.
fn apply_merge_patch(target: Value, patch: Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch;
    };
    let mut target = match target {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(&key);
        } else {
            let current = target.remove(&key).unwrap_or(Value::Null);
            target.insert(key, apply_merge_patch(current, value));
        }
    }
    Value::Object(target)
}

plugin! {
    "query" => query: "Look up a value in a JSON document by RFC 6901 JSON Pointer.",
    "format" => format: "Pretty-print (with a chosen indent) or minify a JSON document, optionally sorting keys.",
    "merge-patch" => merge_patch: "Apply an RFC 7386 JSON merge patch to a document.",
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ctx() -> Context {
        Context::default()
    }

    #[test]
    fn queries() {
        let doc = json!({"a": [1, {"b~c": "x", "d/e": 2}]});
        let q = |p: &str| {
            query(
                QueryArgs {
                    document: doc.clone(),
                    pointer: p.into(),
                },
                &ctx(),
            )
        };
        assert_eq!(q("/a/1/b~0c").unwrap().value, Some(json!("x")));
        assert_eq!(q("/a/1/d~1e").unwrap().value, Some(json!(2)));
        assert_eq!(q("").unwrap().value, Some(doc.clone()));
        assert!(!q("/nope").unwrap().found);
        assert!(matches!(q("a"), Err(ToolError::InvalidInput(_))));
    }

    #[test]
    fn formats() {
        let f = |indent, sort_keys| {
            format(
                FormatArgs {
                    document: json!({"b": 1, "a": [true]}),
                    indent,
                    sort_keys,
                },
                &ctx(),
            )
            .unwrap()
            .text
        };
        assert_eq!(f(Some(0), false), r#"{"b":1,"a":[true]}"#);
        assert_eq!(f(Some(0), true), r#"{"a":[true],"b":1}"#);
        assert_eq!(
            f(None, false),
            "{\n  \"b\": 1,\n  \"a\": [\n    true\n  ]\n}"
        );
    }

    #[test]
    fn rfc7386_examples() {
        // The test cases of RFC 7386, appendix A.
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, expected) in cases {
            let got = merge_patch(
                MergePatchArgs {
                    target: target.clone(),
                    patch: patch.clone(),
                },
                &ctx(),
            )
            .unwrap();
            assert_eq!(got.result, expected, "{target} + {patch}");
        }
    }
}
