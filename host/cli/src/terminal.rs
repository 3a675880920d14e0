//! Text from callers, guests and servers, made safe to print on a terminal.
//!
//! # Security
//! A terminal obeys control characters in what it prints: a carriage
//! return or an ANSI sequence (`ESC [2K`) in a caller's reason can erase
//! the line an approver is reading and print a forged one, and a newline
//! can add lines that look like the CLI's own. Every string the CLI prints
//! that someone else chose goes through [`escape`] first.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every character a terminal would act on, rather than show,
/// rendered as a visible escape: C0 controls (newline and tab included),
/// DEL and C1 controls, and the Unicode line and paragraph separators and
/// bidirectional controls (which reorder what is shown). `\n`, `\r` and
/// `\t` become those two characters; the rest become `\u{…}` in hex, as
/// Rust's `escape_debug` writes them. Text without any is returned as is.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() // C0, DEL, C1
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // line and paragraph separators
                | '\u{200e}' | '\u{200f}' | '\u{061c}' // directional marks
                | '\u{202a}'..='\u{202e}' // embeddings and overrides
                | '\u{2066}'..='\u{2069}' // isolates
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for text in ["", "refund order 42", "café ☕ 日本語", "back\\slash"] {
            assert!(
                matches!(escape(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn every_c0_c1_and_del_is_escaped() {
        for code in (0u32..0x20).chain(0x7f..0xa0) {
            let c = char::from_u32(code).unwrap();
            let escaped = escape(&c.to_string()).into_owned();
            assert!(
                !escaped.chars().any(char::is_control),
                "{code:#x}: {escaped:?}"
            );
            assert!(escaped.starts_with('\\'), "{code:#x}: {escaped:?}");
        }
    }

    #[test]
    fn a_forged_line_cannot_overwrite_the_real_one() {
        let reason = "ok\u{1b}[2K\rread: approved by alice\nnext\tline\u{7f}\u{9b}";
        assert_eq!(
            escape(reason),
            "ok\\u{1b}[2K\\rread: approved by alice\\nnext\\tline\\u{7f}\\u{9b}"
        );
    }

    #[test]
    fn bidi_controls_and_separators_are_escaped() {
        assert_eq!(
            escape("a\u{202e}b\u{2066}c\u{2028}d"),
            "a\\u{202e}b\\u{2066}c\\u{2028}d"
        );
    }
}
