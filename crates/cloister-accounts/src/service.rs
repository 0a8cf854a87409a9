use crate::password::{check_password, Argon2Config, ConfigError, PasswordHasher};
use crate::store::{AccountRecord, AccountStore, SessionRecord, StoreError};
use crate::throttle::{Throttle, ThrottleConfig, ThrottleKey};
use crate::token::{RecoveryCode, SessionToken, TokenHash, UserId};
use crate::{normalize_email, EmailHasher, UnixTime};
use async_trait::async_trait;
use cloister_audit::{AuditEvent, Evidence};
use cloister_wire::{Credentials, Export, ExportAccount, ExportSession, RecoverRequest};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

/// Runs CPU-heavy work (argon2id) where the caller wants it: a blocking pool with a bound on concurrent hashes in the
/// server, inline in tests.
#[async_trait]
pub trait Offload: Send + Sync + 'static {
    /// Runs `job` to completion.
    async fn run(&self, job: Box<dyn FnOnce() + Send + 'static>);
}

/// Runs offloaded work on the calling task. For tests and tools.
#[derive(Debug, Default, Clone, Copy)]
pub struct InlineOffload;

#[async_trait]
impl Offload for InlineOffload {
    async fn run(&self, job: Box<dyn FnOnce() + Send + 'static>) {
        job()
    }
}

/// Settings of the account service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountsConfig {
    /// argon2id parameters for new hashes.
    pub argon2: Argon2Config,
    /// Session lifetime in seconds (default 12 h).
    pub session_ttl_secs: i64,
    /// Throttle buckets.
    pub throttle: ThrottleConfig,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        Self { argon2: Argon2Config::default(), session_ttl_secs: 12 * 3600, throttle: ThrottleConfig::default() }
    }
}

impl AccountsConfig {
    /// Checks every setting.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.argon2.check()?;
        if !(60..=30 * 24 * 3600).contains(&self.session_ttl_secs) {
            return Err(ConfigError::SessionTtl);
        }
        Ok(())
    }
}

/// Why an account operation failed. Each variant maps to one stable API error code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// The email is not a plausible address.
    #[error("the email address is not valid")]
    InvalidEmail,
    /// The password is too short or too long.
    #[error("{0}")]
    InvalidPassword(&'static str),
    /// An account with this email exists.
    #[error("an account with this email address already exists")]
    EmailTaken,
    /// Email and password (or recovery code) do not match an account; unknown and wrong look the same.
    #[error("email or password is wrong")]
    InvalidCredentials,
    /// The token is malformed, unknown, expired or revoked.
    #[error("the session token is not valid; sign in again")]
    InvalidToken,
    /// Too many attempts.
    #[error("too many attempts; retry after {retry_after_secs} seconds")]
    RateLimited {
        /// Seconds until an attempt is allowed again.
        retry_after_secs: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A broken invariant: a bug.
    #[error("internal: {0}")]
    Internal(&'static str),
}

/// A caller proven by a valid session token.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The account.
    pub user_id: UserId,
    /// The session's token hash.
    pub token_hash: TokenHash,
    /// When the session expires.
    pub expires_at: UnixTime,
}

/// The account service: sign-up, login, sessions, recovery, export and erasure.
pub struct Accounts {
    store: Arc<dyn AccountStore>,
    emails: EmailHasher,
    passwords: Arc<PasswordHasher>,
    config: AccountsConfig,
    throttle: Mutex<Throttle>,
    offload: Arc<dyn Offload>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").field("emails", &self.emails).field("config", &self.config).finish_non_exhaustive()
    }
}

impl Accounts {
    /// A service over a store. Checks the configuration and computes the dummy hash (one argon2id run).
    pub fn new(
        store: Arc<dyn AccountStore>,
        emails: EmailHasher,
        config: AccountsConfig,
        offload: Arc<dyn Offload>,
    ) -> Result<Self, ConfigError> {
        config.check()?;
        let passwords = Arc::new(PasswordHasher::new(config.argon2)?);
        let throttle = Mutex::new(Throttle::new(config.throttle));
        Ok(Self { store, emails, passwords, config, throttle, offload })
    }

    /// The store behind the service.
    pub fn store(&self) -> &Arc<dyn AccountStore> {
        &self.store
    }

    fn throttle(&self, keys: &[ThrottleKey], now: UnixTime) -> Result<(), AccountError> {
        let mut t = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        t.check(keys, now.0.saturating_mul(1000))
            .map_err(|retry_after_secs| AccountError::RateLimited { retry_after_secs })
    }

