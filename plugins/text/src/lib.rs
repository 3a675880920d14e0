//! The `text` plugin: statistics, URL slugs, regex extraction and case
//! conversion. Pure functions; every input is size-capped.

use airlock_sdk::{Context, JsonSchema, ToolError, plugin, schemars};
use serde::{Deserialize, Serialize};
use unicode_normalization::char::is_combining_mark;

/// Largest text any tool accepts.
const MAX_TEXT_BYTES: usize = 1024 * 1024;
/// Longest regular expression accepted.
const MAX_PATTERN_BYTES: usize = 1024;
/// Memory the compiled regex may use (bounds pathological patterns).
const REGEX_SIZE_LIMIT: usize = 1024 * 1024;
/// Most matches `regex-extract` ever returns.
const MAX_MATCHES: u32 = 1000;

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

fn check_size(text: &str) -> Result<(), ToolError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(ToolError::invalid_input(format!(
            "text is {} bytes; the limit is {MAX_TEXT_BYTES}",
            text.len()
        )));
    }
    Ok(())
}

/// Arguments of `stats`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatsArgs {
    /// The text to measure (at most 1 MiB).
    pub text: String,
}

/// Counts describing a text.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Stats {
    /// UTF-8 bytes.
    pub bytes: usize,
    /// Unicode scalar values.
    pub chars: usize,
    /// Whitespace-separated words.
    pub words: usize,
    /// Lines (a final line without a newline counts; an empty text has 0).
    pub lines: usize,
    /// Sentences: runs of text ending in `.`, `!` or `?` (or the end).
    pub sentences: usize,
}

pub fn stats(args: StatsArgs, _: &Context) -> Result<Stats, ToolError> {
    check_size(&args.text)?;
    let text = args.text.as_str();
    let sentences = text
        .split(['.', '!', '?'])
        .filter(|s| s.chars().any(char::is_alphanumeric))
        .count();
    Ok(Stats {
        bytes: text.len(),
        chars: text.chars().count(),
        words: text.split_whitespace().count(),
        lines: text.lines().count(),
        sentences,
    })
}

/// Arguments of `slugify`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlugifyArgs {
    /// The text to turn into a slug (at most 1 MiB).
    pub text: String,
    /// Separator between words (default `-`): one of `-`, `_`, `.`.
    #[serde(default)]
    pub separator: Option<Separator>,
    /// Cut the slug to at most this many bytes, at a word boundary when possible.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1024))]
    pub max_length: Option<u32>,
}

/// Allowed slug separators.
#[derive(Deserialize, JsonSchema, Clone, Copy)]
pub enum Separator {
    #[serde(rename = "-")]
    Dash,
    #[serde(rename = "_")]
    Underscore,
    #[serde(rename = ".")]
    Dot,
}

/// A URL slug.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Slug {
    /// Lowercase ASCII letters and digits joined by the separator.
    pub slug: String,
}

pub fn slugify(args: SlugifyArgs, _: &Context) -> Result<Slug, ToolError> {
    check_size(&args.text)?;
    let sep = match args.separator.unwrap_or(Separator::Dash) {
        Separator::Dash => '-',
        Separator::Underscore => '_',
        Separator::Dot => '.',
    };
    let max = args
        .max_length
        .map_or(usize::MAX, |m| m.clamp(1, 1024) as usize);
    let mut slug = String::new();
    let mut pending_sep = false;
    // Decompose, drop combining marks (é -> e), keep ASCII alphanumerics.
    let folded = decomposed(&args.text)
        .filter(|c| !is_combining_mark(*c))
        .flat_map(|c| {
            // Letters that do not decompose to ASCII.
            let replacement: &[char] = match c {
                'ß' => &['s', 's'],
                'æ' | 'Æ' => &['a', 'e'],
                'ø' | 'Ø' => &['o'],
                'đ' | 'Đ' => &['d'],
                'ł' | 'Ł' => &['l'],
                _ => &[],
            };
            if replacement.is_empty() {
                vec![c]
            } else {
                replacement.to_vec()
            }
        });
    for c in folded {
        if c.is_ascii_alphanumeric() {
            if pending_sep && !slug.is_empty() {
                slug.push(sep);
            }
            pending_sep = false;
            slug.push(c.to_ascii_lowercase());
            // One byte past the limit says whether the cut falls between words.
            if slug.len() > max {
                break;
            }
        } else {
            pending_sep = true;
        }
    }
    if slug.len() > max {
        let between_words = slug.as_bytes()[max] == sep as u8;
        slug.truncate(max);
        if !between_words {
            // Drop the partial last word unless it is the only one.
            if let Some(i) = slug.rfind(sep) {
                slug.truncate(i);
            }
        }
        while slug.ends_with(sep) {
            slug.pop();
        }
    }
    Ok(Slug { slug })
}

/// `text` decomposed (NFKD), so accents come apart from their letters.
#[cfg(not(feature = "regression-v2"))]
fn decomposed(text: &str) -> impl Iterator<Item = char> + '_ {
    unicode_normalization::UnicodeNormalization::nfkd(text)
}

