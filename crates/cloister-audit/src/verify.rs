//! Whole-log verification: what `cloister audit verify` prints.

use crate::checkpoint::{Checkpoint, SignedCheckpoint};
use crate::event::AuditEntry;
use crate::merkle::{leaf_hash, Frontier, Hash};

/// The outcome of checking a log against its checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry is well formed and in place, every checkpoint's signature holds, and every checkpoint's root is
    /// the root of the log's first `tree_size` entries (so each later checkpoint extends each earlier one).
    Intact {
        /// Entries checked.
        entries: u64,
        /// Checkpoints checked.
        checkpoints: usize,
        /// The latest checkpoint.
        latest: Option<Checkpoint>,
        /// Entries after the latest checkpoint (not yet covered by a signature).
        uncovered: u64,
    },
    /// Something does not hold; the reason names what and where.
    Broken(String),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Intact { entries, checkpoints, latest, uncovered } => {
                write!(f, "INTACT: {entries} entries, {checkpoints} signed checkpoints verified")?;
                if let Some(cp) = latest {
                    write!(f, "; latest covers {} entries, root {}", cp.tree_size, hex::encode(cp.root))?;
                }
                if *uncovered > 0 {
                    write!(f, "; {uncovered} newer entries not yet covered by a checkpoint")?;
                }
                Ok(())
            }
            Verdict::Broken(why) => write!(f, "BROKEN: {why}"),
        }
    }
}

/// Checks `entries` (stored bytes, in sequence order) against `checkpoints` (any order) under `public_key`.
pub fn verify_log(entries: &[Vec<u8>], checkpoints: &[SignedCheckpoint], public_key: &[u8], origin: &str) -> Verdict {
    let mut parsed: Vec<Checkpoint> = Vec::with_capacity(checkpoints.len());
    for (i, sc) in checkpoints.iter().enumerate() {
        match sc.verify(public_key) {
            Ok(cp) if cp.origin == origin => parsed.push(cp),
            Ok(cp) => return Verdict::Broken(format!("checkpoint {i} is for log {:?}, not {origin:?}", cp.origin)),
            Err(e) => return Verdict::Broken(format!("checkpoint {i}: {e}")),
        }
    }
    parsed.sort_by_key(|c| (c.tree_size, c.time_ms));
    // Two signed views of the same size that disagree: whoever holds the key showed different histories to
    // different readers (a fork), whichever of them the stored entries match.
    if let Some(w) = parsed.windows(2).find(|w| w[0].tree_size == w[1].tree_size && w[0].root != w[1].root) {
        return Verdict::Broken(format!(
            "the log was forked: checkpoints signed at {} ms and {} ms both cover {} entries with different roots",
            w[0].time_ms, w[1].time_ms, w[0].tree_size
        ));
    }
    if let Some(cp) = parsed.last().filter(|c| c.tree_size > entries.len() as u64) {
        return Verdict::Broken(format!(
            "a checkpoint covers {} entries but the log holds {}: entries were removed",
            cp.tree_size,
            entries.len()
        ));
    }
    let mut frontier = Frontier::new();
    let mut next_cp = parsed.iter().peekable();
    let mut last_time = i64::MIN;
    let check = |frontier: &Frontier, cp: &Checkpoint| -> Option<String> {
        (frontier.root() != cp.root)
            .then(|| format!("the first {} entries do not hash to the root signed at {} ms", cp.tree_size, cp.time_ms))
    };
    while let Some(cp) = next_cp.next_if(|c| c.tree_size == 0) {
        if let Some(e) = check(&frontier, cp) {
            return Verdict::Broken(e);
        }
    }
    for (i, bytes) in entries.iter().enumerate() {
        let Some(entry) = AuditEntry::decode(bytes) else {
            return Verdict::Broken(format!("entry {i} is not a well-formed audit entry"));
        };
        if entry.seq != i as u64 {
            return Verdict::Broken(format!("entry {i} says it is entry {}", entry.seq));
        }
        if entry.at_ms < last_time {
            return Verdict::Broken(format!("entry {i} is older than the entry before it"));
        }
        last_time = entry.at_ms;
        frontier.push(leaf_hash(bytes));
        while let Some(cp) = next_cp.next_if(|c| c.tree_size == frontier.size()) {
            if let Some(e) = check(&frontier, cp) {
                return Verdict::Broken(e);
            }
        }
    }
    let latest = parsed.last().cloned();
    let uncovered = entries.len() as u64 - latest.as_ref().map_or(0, |c| c.tree_size);
    Verdict::Intact { entries: entries.len() as u64, checkpoints: parsed.len(), latest, uncovered }
}

