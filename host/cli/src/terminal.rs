//! Text from guests and callers, made safe to print on a terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every C0 and C1 control character (newline and tab
/// included) and DEL shown as a visible `\u{..}` escape, so that guest- or
/// caller-controlled text can neither move the cursor, erase a line nor
/// fake one. Borrowed when there is nothing to escape.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn controls_are_visible() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\x1b[2K\rread\n"), "a\\u{1b}[2K\\u{d}read\\u{a}");
        assert_eq!(escape("\u{9b}\u{7f}\t"), "\\u{9b}\\u{7f}\\u{9}");
    }
}
