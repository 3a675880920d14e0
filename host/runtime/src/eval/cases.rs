//! Scenario cases (`cases.jsonl`): parsing and checking.
//!
//! One JSON object per line; blank lines are skipped. Every error names
//! its line. Unknown fields are refused (a misspelt `expect` key would
//! otherwise make a case pass that checks nothing), and so are lines,
//! files and case counts past their caps: the file may come with a
//! plugin nobody has reviewed yet.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Longest line of a cases file, bytes (room for arguments at the host's
/// default argument cap).
pub const MAX_CASE_LINE_BYTES: usize = 2 * 1024 * 1024;
/// Most cases in one file.
pub const MAX_CASES: usize = 1000;
/// Largest cases file, bytes (as a package holds it).
pub const MAX_CASES_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Longest case name, bytes.
const MAX_NAME_BYTES: usize = 128;
/// Longest `matches` pattern, bytes.
const MAX_PATTERN_BYTES: usize = 1024;
/// Memory a compiled `matches` pattern may use (Rust syntax, so `\w` is
/// Unicode's: `\w{3}` takes more than 64 KiB).
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Most checks in one case's `expect.pointers`.
pub(crate) const MAX_POINTERS: usize = 64;
/// Most regular expressions in one file (`matches`, and those of
/// `expect.schema`s): with [`REGEX_SIZE_LIMIT`] each, at most 64 MiB
/// compiled, and each `matches` pattern's lazy DFAs (forward and reverse,
/// per thread using it) held to as much again.
pub(crate) const MAX_FILE_PATTERNS: usize = 256;

/// A cases file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CasesError {
    /// The file cannot be read.
    #[error("cannot read the cases file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CASES_FILE_BYTES`].
    #[error("the cases file {} is larger than {limit} bytes", path.display())]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        limit: u64,
    },
    /// A line is longer than [`MAX_CASE_LINE_BYTES`].
    #[error("line {line}: {size} bytes, more than the limit of {limit}")]
    LineTooLong {
        /// 1-based line number.
        line: usize,
        /// Its length.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// More than [`MAX_CASES`] cases.
    #[error("line {line}: more than {limit} cases")]
    TooManyCases {
        /// The line of the first case past the cap.
        line: usize,
        /// The cap.
        limit: usize,
    },
    /// A line is not a valid case.
    #[error("line {line}: {reason}")]
    Invalid {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file holds no case.
    #[error("no cases: the file holds no line with a case")]
    Empty,
    /// A signed plugin's cases file is not the one its signature covers.
    #[error("the cases file {} is not the signed one: {reason}", path.display())]
    Unsigned {
        /// The file.
        path: PathBuf,
        /// How it differs.
        reason: String,
    },
}

impl CasesError {
    /// A stable, machine-readable name for this error.
    pub fn kind(&self) -> &'static str {
        match self {
            CasesError::Io { .. } => "io",
            CasesError::FileTooLarge { .. }
            | CasesError::LineTooLong { .. }
            | CasesError::TooManyCases { .. }
            | CasesError::Invalid { .. }
            | CasesError::Empty => "cases_invalid",
            CasesError::Unsigned { .. } => "cases_unsigned",
        }
    }

    /// The line the error is on, when it is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            CasesError::LineTooLong { line, .. }
            | CasesError::TooManyCases { line, .. }
            | CasesError::Invalid { line, .. } => Some(*line),
            CasesError::Io { .. }
            | CasesError::FileTooLarge { .. }
            | CasesError::Empty
            | CasesError::Unsigned { .. } => None,
        }
    }
}

/// The scenario cases of a plugin, in file order.
#[derive(Debug, Clone, Default)]
pub struct Cases {
    cases: Vec<Case>,
}

/// One scenario: a call and what it must give.
#[derive(Debug, Clone)]
pub struct Case {
    /// The case's name (unique in its file).
    pub name: String,
    /// The tool's name in the plugin (`slugify`), or `plugin/tool`.
    pub tool: String,
    /// The arguments: a JSON object.
    pub arguments: Value,
    /// Who the call runs as (default `eval`).
    pub principal: Option<String>,
    /// The call's session (scopes workspace keys).
    pub session: Option<String>,
    /// What the call must give.
    pub expect: Expectation,
    /// The case's line in its file (1-based).
    pub line: usize,
}

/// What a case's call must give. Empty: the call must succeed.
#[derive(Debug, Clone, Default)]
pub struct Expectation {
    /// The output, exactly (JSON equality).
    pub output: Option<Value>,
    /// Checks of parts of the output.
    pub pointers: Vec<PointerCheck>,
    /// A JSON Schema the output must satisfy.
    pub schema: Option<Schema>,
    /// The call must fail with this error kind (`tool_error`,
    /// `arguments_invalid`, `fuel_exhausted`, ...).
    pub error: Option<String>,
}