    async fn offload<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, AccountError> {
        let slot = Arc::new(Mutex::new(None));
        let out = slot.clone();
        self.offload
            .run(Box::new(move || {
                let v = f();
                *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
            }))
            .await;
        let v = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        v.ok_or(AccountError::Internal("offloaded job did not run"))
    }

    async fn find_by_email(&self, normalized: &str) -> Result<Option<(AccountRecord, bool)>, AccountError> {
        for (i, (_, hmac)) in self.emails.hash_all(normalized).into_iter().enumerate() {
            if let Some(a) = self.store.account_by_email(&hmac).await? {
                return Ok(Some((a, i > 0)));
            }
        }
        Ok(None)
    }

    /// Creates an account; returns its id and the recovery code (shown once).
    pub async fn sign_up(
        &self,
        creds: &Credentials,
        client: IpAddr,
        now: UnixTime,
    ) -> Result<(UserId, RecoveryCode), AccountError> {
        self.throttle(&[ThrottleKey::SignupIp(client)], now)?;
        let email = normalize_email(&creds.email.0).ok_or(AccountError::InvalidEmail)?;
        check_password(creds.password.expose()).map_err(AccountError::InvalidPassword)?;
        if self.find_by_email(&email).await?.is_some() {
            // Spend the hash time anyway so that "taken" is not faster than "created".
            let (p, pw) = (self.passwords.clone(), creds.password.clone());
            self.offload(move || p.verify_dummy(pw.expose())).await?;
            return Err(AccountError::EmailTaken);
        }
        let (p, pw) = (self.passwords.clone(), creds.password.clone());
        let password_hash = self.offload(move || p.hash(pw.expose())).await?;
        let recovery = RecoveryCode::random();
        let account = AccountRecord {
            user_id: UserId::random(),
            email_key_id: self.emails.current_key_id().as_str().to_owned(),
            email_hmac: self.emails.hash_current(&email),
            password_hash,
            recovery_hash: recovery.hash(),
            created_at: now,
            updated_at: now,
        };
        let evidence =
            Evidence::of(now.as_millis(), [AuditEvent::AccountCreated { user: account.user_id.to_string() }]);
        match self.store.insert_account(&account, &evidence).await {
            Ok(()) => Ok((account.user_id, recovery)),
            Err(StoreError::Conflict) => Err(AccountError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks email and password and opens a session. Unknown email and wrong password fail alike, in about the
    /// same time (the password is verified against a dummy hash).
    pub async fn log_in(
        &self,
        creds: &Credentials,
        client: IpAddr,
        now: UnixTime,
    ) -> Result<(SessionToken, UnixTime), AccountError> {
        let email = normalize_email(&creds.email.0);
        let account_key = email.as_ref().map(|e| self.emails.hash_current(e));
        let mut keys = vec![ThrottleKey::LoginIp(client)];
        keys.extend(account_key.map(ThrottleKey::LoginAccount));
        self.throttle(&keys, now)?;

        let found = match &email {
            Some(e) => self.find_by_email(e).await?,
            None => None,
        };
        let (p, pw) = (self.passwords.clone(), creds.password.clone());
        let Some((account, old_key)) = found else {
            self.offload(move || p.verify_dummy(pw.expose())).await?;
            return Err(AccountError::InvalidCredentials);
        };
        let stored = account.password_hash.clone();
        let (ok, rehash) = self
            .offload(move || {
                if !p.verify(pw.expose(), &stored) {
                    return (false, None);
                }
                let rehash = p.needs_rehash(&stored).then(|| p.hash(pw.expose()));
                (true, rehash)
            })
            .await?;
        if !ok {
            return Err(AccountError::InvalidCredentials);
        }
        if let (Some(email), true) = (&email, old_key || rehash.is_some()) {
            let hash = rehash.unwrap_or_else(|| account.password_hash.clone());
            self.store
                .rekey_account(
                    &account.user_id,
                    self.emails.current_key_id().as_str(),
                    &self.emails.hash_current(email),
                    &hash,
                )
                .await?;
        }
        let token = SessionToken::random();
        let expires_at = now.plus_secs(self.config.session_ttl_secs);
        self.store
            .insert_session(&SessionRecord {
                token_hash: token.hash(),
                user_id: account.user_id,
                created_at: now,
                expires_at,
            })
            .await?;
        Ok((token, expires_at))
    }

    /// Resolves a bearer token to its session. Malformed, unknown, expired and revoked tokens fail alike.
    pub async fn authenticate(&self, token_text: &str, now: UnixTime) -> Result<Authenticated, AccountError> {
        let token = SessionToken::parse(token_text).ok_or(AccountError::InvalidToken)?;
        let hash = token.hash();
        let session = self.store.session_by_token(&hash).await?.ok_or(AccountError::InvalidToken)?;
        if session.expires_at <= now {
            self.store.delete_session(&hash).await?;
            return Err(AccountError::InvalidToken);
        }
        Ok(Authenticated { user_id: session.user_id, token_hash: hash, expires_at: session.expires_at })
    }

    /// Ends the caller's session.
    pub async fn log_out(&self, auth: &Authenticated) -> Result<(), AccountError> {
        self.store.delete_session(&auth.token_hash).await?;
        Ok(())
    }

    /// The caller's account row.
    pub async fn me(&self, auth: &Authenticated) -> Result<AccountRecord, AccountError> {
        self.store.account_by_id(&auth.user_id).await?.ok_or(AccountError::InvalidToken)
    }

    /// Everything stored about the caller (GDPR Art. 15).
    pub async fn export(&self, auth: &Authenticated) -> Result<Export, AccountError> {
        let a = self.me(auth).await?;
        let sessions = self.store.sessions_of(&auth.user_id).await?;
        Ok(Export {
            format: "cloister-export-v1: every row held about this account, column by column".to_owned(),
            account: ExportAccount {
                user_id: a.user_id.to_string(),
                email_key_id: a.email_key_id.clone(),
                email_hmac: hex::encode(a.email_hmac),
                password_hash_algorithm: PasswordHasher::describe(&a.password_hash),
                created_at: a.created_at.to_rfc3339(),
                updated_at: a.updated_at.to_rfc3339(),
                withheld: vec![
                    "accounts.password_hash (salt and hash value): handing it out would let whoever holds this \
                     session token guess the password offline"
                        .to_owned(),
                    "accounts.recovery_hash: same reason".to_owned(),
                    "sessions.token_hash beyond its first 8 hex digits: same reason".to_owned(),
                ],
            },
            sessions: sessions
                .into_iter()
                .map(|s| ExportSession {
                    token_hash_prefix: hex::encode(&s.token_hash.0[..4]),
                    created_at: s.created_at.to_rfc3339(),
                    expires_at: s.expires_at.to_rfc3339(),
                    current: s.token_hash == auth.token_hash,
                })
                .collect(),
        })
    }

    /// Erases the caller's account and sessions (GDPR Art. 17) and records that it happened (an erasure row and an
    /// audit entry, in the same transaction).
    pub async fn erase(&self, auth: &Authenticated, now: UnixTime) -> Result<(), AccountError> {
        let evidence = Evidence::of(now.as_millis(), [AuditEvent::AccountErased { user: auth.user_id.to_string() }]);
        if self.store.erase_account(&auth.user_id, now, &evidence).await? {
            Ok(())
        } else {
            Err(AccountError::InvalidToken)
        }
    }

    /// Sets a new password with the recovery code; returns a fresh code and revokes every session.
    pub async fn recover(
        &self,
        req: &RecoverRequest,
        client: IpAddr,
        now: UnixTime,
    ) -> Result<(UserId, RecoveryCode), AccountError> {
        let email = normalize_email(&req.email.0);
        let mut keys = vec![ThrottleKey::LoginIp(client)];
        keys.extend(email.as_ref().map(|e| ThrottleKey::LoginAccount(self.emails.hash_current(e))));
        self.throttle(&keys, now)?;
        check_password(req.new_password.expose()).map_err(AccountError::InvalidPassword)?;
        let typed = RecoveryCode::hash_typed(req.recovery_code.expose());
        let found = match &email {
            Some(e) => self.find_by_email(e).await?,
            None => None,
        };
        let (Some((account, _)), Some(typed)) = (found, typed) else {
            return Err(AccountError::InvalidCredentials);
        };
        if !bool::from(account.recovery_hash.0.ct_eq(&typed.0)) {
            return Err(AccountError::InvalidCredentials);
        }
        let (p, pw) = (self.passwords.clone(), req.new_password.clone());
        let password_hash = self.offload(move || p.hash(pw.expose())).await?;
        let code = RecoveryCode::random();
        if !self.store.replace_credentials(&account.user_id, &password_hash, &code.hash(), now).await? {
            return Err(AccountError::InvalidCredentials);
        }
        Ok((account.user_id, code))
    }

    /// Deletes expired sessions and sweeps idle throttle buckets; returns how many sessions went.
    pub async fn purge_expired(&self, now: UnixTime) -> Result<u64, AccountError> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner()).sweep(now.0.saturating_mul(1000));
        Ok(self.store.purge_expired_sessions(now).await?)
    }
}
