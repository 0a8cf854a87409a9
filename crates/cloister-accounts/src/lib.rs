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
mod tickets;
mod time_util;
mod token;

pub use email::{normalize_email, EmailHasher, EmailKey, EmailKeyId, PepperError, MAX_EMAIL_LEN};
pub use password::{check_password, Argon2Config, ConfigError, PasswordHasher, MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS};
pub use service::{AccountError, Accounts, AccountsConfig, Authenticated, InlineOffload, Offload};
pub use store::{AccountRecord, AccountStore, MemoryStore, SessionRecord, StoreError};
pub use throttle::{BucketRule, Throttle, ThrottleConfig, ThrottleKey, TokenBucket};
pub use tickets::{TicketBook, TicketError, MAX_TICKETS, TICKETS_PER_USER, TICKET_TTL_MS};
pub use time_util::UnixTime;
pub use token::{RecoveryCode, SessionToken, TokenHash, UserId};

#[cfg(test)]
mod tests;

/// Defines a random 128-bit id type written as 32 lower-case hex digits (`random`, `parse`, `as_str`, `Display`);
/// used for user ids here and for org, course, session and seat-pack ids in `cloister-courses`.
#[macro_export]
macro_rules! random_hex_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// A fresh random id (128 bits, 32 lower-case hex digits).
            pub fn random() -> Self {
                let mut b = [0u8; 16];
                $crate::__private::RngCore::fill_bytes(&mut $crate::__private::OsRng, &mut b);
                Self($crate::__private::hex::encode(b))
            }
            /// Parses a stored or received id; `None` unless it is 32 lower-case hex digits.
            pub fn parse(s: &str) -> Option<Self> {
                (s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
                    .then(|| Self(s.to_owned()))
            }
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

#[doc(hidden)]
pub mod __private {
    pub use hex;
    pub use rand::rngs::OsRng;
    pub use rand::RngCore;
}
