//! The audit log as the server runs it: appends events in order, keeps the Merkle frontier in memory, signs
//! checkpoints with a key kept outside the database, and answers reviewers' proof requests.
//!
//! The signing key is a PKCS#8 Ed25519 file (default `DATA_DIR/audit-signing.key`, mode 0600, created on first
//! start). Whoever can rewrite the database cannot re-sign a changed history without it. At start the whole stored
//! log is verified against its checkpoints; a broken log stops the server with the reason (`cloister audit verify`
//! prints the same verdict).

use anyhow::{bail, Context as _};
use cloister_audit::merkle::{self, leaf_hash, Hash};
use cloister_audit::verify::{leaf_hashes, verify_log, Verdict};
use cloister_audit::{AuditEvent, Checkpoint, CheckpointSigner, Evidence, Frontier, SignedCheckpoint};
use cloister_store::Database;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Mutex;

/// Loads the signing key, creating it (mode 0600) when the file does not exist. Returns whether it was created.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<(CheckpointSigner, bool)> {
    const WHAT: &str = "audit signing key";
    if let Some(bytes) = crate::keyfile::read_private(path, WHAT)? {
        let signer = CheckpointSigner::from_pkcs8(&bytes)
            .with_context(|| format!("{} is not an Ed25519 PKCS#8 key", path.display()))?;
        return Ok((signer, false));
    }
    let (signer, pkcs8) = CheckpointSigner::generate(&ring::rand::SystemRandom::new())?;
    crate::keyfile::create_private(path, &pkcs8, WHAT)?;
    Ok((signer, true))
}

/// Loads an existing key only (for `cloister audit verify`: a missing key is an error, not a new key).
pub fn load_key(path: &Path) -> anyhow::Result<CheckpointSigner> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read audit signing key {}", path.display()))?;
    CheckpointSigner::from_pkcs8(&bytes).with_context(|| format!("{} is not an Ed25519 PKCS#8 key", path.display()))
}

/// Reads the stored log and checks it.
pub async fn verify_stored(db: &Database, public_key: &[u8], origin: &str) -> anyhow::Result<Verdict> {
    let entries = match db.audit_all_entries().await {
        Ok(e) => e,
        Err(e) => return Ok(Verdict::Broken(e.to_string())),
    };
    let checkpoints: Vec<SignedCheckpoint> = db
        .audit_checkpoints()
        .await?
        .into_iter()
        .map(|(note, signature)| SignedCheckpoint { note, signature })
        .collect();
    Ok(verify_log(&entries, &checkpoints, public_key, origin))
}

/// The running log.
pub struct AuditLog {
    db: Database,
    signer: CheckpointSigner,
    origin: String,
    /// The frontier of the stored entries as last read (see [`AuditLog::sync`]); the lock serializes checkpoints.
    frontier: Mutex<Frontier>,
    /// Sign-in attempts refused by the rate limiter since the last flush (one entry per interval, not per attempt,
    /// so an attacker cannot grow the log at will).
    throttled: AtomicU64,
    /// Denials recorded this interval per principal; past [`DENIALS_PER_INTERVAL`] they are only counted.
    denials: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

/// Denial entries recorded one by one per principal and checkpoint interval; the rest become one
/// `authz_denied_suppressed` entry with their count, so nobody can grow the log at will by asking for what they may
/// not have.
pub const DENIALS_PER_INTERVAL: u64 = 20;
/// Principals tracked per interval; beyond it new principals' denials go into one shared count.
const MAX_TRACKED_PRINCIPALS: usize = 10_000;
/// The principal name the shared overflow count is recorded under.
const OVERFLOW_PRINCIPAL: &str = "(many principals)";

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("origin", &self.origin).finish_non_exhaustive()
    }
}

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Storage failed.
    #[error("audit storage: {0}")]
    Store(#[from] cloister_store::DatabaseError),
    /// A proof was asked for outside the tree.
    #[error("index or size outside the log")]
    OutOfRange,
    /// The stored log has no entry at this position but one after it.
    #[error("the stored audit log has a gap at entry {0}")]
    Gap(u64),
}

