use super::*;
use std::collections::HashSet;

#[test]
fn secrets_and_pii_never_show_in_debug() {
    let creds = Credentials { email: Pii("canary@example.org".into()), password: Secret::new("hunter2hunter2") };
    let shown = format!("{creds:?}");
    assert!(!shown.contains("canary"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    let session = SessionCreated { token: "tok_secret".into(), expires_at: "x".into() };
    assert!(!format!("{session:?}").contains("tok_secret"));
}

#[test]
fn error_codes_are_unique_snake_case() {
    let mut seen = HashSet::new();
    for code in ErrorCode::ALL {
        let s = code.as_str();
        assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
        assert!(seen.insert(s), "duplicate code {s}");
        assert!((400..600).contains(&code.status()));
    }
}

#[test]
fn credentials_reject_unknown_fields() {
    let err = serde_json::from_str::<Credentials>(r#"{"email":"a@b.c","password":"12345678","x":1}"#);
    assert!(err.is_err());
}
