#![allow(clippy::unwrap_used)]

use super::*;
use cloister_accounts::{
    AccountRecord, AccountStore, MemoryStore, SessionRecord, StoreError, TokenHash, UnixTime, UserId,
};
use cloister_audit::{AuditEntry, Evidence};
use std::collections::BTreeSet;
use std::sync::Arc;

fn account(email_byte: u8) -> AccountRecord {
    AccountRecord {
        user_id: UserId::random(),
        email_key_id: "k1".into(),
        email_hmac: [email_byte; 32],
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        recovery_hash: TokenHash([9; 32]),
        created_at: UnixTime(100),
        updated_at: UnixTime(100),
    }
}

fn session(user: &UserId, byte: u8, created: i64, expires: i64) -> SessionRecord {
    SessionRecord {
        token_hash: TokenHash([byte; 32]),
        user_id: user.clone(),
        created_at: UnixTime(created),
        expires_at: UnixTime(expires),
    }
}

/// The behaviour every [`AccountStore`] must have; run against memory, SQLite and PostgreSQL alike.
async fn conformance(store: Arc<dyn AccountStore>) {
    let a = account(1);
    store.insert_account(&a, &Evidence::none()).await.unwrap();
    assert!(
        matches!(store.insert_account(&account(1), &Evidence::none()).await, Err(StoreError::Conflict)),
        "email hash unique"
    );
    let mut same_id = account(2);
    same_id.user_id = a.user_id.clone();
    assert!(
        matches!(store.insert_account(&same_id, &Evidence::none()).await, Err(StoreError::Conflict)),
        "user id unique"
    );
    assert_eq!(store.account_by_email(&[1; 32]).await.unwrap().unwrap(), a);
    assert_eq!(store.account_by_id(&a.user_id).await.unwrap().unwrap(), a);
    assert!(store.account_by_email(&[3; 32]).await.unwrap().is_none());

    store.insert_session(&session(&a.user_id, 10, 100, 200)).await.unwrap();
    store.insert_session(&session(&a.user_id, 11, 101, 300)).await.unwrap();
    assert!(matches!(store.insert_session(&session(&a.user_id, 10, 1, 2)).await, Err(StoreError::Conflict)));
    assert_eq!(store.sessions_of(&a.user_id).await.unwrap().len(), 2);
    assert_eq!(store.session_by_token(&TokenHash([10; 32])).await.unwrap().unwrap().expires_at, UnixTime(200));

    // Purge: only sessions with expires_at <= now.
    assert_eq!(store.purge_expired_sessions(UnixTime(200)).await.unwrap(), 1);
    assert!(store.session_by_token(&TokenHash([10; 32])).await.unwrap().is_none());
    assert!(store.delete_session(&TokenHash([11; 32])).await.unwrap());
    assert!(!store.delete_session(&TokenHash([11; 32])).await.unwrap());

    // Credential replacement revokes sessions atomically.
    store.insert_session(&session(&a.user_id, 12, 102, 400)).await.unwrap();
    assert!(store.replace_credentials(&a.user_id, "new", &TokenHash([8; 32]), UnixTime(150)).await.unwrap());
    let b = store.account_by_id(&a.user_id).await.unwrap().unwrap();
    assert_eq!((b.password_hash.as_str(), b.recovery_hash, b.updated_at), ("new", TokenHash([8; 32]), UnixTime(150)));
    assert!(store.sessions_of(&a.user_id).await.unwrap().is_empty());
    assert!(!store.replace_credentials(&UserId::random(), "x", &TokenHash([8; 32]), UnixTime(1)).await.unwrap());

    // Re-keying.
    store.rekey_account(&a.user_id, "k2", &[4; 32], "rehashed").await.unwrap();
    let c = store.account_by_email(&[4; 32]).await.unwrap().unwrap();
    assert_eq!((c.email_key_id.as_str(), c.password_hash.as_str()), ("k2", "rehashed"));
    let other = account(5);
    store.insert_account(&other, &Evidence::none()).await.unwrap();
    assert!(matches!(store.rekey_account(&a.user_id, "k2", &[5; 32], "x").await, Err(StoreError::Conflict)));

    // Erasure: account and sessions go, the erasure is recorded, other accounts stay.
    store.insert_session(&session(&a.user_id, 13, 103, 500)).await.unwrap();
    store.insert_session(&session(&other.user_id, 14, 103, 500)).await.unwrap();
    assert!(store.erase_account(&a.user_id, UnixTime(160), &Evidence::none()).await.unwrap());
    assert!(!store.erase_account(&a.user_id, UnixTime(161), &Evidence::none()).await.unwrap());
    assert!(store.account_by_id(&a.user_id).await.unwrap().is_none());
    assert!(store.sessions_of(&a.user_id).await.unwrap().is_empty());
    assert!(store.was_erased(&a.user_id).await.unwrap());
    assert!(!store.was_erased(&other.user_id).await.unwrap());
    assert_eq!(store.sessions_of(&other.user_id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn memory_store_conforms() {
    conformance(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open_sqlite(dir.path()).await.unwrap();
    conformance(db.account_store()).await;
    db.close().await;
    // Reopening runs no migration twice.
    let db = Database::open(None, dir.path()).await.unwrap();
    assert_eq!(db.backend(), Backend::Sqlite);
    db.close().await;
}

/// Accounts for the course conformance suite (course tables reference accounts).
async fn course_users(db: &Database) -> Vec<UserId> {
    let store = db.account_store();
    let mut users = Vec::new();
    for b in 0..4u8 {
        let a = account(100 + b);
        store.insert_account(&a, &Evidence::none()).await.unwrap();
        users.push(a.user_id);
    }
    users
}

/// The course retention rules on a real schema: only what is due goes.
async fn course_retention(db: &Database, users: &[UserId]) {
    use cloister_courses::{CourseInput, Courses, CoursesConfig, PaymentsNotConfigured, Visibility};
    use cloister_policy::retention::Rule;
    let s = Courses::new(db.course_store(), Arc::new(PaymentsNotConfigured), CoursesConfig::default());
    let t0 = UnixTime(1_000_000_000);
    let input = CourseInput {
        title: "Old".into(),
        description: String::new(),
        price_minor: 0,
        currency: "EUR".into(),
        visibility: Visibility::Public,
    };
    let org = s.create_org("Acme", &users[0], t0).await.unwrap();
    let org = s.org(&org.id).await.unwrap();
    let old = s.create_course(None, &input, &users[0], t0).await.unwrap();
    let old = s.course(&old.id).await.unwrap();
    let live = s.create_course(None, &input, &users[0], t0).await.unwrap();
    let live = s.course(&live.id).await.unwrap();
    // The old course's last session ended at t0+2h; the live one has one in the far future.
    let old_session = s.schedule_session(&old, t0.plus_secs(3600), t0.plus_secs(7200), 10, t0).await.unwrap();
    let live_session =
        s.schedule_session(&live, UnixTime(4_000_000_000), UnixTime(4_000_003_600), 10, t0).await.unwrap();
    s.join_session(&old_session, &old, &users[1], t0).await.unwrap();
    s.join_session(&live_session, &live, &users[1], t0).await.unwrap();
    // Participation: only the ended session's participants go.
    let gone =
        db.retention_delete(Rule::EndedSessionParticipants, t0.plus_secs(8000).0, &|_| Evidence::none()).await.unwrap();
    assert_eq!(gone, vec![format!("{}:{}", old_session.id, users[1])]);
    assert_eq!(s.participants(&live_session.id).await.unwrap(), vec![users[1].clone()]);
    s.enroll_free(&old, &users[1], t0).await.unwrap();
    s.enroll_free(&live, &users[1], t0).await.unwrap();
    // A pack expiring after 1 day with one code used and one not; an invitation expiring after 1 day.
    let (_, codes) = s.create_seat_pack(&org, &old, 2, 1, &users[0], t0).await.unwrap();
    s.redeem_seat(codes[0].as_str(), &users[2], t0).await.unwrap();
    let _ = s.invite(&old, &users[0], 1, t0).await.unwrap();
    let later = t0.plus_secs(86_400 + 10);
    assert!(db.retention_due(Rule::ExpiredSeatCodes, later.0).await.unwrap().len() == 1, "the unused code only");
    assert_eq!(db.retention_delete(Rule::ExpiredSeatCodes, later.0, &|_| Evidence::none()).await.unwrap().len(), 1);
    assert_eq!(
        db.retention_delete(Rule::ExpiredSeatCodes, later.0, &|_| Evidence::none()).await.unwrap().len(),
        0,
        "once"
    );
    assert_eq!(
        db.retention_delete(Rule::ExpiredInvitations, t0.0, &|_| Evidence::none()).await.unwrap().len(),
        0,
        "not yet expired"
    );
    assert_eq!(db.retention_delete(Rule::ExpiredInvitations, later.0, &|_| Evidence::none()).await.unwrap().len(), 1);
    // Enrollments: cutoff after the old course ended, before the live one will.
    let gone =
        db.retention_delete(Rule::EndedCourseEnrollments, t0.plus_secs(8000).0, &|_| Evidence::none()).await.unwrap();
    assert_eq!(gone.len(), 2, "the old course's two enrollments (free and seat): {gone:?}");
    assert!(gone.iter().all(|id| id.starts_with(old.course.id.as_str())));
    assert_eq!(s.course(&live.course.id).await.unwrap().students, vec![users[1].clone()]);
    assert!(s.course(&old.course.id).await.unwrap().students.is_empty());
}

/// Runs raw SQL on whichever pool the database has (test setup only).
async fn exec(db: &Database, sql: &str) {
    match db {
        Database::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
        Database::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A change and its audit entries are one transaction: when the entry cannot be written, the change does not stand
/// either; and concurrent appenders leave one contiguous log with times that never go back.
async fn evidence_is_atomic_and_appenders_serialize(db: &Database, break_audit: &str, mend_audit: &str) {
    let (s, users, record, t0) = course_with_users(db, 24, 200, "Atomic").await;
    let course = record.course.clone();
    let before = db.audit_all_entries().await.unwrap().len();

    exec(db, break_audit).await;
    assert!(s.enroll_free(&record, &users[1], t0).await.is_err(), "the audit write failed, so must the enrollment");
    let (code, _) = s.invite(&record, &users[0], 3, t0).await.unwrap();
    assert!(s.redeem_invitation(code.as_str(), &users[2], t0).await.is_err());
    assert!(s.delete_course(&record, &users[0], t0).await.is_err());
    exec(db, mend_audit).await;
    let now = s.course(&course.id).await.unwrap();
    assert!(now.students.is_empty(), "no enrollment stands without its entry");
    assert_eq!(db.audit_all_entries().await.unwrap().len(), before, "and no entry without its change");
    assert_eq!(s.redeem_invitation(code.as_str(), &users[2], t0).await.unwrap(), course.id, "the code is still unused");

    // 22 learners enroll at once, with clocks that disagree: one contiguous log, times never going back.
    let mut tasks = Vec::new();
    for (i, u) in users[2..].iter().enumerate() {
        let (s, record, u) = (s.clone(), record.clone(), u.clone());
        let at = t0.plus_secs(if i % 2 == 0 { 5 } else { 1 });
        tasks.push(tokio::spawn(async move { s.enroll_free(&record, &u, at).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let entries = db.audit_all_entries().await.unwrap();
    assert_eq!(entries.len(), before + 1 + 21, "the invitation's entry and 21 new enrollments (users[2] was enrolled)");
    let times: Vec<i64> = entries.iter().map(|b| AuditEntry::decode(b).unwrap().at_ms).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(s.course(&course.id).await.unwrap().students.len(), 22);
}

/// A course service over `db`, `n` fresh accounts (email bytes from `first`), and a free public course taught by
/// the first of them.
async fn course_with_users(
    db: &Database,
    n: u8,
    first: u8,
    title: &str,
) -> (Arc<cloister_courses::Courses>, Vec<UserId>, cloister_courses::CourseRecord, UnixTime) {
    use cloister_courses::{CourseInput, Courses, CoursesConfig, PaymentsNotConfigured, Visibility};
    let s = Arc::new(Courses::new(db.course_store(), Arc::new(PaymentsNotConfigured), CoursesConfig::default()));
    let accounts = db.account_store();
    let mut users = Vec::new();
    for b in 0..n {
        let a = account(first + b);
        accounts.insert_account(&a, &Evidence::none()).await.unwrap();
        users.push(a.user_id);
    }
    let t0 = UnixTime(1_900_000_000);
    let input = CourseInput {
        title: title.into(),
        description: String::new(),
        price_minor: 0,
        currency: "EUR".into(),
        visibility: Visibility::Public,
    };
    let course = s.create_course(None, &input, &users[0], t0).await.unwrap();
    let record = s.course(&course.id).await.unwrap();
    (s, users, record, t0)
}

/// Ten learners ask for a seat in a session of three at once: exactly three get one.
async fn concurrent_joiners_never_exceed_the_capacity(db: &Database) {
    use cloister_courses::CourseError;
    let (s, users, record, t0) = course_with_users(db, 11, 100, "Three seats").await;
    let session = s.schedule_session(&record, t0.plus_secs(60), t0.plus_secs(3600), 3, t0).await.unwrap();
    let mut tasks = Vec::new();
    for u in &users[1..] {
        let (s, session, record, u) = (s.clone(), session.clone(), record.clone(), u.clone());
        tasks.push(tokio::spawn(async move { s.join_session(&session, &record, &u, t0).await }));
    }
    let mut admitted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok((true, _, false)) => admitted += 1,
            Err(CourseError::SessionFull) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted, 3);
    assert_eq!(s.participants(&session.id).await.unwrap().len(), 3);
}

#[tokio::test]
async fn sqlite_joiners_never_exceed_the_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open_sqlite(dir.path()).await.unwrap();
    concurrent_joiners_never_exceed_the_capacity(&db).await;
    db.close().await;
}

#[tokio::test]
async fn postgres_joiners_never_exceed_the_capacity() {
    let url = cloister_testkit::postgres().fresh_database().await;
    let db = Database::open_postgres(&url).await.unwrap();
    concurrent_joiners_never_exceed_the_capacity(&db).await;
    db.close().await;
}

#[tokio::test]
async fn sqlite_evidence_is_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open_sqlite(dir.path()).await.unwrap();
    evidence_is_atomic_and_appenders_serialize(
        &db,
        "CREATE TRIGGER audit_down BEFORE INSERT ON audit_entries BEGIN SELECT RAISE(ABORT, 'audit down'); END;",
        "DROP TRIGGER audit_down;",
    )
    .await;
    db.close().await;
}

#[tokio::test]
async fn postgres_evidence_is_atomic() {
    let url = cloister_testkit::postgres().fresh_database().await;
    let db = Database::open_postgres(&url).await.unwrap();
    evidence_is_atomic_and_appenders_serialize(
        &db,
        "CREATE FUNCTION audit_down() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit down'; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER audit_down BEFORE INSERT ON audit_entries FOR EACH ROW EXECUTE FUNCTION audit_down();",
        "DROP TRIGGER audit_down ON audit_entries; DROP FUNCTION audit_down();",
    )
    .await;
    db.close().await;
}

#[tokio::test]
async fn sqlite_course_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open_sqlite(dir.path()).await.unwrap();
    let users = course_users(&db).await;
    cloister_courses::conformance::run_all(db.course_store(), &users, || async {
        db.audit_all_entries().await.unwrap()
    })
    .await;
    course_retention(&db, &users).await;
    // Erasing an account removes its roles and enrollments with it.
    assert!(db.account_store().erase_account(&users[2], UnixTime(200), &Evidence::none()).await.unwrap());
    let Database::Sqlite(p) = &db else { panic!("opened as SQLite") };
    for table in ["enrollments", "org_roles", "course_staff"] {
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table} WHERE user_id = $1"))
            .bind(users[2].as_str())
            .fetch_one(p)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM seat_codes WHERE redeemed_by = $1")
        .bind(users[2].as_str())
        .fetch_one(p)
        .await
        .unwrap();
    assert_eq!(n, 0, "a redeemed seat no longer names the erased account");
    db.close().await;
}

#[tokio::test]
async fn postgres_course_store_conforms() {
    let url = cloister_testkit::postgres().fresh_database().await;
    let db = Database::open_postgres(&url).await.unwrap();
    let users = course_users(&db).await;
    cloister_courses::conformance::run_all(db.course_store(), &users, || async {
        db.audit_all_entries().await.unwrap()
    })
    .await;
    course_retention(&db, &users).await;
    db.close().await;
}

#[tokio::test]
async fn postgres_store_conforms() {
    let url = cloister_testkit::postgres().fresh_database().await;
    let db = Database::open(Some(&url), std::path::Path::new("/nonexistent")).await.unwrap();
    assert_eq!(db.backend(), Backend::Postgres);
    conformance(db.account_store()).await;
    db.close().await;
    let db = Database::open_postgres(&url).await.unwrap();
    db.close().await;
}

#[tokio::test]
async fn bad_database_url_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(Database::open(Some("mysql://x"), dir.path()).await, Err(DatabaseError::BadUrl)));
    assert!(matches!(
        Database::open(Some("postgres://nobody@127.0.0.1:1/none?connect_timeout=1"), dir.path()).await,
        Err(DatabaseError::Connect(_))
    ));
}

// ---- the data-flow inventory ----

fn repo_file(rel: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The columns `audits/data-inventory.toml` lists, after cloister-policy's checks (known data and retention
/// classes, readers and purpose, no duplicates).
fn inventory_columns() -> BTreeSet<(String, String)> {
    let retention = cloister_policy::retention::RetentionPolicy::parse(&repo_file("policy/retention.toml")).unwrap();
    cloister_policy::inventory::Inventory::parse(&repo_file("audits/data-inventory.toml"), &retention)
        .unwrap()
        .columns()
}

fn check_schema_against_inventory(schema: Vec<(String, String)>, backend: &str) {
    let listed = inventory_columns();
    let schema: BTreeSet<_> = schema.into_iter().collect();
    let unlisted: Vec<_> = schema.difference(&listed).collect();
    assert!(unlisted.is_empty(), "{backend} schema columns missing from audits/data-inventory.toml: {unlisted:?}");
    let stale: Vec<_> = listed.difference(&schema).collect();
    assert!(stale.is_empty(), "audits/data-inventory.toml lists columns the {backend} schema lacks: {stale:?}");
}

#[tokio::test]
async fn every_sqlite_column_is_in_the_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open_sqlite(dir.path()).await.unwrap();
    check_schema_against_inventory(db.schema_columns().await.unwrap(), "SQLite");
    db.close().await;
}

#[tokio::test]
async fn every_postgres_column_is_in_the_inventory() {
    let url = cloister_testkit::postgres().fresh_database().await;
    let db = Database::open_postgres(&url).await.unwrap();
    check_schema_against_inventory(db.schema_columns().await.unwrap(), "PostgreSQL");
    db.close().await;
}

#[test]
fn the_inventory_check_catches_an_unlisted_column() {
    let mut schema: Vec<_> = inventory_columns().into_iter().collect();
    schema.push(("accounts".into(), "email_plaintext".into()));
    let caught = std::panic::catch_unwind(|| check_schema_against_inventory(schema, "test"));
    assert!(caught.is_err());
}
