//! JSON Schema helpers shared by manifests, tool arguments and tool results.

use serde_json::Value;

use crate::error::SchemaViolation;

/// Largest schema text a guest may declare for one tool.
pub(crate) use airlock_names::MAX_SCHEMA_BYTES;
/// Most regular expressions (`pattern`, `patternProperties` keys) in one
/// guest schema.
pub(crate) const MAX_SCHEMA_PATTERNS: usize = 4096;
/// Most regular expressions in all the schemas of one plugin, so what they
/// hold compiled is bounded whatever the count of tools: with
/// [`PATTERN_SIZE_LIMIT`] each, at most 256 MiB.
pub(crate) const MAX_PATTERNS: usize = 4096;
/// Memory one compiled pattern, and its lazy DFA's cache, may use (the
/// regex crate's default is 10 MiB).
pub(crate) const PATTERN_SIZE_LIMIT: usize = 64 * 1024;

/// Most violations reported for one document; the rest are summarised.
const MAX_VIOLATIONS: usize = 64;

/// Every place where `instance` fails `validator`, capped at
/// [`MAX_VIOLATIONS`] entries (a final entry says how many were left out).
/// Bytes of one violation's message: `jsonschema` quotes the failing
/// value whole (`"…" is not of type "number"`), and that value may be a
/// guest's megabytes.
const MAX_VIOLATION_BYTES: usize = 1024;

/// `error`'s message, formatted no further than [`MAX_VIOLATION_BYTES`]
/// (the writer refuses the rest, which stops the formatting: a quoted
/// value is never written out whole).
fn message(error: &impl std::fmt::Display) -> String {
    struct Capped(String, bool);
    impl std::fmt::Write for Capped {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = MAX_VIOLATION_BYTES.saturating_sub(self.0.len());
            if s.len() <= room {
                self.0.push_str(s);
                return Ok(());
            }
            self.0.push_str(airlock_audit::text::prefix(s, room));
            self.1 = true;
            Err(std::fmt::Error)
        }
    }
    let mut out = Capped(String::new(), false);
    let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{error}"));
    if out.1 {
        out.0.push_str(airlock_audit::text::TRUNCATED_MARK);
    }
    out.0
}

pub(crate) fn violations(
    validator: &jsonschema::Validator,
    instance: &Value,
) -> Vec<SchemaViolation> {
    let mut out = Vec::new();
    let mut omitted = 0usize;
    for error in validator.iter_errors(instance) {
        if out.len() < MAX_VIOLATIONS {
            out.push(SchemaViolation {
                path: message(error.instance_path()),
                message: message(&error),
            });
        } else {
            omitted += 1;
        }
    }
    if omitted > 0 {
        out.push(SchemaViolation {
            path: String::new(),
            message: format!("{omitted} more violations not shown"),
        });
    }
    out
}

/// Most a guest schema may apply to one value: the sum, over every
/// subschema that can reach the same place of a document (through `allOf`,
/// `anyOf`, `$ref`, ...), of its weight (one, plus its `enum` and `required`
/// entries). Real tool schemas stay in the tens.
pub(crate) const MAX_SCHEMA_WIDTH: u64 = 65_536;

/// Deepest a guest schema may reach into a document, `$ref`s followed.
const MAX_SCHEMA_DEPTH: usize = 256;

/// Most subschemas a walk of a guest schema may be inside of at once,
/// `$ref`s followed (a chain of `$ref`s nests without going deeper into
/// the document).
const MAX_SCHEMA_NESTING: usize = 1024;

/// Most validation steps one document may cost: the document's values at
/// each depth times the schema's width there, summed. Measured on the
/// widest schema a guest can declare, a step costs about 60 ns
/// (`docs/security.md`): a document that could cost more is refused
/// unvalidated, so validation, which runs on the host outside fuel and
/// deadline, stays under about a second.
pub(crate) const MAX_VALIDATION_STEPS: u64 = 16_000_000;

/// Most steps validated where the call runs, on the async worker; a
/// document that can cost more (about 3 ms and up) is validated with the
/// worker handed to the runtime's other tasks first (`block_in_place`), so
/// a caller sending heavy documents to a wide schema stalls no one else.
const MAX_IN_PLACE_STEPS: u64 = 50_000;

/// Most steps for which every violation is listed; past it only the first
/// is (listing costs some thirty times a plain check, per failing branch).
const MAX_LISTING_STEPS: u64 = 250_000;

/// Most bytes of paths a listing of every violation could build: each
/// violation `jsonschema` lists holds its value's whole path, built before
/// the first is returned, so a document of thousands of members under one
/// long key would hold that key thousands of times (a megabyte key and
/// 30,000 members: 36 GB). Past it only the first violation is named.
const MAX_LISTING_PATH_BYTES: u64 = 16 * 1024 * 1024;

/// What validating a document can cost ([`GuestSchema::visit`]).
#[derive(Debug, Default)]
struct Cost {
    /// Validation steps.
    steps: u64,
    /// Bytes of the paths a listing of every violation could hold.
    paths: u64,
}

/// Bytes of a string that cost about one step to scan (`pattern`,
/// `format`, `minLength`...: a linear pass, about a nanosecond a byte,
/// against about 60 ns a step).
const STRING_BYTES_PER_STEP: usize = 64;

/// The steps scanning `bytes` of string costs beyond the value's own, for
/// each of the `width` subschemas that apply to it: a schema applying
/// thousands of `pattern`s to one property, given a megabyte string, would
/// otherwise cost minutes for a handful of counted steps.
fn string_steps(width: u64, bytes: usize) -> u64 {
    width.saturating_mul(runs(bytes))
}

/// A guest's schema, compiled, with what validating against it can cost.
pub(crate) struct GuestSchema {
    validator: jsonschema::Validator,
    /// Its regular expressions, counted against [`MAX_PATTERNS`].
    patterns: usize,
    /// At each depth of a document, what the subschemas that can apply to
    /// one value there cost it.
    width: Vec<Weight>,
}

/// What the subschemas that can apply to one value cost it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Weight {
    /// Steps, whatever the value: one per subschema, plus one per `enum`
    /// and `required` entry (and per 64 bytes of a string or of an
    /// object's keys, see [`string_steps`]).
    each: u64,
    /// `enum` and `const` entries that are arrays or objects: comparing
    /// one with the value reads as much of the value as the entry holds,
    /// so each costs up to the value's whole size.
    whole: u64,
    /// `uniqueItems: true`: every value of the array hashed once (see
    /// [`UniqueItems`]), two steps each, and compared with the rare item
    /// whose hash it meets.
    unique: u64,
}

impl Weight {
    fn add(&mut self, other: &Weight) {
        self.each = self.each.saturating_add(other.each);
        self.whole = self.whole.saturating_add(other.whole);
        self.unique = self.unique.saturating_add(other.unique);
    }

