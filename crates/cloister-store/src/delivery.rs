//! Storage for the delivery service (`cloister-ds`): each live session's group log as it was ordered (MLS bytes
//! and the service's decisions, never anything decrypted), members' leaves, and the KeyPackage directory. The
//! server applies each batch of changes in one transaction, in order, before it acknowledges or delivers any of
//! them, and reloads everything with [`Database::ds_load`] when it starts.
//!
//! A write whose parent is gone (the session was deleted, the account erased while its message was in flight) is
//! skipped rather than failing the batch: each insert selects its parent row.

use crate::accounts::backend;
use crate::evidence::{write_evidence, PG_AUDIT_LOCK, PG_BEGIN, SQLITE_BEGIN};
use crate::{Database, DatabaseError};
use cloister_accounts::StoreError;
use cloister_audit::Evidence;

/// A device: `(user id, device id)`; the user is `None` when the account was erased since.
pub type StoredDevice = (Option<String>, String);

/// One stored log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsEntryRow {
    /// Position.
    pub seq: u64,
    /// Epoch it was made in.
    pub epoch: u64,
    /// `proposal`, `commit` or `application`.
    pub kind: String,
    /// The member that sent it; `None` for the service's own proposals.
    pub sender: Option<StoredDevice>,
    /// The MLS message.
    pub mls: Vec<u8>,
    /// For the service's Add: the device and the KeyPackage reference.
    pub join: Option<(StoredDevice, Vec<u8>)>,
    /// For the service's Remove: the device.
    pub remove: Option<StoredDevice>,
    /// For a winning Commit: its Welcome.
    pub welcome: Option<Vec<u8>>,
    /// When the server accepted it (unix ms).
    pub received_at: i64,
}

/// One KeyPackage to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsKeyPackageRow {
    /// Its reference.
    pub reference: Vec<u8>,
    /// The TLS-encoded KeyPackage message.
    pub bytes: Vec<u8>,
    /// Marked last resort.
    pub last_resort: bool,
    /// End of its lifetime (unix seconds).
    pub not_after: u64,
}

/// A change to the delivery service's storage.
#[derive(Debug, Clone)]
pub enum DsWrite {
    /// A session's group was created.
    Group {
        /// Live session id.
        session: String,
        /// Creator `(user, device)`.
        creator: (String, String),
        /// When (unix ms).
        at_ms: i64,
    },
    /// An entry was ordered.
    Entry {
        /// Live session id.
        session: String,
        /// The entry.
        entry: Box<DsEntryRow>,
    },
    /// A device uploaded KeyPackages.
    KeyPackages {
        /// `(user, device)`.
        device: (String, String),
        /// The batch.
        batch: Vec<DsKeyPackageRow>,
        /// When (unix ms).
        at_ms: i64,
    },
    /// A KeyPackage was handed out (a last-resort one stays).
    KeyPackageUsed {
        /// Its reference.
        reference: Vec<u8>,
        /// End of its lifetime (unix seconds).
        not_after: u64,
        /// Marked last resort.
        last_resort: bool,
    },
    /// A committer reported a member's leaf.
    Leaf {
        /// Live session id.
        session: String,
        /// `(user, device)`.
        device: (String, String),
        /// The leaf.
        leaf: u32,
    },
    /// The session's staff removed a user: it may not rejoin while the group lives.
    Removed {
        /// Live session id.
        session: String,
        /// The removed user.
        user: String,
        /// When (unix ms).
        at_ms: i64,
    },
    /// Audit entries that go with the batch (key custody per epoch).
    Evidence(Evidence),
}

/// A stored group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsGroupRow {
    /// Live session id.
    pub session: String,
    /// Who created it.
    pub creator: StoredDevice,
    /// Its entries in order (checked gapless by the caller's replay).
    pub entries: Vec<DsEntryRow>,
    /// Members' leaves.
    pub leaves: Vec<((String, String), u32)>,
    /// Users the staff removed (barred from rejoining).
    pub removed: Vec<String>,
}

/// Everything the delivery service stored.
#[derive(Debug, Clone, Default)]
pub struct DsSnapshot {
    /// Groups with their logs.
    pub groups: Vec<DsGroupRow>,
    /// Unused KeyPackages: `(user, device, bytes)`, oldest first.
    pub key_packages: Vec<(String, String, Vec<u8>)>,
    /// References handed out that may still be valid.
    pub used_references: Vec<Vec<u8>>,
}

fn int(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend("value out of range".into()))
}

fn uint(v: i64) -> Result<u64, DatabaseError> {
    u64::try_from(v).map_err(|_| DatabaseError::Query("negative value in the delivery service's tables".into()))
}

/// Moves a KeyPackage from the directory to the used references (it can never be accepted again).
macro_rules! retire {
    ($tx:ident, $reference:expr, $not_after:expr) => {{
        sqlx::query("DELETE FROM ds_key_packages WHERE reference = $1")
            .bind($reference)
            .execute(&mut *$tx)
            .await
            .map_err(backend)?;
        sqlx::query(
            "INSERT INTO ds_used_key_packages (reference, not_after) VALUES ($1, $2) \
             ON CONFLICT (reference) DO NOTHING",
        )
        .bind($reference)
        .bind($not_after)
        .execute(&mut *$tx)
        .await
        .map_err(backend)?;
    }};
}

