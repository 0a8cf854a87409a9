use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use unicode_normalization::UnicodeNormalization;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Longest email address accepted, in bytes after normalization (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;

/// Normalizes an email address for hashing: NFC, trimmed, lower-cased.
///
/// Returns `None` when the result is not a plausible address: no `@`, an empty local part or domain, a domain without a
/// dot, whitespace or control characters inside, or more than [`MAX_EMAIL_LEN`] bytes. The local part is lower-cased
/// too: every large mail provider treats it case-insensitively, and two accounts that differ only in case would be a
/// support trap.
pub fn normalize_email(raw: &str) -> Option<Zeroizing<String>> {
    let normalized: Zeroizing<String> = Zeroizing::new(raw.trim().nfc().collect::<String>().to_lowercase());
    if normalized.is_empty() || normalized.len() > MAX_EMAIL_LEN {
        return None;
    }
    if normalized.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let (local, domain) = normalized.rsplit_once('@')?;
    if local.is_empty() || domain.len() < 3 || domain.contains('@') {
        return None;
    }
    if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
        return None;
    }
    Some(normalized)
}

/// Identifies one pepper key, so that the pepper can rotate: stored beside every email hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailKeyId(String);

impl EmailKeyId {
    /// A key id: 1 to 32 characters of `[a-z0-9_-]`.
    pub fn new(id: &str) -> Result<Self, PepperError> {
        let ok = !id.is_empty()
            && id.len() <= 32
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(id.to_owned()))
        } else {
            Err(PepperError::BadKeyId)
        }
    }
    /// The id as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One pepper key: at least 32 secret bytes. Zeroized on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct EmailKey {
    #[zeroize(skip)]
    id: EmailKeyId,
    secret: Vec<u8>,
}

impl fmt::Debug for EmailKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailKey({}, <redacted>)", self.id)
    }
}

impl EmailKey {
    /// A key from its id and secret bytes (32 at least).
    pub fn new(id: EmailKeyId, secret: Vec<u8>) -> Result<Self, PepperError> {
        if secret.len() < 32 {
            return Err(PepperError::ShortKey);
        }
        Ok(Self { id, secret })
    }
    /// The key's id.
    pub fn id(&self) -> &EmailKeyId {
        &self.id
    }
}

/// Why a pepper could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PepperError {
    /// A key id is empty, too long, or has characters outside `[a-z0-9_-]`.
    #[error("pepper key id must be 1-32 characters of a-z, 0-9, '-' or '_'")]
    BadKeyId,
    /// A key is shorter than 32 bytes.
    #[error("pepper key must be at least 32 bytes (64 hex digits)")]
    ShortKey,
    /// A line is not `<key-id> <hex>`.
    #[error("pepper line {0} is not of the form '<key-id> <hex>'")]
    BadLine(usize),
    /// Two keys share an id.
    #[error("pepper key id '{0}' appears twice")]
    DuplicateKeyId(String),
    /// No key at all.
    #[error("pepper holds no key")]
    Empty,
}

/// HMAC-SHA256 of normalized emails under the pepper's keys. The last key is current; older ones still match.
#[derive(Clone)]
pub struct EmailHasher {
    keys: Vec<EmailKey>,
}

impl fmt::Debug for EmailHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| k.id.as_str())).finish()
    }
}

impl EmailHasher {
    /// A hasher over keys, oldest first; the last is current.
    pub fn new(keys: Vec<EmailKey>) -> Result<Self, PepperError> {
        if keys.is_empty() {
            return Err(PepperError::Empty);
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.id == k.id) {
                return Err(PepperError::DuplicateKeyId(k.id.0.clone()));
            }
        }
        Ok(Self { keys })
    }

    /// Parses the pepper file format: one `<key-id> <hex secret>` a line, oldest first; `#` starts a comment.
    pub fn from_pepper_text(text: &str) -> Result<Self, PepperError> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(id), Some(hex_secret), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(PepperError::BadLine(n + 1));
            };
            let secret = hex::decode(hex_secret).map_err(|_| PepperError::BadLine(n + 1))?;
            keys.push(EmailKey::new(EmailKeyId::new(id)?, secret)?);
        }
        Self::new(keys)
    }

    /// A new pepper file's text with one random 32-byte key named `key_id`.
    pub fn generate_pepper_text(key_id: &str) -> Result<Zeroizing<String>, PepperError> {
        let id = EmailKeyId::new(key_id)?;
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, secret.as_mut());
        Ok(Zeroizing::new(format!(
            "# Cloister email pepper: HMAC keys for email hashes. Keep outside the database and backups of it.\n\
             # One '<key-id> <hex>' a line, oldest first; the last line is the current key.\n{} {}\n",
            id,
            hex::encode(secret.as_ref())
        )))
    }

    /// The current key's id.
    pub fn current_key_id(&self) -> &EmailKeyId {
        &self.keys[self.keys.len() - 1].id
    }

    /// HMAC-SHA256 of a normalized email under the current key.
    pub fn hash_current(&self, normalized_email: &str) -> [u8; 32] {
        Self::hmac(&self.keys[self.keys.len() - 1], normalized_email)
    }

    /// `(key id, hmac)` under every key, current first: what to look an email up by.
    pub fn hash_all(&self, normalized_email: &str) -> Vec<(EmailKeyId, [u8; 32])> {
        self.keys.iter().rev().map(|k| (k.id.clone(), Self::hmac(k, normalized_email))).collect()
    }

    fn hmac(key: &EmailKey, normalized_email: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.secret).expect("HMAC accepts keys of any length");
        mac.update(normalized_email.as_bytes());
        mac.finalize().into_bytes().into()
    }
}
