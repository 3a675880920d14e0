//! Text for a terminal: what a guest, a caller or any other party the host
//! does not trust wrote is printed so it cannot drive the terminal.
//!
//! A control character in printed text is a command to the terminal: `ESC`
//! starts ANSI sequences that move the cursor, erase lines or retitle the
//! window, and a bare `\r` returns to the start of the line, so text like
//! `"\x1b[2K\rread"` can overwrite what the host printed before it (a fake
//! "read" over a real "irreversible"). Every such character is shown as a
//! visible escape instead.

use std::borrow::Cow;
use std::fmt::Write as _;

use airlock_host::audit_log::text::{joins, misleads_between};

/// `text` with every control character — C0 (U+0000–U+001F, newline and tab
/// included), DEL, C1 (U+0080–U+009F) — every bidirectional-override
/// character (which can reorder what a reader sees) and every invisible
/// one ([`misleads`](airlock_host::audit_log::text::misleads)) written as a visible
/// `\u{…}` escape. A backslash is doubled only where it would otherwise
/// read as such an escape, so plain paths and text print unchanged.
/// Borrowed when nothing needs escaping.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| needs_escape(c) || joins(c)) && !text.contains("\\u") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut before = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let after = chars.peek().copied();
        if c.is_control() || misleads_between(before, c, after) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else if c == '\\' && after == Some('u') {
            // A literal `\u` in the text: doubled, so it cannot pass for an
            // escape this function wrote.
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
        before = Some(c);
    }
    Cow::Owned(out)
}

/// [`escape`] line by line: the line breaks of a message that has several
/// (a TOML error's excerpt, a list of problems) stay line breaks — a new
/// line cannot overwrite the ones before it — and everything else that
/// could drive the terminal, a bare `\r` included, is escaped.
pub(crate) fn escape_lines(text: &str) -> Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c != '\n' && (needs_escape(c) || joins(c)))
        && !text.contains("\\u")
    {
        return Cow::Borrowed(text);
    }
    let lines: Vec<Cow<'_, str>> = text.split('\n').map(escape).collect();
    Cow::Owned(lines.join("\n"))
}

/// JSON text (`serde_json`'s, which escapes C0 only) with every other
/// character [`escape`] would escape — DEL, C1, bidirectional overrides,
/// invisible characters — written as a JSON `\uXXXX` escape: the same
/// JSON value, which cannot drive a terminal it is printed on. (Such
/// characters occur only inside JSON strings, where the escape means the
/// character itself.)
pub(crate) fn json_text(json: String) -> String {
    // C0 is escaped inside strings by serde_json already; outside them it
    // is the text's own layout (pretty printing's line breaks).
    // Joiners and variation selectors too, wherever they are (`escape`
    // keeps those that join visible characters; in JSON the escape
    // changes nothing, and a run of selectors can carry hidden text).
    let raw = |c: char| c > '\u{1f}' && (needs_escape(c) || joins(c));
    if !json.chars().any(raw) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if raw(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control() || airlock_host::audit_log::text::misleads(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--json` output: the same value, with nothing in it a terminal acts
    /// on (serde_json writes C1, DEL and bidirectional overrides raw).
    #[test]
    fn json_text_escapes_what_serde_json_leaves_raw() {
        let value = serde_json::json!({
            "csi": "a\u{9b}2Jb",
            "del": "\u{7f}",
            "rtl": "x\u{202e}y",
            "tag": "\u{e0041}",
            "joined": "a\u{200d}\u{fe0f}\u{fe0f}b",
            "plain": "héllo \\u{41}",
        });
        let text = json_text(serde_json::to_string_pretty(&value).unwrap());
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != ' '),
            "{text}"
        );
        assert!(
            text.contains("\\u009b") && text.contains("\\u202e"),
            "{text}"
        );
        assert!(text.contains("\\udb40\\udc41"), "{text}");
        assert!(text.contains("a\\u200d\\ufe0f\\ufe0fb"), "{text}");
        assert!(text.contains("héllo"), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn control_characters_become_visible_escapes() {
        assert_eq!(escape("ok\x1b[2K\rread"), "ok\\u{1b}[2K\\u{d}read");
        assert_eq!(
            escape("a\nb\tc\u{7f}\u{9b}"),
            "a\\u{a}b\\u{9}c\\u{7f}\\u{9b}"
        );
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(escape("range \u{61c}10 - 5000"), "range \\u{61c}10 - 5000");
        assert_eq!(
            escape("bank\u{200b}.evil.example\u{feff}\u{e0041}"),
            "bank\\u{200b}.evil.example\\u{feff}\\u{e0041}"
        );
        // Joiners and selectors where a script or symbol needs them stay;
        // beside ASCII, at an edge or in a run they are shown.
        for kept in ["می\u{200c}خواهم", "⚠\u{fe0f} check", "👨\u{200d}👩"] {
            assert_eq!(escape(kept), kept);
        }
        assert_eq!(escape("ba\u{200d}nk"), "ba\\u{200d}nk");
        assert_eq!(escape("ok\u{fe0f}"), "ok\\u{fe0f}");
        assert_eq!(escape("⚠\u{fe0f}\u{fe01}"), "⚠\u{fe0f}\\u{fe01}");
        assert_eq!(escape("\u{200c}ب"), "\\u{200c}ب");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for text in [
            "",
            "refund 12.50 € to acct-1",
            "C:\\path\\file",
            "/etc/passwd",
        ] {
            assert!(
                matches!(escape(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn line_by_line_keeps_line_breaks_and_escapes_the_rest() {
        assert_eq!(
            escape_lines("TOML parse error\n  |\n3 | component = \"\x1b]0;x\x07\"\n"),
            "TOML parse error\n  |\n3 | component = \"\\u{1b}]0;x\\u{7}\"\n"
        );
        assert_eq!(escape_lines("ok\r\nfake"), "ok\\u{d}\nfake");
        assert!(matches!(escape_lines("two\nlines"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_literal_escape_sequence_cannot_pass_for_one() {
        assert_eq!(escape("x\\u{1b}\n"), "x\\\\u{1b}\\u{a}");
    }
}
