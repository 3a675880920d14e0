//! The `text` plugin: statistics, URL slugs, regex extraction and case
//! conversion. Pure functions; every input is size-capped.

use airlock_sdk::{Context, JsonSchema, ToolError, plugin, schemars};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Largest text any tool accepts.
const MAX_TEXT_BYTES: usize = 1024 * 1024;
/// Longest regular expression accepted.
const MAX_PATTERN_BYTES: usize = 1024;
/// Memory the compiled regex may use (bounds pathological patterns).
const REGEX_SIZE_LIMIT: usize = 1024 * 1024;
/// Most matches `regex-extract` ever returns.
const MAX_MATCHES: u32 = 1000;

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
    let folded = args
        .text
        .nfkd()
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
                if slug.len() + 2 > max {
                    break;
                }
                slug.push(sep);
            }
            if slug.len() + 1 > max {
                break;
            }
            pending_sep = false;
            slug.push(c.to_ascii_lowercase());
        } else {
            pending_sep = true;
        }
    }
    Ok(Slug { slug })
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
    let text = match args.to {
        Case::Upper => args.text.to_uppercase(),
        Case::Lower => args.text.to_lowercase(),
        Case::Title => args
            .text
            .split_whitespace()
            .map(capitalize)
            .collect::<Vec<_>>()
            .join(" "),
        Case::Snake => words()
            .map(|w| w.to_lowercase())
            .collect::<Vec<_>>()
            .join("_"),
        Case::Kebab => words()
            .map(|w| w.to_lowercase())
            .collect::<Vec<_>>()
            .join("-"),
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
    Ok(Converted { text })
}

/// Split `helloWorld` into `hello`, `World`.
fn split_camel(word: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut prev_lower = false;
    for c in word.chars() {
        if c.is_uppercase() && prev_lower {
            out.push(String::new());
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        if let Some(last) = out.last_mut() {
            last.push(c);
        }
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
    "case" => case: "Convert text to upper, lower, title, snake, kebab or camel case.",
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
