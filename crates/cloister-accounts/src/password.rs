use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

/// Shortest password accepted, in Unicode scalar values.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted, in Unicode scalar values.
pub const MAX_PASSWORD_CHARS: usize = 64;

/// argon2id parameters. The defaults are OWASP's minimum (m = 19 MiB, t = 2, p = 1); weaker ones are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Argon2Config {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for Argon2Config {
    fn default() -> Self {
        Self { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// argon2id parameters weaker than OWASP's minimum or outside argon2's ranges.
    #[error("argon2id parameters m={memory_kib} KiB t={iterations} p={parallelism} are {why}")]
    WeakArgon2 {
        /// Memory in KiB.
        memory_kib: u32,
        /// Passes.
        iterations: u32,
        /// Lanes.
        parallelism: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// A session lifetime of zero or over 30 days.
    #[error("session lifetime must be between 60 seconds and 30 days")]
    SessionTtl,
}

impl Argon2Config {
    /// Checks the parameters: at least OWASP's minimum (m >= 19 MiB with t >= 2, p >= 1), at most 4 GiB and 16 lanes.
    pub fn check(&self) -> Result<(), ConfigError> {
        let err = |why| ConfigError::WeakArgon2 {
            memory_kib: self.memory_kib,
            iterations: self.iterations,
            parallelism: self.parallelism,
            why,
        };
        if self.memory_kib < 19 * 1024 {
            return Err(err("below the OWASP minimum of 19 MiB"));
        }
        if self.iterations < 2 {
            return Err(err("below the OWASP minimum of 2 passes"));
        }
        if self.parallelism < 1 || self.parallelism > 16 {
            return Err(err("outside 1..=16 lanes"));
        }
        if self.memory_kib > 4 * 1024 * 1024 || self.iterations > 64 {
            return Err(err("unreasonably large"));
        }
        if self.memory_kib < 8 * self.parallelism {
            return Err(err("too little memory for the lanes"));
        }
        Ok(())
    }
}

/// Checks a password's length: 8 to 64 Unicode scalar values. Returns the reason when it fails.
pub fn check_password(password: &str) -> Result<(), &'static str> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_CHARS {
        Err("the password must have at least 8 characters")
    } else if n > MAX_PASSWORD_CHARS {
        Err("the password must have at most 64 characters")
    } else {
        Ok(())
    }
}

/// Hashes and verifies passwords with argon2id. Passwords are NFKC-normalized first (NIST SP 800-63B §5.1.1.2), so
/// the same password typed on two keyboards matches.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    dummy_hash: String,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PasswordHasher(argon2id m={} t={} p={})",
            self.params.m_cost(),
            self.params.t_cost(),
            self.params.p_cost()
        )
    }
}

impl PasswordHasher {
    /// A hasher with checked parameters. Computes one dummy hash, used to spend the same time on unknown accounts.
    pub fn new(config: Argon2Config) -> Result<Self, ConfigError> {
        config.check()?;
        let params = Params::new(config.memory_kib, config.iterations, config.parallelism, Some(32)).map_err(|_| {
            ConfigError::WeakArgon2 {
                memory_kib: config.memory_kib,
                iterations: config.iterations,
                parallelism: config.parallelism,
                why: "refused by argon2",
            }
        })?;
        let mut hasher = Self { params, dummy_hash: String::new() };
        hasher.dummy_hash = hasher.hash("cloister-dummy-password");
        Ok(hasher)
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// The PHC string (`$argon2id$v=19$m=...`) of a password under a fresh random salt.
    pub fn hash(&self, password: &str) -> String {
        let normalized = Zeroizing::new(password.nfkc().collect::<String>());
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        self.argon2()
            .hash_password(normalized.as_bytes(), &salt)
            .expect("argon2 hashing cannot fail with checked parameters and a generated salt")
            .to_string()
    }

    /// Whether `password` matches the PHC string. A malformed stored hash never matches.
    pub fn verify(&self, password: &str, phc: &str) -> bool {
        let normalized = Zeroizing::new(password.nfkc().collect::<String>());
        match PasswordHash::new(phc) {
            // Verify with the parameters in the stored hash (older accounts may have others).
            Ok(parsed) => Argon2::default().verify_password(normalized.as_bytes(), &parsed).is_ok(),
            Err(_) => false,
        }
    }

    /// Spends the time of one verification against a hash that never matches: for unknown accounts.
    pub fn verify_dummy(&self, password: &str) {
        let _ = self.verify(password, &self.dummy_hash);
    }

    /// Whether a stored hash was made with other parameters than the current ones (then it is re-hashed at login).
    pub fn needs_rehash(&self, phc: &str) -> bool {
        match PasswordHash::new(phc) {
            Ok(parsed) => match Params::try_from(&parsed) {
                Ok(p) => {
                    parsed.algorithm.as_str() != "argon2id"
                        || p.m_cost() != self.params.m_cost()
                        || p.t_cost() != self.params.t_cost()
                        || p.p_cost() != self.params.p_cost()
                }
                Err(_) => true,
            },
            Err(_) => true,
        }
    }

    /// `argon2id m=.. t=.. p=..` of a PHC string, without the salt or hash.
    pub fn describe(phc: &str) -> String {
        match PasswordHash::new(phc) {
            Ok(parsed) => {
                let params: Vec<String> =
                    parsed.params.iter().map(|(k, v)| format!("{}={}", k.as_str(), v.as_str())).collect();
                format!("{} v={} {}", parsed.algorithm.as_str(), parsed.version.unwrap_or(19), params.join(","))
            }
            Err(_) => "unknown".to_owned(),
        }
    }
}
