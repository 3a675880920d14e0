//! OAuth 2.1 resource server for the Streamable HTTP transport: JWT access
//! tokens from configured issuers, beside the static caller tokens.
//!
//! # What a token must be
//! A bearer token that is not a static caller token ([`crate::http`]) is
//! taken for a JWT access token (RFC 9068's claims) and accepted only
//! when, in this
//! order (the first step that fails refuses it, [`OauthErrorKind`] naming
//! the step):
//! 1. it is at most [`MAX_TOKEN_BYTES`], three base64url parts, and its
//!    header names `RS256`, `ES256` or `EdDSA` — `none`, `HS256` (which
//!    would let a public key serve as an HMAC secret) and the rest are
//!    refused before any key is looked at;
//! 2. its `iss` is one of [`OauthConfig::issuers`], exactly;
//! 3. that issuer's JWKS (fetched from its `jwks_uri`, cached; fetched
//!    again when a token names a key it does not hold, at most once per
//!    [`JWKS_REFETCH_INTERVAL`]) holds the key its header's `kid` names
//!    (or, without a `kid`, exactly one key), and that key's type is the
//!    header's algorithm's (an RSA key verifies `RS256` only, a P-256 key
//!    `ES256` only, an Ed25519 key `EdDSA` only; a key whose JWK `alg`
//!    names another algorithm, or whose `key_ops` leave out `verify`, is
//!    not used);
//! 4. the signature verifies with that key;
//! 5. `aud` names [`OauthConfig::resource`], this server's resource URI
//!    (RFC 8707): a token minted for another server is refused here;
//! 6. `exp` is present and not past, `nbf` (when present) not ahead, each
//!    with [`CLOCK_LEEWAY`];
//! 7. the issuer's `principal_claim` (default `sub`) is a string without
//!    control characters, 1–256 bytes with the issuer's
//!    `principal_prefix` before it; the call runs as that.
//!
//! The header's `typ` is not checked: RFC 9068 asks for `at+jwt`, but
//! many issuers write `JWT` on their access tokens. So any token the
//! issuer signed with this resource in its `aud` is taken for an access
//! token: configure the issuer so that only access tokens name the
//! resource (an ID token's `aud` is the client's id).
//!
//! # Discovery
//! RFC 9728 protected resource metadata is served at
//! `/.well-known/oauth-protected-resource` (and at that path followed by
//! the resource URI's path, where RFC 9728 puts it), and every `401` from
//! `/mcp` carries `WWW-Authenticate: Bearer resource_metadata="…"`
//! pointing at it, so a client finds the issuers to get a token from.
//!
//! # Security
//! The JWKS is fetched with a time limit ([`JWKS_FETCH_TIMEOUT`]) and a
//! size limit ([`MAX_JWKS_BYTES`], [`MAX_JWKS_KEYS`]); plain `http` only
//! to a loopback host. A token naming an unknown key triggers at most one
//! fetch per issuer per [`JWKS_REFETCH_INTERVAL`] (a fetch that fails
//! counts), so a flood of forged `kid`s cannot turn the server into a load
//! on the issuer. Keys past [`JWKS_TTL`] are fetched again by one request
//! while the others go on with them, so a fetch holds up no token whose
//! key is held; keys are never used past [`JWKS_MAX_AGE`], so a rotated-out
//! key stops working even while the issuer cannot be reached.
//! Tokens are never logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::error::{Result, config};

/// Longest token looked at.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest JWKS document read.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys kept from one JWKS.
pub const MAX_JWKS_KEYS: usize = 64;
/// How long a JWKS fetch may take.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fetched JWKS is used before it is fetched again.
pub const JWKS_TTL: Duration = Duration::from_secs(600);
/// Longest a fetched JWKS is used while it cannot be fetched again: past
/// it, tokens of that issuer are refused until a fetch succeeds.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// Shortest time between two fetches of one issuer's JWKS.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Clock skew allowed on `exp` and `nbf`.
pub const CLOCK_LEEWAY: Duration = Duration::from_secs(60);
/// Path of the protected resource metadata (RFC 9728).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// One issuer whose access tokens `/mcp` accepts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OauthIssuer {
    /// The issuer identifier, compared exactly with a token's `iss`.
    pub issuer: String,
    /// Where its signing keys are (a JWKS): `https://`, or `http://` on a
    /// loopback host.
    pub jwks_uri: String,
    /// The claim whose value is the principal (default `sub`).
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// Put before the claim's value, to keep issuers' principals apart
    /// from each other and from the static tokens' (default: none).
    #[serde(default)]
    pub principal_prefix: String,
}

fn default_principal_claim() -> String {
    "sub".to_owned()
}

/// The OAuth resource server's configuration (`[serve.oauth]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OauthConfig {
    /// This server's resource URI (RFC 8707), the audience every token
    /// must name — the URL clients use for `/mcp`, e.g.
    /// `https://mcp.example.com/mcp`.
    pub resource: String,
    /// The issuers trusted; at least one.
    pub issuers: Vec<OauthIssuer>,
}