    /// What a subschema costs a value itself, not counting the
    /// subschemas it holds. (A function of its own: [`Width::of`] recurses
    /// up to [`MAX_SCHEMA_NESTING`] deep, so its frame stays small.)
    #[inline(never)]
    fn own(schema: &serde_json::Map<String, Value>) -> Weight {
        let entries = |k: &str| {
            schema
                .get(k)
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice)
        };
        let container = |v: &Value| v.is_array() || v.is_object();
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Weight {
            each: 1u64
                .saturating_add(count(entries("enum").len()))
                .saturating_add(count(entries("required").len())),
            whole: count(entries("enum").iter().filter(|v| container(v)).count())
                .saturating_add(u64::from(schema.get("const").is_some_and(container))),
            unique: u64::from(schema.get("uniqueItems") == Some(&Value::Bool(true))),
        }
    }

    fn reads_subtrees(&self) -> bool {
        self.whole > 0 || self.unique > 0
    }
}

/// Values compared (by `enum` and `const` entries) for the
/// cost of one step: about 3 ns each, measured (release build) on 16,000
/// arrays of 500 numbers each compared with 199 `enum` entries they
/// differ from only at the end (4.7 s), against about 60 ns a step.
const VALUES_READ_PER_STEP: u64 = 16;

/// Deepest a document is walked to size a value under `enum`, `const` or
/// `uniqueItems`: documents are held to 64 levels before they are
/// validated (`limits::MAX_JSON_DEPTH`); one deeper is refused as too
/// costly rather than walked further.
const MAX_SIZED_DEPTH: usize = 1024;

impl std::fmt::Debug for GuestSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestSchema")
            .field("width", &self.width)
            .finish_non_exhaustive()
    }
}

impl GuestSchema {
    /// Its regular expressions, counted against [`MAX_PATTERNS`].
    pub(crate) fn patterns(&self) -> usize {
        self.patterns
    }

    /// Every place where `instance` fails the schema, as [`violations`] —
    /// or, when validating `instance` could cost more than
    /// [`MAX_VALIDATION_STEPS`], one violation saying so: the document is
    /// refused unvalidated (fail closed).
    pub(crate) fn violations(&self, instance: &Value) -> Vec<SchemaViolation> {
        let cost = self.cost(instance);
        let steps = cost.steps;
        if steps > MAX_VALIDATION_STEPS {
            return vec![SchemaViolation {
                path: String::new(),
                message: format!(
                    "not validated: checking a document this large against this schema could \
                     take {steps} steps, more than the host's limit of {MAX_VALIDATION_STEPS}"
                ),
            }];
        }
        if steps > MAX_IN_PLACE_STEPS {
            return crate::off_the_worker(|| self.check(instance, &cost));
        }
        self.check(instance, &cost)
    }

    fn check(&self, instance: &Value, cost: &Cost) -> Vec<SchemaViolation> {
        if self.validator.is_valid(instance) {
            return Vec::new();
        }
        if cost.steps <= MAX_LISTING_STEPS && cost.paths <= MAX_LISTING_PATH_BYTES {
            return violations(&self.validator, instance);
        }
        // Listing every violation is eager in `jsonschema` and builds an
        // error, with its path, per failing branch: name the first one
        // only.
        let mut out = Vec::new();
        if let Err(error) = self.validator.validate(instance) {
            out.push(SchemaViolation {
                path: message(error.instance_path()),
                message: message(&error),
            });
        }
        out.push(SchemaViolation {
            path: String::new(),
            message: "further violations were not looked for: the document is too large \
                      to list them all"
                .to_owned(),
        });
        out
    }

    /// The most validation steps `instance` can cost: its values at each
    /// depth times the schema's width there, and for the keywords that
    /// read a whole value (`enum` and `const` entries that are arrays or
    /// objects, `uniqueItems`), that value's size. Deeper values than the
    /// schema reaches are not visited by validation.
    #[cfg(test)]
    fn steps(&self, instance: &Value) -> u64 {
        self.cost(instance).steps
    }

    fn cost(&self, instance: &Value) -> Cost {
        let mut cost = Cost::default();
        self.visit(instance, 0, 0, false, &mut cost);
        cost
    }

    /// Add what validating `value`, at `depth` and `path` bytes of path,
    /// costs to `cost`; return its size (its values, and 64-byte runs of
    /// its strings and keys) when an enclosing value (`sized`) or the
    /// schema here needs it.
    fn visit(&self, value: &Value, depth: usize, path: u64, sized: bool, cost: &mut Cost) -> u64 {
        let weight = self.width.get(depth).copied();
        let sized = sized || weight.is_some_and(|w| w.reads_subtrees());
        if weight.is_none() && !sized {
            return 0;
        }
        if depth > MAX_SIZED_DEPTH {
            cost.steps = u64::MAX;
            return u64::MAX;
        }
        let each = weight.map_or(0, |w| w.each);
        cost.steps = cost.steps.saturating_add(each);
        // Each subschema here may fail, each failure holding this path.
        cost.paths = cost.paths.saturating_add(each.saturating_mul(path));
        let mut size = 1u64;
        let bytes = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    // `/` and the index's digits.
                    let digits = u64::from(i.checked_ilog10().unwrap_or(0)) + 1;
                    let path = path.saturating_add(1 + digits);
                    size = size.saturating_add(self.visit(item, depth + 1, path, sized, cost));
                }
            }
            Value::Object(map) => {
                // Keys are matched by the subschemas of the members
                // (`patternProperties`, `propertyNames`), one level down.
                let key_bytes = map.keys().map(String::len).sum::<usize>();
                let members = self.width.get(depth + 1).map_or(0, |w| w.each);
                cost.steps = cost
                    .steps
                    .saturating_add(string_steps(each.saturating_add(members), key_bytes));
                size = size.saturating_add(runs(key_bytes));
                for (key, member) in map {
                    // `/` and the key, escaped (`~` and `/` take two bytes).
                    let path = path.saturating_add(1 + 2 * bytes(key.len()));
                    size = size.saturating_add(self.visit(member, depth + 1, path, sized, cost));
                }
            }
            Value::String(text) => {
                cost.steps = cost.steps.saturating_add(string_steps(each, text.len()));
                size = size.saturating_add(runs(text.len()));
            }
            _ => {}
        }
        if let Some(weight) = weight {
            let reads = |times: u64| times.saturating_mul(size) / VALUES_READ_PER_STEP;
            cost.steps = cost.steps.saturating_add(reads(weight.whole));
            // `UniqueItems` hashes each value once (SipHash, and a table
            // entry an item): 75–115 ns a value measured (release build,
            // 200,000 objects, a million numbers, 500,000 strings, on a
            // busy machine), two steps.
            if value.is_array() {
                cost.steps = cost
                    .steps
                    .saturating_add(weight.unique.saturating_mul(size).saturating_mul(2));
            }
        }
        size
    }
}