/// The leaf hashes of stored entries.
pub fn leaf_hashes(entries: &[Vec<u8>]) -> Vec<Hash> {
    entries.iter().map(|e| leaf_hash(e)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::checkpoint::CheckpointSigner;
    use crate::event::AuditEvent;

    const ORIGIN: &str = "test.cloister";

    fn log(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                AuditEntry {
                    seq: i as u64,
                    at_ms: 1000 + i as i64,
                    event: AuditEvent::AccountCreated { user: format!("u{i}") },
                }
                .encode()
            })
            .collect()
    }

    fn sign_at(signer: &CheckpointSigner, entries: &[Vec<u8>], size: usize) -> SignedCheckpoint {
        let f = Frontier::from_leaves(&leaf_hashes(&entries[..size]));
        signer.sign(&Checkpoint {
            origin: ORIGIN.into(),
            tree_size: size as u64,
            root: f.root(),
            time_ms: 5000 + size as i64,
        })
    }

    #[test]
    fn an_intact_log_verifies_and_every_tampering_is_named() {
        let (signer, _) = CheckpointSigner::generate(&ring::rand::SystemRandom::new()).unwrap();
        let pk = signer.public_key().to_vec();
        let entries = log(20);
        let cps = vec![sign_at(&signer, &entries, 0), sign_at(&signer, &entries, 7), sign_at(&signer, &entries, 16)];
        let v = verify_log(&entries, &cps, &pk, ORIGIN);
        assert!(matches!(v, Verdict::Intact { entries: 20, checkpoints: 3, uncovered: 4, .. }), "{v}");
        assert!(v.to_string().starts_with("INTACT: 20 entries, 3 signed checkpoints verified"));

        let broken = |entries: &[Vec<u8>], cps: &[SignedCheckpoint]| match verify_log(entries, cps, &pk, ORIGIN) {
            Verdict::Broken(why) => why,
            v => panic!("expected broken, got {v}"),
        };
        // An entry changed (same length, one byte).
        let mut e = entries.clone();
        e[3] = String::from_utf8(e[3].clone()).unwrap().replace("u3", "u9").into_bytes();
        assert!(broken(&e, &cps).contains("first 7 entries"));
        // An entry removed from the end below a checkpoint.
        assert!(broken(&entries[..15], &cps).contains("entries were removed"));
        // An entry dropped from the middle: the next one moves into its place.
        let mut e = entries.clone();
        e.remove(5);
        assert!(broken(&e, &cps).contains("entry 5 says it is entry 6"));
        // Truncated to below the first non-empty checkpoint.
        assert!(broken(&entries[..3], &cps).contains("covers 16 entries but the log holds 3"));
        // Truncated and then regrown with other entries of the same count: the signed roots no longer match.
        let mut e = entries[..12].to_vec();
        e.extend(log(20)[12..].iter().map(|b| String::from_utf8(b.clone()).unwrap().replace("u1", "x1").into_bytes()));
        assert!(broken(&e, &cps).contains("first 16 entries do not hash"));
        // A forked checkpoint: correctly signed, same size as a real one, over another history.
        let mut other_history = entries.clone();
        other_history[2] = String::from_utf8(other_history[2].clone()).unwrap().replace("u2", "u8").into_bytes();
        let mut c = cps.clone();
        c.push(sign_at(&signer, &other_history, 7));
        let why = broken(&entries, &c);
        assert!(why.contains("forked") && why.contains("both cover 7 entries"), "{why}");
        // Two entries swapped.
        let mut e = entries.clone();
        e.swap(10, 11);
        assert!(broken(&e, &cps).contains("entry 10 says it is entry 11"));
        // A forged checkpoint: wrong key, or a re-signed history with another key.
        let (other, _) = CheckpointSigner::generate(&ring::rand::SystemRandom::new()).unwrap();
        let mut c = cps.clone();
        c.push(sign_at(&other, &entries, 20));
        assert!(broken(&entries, &c).contains("signature"));
        // A checkpoint for another log.
        let f = Frontier::from_leaves(&leaf_hashes(&entries));
        let c =
            vec![signer.sign(&Checkpoint { origin: "elsewhere".into(), tree_size: 20, root: f.root(), time_ms: 1 })];
        assert!(broken(&entries, &c).contains("elsewhere"));
        // Garbage in place of an entry.
        let mut e = entries.clone();
        e[19] = b"not json".to_vec();
        assert!(broken(&e, &cps).contains("entry 19 is not a well-formed"));
    }
}