/// The deliberate regression of the example release 0.2.0
/// (`plugins/releases/text-0.2.0`): no decomposition, so accented letters
/// are dropped instead of folded (`Crème` → `cr-me`). `airlock eval`
/// catches it with the case `slugify-folds-accents` of `cases.jsonl`.
#[cfg(feature = "regression-v2")]
fn decomposed(text: &str) -> impl Iterator<Item = char> + '_ {
    text.chars()
}

/// Arguments of `regex-extract`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegexArgs {
    /// Regular expression (Rust `regex` syntax, linear-time; at most 1024 bytes).
    pub pattern: String,
    /// The text to search (at most 1 MiB).
    pub text: String,
    /// Return this capture group (by index) instead of the whole match.
    #[serde(default)]
    pub group: Option<u32>,
    /// Return at most this many matches (default 100, at most 1000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub max_matches: Option<u32>,
}

/// What `regex-extract` found.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Extracted {
    /// The matches (or the chosen group of each match), in order.
    pub matches: Vec<String>,
    /// True when more matches exist than were returned.
    pub truncated: bool,
}

pub fn regex_extract(args: RegexArgs, _: &Context) -> Result<Extracted, ToolError> {
    check_size(&args.text)?;
    if args.pattern.len() > MAX_PATTERN_BYTES {
        return Err(ToolError::invalid_input(format!(
            "pattern is {} bytes; the limit is {MAX_PATTERN_BYTES}",
            args.pattern.len()
        )));
    }
    let re = regex::RegexBuilder::new(&args.pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| ToolError::invalid_input(format!("invalid regular expression: {e}")))?;
    let group = args.group.unwrap_or(0) as usize;
    if group >= re.captures_len() {
        return Err(ToolError::invalid_input(format!(
            "group {group} does not exist; the pattern has {} groups",
            re.captures_len() - 1
        )));
    }
    let limit = args.max_matches.unwrap_or(100).clamp(1, MAX_MATCHES) as usize;
    let mut matches = Vec::new();
    let mut truncated = false;
    for caps in re.captures_iter(&args.text) {
        if matches.len() == limit {
            truncated = true;
            break;
        }
        if let Some(m) = caps.get(group) {
            matches.push(m.as_str().to_owned());
        }
    }
    airlock_sdk::log::debug(format!("{} matches", matches.len()));
    Ok(Extracted { matches, truncated })
}

/// Arguments of `case`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseArgs {
    /// The text to convert (at most 1 MiB).
    pub text: String,
    /// Target case.
    pub to: Case,
}

/// Target cases.
#[derive(Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Case {
    /// UPPER CASE
    Upper,
    /// lower case
    Lower,
    /// Title Case
    Title,
    /// snake_case
    Snake,
    /// kebab-case
    Kebab,
    /// camelCase
    Camel,
    /// PascalCase
    Pascal,
    /// CONSTANT_CASE
    Constant,
}

/// Converted text.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Converted {
    /// The text in the requested case.
    pub text: String,
}

pub fn case(args: CaseArgs, _: &Context) -> Result<Converted, ToolError> {
    check_size(&args.text)?;
    let words = || {
        args.text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .flat_map(split_camel)
    };
    let joined =
        |sep: &str, f: fn(&str) -> String| words().map(|w| f(&w)).collect::<Vec<_>>().join(sep);
    let text = match args.to {
        Case::Upper => args.text.to_uppercase(),
        Case::Lower => args.text.to_lowercase(),
        Case::Title => title(&args.text),
        Case::Snake => joined("_", str::to_lowercase),
        Case::Kebab => joined("-", str::to_lowercase),
        Case::Constant => joined("_", str::to_uppercase),
        Case::Pascal => joined("", capitalize),
        Case::Camel => words()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    w.to_lowercase()
                } else {
                    capitalize(&w)
                }
            })
            .collect(),
    };
    check_result_size(&text, "convert a shorter text")?;
    Ok(Converted { text })
}

