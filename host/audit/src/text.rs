//! Cutting text to a byte bound without splitting a character.
//!
//! Every bound the host puts on text it keeps — a guest's log line, its
//! stderr in a trap report, a reason in an audit record, an identifier in a
//! refusal, a redacted value — is in bytes, and every cut must land on a
//! character boundary (slicing inside one panics). These are the one place
//! that is done.

use std::borrow::Cow;

/// Whether `c` changes the order in which the characters around it are
/// shown — the bidirectional embeddings, overrides, isolates and marks
/// (U+202A–U+202E, U+2066–U+2069, U+200E, U+200F, U+061C) — so that text holding
/// it can read, to a person, as something it is not (`"\u{202e}0005$"`
/// shows as `$5000`). Whatever shows untrusted text to a person (a
/// terminal, the console) writes these as visible escapes.
pub fn reorders(c: char) -> bool {
    matches!(
        c,
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
    )
}

/// Whether `c` is there but shows as nothing — zero-width spaces and
/// joiners, the word joiner and invisible operators, the byte-order mark,
/// the soft hyphen, fillers, variation selectors, tag characters — or
/// breaks a line where a reader sees none (U+2028, U+2029): text holding
/// it reads as something it is not (`"bank\u{200b}.evil.example"` looks
/// like `bank.evil.example`; a run of variation selectors or tags carries
/// hidden text). Whatever shows untrusted text to a person writes these,
/// like [`reorders`], as visible escapes ([`misleads`]; the joiners and
/// selectors some scripts need: [`joins`]).
pub fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{034f}'
            | '\u{115f}'
            | '\u{1160}'
            | '\u{17b4}'
            | '\u{17b5}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200b}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{2060}'..='\u{2064}'
            | '\u{206a}'..='\u{206f}'
            | '\u{3164}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e0fff}'
    )
}

/// Whether `c` makes text read, to a person, as something it is not: it
/// [`reorders`] what is around it or is [`invisible`]. (The joiners and
/// selectors of [`joins`] depend on their neighbours: [`misleads_between`].)
pub fn misleads(c: char) -> bool {
    reorders(c) || invisible(c)
}

/// Whether `c` is a zero-width joiner or non-joiner (U+200D, U+200C) or a
/// variation selector (U+FE00–U+FE0F): invisible, and needed by scripts and
/// symbols that use them — a non-joiner inside a Persian word, a joiner in
/// Indic scripts and emoji sequences, a selector after an emoji.
pub fn joins(c: char) -> bool {
    matches!(c, '\u{200c}' | '\u{200d}' | '\u{fe00}'..='\u{fe0f}')
}

/// [`misleads`], and a [`joins`] character out of the place it has a use
/// for: a selector not after a character of its own script (non-ASCII,
/// itself neither joining nor misleading), a joiner or non-joiner not
/// between two such — `bank\u{200d}.example` reads as `bank.example`, and
/// a run of selectors carries hidden text.
pub fn misleads_between(before: Option<char>, c: char, after: Option<char>) -> bool {
    let holds = |n: Option<char>| n.is_some_and(|n| !n.is_ascii() && !joins(n) && !misleads(n));
    match c {
        '\u{fe00}'..='\u{fe0f}' => !holds(before),
        '\u{200c}' | '\u{200d}' => !(holds(before) && holds(after)),
        _ => misleads(c),
    }
}

/// What [`bounded`] appends to text it cut.
pub const TRUNCATED_MARK: &str = "…[truncated]";

/// The longest prefix of `text` that is at most `max` bytes and ends on a
/// character boundary (all of `text` when it fits).
pub fn prefix(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
}

/// Cut `text` in place to [`prefix`]`(text, max)`; whether it was cut.
/// A cut string gives back the memory it no longer uses (`String::truncate`
/// keeps it): a few kept bytes of a guest's megabytes must not hold the
/// megabytes.
pub fn truncate(text: &mut String, max: usize) -> bool {
    let cut = prefix(text, max).len();
    let was_cut = cut < text.len();
    if was_cut {
        text.truncate(cut);
        text.shrink_to_fit();
    }
    was_cut
}

/// `text` when it fits in `max` bytes, otherwise its [`prefix`] followed by
/// [`TRUNCATED_MARK`] (so the result may exceed `max` by the mark's
/// length): a reader sees that it was cut.
pub fn bounded(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    Cow::Owned(format!("{}{TRUNCATED_MARK}", prefix(text, max)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_land_on_character_boundaries() {
        let text = "aé€😀";
        assert_eq!(prefix(text, 0), "");
        assert_eq!(prefix(text, 2), "a");
        assert_eq!(prefix(text, 3), "aé");
        assert_eq!(prefix(text, 5), "aé");
        assert_eq!(prefix(text, 6), "aé€");
        assert_eq!(prefix(text, 99), text);
        let mut owned = "é".repeat(10);
        assert!(truncate(&mut owned, 5));
        // What it cut is given back, not kept as capacity.
        let mut big = "x".repeat(1 << 20);
        assert!(truncate(&mut big, 16));
        assert!(big.capacity() < 1024, "{}", big.capacity());
        assert_eq!(owned, "éé");
        assert!(!truncate(&mut owned, 4));
    }

    #[test]
    fn bounded_text_says_it_was_cut() {
        assert!(matches!(bounded("short", 5), Cow::Borrowed("short")));
        assert_eq!(bounded("ééé", 3), "é…[truncated]");
    }
}
