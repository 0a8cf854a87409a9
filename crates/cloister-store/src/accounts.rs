//! [`AccountStore`] over SQLite and PostgreSQL: the same SQL, instantiated per pool type by a macro.

use crate::evidence::{write_evidence, PG_AUDIT_LOCK, PG_BEGIN, SQLITE_BEGIN};
use async_trait::async_trait;
use cloister_accounts::{AccountRecord, AccountStore, SessionRecord, StoreError, TokenHash, UnixTime, UserId};
use cloister_audit::Evidence;
use sqlx::{PgPool, SqlitePool};

/// Accounts in SQLite.
pub(crate) struct SqliteAccounts(pub(crate) SqlitePool);
/// Accounts in PostgreSQL.
pub(crate) struct PgAccounts(pub(crate) PgPool);

type AccountRow = (String, String, Vec<u8>, String, Vec<u8>, i64, i64);
type SessionRow = (Vec<u8>, String, i64, i64);

/// A sqlx error as a store error (unique violations become `Conflict`).
pub(crate) fn backend(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        // sqlx errors carry SQL state and messages, never bound values, so they are safe to log.
        _ => StoreError::Backend(e.to_string()),
    }
}

/// A stored value that does not parse.
pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("stored {what} is malformed"))
}

fn account_from_row(r: AccountRow) -> Result<AccountRecord, StoreError> {
    Ok(AccountRecord {
        user_id: UserId::parse(&r.0).ok_or_else(|| corrupt("user id"))?,
        email_key_id: r.1,
        email_hmac: <[u8; 32]>::try_from(r.2.as_slice()).map_err(|_| corrupt("email hash"))?,
        password_hash: r.3,
        recovery_hash: TokenHash::from_slice(&r.4).ok_or_else(|| corrupt("recovery hash"))?,
        created_at: UnixTime(r.5),
        updated_at: UnixTime(r.6),
    })
}

fn session_from_row(r: SessionRow) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        token_hash: TokenHash::from_slice(&r.0).ok_or_else(|| corrupt("token hash"))?,
        user_id: UserId::parse(&r.1).ok_or_else(|| corrupt("user id"))?,
        created_at: UnixTime(r.2),
        expires_at: UnixTime(r.3),
    })
}

const ACCOUNT_COLUMNS: &str =
    "SELECT user_id, email_key_id, email_hmac, password_hash, recovery_hash, created_at, updated_at FROM accounts";

