//! Redaction: secrets are replaced by a keyed hash before anything is written.
//!
//! Rules, applied to arguments and results alike:
//! - **pointers** listed per tool in the manifest (`redact = ["/card"]`,
//!   RFC 6901; a `*` segment matches every array element or object member),
//!   whatever the value's length;
//! - **key words**: a member whose key contains one of the operator's words
//!   (`password`, `token`, ...) as a word — `access_token`, `apiKey`,
//!   `X-Auth-Token` match `token`/`key`-style words, `max_tokens` does not.
//!   A plural of the last word (`api_keys`, `tokens`, `passwords`) matches
//!   too unless the value is a number or a boolean (a count);
//! - **header lists**: `{"name": "Authorization", "value": "…"}` (or `key` /
//!   `header` and `value` / `values`) and `["Cookie", "…"]` pairs whose name
//!   is secret by the key words, in any letter case;
//! - **card numbers**: 13–19 digits (spaces or dashes allowed) passing the
//!   Luhn check, as a whole value or inside text;
//! - **secrets inside text**, in every string and in free text: URL query
//!   (and form) parameters named by the key words (`?api_key=…`,
//!   `&access_token=…`, `sig=`), `Bearer …` credentials, and header lines
//!   such as `Authorization: …` or `X-Api-Key: …`.
//!
//! A redacted value becomes `"[redacted:<16 hex>]"`: the first 64 bits of
//! HMAC-SHA-256 under the host's redaction key over the value's canonical
//! JSON. Equal values give equal tokens, so records stay correlatable; the
//! key never leaves the host, so tokens cannot be brute-forced offline.
//! Every redacted string is also removed from free text written in the same
//! record (error messages, log lines, stderr, results echoing their
//! arguments): anywhere when it has four characters or more, as a whole
//! word when shorter.

use hmac::{Hmac, Mac};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::canonical;

/// Shortest redacted string also scrubbed from free text.
const MIN_SCRUB_LEN: usize = 4;

/// Operator-wide redaction rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionRules {
    /// Words that mark a member's key as secret, lower case.
    pub key_words: Vec<String>,
    /// Redact card-number-shaped values.
    pub card_numbers: bool,
}

impl Default for RedactionRules {
    fn default() -> RedactionRules {
        RedactionRules {
            key_words: [
                "password",
                "passwd",
                "passphrase",
                "secret",
                "token",
                "apikey",
                "api_key",
                "authorization",
                "auth",
                "credential",
                "credentials",
                "private_key",
                "privatekey",
                "cookie",
                "ssn",
                "cvv",
                "cvc",
                "pin",
                "signature",
                "sig",
            ]
            .map(String::from)
            .to_vec(),
            card_numbers: true,
        }
    }
}

/// A URL's user name with no password is redacted from this length on:
/// a token used as the user name (`https://<token>@host`), not `git` or
/// `postgres`.
const USERINFO_TOKEN_LEN: usize = 16;

/// Applies [`RedactionRules`] under a secret key.
pub struct Redactor {
    key: [u8; 32],
    rules: RedactionRules,
    /// Each rule word split into its words (`api_key` → `api`, `key`).
    key_words: Vec<Vec<String>>,
    card: Regex,
    /// `name=value` in a URL query, a form body or free text.
    param: Regex,
    /// `Name: value` header lines.
    header: Regex,
    /// A JSON member in text: `"name": "value"` (or a number).
    json_member: Regex,
    /// `Bearer <credential>`.
    bearer: Regex,
    /// The userinfo of a URL: `scheme://user:password@`.
    userinfo: Regex,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

/// A redacted value and the secrets taken out of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Redacted {
    /// The value with secrets replaced.
    pub value: Value,
    /// The strings removed (for scrubbing free text).
    pub secrets: Vec<String>,
}

/// How a digest keyed under the redaction key begins
/// ([`Redactor::keyed_digest`]); a plain digest is 64 hex digits alone.
pub const KEYED_DIGEST_PREFIX: &str = "hmac-sha256:";

/// Whether a stored copy shows redaction's mark: a token put in place of a
/// value or of secret-shaped text.
pub fn shows_redaction(copy: &str) -> bool {
    copy.contains("[redacted")
}