/// 64-byte runs in `bytes` of string (see [`STRING_BYTES_PER_STEP`]).
fn runs(bytes: usize) -> u64 {
    u64::try_from(bytes / STRING_BYTES_PER_STEP).unwrap_or(u64::MAX)
}

/// Compile a schema supplied by a guest.
///
/// # Security
/// The text comes from untrusted plugin code: its size is capped, and the
/// crate is built without remote or file `$ref` resolution, so compiling a
/// schema never touches the network or the file system. `pattern` and
/// `patternProperties` are matched by the linear-time `regex` engine, not
/// the backtracking one: validation runs on the host, outside any fuel or
/// deadline, and a backtracking pattern (`^(a|a)*(?=b)$`) cost about a
/// million steps for each string it was tried on. Lookaround and
/// backreferences are therefore refused when the plugin loads.
///
/// For the same reason the work a schema can make the host do is bounded
/// (see [`schema_width`]): `$ref`s may only point inside the schema and
/// never back into what contains them (a recursive `$ref` under `anyOf`
/// made validation exponential in the document's nesting), the schema may
/// apply at most [`MAX_SCHEMA_WIDTH`] to one value, and each document is
/// checked against [`MAX_VALIDATION_STEPS`] before it is validated.
pub(crate) fn compile_guest_schema(
    text: &str,
    require_object: bool,
) -> Result<(Value, GuestSchema), String> {
    if text.len() > MAX_SCHEMA_BYTES {
        return Err(format!(
            "schema is {} bytes, more than the limit of {MAX_SCHEMA_BYTES}",
            text.len()
        ));
    }
    let schema: Value =
        serde_json::from_str(text).map_err(|e| format!("schema is not JSON: {e}"))?;
    if !(schema.is_object() || schema.is_boolean()) {
        return Err("schema must be a JSON object".to_owned());
    }
    if require_object && schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err("input schema must have `\"type\": \"object\"` at its root".to_owned());
    }
    let width = schema_width(&schema)?;
    if let Some(widest) = width.iter().map(|w| w.each).max()
        && widest > MAX_SCHEMA_WIDTH
    {
        return Err(format!(
            "schema applies subschemas of weight {widest} to one value (through `allOf`, \
             `anyOf`, `oneOf`, `$ref`, `enum`, `required`...), more than the limit of \
             {MAX_SCHEMA_WIDTH}"
        ));
    }
    // Each pattern compiles to up to the regex crate's 10 MiB by default:
    // a 256 KiB schema holds thousands, so their count and size are
    // bounded here.
    let patterns = pattern_count(&schema);
    if patterns > MAX_SCHEMA_PATTERNS {
        return Err(format!(
            "schema holds {patterns} regular expressions (`pattern`, `patternProperties`), more than the limit of {MAX_SCHEMA_PATTERNS}"
        ));
    }
    let validator = jsonschema::options()
        .with_pattern_options(
            jsonschema::PatternOptions::regex()
                .size_limit(PATTERN_SIZE_LIMIT)
                .dfa_size_limit(PATTERN_SIZE_LIMIT),
        )
        .with_keyword("uniqueItems", unique_items)
        .build(&schema)
        .map_err(|e| format!("schema does not compile: {e}"))?;
    Ok((
        schema,
        GuestSchema {
            validator,
            width,
            patterns,
        },
    ))
}

/// The regular expressions `schema` holds: `pattern` strings and
/// `patternProperties` keys, anywhere (a property named `pattern` whose
/// value is a schema is not one).
fn pattern_count(schema: &Value) -> usize {
    match schema {
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| {
                let own = match (key.as_str(), value) {
                    ("pattern", Value::String(_)) => 1,
                    ("patternProperties", Value::Object(keys)) => keys.len(),
                    _ => 0,
                };
                own + pattern_count(value)
            })
            .sum(),
        Value::Array(items) => items.iter().map(pattern_count).sum(),
        _ => 0,
    }
}

/// `uniqueItems: true` in a guest's schema, in place of `jsonschema`'s:
/// that one hashes an object as the XOR of its members' hashes under fixed
/// keys, so a document can make every item's hash meet every other's and
/// the check compare each item with each (quadratic host time for one
/// counted pass). Here every item is hashed with keys drawn for the
/// validator (SipHash, `RandomState`), which a document cannot aim at,
/// and items whose hashes meet are compared by `jsonschema`'s own
/// equality (`1` equals `1.0`, members in any order).
struct UniqueItems {
    keys: std::collections::hash_map::RandomState,
}

impl UniqueItems {
    /// A hash of `value` that equal values (by [`jsonschema::json::cmp::equal`])
    /// share: numbers by their exact value, object members in any order.
    fn digest(&self, value: &Value) -> u64 {
        use std::hash::BuildHasher as _;
        match value {
            Value::Null => self.keys.hash_one(0u8),
            Value::Bool(b) => self.keys.hash_one((1u8, b)),
            // (An `i128` hashes a byte at a time: whole numbers hash as
            // `i64` where they fit, else as two words.)
            Value::Number(n) => match exact(n) {
                Ok(whole) => match i64::try_from(whole) {
                    Ok(small) => self.keys.hash_one((2u8, small)),
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    Err(_) => self
                        .keys
                        .hash_one((8u8, (whole >> 64) as u64, whole as u64)),
                },
                Err(bits) => self.keys.hash_one((3u8, bits)),
            },
            Value::String(text) => self.keys.hash_one((4u8, text.as_str())),
            Value::Array(items) => {
                let digests: Vec<u64> = items.iter().map(|item| self.digest(item)).collect();
                self.keys.hash_one((5u8, digests))
            }
            Value::Object(map) => {
                // A sum, which does not depend on the members' order, of
                // hashes a document cannot predict.
                let members = map.iter().fold(0u64, |sum, (key, member)| {
                    sum.wrapping_add(self.keys.hash_one((6u8, key.as_str(), self.digest(member))))
                });
                self.keys.hash_one((7u8, map.len(), members))
            }
        }
    }
}

/// A JSON number's exact value: `Ok` for a whole number (`1` and `1.0`
/// alike), `Err` with the bits of any other float (`-0.0` is whole).
fn exact(number: &serde_json::Number) -> Result<i128, u64> {
    if let Some(n) = number.as_i64() {
        return Ok(i128::from(n));
    }
    if let Some(n) = number.as_u64() {
        return Ok(i128::from(n));
    }
    let float = number.as_f64().unwrap_or(f64::NAN);
    // Whole floats below 10^30 are exact integers in an `i128` (no JSON
    // integer `serde_json` reads is above 2^64); others keep their bits.
    if float.fract() == 0.0 && float.abs() < 1.0e30 {
        #[allow(clippy::cast_possible_truncation)]
        return Ok(float as i128);
    }
    Err(float.to_bits())
}

