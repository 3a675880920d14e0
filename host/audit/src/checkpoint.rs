//! Signed checkpoints: the host's Ed25519 signature over (sequence, head hash).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Domain separation for checkpoint signatures.
pub const CHECKPOINT_DOMAIN: &[u8] = b"airlock-audit-checkpoint/v1\n";

/// A signed statement that record `seq` of the log has hash `hash`.
///
/// Because each record's hash covers every record before it, a valid
/// checkpoint vouches for the whole log up to `seq`: rewriting any of it —
/// even re-hashing everything after the change — no longer matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Sequence number of the last record covered.
    pub seq: u64,
    /// That record's hash, hex.
    pub hash: String,
    /// When the checkpoint was signed, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The signer's Ed25519 public key, hex.
    pub public_key: String,
    /// Ed25519 signature over [`Checkpoint::message`], hex.
    pub signature: String,
}

impl Checkpoint {
    /// The signed bytes: [`CHECKPOINT_DOMAIN`] ‖ `seq` (u64 big-endian) ‖
    /// the 32 hash bytes ‖ `time_ms` (u64 big-endian).
    pub fn message(seq: u64, hash: &[u8; 32], time_ms: u64) -> Vec<u8> {
        let mut message = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 48);
        message.extend_from_slice(CHECKPOINT_DOMAIN);
        message.extend_from_slice(&seq.to_be_bytes());
        message.extend_from_slice(hash);
        message.extend_from_slice(&time_ms.to_be_bytes());
        message
    }

    pub(crate) fn sign(key: &SigningKey, seq: u64, hash: &[u8; 32], time_ms: u64) -> Checkpoint {
        let signature = key.sign(&Checkpoint::message(seq, hash, time_ms));
        Checkpoint {
            seq,
            hash: hex::encode(hash),
            time_ms,
            public_key: hex::encode(key.verifying_key().as_bytes()),
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// Check the signature against `key` (the key the verifier trusts — not
    /// the one the checkpoint names).
    ///
    /// # Errors
    /// Says what is wrong: malformed hash or signature, another signer, or a
    /// signature that does not verify.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), String> {
        let hash = crate::record::parse_hash(&self.hash)
            .ok_or_else(|| "its hash is not 64 hex digits".to_owned())?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut sig)
            .map_err(|_| "its signature is not 128 hex digits".to_owned())?;
        if self.public_key != hex::encode(key.as_bytes()) {
            return Err(format!(
                "signed by another key ({}), not the trusted one ({})",
                short(&self.public_key),
                short(&hex::encode(key.as_bytes()))
            ));
        }
        key.verify(
            &Checkpoint::message(self.seq, &hash, self.time_ms),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| "bad signature".to_owned())
    }
}

fn short(hex_key: &str) -> &str {
    hex_key.get(..16).unwrap_or(hex_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_detect_changes() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let cp = Checkpoint::sign(&key, 10, &[9; 32], 1234);
        assert!(cp.verify(&key.verifying_key()).is_ok());

        let mut moved = cp.clone();
        moved.seq = 11;
        assert_eq!(
            moved.verify(&key.verifying_key()),
            Err("bad signature".into())
        );

        let other = SigningKey::from_bytes(&[2; 32]);
        let err = cp.verify(&other.verifying_key()).unwrap_err();
        assert!(err.contains("another key"), "{err}");
    }
}
