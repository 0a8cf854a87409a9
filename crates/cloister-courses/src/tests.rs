#![allow(clippy::unwrap_used)]

use super::*;
use cloister_accounts::UserId;
use std::sync::Arc;

#[test]
fn the_conformance_suite_holds_in_memory() {
    let users: Vec<UserId> = (0..4).map(|_| UserId::random()).collect();
    let store = Arc::new(MemoryStore::new());
    let audit = || {
        let store = store.clone();
        async move { store.audit_entries().unwrap() }
    };
    futures_executor::block_on(conformance::run_all(store.clone(), &users, audit));
}

#[test]
fn codes_are_160_bits_in_groups_of_four() {
    let c = Code::random();
    let groups: Vec<&str> = c.as_str().split('-').collect();
    assert_eq!(groups.len(), 8);
    assert!(groups.iter().all(|g| g.len() == 4 && g.bytes().all(|b| b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".contains(&b))));
    assert_eq!(Code::hash_of(c.as_str()), Some(c.stored_hash()));
    assert_eq!(Code::hash_of(&c.as_str().to_lowercase()), Some(c.stored_hash()));
    assert_ne!(Code::hash_of(c.as_str()), Code::hash_of(Code::random().as_str()));
    assert_eq!(Code::hash_of("too short"), None);
}