impl OauthConfig {
    /// Check the configuration.
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming the key at fault.
    pub fn validate(&self) -> Result<()> {
        let resource = parse_url(&self.resource).filter(|u| u.query_or_fragment.is_none());
        if resource.is_none() {
            return Err(config(
                "serve.oauth.resource must be an absolute http(s) URL without query or fragment (this server's /mcp URL)",
            ));
        }
        if self.issuers.is_empty() {
            return Err(config(
                "serve.oauth needs at least one [[serve.oauth.issuers]] (issuer, jwks_uri)",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, issuer) in self.issuers.iter().enumerate() {
            let key = format!("serve.oauth.issuers[{i}]");
            if issuer.issuer.is_empty() || issuer.issuer.chars().any(char::is_control) {
                return Err(config(format!(
                    "{key}.issuer must be the issuer identifier tokens carry in `iss`"
                )));
            }
            if !seen.insert(issuer.issuer.as_str()) {
                return Err(config(format!("{key}.issuer repeats an earlier issuer")));
            }
            match parse_url(&issuer.jwks_uri) {
                Some(url) if url.tls || is_loopback_name(&url.host) => {}
                Some(_) => {
                    return Err(config(format!(
                        "{key}.jwks_uri must be https:// (plain http only to a loopback host): keys fetched in the clear could be replaced"
                    )));
                }
                None => {
                    return Err(config(format!(
                        "{key}.jwks_uri must be an absolute http(s) URL"
                    )));
                }
            }
            if issuer.principal_claim.is_empty() {
                return Err(config(format!("{key}.principal_claim must not be empty")));
            }
            if issuer.principal_prefix.len() > 64
                || issuer.principal_prefix.chars().any(char::is_control)
            {
                return Err(config(format!(
                    "{key}.principal_prefix must be at most 64 characters without control characters"
                )));
            }
        }
        Ok(())
    }

    /// Check that no two sources of callers can name the same principal:
    /// each issuer's `principal_prefix` is one no other issuer's starts
    /// with (or is the start of), and no static token's principal starts
    /// with an issuer's prefix.
    ///
    /// # Security
    /// The principal is a caller's whole identity: its workspace keys, its
    /// sessions, the approvals it may use, its idempotency keys and rate
    /// limits. A user who may choose a claim's value (a username) at an
    /// issuer without a prefix could otherwise become a static caller, or
    /// another issuer's user, by naming them.
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming the keys that overlap.
    pub fn check_principals_apart<'a>(
        &self,
        static_principals: impl IntoIterator<Item = &'a str>,
    ) -> Result<()> {
        for (i, a) in self.issuers.iter().enumerate() {
            for (j, b) in self.issuers.iter().enumerate().skip(i + 1) {
                let (p, q) = (&a.principal_prefix, &b.principal_prefix);
                if p.starts_with(q.as_str()) || q.starts_with(p.as_str()) {
                    return Err(config(format!(
                        "serve.oauth.issuers[{i}].principal_prefix ({p:?}) and serve.oauth.issuers[{j}].principal_prefix ({q:?}) overlap: one issuer's users could take the other's principals; give each a prefix no other starts with (e.g. \"idp1:\", \"idp2:\")"
                    )));
                }
            }
        }
        for (k, principal) in static_principals.into_iter().enumerate() {
            for (i, issuer) in self.issuers.iter().enumerate() {
                if principal.starts_with(issuer.principal_prefix.as_str()) {
                    return Err(config(format!(
                        "serve.tokens[{k}].principal ({principal:?}) starts with serve.oauth.issuers[{i}].principal_prefix ({:?}): that issuer's users could take it; give the issuer a prefix static principals do not start with (e.g. \"oauth:\")",
                        issuer.principal_prefix
                    )));
                }
            }
        }
        Ok(())
    }

    /// The URL of the protected resource metadata for this resource: the
    /// resource's origin, [`METADATA_PATH`], then the resource's path
    /// (RFC 9728 section 3.1).
    pub fn metadata_url(&self) -> String {
        match parse_url(&self.resource) {
            Some(url) => {
                let path = url.path.trim_end_matches('/');
                format!("{}{METADATA_PATH}{path}", url.origin())
            }
            None => METADATA_PATH.to_owned(),
        }
    }

    /// The protected resource metadata document (RFC 9728).
    pub fn metadata(&self) -> Value {
        json!({
            "resource": self.resource,
            "authorization_servers": self.issuers.iter().map(|i| &i.issuer).collect::<Vec<_>>(),
            "bearer_methods_supported": ["header"],
            "resource_name": "Airlock MCP server",
        })
    }

    /// The paths the metadata is served at.
    pub(crate) fn metadata_paths(&self) -> Vec<String> {
        let mut paths = vec![METADATA_PATH.to_owned()];
        if let Some(url) = parse_url(&self.resource) {
            let path = url.path.trim_end_matches('/');
            if !path.is_empty() {
                paths.push(format!("{METADATA_PATH}{path}"));
            }
        }
        paths
    }
}

/// Why a token was refused: the step of the list in this module's
/// documentation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OauthErrorKind {
    /// Not a JWT: too long, not three base64url parts, not JSON.
    Malformed,
    /// The header's algorithm is not one accepted (`none`, `HS256`…), or
    /// not the one the key is for.
    AlgorithmRefused,
    /// `iss` is missing or not a configured issuer.
    UnknownIssuer,
    /// The issuer's JWKS holds no key the header names.
    UnknownKey,
    /// The issuer's JWKS cannot be fetched or read.
    JwksUnavailable,
    /// The signature does not verify.
    BadSignature,
    /// `aud` does not name this server.
    WrongAudience,
    /// `exp` is past (or missing).
    Expired,
    /// `nbf` is ahead.
    NotYetValid,
    /// The principal claim is missing or not a usable principal.
    NoPrincipal,
}

impl OauthErrorKind {
    /// The kind as a stable snake_case string.
    pub fn as_str(self) -> &'static str {
        match self {
            OauthErrorKind::Malformed => "malformed",
            OauthErrorKind::AlgorithmRefused => "algorithm_refused",
            OauthErrorKind::UnknownIssuer => "unknown_issuer",
            OauthErrorKind::UnknownKey => "unknown_key",
            OauthErrorKind::JwksUnavailable => "jwks_unavailable",
            OauthErrorKind::BadSignature => "bad_signature",
            OauthErrorKind::WrongAudience => "wrong_audience",
            OauthErrorKind::Expired => "expired",
            OauthErrorKind::NotYetValid => "not_yet_valid",
            OauthErrorKind::NoPrincipal => "no_principal",
        }
    }
}

/// A refused access token.
#[derive(Debug, Clone, thiserror::Error)]
#[error("access token refused ({}): {message}", kind.as_str())]
#[non_exhaustive]
pub struct OauthError {
    /// Which check refused it.
    pub kind: OauthErrorKind,
    /// What was wrong (never the token).
    pub message: String,
}

fn refuse(kind: OauthErrorKind, message: impl Into<String>) -> OauthError {
    OauthError {
        kind,
        message: message.into(),
    }
}

/// Verifies access tokens for one [`OauthConfig`]; holds the JWKS cache.
#[derive(Debug)]
pub struct OauthVerifier {
    config: OauthConfig,
    keys: HashMap<String, IssuerKeys>,
    /// [`JWKS_REFETCH_INTERVAL`] (shorter in tests).
    refetch_interval: Duration,
}

/// One issuer's keys: read under a short lock that is never held across
/// a fetch, so a token whose key is held never waits for one.
#[derive(Debug, Default)]
struct IssuerKeys {
    cache: std::sync::Mutex<KeyCache>,
    /// Held while fetching: one fetch per issuer at a time.
    fetching: Mutex<()>,
}

#[derive(Default)]
struct KeyCache {
    /// Keys by `kid` (`""` for a key without one), with their algorithm.
    keys: Vec<(String, Algorithm, Arc<DecodingKey>)>,
    /// The last fetch that succeeded.
    fetched: Option<Instant>,
    /// The last fetch tried, whether it succeeded or not: the next is not
    /// tried before [`JWKS_REFETCH_INTERVAL`] after it.
    attempted: Option<Instant>,
    /// Why the last fetch that failed did.
    last_error: Option<String>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|(kid, alg, _)| (kid, alg))
                    .collect::<Vec<_>>(),
            )
            .field("fetched", &self.fetched)
            .field("attempted", &self.attempted)
            .field("last_error", &self.last_error)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

