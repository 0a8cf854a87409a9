#![allow(clippy::unwrap_used)]

use super::*;
use cloister_wire::{Credentials, Pii, RecoverRequest, Secret};
use futures_executor::block_on;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

const PEPPER_A: &str = "k1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";
const PEPPER_AB: &str = "k1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n\
                         k2 ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100 # rotated\n";
const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn creds(email: &str, password: &str) -> Credentials {
    Credentials { email: Pii(email.to_owned()), password: Secret::new(password) }
}

fn service(store: Arc<MemoryStore>, pepper: &str) -> Accounts {
    Accounts::new(
        store,
        EmailHasher::from_pepper_text(pepper).unwrap(),
        AccountsConfig::default(),
        Arc::new(InlineOffload),
    )
    .unwrap()
}

#[test]
fn email_normalization() {
    assert_eq!(normalize_email("  Alice@Example.ORG ").unwrap().as_str(), "alice@example.org");
    // NFC: 'e' + combining acute equals precomposed 'é'.
    assert_eq!(
        normalize_email("jose\u{301}@x.io").unwrap().as_str(),
        normalize_email("jos\u{e9}@x.io").unwrap().as_str()
    );
    for bad in [
        "",
        "alice",
        "@example.org",
        "alice@",
        "alice@localhost",
        "a b@c.de",
        "a@b..de",
        "a@.de",
        "a@de.",
        "a\u{0}@b.de",
    ] {
        assert!(normalize_email(bad).is_none(), "{bad:?} should be refused");
    }
    let long = format!("{}@example.org", "a".repeat(250));
    assert!(normalize_email(&long).is_none());
}

#[test]
fn hmac_is_keyed_and_key_ids_rotate() {
    let a = EmailHasher::from_pepper_text(PEPPER_A).unwrap();
    let ab = EmailHasher::from_pepper_text(PEPPER_AB).unwrap();
    assert_eq!(a.current_key_id().as_str(), "k1");
    assert_eq!(ab.current_key_id().as_str(), "k2");
    let h1 = a.hash_current("alice@example.org");
    // Same key, same input: same hash; other key: other hash; the old key is still tried (second).
    assert_eq!(h1, a.hash_current("alice@example.org"));
    assert_ne!(h1, ab.hash_current("alice@example.org"));
    let all = ab.hash_all("alice@example.org");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].0.as_str(), "k2");
    assert_eq!(all[1], (EmailKeyId::new("k1").unwrap(), h1));
    // Known answer: HMAC-SHA256(key = 00..1f, "alice@example.org"), computed independently with Python's hmac.
    assert_eq!(hex::encode(h1), KNOWN_HMAC);
    // Debug shows key ids only.
    assert_eq!(format!("{ab:?}"), r#"["k1", "k2"]"#);
}

const KNOWN_HMAC: &str = include_str!("../testdata/hmac_alice_k1.hex").trim_ascii();

#[test]
fn pepper_file_errors() {
    assert_eq!(EmailHasher::from_pepper_text("").unwrap_err(), PepperError::Empty);
    assert_eq!(EmailHasher::from_pepper_text("k1 00").unwrap_err(), PepperError::ShortKey);
    assert_eq!(EmailHasher::from_pepper_text("K! 00").unwrap_err(), PepperError::BadKeyId);
    assert_eq!(EmailHasher::from_pepper_text("k1").unwrap_err(), PepperError::BadLine(1));
    assert_eq!(EmailHasher::from_pepper_text("k1 zz").unwrap_err(), PepperError::BadLine(1));
    let dup = format!("{PEPPER_A}{PEPPER_A}");
    assert_eq!(EmailHasher::from_pepper_text(&dup).unwrap_err(), PepperError::DuplicateKeyId("k1".into()));
    let generated = EmailHasher::generate_pepper_text("k1").unwrap();
    let h = EmailHasher::from_pepper_text(&generated).unwrap();
    assert_eq!(h.current_key_id().as_str(), "k1");
}

