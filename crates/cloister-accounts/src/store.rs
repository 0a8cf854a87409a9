use crate::{TokenHash, UnixTime, UserId};
use async_trait::async_trait;
use cloister_audit::Evidence;
use std::collections::HashMap;
use std::sync::Mutex;

/// One row of `accounts`.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// Pseudonymous id.
    pub user_id: UserId,
    /// Which pepper key made `email_hmac`.
    pub email_key_id: String,
    /// HMAC-SHA256(pepper, normalized email).
    pub email_hmac: [u8; 32],
    /// argon2id PHC string.
    pub password_hash: String,
    /// SHA-256 of the recovery code.
    pub recovery_hash: TokenHash,
    /// When the account was made.
    pub created_at: UnixTime,
    /// When credentials last changed.
    pub updated_at: UnixTime,
}

impl std::fmt::Debug for AccountRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountRecord").field("user_id", &self.user_id).finish_non_exhaustive()
    }
}

/// One row of `sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// SHA-256 of the bearer token.
    pub token_hash: TokenHash,
    /// Whose session.
    pub user_id: UserId,
    /// When it was made.
    pub created_at: UnixTime,
    /// When it stops working.
    pub expires_at: UnixTime,
}

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A unique key is taken (an email hash, a user id or a token hash).
    #[error("a unique key is already taken")]
    Conflict,
    /// The backend failed; the text is safe to log (no row contents).
    #[error("storage backend: {0}")]
    Backend(String),
}

/// Where accounts and sessions live. Every method is one atomic change: it happens whole or not at all. Methods that
/// take [`Evidence`] write it to the audit log in the same transaction, and only when the change happens.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Inserts an account; [`StoreError::Conflict`] when the email hash or id is taken.
    async fn insert_account(&self, account: &AccountRecord, evidence: &Evidence) -> Result<(), StoreError>;
    /// The account with this email hash, if any.
    async fn account_by_email(&self, email_hmac: &[u8; 32]) -> Result<Option<AccountRecord>, StoreError>;
    /// The account with this id, if any.
    async fn account_by_id(&self, user_id: &UserId) -> Result<Option<AccountRecord>, StoreError>;
    /// Replaces password and recovery hashes and deletes every session of the account, in one transaction.
    /// Returns false when the account does not exist.
    async fn replace_credentials(
        &self,
        user_id: &UserId,
        password_hash: &str,
        recovery_hash: &TokenHash,
        now: UnixTime,
    ) -> Result<bool, StoreError>;
    /// Re-keys the email hash (pepper rotation) and/or replaces the password hash (parameter upgrade).
    async fn rekey_account(
        &self,
        user_id: &UserId,
        email_key_id: &str,
        email_hmac: &[u8; 32],
        password_hash: &str,
    ) -> Result<(), StoreError>;
    /// Inserts a session.
    async fn insert_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    /// The session with this token hash, if any (expired ones included; the caller checks).
    async fn session_by_token(&self, token_hash: &TokenHash) -> Result<Option<SessionRecord>, StoreError>;
    /// Deletes a session; false when there was none.
    async fn delete_session(&self, token_hash: &TokenHash) -> Result<bool, StoreError>;
    /// Every session of an account.
    async fn sessions_of(&self, user_id: &UserId) -> Result<Vec<SessionRecord>, StoreError>;
    /// Deletes the account and all its sessions, and records the erasure (id and time), in one transaction.
    /// Returns false when the account did not exist.
    async fn erase_account(&self, user_id: &UserId, now: UnixTime, evidence: &Evidence) -> Result<bool, StoreError>;
    /// Whether this id was erased.
    async fn was_erased(&self, user_id: &UserId) -> Result<bool, StoreError>;
    /// Deletes sessions with `expires_at <= now`; returns how many.
    async fn purge_expired_sessions(&self, now: UnixTime) -> Result<u64, StoreError>;
}

