//! The naming rules of Airlock's plugin contract (`wit/`), written once for
//! both sides of it: the guest SDK checks a plugin's tools with them in the
//! plugin's own tests, and the host checks what a component reports with
//! them when it loads. A plugin that passes the one passes the other.
//!
//! This crate has no dependencies, so it adds nothing to a plugin's build.
//!
//! # Example
//! ```
//! use airlock_names::is_valid_tool_name;
//!
//! assert!(is_valid_tool_name("regex-extract"));
//! assert!(!is_valid_tool_name("Regex"));
//! assert!(!is_valid_tool_name("a__b"));
//! ```

#![no_std]
#![deny(missing_docs)]

/// Longest tool name, in bytes.
pub const MAX_TOOL_NAME_BYTES: usize = 64;

/// Most tools one plugin may export.
pub const MAX_TOOLS: usize = 256;

/// Longest input or output schema a tool may report, in bytes.
pub const MAX_SCHEMA_BYTES: usize = 256 * 1024;

/// Whether `name` is a valid tool name (the WIT `tool-descriptor`): lowercase
/// ASCII letters, digits, `-` and `_`, starting with a letter, at most
/// [`MAX_TOOL_NAME_BYTES`], without `__` (the host joins plugin and tool
/// names with it in MCP).
pub fn is_valid_tool_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() <= MAX_TOOL_NAME_BYTES
        && bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
        && !name.contains("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names() {
        for ok in ["stats", "regex-extract", "a_b", "x1", "a-", "z9_-"] {
            assert!(is_valid_tool_name(ok), "{ok}");
        }
        let long = [b'a'; MAX_TOOL_NAME_BYTES + 1];
        let long = core::str::from_utf8(&long).unwrap_or_default();
        for bad in [
            "", "Stats", "1x", "-a", "_a", "a__b", "a/b", "a b", "é", long,
        ] {
            assert!(!is_valid_tool_name(bad), "{bad}");
        }
        let longest = &long[..MAX_TOOL_NAME_BYTES];
        assert!(is_valid_tool_name(longest));
    }
}