#[test]
fn token_hashing_and_parsing() {
    let t = SessionToken::random();
    let text = t.to_text();
    assert!(text.starts_with("cls_"));
    assert_eq!(text.len(), 4 + 43);
    let parsed = SessionToken::parse(&text).unwrap();
    assert_eq!(parsed.hash(), t.hash());
    // The hash is SHA-256 of the 32 raw bytes, not of the text.
    assert_ne!(t.hash(), TokenHash::of(text.as_bytes()));
    for bad in ["", "cls_", "cls_short", "xyz_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &format!("{}=", &*text)] {
        assert!(SessionToken::parse(bad).is_none(), "{bad}");
    }
    assert_ne!(SessionToken::random().hash(), SessionToken::random().hash());
    assert_eq!(format!("{t:?}"), "SessionToken(<redacted>)");
}

#[test]
fn known_answer_sha256_token_hash() {
    // SHA-256 of 32 zero bytes.
    assert_eq!(
        hex::encode(TokenHash::of(&[0u8; 32]).0),
        "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
    );
}

#[test]
fn recovery_codes() {
    let c = RecoveryCode::random();
    assert_eq!(c.as_str().len(), 39);
    assert_eq!(c.as_str().split('-').count(), 8);
    let typed = c.as_str().to_lowercase().replace('-', " ");
    assert_eq!(RecoveryCode::hash_typed(&typed), Some(c.hash()));
    assert_eq!(RecoveryCode::hash_typed("ABCD"), None);
    assert_eq!(RecoveryCode::hash_typed(&"1".repeat(32)), None);
}

#[test]
fn argon2_parameter_checks() {
    assert!(Argon2Config::default().check().is_ok());
    let weak = |m, t, p| Argon2Config { memory_kib: m, iterations: t, parallelism: p }.check().is_err();
    assert!(weak(19 * 1024 - 1, 2, 1));
    assert!(weak(19 * 1024, 1, 1));
    assert!(weak(19 * 1024, 2, 0));
    assert!(weak(19 * 1024, 2, 17));
    assert!(!weak(64 * 1024, 3, 4));
    assert!(AccountsConfig { session_ttl_secs: 0, ..AccountsConfig::default() }.check().is_err());
}

#[test]
fn password_lengths_count_scalar_values() {
    assert!(check_password("1234567").is_err());
    assert!(check_password("12345678").is_ok());
    assert!(check_password(&"é".repeat(64)).is_ok()); // 128 bytes, 64 characters
    assert!(check_password(&"é".repeat(65)).is_err());
    assert!(check_password(&"🦀".repeat(8)).is_ok());
    assert!(check_password(&"🦀".repeat(7)).is_err());
}

#[test]
fn password_hash_verify_and_rehash() {
    let h = PasswordHasher::new(Argon2Config::default()).unwrap();
    let phc = h.hash("correct horse");
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    assert!(h.verify("correct horse", &phc));
    assert!(!h.verify("correct horsf", &phc));
    assert!(!h.verify("correct horse", "garbage"));
    // NFKC: full-width digits match ASCII ones.
    let phc2 = h.hash("pass１２３４５");
    assert!(h.verify("pass12345", &phc2));
    assert!(!h.needs_rehash(&phc));
    let stronger = PasswordHasher::new(Argon2Config { memory_kib: 20 * 1024, iterations: 2, parallelism: 1 }).unwrap();
    assert!(stronger.needs_rehash(&phc));
    assert_eq!(PasswordHasher::describe(&phc), "argon2id v=19 m=19456,t=2,p=1");
}

