use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

crate::random_hex_id!(
    /// A pseudonymous user id: 128 random bits, written as 32 lower-case hex digits.
    UserId
);

/// SHA-256 of a session token or recovery code: what the database keeps instead of the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a prefix: enough to correlate in a debugger, not enough to look a row up by.
        write!(f, "TokenHash({}..)", hex::encode(&self.0[..4]))
    }
}

impl TokenHash {
    /// SHA-256 of bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
    /// From a stored 32-byte value.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }
}

const TOKEN_PREFIX: &str = "cls_";

/// A bearer session token: 256 random bits, written as `cls_` + 43 base64url characters. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SessionToken([u8; 32]);

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

impl SessionToken {
    /// A fresh random token.
    pub fn random() -> Self {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self(b)
    }
    /// Parses the text form; `None` when it is not of the token's form.
    pub fn parse(text: &str) -> Option<Self> {
        let body = text.strip_prefix(TOKEN_PREFIX)?;
        if body.len() != 43 {
            return None;
        }
        let mut out = [0u8; 32];
        let decoded = Zeroizing::new(URL_SAFE_NO_PAD.decode(body).ok()?);
        if decoded.len() != 32 {
            return None;
        }
        out.copy_from_slice(&decoded);
        Some(Self(out))
    }
    /// The text form, for the client only.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.0)))
    }
    /// What is stored: SHA-256 of the 32 token bytes.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A recovery code: 160 random bits as 32 base32 characters in 8 groups of 4 (`ABCD-EFGH-...`). Zeroized on drop.
///
/// With 160 bits of entropy a fast hash is safe to store (no dictionary to try), so it is kept as SHA-256.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RecoveryCode(String);

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode(<redacted>)")
    }
}

impl RecoveryCode {
    /// A fresh random code.
    pub fn random() -> Self {
        let mut b = Zeroizing::new([0u8; 20]);
        rand::rngs::OsRng.fill_bytes(b.as_mut());
        let mut s = String::with_capacity(39);
        let mut acc: u64 = 0;
        let mut bits = 0;
        let mut written = 0;
        for byte in b.iter() {
            acc = (acc << 8) | u64::from(*byte);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                if written > 0 && written % 4 == 0 {
                    s.push('-');
                }
                s.push(char::from(BASE32[((acc >> bits) & 31) as usize]));
                written += 1;
            }
        }
        acc.zeroize();
        Self(s)
    }
    /// The code as shown to the user.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// SHA-256 of the canonical form of a typed code (upper-cased, without dashes and spaces); `None` when it cannot
    /// be a code at all.
    pub fn hash_typed(typed: &str) -> Option<TokenHash> {
        let canon: Zeroizing<String> = Zeroizing::new(
            typed.chars().filter(|c| *c != '-' && !c.is_whitespace()).map(|c| c.to_ascii_uppercase()).collect(),
        );
        (canon.len() == 32 && canon.bytes().all(|b| BASE32.contains(&b))).then(|| TokenHash::of(canon.as_bytes()))
    }
    /// What is stored.
    pub fn hash(&self) -> TokenHash {
        Self::hash_typed(&self.0).expect("a generated code is canonical")
    }
}
