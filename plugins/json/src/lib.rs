//! The `json` plugin: JSON Pointer queries, key listings, formatting and
//! RFC 7386 merge patches. Pure functions.

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
    check_pointer(&args.pointer)?;
    let value = args.document.pointer(&args.pointer).cloned();
    Ok(QueryResult {
        found: value.is_some(),
        value,
    })
}

/// Largest result text a tool returns: the manifest's `max_output_kb` is
/// 1024, and the host also bounds one guest-to-host transfer at 1 MiB, so a
/// bigger result would be refused (or trap) anyway. Refusing it here gives
/// the caller a clear `invalid-input` instead.
const MAX_RESULT_BYTES: usize = 1000 * 1024;

/// Length of `s` once encoded as a JSON string (quotes and escapes included).
fn json_string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

fn check_result_size(text: &str, hint: &str) -> Result<(), ToolError> {
    let len = json_string_len(text);
    if len > MAX_RESULT_BYTES {
        return Err(ToolError::invalid_input(format!(
            "the result would be {len} bytes, more than the limit of {MAX_RESULT_BYTES}; {hint}"
        )));
    }
    Ok(())
}

/// Most member names `keys` returns.
const MAX_KEYS: usize = 1000;

/// Arguments of `keys`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeysArgs {
    /// The JSON document to inspect.
    pub document: Value,
    /// RFC 6901 JSON Pointer to the value to describe; empty (the default)
    /// for the whole document.
    #[serde(default)]
    pub pointer: String,
}

/// JSON value types.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum JsonType {
    /// `null`
    Null,
    /// `true` or `false`
    Boolean,
    /// A number.
    Number,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

/// Result of `keys`.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct KeysResult {
    /// Whether the pointer resolved.
    pub found: bool,
    /// Type of the value at the pointer (absent when not found).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<JsonType>,
    /// Members of an object, elements of an array, characters of a string
    /// (absent for other types).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<usize>,
    /// An object's member names in document order, at most 1000 (empty for
    /// other types).
    pub keys: Vec<String>,
    /// True when the object has more members than `keys` lists.
    pub truncated: bool,
}

pub fn keys(args: KeysArgs, _: &Context) -> Result<KeysResult, ToolError> {
    check_pointer(&args.pointer)?;
    let Some(value) = args.document.pointer(&args.pointer) else {
        return Ok(KeysResult {
            found: false,
            kind: None,
            length: None,
            keys: Vec::new(),
            truncated: false,
        });
    };
    let (kind, length) = match value {
        Value::Null => (JsonType::Null, None),
        Value::Bool(_) => (JsonType::Boolean, None),
        Value::Number(_) => (JsonType::Number, None),
        Value::String(s) => (JsonType::String, Some(s.chars().count())),
        Value::Array(a) => (JsonType::Array, Some(a.len())),
        Value::Object(o) => (JsonType::Object, Some(o.len())),
    };
    let keys: Vec<String> = value
        .as_object()
        .map(|o| o.keys().take(MAX_KEYS).cloned().collect())
        .unwrap_or_default();
    Ok(KeysResult {
        found: true,
        kind: Some(kind),
        length,
        truncated: value.as_object().is_some_and(|o| o.len() > keys.len()),
        keys,
    })
}

fn check_pointer(pointer: &str) -> Result<(), ToolError> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(ToolError::invalid_input(format!(
            "`{pointer}` is not a JSON Pointer: it must be empty or start with `/`"
        )));
    }
    Ok(())
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
    check_result_size(&text, "use a smaller indent, or 0 to minify")?;
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
    "keys" => keys: "Describe the value at an RFC 6901 JSON Pointer: its type, its length, and an object's member names.",
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
    fn keys_describe_values() {
        let doc = json!({"b": {"z": 1, "y": [1, 2, 3]}, "a": "héllo", "n": null});
        let k = |p: &str| {
            keys(
                KeysArgs {
                    document: doc.clone(),
                    pointer: p.into(),
                },
                &ctx(),
            )
        };
        let root = k("").unwrap();
        assert_eq!(root.keys, ["b", "a", "n"]);
        assert_eq!((root.kind, root.length), (Some(JsonType::Object), Some(3)));
        let inner = k("/b/y").unwrap();
        assert_eq!((inner.kind, inner.length), (Some(JsonType::Array), Some(3)));
        assert!(inner.keys.is_empty());
        assert_eq!(k("/a").unwrap().length, Some(5));
        assert_eq!(k("/n").unwrap().kind, Some(JsonType::Null));
        assert!(!k("/missing").unwrap().found);
        assert!(matches!(k("b"), Err(ToolError::InvalidInput(_))));

        let wide: Map<String, Value> = (0..1500).map(|i| (format!("k{i}"), json!(i))).collect();
        let many = keys(
            KeysArgs {
                document: Value::Object(wide),
                pointer: String::new(),
            },
            &ctx(),
        )
        .unwrap();
        assert_eq!(
            (many.keys.len(), many.truncated, many.length),
            (1000, true, Some(1500))
        );
    }

    #[test]
    fn oversized_results_are_refused() {
        let document = Value::Array(vec![json!([[["x"]]]); 20_000]);
        let err = format(
            FormatArgs {
                document: document.clone(),
                indent: Some(8),
                sort_keys: false,
            },
            &ctx(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ToolError::InvalidInput(m) if m.contains("smaller indent")),
            "{err}"
        );
        format(
            FormatArgs {
                document,
                indent: Some(0),
                sort_keys: false,
            },
            &ctx(),
        )
        .unwrap();
        assert_eq!(json_string_len("a\"\n\u{1}é"), 2 + 1 + 2 + 2 + 6 + 2);
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
