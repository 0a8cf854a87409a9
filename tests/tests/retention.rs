//! The retention engine through the real binary: `cloister retention run --dry-run` lists without touching anything,
//! `cloister retention run` deletes what policy/retention.toml makes due and writes one audit entry per class, and
//! the server's scheduled run does the same on its own. SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, missing_docs)]

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tests::{Backend, Server};

async fn exec(s: &Server, statement: &str, arg: &[u8]) -> u64 {
    tests::with_db!(s, pool => sqlx::query(statement).bind(arg).execute(pool).await.unwrap().rows_affected())
}

async fn count(s: &Server, table: &str) -> i64 {
    let q = format!("SELECT COUNT(*) FROM {table}");
    tests::with_db!(s, pool => sqlx::query_as::<_, (i64,)>(&q).fetch_one(pool).await.unwrap().0)
}

const EXPIRED_SESSION: &str = "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) \
     VALUES ($1, (SELECT user_id FROM accounts LIMIT 1), 1, 2)";
const OLD_ERASURE: &str = "INSERT INTO erasures (user_id, erased_at) VALUES ($1, 5)";
const OLD_ERASED_ID: &str = "0123456789abcdef0123456789abcdef";

async fn scenario(backend: Backend) {
    let mut s = Server::start(backend, &["--retention-interval-secs", "1"]).await;
    let body = json!({ "email": "rita@example.org", "password": "correct horse battery" });
    let c = s.client();
    assert_eq!(c.post(s.url("/api/v1/accounts")).json(&body).send().await.unwrap().status(), 201);
    let r: Value = c.post(s.url("/api/v1/sessions")).json(&body).send().await.unwrap().json().await.unwrap();
    assert!(r["token"].is_string());

    // The scheduled run removes an expired session on its own and says so in the audit log.
    let bytes = |b: u8| String::from_utf8(vec![b'a' + b; 32]).unwrap();
    let token_hash = bytes(1);
    assert_eq!(exec(&s, EXPIRED_SESSION, token_hash.as_bytes()).await, 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&s, "sessions").await != 1 {
        assert!(Instant::now() < deadline, "the scheduled retention run did not delete the expired session");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // By hand, with the server stopped: a dry run lists, a real run deletes and records.
    s.shut_down();
    exec(&s, EXPIRED_SESSION, bytes(2).as_bytes()).await;
    // user_id is TEXT: bind it as text.
    let n = tests::with_db!(s, pool => sqlx::query(OLD_ERASURE).bind(OLD_ERASED_ID).execute(pool).await.unwrap().rows_affected());
    assert_eq!(n, 1);
    let out = s.cli(&["retention", "run", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("ret-session-v1\tsession\twould delete 1"), "{text}");
    assert!(text.contains("ret-erasure-record-v1\terasure_record\twould delete 1"), "{text}");
    assert_eq!((count(&s, "sessions").await, count(&s, "erasures").await), (2, 1), "dry run deletes nothing");
    let entries_before = count(&s, "audit_entries").await;
    let out = s.cli(&["retention", "run"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("ret-session-v1\tsession\tdeleted 1\tcommitment "), "{text}");
    assert!(text.contains("ret-erasure-record-v1\terasure_record\tdeleted 1\tcommitment "), "{text}");
    assert_eq!((count(&s, "sessions").await, count(&s, "erasures").await), (1, 0));
    let classes = text.lines().count() as i64;
    assert!(classes >= 2, "{text}");
    assert_eq!(count(&s, "audit_entries").await, entries_before + classes, "one entry per automated class");
    // The deleted ids are not in the audit log, only their count and commitment.
    let out = s.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let db_dump = match backend {
        Backend::Sqlite => std::fs::read(s.data_dir.join("cloister.sqlite3")).unwrap(),
        Backend::Postgres => Vec::new(),
    };
    assert!(!tests::contains_ci(&String::from_utf8_lossy(&db_dump), OLD_ERASED_ID));
    s.try_start().unwrap();
    s.shut_down();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_sqlite() {
    scenario(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_postgres() {
    scenario(Backend::Postgres).await;
}
