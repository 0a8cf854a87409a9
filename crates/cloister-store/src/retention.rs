//! Deletions for the retention engine (`cloister_policy::retention`): the rows a rule makes due, listed or deleted
//! in one transaction. Ids are returned (token hashes as hex, user ids as they are) so the engine can commit to
//! them in the audit log.

use crate::{Database, DatabaseError};
use cloister_policy::retention::Rule;

fn query_err(e: sqlx::Error) -> DatabaseError {
    DatabaseError::Query(e.to_string())
}

/// What a rule deletes: `(select ids, delete returning ids, ids are bytes)`; both take the cutoff as `$1`.
fn sql(rule: Rule) -> Result<(&'static str, &'static str, bool), DatabaseError> {
    match rule {
        Rule::ExpiredSessions => Ok((
            "SELECT token_hash FROM sessions WHERE expires_at <= $1",
            "DELETE FROM sessions WHERE expires_at <= $1 RETURNING token_hash",
            true,
        )),
        Rule::ErasureRecords => Ok((
            "SELECT user_id FROM erasures WHERE erased_at < $1",
            "DELETE FROM erasures WHERE erased_at < $1 RETURNING user_id",
            false,
        )),
        Rule::ExpiredSeatCodes => Ok((
            "SELECT code_hash FROM seat_codes WHERE redeemed_at IS NULL \
             AND pack_id IN (SELECT id FROM seat_packs WHERE expires_at < $1)",
            "DELETE FROM seat_codes WHERE redeemed_at IS NULL \
             AND pack_id IN (SELECT id FROM seat_packs WHERE expires_at < $1) RETURNING code_hash",
            true,
        )),
        Rule::ExpiredInvitations => Ok((
            "SELECT code_hash FROM invitations WHERE redeemed_at IS NULL AND expires_at < $1",
            "DELETE FROM invitations WHERE redeemed_at IS NULL AND expires_at < $1 RETURNING code_hash",
            true,
        )),
        Rule::EndedCourseEnrollments => Ok((
            "SELECT course_id || ':' || user_id FROM enrollments WHERE course_id IN \
             (SELECT course_id FROM live_sessions GROUP BY course_id HAVING MAX(ends_at) < $1)",
            "DELETE FROM enrollments WHERE course_id IN \
             (SELECT course_id FROM live_sessions GROUP BY course_id HAVING MAX(ends_at) < $1) \
             RETURNING course_id || ':' || user_id",
            false,
        )),
        #[allow(unreachable_patterns)]
        other => Err(DatabaseError::Query(format!("retention rule {} has no storage mapping", other.as_str()))),
    }
}

/// Runs the id query on an executor, as text ids.
macro_rules! fetch_ids {
    ($exec:expr, $select:expr, $bytes:expr, $cutoff:expr) => {
        if $bytes {
            let rows: Vec<(Vec<u8>,)> =
                sqlx::query_as($select).bind($cutoff).fetch_all($exec).await.map_err(query_err)?;
            rows.into_iter().map(|(b,)| hex::encode(b)).collect::<Vec<String>>()
        } else {
            let rows: Vec<(String,)> =
                sqlx::query_as($select).bind($cutoff).fetch_all($exec).await.map_err(query_err)?;
            rows.into_iter().map(|(s,)| s).collect::<Vec<String>>()
        }
    };
}

impl Database {
    /// The ids of the rows `rule` makes due at `cutoff`, without deleting.
    pub async fn retention_due(&self, rule: Rule, cutoff: i64) -> Result<Vec<String>, DatabaseError> {
        let (select, _, bytes) = sql(rule)?;
        Ok(match self {
            Database::Sqlite(p) => fetch_ids!(p, select, bytes, cutoff),
            Database::Postgres(p) => fetch_ids!(p, select, bytes, cutoff),
        })
    }

    /// Deletes the rows `rule` makes due at `cutoff` in one statement (`DELETE ... RETURNING`); returns their ids.
    pub async fn retention_delete(&self, rule: Rule, cutoff: i64) -> Result<Vec<String>, DatabaseError> {
        let (_, delete, bytes) = sql(rule)?;
        Ok(match self {
            Database::Sqlite(p) => fetch_ids!(p, delete, bytes, cutoff),
            Database::Postgres(p) => fetch_ids!(p, delete, bytes, cutoff),
        })
    }
}