/// A JSON Schema from a case, compiled.
#[derive(Debug, Clone)]
pub struct Schema {
    value: Value,
    validator: std::sync::Arc<crate::schema::GuestSchema>,
}

impl Schema {
    /// The schema as written.
    pub fn value(&self) -> &Value {
        &self.value
    }

    pub(crate) fn validator(&self) -> &crate::schema::GuestSchema {
        &self.validator
    }
}

/// A check of the value at a JSON pointer of the output.
#[derive(Debug, Clone)]
pub struct PointerCheck {
    /// The pointer (`/items/0/name`; empty for the whole output).
    pub pointer: String,
    /// What the value there must be.
    pub test: PointerTest,
}

/// What the value at a pointer must be.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PointerTest {
    /// Equal to this value.
    Equals(Value),
    /// Contain this: a substring of a string, an element of an array, a
    /// subset (key by key, equal values) of an object.
    Contains(Value),
    /// A string matching this regular expression (Rust `regex` syntax,
    /// unanchored: use `^…$` for the whole string).
    Matches(Regex),
}

impl PointerTest {
    /// `equals`, `contains` or `matches`.
    pub fn name(&self) -> &'static str {
        match self {
            PointerTest::Equals(_) => "equals",
            PointerTest::Contains(_) => "contains",
            PointerTest::Matches(_) => "matches",
        }
    }

    /// What the test wants, as JSON (the pattern, for `matches`).
    pub fn wanted(&self) -> Value {
        match self {
            PointerTest::Equals(v) | PointerTest::Contains(v) => v.clone(),
            PointerTest::Matches(re) => Value::String(re.as_str().to_owned()),
        }
    }
}

// ------------------------------------------------------------ wire form

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    tool: String,
    #[serde(default, deserialize_with = "present")]
    arguments: Option<Value>,
    principal: Option<String>,
    session: Option<String>,
    #[serde(default)]
    expect: RawExpect,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    #[serde(default, deserialize_with = "present")]
    output: Option<Value>,
    #[serde(default)]
    pointers: Vec<RawPointer>,
    #[serde(default, deserialize_with = "present")]
    schema: Option<Value>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPointer {
    pointer: String,
    #[serde(default, deserialize_with = "present")]
    equals: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    contains: Option<Value>,
    matches: Option<String>,
}

/// A field that is present is `Some`, even when it is `null` (an expected
/// output may be `null`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl Cases {
    /// Read the cases file at `path`.
    ///
    /// # Errors
    /// [`CasesError::Io`], [`CasesError::FileTooLarge`], and every error of
    /// [`Cases::parse`].
    pub fn from_file(path: &Path) -> Result<Cases, CasesError> {
        Cases::from_bytes(Cases::read_bytes(path)?)
    }

    /// The bytes of the cases file at `path`, at most
    /// [`MAX_CASES_FILE_BYTES`].
    pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>, CasesError> {
        let io = |source| CasesError::Io {
            path: path.to_owned(),
            source,
        };
        // A regular file only: a FIFO named cases.jsonl would hold the
        // command reading it forever.
        let bytes = crate::package::read_at_most(path, MAX_CASES_FILE_BYTES).map_err(io)?;
        if bytes.len() as u64 > MAX_CASES_FILE_BYTES {
            return Err(CasesError::FileTooLarge {
                path: path.to_owned(),
                limit: MAX_CASES_FILE_BYTES,
            });
        }
        Ok(bytes)
    }

    /// Cases from the bytes of a cases file.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Result<Cases, CasesError> {
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            CasesError::Invalid {
                line: valid.iter().filter(|b| **b == b'\n').count() + 1,
                reason: "not UTF-8".to_owned(),
            }
        })?;
        Cases::parse(&text)
    }

    /// Parse cases from JSON-lines `text`.
    ///
    /// # Errors
    /// [`CasesError::LineTooLong`], [`CasesError::TooManyCases`],
    /// [`CasesError::Empty`], and [`CasesError::Invalid`] for a line that
    /// is not JSON, has an unknown or missing field, a duplicate or bad
    /// name, arguments that are not an object, a pointer that is not a
    /// JSON pointer, a check that is not exactly one of `equals`,
    /// `contains`, `matches`, a pattern or schema that does not compile,
    /// an unknown error kind, or `error` together with output checks.
    pub fn parse(text: &str) -> Result<Cases, CasesError> {
        let mut cases = Vec::new();
        let mut names = BTreeSet::new();
        // Regular expressions of the whole file (`matches`, and those of
        // `expect.schema`s): what they hold compiled is bounded for the
        // file, not only for each case.
        let mut patterns = 0;
        for (index, line_text) in text.split('\n').enumerate() {
            let line = index + 1;
            if line_text.len() > MAX_CASE_LINE_BYTES {
                return Err(CasesError::LineTooLong {
                    line,
                    size: line_text.len(),
                    limit: MAX_CASE_LINE_BYTES,
                });
            }
            let trimmed = line_text.trim();
            if trimmed.is_empty() {
                continue;
            }
            if cases.len() == MAX_CASES {
                return Err(CasesError::TooManyCases {
                    line,
                    limit: MAX_CASES,
                });
            }
            let invalid = |reason: String| CasesError::Invalid { line, reason };
            let raw: RawCase = serde_json::from_str(trimmed).map_err(|e| invalid(e.to_string()))?;
            let case = Case::from_raw(raw, line).map_err(invalid)?;
            patterns += case.expect.patterns();
            if patterns > MAX_FILE_PATTERNS {
                return Err(invalid(format!(
                    "the file's checks hold more than {MAX_FILE_PATTERNS} regular expressions (`matches`, and schemas' `pattern`s) in all"
                )));
            }
            if !names.insert(case.name.clone()) {
                return Err(invalid(format!(
                    "case name {:?} is used by an earlier case",
                    case.name
                )));
            }
            cases.push(case);
        }
        if cases.is_empty() {
            return Err(CasesError::Empty);
        }
        Ok(Cases { cases })
    }

    /// The cases, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Case> {
        self.cases.iter()
    }

    /// How many cases there are.
    pub fn len(&self) -> usize {
        self.cases.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.cases.is_empty()
    }
}