impl Redactor {
    /// A redactor using `key` (the host's redaction key) and `rules`.
    pub fn new(key: [u8; 32], rules: RedactionRules) -> Redactor {
        let key_words = rules.key_words.iter().map(|w| words(w)).collect();
        // Digits with optional single separators, 13 to 19 digits long.
        #[allow(clippy::unwrap_used)] // Constant patterns, covered by tests.
        let pattern = |p: &str| Regex::new(p).unwrap();
        Redactor {
            key,
            rules,
            key_words,
            card: pattern(r"\b\d(?:[ -]?\d){12,18}\b"),
            param: pattern(r#"(^|[?&;#\s"'(,])([A-Za-z0-9_.\-\[\]]{1,64})=([^&#;\s"'<>)]+)"#),
            header: pattern(r#"(?i)\b([a-z][a-z0-9]*(?:-[a-z0-9]+)*)[ \t]*:[ \t]*([^\r\n"]+)"#),
            json_member: pattern(
                r#""([A-Za-z0-9_.\-]{1,64})"\s*:\s*(?:"((?:[^"\\]|\\.){1,4096})"|(-?\d{1,32}))"#,
            ),
            bearer: pattern(r"(?i)\bbearer\s+([A-Za-z0-9._~+/=\-]{6,})"),
            userinfo: pattern(
                r#"\b([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#\s@:"'<>]*)(:[^/?#\s@"'<>]*)?@"#,
            ),
        }
    }

    /// `digest` (the SHA-256 hex digest of a value whose stored copy
    /// redaction changed) keyed under the redaction key: what a record
    /// holds instead of it. The copy with its secrets replaced and the
    /// plain digest of the whole would let anyone holding the record try
    /// guesses of a short secret (a PIN, a card's CVV) until one matched;
    /// without the key nothing can be tried. Equal values still give equal
    /// keyed digests on one host.
    pub fn keyed_digest(&self, digest: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            // HMAC accepts keys of any length.
            return KEYED_DIGEST_PREFIX.to_owned();
        };
        // Apart from redaction tokens, which key canonical JSON.
        mac.update(b"airlock keyed digest\0");
        mac.update(digest.as_bytes());
        format!(
            "{KEYED_DIGEST_PREFIX}{}",
            hex::encode(mac.finalize().into_bytes())
        )
    }

    /// The token that replaces `value`.
    pub fn token(&self, value: &Value) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            // HMAC accepts keys of any length.
            Err(_) => return "[redacted]".to_owned(),
        };
        mac.update(&canonical::to_vec(value));
        let tag = mac.finalize().into_bytes();
        format!("[redacted:{}]", hex::encode(&tag[..8]))
    }

    /// Redact `value`: the `pointers`, secret-looking keys, card numbers,
    /// and any of `known` secrets appearing in its strings.
    pub fn redact(&self, value: &Value, pointers: &[String], known: &[String]) -> Redacted {
        let mut value = value.clone();
        let mut secrets = Vec::new();
        for pointer in pointers {
            let segments: Vec<String> = pointer
                .split('/')
                .skip(1)
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect();
            if pointer.is_empty() {
                self.replace(&mut value, &mut secrets);
            } else {
                self.redact_at(&mut value, &segments, &mut secrets);
            }
        }
        self.walk(&mut value, &mut secrets);
        let mut all: Vec<String> = known.to_vec();
        all.extend(secrets.iter().cloned());
        if !all.is_empty() {
            let all = KnownSecrets::new(&all);
            scrub_strings(&mut value, &|s| self.scrub_known(s, &all));
        }
        Redacted { value, secrets }
    }

    /// Remove `secrets`, card numbers and secret-shaped text (query
    /// parameters, header lines, bearer credentials) from free text: error
    /// messages, log lines, stderr. To scrub several texts of the same
    /// secrets, prepare them once ([`KnownSecrets::new`],
    /// [`scrub_known`](Self::scrub_known)).
    pub fn scrub(&self, text: &str, secrets: &[String]) -> String {
        self.scrub_known(text, &KnownSecrets::new(secrets))
    }

    /// [`scrub`](Self::scrub) with the secrets prepared: one pass over
    /// `text` whatever their number.
    pub fn scrub_known(&self, text: &str, known: &KnownSecrets) -> String {
        let mut out = known.replace(self, text);
        let mut found = Vec::new();
        out = self.scrub_patterns(&out, &mut found);
        if self.rules.card_numbers {
            out = self.scrub_cards(&out);
        }
        out
    }

    /// Replace secret-shaped parts of `text`, adding what was replaced to
    /// `found`. `lines`: also header lines (free text; a JSON string value
    /// is rarely a header line, but a log line often is).
    fn scrub_patterns(&self, text: &str, found: &mut Vec<String>) -> String {
        let mut out = std::borrow::Cow::Borrowed(text);
        if out.contains('=') {
            let replaced = self.param.replace_all(&out, |caps: &regex::Captures<'_>| {
                let (lead, name, value) = (&caps[1], &caps[2], &caps[3]);
                let numeric = value.bytes().all(|b| b.is_ascii_digit());
                if !is_token(value)
                    && (self.secret_key(name) || (!numeric && self.plural_secret_key(name)))
                {
                    found.push(value.to_owned());
                    format!(
                        "{lead}{name}={}",
                        self.token(&Value::String(value.to_owned()))
                    )
                } else {
                    caps[0].to_owned()
                }
            });
            out = std::borrow::Cow::Owned(replaced.into_owned());
        }
        if out.contains(':') {
            let replaced = self.header.replace_all(&out, |caps: &regex::Captures<'_>| {
                let (name, value) = (&caps[1], caps[2].trim_end());
                let headerish = name.contains('-')
                    || ["authorization", "cookie"].contains(&name.to_ascii_lowercase().as_str());
                if headerish && self.secret_key(name) && !is_token(value) {
                    found.push(value.to_owned());
                    let token = self.token(&Value::String(value.to_owned()));
                    caps[0].replacen(value, &token, 1)
                } else {
                    caps[0].to_owned()
                }
            });
            out = std::borrow::Cow::Owned(replaced.into_owned());
        }
        if out.contains("\":") || out.contains("\" :") {
            // JSON text inside a string or a message (a service's error
            // body, a serialized request): `"access_token": "…"` members,
            // which the patterns above do not see.
            let replaced = self
                .json_member
                .replace_all(&out, |caps: &regex::Captures<'_>| {
                    let name = &caps[1];
                    let value = caps
                        .get(2)
                        .or_else(|| caps.get(3))
                        .map_or("", |m| m.as_str());
                    let numeric = caps.get(3).is_some();
                    if !value.is_empty()
                        && !is_token(value)
                        && (self.secret_key(name) || (!numeric && self.plural_secret_key(name)))
                    {
                        found.push(value.to_owned());
                        let token = self.token(&Value::String(value.to_owned()));
                        format!("\"{name}\":\"{token}\"")
                    } else {
                        caps[0].to_owned()
                    }
                });
            out = std::borrow::Cow::Owned(replaced.into_owned());
        }
        if out.contains("://") && out.contains('@') {
            // The password; a user name alone only when it is long enough
            // to be a token (`https://<token>@host`), not `git@` or
            // `postgres@` — a user name becomes a secret of the call,
            // replaced wherever it appears.
            let replaced = self
                .userinfo
                .replace_all(&out, |caps: &regex::Captures<'_>| {
                    let (scheme, user) = (&caps[1], &caps[2]);
                    match caps.get(3).map(|m| &m.as_str()[1..]) {
                        Some(password) if !password.is_empty() && !is_token(password) => {
                            found.push(password.to_owned());
                            let token = self.token(&Value::String(password.to_owned()));
                            format!("{scheme}{user}:{token}@")
                        }
                        None if user.len() >= USERINFO_TOKEN_LEN && !is_token(user) => {
                            found.push(user.to_owned());
                            format!("{scheme}{}@", self.token(&Value::String(user.to_owned())))
                        }
                        _ => caps[0].to_owned(),
                    }
                });
            out = std::borrow::Cow::Owned(replaced.into_owned());
        }
        if out.len() >= 6 && out.to_ascii_lowercase().contains("bearer") {
            let replaced = self.bearer.replace_all(&out, |caps: &regex::Captures<'_>| {
                let credential = &caps[1];
                found.push(credential.to_owned());
                caps[0].replacen(
                    credential,
                    &self.token(&Value::String(credential.to_owned())),
                    1,
                )
            });
            out = std::borrow::Cow::Owned(replaced.into_owned());
        }
        out.into_owned()
    }

    fn scrub_cards(&self, text: &str) -> String {
        if !self.card.is_match(text) {
            return text.to_owned();
        }
        self.card
            .replace_all(text, |caps: &regex::Captures<'_>| {
                let found = &caps[0];
                if luhn(found) {
                    self.token(&Value::String(digits(found)))
                } else {
                    found.to_owned()
                }
            })
            .into_owned()
    }

    fn redact_at(&self, value: &mut Value, segments: &[String], secrets: &mut Vec<String>) {
        let Some((first, rest)) = segments.split_first() else {
            self.replace(value, secrets);
            return;
        };
        match value {
            Value::Object(map) => {
                if first == "*" {
                    for item in map.values_mut() {
                        self.redact_at(item, rest, secrets);
                    }
                } else if let Some(item) = map.get_mut(first) {
                    self.redact_at(item, rest, secrets);
                }
            }
            Value::Array(items) => {
                if first == "*" {
                    for item in items {
                        self.redact_at(item, rest, secrets);
                    }
                } else if let Some(item) =
                    first.parse::<usize>().ok().and_then(|i| items.get_mut(i))
                {
                    self.redact_at(item, rest, secrets);
                }
            }
            _ => {}
        }
    }

    fn replace(&self, value: &mut Value, secrets: &mut Vec<String>) {
        // Only a token this redactor wrote is left alone: a value that
        // merely starts like one is redacted like any other.
        if value.as_str().is_some_and(is_token) {
            return;
        }
        collect_leaves(value, secrets);
        *value = Value::String(self.token(value));
    }

    fn walk(&self, value: &mut Value, secrets: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                // A header list entry: `{"name": "Authorization", "value": …}`.
                // Member names in any case (`Name`/`Value`, as some APIs
                // spell them).
                let named_secret = map.iter().any(|(k, v)| {
                    ["name", "key", "header", "field"]
                        .iter()
                        .any(|n| k.eq_ignore_ascii_case(n))
                        && v.as_str().is_some_and(|name| {
                            self.secret_key(name) || self.plural_secret_key(name)
                        })
                });
                for (key, item) in map.iter_mut() {
                    let is_value = ["value", "values", "val"]
                        .iter()
                        .any(|v| key.eq_ignore_ascii_case(v));
                    if (named_secret && is_value) || self.secret_member(key, item) {
                        self.replace(item, secrets);
                    } else {
                        self.walk(item, secrets);
                    }
                }
            }
            Value::Array(items) => {
                // A header pair: `["Cookie", "…"]`.
                if let [Value::String(name), value] = items.as_mut_slice()
                    && self.secret_key(name)
                {
                    self.replace(value, secrets);
                    return;
                }
                for item in items {
                    self.walk(item, secrets);
                }
            }
            Value::String(s) => {
                if is_token(s) {
                    return;
                }
                let mut scrubbed = self.scrub_patterns(s, secrets);
                if self.rules.card_numbers {
                    scrubbed = self.scrub_cards(&scrubbed);
                }
                if scrubbed != *s {
                    *s = scrubbed;
                }
            }
            Value::Number(n) if self.rules.card_numbers => {
                let text = n.to_string();
                if (13..=19).contains(&text.len()) && luhn(&text) {
                    *value = Value::String(self.token(&Value::String(text)));
                }
            }
            _ => {}
        }
    }

    fn secret_key(&self, key: &str) -> bool {
        let key_words = words(key);
        self.key_words.iter().any(|rule| {
            !rule.is_empty()
                && key_words
                    .windows(rule.len())
                    .any(|window| window.iter().zip(rule).all(|(a, b)| a == b))
        })
    }

    /// `key` names several secrets: a key word's plural as its last word
    /// (`api_keys`, `tokens`, `passwords`, `set_cookies`).
    fn plural_secret_key(&self, key: &str) -> bool {
        let key_words = words(key);
        let Some((last, _)) = key_words.split_last() else {
            return false;
        };
        let Some(singular) = last.strip_suffix('s') else {
            return false;
        };
        let n = key_words.len();
        self.key_words.iter().any(|rule| {
            let Some((rule_last, rule_rest)) = rule.split_last() else {
                return false;
            };
            singular == rule_last
                && n > rule_rest.len()
                && key_words[n - 1 - rule_rest.len()..n - 1] == *rule_rest
        })
    }

    /// The member `key` holds a secret: by its key words, or by their
    /// plural unless the value is a count.
    fn secret_member(&self, key: &str, value: &Value) -> bool {
        self.secret_key(key)
            || (!matches!(value, Value::Number(_) | Value::Bool(_) | Value::Null)
                && self.plural_secret_key(key))
    }
}