#[test]
fn throttle_buckets() {
    let cfg = ThrottleConfig {
        login_per_account: BucketRule { burst: 2.0, refill_per_sec: 0.5 },
        login_per_ip: BucketRule { burst: 3.0, refill_per_sec: 1.0 },
        signup_per_ip: BucketRule { burst: 1.0, refill_per_sec: 0.1 },
        max_buckets: 4,
    };
    let mut t = Throttle::new(cfg);
    let acct = ThrottleKey::LoginAccount([7; 32]);
    let ip = ThrottleKey::LoginIp(IP);
    assert!(t.check(&[ip.clone(), acct.clone()], 0).is_ok());
    assert!(t.check(&[ip.clone(), acct.clone()], 0).is_ok());
    assert_eq!(t.check(&[ip.clone(), acct.clone()], 0), Err(2)); // account empty; ip keeps its token
    assert!(t.check(std::slice::from_ref(&ip), 0).is_ok());
    assert!(t.check(std::slice::from_ref(&ip), 0).is_err());
    assert!(t.check(&[ip.clone(), acct.clone()], 2000).is_ok()); // both refilled enough
                                                                 // IPv6 addresses of one /64 share a bucket.
    let a = ThrottleKey::SignupIp(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 1, 2, 3, 4)));
    let b = ThrottleKey::SignupIp(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 9, 9, 9, 9)));
    assert!(t.check(&[a], 0).is_ok());
    assert!(t.check(&[b], 0).is_err());
    // Memory stays bounded under an address flood.
    for i in 0..1000u32 {
        let _ = t.check(&[ThrottleKey::SignupIp(IpAddr::V4(Ipv4Addr::from(i)))], 5000);
        assert!(t.len() <= 4);
    }
}

#[test]
fn sign_up_log_in_me_export_log_out() {
    block_on(async {
        let store = Arc::new(MemoryStore::new());
        let svc = service(store.clone(), PEPPER_A);
        let now = UnixTime(1_800_000_000);
        let (uid, code) = svc.sign_up(&creds("Alice@Example.org", "password1"), IP, now).await.unwrap();
        assert!(UserId::parse(uid.as_str()).is_some());
        assert_eq!(code.as_str().len(), 39);
        // Taken, in any letter case.
        assert!(matches!(
            svc.sign_up(&creds("alice@example.ORG", "password2"), IP, now).await,
            Err(AccountError::EmailTaken)
        ));
        // Wrong password and unknown email fail alike.
        let wrong = svc.log_in(&creds("alice@example.org", "password2"), IP, now).await.unwrap_err();
        let unknown = svc.log_in(&creds("bob@example.org", "password1"), IP, now).await.unwrap_err();
        assert_eq!(wrong.to_string(), unknown.to_string());
        assert!(matches!(wrong, AccountError::InvalidCredentials));
        let (token, exp) = svc.log_in(&creds("alice@example.org", "password1"), IP, now).await.unwrap();
        assert_eq!(exp, now.plus_secs(12 * 3600));
        let auth = svc.authenticate(&token.to_text(), now).await.unwrap();
        assert_eq!(auth.user_id, uid);
        assert_eq!(svc.me(&auth).await.unwrap().user_id, uid);
        let export = svc.export(&auth).await.unwrap();
        assert_eq!(export.sessions.len(), 1);
        assert!(export.sessions[0].current);
        assert_eq!(export.account.email_key_id, "k1");
        // Expiry.
        assert!(matches!(svc.authenticate(&token.to_text(), exp).await, Err(AccountError::InvalidToken)));
        let (token, _) = svc.log_in(&creds("alice@example.org", "password1"), IP, now).await.unwrap();
        let auth = svc.authenticate(&token.to_text(), now).await.unwrap();
        svc.log_out(&auth).await.unwrap();
        assert!(matches!(svc.authenticate(&token.to_text(), now).await, Err(AccountError::InvalidToken)));
    })
}

#[test]
fn recovery_replaces_password_and_code_and_revokes_sessions() {
    block_on(async {
        let svc = service(Arc::new(MemoryStore::new()), PEPPER_A);
        let now = UnixTime(1_800_000_000);
        let (uid, code) = svc.sign_up(&creds("carol@example.org", "password1"), IP, now).await.unwrap();
        let (token, _) = svc.log_in(&creds("carol@example.org", "password1"), IP, now).await.unwrap();
        let req = |code: &str, pw: &str| RecoverRequest {
            email: Pii("carol@example.org".into()),
            recovery_code: Secret::new(code),
            new_password: Secret::new(pw),
        };
        assert!(matches!(
            svc.recover(&req("AAAA", "newpassword"), IP, now).await,
            Err(AccountError::InvalidCredentials)
        ));
        assert!(matches!(
            svc.recover(&req(code.as_str(), "short"), IP, now).await,
            Err(AccountError::InvalidPassword(_))
        ));
        let (uid2, code2) = svc.recover(&req(code.as_str(), "newpassword"), IP, now).await.unwrap();
        assert_eq!(uid, uid2);
        assert!(svc.authenticate(&token.to_text(), now).await.is_err(), "old sessions revoked");
        assert!(svc.log_in(&creds("carol@example.org", "password1"), IP, now).await.is_err());
        assert!(svc.log_in(&creds("carol@example.org", "newpassword"), IP, now).await.is_ok());
        // The old code is spent; the new one works.
        assert!(svc.recover(&req(code.as_str(), "another-one"), IP, now).await.is_err());
        assert!(svc.recover(&req(code2.as_str(), "another-one"), IP, now).await.is_ok());
    })
}

