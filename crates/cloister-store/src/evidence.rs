//! Writing [`Evidence`](cloister_audit::Evidence) inside a store transaction: the audit entries of a change are
//! appended in the same transaction as the change, so neither stands without the other.
//!
//! Appenders are serialized per database: SQLite transactions that write evidence begin with `BEGIN IMMEDIATE` (the
//! write lock is taken first, so the log's end cannot move under them); PostgreSQL ones take a transaction-scoped
//! advisory lock before reading the log's end. The primary key on `seq` is the last guard either way.

use cloister_accounts::StoreError;
use cloister_audit::AuditEntry;

/// How a SQLite transaction that may write evidence begins.
pub(crate) const SQLITE_BEGIN: &str = "BEGIN IMMEDIATE";
/// How a PostgreSQL one does.
pub(crate) const PG_BEGIN: &str = "BEGIN";
/// Taken (on PostgreSQL) before the log's end is read; released at commit or rollback.
pub(crate) const PG_AUDIT_LOCK: &str = "SELECT pg_advisory_xact_lock(4353236163690497)";

/// The next position and the time entries there may not precede, from the last stored entry.
pub(crate) fn next_position(last: Option<(i64, Vec<u8>)>) -> Result<(u64, i64), StoreError> {
    match last {
        None => Ok((0, i64::MIN)),
        Some((seq, bytes)) => {
            let seq = u64::try_from(seq).map_err(|_| StoreError::Backend("negative audit seq".into()))?;
            let at = AuditEntry::decode(&bytes).map_or(i64::MIN, |e| e.at_ms);
            Ok((seq + 1, at))
        }
    }
}

/// Appends `$evidence` at the log's end inside transaction `$tx` (`$lock`: a statement to run first, or "").
macro_rules! write_evidence {
    ($tx:ident, $evidence:expr, $lock:expr) => {{
        let evidence: &cloister_audit::Evidence = $evidence;
        if !evidence.is_empty() {
            let lock: &str = $lock;
            if !lock.is_empty() {
                sqlx::query(lock).execute(&mut *$tx).await.map_err(crate::accounts::backend)?;
            }
            let last: Option<(i64, Vec<u8>)> =
                sqlx::query_as("SELECT seq, entry FROM audit_entries ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&mut *$tx)
                    .await
                    .map_err(crate::accounts::backend)?;
            let (next, not_before) = crate::evidence::next_position(last)?;
            for (seq, bytes) in (next..).zip(evidence.encode(next, not_before)) {
                let seq = i64::try_from(seq).map_err(|_| StoreError::Backend("audit seq out of range".into()))?;
                sqlx::query("INSERT INTO audit_entries (seq, entry) VALUES ($1, $2)")
                    .bind(seq)
                    .bind(bytes)
                    .execute(&mut *$tx)
                    .await
                    .map_err(crate::accounts::backend)?;
            }
        }
    }};
}
pub(crate) use write_evidence;