impl<'i> jsonschema::Keyword<'i> for UniqueItems {
    fn validate(&self, instance: &'i Value) -> Result<(), jsonschema::ValidationError<'i>> {
        if jsonschema::Keyword::is_valid(self, instance) {
            Ok(())
        } else {
            Err(jsonschema::ValidationError::custom(
                "has non-unique elements",
            ))
        }
    }

    fn is_valid(&self, instance: &'i Value) -> bool {
        let Value::Array(items) = instance else {
            return true;
        };
        // Keyed by the digests themselves: they are keyed hashes already.
        let mut seen: std::collections::HashMap<u64, &Value, Digests> =
            std::collections::HashMap::with_capacity_and_hasher(items.len(), Digests::default());
        // Unequal items whose hashes met (by chance: the keys are secret).
        let mut also: Vec<(u64, &Value)> = Vec::new();
        for item in items {
            let digest = self.digest(item);
            match seen.entry(digest) {
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(item);
                }
                std::collections::hash_map::Entry::Occupied(first) => {
                    let equal = |other: &Value| jsonschema::json::cmp::equal(item, other);
                    if equal(first.get())
                        || also.iter().any(|(d, other)| *d == digest && equal(other))
                    {
                        return false;
                    }
                    also.push((digest, item));
                }
            }
        }
        true
    }
}

/// A table keyed by [`UniqueItems::digest`]s, which are hashed already.
type Digests = std::hash::BuildHasherDefault<Digest>;

/// Hashes a digest to itself.
#[derive(Default)]
struct Digest(u64);

impl std::hash::Hasher for Digest {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64`s are hashed here; anything else is folded in.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// `uniqueItems: false` (or anything but `true`): nothing to check.
struct AnyItems;

impl<'i> jsonschema::Keyword<'i> for AnyItems {
    fn validate(&self, _: &'i Value) -> Result<(), jsonschema::ValidationError<'i>> {
        Ok(())
    }

    fn is_valid(&self, _: &'i Value) -> bool {
        true
    }
}

/// The `uniqueItems` keyword of a guest's schema: [`UniqueItems`].
fn unique_items<'a>(
    _: &'a serde_json::Map<String, Value>,
    value: &'a Value,
    _: jsonschema::paths::Location,
) -> Result<Box<dyn for<'i> jsonschema::Keyword<'i>>, jsonschema::ValidationError<'a>> {
    if value == &Value::Bool(true) {
        Ok(Box::new(UniqueItems {
            keys: std::collections::hash_map::RandomState::new(),
        }))
    } else {
        Ok(Box::new(AnyItems))
    }
}

/// At each depth of a document, the most validation steps one value there
/// can cost under `schema`: every subschema that can apply to it, `$ref`s
/// followed, weighted by one plus its `enum` and `required` entries.
///
/// Refuses what would make that unbounded or unknowable: a `$ref` that is
/// not a JSON pointer into this schema (`#` or `#/...`), one that leads
/// back into a schema containing it, `$dynamicRef` and `$recursiveRef`,
/// and an `$id` below the root (which would change what a `$ref` means).
pub(crate) fn schema_width(schema: &Value) -> Result<Vec<Weight>, String> {
    let draft4 = schema
        .get("$schema")
        .and_then(Value::as_str)
        .is_some_and(|s| s.contains("draft-04"));
    let mut walk = Width {
        root: schema,
        draft4,
        done: std::collections::HashMap::new(),
        open: std::collections::HashSet::new(),
    };
    let width = walk.of(schema, true)?;
    Ok(width.as_ref().clone())
}

struct Width<'a> {
    root: &'a Value,
    draft4: bool,
    /// Width of each subschema already walked, by address.
    done: std::collections::HashMap<usize, std::rc::Rc<Vec<Weight>>>,
    /// Subschemas being walked: reaching one again is a cycle.
    open: std::collections::HashSet<usize>,
}

/// Keywords whose subschemas apply to the value itself.
const IN_PLACE: &[&str] = &["allOf", "anyOf", "oneOf", "not", "if", "then", "else"];
/// Keywords whose subschemas apply to the value's members or items.
const INSIDE: &[&str] = &[
    "additionalProperties",
    "propertyNames",
    "items",
    "prefixItems",
    "additionalItems",
    "contains",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
];
/// Keywords holding a map of subschemas for the value's members.
const INSIDE_MAPS: &[&str] = &["properties", "patternProperties"];
/// Keywords holding a map of subschemas for the value itself.
const IN_PLACE_MAPS: &[&str] = &["dependentSchemas", "dependencies"];

impl<'a> Width<'a> {
    fn of(&mut self, node: &'a Value, root: bool) -> Result<std::rc::Rc<Vec<Weight>>, String> {
        let key = std::ptr::from_ref(node) as usize;
        if let Some(done) = self.done.get(&key) {
            return Ok(done.clone());
        }
        if self.open.len() >= MAX_SCHEMA_NESTING {
            return Err(format!(
                "schema nests subschemas and `$ref`s more than {MAX_SCHEMA_NESTING} deep"
            ));
        }
        if !self.open.insert(key) {
            return Err(
                "a `$ref` leads back into a schema that contains it: recursive schemas are \
                 refused, as validating them can cost the host time exponential in the \
                 document's nesting"
                    .to_owned(),
            );
        }
        let mut width = vec![Weight {
            each: 1,
            ..Weight::default()
        }];
        if let Value::Object(map) = node {
            width[0] = Weight::own(map);
            for (keyword, value) in map {
                let keyword = keyword.as_str();
                let mut in_place: Vec<&'a Value> = Vec::new();
                let mut inside: Vec<&'a Value> = Vec::new();
                self.supported(keyword, value, root)?;
                match keyword {
                    "$ref" => {
                        if let Some(target) = value.as_str() {
                            in_place.push(self.resolve(target)?);
                        }
                    }
                    k if IN_PLACE.contains(&k) => schemas_in(value, &mut in_place),
                    k if INSIDE.contains(&k) => schemas_in(value, &mut inside),
                    k if INSIDE_MAPS.contains(&k) => {
                        if let Some(m) = value.as_object() {
                            inside.extend(m.values());
                        }
                    }
                    k if IN_PLACE_MAPS.contains(&k) => {
                        if let Some(m) = value.as_object() {
                            in_place.extend(m.values().filter(|v| v.is_object() || v.is_boolean()));
                        }
                    }
                    _ => {}
                }
                for child in in_place {
                    let w = self.of(child, false)?;
                    add(&mut width, &w, 0)?;
                }
                for child in inside {
                    let w = self.of(child, false)?;
                    add(&mut width, &w, 1)?;
                }
            }
        }
        self.open.remove(&key);
        let width = std::rc::Rc::new(width);
        self.done.insert(key, width.clone());
        Ok(width)
    }