impl OauthVerifier {
    /// A verifier for `config`.
    ///
    /// # Errors
    /// [`crate::Error::Config`] from [`OauthConfig::validate`].
    pub fn new(config: OauthConfig) -> Result<OauthVerifier> {
        config.validate()?;
        let keys = config
            .issuers
            .iter()
            .map(|i| (i.issuer.clone(), IssuerKeys::default()))
            .collect();
        Ok(OauthVerifier {
            config,
            keys,
            refetch_interval: JWKS_REFETCH_INTERVAL,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OauthConfig {
        &self.config
    }

    /// The principal `token` authenticates, after every check of this
    /// module's list.
    ///
    /// # Errors
    /// [`OauthError`] whose kind names the check that failed.
    pub async fn verify(&self, token: &str) -> Result<String, OauthError> {
        use OauthErrorKind as K;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(refuse(
                K::Malformed,
                format!("longer than {MAX_TOKEN_BYTES} bytes"),
            ));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refuse(K::Malformed, "not a JWT (three base64url parts)"));
        };
        let header: Header = decode_part(header)
            .ok_or_else(|| refuse(K::Malformed, "its header is not base64url JSON"))?;
        let alg = match header.alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            "EdDSA" => Algorithm::EdDSA,
            other => {
                return Err(refuse(
                    K::AlgorithmRefused,
                    format!(
                        "algorithm `{}` is not accepted (RS256, ES256, EdDSA)",
                        clip(other)
                    ),
                ));
            }
        };
        // The issuer picks the keys; nothing from the payload is trusted
        // before the signature verifies, and `iss` is checked again then.
        let claims: Value = decode_part(payload)
            .ok_or_else(|| refuse(K::Malformed, "its claims are not base64url JSON"))?;
        let Some(issuer) = claims.get("iss").and_then(Value::as_str) else {
            return Err(refuse(K::UnknownIssuer, "no `iss` claim"));
        };
        let Some(trusted) = self.config.issuers.iter().find(|i| i.issuer == issuer) else {
            return Err(refuse(
                K::UnknownIssuer,
                format!("issuer `{}` is not configured", clip(issuer)),
            ));
        };
        let (key_alg, key) = self.key(trusted, header.kid.as_deref()).await?;
        if key_alg != alg {
            return Err(refuse(
                K::AlgorithmRefused,
                format!("the token says {:?} but its key is for {key_alg:?}", alg),
            ));
        }
        let mut validation = Validation::new(key_alg);
        validation.leeway = CLOCK_LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&trusted.issuer]);
        validation.set_audience(&[&self.config.resource]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as J;
            match e.kind() {
                J::InvalidSignature => refuse(K::BadSignature, "the signature does not verify"),
                J::InvalidAudience => refuse(
                    K::WrongAudience,
                    format!("`aud` does not name {}", self.config.resource),
                ),
                J::MissingRequiredClaim(claim) if claim == "aud" => refuse(
                    K::WrongAudience,
                    format!("no `aud`; it must name {}", self.config.resource),
                ),
                J::ExpiredSignature => refuse(K::Expired, "`exp` is past"),
                J::MissingRequiredClaim(claim) if claim == "exp" => {
                    refuse(K::Expired, "no `exp`: tokens must expire")
                }
                J::ImmatureSignature => refuse(K::NotYetValid, "`nbf` is ahead"),
                J::InvalidIssuer => refuse(K::UnknownIssuer, "`iss` does not match"),
                J::InvalidAlgorithm => {
                    refuse(K::AlgorithmRefused, "the algorithm is not the key's")
                }
                _ => refuse(K::Malformed, format!("{e}")),
            }
        })?;
        let value = data
            .claims
            .get(&trusted.principal_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                refuse(
                    K::NoPrincipal,
                    format!("no string claim `{}`", trusted.principal_claim),
                )
            })?;
        let principal = format!("{}{value}", trusted.principal_prefix);
        if value.is_empty() || principal.len() > 256 || principal.chars().any(char::is_control) {
            return Err(refuse(
                K::NoPrincipal,
                format!(
                    "claim `{}` is not 1-256 bytes (with the issuer's principal prefix) without control characters",
                    trusted.principal_claim
                ),
            ));
        }
        Ok(principal)
    }

    /// `issuer`'s key named `kid` (or its only key).
    ///
    /// Keys fetched less than [`JWKS_TTL`] ago are used as they are. Past
    /// it they are still used, up to [`JWKS_MAX_AGE`], while one request
    /// (at most one per [`JWKS_REFETCH_INTERVAL`]) fetches them again:
    /// the others do not wait for it. A key not held, or keys past
    /// [`JWKS_MAX_AGE`], are fetched (at most once per
    /// [`JWKS_REFETCH_INTERVAL`]) and waited for.
    ///
    /// # Security
    /// Keys are never used past [`JWKS_MAX_AGE`]: a key the issuer has
    /// rotated out (after a compromise, say) stops working even if the
    /// issuer's JWKS cannot be reached, whoever blocks it.
    async fn key(
        &self,
        issuer: &OauthIssuer,
        kid: Option<&str>,
    ) -> Result<(Algorithm, Arc<DecodingKey>), OauthError> {
        let Some(entry) = self.keys.get(&issuer.issuer) else {
            return Err(refuse(
                OauthErrorKind::UnknownIssuer,
                "issuer not configured",
            ));
        };
        let (found, fresh, may_fetch) = self.cached(entry, kid);
        if let Some(found) = found {
            if fresh || !may_fetch {
                return Ok(found);
            }
            // Stale but usable: one request fetches again, the others go
            // on with the keys held.
            let Ok(_fetching) = entry.fetching.try_lock() else {
                return Ok(found);
            };
            self.fetch(issuer, entry).await;
            return self.held(entry, kid);
        }
        // Only tokens that need a fetch wait for one; the first fetches,
        // the others then find what it brought (or that it was just tried).
        let _fetching = entry.fetching.lock().await;
        let (found, _, may_fetch) = self.cached(entry, kid);
        if let Some(found) = found {
            return Ok(found);
        }
        if may_fetch {
            self.fetch(issuer, entry).await;
        }
        self.held(entry, kid)
    }

    /// The key `kid` among `entry`'s usable keys, whether they are fresh,
    /// and whether a fetch may be tried now.
    fn cached(
        &self,
        entry: &IssuerKeys,
        kid: Option<&str>,
    ) -> (Option<(Algorithm, Arc<DecodingKey>)>, bool, bool) {
        let cache = entry
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let age = cache.fetched.map(|at| at.elapsed());
        let usable = age.is_some_and(|age| age < JWKS_MAX_AGE);
        let fresh = age.is_some_and(|age| age < JWKS_TTL);
        let found = usable.then(|| find_key(&cache.keys, kid)).flatten();
        let may_fetch = cache
            .attempted
            .is_none_or(|at| at.elapsed() >= self.refetch_interval);
        (found, fresh, may_fetch)
    }

    /// Fetch `issuer`'s JWKS into `entry` (the caller holds `fetching`);
    /// on failure the keys held stay, within [`JWKS_MAX_AGE`].
    async fn fetch(&self, issuer: &OauthIssuer, entry: &IssuerKeys) {
        // Counted as it starts: a request dropped while its fetch was in
        // flight (its client hung up) would otherwise leave no trace, and
        // the next token, forged or not, fetch again — a client hanging up
        // in a loop made the server fetch from the issuer each time.
        entry
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .attempted = Some(Instant::now());
        let fetched = fetch_jwks(&issuer.jwks_uri).await;
        let mut cache = entry
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match fetched {
            Ok(keys) => {
                cache.keys = keys;
                cache.fetched = Some(Instant::now());
            }
            Err(message) => {
                tracing::warn!(issuer = %issuer.issuer, jwks_uri = %issuer.jwks_uri, error = %message, "cannot fetch the issuer's keys");
                cache.last_error = Some(message);
            }
        }
    }

    /// The key `kid` among `entry`'s keys as they are now, or why not.
    fn held(
        &self,
        entry: &IssuerKeys,
        kid: Option<&str>,
    ) -> Result<(Algorithm, Arc<DecodingKey>), OauthError> {
        let cache = entry
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let usable = cache.fetched.is_some_and(|at| at.elapsed() < JWKS_MAX_AGE);
        if !usable {
            let why = cache.last_error.as_deref().unwrap_or("not fetched yet");
            return Err(refuse(
                OauthErrorKind::JwksUnavailable,
                format!(
                    "the issuer's keys could not be fetched ({why}); the next try is at most {} s away",
                    self.refetch_interval.as_secs()
                ),
            ));
        }
        find_key(&cache.keys, kid).ok_or_else(|| {
            refuse(
                OauthErrorKind::UnknownKey,
                match kid {
                    Some(kid) => format!("the issuer's keys hold no `kid` {}", clip(kid)),
                    None => "the token names no `kid` and the issuer has more than one key".into(),
                },
            )
        })
    }
}

