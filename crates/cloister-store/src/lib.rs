//! SQL storage for Cloister: an embedded SQLite file by default, PostgreSQL when configured by URL.
//!
//! One [`Database`] handle per process. It runs the backend's migrations (folders `migrations/sqlite` and
//! `migrations/postgres`, embedded at build time), implements the domain crates' storage traits
//! ([`cloister_accounts::AccountStore`]), and lists its own schema ([`Database::schema_columns`]) so that a test can
//! hold it against the data-flow inventory in `audits/`.
//!
//! It is not a domain crate: it decides nothing, it only stores. SQL is written once with `$N` placeholders, which
//! both backends accept, and a macro instantiates it for each pool type.

#![forbid(unsafe_code)]

mod accounts;
mod audit;
mod courses;
mod delivery;
mod evidence;
mod retention;

pub use audit::StoredCheckpoint;
pub use delivery::{DsEntryRow, DsGroupRow, DsKeyPackageRow, DsSnapshot, DsWrite, StoredDevice};
pub use retention::RetentionEvidence;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Why the database could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatabaseError {
    /// The URL is neither `sqlite:` nor `postgres:`/`postgresql:`, or does not parse.
    #[error("unsupported or malformed database URL (expected postgres://... or sqlite:...)")]
    BadUrl,
    /// Connecting failed.
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(String),
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(String),
}

impl From<cloister_accounts::StoreError> for DatabaseError {
    fn from(e: cloister_accounts::StoreError) -> Self {
        Self::Query(e.to_string())
    }
}

/// Which backend a [`Database`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// An open, migrated database.
#[derive(Debug, Clone)]
pub enum Database {
    /// Embedded SQLite.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// Name of the SQLite file inside the data directory.
pub const SQLITE_FILE: &str = "cloister.sqlite3";

impl Database {
    /// Opens (creating if needed) `cloister.sqlite3` in `data_dir`, in WAL mode with `secure_delete` on, and migrates.
    pub async fn open_sqlite(data_dir: &Path) -> Result<Self, DatabaseError> {
        let opts = SqliteConnectOptions::new()
            .filename(data_dir.join(SQLITE_FILE))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            // Deleted rows are overwritten with zeros, so an erased account leaves no bytes behind in free pages.
            .pragma("secure_delete", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await
            .map_err(|e| DatabaseError::Connect(e.to_string()))?;
        let db = Self::Sqlite(pool);
        db.migrate().await?;
        Ok(db)
    }

    /// Connects to PostgreSQL by URL and migrates.
    pub async fn open_postgres(url: &str) -> Result<Self, DatabaseError> {
        let opts = PgConnectOptions::from_str(url).map_err(|_| DatabaseError::BadUrl)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(|e| DatabaseError::Connect(e.to_string()))?;
        let db = Self::Postgres(pool);
        db.migrate().await?;
        Ok(db)
    }

    /// Opens PostgreSQL when `url` is given (`postgres://` or `postgresql://`), else SQLite in `data_dir`.
    pub async fn open(url: Option<&str>, data_dir: &Path) -> Result<Self, DatabaseError> {
        match url {
            None => Self::open_sqlite(data_dir).await,
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => Self::open_postgres(u).await,
            Some(_) => Err(DatabaseError::BadUrl),
        }
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }

    async fn migrate(&self) -> Result<(), DatabaseError> {
        let res = match self {
            Self::Sqlite(p) => sqlx::migrate!("./migrations/sqlite").run(p).await,
            Self::Postgres(p) => sqlx::migrate!("./migrations/postgres").run(p).await,
        };
        res.map_err(|e| DatabaseError::Migrate(e.to_string()))
    }

    /// Every `(table, column)` of the schema, sorted, for the inventory check.
    pub async fn schema_columns(&self) -> Result<Vec<(String, String)>, DatabaseError> {
        let rows: Vec<(String, String)> = match self {
            Self::Sqlite(p) => {
                sqlx::query_as(
                    "SELECT m.name, c.name FROM sqlite_master m JOIN pragma_table_info(m.name) c \
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
                )
                .fetch_all(p)
                .await
            }
            Self::Postgres(p) => {
                sqlx::query_as(
                    "SELECT table_name::text, column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema()",
                )
                .fetch_all(p)
                .await
            }
        }
        .map_err(|e| DatabaseError::Query(e.to_string()))?;
        let mut rows = rows;
        rows.sort();
        Ok(rows)
    }

    /// Closes every connection; for SQLite this checkpoints the WAL into the main file.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(p) => p.close().await,
            Self::Postgres(p) => p.close().await,
        }
    }

    /// The [`cloister_courses::CourseStore`] over this database.
    pub fn course_store(&self) -> std::sync::Arc<dyn cloister_courses::CourseStore> {
        match self {
            Self::Sqlite(p) => std::sync::Arc::new(courses::SqliteCourses(p.clone())),
            Self::Postgres(p) => std::sync::Arc::new(courses::PgCourses(p.clone())),
        }
    }

    /// The [`cloister_accounts::AccountStore`] over this database.
    pub fn account_store(&self) -> std::sync::Arc<dyn cloister_accounts::AccountStore> {
        match self {
            Self::Sqlite(p) => std::sync::Arc::new(accounts::SqliteAccounts(p.clone())),
            Self::Postgres(p) => std::sync::Arc::new(accounts::PgAccounts(p.clone())),
        }
    }
}

#[cfg(test)]
mod tests;