/// Split a key into lower-case words at non-alphanumerics and camelCase
/// boundaries: `X-Api-Key` and `apiKey` → `api`, `key`.
fn words(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            prev_lower = false;
            continue;
        }
        // A new word at a lower-to-upper case change (`apiKey`) and where
        // letters and digits meet (`cvv2`, `password2`, `v2token`): a
        // number after a key word does not hide it.
        let kind_changes = current
            .chars()
            .last()
            .is_some_and(|last| last.is_numeric() != c.is_numeric());
        if !current.is_empty() && ((c.is_uppercase() && prev_lower) || kind_changes) {
            out.push(std::mem::take(&mut current));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        current.extend(c.to_lowercase());
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `text` with every occurrence of `word` that is not part of a longer word
/// (no letter or digit right before or after it) replaced by `with`.
/// Secrets to replace wherever they appear in text, prepared once: one
/// automaton over all of them, so scrubbing a text is one pass over it
/// (replacing them one by one cost the text's length once per secret —
/// seconds of CPU for a result of a few thousand secret-shaped
/// parameters). At each place the longest secret found wins; one shorter
/// than four characters is replaced only where it stands as a whole word.
#[derive(Default)]
pub struct KnownSecrets {
    /// `None` when there is no secret (or the automaton could not be
    /// built: then [`KnownSecrets::replace`] falls back to one secret at a
    /// time).
    matcher: Option<aho_corasick::AhoCorasick>,
    /// The distinct secrets, in the automaton's pattern order.
    secrets: Vec<String>,
    /// Each secret's token, made when first needed.
    tokens: Vec<std::sync::OnceLock<String>>,
}

impl std::fmt::Debug for KnownSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownSecrets")
            .field("count", &self.secrets.len())
            .finish_non_exhaustive()
    }
}

