//! Storage for the audit log (entries and signed checkpoints) and platform roles. The log's logic lives in
//! `cloister-audit`; this only stores bytes in order. Every append goes through [`crate::evidence`] (in the change's
//! own transaction, or alone through [`Database::audit_append`]), serialized per database, and the primary key on
//! `seq` refuses a second entry at the same position.

use crate::accounts::backend;
use crate::evidence::{write_evidence, PG_AUDIT_LOCK, PG_BEGIN, SQLITE_BEGIN};
use crate::{Database, DatabaseError};
use cloister_accounts::StoreError;
use cloister_audit::Evidence;

fn query_err(e: sqlx::Error) -> DatabaseError {
    DatabaseError::Query(e.to_string())
}

/// Runs the same query text on whichever pool the database has.
macro_rules! on_pool {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            Database::Sqlite($p) => $body,
            Database::Postgres($p) => $body,
        }
    };
}

/// A stored checkpoint: `(note, base64 signature)`.
pub type StoredCheckpoint = (String, String);

impl Database {
    /// Appends entries that record no stored change (denials, throttling, policy loads) at the log's end, in
    /// their own transaction, serialized with every other appender.
    pub async fn audit_append(&self, evidence: &Evidence) -> Result<(), DatabaseError> {
        match self {
            Database::Sqlite(p) => {
                let mut tx = p.begin_with(SQLITE_BEGIN).await.map_err(backend)?;
                write_evidence!(tx, evidence, "");
                tx.commit().await.map_err(backend)?;
            }
            Database::Postgres(p) => {
                let mut tx = p.begin_with(PG_BEGIN).await.map_err(backend)?;
                write_evidence!(tx, evidence, PG_AUDIT_LOCK);
                tx.commit().await.map_err(backend)?;
            }
        }
        Ok(())
    }

    /// Entries `from..from+limit`, in order.
    pub async fn audit_entries(&self, from: u64, limit: u32) -> Result<Vec<(u64, Vec<u8>)>, DatabaseError> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let rows: Vec<(i64, Vec<u8>)> = on_pool!(self, p => sqlx::query_as(
                "SELECT seq, entry FROM audit_entries WHERE seq >= $1 ORDER BY seq LIMIT $2")
            .bind(from)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await
            .map_err(query_err))?;
        rows.into_iter()
            .map(|(s, e)| {
                u64::try_from(s).map(|s| (s, e)).map_err(|_| DatabaseError::Query("negative audit seq".into()))
            })
            .collect()
    }

    /// Every entry's bytes in sequence order (for the tree, proofs and verification). A gap in `seq` is returned as
    /// an error: the log must be contiguous.
    pub async fn audit_all_entries(&self) -> Result<Vec<Vec<u8>>, DatabaseError> {
        let rows: Vec<(i64, Vec<u8>)> = on_pool!(self, p => sqlx::query_as(
                "SELECT seq, entry FROM audit_entries ORDER BY seq")
            .fetch_all(p)
            .await
            .map_err(query_err))?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, (seq, entry)) in rows.into_iter().enumerate() {
            if seq != i as i64 {
                return Err(DatabaseError::Query(format!("audit log has a gap: entry {i} is missing")));
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Stores a checkpoint; a second checkpoint of the same size is ignored (the first stands).
    pub async fn audit_insert_checkpoint(
        &self,
        tree_size: u64,
        note: &str,
        signature: &str,
    ) -> Result<(), DatabaseError> {
        let size = i64::try_from(tree_size).map_err(|_| DatabaseError::Query("tree size out of range".into()))?;
        on_pool!(self, p => sqlx::query(
                "INSERT INTO audit_checkpoints (tree_size, note, signature) VALUES ($1, $2, $3) \
                 ON CONFLICT (tree_size) DO NOTHING")
            .bind(size)
            .bind(note)
            .bind(signature)
            .execute(p)
            .await
            .map(|_| ())
            .map_err(query_err))
    }

    /// Every checkpoint, by tree size.
    pub async fn audit_checkpoints(&self) -> Result<Vec<StoredCheckpoint>, DatabaseError> {
        on_pool!(self, p => sqlx::query_as("SELECT note, signature FROM audit_checkpoints ORDER BY tree_size")
            .fetch_all(p)
            .await
            .map_err(query_err))
    }

    /// The checkpoint of the largest tree.
    pub async fn audit_latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, DatabaseError> {
        on_pool!(self, p => sqlx::query_as(
                "SELECT note, signature FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1")
            .fetch_optional(p)
            .await
            .map_err(query_err))
    }

    /// Grants a platform role (idempotent). Fails if the account does not exist.
    pub async fn grant_platform_role(
        &self,
        user_id: &str,
        role: &str,
        at_secs: i64,
        evidence: &Evidence,
    ) -> Result<bool, DatabaseError> {
        macro_rules! grant {
            ($p:expr, $begin:expr, $lock:expr) => {{
                let mut tx = $p.begin_with($begin).await.map_err(backend)?;
                let done = sqlx::query(
                    "INSERT INTO platform_roles (user_id, role, granted_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id, role) DO NOTHING",
                )
                .bind(user_id)
                .bind(role)
                .bind(at_secs)
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .rows_affected()
                    == 1;
                if done {
                    write_evidence!(tx, evidence, $lock);
                    tx.commit().await.map_err(backend)?;
                }
                done
            }};
        }
        Ok(match self {
            Database::Sqlite(p) => grant!(p, SQLITE_BEGIN, ""),
            Database::Postgres(p) => grant!(p, PG_BEGIN, PG_AUDIT_LOCK),
        })
    }

    /// Whether `user_id` holds `role`.
    pub async fn has_platform_role(&self, user_id: &str, role: &str) -> Result<bool, DatabaseError> {
        let row: Option<(i64,)> = on_pool!(self, p => sqlx::query_as(
                "SELECT granted_at FROM platform_roles WHERE user_id = $1 AND role = $2")
            .bind(user_id)
            .bind(role)
            .fetch_optional(p)
            .await
            .map_err(query_err))?;
        Ok(row.is_some())
    }
}