impl Case {
    fn from_raw(raw: RawCase, line: usize) -> Result<Case, String> {
        let name = raw.name;
        if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
            return Err(format!(
                "invalid case name {:?}: 1 to {MAX_NAME_BYTES} bytes without control characters",
                crate::pipeline::gate::bounded(&name, 64)
            ));
        }
        let valid_tool = |t: &str| {
            !t.is_empty()
                && t.len() <= 128
                && !t.chars().any(|c| c.is_control() || c.is_whitespace())
        };
        let tool_ok = match raw.tool.split_once('/') {
            Some((plugin, tool)) => valid_tool(plugin) && valid_tool(tool) && !tool.contains('/'),
            None => valid_tool(&raw.tool),
        };
        if !tool_ok {
            return Err(format!(
                "case {name:?}: invalid tool {:?}: a tool name, or plugin/tool",
                crate::pipeline::gate::bounded(&raw.tool, 64)
            ));
        }
        let arguments = match raw.arguments {
            None => Value::Object(serde_json::Map::new()),
            Some(Value::Object(map)) => Value::Object(map),
            Some(other) => {
                return Err(format!(
                    "case {name:?}: arguments must be a JSON object, not {}",
                    crate::schema::type_name(&other)
                ));
            }
        };
        for (what, value) in [("principal", &raw.principal), ("session", &raw.session)] {
            if let Some(v) = value
                && (v.is_empty() || v.len() > 128 || v.chars().any(char::is_control))
            {
                return Err(format!(
                    "case {name:?}: invalid {what}: 1 to 128 bytes without control characters"
                ));
            }
        }
        let expect =
            Expectation::from_raw(raw.expect).map_err(|e| format!("case {name:?}: {e}"))?;
        Ok(Case {
            name,
            tool: raw.tool,
            arguments,
            principal: raw.principal,
            session: raw.session,
            expect,
            line,
        })
    }

    /// The tool's name inside its plugin, and the plugin the case names
    /// (if it names one).
    pub(crate) fn tool_parts(&self) -> (Option<&str>, &str) {
        match self.tool.split_once('/') {
            Some((plugin, tool)) => (Some(plugin), tool),
            None => (None, &self.tool),
        }
    }
}