fn find_key(
    keys: &[(String, Algorithm, Arc<DecodingKey>)],
    kid: Option<&str>,
) -> Option<(Algorithm, Arc<DecodingKey>)> {
    match kid {
        Some(kid) => keys.iter().find(|(k, _, _)| k == kid),
        None if keys.len() == 1 => keys.first(),
        None => None,
    }
    .map(|(_, alg, key)| (*alg, Arc::clone(key)))
}

/// The first 64 characters of something a token said, for a message.
fn clip(text: &str) -> String {
    text.chars().take(64).filter(|c| !c.is_control()).collect()
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The signing keys of a JWKS document: each key whose type this server
/// verifies (RSA, EC P-256, OKP Ed25519), whose `use` (if any) is `sig`,
/// whose `alg` (if any) is the one this server verifies with it (RS256,
/// ES256, EdDSA) and whose `key_ops` (if any) include `verify`, with that
/// algorithm; other keys are skipped.
pub(crate) fn parse_jwks(
    body: &[u8],
) -> Result<Vec<(String, Algorithm, Arc<DecodingKey>)>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let set: Set = serde_json::from_slice(body)
        .map_err(|e| format!("not a JWKS document (a JSON object with `keys`): {e}"))?;
    let mut keys = Vec::new();
    for raw in set.keys.into_iter().take(MAX_JWKS_KEYS) {
        if raw.get("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            continue;
        };
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            _ => continue,
        };
        // A key published for another algorithm (an RSA key for PS256 or
        // RS512, say) or for operations other than verifying does not
        // verify these tokens.
        let declared = match jwk.common.key_algorithm {
            None => Some(alg),
            Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
            Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
            Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
            Some(_) => None,
        };
        let verifies = jwk
            .common
            .key_operations
            .as_ref()
            .is_none_or(|ops| ops.contains(&KeyOperations::Verify));
        if declared != Some(alg) || !verifies {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push((
            jwk.common.key_id.clone().unwrap_or_default(),
            alg,
            Arc::new(key),
        ));
    }
    Ok(keys)
}

/// Fetch and parse the JWKS at `uri` within the time and size bounds.
async fn fetch_jwks(uri: &str) -> Result<Vec<(String, Algorithm, Arc<DecodingKey>)>, String> {
    let body = tokio::time::timeout(JWKS_FETCH_TIMEOUT, get(uri))
        .await
        .map_err(|_| format!("no answer within {} s", JWKS_FETCH_TIMEOUT.as_secs()))??;
    parse_jwks(&body)
}

/// `GET uri` (http or https), the body of a `200`, at most
/// [`MAX_JWKS_BYTES`].
async fn get(uri: &str) -> Result<bytes::Bytes, String> {
    use http_body_util::BodyExt as _;
    let url = parse_url(uri).ok_or_else(|| format!("`{uri}` is not an http(s) URL"))?;
    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((host, url.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    if !url.tls {
        // Plain http is allowed only to a loopback host, checked by name
        // in the configuration; `localhost` could resolve elsewhere.
        let peer = tcp
            .peer_addr()
            .map_err(|e| format!("cannot connect: {e}"))?;
        plain_http_peer(peer)?;
    }
    let request = hyper::Request::get(format!(
        "{}{}",
        url.path,
        url.query_or_fragment.as_deref().unwrap_or("")
    ))
    .header(hyper::header::HOST, url.authority.clone())
    .header(
        hyper::header::ACCEPT,
        "application/jwk-set+json, application/json",
    )
    .body(http_body_util::Empty::<bytes::Bytes>::new())
    .map_err(|e| format!("bad request: {e}"))?;
    let response = if url.tls {
        let name = rustls_pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| format!("bad host name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(tls, request).await?
    } else {
        send(tcp, request).await?
    };
    if response.status() != hyper::StatusCode::OK {
        return Err(format!("answered {}", response.status()));
    }
    http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|e| format!("reading the keys (at most {MAX_JWKS_BYTES} bytes): {e}"))
}

async fn send<S>(
    stream: S,
    request: hyper::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The parts of an absolute http(s) URL this module uses.
#[derive(Debug)]
struct Url {
    tls: bool,
    /// `host[:port]` as written.
    authority: String,
    /// The host (IPv6 in brackets).
    host: String,
    port: u16,
    /// The path, `/` at least.
    path: String,
    query_or_fragment: Option<String>,
}

impl Url {
    fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.authority
        )
    }
}

fn parse_url(text: &str) -> Option<Url> {
    let (scheme, rest) = text.split_once("://")?;
    let tls = match scheme {
        "https" => true,
        "http" => false,
        _ => return None,
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let port = authority[end + 1..].strip_prefix(':');
        (&authority[..=end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(port) => port.parse().ok()?,
        None if tls => 443,
        None => 80,
    };
    if host.is_empty() {
        return None;
    }
    let query_at = tail.find(['?', '#']).unwrap_or(tail.len());
    let (path, query) = tail.split_at(query_at);
    Some(Url {
        tls,
        authority: authority.to_owned(),
        host: host.to_owned(),
        port,
        path: if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        },
        query_or_fragment: (!query.is_empty()).then(|| query.to_owned()),
    })
}

/// Keys fetched over plain http come only from this machine: the peer a
/// loopback name connected to must be a loopback address.
fn plain_http_peer(peer: std::net::SocketAddr) -> Result<(), String> {
    if peer.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "plain http reached {peer}, not a loopback address: keys are fetched in the clear only from this machine"
        ))
    }
}

fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn keys_over_plain_http_come_only_from_a_loopback_peer() {
        plain_http_peer("127.0.0.1:9000".parse().unwrap()).unwrap();
        plain_http_peer("[::1]:9000".parse().unwrap()).unwrap();
        // `localhost` resolved (by a hosts file, a resolver) elsewhere.
        let err = plain_http_peer("203.0.113.9:9000".parse().unwrap()).unwrap_err();
        assert!(err.contains("not a loopback address"), "{err}");
    }

    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use jsonwebtoken::{EncodingKey, Header as JwtHeader};
    use ring::rand::SystemRandom;
    use ring::signature::{self, KeyPair as _};

    use super::*;

    const RESOURCE: &str = "http://127.0.0.1:7410/mcp";
    const ISSUER: &str = "https://issuer.test";

    /// A signing key made for the test, with its public JWK.
    struct TestKey {
        alg: Algorithm,
        kid: String,
        private: EncodingKey,
        jwk: Value,
    }

    fn ed25519(kid: &str) -> TestKey {
        let doc = signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        TestKey {
            alg: Algorithm::EdDSA,
            kid: kid.into(),
            private: EncodingKey::from_ed_der(doc.as_ref()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
                        "x": B64.encode(pair.public_key().as_ref())}),
        }
    }

    fn p256(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let doc = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = signature::EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        TestKey {
            alg: Algorithm::ES256,
            kid: kid.into(),
            private: EncodingKey::from_ec_der(doc.as_ref()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid,
                        "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])}),
        }
    }

    /// An RSA key for the test, made by `openssl` (ring verifies RSA but
    /// does not generate keys).
    fn rsa(kid: &str) -> TestKey {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("key.pem");
        let der = dir.path().join("key.der");
        let openssl = |args: &[&std::ffi::OsStr]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        openssl(&[
            "genrsa".as_ref(),
            "-traditional".as_ref(),
            "-out".as_ref(),
            pem.as_os_str(),
            "2048".as_ref(),
        ]);
        openssl(&[
            "rsa".as_ref(),
            "-in".as_ref(),
            pem.as_os_str(),
            "-traditional".as_ref(),
            "-outform".as_ref(),
            "DER".as_ref(),
            "-out".as_ref(),
            der.as_os_str(),
        ]);
        let modulus = openssl(&[
            "rsa".as_ref(),
            "-in".as_ref(),
            pem.as_os_str(),
            "-noout".as_ref(),
            "-modulus".as_ref(),
        ]);
        let modulus = String::from_utf8(modulus).unwrap();
        let n = hex::decode(modulus.trim().trim_start_matches("Modulus=")).unwrap();
        TestKey {
            alg: Algorithm::RS256,
            kid: kid.into(),
            private: EncodingKey::from_rsa_der(&std::fs::read(&der).unwrap()),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                        "n": B64.encode(n), "e": "AQAB"}),
        }
    }

    fn now() -> i64 {
        i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
    }

    fn claims() -> Value {
        json!({"iss": ISSUER, "aud": RESOURCE, "sub": "agent-7", "exp": now() + 300, "iat": now()})
    }

    fn sign(key: &TestKey, claims: &Value) -> String {
        let mut header = JwtHeader::new(key.alg);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.private).unwrap()
    }

    /// A JWKS endpoint on loopback whose keys the test may change; counts
    /// the fetches.
    struct Issuer {
        jwks: Arc<std::sync::Mutex<Value>>,
        fetches: Arc<AtomicUsize>,
        uri: String,
        /// Held for writing, every fetch hangs until it is released.
        hold: Arc<tokio::sync::RwLock<()>>,
        /// Set, every fetch answers 500.
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    async fn issuer(keys: &[&TestKey]) -> Issuer {
        let jwks = Arc::new(std::sync::Mutex::new(
            json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let hold = Arc::new(tokio::sync::RwLock::new(()));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let app = {
            let (jwks, fetches) = (Arc::clone(&jwks), Arc::clone(&fetches));
            let (hold, failing) = (Arc::clone(&hold), Arc::clone(&failing));
            axum::Router::new().route(
                "/jwks",
                axum::routing::get(move || {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let body = jwks.lock().unwrap().clone();
                    let (hold, failing) = (Arc::clone(&hold), Arc::clone(&failing));
                    async move {
                        drop(hold.read().await);
                        if failing.load(Ordering::SeqCst) {
                            return Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                        }
                        Ok(axum::Json(body))
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Issuer {
            jwks,
            fetches,
            uri,
            hold,
            failing,
        }
    }

    fn config(jwks_uri: &str) -> OauthConfig {
        OauthConfig {
            resource: RESOURCE.into(),
            issuers: vec![OauthIssuer {
                issuer: ISSUER.into(),
                jwks_uri: jwks_uri.into(),
                principal_claim: "sub".into(),
                principal_prefix: "oauth:".into(),
            }],
        }
    }

    async fn kind(verifier: &OauthVerifier, token: &str) -> OauthErrorKind {
        verifier.verify(token).await.unwrap_err().kind
    }

    #[tokio::test]
    async fn good_tokens_of_each_algorithm_map_to_their_principal() {
        let (ed, ec) = (ed25519("ed-1"), p256("ec-1"));
        let issuer = issuer(&[&ed, &ec]).await;
        let verifier = OauthVerifier::new(config(&issuer.uri)).unwrap();
        for key in [&ed, &ec] {
            assert_eq!(
                verifier.verify(&sign(key, &claims())).await.unwrap(),
                "oauth:agent-7"
            );
        }
        // `aud` as a list naming this server among others; another claim
        // as the principal.
        let mut list = claims();
        list["aud"] = json!(["https://other.example", RESOURCE]);
        assert_eq!(
            verifier.verify(&sign(&ed, &list)).await.unwrap(),
            "oauth:agent-7"
        );
        let mut by_email = config(&issuer.uri);
        by_email.issuers[0].principal_claim = "email".into();
        by_email.issuers[0].principal_prefix = String::new();
        let verifier = OauthVerifier::new(by_email).unwrap();
        let mut with_email = claims();
        with_email["email"] = json!("a@example.com");
        assert_eq!(
            verifier.verify(&sign(&ec, &with_email)).await.unwrap(),
            "a@example.com"
        );
        assert_eq!(
            kind(&verifier, &sign(&ec, &claims())).await,
            OauthErrorKind::NoPrincipal
        );
        // Keys fetched once for all of it (per verifier).
        assert_eq!(issuer.fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn rs256_tokens_verify_with_the_issuers_rsa_key_only() {
        let (rs, ed) = (rsa("rsa-1"), ed25519("ed-1"));
        let issuer = issuer(&[&rs, &ed]).await;
        let verifier = OauthVerifier::new(config(&issuer.uri)).unwrap();
        assert_eq!(
            verifier.verify(&sign(&rs, &claims())).await.unwrap(),
            "oauth:agent-7"
        );
        // An RS256 signature under the Ed25519 key's `kid`, and another
        // RSA key under the RSA `kid`.
        let mut header = JwtHeader::new(Algorithm::RS256);
        header.kid = Some("ed-1".into());
        let crossed = jsonwebtoken::encode(&header, &claims(), &rs.private).unwrap();
        assert_eq!(
            kind(&verifier, &crossed).await,
            OauthErrorKind::AlgorithmRefused
        );
        let other = rsa("rsa-1");
        assert_eq!(
            kind(&verifier, &sign(&other, &claims())).await,
            OauthErrorKind::BadSignature
        );
    }

    #[tokio::test]
    async fn audience_expiry_and_not_before_are_enforced() {
        let key = ed25519("k");
        let issuer = issuer(&[&key]).await;
        let verifier = OauthVerifier::new(config(&issuer.uri)).unwrap();
        let with = |edit: &dyn Fn(&mut Value)| {
            let mut c = claims();
            edit(&mut c);
            sign(&key, &c)
        };
        let wrong_aud = with(&|c| c["aud"] = json!("https://other.example/mcp"));
        assert_eq!(
            kind(&verifier, &wrong_aud).await,
            OauthErrorKind::WrongAudience
        );
        let no_aud = with(&|c| {
            c.as_object_mut().unwrap().remove("aud");
        });
        assert_eq!(
            kind(&verifier, &no_aud).await,
            OauthErrorKind::WrongAudience
        );
        let expired = with(&|c| c["exp"] = json!(now() - 3600));
        assert_eq!(kind(&verifier, &expired).await, OauthErrorKind::Expired);
        let no_exp = with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        });
        assert_eq!(kind(&verifier, &no_exp).await, OauthErrorKind::Expired);
        let early = with(&|c| c["nbf"] = json!(now() + 3600));
        assert_eq!(kind(&verifier, &early).await, OauthErrorKind::NotYetValid);
        // Within the leeway: accepted.
        let skewed = with(&|c| c["nbf"] = json!(now() + 5));
        verifier.verify(&skewed).await.unwrap();
        let empty_sub = with(&|c| c["sub"] = json!(""));
        assert_eq!(
            kind(&verifier, &empty_sub).await,
            OauthErrorKind::NoPrincipal
        );
        let control = with(&|c| c["sub"] = json!("a\nb"));
        assert_eq!(kind(&verifier, &control).await, OauthErrorKind::NoPrincipal);
        let number = with(&|c| c["sub"] = json!(7));
        assert_eq!(kind(&verifier, &number).await, OauthErrorKind::NoPrincipal);
    }

    #[tokio::test]
    async fn wrong_keys_unknown_issuers_and_forged_algorithms_are_refused() {
        let key = ed25519("k");
        let issuer = issuer(&[&key]).await;
        let verifier = OauthVerifier::new(config(&issuer.uri)).unwrap();
        // Another key under the same `kid`.
        let impostor = ed25519("k");
        assert_eq!(
            kind(&verifier, &sign(&impostor, &claims())).await,
            OauthErrorKind::BadSignature
        );
        let mut other = claims();
        other["iss"] = json!("https://evil.example");
        assert_eq!(
            kind(&verifier, &sign(&key, &other)).await,
            OauthErrorKind::UnknownIssuer
        );
        let mut none = claims();
        none.as_object_mut().unwrap().remove("iss");
        assert_eq!(
            kind(&verifier, &sign(&key, &none)).await,
            OauthErrorKind::UnknownIssuer
        );
        // alg none: no signature at all.
        let unsigned = format!(
            "{}.{}.",
            B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            B64.encode(claims().to_string())
        );
        assert_eq!(
            kind(&verifier, &unsigned).await,
            OauthErrorKind::AlgorithmRefused
        );
        // HS256 with the public key as the HMAC secret (key confusion).
        let public = key.jwk["x"].as_str().unwrap().as_bytes().to_vec();
        let mut header = JwtHeader::new(Algorithm::HS256);
        header.kid = Some("k".into());
        let confused =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&public)).unwrap();
        assert_eq!(
            kind(&verifier, &confused).await,
            OauthErrorKind::AlgorithmRefused
        );
        // A P-256 signature claiming to be for the Ed25519 key.
        let ec = p256("k");
        assert_eq!(
            kind(&verifier, &sign(&ec, &claims())).await,
            OauthErrorKind::AlgorithmRefused
        );
        for malformed in ["", "abc", "a.b", "a.b.c.d", "!!.??.##"] {
            assert_eq!(
                kind(&verifier, malformed).await,
                OauthErrorKind::Malformed,
                "{malformed}"
            );
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(kind(&verifier, &huge).await, OauthErrorKind::Malformed);
    }

    #[tokio::test]
    async fn unknown_keys_refetch_the_jwks_at_most_once_per_interval() {
        let old = ed25519("old");
        let issuer = issuer(&[&old]).await;
        let verifier = OauthVerifier::new(config(&issuer.uri)).unwrap();
        verifier.verify(&sign(&old, &claims())).await.unwrap();
        // A flood of made-up `kid`s: one fetch each interval, not one each.
        for i in 0..20 {
            let forged = ed25519(&format!("forged-{i}"));
            assert_eq!(
                kind(&verifier, &sign(&forged, &claims())).await,
                OauthErrorKind::UnknownKey
            );
        }
        assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
        // The issuer rotates its key: picked up at the next fetch allowed.
        let new = p256("new");
        *issuer.jwks.lock().unwrap() = json!({"keys": [old.jwk, new.jwk]});
        let mut quick = OauthVerifier::new(config(&issuer.uri)).unwrap();
        quick.refetch_interval = Duration::ZERO;
        quick.verify(&sign(&old, &claims())).await.unwrap();
        quick.verify(&sign(&new, &claims())).await.unwrap();
        // Without a `kid`, a JWKS of two keys names none.
        let mut header = JwtHeader::new(Algorithm::ES256);
        header.kid = None;
        let anonymous = jsonwebtoken::encode(&header, &claims(), &new.private).unwrap();
        assert_eq!(kind(&quick, &anonymous).await, OauthErrorKind::UnknownKey);
    }

    /// A fetch whose request went away before it ended (the client hung
    /// up) counts as one too: the next token does not fetch again.
    #[tokio::test]
    async fn a_fetch_dropped_midway_counts_against_the_interval() {
        let key = ed25519("k");
        let issuer = issuer(&[&key]).await;
        let verifier = OauthVerifier::new(config(&issuer.uri)).unwrap();
        let held = issuer.hold.write().await;
        let forged = ed25519("forged");
        let gave_up = tokio::time::timeout(
            Duration::from_millis(200),
            verifier.verify(&sign(&forged, &claims())),
        )
        .await;
        assert!(gave_up.is_err(), "the fetch was held");
        // The next tokens are refused at once, with no keys to check
        // them by (before, each fetched again, and waited here).
        for _ in 0..5 {
            let refused = tokio::time::timeout(
                Duration::from_secs(5),
                kind(&verifier, &sign(&forged, &claims())),
            )
            .await
            .expect("a token waited for another fetch");
            assert_eq!(refused, OauthErrorKind::JwksUnavailable);
        }
        drop(held);
        assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
    }

    /// A fetch that fails counts as one: a flood of tokens for an issuer
    /// whose JWKS answers 500 tries it once per interval, not once each.
    #[tokio::test]
    async fn a_failing_jwks_is_tried_at_most_once_per_interval() {
        let key = ed25519("k");
        let issuer = issuer(&[&key]).await;
        issuer.failing.store(true, Ordering::SeqCst);
        let verifier = OauthVerifier::new(config(&issuer.uri)).unwrap();
        for _ in 0..20 {
            assert_eq!(
                kind(&verifier, &sign(&key, &claims())).await,
                OauthErrorKind::JwksUnavailable
            );
        }
        assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
        // Keys held stay in use while the issuer fails.
        issuer.failing.store(false, Ordering::SeqCst);
        let mut quick = OauthVerifier::new(config(&issuer.uri)).unwrap();
        quick.refetch_interval = Duration::ZERO;
        quick.verify(&sign(&key, &claims())).await.unwrap();
        issuer.failing.store(true, Ordering::SeqCst);
        let forged = ed25519("forged");
        assert_eq!(
            kind(&quick, &sign(&forged, &claims())).await,
            OauthErrorKind::UnknownKey
        );
        quick.verify(&sign(&key, &claims())).await.unwrap();
    }

    /// Make `verifier`'s keys of `ISSUER` look fetched `age` ago.
    fn age_keys(verifier: &OauthVerifier, age: Duration) {
        let mut cache = verifier.keys[ISSUER].cache.lock().unwrap();
        cache.fetched = Instant::now().checked_sub(age);
        cache.attempted = cache.fetched;
    }

    /// Keys past their time to live are fetched again by one request while
    /// others go on with them; keys past their longest age are not used
    /// while the issuer cannot be reached (a rotated-out key stayed in use
    /// for as long as someone kept the JWKS unreachable); a key the fresh
    /// JWKS no longer holds is refused at once.
    #[tokio::test]
    async fn stale_keys_are_refetched_and_never_used_past_their_longest_age() {
        let key = ed25519("k");
        let issuer = issuer(&[&key]).await;
        let verifier = OauthVerifier::new(config(&issuer.uri)).unwrap();
        verifier.verify(&sign(&key, &claims())).await.unwrap();
        assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
        // Stale, the issuer down: still used, a fetch was tried.
        issuer.failing.store(true, Ordering::SeqCst);
        age_keys(&verifier, JWKS_TTL + Duration::from_secs(1));
        verifier.verify(&sign(&key, &claims())).await.unwrap();
        assert_eq!(issuer.fetches.load(Ordering::SeqCst), 2);
        // Past the longest age, the issuer still down: refused.
        age_keys(&verifier, JWKS_MAX_AGE + Duration::from_secs(1));
        let refused = verifier.verify(&sign(&key, &claims())).await.unwrap_err();
        assert_eq!(refused.kind, OauthErrorKind::JwksUnavailable, "{refused:?}");
        // Back up, with the key rotated out: refused as unknown.
        issuer.failing.store(false, Ordering::SeqCst);
        *issuer.jwks.lock().unwrap() = json!({"keys": [ed25519("new").jwk]});
        age_keys(&verifier, JWKS_TTL + Duration::from_secs(1));
        assert_eq!(
            kind(&verifier, &sign(&key, &claims())).await,
            OauthErrorKind::UnknownKey
        );
    }

    /// A token whose key is held does not wait for a fetch that a token
    /// naming an unknown key started.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_key_verifies_while_a_fetch_hangs() {
        let key = ed25519("k");
        let issuer = issuer(&[&key]).await;
        let mut verifier = OauthVerifier::new(config(&issuer.uri)).unwrap();
        verifier.refetch_interval = Duration::ZERO;
        let verifier = Arc::new(verifier);
        verifier.verify(&sign(&key, &claims())).await.unwrap();
        let stalled = issuer.hold.write().await;
        let forged = ed25519("forged");
        let hanging = {
            let (verifier, token) = (Arc::clone(&verifier), sign(&forged, &claims()));
            tokio::spawn(async move { verifier.verify(&token).await })
        };
        while issuer.fetches.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        // The fetch is in flight and hangs; the held key still verifies
        // (were it to wait, this would never finish: the bound only turns
        // a hang into a failure).
        let good = tokio::time::timeout(
            Duration::from_secs(60),
            verifier.verify(&sign(&key, &claims())),
        )
        .await
        .expect("a held key waited for a fetch");
        assert_eq!(good.unwrap(), "oauth:agent-7");
        drop(stalled);
        assert_eq!(
            hanging.await.unwrap().unwrap_err().kind,
            OauthErrorKind::UnknownKey
        );
    }

    #[tokio::test]
    async fn an_unreachable_or_garbled_jwks_refuses_and_says_so() {
        let key = ed25519("k");
        // Nothing listens there.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/jwks", listener.local_addr().unwrap())
        };
        let verifier = OauthVerifier::new(config(&closed)).unwrap();
        let error = verifier.verify(&sign(&key, &claims())).await.unwrap_err();
        assert_eq!(error.kind, OauthErrorKind::JwksUnavailable);
        assert!(error.to_string().contains("jwks_unavailable"), "{error}");
        assert!(parse_jwks(b"[1, 2]").is_err());
        assert!(parse_jwks(br#"{"keys": []}"#).unwrap().is_empty());
        // Keys of other types, curves or uses, or unreadable, are skipped.
        let kept = parse_jwks(
            json!({"keys": [
                {"kty": "oct", "k": "c2VjcmV0"},
                {"kty": "OKP", "crv": "Ed25519", "use": "enc", "x": key.jwk["x"]},
                {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},
                {"kty": "whatever"},
                // Published for another algorithm, or not for verifying.
                {"kty": "OKP", "crv": "Ed25519", "alg": "ES256", "x": key.jwk["x"]},
                {"kty": "OKP", "crv": "Ed25519", "key_ops": ["encrypt"], "x": key.jwk["x"]},
                {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "key_ops": ["verify"], "kid": "ok",
                 "x": key.jwk["x"]},
                key.jwk,
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let kids: Vec<&str> = kept.iter().map(|(kid, _, _)| kid.as_str()).collect();
        assert_eq!(kids, ["ok", "k"]);
    }

    /// `request` through the whole HTTP application with OAuth on: the
    /// status, the `WWW-Authenticate` header and the body.
    async fn through_router(
        config: OauthConfig,
        request: hyper::Request<axum::body::Body>,
    ) -> (hyper::StatusCode, Option<String>, String) {
        use http_body_util::BodyExt as _;
        use hyper::service::Service as _;
        let host = Arc::new(airlock_host::Host::new(airlock_host::HostConfig::default()).unwrap());
        let server = crate::McpServer::new(host, crate::ServeOptions::default());
        let mut http = crate::http::HttpConfig::new(crate::http::default_addr(), Vec::new());
        http.oauth = Some(config);
        let router =
            crate::http::router(&server, &http, tokio_util::sync::CancellationToken::new())
                .unwrap();
        let response = hyper_util::service::TowerToHyperService::new(router)
            .call(request)
            .await
            .unwrap();
        let status = response.status();
        let challenge = response
            .headers()
            .get(hyper::header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            challenge,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    fn initialize(token: Option<&str>) -> hyper::Request<axum::body::Body> {
        let mut request = hyper::Request::post(crate::http::MCP_PATH)
            .header(hyper::header::HOST, "127.0.0.1:7410")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json, text/event-stream");
        if let Some(token) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"}}});
        request
            .body(axum::body::Body::from(body.to_string()))
            .unwrap()
    }

    #[tokio::test]
    async fn mcp_takes_issuer_tokens_and_points_clients_at_the_metadata() {
        let key = ed25519("k");
        let issuer = issuer(&[&key]).await;
        let metadata_url = "http://127.0.0.1:7410/.well-known/oauth-protected-resource/mcp";
        let (status, challenge, _) = through_router(config(&issuer.uri), initialize(None)).await;
        assert_eq!(status, hyper::StatusCode::UNAUTHORIZED);
        assert_eq!(
            challenge.unwrap(),
            format!("Bearer resource_metadata=\"{metadata_url}\"")
        );
        let mut expired = claims();
        expired["exp"] = json!(now() - 3600);
        let (status, challenge, _) =
            through_router(config(&issuer.uri), initialize(Some(&sign(&key, &expired)))).await;
        assert_eq!(status, hyper::StatusCode::UNAUTHORIZED);
        assert!(challenge.unwrap().contains("error=\"invalid_token\""));
        let (status, _, body) = through_router(
            config(&issuer.uri),
            initialize(Some(&sign(&key, &claims()))),
        )
        .await;
        assert_eq!(status, hyper::StatusCode::OK, "{body}");
        assert!(body.contains("protocolVersion"), "{body}");
        // The metadata is public, at both paths.
        for path in [METADATA_PATH, "/.well-known/oauth-protected-resource/mcp"] {
            let request = hyper::Request::get(path)
                .header(hyper::header::HOST, "127.0.0.1:7410")
                .body(axum::body::Body::empty())
                .unwrap();
            let (status, _, body) = through_router(config(&issuer.uri), request).await;
            assert_eq!(status, hyper::StatusCode::OK, "{path}");
            let metadata: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(metadata["resource"], RESOURCE);
            assert_eq!(metadata["authorization_servers"], json!([ISSUER]));
        }
        // An issuer that cannot be reached: 503, not a 401 the client
        // would take for a bad token.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/jwks", listener.local_addr().unwrap())
        };
        let (status, _, _) =
            through_router(config(&closed), initialize(Some(&sign(&key, &claims())))).await;
        assert_eq!(status, hyper::StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let error = |c: OauthConfig| c.validate().unwrap_err().to_string();
        let mut c = config("https://issuer.test/jwks");
        c.validate().unwrap();
        c.resource = "mcp.example.com".into();
        assert!(error(c.clone()).contains("serve.oauth.resource"));
        let mut c = config("http://issuer.example/jwks");
        assert!(error(c.clone()).contains("serve.oauth.issuers[0].jwks_uri"));
        c.issuers[0].jwks_uri = "http://localhost:9000/jwks".into();
        c.validate().unwrap();
        c.issuers.push(c.issuers[0].clone());
        assert!(error(c.clone()).contains("repeats"));
        c.issuers.clear();
        assert!(error(c).contains("at least one"));
    }

    /// An issuer without a prefix beside static tokens, or two issuers
    /// whose prefixes overlap, let one source's callers take another's
    /// principals (a username chosen as `ops-bot`).
    #[test]
    fn principals_of_different_sources_cannot_overlap() {
        let apart = |c: &OauthConfig, statics: &[&str]| {
            c.check_principals_apart(statics.iter().copied())
                .map_err(|e| e.to_string())
        };
        let mut c = config("https://issuer.test/jwks");
        c.issuers[0].principal_prefix = String::new();
        apart(&c, &[]).unwrap();
        let err = apart(&c, &["ops-bot"]).unwrap_err();
        assert!(err.contains("serve.tokens[0].principal"), "{err}");
        c.issuers[0].principal_prefix = "oauth:".into();
        apart(&c, &["ops-bot"]).unwrap();
        assert!(
            apart(&c, &["ops-bot", "oauth:alice"])
                .unwrap_err()
                .contains("serve.tokens[1]")
        );
        let mut second = c.issuers[0].clone();
        second.issuer = "https://other.test".into();
        for (prefix, overlaps) in [
            ("oauth:", true),
            ("oauth:x", true),
            ("", true),
            ("oauth", true),
            ("idp2:", false),
        ] {
            second.principal_prefix = prefix.into();
            let mut two = c.clone();
            two.issuers.push(second.clone());
            match apart(&two, &["ops-bot"]) {
                Err(e) if overlaps => assert!(e.contains("overlap"), "{prefix}: {e}"),
                Ok(()) if !overlaps => {}
                other => panic!("{prefix:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_metadata_names_the_resource_and_its_issuers() {
        let mut c = config("https://issuer.test/jwks");
        c.resource = "https://mcp.example.com/mcp".into();
        assert_eq!(
            c.metadata_url(),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            c.metadata_paths(),
            [METADATA_PATH, "/.well-known/oauth-protected-resource/mcp"]
        );
        let metadata = c.metadata();
        assert_eq!(metadata["resource"], "https://mcp.example.com/mcp");
        assert_eq!(metadata["authorization_servers"], json!([ISSUER]));
        c.resource = "https://mcp.example.com".into();
        assert_eq!(
            c.metadata_url(),
            "https://mcp.example.com/.well-known/oauth-protected-resource"
        );
    }
}
