//! Redaction: secrets are replaced by a keyed hash before anything is written.
//!
//! Three rules, applied to arguments and results alike:
//! - **pointers** listed per tool in the manifest (`redact = ["/card"]`,
//!   RFC 6901; a `*` segment matches every array element or object member);
//! - **key words**: a member whose key contains one of the operator's words
//!   (`password`, `token`, ...) as a word — `access_token`, `apiKey`,
//!   `X-Auth-Token` match `token`/`key`-style words, `max_tokens` does not;
//! - **card numbers**: 13–19 digits (spaces or dashes allowed) passing the
//!   Luhn check, as a whole value or inside text.
//!
//! A redacted value becomes `"[redacted:<16 hex>]"`: the first 64 bits of
//! HMAC-SHA-256 under the host's redaction key over the value's canonical
//! JSON. Equal values give equal tokens, so records stay correlatable; the
//! key never leaves the host, so tokens cannot be brute-forced offline.
//! Every redacted string of four characters or more is also removed from
//! free text written in the same record (error messages, results echoing
//! their arguments).

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
            ]
            .map(String::from)
            .to_vec(),
            card_numbers: true,
        }
    }
}

/// Applies [`RedactionRules`] under a secret key.
pub struct Redactor {
    key: [u8; 32],
    rules: RedactionRules,
    /// Each rule word split into its words (`api_key` → `api`, `key`).
    key_words: Vec<Vec<String>>,
    card: Regex,
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

impl Redactor {
    /// A redactor using `key` (the host's redaction key) and `rules`.
    pub fn new(key: [u8; 32], rules: RedactionRules) -> Redactor {
        let key_words = rules.key_words.iter().map(|w| words(w)).collect();
        // Digits with optional single separators, 13 to 19 digits long.
        #[allow(clippy::unwrap_used)] // A constant pattern, covered by tests.
        let card = Regex::new(r"\b\d(?:[ -]?\d){12,18}\b").unwrap();
        Redactor {
            key,
            rules,
            key_words,
            card,
        }
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
            scrub_strings(&mut value, &|s| self.scrub(s, &all));
        }
        Redacted { value, secrets }
    }

    /// Remove `secrets` and card numbers from free text.
    pub fn scrub(&self, text: &str, secrets: &[String]) -> String {
        let mut out = text.to_owned();
        let mut sorted: Vec<&String> = secrets
            .iter()
            .filter(|s| s.chars().count() >= MIN_SCRUB_LEN)
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for secret in sorted {
            if out.contains(secret.as_str()) {
                let token = self.token(&Value::String(secret.clone()));
                out = out.replace(secret.as_str(), &token);
            }
        }
        if self.rules.card_numbers {
            out = self.scrub_cards(&out);
        }
        out
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
        if value.as_str().is_some_and(|s| s.starts_with("[redacted")) {
            return;
        }
        collect_leaves(value, secrets);
        *value = Value::String(self.token(value));
    }

    fn walk(&self, value: &mut Value, secrets: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    if self.secret_key(key) {
                        self.replace(item, secrets);
                    } else {
                        self.walk(item, secrets);
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.walk(item, secrets);
                }
            }
            Value::String(s) if self.rules.card_numbers => {
                let scrubbed = self.scrub_cards(s);
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
        if c.is_uppercase() && prev_lower && !current.is_empty() {
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

fn collect_leaves(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| collect_leaves(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_leaves(v, out)),
        Value::Bool(_) | Value::Null => {}
    }
}

fn scrub_strings(value: &mut Value, scrub: &dyn Fn(&str) -> String) {
    match value {
        Value::String(s) if !s.starts_with("[redacted:") => *s = scrub(s),
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
    if text.len() <= max {
        return (text, false);
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    (text, true)
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

    #[test]
    fn luhn_and_capping() {
        assert!(luhn("4111-1111-1111-1111"));
        assert!(!luhn("4111-1111-1111-1112"));
        let (text, cut) = capped_json(&json!({"k": "ééééé"}), 9);
        assert!(cut && text.len() <= 9 && text.starts_with("{\"k\":\""));
    }
}