impl Expectation {
    fn from_raw(raw: RawExpect) -> Result<Expectation, String> {
        if let Some(kind) = &raw.error {
            if raw.output.is_some() || !raw.pointers.is_empty() || raw.schema.is_some() {
                return Err(
                    "expect.error cannot be combined with output, pointers or schema: a call that fails has no output"
                        .to_owned(),
                );
            }
            if !crate::error::CALL_ERROR_KINDS.contains(&kind.as_str()) {
                return Err(format!(
                    "expect.error {:?} is not an error kind (for example tool_error, arguments_invalid, fuel_exhausted)",
                    crate::pipeline::gate::bounded(kind, 64)
                ));
            }
        }
        if raw.pointers.len() > MAX_POINTERS {
            return Err(format!(
                "expect.pointers has {} checks, more than the limit of {MAX_POINTERS}",
                raw.pointers.len()
            ));
        }
        let mut pointers = Vec::with_capacity(raw.pointers.len());
        for (i, p) in raw.pointers.into_iter().enumerate() {
            // RFC 6901: empty, or `/`-separated tokens in which `~` is
            // only ever `~0` or `~1` (another escape would fail later as
            // "nothing at", looking like the output's fault).
            let escapes_ok = p
                .pointer
                .split('~')
                .skip(1)
                .all(|rest| rest.starts_with('0') || rest.starts_with('1'));
            if !(p.pointer.is_empty() || p.pointer.starts_with('/')) || !escapes_ok {
                return Err(format!(
                    "expect.pointers[{i}]: {:?} is not a JSON pointer (empty, or starting with /, with `~` only as `~0` or `~1`)",
                    crate::pipeline::gate::bounded(&p.pointer, 64)
                ));
            }
            let test = match (p.equals, p.contains, p.matches) {
                (Some(v), None, None) => PointerTest::Equals(v),
                (None, Some(v), None) => PointerTest::Contains(v),
                (None, None, Some(pattern)) => PointerTest::Matches(
                    compile(&pattern).map_err(|e| format!("expect.pointers[{i}].matches: {e}"))?,
                ),
                _ => {
                    return Err(format!(
                        "expect.pointers[{i}]: give exactly one of equals, contains, matches"
                    ));
                }
            };
            pointers.push(PointerCheck {
                pointer: p.pointer,
                test,
            });
        }
        let schema = match raw.schema {
            None => None,
            Some(value) => {
                let text = value.to_string();
                let (value, validator) = crate::schema::compile_guest_schema(&text, false)
                    .map_err(|e| format!("expect.schema: {e}"))?;
                Some(Schema {
                    value,
                    validator: std::sync::Arc::new(validator),
                })
            }
        };
        Ok(Expectation {
            output: raw.output,
            pointers,
            schema,
            error: raw.error,
        })
    }
}

fn compile(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "pattern is {} bytes, more than the limit of {MAX_PATTERN_BYTES}",
            pattern.len()
        ));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        // The lazy DFA's cache too (2 MiB each by default): the file's
        // bound holds for both.
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("pattern does not compile: {e}"))
}

/// Largest value a report shows as it came; larger ones are described.
pub(crate) const MAX_SHOWN_VALUE_BYTES: usize = 4096;

/// `value`, or when its JSON is over [`MAX_SHOWN_VALUE_BYTES`] a string
/// saying how large it was.
pub(crate) fn bounded_value(value: Value) -> Value {
    let size = serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len());
    if size <= MAX_SHOWN_VALUE_BYTES {
        value
    } else {
        Value::String(format!(
            "[{size} bytes of {}, not shown]",
            crate::schema::type_name(&value)
        ))
    }
}

/// How one check of a case failed: what was expected, what came, and the
/// JSON pointer of the first difference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mismatch {
    /// Which check: `output`, `pointer /a/0 equals`, `schema`, `error`,
    /// `outcome`.
    pub check: String,
    /// Where in the output the first difference is (a JSON pointer).
    pub at: String,
    /// What was expected there.
    pub expected: Value,
    /// What was there (`null` when nothing was).
    pub actual: Value,
    /// In words.
    pub message: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.check, self.message)
    }
}

/// Shorten JSON for a message.
fn show(value: &Value) -> String {
    crate::pipeline::gate::bounded(&value.to_string(), 200)
}

