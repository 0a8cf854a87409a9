//! Pseudonymous accounts for Cloister: the domain logic, its storage trait and an in-memory store.
//!
//! What it keeps about a person: a random [`UserId`], HMAC-SHA256(pepper, normalized email) with the pepper's key id,
//! an argon2id password hash, a SHA-256 hash of the recovery code, and SHA-256 hashes of session tokens. Nothing else:
//! no plaintext email, name or phone, ever.
//!
//! This crate does no I/O of its own. Time comes in as a [`UnixTime`] parameter, storage through the [`AccountStore`]
//! trait (an in-memory [`MemoryStore`] here, SQL in `cloister-store`), and CPU-heavy hashing through the [`Offload`]
//! trait so that an async shell can move it off its reactor and bound how many hashes run at once. It is not an HTTP
//! layer: `cloister-server` maps [`AccountError`] to status codes.

#![forbid(unsafe_code)]

mod email;
mod password;
mod service;
mod store;
mod throttle;
mod time_util;
mod token;

pub use email::{normalize_email, EmailHasher, EmailKey, EmailKeyId, PepperError, MAX_EMAIL_LEN};
pub use password::{check_password, Argon2Config, ConfigError, PasswordHasher, MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS};
pub use service::{AccountError, Accounts, AccountsConfig, Authenticated, InlineOffload, Offload};
pub use store::{AccountRecord, AccountStore, MemoryStore, SessionRecord, StoreError};
pub use throttle::{BucketRule, Throttle, ThrottleConfig, ThrottleKey, TokenBucket};
pub use time_util::UnixTime;
pub use token::{RecoveryCode, SessionToken, TokenHash, UserId};

#[cfg(test)]
mod tests;