    /// Refuse a keyword a plugin's schema may not use. (A function of its
    /// own: [`Width::of`] recurses up to [`MAX_SCHEMA_NESTING`] deep, so
    /// its frame stays small.)
    #[inline(never)]
    fn supported(&self, keyword: &str, value: &Value, root: bool) -> Result<(), String> {
        match keyword {
            "unevaluatedItems" | "unevaluatedProperties" => Err(format!(
                "`{keyword}` is not supported in a plugin's schema: validating it \
                     checks the subschemas beside it again at every level of `allOf`, \
                     `anyOf`, `oneOf` and `$ref` below, a cost the host cannot bound \
                     (use `additionalItems`/`items` or `additionalProperties`)"
            )),
            "$dynamicRef" | "$recursiveRef" => Err(format!(
                "`{keyword}` is not supported in a plugin's schema; use `$ref` \
                     to a `#/...` pointer"
            )),
            "$id" if !root && value.is_string() => {
                Err("`$id` below a schema's root is not supported in a plugin's schema".to_owned())
            }
            "id" if self.draft4 && !root && value.is_string() => {
                Err("`id` below a schema's root is not supported in a plugin's schema".to_owned())
            }
            _ => Ok(()),
        }
    }

    fn resolve(&self, target: &str) -> Result<&'a Value, String> {
        let pointer = match target.strip_prefix('#') {
            Some(p) if p.is_empty() || p.starts_with('/') => p,
            _ => {
                return Err(format!(
                    "`$ref` {target:?}: a plugin's schema may only refer inside itself, with \
                     `#` or a `#/...` JSON pointer"
                ));
            }
        };
        if pointer.contains('%') {
            return Err(format!(
                "`$ref` {target:?}: percent-encoded pointers are not supported in a plugin's schema"
            ));
        }
        // Walk the pointer a token at a time: a `$ref` is resolved against
        // the nearest `$id` above it, so a target under a nested `$id` would
        // mean something else to the validator than to this walk.
        let mut node = self.root;
        for token in pointer.split('/').skip(1) {
            let token = token.replace("~1", "/").replace("~0", "~");
            let next = match node {
                Value::Object(map) => map.get(&token),
                // RFC 6901: an index is `0` or digits without a leading
                // zero (`usize::parse` would take `01` and `+1` too).
                Value::Array(items) => {
                    let index = !token.is_empty()
                        && token.bytes().all(|b| b.is_ascii_digit())
                        && (token == "0" || !token.starts_with('0'));
                    index
                        .then(|| token.parse::<usize>().ok())
                        .flatten()
                        .and_then(|i| items.get(i))
                }
                _ => None,
            };
            node =
                next.ok_or_else(|| format!("`$ref` {target:?} points at nothing in the schema"))?;
            if self.declares_id(node) {
                return Err(format!(
                    "`$ref` {target:?} leads under an `$id` below the schema's root, which is \
                     not supported in a plugin's schema"
                ));
            }
        }
        Ok(node)
    }

    /// Whether `node` declares an identifier that changes what `$ref`s
    /// below it mean.
    fn declares_id(&self, node: &Value) -> bool {
        node.get("$id").is_some_and(Value::is_string)
            || (self.draft4 && node.get("id").is_some_and(Value::is_string))
    }
}

/// The subschemas of a keyword's value: itself, or each item of an array.
fn schemas_in<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => out.extend(items.iter()),
        other => out.push(other),
    }
}

/// Add `child`'s width into `width`, `shift` levels deeper.
fn add(width: &mut Vec<Weight>, child: &[Weight], shift: usize) -> Result<(), String> {
    let needed = child.len() + shift;
    if needed > MAX_SCHEMA_DEPTH {
        return Err(format!(
            "schema reaches more than {MAX_SCHEMA_DEPTH} levels into a document (through `$ref`s)"
        ));
    }
    if width.len() < needed {
        width.resize(needed, Weight::default());
    }
    for (i, w) in child.iter().enumerate() {
        width[i + shift].add(w);
    }
    Ok(())
}

/// Whether `value` nests arrays and objects more than `max` levels deep,
/// each array or object a level (`[]` is one, `[[]]` two, a scalar none).
pub(crate) fn deeper_than(value: &Value, max: usize) -> bool {
    // Containers only: a scalar deepens nothing. Recursive, without an
    // allocation (this runs on every call's arguments and result): the
    // recursion stops at `max`, so its depth is bounded by the limit, not
    // by the value.
    fn over(value: &Value, depth: usize, max: usize) -> bool {
        let below = |child: &Value| over(child, depth + 1, max);
        match value {
            Value::Array(items) => depth >= max || items.iter().any(below),
            Value::Object(map) => depth >= max || map.values().any(below),
            _ => false,
        }
    }
    over(value, 0, max)
}