fn pointer_child(base: &str, key: &str) -> String {
    format!("{base}/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// The first place where `actual` differs from `expected`: its pointer and
/// the two values there (`None`: absent). `None` when they are equal.
pub(crate) fn first_difference(
    expected: &Value,
    actual: &Value,
) -> Option<(String, Option<Value>, Option<Value>)> {
    fn walk(
        at: String,
        expected: &Value,
        actual: &Value,
    ) -> Option<(String, Option<Value>, Option<Value>)> {
        match (expected, actual) {
            (Value::Object(e), Value::Object(a)) => {
                let keys: BTreeSet<&String> = e.keys().chain(a.keys()).collect();
                for key in keys {
                    let here = pointer_child(&at, key);
                    match (e.get(key), a.get(key)) {
                        (Some(ev), Some(av)) => {
                            if let Some(found) = walk(here, ev, av) {
                                return Some(found);
                            }
                        }
                        (ev, av) => return Some((here, ev.cloned(), av.cloned())),
                    }
                }
                None
            }
            (Value::Array(e), Value::Array(a)) => {
                for i in 0..e.len().max(a.len()) {
                    let here = format!("{at}/{i}");
                    match (e.get(i), a.get(i)) {
                        (Some(ev), Some(av)) => {
                            if let Some(found) = walk(here, ev, av) {
                                return Some(found);
                            }
                        }
                        (ev, av) => return Some((here, ev.cloned(), av.cloned())),
                    }
                }
                None
            }
            _ if expected == actual => None,
            _ => Some((at, Some(expected.clone()), Some(actual.clone()))),
        }
    }
    walk(String::new(), expected, actual)
}

/// A mismatch for `check` from the first difference of two values; its
/// pointer is prefixed with `base` (where the two values sit in the
/// output).
pub(crate) fn difference(
    check: &str,
    base: &str,
    expected: &Value,
    actual: &Value,
) -> Option<Mismatch> {
    let (rel, want, got) = first_difference(expected, actual)?;
    let at = format!("{base}{rel}");
    let what = match (&want, &got) {
        (Some(w), Some(g)) => format!("expected {}, got {}", show(w), show(g)),
        (Some(w), None) => format!("expected {}, missing", show(w)),
        (None, Some(g)) => format!("unexpected {}", show(g)),
        (None, None) => "differs".to_owned(),
    };
    let message = if rel.is_empty() && !base.is_empty() {
        what
    } else {
        format!("at {}: {what}", pointer_name(&at))
    };
    Some(Mismatch {
        check: check.to_owned(),
        at,
        expected: want.unwrap_or(Value::Null),
        actual: got.unwrap_or(Value::Null),
        message,
    })
}

fn pointer_name(pointer: &str) -> &str {
    if pointer.is_empty() {
        "the root"
    } else {
        pointer
    }
}

/// Whether `value` contains `part`: a substring of a string, an element of
/// an array, a subset (key by key, equal values) of an object.
pub(crate) fn contains(value: &Value, part: &Value) -> bool {
    match (value, part) {
        (Value::String(s), Value::String(p)) => s.contains(p.as_str()),
        (Value::Array(items), _) => items.contains(part),
        (Value::Object(map), Value::Object(sub)) => sub
            .iter()
            .all(|(k, v)| map.get(k).is_some_and(|have| have == v)),
        _ => false,
    }
}

impl Expectation {
    /// The regular expressions its checks hold.
    fn patterns(&self) -> usize {
        let matches = self
            .pointers
            .iter()
            .filter(|p| matches!(p.test, PointerTest::Matches(_)))
            .count();
        matches + self.schema.as_ref().map_or(0, |s| s.validator.patterns())
    }

    /// Check a successful call's `output`: every failed check.
    pub(crate) fn check_output(&self, output: &Value) -> Vec<Mismatch> {
        let mut failures = Vec::new();
        if let Some(kind) = &self.error {
            failures.push(Mismatch {
                check: "error".to_owned(),
                at: String::new(),
                expected: Value::String(kind.clone()),
                actual: Value::String("ok".to_owned()),
                message: format!("expected the call to fail with {kind}, but it succeeded"),
            });
            return failures;
        }
        if let Some(expected) = &self.output
            && let Some(m) = difference("output", "", expected, output)
        {
            failures.push(m);
        }
        for check in &self.pointers {
            let name = format!(
                "pointer {} {}",
                pointer_name(&check.pointer),
                check.test.name()
            );
            let Some(value) = output.pointer(&check.pointer) else {
                failures.push(Mismatch {
                    check: name,
                    at: check.pointer.clone(),
                    expected: check.test.wanted(),
                    actual: Value::Null,
                    message: format!("nothing at {}", pointer_name(&check.pointer)),
                });
                continue;
            };
            let failure = match &check.test {
                PointerTest::Equals(want) => difference(&name, &check.pointer, want, value),
                PointerTest::Contains(part) => (!contains(value, part)).then(|| Mismatch {
                    check: name.clone(),
                    at: check.pointer.clone(),
                    expected: part.clone(),
                    actual: value.clone(),
                    message: format!("{} does not contain {}", show(value), show(part)),
                }),
                PointerTest::Matches(re) => {
                    let ok = value.as_str().is_some_and(|s| re.is_match(s));
                    (!ok).then(|| Mismatch {
                        check: name.clone(),
                        at: check.pointer.clone(),
                        expected: Value::String(re.as_str().to_owned()),
                        actual: value.clone(),
                        message: match value.as_str() {
                            Some(_) => format!("{} does not match /{}/", show(value), re.as_str()),
                            None => format!(
                                "{} is {}, not a string",
                                show(value),
                                crate::schema::type_name(value)
                            ),
                        },
                    })
                }
            };
            failures.extend(failure);
        }
        if let Some(schema) = &self.schema {
            let violations = schema.validator().violations(output);
            if let Some(first) = violations.first() {
                let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
                failures.push(Mismatch {
                    check: "schema".to_owned(),
                    at: first.path.clone(),
                    expected: schema.value().clone(),
                    actual: output.pointer(&first.path).cloned().unwrap_or(Value::Null),
                    message: format!("the output does not match the schema: {}", list.join("; ")),
                });
            }
        }
        // What came is shown cut short when large: a check of the whole
        // output would otherwise copy it into the report once more.
        for failure in &mut failures {
            failure.actual = bounded_value(std::mem::take(&mut failure.actual));
        }
        failures
    }

    /// Check a failed call's error `kind` (and message, for the report).
    pub(crate) fn check_error(&self, kind: &str, message: &str) -> Vec<Mismatch> {
        match &self.error {
            Some(want) if want == kind => Vec::new(),
            Some(want) => vec![Mismatch {
                check: "error".to_owned(),
                at: String::new(),
                expected: Value::String(want.clone()),
                actual: Value::String(kind.to_owned()),
                message: format!("expected {want}, got {kind}: {message}"),
            }],
            None => vec![Mismatch {
                check: "outcome".to_owned(),
                at: String::new(),
                expected: Value::String("ok".to_owned()),
                actual: Value::String(kind.to_owned()),
                message: format!("the call failed with {kind}: {message}"),
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_err(text: &str) -> CasesError {
        Cases::parse(text).expect_err("should not parse")
    }

    #[test]
    fn a_case_parses_with_every_check() {
        let cases = Cases::parse(concat!(
            "\n",
            r#"{"name":"a","tool":"slugify","arguments":{"text":"Hi"},"expect":{"output":{"slug":"hi"}}}"#,
            "\n\n",
            r#"{"name":"b","tool":"text/stats","principal":"alice","session":"s1","expect":{"pointers":[{"pointer":"/words","equals":1},{"pointer":"/list","contains":2},{"pointer":"/s","matches":"^h"}],"schema":{"type":"object"}}}"#,
            "\n",
            r#"{"name":"c","tool":"slugify","arguments":{},"expect":{"error":"arguments_invalid"}}"#,
            "\n",
        ))
        .unwrap();
        assert_eq!(cases.len(), 3);
        let all: Vec<&Case> = cases.iter().collect();
        assert_eq!(all[0].line, 2);
        assert_eq!(all[1].line, 4);
        assert_eq!(all[1].tool_parts(), (Some("text"), "stats"));
        assert_eq!(all[1].expect.pointers.len(), 3);
        assert_eq!(all[2].expect.error.as_deref(), Some("arguments_invalid"));
        // No arguments: an empty object.
        assert_eq!(
            Cases::parse(r#"{"name":"x","tool":"t"}"#)
                .unwrap()
                .iter()
                .next()
                .unwrap()
                .arguments,
            json!({})
        );
    }

    /// A pointer's escapes (`~0` for `~`, `~1` for `/`) are accepted;
    /// other uses of `~` are refused (above).
    #[test]
    fn a_pointer_with_escapes_is_a_pointer() {
        let cases = Cases::parse(
            r#"{"name":"x","tool":"t","expect":{"pointers":[{"pointer":"/a~0b~1c/~1/~01","equals":1}]}}"#,
        )
        .unwrap();
        assert_eq!(cases.iter().count(), 1);
    }

    #[test]
    fn an_expected_null_output_is_kept() {
        let cases = Cases::parse(r#"{"name":"x","tool":"t","expect":{"output":null}}"#).unwrap();
        assert_eq!(
            cases.iter().next().unwrap().expect.output,
            Some(Value::Null)
        );
    }

    #[test]
    fn bad_lines_are_refused_with_their_line_number() {
        let ok = r#"{"name":"ok","tool":"t"}"#;
        let cases: &[(&str, &str)] = &[
            ("not json", "expected"),
            (
                r#"{"name":"x","tool":"t","extra":1}"#,
                "unknown field `extra`",
            ),
            (
                r#"{"name":"x","tool":"t","expect":{"ouput":1}}"#,
                "unknown field `ouput`",
            ),
            (r#"{"tool":"t"}"#, "missing field `name`"),
            (r#"{"name":"x"}"#, "missing field `tool`"),
            (r#"{"name":"","tool":"t"}"#, "invalid case name"),
            (r#"{"name":"x","tool":"a b"}"#, "invalid tool"),
            (r#"{"name":"x","tool":"a/b/c"}"#, "invalid tool"),
            (
                r#"{"name":"x","tool":"t","arguments":[1]}"#,
                "arguments must be a JSON object, not an array",
            ),
            (
                r#"{"name":"x","tool":"t","principal":""}"#,
                "invalid principal",
            ),
            (
                r#"{"name":"x","tool":"t","expect":{"error":"invalid_arguments"}}"#,
                "is not an error kind",
            ),
            (
                r#"{"name":"x","tool":"t","expect":{"error":"tool_error","output":1}}"#,
                "cannot be combined",
            ),
            (
                r#"{"name":"x","tool":"t","expect":{"pointers":[{"pointer":"a","equals":1}]}}"#,
                "is not a JSON pointer",
            ),
            (
                r#"{"name":"x","tool":"t","expect":{"pointers":[{"pointer":"/a~2b","equals":1}]}}"#,
                "is not a JSON pointer",
            ),
            (
                r#"{"name":"x","tool":"t","expect":{"pointers":[{"pointer":"/a~","equals":1}]}}"#,
                "is not a JSON pointer",
            ),
            (
                r#"{"name":"x","tool":"t","expect":{"pointers":[{"pointer":"/a~~0","equals":1}]}}"#,
                "is not a JSON pointer",
            ),
            (
                r#"{"name":"x","tool":"t","expect":{"pointers":[{"pointer":"/a"}]}}"#,
                "exactly one of",
            ),
            (
                r#"{"name":"x","tool":"t","expect":{"pointers":[{"pointer":"/a","equals":1,"contains":1}]}}"#,
                "exactly one of",
            ),
            (
                r#"{"name":"x","tool":"t","expect":{"pointers":[{"pointer":"/a","matches":"("}]}}"#,
                "does not compile",
            ),
            (
                r#"{"name":"x","tool":"t","expect":{"pointers":[{"pointer":"/a","matches":"(?=a)"}]}}"#,
                "does not compile",
            ),
            (
                r#"{"name":"x","tool":"t","expect":{"schema":{"type":"nonsense"}}}"#,
                "expect.schema",
            ),
            (
                r#"{"name":"x","tool":"t","expect":{"schema":3}}"#,
                "expect.schema",
            ),
            (r#"{"name":"ok","tool":"t"}"#, "used by an earlier case"),
        ];
        for (line, want) in cases {
            let text = format!("{ok}\n\n{line}\n");
            let error = parse_err(&text);
            assert_eq!(error.line(), Some(3), "{line}: {error}");
            assert_eq!(error.kind(), "cases_invalid");
            let message = error.to_string();
            assert!(message.starts_with("line 3: "), "{message}");
            assert!(message.contains(want), "{line}: {message}");
        }
    }

    /// A hostile cases file held gigabytes of compiled patterns (tens of
    /// thousands of `matches` in one case), and a failed check of a large
    /// output copied it whole into the report.
    #[test]
    fn patterns_and_what_a_report_shows_are_bounded() {
        let pointer = r#"{"pointer":"","matches":"^a+$"}"#;
        let many = |n: usize| vec![pointer; n].join(",");
        let line = format!(
            r#"{{"name":"a","tool":"t","expect":{{"pointers":[{}]}}}}"#,
            many(MAX_POINTERS + 1)
        );
        let error = parse_err(&line).to_string();
        assert!(error.contains("more than the limit of 64"), "{error}");
        let lines: Vec<String> = (0..=MAX_FILE_PATTERNS / MAX_POINTERS)
            .map(|i| {
                format!(
                    r#"{{"name":"c{i}","tool":"t","expect":{{"pointers":[{}]}}}}"#,
                    many(MAX_POINTERS)
                )
            })
            .collect();
        let error = parse_err(&lines.join("\n")).to_string();
        assert!(error.contains("regular expressions"), "{error}");
        assert!(
            error.starts_with(&format!("line {}: ", MAX_FILE_PATTERNS / MAX_POINTERS + 1)),
            "{error}"
        );

        let small = serde_json::json!({"a": 1});
        assert_eq!(bounded_value(small.clone()), small);
        let large = Value::String("x".repeat(MAX_SHOWN_VALUE_BYTES));
        assert_eq!(
            bounded_value(large),
            Value::String(format!(
                "[{} bytes of a string, not shown]",
                MAX_SHOWN_VALUE_BYTES + 2
            ))
        );
    }

    #[test]
    fn caps_are_enforced() {
        let long = format!(
            "{{\"name\":\"x\",\"tool\":\"t\",\"arguments\":{{\"a\":\"{}\"}}}}",
            "a".repeat(MAX_CASE_LINE_BYTES)
        );
        assert!(matches!(
            parse_err(&long),
            CasesError::LineTooLong { line: 1, .. }
        ));
        let many: String = (0..=MAX_CASES)
            .map(|i| format!("{{\"name\":\"c{i}\",\"tool\":\"t\"}}\n"))
            .collect();
        assert!(matches!(
            parse_err(&many),
            CasesError::TooManyCases { line, limit: MAX_CASES } if line == MAX_CASES + 1
        ));
        assert!(matches!(parse_err("\n  \n"), CasesError::Empty));
    }

    #[test]
    fn a_file_that_is_not_utf8_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::package::CASES_FILE);
        std::fs::write(
            &path,
            b"{\"name\":\"a\",\"tool\":\"t\"}\n{\"name\":\"\xff\"}\n",
        )
        .unwrap();
        let error = Cases::from_file(&path).unwrap_err();
        assert_eq!(error.line(), Some(2), "{error}");
        assert!(matches!(
            Cases::from_file(&dir.path().join("missing")),
            Err(CasesError::Io { .. })
        ));
    }

    #[test]
    fn the_first_difference_is_named_by_its_pointer() {
        let want = json!({"a": [1, {"b": "x"}], "c/d": 1});
        assert_eq!(first_difference(&want, &want.clone()), None);
        let got = json!({"a": [1, {"b": "y"}], "c/d": 1});
        let m = difference("output", "", &want, &got).unwrap();
        assert_eq!(m.at, "/a/1/b");
        assert_eq!(m.message, r#"at /a/1/b: expected "x", got "y""#);
        let got = json!({"a": [1], "c/d": 1});
        let m = difference("output", "", &want, &got).unwrap();
        assert_eq!(m.at, "/a/1");
        assert!(m.message.ends_with("missing"), "{}", m.message);
        let got = json!({"a": [1, {"b": "x"}], "c/d": 2});
        assert_eq!(difference("output", "", &want, &got).unwrap().at, "/c~1d");
        let m = difference("output", "", &json!(1), &json!("1")).unwrap();
        assert_eq!(m.at, "");
        assert!(m.message.starts_with("at the root"), "{}", m.message);
    }

    #[test]
    fn contains_means_substring_element_or_subset() {
        assert!(contains(&json!("hello world"), &json!("lo w")));
        assert!(!contains(&json!("hello"), &json!("x")));
        assert!(contains(&json!([1, {"a": 2}]), &json!({"a": 2})));
        assert!(!contains(&json!([1, 2]), &json!(3)));
        assert!(contains(&json!({"a": 1, "b": 2}), &json!({"b": 2})));
        assert!(!contains(&json!({"a": 1}), &json!({"a": 2})));
        assert!(!contains(&json!(12), &json!(1)));
    }

    fn expectation(line: &str) -> Expectation {
        Cases::parse(line)
            .unwrap()
            .iter()
            .next()
            .unwrap()
            .expect
            .clone()
    }

    #[test]
    fn output_checks_report_every_failure() {
        let e = expectation(
            r#"{"name":"x","tool":"t","expect":{"pointers":[{"pointer":"/n","equals":1},{"pointer":"/s","contains":"ell"},{"pointer":"/s","matches":"^h.*o$"},{"pointer":"/missing","equals":1}],"schema":{"type":"object","required":["n"]}}}"#,
        );
        assert_eq!(e.check_output(&json!({"n": 1, "s": "hello"})).len(), 1);
        let failures = e.check_output(&json!({"n": 2, "s": 3}));
        let checks: Vec<&str> = failures.iter().map(|m| m.check.as_str()).collect();
        assert_eq!(
            checks,
            [
                "pointer /n equals",
                "pointer /s contains",
                "pointer /s matches",
                "pointer /missing equals"
            ]
        );
        assert_eq!(failures[0].message, "expected 1, got 2");
        assert!(failures[2].message.contains("not a string"));
        let failures = e.check_output(&json!({"s": "hello"}));
        assert!(failures.iter().any(|m| m.check == "schema"), "{failures:?}");
        let nested = expectation(
            r#"{"name":"x","tool":"t","expect":{"pointers":[{"pointer":"/o","equals":{"a":[1,2]}}]}}"#,
        );
        let failures = nested.check_output(&json!({"o": {"a": [1, 3]}}));
        assert_eq!(failures[0].at, "/o/a/1");
        assert_eq!(failures[0].message, "at /o/a/1: expected 2, got 3");
    }

    #[test]
    fn error_checks_compare_kinds() {
        let e = expectation(r#"{"name":"x","tool":"t","expect":{"error":"fuel_exhausted"}}"#);
        assert!(e.check_error("fuel_exhausted", "out of fuel").is_empty());
        assert_eq!(e.check_error("tool_error", "no")[0].check, "error");
        assert_eq!(e.check_output(&json!({}))[0].check, "error");
        let ok = expectation(r#"{"name":"x","tool":"t"}"#);
        assert!(ok.check_output(&json!({"anything": 1})).is_empty());
        assert_eq!(ok.check_error("tool_error", "no")[0].check, "outcome");
    }
}