/// Applies `$writes` in transaction `$tx`.
macro_rules! apply_writes {
    ($tx:ident, $writes:expr, $lock:expr) => {{
        for w in $writes {
            match w {
                DsWrite::Group { session, creator, at_ms } => {
                    sqlx::query(
                        "INSERT INTO ds_groups (session_id, creator_user, creator_device, created_at) \
                         SELECT id, (SELECT user_id FROM accounts WHERE user_id = $2), $3, $4 FROM live_sessions \
                         WHERE id = $1",
                    )
                    .bind(session)
                    .bind(&creator.0)
                    .bind(&creator.1)
                    .bind(at_ms)
                    .execute(&mut *$tx)
                    .await
                    .map_err(backend)?;
                }
                DsWrite::Entry { session, entry: e } => {
                    let user = |d: &Option<StoredDevice>| d.as_ref().and_then(|d| d.0.clone());
                    let device = |d: &Option<StoredDevice>| d.as_ref().map(|d| d.1.clone());
                    let join = e.join.as_ref().map(|(d, _)| d.clone());
                    sqlx::query(
                        "INSERT INTO ds_entries (session_id, seq, epoch, kind, sender_user, sender_device, mls, \
                         join_user, join_device, join_ref, remove_user, remove_device, welcome, received_at) \
                         SELECT session_id, $2, $3, $4, (SELECT user_id FROM accounts WHERE user_id = $5), $6, $7, \
                         (SELECT user_id FROM accounts WHERE user_id = $8), $9, $10, \
                         (SELECT user_id FROM accounts WHERE user_id = $11), $12, $13, $14 \
                         FROM ds_groups WHERE session_id = $1",
                    )
                    .bind(session)
                    .bind(int(e.seq)?)
                    .bind(int(e.epoch)?)
                    .bind(&e.kind)
                    .bind(user(&e.sender))
                    .bind(device(&e.sender))
                    .bind(&e.mls)
                    .bind(user(&join))
                    .bind(device(&join))
                    .bind(e.join.as_ref().map(|(_, r)| r.clone()))
                    .bind(user(&e.remove))
                    .bind(device(&e.remove))
                    .bind(&e.welcome)
                    .bind(e.received_at)
                    .execute(&mut *$tx)
                    .await
                    .map_err(backend)?;
                }
                DsWrite::KeyPackages { device, batch, at_ms } => {
                    for kp in batch {
                        sqlx::query(
                            "INSERT INTO ds_key_packages (reference, user_id, device_id, key_package, last_resort, \
                             not_after, uploaded_at) SELECT $1, user_id, $3, $4, $5, $6, $7 FROM accounts \
                             WHERE user_id = $2",
                        )
                        .bind(&kp.reference)
                        .bind(&device.0)
                        .bind(&device.1)
                        .bind(&kp.bytes)
                        .bind(kp.last_resort)
                        .bind(int(kp.not_after)?)
                        .bind(at_ms)
                        .execute(&mut *$tx)
                        .await
                        .map_err(backend)?;
                    }
                    if batch.iter().any(|k| k.last_resort) {
                        // A new last-resort KeyPackage replaces the device's previous one.
                        let keep: Vec<Vec<u8>> =
                            batch.iter().filter(|k| k.last_resort).map(|k| k.reference.clone()).collect();
                        let stale: Vec<(Vec<u8>, i64)> = sqlx::query_as(
                            "SELECT reference, not_after FROM ds_key_packages \
                             WHERE user_id = $1 AND device_id = $2 AND last_resort = $3",
                        )
                        .bind(&device.0)
                        .bind(&device.1)
                        .bind(true)
                        .fetch_all(&mut *$tx)
                        .await
                        .map_err(backend)?;
                        for (r, not_after) in stale.into_iter().filter(|(r, _)| !keep.contains(r)) {
                            retire!($tx, &r, not_after);
                        }
                    }
                }
                DsWrite::KeyPackageUsed { reference, not_after, last_resort } => {
                    if !*last_resort {
                        retire!($tx, reference, int(*not_after)?);
                    }
                }
                DsWrite::Leaf { session, device, leaf } => {
                    sqlx::query(
                        "INSERT INTO ds_leaves (session_id, user_id, device_id, leaf) \
                         SELECT g.session_id, a.user_id, $3, $4 FROM ds_groups g, accounts a \
                         WHERE g.session_id = $1 AND a.user_id = $2 \
                         ON CONFLICT (session_id, user_id, device_id) DO UPDATE SET leaf = excluded.leaf",
                    )
                    .bind(session)
                    .bind(&device.0)
                    .bind(&device.1)
                    .bind(i64::from(*leaf))
                    .execute(&mut *$tx)
                    .await
                    .map_err(backend)?;
                }
                DsWrite::Removed { session, user, at_ms } => {
                    sqlx::query(
                        "INSERT INTO ds_removed (session_id, user_id, removed_at) \
                         SELECT g.session_id, a.user_id, $3 FROM ds_groups g, accounts a \
                         WHERE g.session_id = $1 AND a.user_id = $2 \
                         ON CONFLICT (session_id, user_id) DO NOTHING",
                    )
                    .bind(session)
                    .bind(user)
                    .bind(at_ms)
                    .execute(&mut *$tx)
                    .await
                    .map_err(backend)?;
                }
                DsWrite::Evidence(evidence) => {
                    write_evidence!($tx, evidence, $lock);
                }
            }
        }
    }};
}