impl KnownSecrets {
    /// Prepare `secrets` (empty ones are ignored, repeats count once).
    pub fn new(secrets: &[String]) -> KnownSecrets {
        let mut distinct: Vec<String> = secrets.iter().filter(|s| !s.is_empty()).cloned().collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.is_empty() {
            return KnownSecrets::default();
        }
        let matcher = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(&distinct)
            .ok();
        KnownSecrets {
            matcher,
            tokens: distinct
                .iter()
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            secrets: distinct,
        }
    }

    /// `text` with every secret replaced by its token.
    fn replace(&self, redactor: &Redactor, text: &str) -> String {
        let token = |i: usize| {
            self.tokens[i].get_or_init(|| redactor.token(&Value::String(self.secrets[i].clone())))
        };
        let Some(matcher) = &self.matcher else {
            // No automaton (none needed, or too large to build): one at
            // a time, longest first.
            let mut out = text.to_owned();
            let mut order: Vec<usize> = (0..self.secrets.len()).collect();
            order.sort_by_key(|&i| std::cmp::Reverse(self.secrets[i].len()));
            for i in order {
                let secret = self.secrets[i].as_str();
                if out.contains(secret) {
                    out = if secret.chars().count() >= MIN_SCRUB_LEN {
                        out.replace(secret, token(i))
                    } else {
                        replace_whole_words(&out, secret, token(i))
                    };
                }
            }
            return out;
        };
        let mut out = String::with_capacity(text.len());
        let (mut last, mut from) = (0, 0);
        while let Some(found) = matcher.find(aho_corasick::Input::new(text).span(from..text.len()))
        {
            let i = found.pattern().as_usize();
            let secret = self.secrets[i].as_str();
            if secret.chars().count() < MIN_SCRUB_LEN
                && !stands_alone(text, found.start(), found.end(), secret)
            {
                // Not a word here: look again from the next character, where
                // another secret may start inside this one (`12` refused in
                // `12345678` must not hide `2345678`). A short secret is a few
                // characters, so this stays linear.
                let step = text[found.start()..]
                    .chars()
                    .next()
                    .map_or(1, char::len_utf8);
                from = found.start() + step;
                continue;
            }
            out.push_str(&text[last..found.start()]);
            out.push_str(token(i));
            last = found.end();
            from = found.end();
        }
        out.push_str(&text[last..]);
        out
    }
}