macro_rules! sql_account_store {
    ($store:ident, $begin:expr, $lock:expr) => {
        #[async_trait]
        impl AccountStore for $store {
            async fn insert_account(&self, a: &AccountRecord, evidence: &Evidence) -> Result<(), StoreError> {
                let mut tx = self.0.begin_with($begin).await.map_err(backend)?;
                sqlx::query(
                    "INSERT INTO accounts (user_id, email_key_id, email_hmac, password_hash, recovery_hash, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(a.user_id.as_str())
                .bind(&a.email_key_id)
                .bind(&a.email_hmac[..])
                .bind(&a.password_hash)
                .bind(&a.recovery_hash.0[..])
                .bind(a.created_at.0)
                .bind(a.updated_at.0)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
                write_evidence!(tx, evidence, $lock);
                tx.commit().await.map_err(backend)
            }

            async fn account_by_email(&self, email_hmac: &[u8; 32]) -> Result<Option<AccountRecord>, StoreError> {
                let row: Option<AccountRow> = sqlx::query_as(&format!("{ACCOUNT_COLUMNS} WHERE email_hmac = $1"))
                    .bind(&email_hmac[..])
                    .fetch_optional(&self.0)
                    .await
                    .map_err(backend)?;
                row.map(account_from_row).transpose()
            }

            async fn account_by_id(&self, user_id: &UserId) -> Result<Option<AccountRecord>, StoreError> {
                let row: Option<AccountRow> = sqlx::query_as(&format!("{ACCOUNT_COLUMNS} WHERE user_id = $1"))
                    .bind(user_id.as_str())
                    .fetch_optional(&self.0)
                    .await
                    .map_err(backend)?;
                row.map(account_from_row).transpose()
            }

            async fn replace_credentials(
                &self,
                user_id: &UserId,
                password_hash: &str,
                recovery_hash: &TokenHash,
                now: UnixTime,
            ) -> Result<bool, StoreError> {
                let mut tx = self.0.begin().await.map_err(backend)?;
                let changed = sqlx::query(
                    "UPDATE accounts SET password_hash = $1, recovery_hash = $2, updated_at = $3 WHERE user_id = $4",
                )
                .bind(password_hash)
                .bind(&recovery_hash.0[..])
                .bind(now.0)
                .bind(user_id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .rows_affected();
                if changed == 0 {
                    return Ok(false); // dropping tx rolls back
                }
                sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                    .bind(user_id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn rekey_account(
                &self,
                user_id: &UserId,
                email_key_id: &str,
                email_hmac: &[u8; 32],
                password_hash: &str,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE accounts SET email_key_id = $1, email_hmac = $2, password_hash = $3 WHERE user_id = $4",
                )
                .bind(email_key_id)
                .bind(&email_hmac[..])
                .bind(password_hash)
                .bind(user_id.as_str())
                .execute(&self.0)
                .await
                .map_err(backend)?;
                Ok(())
            }

            async fn insert_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(&s.token_hash.0[..])
                .bind(s.user_id.as_str())
                .bind(s.created_at.0)
                .bind(s.expires_at.0)
                .execute(&self.0)
                .await
                .map_err(backend)?;
                Ok(())
            }

            async fn session_by_token(&self, token_hash: &TokenHash) -> Result<Option<SessionRecord>, StoreError> {
                let row: Option<SessionRow> = sqlx::query_as(
                    "SELECT token_hash, user_id, created_at, expires_at FROM sessions WHERE token_hash = $1",
                )
                .bind(&token_hash.0[..])
                .fetch_optional(&self.0)
                .await
                .map_err(backend)?;
                row.map(session_from_row).transpose()
            }

            async fn delete_session(&self, token_hash: &TokenHash) -> Result<bool, StoreError> {
                let n = sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
                    .bind(&token_hash.0[..])
                    .execute(&self.0)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                Ok(n > 0)
            }

            async fn sessions_of(&self, user_id: &UserId) -> Result<Vec<SessionRecord>, StoreError> {
                let rows: Vec<SessionRow> = sqlx::query_as(
                    "SELECT token_hash, user_id, created_at, expires_at FROM sessions WHERE user_id = $1 \
                     ORDER BY created_at, token_hash",
                )
                .bind(user_id.as_str())
                .fetch_all(&self.0)
                .await
                .map_err(backend)?;
                rows.into_iter().map(session_from_row).collect()
            }

            async fn erase_account(
                &self,
                user_id: &UserId,
                now: UnixTime,
                evidence: &Evidence,
            ) -> Result<bool, StoreError> {
                let mut tx = self.0.begin_with($begin).await.map_err(backend)?;
                sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                    .bind(user_id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                let n = sqlx::query("DELETE FROM accounts WHERE user_id = $1")
                    .bind(user_id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                if n == 0 {
                    return Ok(false);
                }
                sqlx::query("INSERT INTO erasures (user_id, erased_at) VALUES ($1, $2)")
                    .bind(user_id.as_str())
                    .bind(now.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                write_evidence!(tx, evidence, $lock);
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn was_erased(&self, user_id: &UserId) -> Result<bool, StoreError> {
                let row: Option<(i64,)> = sqlx::query_as("SELECT erased_at FROM erasures WHERE user_id = $1")
                    .bind(user_id.as_str())
                    .fetch_optional(&self.0)
                    .await
                    .map_err(backend)?;
                Ok(row.is_some())
            }

            async fn purge_expired_sessions(&self, now: UnixTime) -> Result<u64, StoreError> {
                let n = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
                    .bind(now.0)
                    .execute(&self.0)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                Ok(n)
            }
        }
    };
}

sql_account_store!(SqliteAccounts, SQLITE_BEGIN, "");
sql_account_store!(PgAccounts, PG_BEGIN, PG_AUDIT_LOCK);
