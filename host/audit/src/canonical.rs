//! Canonical JSON: one byte sequence per JSON value, so hashes are stable.
//!
//! The encoding (specified in `docs/audit-log.md`, written so a verifier in
//! any language can reproduce it):
//! - UTF-8, no whitespace outside strings;
//! - object members sorted by key, comparing the keys' UTF-8 bytes;
//!   duplicate keys cannot occur (parsing keeps the last);
//! - strings: `"` and `\` escaped with a backslash, U+0000–U+001F as `\u00xx`
//!   (lowercase hex), every other character written as itself;
//! - integers in decimal without leading zeros or `+`; other numbers as their
//!   shortest round-trip decimal form (audit records contain only integers);
//! - `true`, `false`, `null` as such.

use serde_json::Value;

/// The canonical encoding of `value`.
pub fn to_vec(value: &Value) -> Vec<u8> {
    to_string(value).into_bytes()
}

/// The canonical encoding of `value`, as a string.
pub fn to_string(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_str(value, &mut out);
    out
}

fn write_str(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        // serde_json prints integers in plain decimal and floats in their
        // shortest round-trip form.
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_str(item, out);
            }
            out.push('}');
        }
    }
}

/// The bytes a JSON string escapes: `"`, `\` and the control characters.
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

pub(crate) fn write_string(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.reserve(s.len() + 2);
    out.push('"');
    // Copy runs that need no escaping in one go: only `"`, `\` and control
    // characters (all ASCII) are escaped. Eight bytes at a time are tested
    // at once (most of a record is hex digests and identifiers); a word
    // with a byte to escape is gone through byte by byte.
    let bytes = s.as_bytes();
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        let end = match bytes
            .get(i..i + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
        {
            Some(word) if !any_escaped(u64::from_le_bytes(word)) => {
                i += 8;
                continue;
            }
            Some(_) => i + 8,
            None => bytes.len(),
        };
        while i < end {
            let byte = bytes[i];
            i += 1;
            if !ESCAPED[usize::from(byte)] {
                continue;
            }
            out.push_str(&s[run..i - 1]);
            match byte {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                _ => {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{byte:04x}");
                }
            }
            run = i;
        }
    }
    out.push_str(&s[run..]);
    out.push('"');
}

/// Whether any of the eight bytes of `word` is one a JSON string escapes
/// (the same set as [`ESCAPED`]): below 0x20, `"` or `\`. Exact, with no
/// false positives: a borrow starts only at a byte that matches.
fn any_escaped(word: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGHS;
    let control = below(word, 0x20);
    let quote = below(word ^ (ONES * u64::from(b'"')), 1);
    let backslash = below(word ^ (ONES * u64::from(b'\\')), 1);
    (control | quote | backslash) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The escaping by the definition, a byte at a time.
    fn escaped_one_by_one(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn escapes_wherever_they_fall_in_a_word_of_eight() {
        // Every byte the encoding escapes, and its neighbours that it does
        // not (0x1f/0x20, 0x21/0x22/0x23, 0x5b/0x5c/0x5d, 0x7f, non-ASCII),
        // at every offset of strings long enough to span three words.
        let probes = [
            "\u{0}", "\u{1f}", " ", "!", "\"", "#", "[", "\\", "]", "\u{7f}", "é", "\u{2028}", "😀",
        ];
        for probe in probes {
            for len in 0..24 {
                for at in 0..=len {
                    let s = format!("{}{probe}{}", "a".repeat(at), "b".repeat(len - at));
                    let mut out = String::new();
                    write_string(&s, &mut out);
                    assert_eq!(out, escaped_one_by_one(&s), "{s:?}");
                }
            }
        }
        let all: String = (0u32..0x80)
            .filter_map(char::from_u32)
            .collect::<String>()
            .repeat(3);
        let mut out = String::new();
        write_string(&all, &mut out);
        assert_eq!(out, escaped_one_by_one(&all));
    }

    #[test]
    fn sorts_keys_by_bytes_and_drops_whitespace() {
        let v = json!({"b": 1, "a": [true, null, "x"], "B": {"z": 0, "y": -3}});
        assert_eq!(
            to_string(&v),
            r#"{"B":{"y":-3,"z":0},"a":[true,null,"x"],"b":1}"#
        );
    }

    #[test]
    fn escapes_only_quote_backslash_and_controls() {
        let v = json!("a\"b\\c\n\u{1}é/\u{7f}");
        assert_eq!(to_string(&v), "\"a\\\"b\\\\c\\u000a\\u0001é/\u{7f}\"");
    }

    #[test]
    fn every_character_round_trips_and_only_the_escaped_ones_change() {
        let text: String = (0u32..0x800)
            .filter_map(char::from_u32)
            .chain(['\u{ffff}', '\u{10ffff}', '€'])
            .collect();
        let mut out = String::new();
        write_string(&text, &mut out);
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), text);
        let escaped = out.matches('\\').count();
        // 32 controls as \u00XX, then \" and \\ (two backslashes).
        assert_eq!(escaped, 32 + 1 + 2);
    }

    #[test]
    fn same_value_same_bytes_whatever_the_input_order() {
        let a: Value = serde_json::from_str(r#"{"x":1,"y":{"q":2,"p":3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "y": {"p":3, "q":2}, "x": 1 }"#).unwrap();
        assert_eq!(to_vec(&a), to_vec(&b));
    }

    #[test]
    fn round_trips_through_a_json_parser() {
        let v = json!({"k": "line\nbreak\ttab", "n": u64::MAX, "f": 1.5});
        let back: Value = serde_json::from_slice(&to_vec(&v)).unwrap();
        assert_eq!(back, v);
    }
}