#[test]
fn erasure_is_final_and_recorded() {
    block_on(async {
        let store = Arc::new(MemoryStore::new());
        let svc = service(store.clone(), PEPPER_A);
        let now = UnixTime(1_800_000_000);
        let (uid, _) = svc.sign_up(&creds("dave@example.org", "password1"), IP, now).await.unwrap();
        let (token, _) = svc.log_in(&creds("dave@example.org", "password1"), IP, now).await.unwrap();
        let auth = svc.authenticate(&token.to_text(), now).await.unwrap();
        svc.erase(&auth, now).await.unwrap();
        assert!(store.was_erased(&uid).await.unwrap());
        assert!(svc.authenticate(&token.to_text(), now).await.is_err());
        assert!(svc.log_in(&creds("dave@example.org", "password1"), IP, now).await.is_err());
        assert!(store.account_by_id(&uid).await.unwrap().is_none());
        assert!(store.sessions_of(&uid).await.unwrap().is_empty());
    })
}

#[test]
fn pepper_rotation_rekeys_at_login() {
    block_on(async {
        let store = Arc::new(MemoryStore::new());
        let now = UnixTime(1_800_000_000);
        let (uid, _) =
            service(store.clone(), PEPPER_A).sign_up(&creds("erin@example.org", "password1"), IP, now).await.unwrap();
        let rotated = service(store.clone(), PEPPER_AB);
        assert!(matches!(
            rotated.sign_up(&creds("erin@example.org", "password1"), IP, now).await,
            Err(AccountError::EmailTaken)
        ));
        rotated.log_in(&creds("erin@example.org", "password1"), IP, now).await.unwrap();
        let a = store.account_by_id(&uid).await.unwrap().unwrap();
        assert_eq!(a.email_key_id, "k2");
        assert_eq!(a.email_hmac, EmailHasher::from_pepper_text(PEPPER_AB).unwrap().hash_current("erin@example.org"));
    })
}

#[test]
fn login_throttled_per_account() {
    block_on(async {
        let svc = service(Arc::new(MemoryStore::new()), PEPPER_A);
        let now = UnixTime(1_800_000_000);
        let mut limited = None;
        for i in 0..20 {
            // Different addresses: only the per-account bucket can stop this.
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
            if let Err(AccountError::RateLimited { retry_after_secs }) =
                svc.log_in(&creds("frank@example.org", "password1"), ip, now).await
            {
                limited = Some((i, retry_after_secs));
                break;
            }
        }
        let (i, retry) = limited.expect("per-account throttle engages");
        assert_eq!(i, 10);
        assert!(retry >= 1);
    })
}

#[test]
fn purge_removes_only_expired_sessions() {
    block_on(async {
        let store = Arc::new(MemoryStore::new());
        let svc = service(store.clone(), PEPPER_A);
        let t0 = UnixTime(1_800_000_000);
        svc.sign_up(&creds("gina@example.org", "password1"), IP, t0).await.unwrap();
        svc.log_in(&creds("gina@example.org", "password1"), IP, t0).await.unwrap();
        let (late, _) = svc.log_in(&creds("gina@example.org", "password1"), IP, t0.plus_secs(3600)).await.unwrap();
        assert_eq!(svc.purge_expired(t0.plus_secs(12 * 3600)).await.unwrap(), 1);
        assert!(svc.authenticate(&late.to_text(), t0.plus_secs(12 * 3600)).await.is_ok());
    })
}