type EntrySql = (
    String,
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    Vec<u8>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    i64,
);

fn entry_row(r: EntrySql) -> Result<(String, DsEntryRow), DatabaseError> {
    let (session, seq, epoch, kind, su, sd, mls, ju, jd, jr, ru, rd, welcome, received_at) = r;
    let join = match (jd, jr) {
        (Some(d), Some(r)) => Some(((ju, d), r)),
        _ => None,
    };
    let row = DsEntryRow {
        seq: uint(seq)?,
        epoch: uint(epoch)?,
        kind,
        sender: sd.map(|d| (su, d)),
        mls,
        join,
        remove: rd.map(|d| (ru, d)),
        welcome,
        received_at,
    };
    Ok((session, row))
}

macro_rules! load_all {
    ($p:expr) => {{
        let groups: Vec<(String, Option<String>, String)> = sqlx::query_as(
            "SELECT session_id, creator_user, creator_device FROM ds_groups ORDER BY created_at, session_id",
        )
        .fetch_all($p)
        .await
        .map_err(query_err)?;
        let entries: Vec<EntrySql> = sqlx::query_as(
            "SELECT session_id, seq, epoch, kind, sender_user, sender_device, mls, join_user, join_device, join_ref, \
             remove_user, remove_device, welcome, received_at FROM ds_entries ORDER BY session_id, seq",
        )
        .fetch_all($p)
        .await
        .map_err(query_err)?;
        let leaves: Vec<(String, String, String, i64)> =
            sqlx::query_as("SELECT session_id, user_id, device_id, leaf FROM ds_leaves")
                .fetch_all($p)
                .await
                .map_err(query_err)?;
        let kps: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT user_id, device_id, key_package FROM ds_key_packages ORDER BY uploaded_at, reference",
        )
        .fetch_all($p)
        .await
        .map_err(query_err)?;
        let used: Vec<(Vec<u8>,)> =
            sqlx::query_as("SELECT reference FROM ds_used_key_packages").fetch_all($p).await.map_err(query_err)?;
        let removed: Vec<(String, String)> =
            sqlx::query_as("SELECT session_id, user_id FROM ds_removed ORDER BY session_id, removed_at, user_id")
                .fetch_all($p)
                .await
                .map_err(query_err)?;
        (groups, entries, leaves, kps, used, removed)
    }};
}

fn query_err(e: sqlx::Error) -> DatabaseError {
    DatabaseError::Query(e.to_string())
}

impl Database {
    /// Applies a batch of the delivery service's changes in one transaction, in order (with the audit entries
    /// among them).
    pub async fn ds_apply(&self, writes: &[DsWrite]) -> Result<(), DatabaseError> {
        match self {
            Database::Sqlite(p) => {
                let mut tx = p.begin_with(SQLITE_BEGIN).await.map_err(backend)?;
                apply_writes!(tx, writes, "");
                tx.commit().await.map_err(backend)?;
            }
            Database::Postgres(p) => {
                let mut tx = p.begin_with(PG_BEGIN).await.map_err(backend)?;
                apply_writes!(tx, writes, PG_AUDIT_LOCK);
                tx.commit().await.map_err(backend)?;
            }
        }
        Ok(())
    }

    /// Everything the delivery service stored, for a restart.
    pub async fn ds_load(&self) -> Result<DsSnapshot, DatabaseError> {
        let (groups, entries, leaves, kps, used, removed) = match self {
            Database::Sqlite(p) => load_all!(p),
            Database::Postgres(p) => load_all!(p),
        };
        let mut out: Vec<DsGroupRow> = groups
            .into_iter()
            .map(|(session, cu, cd)| DsGroupRow {
                session,
                creator: (cu, cd),
                entries: vec![],
                leaves: vec![],
                removed: vec![],
            })
            .collect();
        let index: std::collections::HashMap<String, usize> =
            out.iter().enumerate().map(|(i, g)| (g.session.clone(), i)).collect();
        for r in entries {
            let (session, row) = entry_row(r)?;
            if let Some(&i) = index.get(&session) {
                out[i].entries.push(row);
            }
        }
        for (session, user, device, leaf) in leaves {
            if let Some(&i) = index.get(&session) {
                let leaf = u32::try_from(leaf).map_err(|_| DatabaseError::Query("leaf out of range".into()))?;
                out[i].leaves.push(((user, device), leaf));
            }
        }
        for (session, user) in removed {
            if let Some(&i) = index.get(&session) {
                out[i].removed.push(user);
            }
        }
        Ok(DsSnapshot { groups: out, key_packages: kps, used_references: used.into_iter().map(|(r,)| r).collect() })
    }
}
