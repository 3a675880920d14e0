//! Checking a bearer token against the SHA-256 an operator configured for
//! it (callers' and approvers' tokens).
//!
//! # Security
//! Configuration holds only the token's digest, so a leaked configuration
//! file does not leak tokens, and the comparison is constant-time (the
//! `subtle` crate's, not a hand-written loop the optimiser may shorten), so
//! the time a refusal takes does not tell how much of the digest matched.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Whether `token` hashes to `sha256_hex` (lowercase or uppercase hex).
pub fn matches_sha256(token: &str, sha256_hex: &str) -> bool {
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    sha256_hex
        .to_ascii_lowercase()
        .as_bytes()
        .ct_eq(digest.as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_its_digest_only() {
        let digest = hex::encode(Sha256::digest(b"s3cret"));
        assert!(matches_sha256("s3cret", &digest));
        assert!(matches_sha256("s3cret", &digest.to_ascii_uppercase()));
        assert!(!matches_sha256("s3cret!", &digest));
        assert!(!matches_sha256("s3cret", &digest[..63]));
        assert!(!matches_sha256("s3cret", ""));
    }
}