#[derive(Default)]
struct Tables {
    accounts: HashMap<UserId, AccountRecord>,
    sessions: HashMap<TokenHash, SessionRecord>,
    erasures: HashMap<UserId, UnixTime>,
    audit: Vec<Vec<u8>>,
}

/// An in-memory [`AccountStore`] for tests and simulations.
#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The audit entries written with changes, as stored bytes.
    pub fn audit_entries(&self) -> Vec<Vec<u8>> {
        self.lock().audit.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A poisoned lock only means a test panicked mid-call; the maps are still consistent (every change is one
        // insert or remove), so continue.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl AccountStore for MemoryStore {
    async fn insert_account(&self, account: &AccountRecord, evidence: &Evidence) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.accounts.contains_key(&account.user_id) || t.accounts.values().any(|a| a.email_hmac == account.email_hmac)
        {
            return Err(StoreError::Conflict);
        }
        t.accounts.insert(account.user_id.clone(), account.clone());
        evidence.append_to(&mut t.audit);
        Ok(())
    }

    async fn account_by_email(&self, email_hmac: &[u8; 32]) -> Result<Option<AccountRecord>, StoreError> {
        Ok(self.lock().accounts.values().find(|a| &a.email_hmac == email_hmac).cloned())
    }

    async fn account_by_id(&self, user_id: &UserId) -> Result<Option<AccountRecord>, StoreError> {
        Ok(self.lock().accounts.get(user_id).cloned())
    }

    async fn replace_credentials(
        &self,
        user_id: &UserId,
        password_hash: &str,
        recovery_hash: &TokenHash,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let mut t = self.lock();
        let Some(a) = t.accounts.get_mut(user_id) else { return Ok(false) };
        a.password_hash = password_hash.to_owned();
        a.recovery_hash = *recovery_hash;
        a.updated_at = now;
        t.sessions.retain(|_, s| &s.user_id != user_id);
        Ok(true)
    }

    async fn rekey_account(
        &self,
        user_id: &UserId,
        email_key_id: &str,
        email_hmac: &[u8; 32],
        password_hash: &str,
    ) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.accounts.values().any(|a| &a.email_hmac == email_hmac && &a.user_id != user_id) {
            return Err(StoreError::Conflict);
        }
        if let Some(a) = t.accounts.get_mut(user_id) {
            a.email_key_id = email_key_id.to_owned();
            a.email_hmac = *email_hmac;
            a.password_hash = password_hash.to_owned();
        }
        Ok(())
    }

    async fn insert_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.sessions.contains_key(&session.token_hash) {
            return Err(StoreError::Conflict);
        }
        t.sessions.insert(session.token_hash, session.clone());
        Ok(())
    }

    async fn session_by_token(&self, token_hash: &TokenHash) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.lock().sessions.get(token_hash).cloned())
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> Result<bool, StoreError> {
        Ok(self.lock().sessions.remove(token_hash).is_some())
    }

    async fn sessions_of(&self, user_id: &UserId) -> Result<Vec<SessionRecord>, StoreError> {
        let mut v: Vec<_> = self.lock().sessions.values().filter(|s| &s.user_id == user_id).cloned().collect();
        v.sort_by_key(|s| s.created_at);
        Ok(v)
    }

    async fn erase_account(&self, user_id: &UserId, now: UnixTime, evidence: &Evidence) -> Result<bool, StoreError> {
        let mut t = self.lock();
        if t.accounts.remove(user_id).is_none() {
            return Ok(false);
        }
        t.sessions.retain(|_, s| &s.user_id != user_id);
        t.erasures.insert(user_id.clone(), now);
        evidence.append_to(&mut t.audit);
        Ok(true)
    }

    async fn was_erased(&self, user_id: &UserId) -> Result<bool, StoreError> {
        Ok(self.lock().erasures.contains_key(user_id))
    }

    async fn purge_expired_sessions(&self, now: UnixTime) -> Result<u64, StoreError> {
        let mut t = self.lock();
        let before = t.sessions.len();
        t.sessions.retain(|_, s| s.expires_at > now);
        Ok((before - t.sessions.len()) as u64)
    }
}
