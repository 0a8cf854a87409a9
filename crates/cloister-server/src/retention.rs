//! The retention engine's task: asks the policy what is due ([`cloister_policy::retention`]), deletes it, and writes
//! one audit entry per automated class per run (policy id, class, count, salted commitment to the deleted ids).
//! `cloister serve` runs it every `--retention-interval-secs`; `cloister retention run [--dry-run]` runs it by hand.

use cloister_audit::{AuditEvent, Evidence};
use cloister_policy::retention::{commitment, RetentionPolicy};
use cloister_store::Database;
use ring::rand::SecureRandom as _;

/// What one class's run did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassReport {
    /// Policy id.
    pub policy_id: String,
    /// Data class.
    pub class: String,
    /// Rows deleted (or due, on a dry run).
    pub count: u64,
    /// The audit commitment (empty on a dry run).
    pub commitment: String,
}

/// Runs every automated class at `now_secs`. A dry run lists what is due and writes nothing.
pub async fn run(
    policy: &RetentionPolicy,
    db: &Database,
    now_secs: i64,
    dry_run: bool,
) -> anyhow::Result<Vec<ClassReport>> {
    let mut reports = Vec::new();
    for due in policy.plan(now_secs) {
        if dry_run {
            let ids = db.retention_due(due.rule, due.cutoff).await?;
            reports.push(ClassReport {
                policy_id: due.policy_id,
                class: due.class,
                count: ids.len() as u64,
                commitment: String::new(),
            });
            continue;
        }
        // A fresh salt per run, then forgotten: the commitment cannot be tested against guessed ids.
        let mut salt = [0u8; 16];
        ring::rand::SystemRandom::new().fill(&mut salt).map_err(|_| anyhow::anyhow!("no randomness"))?;
        // The deletion and its entry are one transaction: rows never go without the run being recorded. The
        // report is the entry's own event, so what is printed is what was recorded.
        let recorded = std::sync::Mutex::new(None);
        let evidence = |ids: &[String]| {
            let event = AuditEvent::RetentionRun {
                policy: due.policy_id.clone(),
                class: due.class.clone(),
                count: ids.len() as u64,
                commitment: commitment(&salt, ids),
            };
            if let Ok(mut r) = recorded.lock() {
                *r = Some(event.clone());
            }
            Evidence::of(now_secs.saturating_mul(1000), [event])
        };
        db.retention_delete(due.rule, due.cutoff, &evidence).await?;
        let event = recorded.into_inner().ok().flatten();
        let Some(AuditEvent::RetentionRun { policy, class, count, commitment }) = event else {
            anyhow::bail!("retention of {} recorded no audit event", due.class);
        };
        reports.push(ClassReport { policy_id: policy, class, count, commitment });
    }
    Ok(reports)
}