/// Capitalise each whitespace-separated word, keeping everything else as is.
fn title(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word_start = true;
    for c in text.chars() {
        if c.is_whitespace() {
            word_start = true;
            out.push(c);
        } else if word_start {
            word_start = false;
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Split an identifier at case changes: `helloWorld` -> `hello`, `World`;
/// `HTTPServer` -> `HTTP`, `Server`. Digits stay with the word before them.
fn split_camel(word: &str) -> Vec<String> {
    let chars: Vec<char> = word.chars().collect();
    let mut out = Vec::new();
    let mut current = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if i > 0 && c.is_uppercase() {
            let prev = chars[i - 1];
            let next_is_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_numeric() || (prev.is_uppercase() && next_is_lower) {
                out.push(std::mem::take(&mut current));
            }
        }
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

plugin! {
    "stats" => stats: "Count bytes, characters, words, lines and sentences in a text.",
    "slugify" => slugify: "Turn text into a lowercase ASCII URL slug (accents removed, words joined by a separator).",
    "regex-extract" => regex_extract: "Return the matches of a regular expression in a text (linear-time engine, capped number of matches).",
    "case" => case: "Convert text to upper, lower, title, snake, kebab, camel, Pascal or CONSTANT case.",
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context::default()
    }

    #[test]
    fn stats_counts() {
        let s = stats(
            StatsArgs {
                text: "Hello world. How are you?\nFine!".into(),
            },
            &ctx(),
        )
        .unwrap();
        assert_eq!(
            s,
            Stats {
                bytes: 31,
                chars: 31,
                words: 6,
                lines: 2,
                sentences: 3
            }
        );
        let empty = stats(
            StatsArgs {
                text: String::new(),
            },
            &ctx(),
        )
        .unwrap();
        assert_eq!((empty.words, empty.lines, empty.sentences), (0, 0, 0));
    }

    fn slug(text: &str, separator: Option<Separator>, max_length: Option<u32>) -> String {
        slugify(
            SlugifyArgs {
                text: text.into(),
                separator,
                max_length,
            },
            &ctx(),
        )
        .unwrap()
        .slug
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("Héllo, Wörld!", None, None), "hello-world");
        assert_eq!(slug("  --Straße & Co.-- ", None, None), "strasse-co");
        assert_eq!(slug("a b c", Some(Separator::Underscore), None), "a_b_c");
        assert_eq!(slug("alpha beta gamma", None, Some(10)), "alpha-beta");
        assert_eq!(slug("alpha beta gamma", None, Some(11)), "alpha-beta");
        assert_eq!(slug("alpha beta gamma", None, Some(13)), "alpha-beta");
        assert_eq!(slug("alpha beta gamma", None, Some(8)), "alpha");
        assert_eq!(slug("alpha beta gamma", None, Some(3)), "alp");
        assert_eq!(slug("alpha beta", None, Some(1024)), "alpha-beta");
        assert_eq!(
            slug("Ærøskøbing Łódź", Some(Separator::Dot), None),
            "aeroskobing.lodz"
        );
        assert_eq!(slug("日本語", None, None), "");
    }

    #[test]
    fn regex_extract_groups_limits_and_errors() {
        let run = |pattern: &str, text: &str, group, max| {
            regex_extract(
                RegexArgs {
                    pattern: pattern.into(),
                    text: text.into(),
                    group,
                    max_matches: max,
                },
                &ctx(),
            )
        };
        assert_eq!(
            run(r"\d+", "a1 b22", None, None).unwrap().matches,
            ["1", "22"]
        );
        assert_eq!(
            run(r"(\w)=(\d)", "a=1 b=2", Some(2), None).unwrap().matches,
            ["1", "2"]
        );
        let capped = run(r"x", "xxxx", None, Some(2)).unwrap();
        assert_eq!((capped.matches.len(), capped.truncated), (2, true));
        assert!(matches!(
            run("(", "x", None, None),
            Err(ToolError::InvalidInput(_))
        ));
        assert!(matches!(
            run("a", "x", Some(3), None),
            Err(ToolError::InvalidInput(_))
        ));
        assert!(matches!(
            run(&"a".repeat(2000), "x", None, None),
            Err(ToolError::InvalidInput(_))
        ));
        // A pattern whose compiled form is huge is refused, not run.
        assert!(matches!(
            run(r"\w{1000}{1000}", "x", None, None),
            Err(ToolError::InvalidInput(_))
        ));
    }

    #[test]
    fn cases() {
        let run = |text: &str, to| {
            case(
                CaseArgs {
                    text: text.into(),
                    to,
                },
                &ctx(),
            )
            .unwrap()
            .text
        };
        assert_eq!(
            run("helloWorld foo-bar", Case::Snake),
            "hello_world_foo_bar"
        );
        assert_eq!(run("hello world", Case::Camel), "helloWorld");
        assert_eq!(run("hello_world", Case::Kebab), "hello-world");
        assert_eq!(run("hELLO wORLD", Case::Title), "Hello World");
        assert_eq!(run("straße", Case::Upper), "STRASSE");
        assert_eq!(run("hello  big\nworld", Case::Title), "Hello  Big\nWorld");
        assert_eq!(
            run("HTTPServer getHTTPResponse", Case::Snake),
            "http_server_get_http_response"
        );
        assert_eq!(run("version2Update", Case::Kebab), "version2-update");
        assert_eq!(run("user id", Case::Pascal), "UserId");
        assert_eq!(run("maxRetryCount", Case::Constant), "MAX_RETRY_COUNT");
        assert_eq!(run("", Case::Camel), "");
    }

    #[test]
    fn oversized_results_are_refused() {
        // 600 KiB of quotes: within the input limit, but each needs escaping.
        let err = case(
            CaseArgs {
                text: "\"".repeat(600 * 1024),
                to: Case::Upper,
            },
            &ctx(),
        )
        .unwrap_err();
        assert!(matches!(err, ToolError::InvalidInput(m) if m.contains("limit")));
    }

    #[test]
    fn oversized_text_is_refused() {
        let big = "x".repeat(MAX_TEXT_BYTES + 1);
        assert!(matches!(
            stats(StatsArgs { text: big }, &ctx()),
            Err(ToolError::InvalidInput(_))
        ));
    }
}