impl AuditLog {
    /// Opens the log: verifies what is stored (refusing a broken log), rebuilds the frontier.
    pub async fn open(db: Database, signer: CheckpointSigner, origin: String) -> anyhow::Result<Self> {
        match verify_stored(&db, signer.public_key(), &origin).await? {
            Verdict::Intact { .. } => {}
            Verdict::Broken(why) => {
                bail!("the audit log does not verify: {why}. Run `cloister audit verify` for details")
            }
        }
        let entries = db.audit_all_entries().await?;
        let frontier = Frontier::from_leaves(&leaf_hashes(&entries));
        Ok(Self {
            db,
            signer,
            origin,
            frontier: Mutex::new(frontier),
            throttled: AtomicU64::new(0),
            denials: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The log's public key.
    pub fn public_key(&self) -> &[u8] {
        self.signer.public_key()
    }

    /// The log's origin (name in its checkpoints).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Appends an event that records no stored change (changes write their entries in their own transaction,
    /// through the stores' [`cloister_audit::Evidence`]).
    pub async fn record(&self, event: AuditEvent, at_ms: i64) -> Result<(), AuditError> {
        self.db.audit_append(&Evidence::of(at_ms, [event])).await?;
        Ok(())
    }

    /// Brings the in-memory frontier up to the stored log's end: entries are written by the stores inside the
    /// transactions of the changes they record (and by operator commands), so storage is the truth and the frontier
    /// follows it.
    async fn sync<'a>(
        &'a self,
        mut frontier: tokio::sync::MutexGuard<'a, Frontier>,
    ) -> Result<tokio::sync::MutexGuard<'a, Frontier>, AuditError> {
        loop {
            let rows = self.db.audit_entries(frontier.size(), 1000).await?;
            if rows.is_empty() {
                return Ok(frontier);
            }
            for (seq, bytes) in rows {
                if seq != frontier.size() {
                    return Err(AuditError::Gap(frontier.size()));
                }
                frontier.push(leaf_hash(&bytes));
            }
        }
    }

    /// Records an event that records no stored change (a denial), logging (never failing) when storage fails.
    pub async fn record_or_log(&self, event: AuditEvent, at_ms: i64) {
        let kind = event.kind();
        if let Err(e) = self.record(event, at_ms).await {
            tracing::error!(error = %e, kind, "could not append to the audit log");
        }
    }

    /// Records an authorization denial: one entry each for the first [`DENIALS_PER_INTERVAL`] of a principal in an
    /// interval, counted after that (see [`AuditLog::flush_throttled`]).
    pub async fn record_denial(&self, principal: String, action: String, resource: String, at_ms: i64) {
        let record = {
            let Ok(mut d) = self.denials.lock() else { return };
            let overflow = d.len() >= MAX_TRACKED_PRINCIPALS && !d.contains_key(&principal);
            let key = if overflow { OVERFLOW_PRINCIPAL.to_owned() } else { principal.clone() };
            let n = d.entry(key).or_insert(0);
            *n += 1;
            !overflow && *n <= DENIALS_PER_INTERVAL
        };
        if record {
            self.record_or_log(AuditEvent::AuthzDenied { principal, action, resource }, at_ms).await;
        }
    }

    /// Counts one throttled sign-in attempt (flushed as one entry per interval).
    pub fn count_throttled_sign_in(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes the throttled-sign-in count and the suppressed-denial counts as entries (when not zero), and starts a
    /// new interval.
    pub async fn flush_throttled(&self, at_ms: i64) -> Result<(), AuditError> {
        let denials = match self.denials.lock() {
            Ok(mut d) => std::mem::take(&mut *d),
            Err(_) => Default::default(),
        };
        let mut over: Vec<(String, u64)> = denials
            .into_iter()
            .filter_map(|(p, n)| {
                let suppressed = if p == OVERFLOW_PRINCIPAL { n } else { n.saturating_sub(DENIALS_PER_INTERVAL) };
                (suppressed > 0).then_some((p, suppressed))
            })
            .collect();
        over.sort();
        for (principal, count) in over {
            self.record(AuditEvent::AuthzDeniedSuppressed { principal, count }, at_ms).await?;
        }
        let n = self.throttled.swap(0, Ordering::Relaxed);
        if n > 0 {
            if let Err(e) = self.record(AuditEvent::SignInThrottled { scope: "login".into(), count: n }, at_ms).await {
                self.throttled.fetch_add(n, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Signs and stores a checkpoint of the current tree unless the latest stored one already covers it; returns
    /// the latest checkpoint.
    pub async fn checkpoint(&self, now_ms: i64) -> Result<SignedCheckpoint, AuditError> {
        let frontier = self.sync(self.frontier.lock().await).await?;
        if let Some((note, signature)) = self.db.audit_latest_checkpoint().await? {
            let latest = SignedCheckpoint { note, signature };
            if Checkpoint::parse(&latest.note).is_ok_and(|c| c.tree_size == frontier.size()) {
                return Ok(latest);
            }
        }
        let cp = Checkpoint {
            origin: self.origin.clone(),
            tree_size: frontier.size(),
            root: frontier.root(),
            time_ms: now_ms,
        };
        let signed = self.signer.sign(&cp);
        self.db.audit_insert_checkpoint(cp.tree_size, &signed.note, &signed.signature).await?;
        Ok(signed)
    }

    /// The leaf hashes of the first `size` entries (proofs are O(n) in the log's size).
    async fn leaves(&self, size: u64) -> Result<Vec<Hash>, AuditError> {
        let entries = self.db.audit_all_entries().await?;
        if size > entries.len() as u64 {
            return Err(AuditError::OutOfRange);
        }
        Ok(leaf_hashes(&entries[..size as usize]))
    }

    /// `(leaf hash, path, root)` proving entry `seq` is in the tree of `tree_size` entries.
    pub async fn inclusion(&self, seq: u64, tree_size: u64) -> Result<(Hash, Vec<Hash>, Hash), AuditError> {
        let leaves = self.leaves(tree_size).await?;
        let path = merkle::inclusion_proof(&leaves, usize::try_from(seq).map_err(|_| AuditError::OutOfRange)?)
            .map_err(|_| AuditError::OutOfRange)?;
        let leaf = leaves[seq as usize];
        Ok((leaf, path, merkle::root(&leaves)))
    }

    /// `(proof, first root, second root)` that the tree of `first` entries is a prefix of the tree of `second`.
    pub async fn consistency(&self, first: u64, second: u64) -> Result<(Vec<Hash>, Hash, Hash), AuditError> {
        if first > second {
            return Err(AuditError::OutOfRange);
        }
        let leaves = self.leaves(second).await?;
        let proof = merkle::consistency_proof(&leaves, first as usize).map_err(|_| AuditError::OutOfRange)?;
        Ok((proof, merkle::root(&leaves[..first as usize]), merkle::root(&leaves)))
    }

    /// Entries `from..from+limit` and the log's size.
    pub async fn entries(&self, from: u64, limit: u32) -> Result<(Vec<(u64, Vec<u8>)>, u64), AuditError> {
        let size = self.sync(self.frontier.lock().await).await?.size();
        Ok((self.db.audit_entries(from, limit).await?, size))
    }
}