/// Whether `word`, found at `start..end` of `text`, stands as a whole word
/// there (the rule of [`replace_whole_words`]).
fn stands_alone(text: &str, start: usize, end: usize, word: &str) -> bool {
    let is_word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    let starts_word = word.chars().next().is_some_and(char::is_alphanumeric);
    let ends_word = word.chars().next_back().is_some_and(char::is_alphanumeric);
    !((starts_word && is_word(before)) || (ends_word && is_word(after)))
}

fn replace_whole_words(text: &str, word: &str, with: &str) -> String {
    let is_word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let before = rest[..at]
            .chars()
            .next_back()
            .or_else(|| out.chars().next_back());
        let after = rest[at + word.len()..].chars().next();
        let starts_word = word.chars().next().is_some_and(char::is_alphanumeric);
        let ends_word = word.chars().next_back().is_some_and(char::is_alphanumeric);
        out.push_str(&rest[..at]);
        if (starts_word && is_word(before)) || (ends_word && is_word(after)) {
            out.push_str(word);
        } else {
            out.push_str(with);
        }
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    out
}

fn collect_leaves(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| collect_leaves(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_leaves(v, out)),
        Value::Bool(_) | Value::Null => {}
    }
}

/// `s` is a token a redactor wrote: `[redacted:<16 hex>]`.
fn is_token(s: &str) -> bool {
    s.len() == 27
        && s.starts_with("[redacted:")
        && s.ends_with(']')
        && s[10..26].bytes().all(|b| b.is_ascii_hexdigit())
}

