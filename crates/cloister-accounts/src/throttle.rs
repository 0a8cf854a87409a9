use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;

/// A token bucket on a caller-supplied clock (milliseconds).
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last_ms: i64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(capacity: f64, now_ms: i64) -> Self {
        Self { tokens: capacity, last_ms: now_ms }
    }

    fn refill(&mut self, rule: &BucketRule, now_ms: i64) {
        let elapsed = (now_ms - self.last_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rule.refill_per_sec).min(rule.burst);
        self.last_ms = now_ms.max(self.last_ms);
    }

    /// Takes one token, or says after how many whole seconds one will be there.
    fn take(&mut self, rule: &BucketRule, now_ms: i64) -> Result<(), u64> {
        self.refill(rule, now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / rule.refill_per_sec.max(1e-9);
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

/// One bucket rule: `burst` attempts at once, then `refill_per_sec` a second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketRule {
    /// Bucket capacity.
    pub burst: f64,
    /// Tokens added per second.
    pub refill_per_sec: f64,
}

/// Throttle settings: buckets per account key and per client address, for logins/recoveries and for sign-ups.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Login and recovery attempts per account (keyed email hash).
    pub login_per_account: BucketRule,
    /// Login and recovery attempts per client address (IPv6 by /64).
    pub login_per_ip: BucketRule,
    /// Sign-ups per client address.
    pub signup_per_ip: BucketRule,
    /// Most buckets kept before full ones are swept (bounds memory under address floods).
    pub max_buckets: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            login_per_account: BucketRule { burst: 10.0, refill_per_sec: 1.0 / 30.0 },
            login_per_ip: BucketRule { burst: 30.0, refill_per_sec: 1.0 },
            signup_per_ip: BucketRule { burst: 10.0, refill_per_sec: 1.0 / 6.0 },
            max_buckets: 100_000,
        }
    }
}

/// What a bucket is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    /// Logins to one account (its email HMAC, never the email).
    LoginAccount([u8; 32]),
    /// Logins from one address.
    LoginIp(IpAddr),
    /// Sign-ups from one address.
    SignupIp(IpAddr),
}

/// Token buckets by key, on a caller-supplied clock. Memory is bounded by [`ThrottleConfig::max_buckets`].
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    buckets: HashMap<ThrottleKey, TokenBucket>,
}

/// Folds an IPv6 address to its /64, where one subscriber usually holds many addresses.
fn fold_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

impl Throttle {
    /// An empty throttle.
    pub fn new(config: ThrottleConfig) -> Self {
        Self { config, buckets: HashMap::new() }
    }

    fn rule(&self, key: &ThrottleKey) -> BucketRule {
        match key {
            ThrottleKey::LoginAccount(_) => self.config.login_per_account,
            ThrottleKey::LoginIp(_) => self.config.login_per_ip,
            ThrottleKey::SignupIp(_) => self.config.signup_per_ip,
        }
    }

    /// Takes a token from every key's bucket, or none when any is empty; `Err(seconds)` says when to retry.
    pub fn check(&mut self, keys: &[ThrottleKey], now_ms: i64) -> Result<(), u64> {
        let keys: Vec<ThrottleKey> = keys
            .iter()
            .map(|k| match k {
                ThrottleKey::LoginIp(ip) => ThrottleKey::LoginIp(fold_ip(*ip)),
                ThrottleKey::SignupIp(ip) => ThrottleKey::SignupIp(fold_ip(*ip)),
                other => other.clone(),
            })
            .collect();
        if self.buckets.len() + keys.len() > self.config.max_buckets {
            self.sweep(now_ms);
        }
        // First see whether all have a token, then take them: a refused attempt costs nothing.
        let mut worst = 0;
        for key in &keys {
            let rule = self.rule(key);
            let mut probe = self.buckets.get(key).copied().unwrap_or_else(|| TokenBucket::full(rule.burst, now_ms));
            if let Err(wait) = probe.take(&rule, now_ms) {
                worst = worst.max(wait);
            }
        }
        if worst > 0 {
            return Err(worst);
        }
        for key in keys {
            let rule = self.rule(&key);
            let bucket = self.buckets.entry(key).or_insert_with(|| TokenBucket::full(rule.burst, now_ms));
            let _ = bucket.take(&rule, now_ms);
        }
        Ok(())
    }

    /// Drops buckets that have refilled completely (they hold no information). If that is not enough, drops all:
    /// under an address flood, forgetting is better than running out of memory.
    pub fn sweep(&mut self, now_ms: i64) {
        let config = self.config;
        self.buckets.retain(|key, bucket| {
            let rule = match key {
                ThrottleKey::LoginAccount(_) => config.login_per_account,
                ThrottleKey::LoginIp(_) => config.login_per_ip,
                ThrottleKey::SignupIp(_) => config.signup_per_ip,
            };
            bucket.refill(&rule, now_ms);
            bucket.tokens < rule.burst
        });
        if self.buckets.len() >= config.max_buckets {
            self.buckets.clear();
        }
    }

    /// Number of buckets held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}
