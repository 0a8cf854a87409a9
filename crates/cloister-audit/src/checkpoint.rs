//! Signed checkpoints: a small text note (after C2SP's tlog-checkpoint) signed with Ed25519.
//!
//! ```text
//! cloister audit log v1 <origin>\n
//! <tree size>\n
//! <base64 root hash>\n
//! <unix time in milliseconds>\n
//! ```
//!
//! The signature is Ed25519 over exactly those bytes. The signing key lives outside the database (a PKCS#8 file in the
//! server's data dir, mode 0600, like the email pepper), so whoever can rewrite the database cannot sign a new history.

use crate::merkle::Hash;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

const HEADER: &str = "cloister audit log v1 ";

/// What a checkpoint states: the log named `origin` had `tree_size` entries with root `root` at `time_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name (the server's configured origin, e.g. its host name).
    pub origin: String,
    /// Number of entries.
    pub tree_size: u64,
    /// Merkle root of those entries.
    pub root: Hash,
    /// When it was signed (Unix ms).
    pub time_ms: i64,
}

/// A checkpoint with its signature, as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    /// The note text (what was signed).
    pub note: String,
    /// Base64 Ed25519 signature over `note`.
    pub signature: String,
}

/// Why a checkpoint is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The note is not in the checkpoint format.
    #[error("malformed checkpoint note")]
    Malformed,
    /// The signature does not verify under the log's key.
    #[error("checkpoint signature does not verify")]
    BadSignature,
    /// The signing key could not be loaded or generated.
    #[error("bad signing key")]
    BadKey,
}

impl Checkpoint {
    /// The note text.
    pub fn note(&self) -> String {
        format!("{HEADER}{}\n{}\n{}\n{}\n", self.origin, self.tree_size, B64.encode(self.root), self.time_ms)
    }

    /// Parses a note.
    pub fn parse(note: &str) -> Result<Self, CheckpointError> {
        let body = note.strip_suffix('\n').ok_or(CheckpointError::Malformed)?;
        let mut lines = body.split('\n');
        let mut next = || lines.next().ok_or(CheckpointError::Malformed);
        let origin = next()?.strip_prefix(HEADER).ok_or(CheckpointError::Malformed)?.to_owned();
        let tree_size = next()?.parse().map_err(|_| CheckpointError::Malformed)?;
        let root: Hash = B64
            .decode(next()?)
            .map_err(|_| CheckpointError::Malformed)?
            .try_into()
            .map_err(|_| CheckpointError::Malformed)?;
        let time_ms = next()?.parse().map_err(|_| CheckpointError::Malformed)?;
        if lines.next().is_some() || origin.is_empty() || origin.contains(char::is_control) {
            return Err(CheckpointError::Malformed);
        }
        let cp = Self { origin, tree_size, root, time_ms };
        // Only the canonical form is accepted (no leading zeros, no other base64 spelling).
        if cp.note() != note {
            return Err(CheckpointError::Malformed);
        }
        Ok(cp)
    }
}

impl SignedCheckpoint {
    /// Checks the signature under `public_key` (32 raw Ed25519 bytes) and parses the note.
    pub fn verify(&self, public_key: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let sig = B64.decode(&self.signature).map_err(|_| CheckpointError::BadSignature)?;
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(self.note.as_bytes(), &sig)
            .map_err(|_| CheckpointError::BadSignature)?;
        Checkpoint::parse(&self.note)
    }
}

/// The log's Ed25519 signing key.
pub struct CheckpointSigner {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner").field("public_key", &hex::encode(self.public_key())).finish()
    }
}

impl CheckpointSigner {
    /// Generates a new key; returns the signer and its PKCS#8 document (to store, mode 0600).
    pub fn generate(rng: &dyn ring::rand::SecureRandom) -> Result<(Self, Vec<u8>), CheckpointError> {
        let doc = Ed25519KeyPair::generate_pkcs8(rng).map_err(|_| CheckpointError::BadKey)?;
        let signer = Self::from_pkcs8(doc.as_ref())?;
        Ok((signer, doc.as_ref().to_vec()))
    }

    /// Loads a PKCS#8 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, CheckpointError> {
        Ok(Self { key: Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| CheckpointError::BadKey)? })
    }

    /// The 32-byte public key reviewers verify with.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Signs a checkpoint.
    pub fn sign(&self, cp: &Checkpoint) -> SignedCheckpoint {
        let note = cp.note();
        let signature = B64.encode(self.key.sign(note.as_bytes()).as_ref());
        SignedCheckpoint { note, signature }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cp() -> Checkpoint {
        Checkpoint { origin: "cloister.example".into(), tree_size: 42, root: [7; 32], time_ms: 1_700_000_000_000 }
    }

    #[test]
    fn sign_verify_and_every_change_fails() {
        let rng = ring::rand::SystemRandom::new();
        let (signer, pkcs8) = CheckpointSigner::generate(&rng).unwrap();
        let signed = signer.sign(&cp());
        assert_eq!(signed.verify(signer.public_key()).unwrap(), cp());
        assert_eq!(
            signed.note,
            "cloister audit log v1 cloister.example\n42\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n1700000000000\n"
        );
        // Reloaded from its PKCS#8 document, the key is the same.
        assert_eq!(CheckpointSigner::from_pkcs8(&pkcs8).unwrap().public_key(), signer.public_key());
        // A changed note, a changed signature, another key: refused.
        let mut bad = signed.clone();
        bad.note = bad.note.replace("\n42\n", "\n43\n");
        assert_eq!(bad.verify(signer.public_key()), Err(CheckpointError::BadSignature));
        let mut bad = signed.clone();
        bad.signature = B64.encode([0u8; 64]);
        assert_eq!(bad.verify(signer.public_key()), Err(CheckpointError::BadSignature));
        let (other, _) = CheckpointSigner::generate(&rng).unwrap();
        assert_eq!(signed.verify(other.public_key()), Err(CheckpointError::BadSignature));
    }

    #[test]
    fn only_canonical_notes_parse() {
        let note = cp().note();
        assert_eq!(Checkpoint::parse(&note).unwrap(), cp());
        for bad in [
            note.replace("\n42\n", "\n042\n"),
            note.trim_end().to_owned(),
            format!("{note}extra\n"),
            note.replace("cloister audit log v1 ", "cloister audit log v2 "),
            note.replace("BwcH", "!!!!"),
            String::new(),
        ] {
            assert_eq!(Checkpoint::parse(&bad), Err(CheckpointError::Malformed), "{bad:?}");
        }
        assert!(CheckpointSigner::from_pkcs8(b"not a key").is_err());
    }
}