fn scrub_strings(value: &mut Value, scrub: &dyn Fn(&str) -> String) {
    match value {
        Value::String(s) if !is_token(s) => *s = scrub(s),
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_strings(v, scrub)),
        Value::Object(map) => map.values_mut().for_each(|v| scrub_strings(v, scrub)),
        _ => {}
    }
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// The Luhn check over the digits of `s`.
fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Cut the canonical JSON of `value` to at most `max` bytes, on a character
/// boundary; returns the text and whether it was cut.
pub fn capped_json(value: &Value, max: usize) -> (String, bool) {
    let mut text = canonical::to_string(value);
    let cut = crate::text::truncate(&mut text, max);
    (text, cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redactor() -> Redactor {
        Redactor::new([3; 32], RedactionRules::default())
    }

    #[test]
    fn pointers_keys_and_cards_are_redacted() {
        let r = redactor();
        let args = json!({
            "account": "acct-9182",
            "note": "refund card 4111 1111 1111 1111 please",
            "card": 4111111111111111u64,
            "auth": {"accessToken": "tok-abc", "max_tokens": 512},
            "password": "hunter22",
            "items": [{"ssn": "123-45-6789"}, {"ssn": "987-65-4321"}],
        });
        let out = r.redact(&args, &["/account".into()], &[]);
        let text = out.value.to_string();
        for secret in ["acct-9182", "4111", "tok-abc", "hunter22", "123-45-6789"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        // The whole `auth` member is secret by its key.
        assert!(
            out.value["auth"]
                .as_str()
                .unwrap()
                .starts_with("[redacted:")
        );
        assert!(
            out.value["note"]
                .as_str()
                .unwrap()
                .starts_with("refund card [redacted:")
        );
        assert!(out.secrets.contains(&"hunter22".to_owned()));
    }

    #[test]
    fn innocent_keys_and_numbers_survive() {
        let r = redactor();
        let args =
            json!({"max_tokens": 512, "count": 1234567890123u64, "keys": ["a"], "path": "/etc"});
        let out = r.redact(&args, &[], &[]);
        assert_eq!(out.value, args);
    }

    #[test]
    fn equal_values_give_equal_tokens_under_one_key_only() {
        let r = redactor();
        let a = r.redact(&json!({"password": "same"}), &[], &[]);
        let b = r.redact(&json!({"password": "same"}), &[], &[]);
        assert_eq!(a.value, b.value);
        let other = Redactor::new([4; 32], RedactionRules::default());
        let c = other.redact(&json!({"password": "same"}), &[], &[]);
        assert_ne!(a.value, c.value);
    }

    #[test]
    fn wildcard_pointers_and_free_text_scrubbing() {
        let r = redactor();
        let out = r.redact(
            &json!({"cards": [{"holder": "Ann Lee"}, {"holder": "Bo Chan"}]}),
            &["/cards/*/holder".into()],
            &[],
        );
        assert!(!out.value.to_string().contains("Ann Lee"));
        let message = r.scrub("invalid holder \"Bo Chan\" (Ann Lee ok)", &out.secrets);
        assert!(
            !message.contains("Bo Chan") && !message.contains("Ann Lee"),
            "{message}"
        );
        // A result echoing an argument secret is scrubbed too.
        let result = r.redact(&json!({"echo": "hello Ann Lee"}), &[], &out.secrets);
        assert!(!result.value.to_string().contains("Ann Lee"));
    }

    #[test]
    fn key_words_match_whole_words() {
        let r = redactor();
        for key in [
            "password",
            "X-Api-Key",
            "apiKey",
            "access_token",
            "Authorization",
            "db_password_hash",
        ] {
            assert!(r.secret_key(key), "{key}");
        }
        for key in ["max_tokens", "keyboard", "author", "pinned", "spinner"] {
            assert!(!r.secret_key(key), "{key}");
        }
    }

    fn assert_hidden(text: &str, secrets: &[&str]) {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }

    #[test]
    fn plural_keys_holding_arrays_are_redacted_but_counts_survive() {
        let r = redactor();
        let args = json!({
            "api_keys": ["ak-first-1111", "ak-second-2222"],
            "tokens": ["tk-aaaa", "tk-bbbb"],
            "secrets": {"db": "s3cr3t-db"},
            "passwords": ["pw-one-1", "pw-two-2"],
            "apiKeys": ["camel-key-1"],
            "max_tokens": 512,
            "tokens_used": 12,
            "keys": ["k1"],
        });
        let out = r.redact(&args, &[], &[]);
        assert_hidden(
            &out.value.to_string(),
            &[
                "ak-first",
                "ak-second",
                "tk-aaaa",
                "tk-bbbb",
                "s3cr3t-db",
                "pw-one",
                "pw-two",
                "camel-key",
            ],
        );
        assert_eq!(out.value["max_tokens"], 512);
        assert_eq!(out.value["keys"], json!(["k1"]));
        // Each element is also scrubbed from free text.
        let message = r.scrub("bad key ak-second-2222", &out.secrets);
        assert_hidden(&message, &["ak-second"]);
    }

    #[test]
    fn header_lists_are_redacted_in_any_letter_case() {
        let r = redactor();
        let args = json!({
            "headers": [
                {"name": "Authorization", "value": "Bearer hdr-bearer-1"},
                {"name": "proxy-authorization", "value": "Basic cHJveHk6cHc="},
                {"name": "COOKIE", "value": "sid=hdr-cookie-2"},
                {"name": "Set-Cookie", "values": ["sid=hdr-cookie-3"]},
                {"key": "X-Api-Key", "value": "hdr-apikey-4"},
                {"header": "x-auth-token", "value": "hdr-token-5"},
                {"name": "Accept", "value": "application/json"},
            ],
            "pairs": [["Cookie", "hdr-pair-6"], ["Accept", "text/plain"]],
        });
        let out = r.redact(&args, &[], &[]);
        let text = out.value.to_string();
        assert_hidden(
            &text,
            &[
                "hdr-bearer-1",
                "cHJveHk6cHc=",
                "hdr-cookie-2",
                "hdr-cookie-3",
                "hdr-apikey-4",
                "hdr-token-5",
                "hdr-pair-6",
            ],
        );
        assert!(
            text.contains("application/json") && text.contains("text/plain"),
            "{text}"
        );
    }

    #[test]
    fn secrets_in_url_queries_are_redacted_inside_any_string() {
        let r = redactor();
        let args = json!({
            "url": "https://api.example.com/v1?api_key=q-apikey-1&page=2",
            "next": "/list?cursor=abc&access_token=q-access-2#frag",
            "signed": "https://bucket.example/o?X-Amz-Signature=q-sig-3&sig=q-sig-4&expires=60",
            "form": "user=ann&password=q-pass-5",
            "note": "retry with token=q-token-6 later",
            "count": "?tokens=25",
        });
        let out = r.redact(&args, &[], &[]);
        let text = out.value.to_string();
        assert_hidden(
            &text,
            &[
                "q-apikey-1",
                "q-access-2",
                "q-sig-3",
                "q-sig-4",
                "q-pass-5",
                "q-token-6",
            ],
        );
        for kept in [
            "page=2",
            "cursor=abc",
            "expires=60",
            "user=ann",
            "tokens=25",
            "https://api.example.com/v1?api_key=[redacted:",
        ] {
            assert!(text.contains(kept), "{kept} lost: {text}");
        }
        // The same in free text, and the values found are known secrets.
        let message = r.scrub("GET /x?secret=q-free-7&ok=1 failed", &[]);
        assert_hidden(&message, &["q-free-7"]);
        assert!(message.contains("ok=1"), "{message}");
        assert!(out.secrets.contains(&"q-apikey-1".to_owned()));
    }

    #[test]
    fn header_lines_and_bearer_credentials_in_free_text_are_scrubbed() {
        let r = redactor();
        let log = "sending request\nAuthorization: Bearer ln-bearer-1\nX-Api-Key: ln-key-2\nAccept: */*\ncookie: a=ln-cookie-3";
        let out = r.scrub(log, &[]);
        assert_hidden(&out, &["ln-bearer-1", "ln-key-2", "ln-cookie-3"]);
        assert!(
            out.contains("Accept: */*") && out.contains("sending request"),
            "{out}"
        );
        let stderr = r.scrub(
            "panicked: request failed with bearer ln-bearer-4 (401)",
            &[],
        );
        assert_hidden(&stderr, &["ln-bearer-4"]);
        assert!(stderr.contains("(401)"), "{stderr}");
    }

    #[test]
    fn many_known_secrets_are_replaced_in_one_pass_with_the_same_rules() {
        let r = redactor();
        // Thousands of distinct secret-shaped parameters in one result:
        // each is found, and every copy of each elsewhere is replaced.
        let params: Vec<String> = (0..5_000).map(|i| format!("pin=v{i:05}x")).collect();
        let text = params.join(";");
        let out = r.redact(&json!({"q": text, "echo": "v00042x and v04999x"}), &[], &[]);
        assert_eq!(out.secrets.len(), 5_000);
        let value = out.value.to_string();
        assert_hidden(&value, &["v00042x", "v04999x", "v02500x"]);
        // The longest secret at a place wins; a short one only as a word.
        let known = KnownSecrets::new(&[
            "abcd".to_owned(),
            "abcdef".to_owned(),
            "ab".to_owned(),
            "ab".to_owned(),
            String::new(),
        ]);
        let scrubbed = r.scrub_known("abcdefg abcd ab cab ab.", &known);
        let token = |s: &str| r.token(&Value::String(s.to_owned()));
        assert_eq!(
            scrubbed,
            format!(
                "{}g {} {} cab {}.",
                token("abcdef"),
                token("abcd"),
                token("ab"),
                token("ab")
            )
        );
        assert_eq!(
            r.scrub_known("nothing here", &KnownSecrets::default()),
            "nothing here"
        );
        // A short secret that is not a word where it stands does not hide a
        // longer one starting inside it.
        let known = KnownSecrets::new(&["12".to_owned(), "2345678".to_owned()]);
        assert_eq!(
            r.scrub_known("pin 12, code 12345678.", &known),
            format!("pin {}, code 1{}.", token("12"), token("2345678"))
        );
    }

    #[test]
    fn url_credentials_in_free_text_and_values_are_scrubbed() {
        let r = redactor();
        let jwt = format!("eyJ{}", "x".repeat(400));
        let log = format!(
            "connecting to postgres://app:pg-pass-1@db.internal:5432/app, then https://ghp_ui0token0000000002@example.com/x and https://oauth2:{jwt}@git.example.com/r"
        );
        let out = r.scrub(&log, &[]);
        assert_hidden(&out, &["pg-pass-1", "ghp_ui0token0000000002", &jwt]);
        assert!(
            out.contains("postgres://app:[redacted:") && out.contains("@db.internal:5432/app"),
            "{out}"
        );
        // Mail addresses, a URL without userinfo and short user names
        // (no password) are left alone: a user name redacted would be
        // replaced wherever it appears.
        let plain = "mail ann@example.com about https://example.com/a@b, ssh://git@github.com/x and postgres://postgres@db/app";
        assert_eq!(r.scrub(plain, &[]), plain);
        let value = r.redact(
            &json!({"dsn": "redis://:rd-pass-3@cache:6379", "repo": "ssh://git@github.com/x"}),
            &[],
            &[],
        );
        assert_hidden(&value.value.to_string(), &["rd-pass-3"]);
        assert_eq!(value.secrets, ["rd-pass-3"]);
    }

    #[test]
    fn short_secrets_at_declared_pointers_are_redacted_everywhere() {
        let r = redactor();
        let out = r.redact(
            &json!({"pin": "42", "code": "7", "id": 9}),
            &["/code".into(), "/id".into()],
            &[],
        );
        assert!(
            is_token(out.value["code"].as_str().unwrap()),
            "{}",
            out.value
        );
        assert!(is_token(out.value["id"].as_str().unwrap()), "{}", out.value);
        // In free text, short secrets go where they stand as a word, and
        // nowhere inside longer words or numbers.
        let message = r.scrub(
            "code 7 rejected for pin 42 (attempt 17, id=9)",
            &out.secrets,
        );
        assert!(
            !message.contains(" 7 ") && !message.contains("pin 42") && !message.contains("id=9"),
            "{message}"
        );
        assert!(message.contains("attempt 17"), "{message}");
        // A value shaped like the start of a token is not taken for one.
        let sneaky = r.redact(&json!({"password": "[redacted] hunter22"}), &[], &[]);
        assert_hidden(&sneaky.value.to_string(), &["hunter22"]);
    }

    #[test]
    fn luhn_and_capping() {
        assert!(luhn("4111-1111-1111-1111"));
        assert!(!luhn("4111-1111-1111-1112"));
        let (text, cut) = capped_json(&json!({"k": "ééééé"}), 9);
        assert!(cut && text.len() <= 9 && text.starts_with("{\"k\":\""));
    }

    /// Header lines inside a string value are redacted like those of free
    /// text (`docs/audit-log.md` says so; string values were scanned
    /// without them, so a raw request in an argument kept its
    /// `Authorization`).
    #[test]
    fn header_lines_inside_string_values_are_redacted() {
        let args = json!({
            "raw": "GET / HTTP/1.1\r\nHost: example.com\r\nAuthorization: Basic dXNlcjpwYXNz\r\n",
            "reply": "HTTP/1.1 200 OK\nSet-Cookie: sid=31d4d96e407aad42; Path=/",
            "note": "Note: nothing secret here",
        });
        let text = redactor().redact(&args, &[], &[]).value.to_string();
        assert!(!text.contains("dXNlcjpwYXNz"), "{text}");
        assert!(!text.contains("31d4d96e407aad42"), "{text}");
        assert!(text.contains("Host: example.com"), "{text}");
        assert!(text.contains("Note: nothing secret here"), "{text}");
    }

    /// JSON text inside a string value or a message hid its secrets from
    /// the key-word rules: a service's error body quoted in a tool error,
    /// a serialized request in an argument.
    #[test]
    fn json_members_inside_text_are_redacted() {
        let args = json!({
            "body": "{\"access_token\":\"tok-json-1\",\"expires_in\":3600}",
            "error": "upstream said: {\"api_key\": \"sk_live_json2\", \"cvv\": 123}",
            "plain": "{\"user\":\"alice\",\"count\":2}",
        });
        let text = redactor().redact(&args, &[], &[]).value.to_string();
        for secret in ["tok-json-1", "sk_live_json2", "123"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        for kept in ["expires_in", "3600", "alice", "count"] {
            assert!(text.contains(kept), "{kept} lost: {text}");
        }
    }

    /// A number after a key word does not hide it (`cvv2`, `password2`,
    /// `apiKey1`), and header-list members match in any case.
    #[test]
    fn numbered_key_words_and_capitalised_header_lists_are_redacted() {
        let args = json!({
            "cvv2": "4242",
            "password2": "hunter2-again",
            "apiKey1": "key-numbered-1",
            "headers": [{"Name": "X-Api-Key", "Value": "sk-capital-1"}],
            "sha256": "keep-this-digest",
        });
        let text = redactor().redact(&args, &[], &[]).value.to_string();
        for secret in ["4242", "hunter2-again", "key-numbered-1", "sk-capital-1"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("keep-this-digest"), "{text}");
        assert_eq!(words("cvv2"), ["cvv", "2"]);
        assert_eq!(words("apiKey1"), ["api", "key", "1"]);
        assert_eq!(words("v2Token"), ["v", "2", "token"]);
    }
}
