//! Deletions for the retention engine (`cloister_policy::retention`): the rows a rule makes due, listed or deleted
//! in one statement. Ids are returned (hashes as hex, text ids as they are) so the engine can commit to them in the
//! audit log.

use crate::accounts::backend;
use crate::evidence::{write_evidence, PG_AUDIT_LOCK, PG_BEGIN, SQLITE_BEGIN};
use crate::{Database, DatabaseError};
use cloister_accounts::StoreError;
use cloister_audit::Evidence;
use cloister_policy::retention::Rule;

/// Builds a retention run's evidence from the ids it deleted.
pub type RetentionEvidence<'a> = &'a (dyn Fn(&[String]) -> Evidence + Send + Sync);

fn query_err(e: sqlx::Error) -> DatabaseError {
    DatabaseError::Query(e.to_string())
}

/// What a rule deletes: rows of `table` matching `due` (which takes the cutoff as `$1`), identified by `id`.
struct Target {
    table: &'static str,
    id: &'static str,
    /// `id` is bytes (returned as hex) rather than text.
    id_is_bytes: bool,
    due: &'static str,
}

fn target(rule: Rule) -> Result<Target, DatabaseError> {
    let t = |table, id, id_is_bytes, due| Ok(Target { table, id, id_is_bytes, due });
    match rule {
        Rule::ExpiredSessions => t("sessions", "token_hash", true, "expires_at <= $1"),
        Rule::ErasureRecords => t("erasures", "user_id", false, "erased_at < $1"),
        Rule::ExpiredSeatCodes => t(
            "seat_codes",
            "code_hash",
            true,
            "redeemed_at IS NULL AND pack_id IN (SELECT id FROM seat_packs WHERE expires_at < $1)",
        ),
        Rule::ExpiredInvitations => t("invitations", "code_hash", true, "redeemed_at IS NULL AND expires_at < $1"),
        Rule::EndedCourseEnrollments => t(
            "enrollments",
            "course_id || ':' || user_id",
            false,
            "course_id IN (SELECT course_id FROM live_sessions GROUP BY course_id HAVING MAX(ends_at) < $1)",
        ),
        Rule::EndedSessionParticipants => t(
            "session_participants",
            "session_id || ':' || user_id",
            false,
            "session_id IN (SELECT id FROM live_sessions WHERE ends_at < $1)",
        ),
        Rule::EndedSessionLogs => {
            t("ds_groups", "session_id", false, "session_id IN (SELECT id FROM live_sessions WHERE ends_at < $1)")
        }
        Rule::ExpiredKeyPackages => t("ds_key_packages", "reference", true, "not_after < $1"),
        Rule::ExpiredKeyPackageReferences => t("ds_used_key_packages", "reference", true, "not_after < $1"),
        #[allow(unreachable_patterns)]
        other => Err(DatabaseError::Query(format!("retention rule {} has no storage mapping", other.as_str()))),
    }
}

/// Deletes with `$sql` and writes the run's evidence in one transaction; evaluates to the deleted ids.
macro_rules! delete_with_evidence {
    ($pool:expr, $begin:expr, $lock:expr, $sql:expr, $bytes:expr, $cutoff:expr, $evidence:expr) => {{
        let mut tx = $pool.begin_with($begin).await.map_err(backend)?;
        let ids = fetch_ids!(&mut *tx, $sql, $bytes, $cutoff, backend);
        write_evidence!(tx, &$evidence(&ids), $lock);
        tx.commit().await.map_err(backend)?;
        Ok::<Vec<String>, StoreError>(ids)
    }};
}

/// Runs an id-returning statement on a pool, as text ids.
macro_rules! fetch_ids {
    ($pool:expr, $sql:expr, $bytes:expr, $cutoff:expr, $err:expr) => {
        if $bytes {
            let rows: Vec<(Vec<u8>,)> = sqlx::query_as($sql).bind($cutoff).fetch_all($pool).await.map_err($err)?;
            rows.into_iter().map(|(b,)| hex::encode(b)).collect::<Vec<String>>()
        } else {
            let rows: Vec<(String,)> = sqlx::query_as($sql).bind($cutoff).fetch_all($pool).await.map_err($err)?;
            rows.into_iter().map(|(s,)| s).collect::<Vec<String>>()
        }
    };
}

impl Database {
    async fn retention_ids(&self, sql: &str, bytes: bool, cutoff: i64) -> Result<Vec<String>, DatabaseError> {
        Ok(match self {
            Database::Sqlite(p) => fetch_ids!(p, sql, bytes, cutoff, query_err),
            Database::Postgres(p) => fetch_ids!(p, sql, bytes, cutoff, query_err),
        })
    }

    /// The ids of the rows `rule` makes due at `cutoff`, without deleting.
    pub async fn retention_due(&self, rule: Rule, cutoff: i64) -> Result<Vec<String>, DatabaseError> {
        let t = target(rule)?;
        self.retention_ids(&format!("SELECT {} FROM {} WHERE {}", t.id, t.table, t.due), t.id_is_bytes, cutoff).await
    }

    /// Deletes the rows `rule` makes due at `cutoff` in one statement (`DELETE ... RETURNING`) and writes the run's
    /// audit entries (built from the deleted ids) in the same transaction; returns the ids.
    pub async fn retention_delete(
        &self,
        rule: Rule,
        cutoff: i64,
        evidence: RetentionEvidence<'_>,
    ) -> Result<Vec<String>, DatabaseError> {
        let t = target(rule)?;
        let sql = format!("DELETE FROM {} WHERE {} RETURNING {}", t.table, t.due, t.id);
        let (sql, bytes) = (sql.as_str(), t.id_is_bytes);
        Ok(match self {
            Database::Sqlite(p) => delete_with_evidence!(p, SQLITE_BEGIN, "", sql, bytes, cutoff, evidence),
            Database::Postgres(p) => delete_with_evidence!(p, PG_BEGIN, PG_AUDIT_LOCK, sql, bytes, cutoff, evidence),
        }?)
    }
}