/// The JSON type name of `value`, for error messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 256 KiB schema held thousands of patterns, each compiling to up
    /// to 10 MiB: their count is bounded, and each one's size.
    #[test]
    fn a_schema_holds_a_bounded_count_of_patterns() {
        let properties: serde_json::Map<String, Value> = (0..=MAX_SCHEMA_PATTERNS)
            .map(|i| {
                (
                    format!("p{i}"),
                    serde_json::json!({"type": "string", "pattern": "^a+$"}),
                )
            })
            .collect();
        let schema = serde_json::json!({"type": "object", "properties": properties});
        let error = compile_guest_schema(&schema.to_string(), true)
            .err()
            .unwrap();
        assert!(error.contains("regular expressions"), "{error}");
        let fine = serde_json::json!({
            "type": "object",
            "properties": {"pattern": {"type": "string", "pattern": "^a$"}},
            "patternProperties": {"^x": {}, "^y": {}}
        });
        let (_, compiled) = compile_guest_schema(&fine.to_string(), true).unwrap();
        assert_eq!(compiled.patterns(), 3);
        // Everyday patterns fit the size limit.
        for pattern in [
            "^\\w{8}$",
            "^\\d{4}-\\d{2}-\\d{2}$",
            "^[a-z0-9._%+-]+@[a-z0-9.-]+$",
        ] {
            let schema = serde_json::json!({"type": "object", "properties": {"a": {"type": "string", "pattern": pattern}}});
            compile_guest_schema(&schema.to_string(), true)
                .unwrap_or_else(|e| panic!("{pattern}: {e}"));
        }
    }
    use serde_json::json;

    #[test]
    fn violation_messages_do_not_quote_a_large_value_whole() {
        let schema = json!({"type": "number"});
        let validator = jsonschema::validator_for(&schema).unwrap();
        let big = Value::String("x".repeat(1 << 20));
        let found = violations(&validator, &big);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].message.len() <= 1024 + 20,
            "{}",
            found[0].message.len()
        );
        assert!(
            found[0].message.ends_with("…[truncated]"),
            "{}",
            &found[0].message[..60]
        );
        let small = violations(&validator, &json!("x"));
        assert_eq!(small[0].message, "\"x\" is not of type \"number\"");
    }

    #[test]
    fn depth_counts_levels_of_arrays_and_objects() {
        let nested = |levels: usize| -> Value {
            let text = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
            serde_json::from_str(&text).unwrap()
        };
        assert!(!deeper_than(&json!(1), 0));
        assert!(!deeper_than(&json!({}), 1));
        assert!(!deeper_than(&nested(64), 64));
        assert!(deeper_than(&nested(65), 64));
        assert!(deeper_than(&json!({"a": [1, {"b": []}]}), 3));
        assert!(!deeper_than(&json!({"a": [1, {"b": []}]}), 4));
    }

    #[test]
    fn guest_schemas_are_checked() {
        assert!(
            compile_guest_schema("{", true)
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(
            compile_guest_schema("[]", true)
                .unwrap_err()
                .contains("JSON object")
        );
        assert!(
            compile_guest_schema(r#"{"type":"string"}"#, true)
                .unwrap_err()
                .contains("type")
        );
        assert!(
            compile_guest_schema(r#"{"type":"object","minLength":"x"}"#, true)
                .unwrap_err()
                .contains("compile")
        );
        compile_guest_schema(r#"{"type":"string"}"#, false).unwrap();
        let big = format!(
            r#"{{"type":"object","description":"{}"}}"#,
            "x".repeat(MAX_SCHEMA_BYTES)
        );
        assert!(
            compile_guest_schema(&big, true)
                .unwrap_err()
                .contains("limit")
        );
    }

    /// Found with the `tool_arguments` fuzz target, by a hand-made input
    /// (`fuzz/regressions/tool_arguments/`): with the
    /// backtracking engine, each string matched against this pattern cost
    /// a million steps of host CPU, outside fuel and deadline; 40 strings
    /// in the arguments kept the host busy for most of a minute.
    #[test]
    fn guest_schema_with_backtracking_pattern_cannot_stall_argument_validation() {
        let schema = r#"{"type":"object","properties":{"a":{"type":"array","items":{"type":"string","pattern":"^(a|a)*(?=b)$"}}}}"#;
        let err = compile_guest_schema(schema, true).unwrap_err();
        assert!(err.contains("compile"), "{err}");
        // Patterns the linear engine takes stay linear, however nested.
        let schema = r#"{"type":"object","properties":{"a":{"type":"array","items":{"type":"string","pattern":"^(a+)+$"}}}}"#;
        let (_, validator) = compile_guest_schema(schema, true).unwrap();
        let items: Vec<String> = (0..2000)
            .map(|i| format!("{}!{i}", "a".repeat(40)))
            .collect();
        let started = std::time::Instant::now();
        let found = validator.violations(&serde_json::json!({ "a": items }));
        assert_eq!(found.len(), 65, "64 shown and a summary");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn remote_refs_are_never_fetched() {
        let err = compile_guest_schema(
            r#"{"type":"object","properties":{"a":{"$ref":"http://169.254.169.254/latest"}}}"#,
            true,
        )
        .unwrap_err();
        assert!(err.contains("refer inside itself"), "{err}");
    }

    #[test]
    fn every_violation_is_reported_with_its_path() {
        let (_, v) = compile_guest_schema(
            r#"{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}},"required":["c"]}"#,
            true,
        )
        .unwrap();
        let found = v.violations(&serde_json::json!({"a": "x", "b": 1}));
        let paths: Vec<_> = found.iter().map(|v| v.path.as_str()).collect();
        assert!(
            paths.contains(&"/a") && paths.contains(&"/b") && paths.contains(&""),
            "{found:?}"
        );
    }

    /// A `$ref` back into what contains it, under `anyOf`, made validation
    /// exponential in the document's nesting: refused when the plugin loads.
    #[test]
    fn recursive_schemas_are_refused() {
        let schema = r##"{"type":"object","properties":{"t":{"$ref":"#/$defs/node"}},
            "$defs":{"node":{"anyOf":[{"type":"integer"},
                {"type":"array","items":{"$ref":"#/$defs/node"}},
                {"type":"array","items":{"$ref":"#/$defs/node"}}]}}}"##;
        let err = compile_guest_schema(schema, true).unwrap_err();
        assert!(err.contains("recursive"), "{err}");
        let err =
            compile_guest_schema(r##"{"type":"object","not":{"$ref":"#"}}"##, true).unwrap_err();
        assert!(err.contains("recursive"), "{err}");
    }

    /// Each level refers twice to the one below: 2^20 subschemas apply to
    /// one value though the text is small.
    #[test]
    fn ref_doubling_is_refused_for_its_width() {
        let mut defs = serde_json::Map::new();
        defs.insert("d0".to_owned(), serde_json::json!({"type": "integer"}));
        for i in 1..=20 {
            let below = format!("#/$defs/d{}", i - 1);
            defs.insert(
                format!("d{i}"),
                serde_json::json!({"anyOf": [{"$ref": below}, {"$ref": below}]}),
            );
        }
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"x": {"$ref": "#/$defs/d20"}},
            "$defs": defs,
        });
        let err = compile_guest_schema(&schema.to_string(), true).unwrap_err();
        assert!(err.contains("weight") && err.contains("limit"), "{err}");
        // A long chain of `$ref`s is refused before it can exhaust the stack.
        let mut defs = serde_json::Map::new();
        for i in 0..5000 {
            defs.insert(
                format!("c{i}"),
                serde_json::json!({"$ref": format!("#/$defs/c{}", i + 1)}),
            );
        }
        defs.insert("c5000".to_owned(), serde_json::json!({"type": "integer"}));
        let schema = serde_json::json!({"type": "object", "$ref": "#/$defs/c0", "$defs": defs});
        let err = compile_guest_schema(&schema.to_string(), true).unwrap_err();
        assert!(err.contains("deep"), "{err}");
    }

    /// `{"a": [...]}` whose items must each match one of 5,000 `anyOf`
    /// branches, item `{"xN": 1}` branch N.
    fn wide_items() -> GuestSchema {
        let branches: Vec<Value> = (0..5000)
            .map(|i| serde_json::json!({"required": [format!("x{i}")]}))
            .collect();
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"a": {"type": "array", "items": {"anyOf": branches}}},
        });
        compile_guest_schema(&schema.to_string(), true).unwrap().1
    }

    /// A schema within the width limit but wide (5,000 `anyOf` branches
    /// for each item) against a large document: refused unvalidated, which
    /// fails closed, rather than validated for seconds of host time.
    #[test]
    fn a_document_too_costly_to_validate_is_refused_unvalidated() {
        let validator = wide_items();
        let items: Vec<Value> = (0..10_000).map(|_| serde_json::json!({})).collect();
        let found = validator.violations(&serde_json::json!({ "a": items }));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.starts_with("not validated"), "{found:?}");
        // A small document against the same schema is validated as usual:
        // past the listing budget, only the first violation is named.
        let items: Vec<Value> = (0..100).map(|_| serde_json::json!({})).collect();
        let found = validator.violations(&serde_json::json!({ "a": items }));
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].path, "/a/0", "{found:?}");
        assert!(found[1].message.contains("not looked for"), "{found:?}");
        let ok: Vec<Value> = (0..100).map(|_| serde_json::json!({"x7": 1})).collect();
        assert!(
            validator
                .violations(&serde_json::json!({ "a": ok }))
                .is_empty()
        );
    }

    /// Long strings cost by their length: 16,384 `pattern`s applied
    /// to one megabyte string are refused unvalidated, not scanned for
    /// minutes; the same string under a plain schema is validated.
    #[test]
    fn a_long_string_under_many_patterns_is_refused_for_its_length() {
        // `p14` applies the pattern 16,384 times, through `$ref` doubling.
        let mut defs = serde_json::Map::new();
        defs.insert("p0".to_owned(), serde_json::json!({"pattern": "^a*$"}));
        for i in 1..=14 {
            let previous = format!("#/$defs/p{}", i - 1);
            defs.insert(
                format!("p{i}"),
                serde_json::json!({"allOf": [{"$ref": previous}, {"$ref": previous}]}),
            );
        }
        let schema = serde_json::json!({
            "type": "object",
            "$defs": defs,
            "properties": {"x": {"$ref": "#/$defs/p14"}},
        });
        let (_, validator) = compile_guest_schema(&schema.to_string(), false).unwrap();
        let long = serde_json::json!({ "x": "a".repeat(1 << 20) });
        let found = validator.violations(&long);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.starts_with("not validated"), "{found:?}");
        // Short strings against it, and the long one against a plain
        // schema, are validated.
        assert!(
            validator
                .violations(&serde_json::json!({ "x": "aaa" }))
                .is_empty()
        );
        let (_, plain) = compile_guest_schema(
            r#"{"type":"object","properties":{"x":{"type":"string","pattern":"^a*$"}}}"#,
            false,
        )
        .unwrap();
        assert!(plain.violations(&long).is_empty());
    }

    /// `enum` entries that are arrays or objects, and `uniqueItems`, read
    /// whole values: a schema of 200 arrays of 500 numbers under `enum`,
    /// against 16,000 arrays each matching only the last entry, was 1.6
    /// billion comparisons (4.7 s of host time, release build) for some 3.2
    /// million counted steps. They are charged by the size of what they
    /// read now.
    #[test]
    fn keywords_that_read_whole_values_cost_their_size() {
        let zeros = |n: usize| Value::Array(vec![Value::from(0); n]);
        let entries: Vec<Value> = (0..200)
            .map(|_| {
                let mut entry = zeros(499);
                entry.as_array_mut().unwrap().push(Value::from(1));
                entry
            })
            .collect();
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"a": {"type": "array", "items": {"enum": entries}}},
        });
        let (_, validator) = compile_guest_schema(&schema.to_string(), true).unwrap();
        let many = serde_json::json!({ "a": vec![zeros(500); 16_000] });
        let found = validator.violations(&many);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.starts_with("not validated"), "{found:?}");
        // A few such values are still validated (and fail: none is an
        // entry); a scalar `enum` of the same length costs as before.
        let few = serde_json::json!({ "a": vec![zeros(500); 2] });
        let found = validator.violations(&few);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[1].path, "/a/1", "{found:?}");
        assert_eq!(found[0].path, "/a/0", "{found:?}");
        let (_, scalars) = compile_guest_schema(
            &serde_json::json!({
                "type": "object",
                "properties": {"a": {"type": "array", "items": {"enum": (0..200).collect::<Vec<_>>()}}},
            })
            .to_string(),
            true,
        )
        .unwrap();
        let numbers = serde_json::json!({ "a": vec![7; 20_000] });
        assert!(scalars.violations(&numbers).is_empty());
    }

    /// `uniqueItems` is checked by hashes a document cannot aim at (not
    /// `jsonschema`'s XOR of fixed-key hashes, whose collisions make the
    /// check quadratic), so it costs one pass: 20,000 objects are checked,
    /// and an unrelated large array beside a `uniqueItems` one is not
    /// refused for it. Equality stays JSON Schema's.
    #[test]
    fn unique_items_costs_one_pass_and_keeps_json_schema_equality() {
        let unique = compile_guest_schema(
            r#"{"type":"object","properties":{"a":{"type":"array","uniqueItems":true},"rows":{"type":"array"}}}"#,
            true,
        )
        .unwrap()
        .1;
        let objects: Vec<Value> = (0..20_000)
            .map(|i| serde_json::json!({"k": i, "v": [i, "x"]}))
            .collect();
        assert!(
            unique
                .violations(&serde_json::json!({ "a": objects }))
                .is_empty()
        );
        let rows: Vec<Value> = (0..10_000)
            .map(|i| serde_json::json!({"a": i, "b": i, "c": i, "d": i, "e": "same"}))
            .collect();
        assert!(
            unique
                .violations(&serde_json::json!({ "a": [1, 2], "rows": rows }))
                .is_empty()
        );
        for duplicated in [
            serde_json::json!([1, 1.0]),
            serde_json::json!([0, -0.0]),
            serde_json::json!([{"a": 1, "b": [2, {"c": null}]}, {"b": [2, {"c": null}], "a": 1.0}]),
            serde_json::json!(["x", [1], "x"]),
            serde_json::json!(vec!["same"; 20_000]),
        ] {
            let found = unique.violations(&serde_json::json!({ "a": duplicated }));
            assert_eq!(found.len(), 1, "{duplicated}: {found:?}");
            assert_eq!(found[0].path, "/a", "{found:?}");
            assert!(found[0].message.contains("non-unique"), "{found:?}");
        }
        for distinct in [
            serde_json::json!([1, 1.5, -1, "1", [1], {"1": 1}, null, true, false]),
            serde_json::json!([{"a": 1}, {"a": 1, "b": 1}, {"b": 1}]),
            serde_json::json!([9_007_199_254_740_993_u64, 9_007_199_254_740_992.0]),
            serde_json::json!([[1, 2], [2, 1]]),
        ] {
            assert!(
                unique
                    .violations(&serde_json::json!({ "a": distinct }))
                    .is_empty(),
                "{distinct}"
            );
        }
        // `uniqueItems: false` checks nothing.
        let any = compile_guest_schema(
            r#"{"type":"object","properties":{"a":{"uniqueItems":false}}}"#,
            true,
        )
        .unwrap()
        .1;
        assert!(
            any.violations(&serde_json::json!({ "a": [1, 1] }))
                .is_empty()
        );
    }

    /// Keys are scanned by the member subschemas' `patternProperties`: a
    /// megabyte key under 4,000 patterns was charged as 16,384 steps and
    /// scanned four gigabytes; it is charged by the patterns now.
    #[test]
    fn long_keys_cost_what_the_patterns_on_them_scan() {
        let patterns: serde_json::Map<String, Value> = (0..4000)
            .map(|i| (format!("^p{i}$"), serde_json::json!({})))
            .collect();
        let schema = serde_json::json!({"type": "object", "patternProperties": patterns});
        let (_, validator) = compile_guest_schema(&schema.to_string(), true).unwrap();
        let mut document = serde_json::Map::new();
        document.insert("k".repeat(1 << 20), Value::from(1));
        let found = validator.violations(&Value::Object(document));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.starts_with("not validated"), "{found:?}");
        assert!(
            validator
                .violations(&serde_json::json!({"p7": 1, "short": 2}))
                .is_empty()
        );
    }

    /// `unevaluatedItems`/`unevaluatedProperties` check the subschemas
    /// beside them again at each level of applicators below: refused.
    #[test]
    fn unevaluated_keywords_are_refused() {
        for keyword in ["unevaluatedProperties", "unevaluatedItems"] {
            let schema = serde_json::json!({
                "type": "object",
                "properties": {"a": {"allOf": [{"type": "array"}], keyword: false}},
            });
            let err = compile_guest_schema(&schema.to_string(), true).unwrap_err();
            assert!(
                err.contains(keyword) && err.contains("not supported"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_costly_validation_hands_its_worker_to_the_other_tasks() {
        // Each item matches only the last of 5,000 branches: a million
        // steps, well past what is validated in place.
        let validator = wide_items();
        let items: Vec<Value> = (0..200).map(|_| serde_json::json!({"x4999": 1})).collect();
        let document = serde_json::json!({ "a": items });
        assert!(validator.steps(&document) > MAX_IN_PLACE_STEPS);
        // One worker: a task queued behind the validating one runs only if
        // the validation gives the worker up.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let (found, other_ran) = runtime.block_on(async move {
            tokio::spawn(async move {
                let (ran, done) = std::sync::mpsc::channel();
                tokio::spawn(async move { ran.send(()) });
                let found = validator.violations(&document);
                (found, done.try_recv().is_ok())
            })
            .await
            .unwrap()
        });
        assert!(found.is_empty(), "{found:?}");
        assert!(other_ran, "the queued task waited for the validation");
        // On a current-thread runtime, and outside any, it runs in place.
        let validator = wide_items();
        let small = serde_json::json!({ "a": [{"x4999": 1}] });
        assert!(validator.violations(&small).is_empty());
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(current.block_on(async { validator.violations(&small).is_empty() }));
        let items: Vec<Value> = (0..20).map(|_| serde_json::json!({"x4999": 1})).collect();
        let heavy = serde_json::json!({ "a": items });
        assert!(validator.steps(&heavy) > MAX_IN_PLACE_STEPS);
        assert!(current.block_on(async { validator.violations(&heavy).is_empty() }));
    }

    #[test]
    fn local_non_recursive_refs_still_work() {
        let (_, v) = compile_guest_schema(
            r##"{"type":"object","properties":{"from":{"$ref":"#/$defs/point"},
                "to":{"$ref":"#/$defs/point"}},
                "$defs":{"point":{"type":"object","required":["x","y"],
                "properties":{"x":{"type":"number"},"y":{"type":"number"}}}}}"##,
            true,
        )
        .unwrap();
        assert!(
            v.violations(&serde_json::json!({"from": {"x": 1, "y": 2}, "to": {"x": 3, "y": 4}}))
                .is_empty()
        );
        // An array index, as RFC 6901 writes it.
        compile_guest_schema(
            r##"{"type":"object","$ref":"#/allOf/1","allOf":[{},{"type":"object"}]}"##,
            true,
        )
        .unwrap();
        let found = v.violations(&serde_json::json!({"from": {"x": "a", "y": 2}, "to": {"x": 3}}));
        let paths: Vec<_> = found.iter().map(|v| v.path.as_str()).collect();
        assert!(
            paths.contains(&"/from/x") && paths.contains(&"/to"),
            "{found:?}"
        );
    }

    #[test]
    fn refs_outside_the_schema_or_under_a_nested_id_are_refused() {
        for (schema, expect) in [
            (
                r##"{"type":"object","$ref":"#anchor"}"##,
                "refer inside itself",
            ),
            (
                r##"{"type":"object","$ref":"other.json#/a"}"##,
                "refer inside itself",
            ),
            (
                r##"{"type":"object","$ref":"#/$defs/none"}"##,
                "points at nothing",
            ),
            (
                r##"{"type":"object","$dynamicRef":"#node"}"##,
                "not supported",
            ),
            (r##"{"type":"object","$ref":"#/$defs/a%25"}"##, "percent"),
            // An array index as RFC 6901 writes it, not as `usize::parse`
            // reads it.
            (
                r##"{"type":"object","$ref":"#/allOf/01","allOf":[{},{"type":"object"}]}"##,
                "points at nothing",
            ),
            (
                r##"{"type":"object","$ref":"#/allOf/+1","allOf":[{},{"type":"object"}]}"##,
                "points at nothing",
            ),
            (
                r##"{"type":"object","properties":{"a":{"$id":"http://x/a","type":"string"}}}"##,
                "`$id`",
            ),
            (
                r##"{"type":"object","$ref":"#/$defs/y/$defs/z",
                   "$defs":{"y":{"$id":"http://x/y","$defs":{"z":{"type":"string"}}}}}"##,
                "`$id`",
            ),
        ] {
            let err = compile_guest_schema(schema, true).unwrap_err();
            assert!(err.contains(expect), "{schema}: {err}");
        }
    }

    /// A listing of every violation holds each one's path: thousands of
    /// failing members under one long key held that key thousands of
    /// times (a megabyte key, 30,000 members: 36 GB, the host's memory)
    /// within the step limit. Such a document names its first violation
    /// only, its path cut like a message; a small one lists them all.
    #[test]
    fn violations_under_a_long_key_are_not_all_listed() {
        let schema = serde_json::json!({
            "type": "object",
            "additionalProperties": {"additionalProperties": {"type": "integer"}}
        });
        let (_, validator) = compile_guest_schema(&schema.to_string(), true).unwrap();
        let members = |n: usize| -> serde_json::Map<String, Value> {
            (0..n)
                .map(|i| (format!("a{i}"), Value::from("x")))
                .collect()
        };
        let long = "~".repeat(100_000);
        let document = serde_json::json!({ long.as_str(): members(200) });
        let cost = validator.cost(&document);
        assert!(cost.steps <= MAX_LISTING_STEPS, "{cost:?}");
        assert!(cost.paths > MAX_LISTING_PATH_BYTES, "{cost:?}");
        let found = validator.violations(&document);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].path.len() <= MAX_VIOLATION_BYTES + airlock_audit::text::TRUNCATED_MARK.len(),
            "{}",
            found[0].path.len()
        );
        assert!(
            found[0].path.starts_with("/~0~0"),
            "{}",
            &found[0].path[..20]
        );
        assert!(found[1].message.contains("not looked for"), "{found:?}");

        let document = serde_json::json!({ "short": members(3) });
        let found = validator.violations(&document);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found.iter().all(|v| v.path.starts_with("/short/a")),
            "{found:?}"
        );
    }
}
