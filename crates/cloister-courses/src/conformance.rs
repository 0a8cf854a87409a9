//! The behaviour every [`CourseStore`] must show through the [`Courses`] service, run against memory here and
//! against SQLite and PostgreSQL in `cloister-store`. `users` are ids of existing accounts (SQL stores check).

#![allow(clippy::unwrap_used, clippy::missing_panics_doc, missing_docs)]

use crate::*;
use cloister_accounts::{UnixTime, UserId};
use cloister_audit::{AuditEntry, AuditEvent};
use std::future::Future;
use std::sync::Arc;

const T0: UnixTime = UnixTime(1_800_000_000);

fn svc(store: &Arc<dyn CourseStore>) -> Courses {
    Courses::new(store.clone(), Arc::new(PaymentsNotConfigured), CoursesConfig::default())
}

/// Runs every case; `users` holds at least 4 ids of existing accounts; `audit` reads the store's audit entries.
pub async fn run_all<F, Fut>(store: Arc<dyn CourseStore>, users: &[UserId], audit: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Vec<Vec<u8>>>,
{
    org_course_seat_pack_and_redemption(&store, users).await;
    free_enrollment_staff_and_sessions(&store, users).await;
    bad_input_is_refused_with_the_field(&store, users).await;
    catalog_searches_public_courses_and_pages(&store, users).await;
    my_courses_are_those_taught_and_those_enrolled_in(&store, users).await;
    invitations_enroll_once_until_they_expire(&store, users).await;
    live_sessions_admit_learners_up_to_their_capacity(&store, users).await;
    every_change_is_stored_with_its_audit_entries_and_failures_with_none(&store, users, &audit).await;
}

/// The kinds of the entries written since `from`; checks the log is contiguous and well formed.
async fn kinds_since<F, Fut>(audit: &F, from: usize) -> (Vec<String>, usize)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Vec<Vec<u8>>>,
{
    let all = audit().await;
    let entries: Vec<AuditEntry> = all.iter().map(|b| AuditEntry::decode(b).expect("well-formed entry")).collect();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64, "the log is contiguous");
    }
    let kinds = entries[from..].iter().map(|e| e.event.kind().to_owned()).collect();
    (kinds, entries.len())
}

async fn every_change_is_stored_with_its_audit_entries_and_failures_with_none<F, Fut>(
    store: &Arc<dyn CourseStore>,
    users: &[UserId],
    audit: &F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Vec<Vec<u8>>>,
{
    let s = svc(store);
    let (admin, teacher, learner, other) = (&users[0], &users[1], &users[2], &users[3]);
    let (_, mut at) = kinds_since(audit, 0).await;
    // The kinds of the entries written since the last check are exactly these.
    macro_rules! expect {
        ($want:expr) => {{
            let (kinds, len) = kinds_since(audit, at).await;
            let want: &[&str] = &$want;
            assert_eq!(kinds, want);
            at = len;
        }};
    }
    let org = s.create_org("Evidence Inc", admin, T0).await.unwrap();
    let org = s.org(&org.id).await.unwrap();
    expect!(["role_changed"]);
    s.set_org_role(&org, admin, learner, Some(OrgRole::Member), T0).await.unwrap();
    expect!(["role_changed"]);
    assert!(s.set_org_role(&org, admin, admin, None, T0).await.is_err());
    expect!([]);
    let course = s.create_course(Some(&org.org.id), &input("Audited", 0, Visibility::Org), teacher, T0).await.unwrap();
    let record = s.course(&course.id).await.unwrap();
    expect!(["role_changed"]);
    s.set_staff(&record, teacher, other, Some(StaffRole::Ta), T0).await.unwrap();
    expect!(["role_changed"]);
    assert!(s.enroll_free(&record, learner, T0).await.unwrap());
    expect!(["enrolled"]);
    assert!(!s.enroll_free(&record, learner, T0).await.unwrap());
    expect!([]);
    let (_, codes) = s.create_seat_pack(&org, &record, 1, 30, admin, T0).await.unwrap();
    expect!(["seat_pack_created"]);
    s.redeem_seat(codes[0].as_str(), other, T0).await.unwrap();
    expect!(["seat_redeemed", "enrolled"]);
    assert!(s.redeem_seat(codes[0].as_str(), learner, T0).await.is_err());
    expect!([]);
    let (code, _) = s.invite(&record, teacher, 3, T0).await.unwrap();
    s.redeem_invitation(code.as_str(), admin, T0).await.unwrap();
    expect!(["enrolled"]);
    assert!(s.redeem_invitation(code.as_str(), admin, T0).await.is_err());
    expect!([]);

    // A course deletion takes everything of the course with it and says how many enrollments went.
    let record = s.course(&course.id).await.unwrap();
    s.schedule_session(&record, T0.plus_secs(3600), T0.plus_secs(7200), 10, T0).await.unwrap();
    s.delete_course(&record, admin, T0).await.unwrap();
    let stored = audit().await;
    let last = AuditEntry::decode(stored.last().unwrap()).unwrap();
    assert!(
        matches!(&last.event, AuditEvent::CourseDeleted { enrollments: 3, course: c, .. } if *c == course.id.to_string()),
        "{last:?}"
    );
    expect!(["course_deleted"]);
    assert!(matches!(s.course(&course.id).await, Err(CourseError::NotFound)));
    assert!(s.sessions(&course.id).await.unwrap().is_empty());
    assert!(s.seat_packs(&org.org.id).await.unwrap().is_empty(), "the course's seat packs went with it");
    assert!(matches!(s.delete_course(&record, admin, T0).await, Err(CourseError::NotFound)));
    expect!([]);

    // An org deletion takes its courses along, each recorded.
    let a = s.create_course(Some(&org.org.id), &input("A", 0, Visibility::Org), teacher, T0).await.unwrap();
    let b = s.create_course(Some(&org.org.id), &input("B", 0, Visibility::Org), teacher, T0).await.unwrap();
    let ra = s.course(&a.id).await.unwrap();
    s.create_seat_pack(&org, &ra, 2, 30, admin, T0).await.unwrap();
    expect!(["role_changed", "role_changed", "seat_pack_created"]);
    s.delete_org(&org, admin, T0).await.unwrap();
    expect!(["course_deleted", "course_deleted", "org_deleted"]);
    assert!(matches!(s.org(&org.org.id).await, Err(CourseError::NotFound)));
    assert!(matches!(s.course(&a.id).await, Err(CourseError::NotFound)));
    assert!(matches!(s.course(&b.id).await, Err(CourseError::NotFound)));
    assert!(matches!(s.delete_org(&org, admin, T0).await, Err(CourseError::NotFound)));
    expect!([]);
    assert!(at >= 17, "every change above left its entries");
}

async fn invitations_enroll_once_until_they_expire(store: &Arc<dyn CourseStore>, users: &[UserId]) {
    let s = svc(store);
    let (teacher, a, b) = (users[0].clone(), users[1].clone(), users[2].clone());
    let c = s.create_course(None, &input("Invite only", 5000, Visibility::Public), &teacher, T0).await.unwrap();
    let r = s.course(&c.id).await.unwrap();
    let (code, expires) = s.invite(&r, &teacher, 7, T0).await.unwrap();
    assert_eq!(expires, T0.plus_secs(7 * 86_400));
    assert_eq!(s.redeem_invitation(&code.as_str().to_lowercase(), &a, T0).await.unwrap(), c.id, "paid course, invited");
    assert!(matches!(s.redeem_invitation(code.as_str(), &b, T0).await, Err(CourseError::Redeem(RedeemError::Used))));
    let (late, _) = s.invite(&r, &teacher, 1, T0).await.unwrap();
    assert!(matches!(
        s.redeem_invitation(late.as_str(), &b, T0.plus_secs(86_400)).await,
        Err(CourseError::Redeem(RedeemError::Expired))
    ));
    assert!(matches!(s.redeem_invitation("x", &b, T0).await, Err(CourseError::Redeem(RedeemError::Unknown))));
    assert!(s.invite(&r, &teacher, 0, T0).await.is_err());
    assert_eq!(s.course(&c.id).await.unwrap().students, vec![a]);
}

async fn live_sessions_admit_learners_up_to_their_capacity(store: &Arc<dyn CourseStore>, users: &[UserId]) {
    let s = svc(store);
    let (teacher, a, b, c) = (&users[0], &users[1], &users[2], &users[3]);
    let course = s.create_course(None, &input("Small room", 0, Visibility::Public), teacher, T0).await.unwrap();
    let r = s.course(&course.id).await.unwrap();
    let session = s.schedule_session(&r, T0.plus_secs(600), T0.plus_secs(4200), 2, T0).await.unwrap();
    assert_eq!(
        s.join_session(&session, &r, a, T0).await.unwrap(),
        (true, 1, false),
        "before the start: the waiting room"
    );
    assert_eq!(s.join_session(&session, &r, a, T0).await.unwrap(), (false, 1, false), "twice is a no-op");
    assert_eq!(s.join_session(&session, &r, b, T0).await.unwrap(), (true, 2, false));
    assert!(matches!(s.join_session(&session, &r, c, T0).await, Err(CourseError::SessionFull)));
    assert_eq!(
        s.join_session(&session, &r, teacher, T0.plus_secs(1)).await.unwrap(),
        (true, 2, true),
        "staff take no seat"
    );
    s.leave_session(&session.id, a).await.unwrap();
    assert!(matches!(s.leave_session(&session.id, a).await, Err(CourseError::NotFound)));
    assert_eq!(s.join_session(&session, &r, c, T0.plus_secs(700)).await.unwrap(), (true, 2, false), "a freed seat");
    assert_eq!(s.participants(&session.id).await.unwrap(), vec![b.clone(), teacher.clone(), c.clone()]);
    assert!(matches!(s.join_session(&session, &r, a, T0.plus_secs(4200)).await, Err(CourseError::SessionEnded)));
    // Deleting the course takes its sessions' participants along.
    s.delete_course(&r, teacher, T0).await.unwrap();
    assert!(s.participants(&session.id).await.unwrap().is_empty());
}

fn input(title: &str, price: i64, visibility: Visibility) -> CourseInput {
    CourseInput {
        title: title.into(),
        description: "Learn it".into(),
        price_minor: price,
        currency: "EUR".into(),
        visibility,
    }
}

async fn org_course_seat_pack_and_redemption(store: &Arc<dyn CourseStore>, users: &[UserId]) {
    {
        let s = svc(store);
        let (admin, teacher, learner, other) = (users[0].clone(), users[1].clone(), users[2].clone(), users[3].clone());
        let org = s.create_org("  Acme Corp ", &admin, T0).await.unwrap();
        assert_eq!(org.name, "Acme Corp");
        let org = s.org(&org.id).await.unwrap();
        assert_eq!(org.admins, vec![admin.clone()]);
        s.set_org_role(&org, &admin, &learner, Some(OrgRole::Member), T0).await.unwrap();
        assert!(matches!(s.set_org_role(&org, &admin, &admin, None, T0).await, Err(CourseError::LastAdmin)));
        let org = s.org(&org.org.id).await.unwrap();
        assert_eq!(org.facts().members, vec![learner.to_string()]);

        let course = s
            .create_course(Some(&org.org.id), &input("Secure Rust", 50_000, Visibility::Org), &teacher, T0)
            .await
            .unwrap();
        let record = s.course(&course.id).await.unwrap();
        let facts = record.facts();
        assert!(!facts.public && !facts.free);
        assert_eq!(facts.org.unwrap().admins, vec![admin.to_string()]);
        assert!(matches!(s.enroll_free(&record, &learner, T0).await, Err(CourseError::NotFree)));
        assert!(matches!(s.purchase(&record, &learner).await, Err(CourseError::PaymentNotConfigured)));

        let (pack, codes) = s.create_seat_pack(&org, &record, 2, 30, &admin, T0).await.unwrap();
        assert_eq!(codes.len(), 2);
        assert_ne!(codes[0].as_str(), codes[1].as_str());
        assert!(!format!("{:?}", codes[0]).contains(codes[0].as_str()), "codes never print");
        // Typed loosely (lower case, no dashes) it still redeems; once.
        let loose = codes[0].as_str().replace('-', "").to_lowercase();
        assert_eq!(s.redeem_seat(&loose, &learner, T0.plus_secs(60)).await.unwrap().id, pack.id);
        assert!(matches!(
            s.redeem_seat(codes[0].as_str(), &other, T0).await,
            Err(CourseError::Redeem(RedeemError::Used))
        ));
        assert!(matches!(
            s.redeem_seat(codes[1].as_str(), &other, T0.plus_secs(31 * 86_400)).await,
            Err(CourseError::Redeem(RedeemError::Expired))
        ));
        assert!(matches!(s.redeem_seat("NOPE-NOPE", &other, T0).await, Err(CourseError::Redeem(RedeemError::Unknown))));
        assert_eq!(s.course(&course.id).await.unwrap().students, vec![learner.clone()]);
        assert_eq!(s.seat_packs(&org.org.id).await.unwrap()[0].1, 1, "one code used");
        // Bad packs.
        assert!(s.create_seat_pack(&org, &record, 0, 30, &admin, T0).await.is_err());
        assert!(s.create_seat_pack(&org, &record, 1, 0, &admin, T0).await.is_err());
        assert!(s.create_seat_pack(&org, &record, 5000, 30, &admin, T0).await.is_err());
    }
}

async fn free_enrollment_staff_and_sessions(store: &Arc<dyn CourseStore>, users: &[UserId]) {
    {
        let s = svc(store);
        let (teacher, ta, learner) = (users[0].clone(), users[1].clone(), users[2].clone());
        let c = s.create_course(None, &input("Intro to MLS", 0, Visibility::Public), &teacher, T0).await.unwrap();
        let r = s.course(&c.id).await.unwrap();
        assert!(s.enroll_free(&r, &learner, T0).await.unwrap());
        assert!(!s.enroll_free(&r, &learner, T0).await.unwrap(), "twice is a no-op");
        s.set_staff(&r, &teacher, &ta, Some(StaffRole::Ta), T0).await.unwrap();
        assert!(matches!(s.set_staff(&r, &teacher, &teacher, None, T0).await, Err(CourseError::LastTeacher)));
        let r = s.course(&c.id).await.unwrap();
        assert_eq!((r.tas.clone(), r.students.clone()), (vec![ta], vec![learner]));
        let session = s.schedule_session(&r, T0.plus_secs(3600), T0.plus_secs(7200), 30, T0).await.unwrap();
        assert_eq!(s.sessions(&c.id).await.unwrap(), vec![session.clone()]);
        assert_eq!(s.session(&session.id).await.unwrap().1.course.id, c.id);
        for (start, end, cap) in
            [(7200, 3600, 30), (3600, 3600 + 13 * 3600, 30), (3600, 7200, 0), (3600, 7200, 100_000), (-7200, -3600, 30)]
        {
            assert!(
                s.schedule_session(&r, T0.plus_secs(start), T0.plus_secs(end), cap, T0).await.is_err(),
                "{start} {end} {cap}"
            );
        }
        let edited = s.update_course(&r, &input("Intro to MLS, 2nd ed.", 0, Visibility::Public)).await.unwrap();
        assert_eq!(s.course(&c.id).await.unwrap().course.title, edited.title);
    }
}

async fn bad_input_is_refused_with_the_field(store: &Arc<dyn CourseStore>, users: &[UserId]) {
    {
        let s = svc(store);
        let t = users[0].clone();
        let cases = [
            (input("", 0, Visibility::Public), "title"),
            (input(&"x".repeat(MAX_TITLE + 1), 0, Visibility::Public), "title"),
            (input("bell\u{7}", 0, Visibility::Public), "title"),
            (CourseInput { currency: "eur".into(), ..input("ok", 0, Visibility::Public) }, "currency"),
            (input("ok", -1, Visibility::Public), "price"),
            (input("ok", MAX_PRICE_MINOR + 1, Visibility::Public), "price"),
            (input("ok", 0, Visibility::Org), "org-only"),
        ];
        for (i, want) in cases {
            let e = s.create_course(None, &i, &t, T0).await.unwrap_err().to_string();
            assert!(e.contains(want), "{e} should mention {want}");
        }
        // Multi-line descriptions are fine; control characters in them are not.
        let mut ok = input("ok", 0, Visibility::Public);
        ok.description = "line one\nline two".into();
        assert!(s.create_course(None, &ok, &t, T0).await.is_ok());
        ok.description = "nul\u{0}".into();
        assert!(s.create_course(None, &ok, &t, T0).await.is_err());
        assert!(s.set_display_name(&t, "  Dr. Ada  ").await.unwrap().display_name == "Dr. Ada");
        let taught = s.create_course(None, &input("Named", 0, Visibility::Public), &t, T0).await.unwrap();
        assert_eq!(s.teacher_names(&taught.id).await.unwrap(), vec!["Dr. Ada".to_owned()]);
        assert!(s.set_display_name(&t, "Prof. Ada").await.is_ok(), "a name can change");
        assert_eq!(s.teacher_names(&taught.id).await.unwrap(), vec!["Prof. Ada".to_owned()]);
        assert!(s.set_display_name(&t, "").await.is_err());
        assert!(s.create_org(&"o".repeat(MAX_NAME + 1), &t, T0).await.is_err());
    }
}

async fn my_courses_are_those_taught_and_those_enrolled_in(store: &Arc<dyn CourseStore>, users: &[UserId]) {
    let s = svc(store);
    let (t, learner) = (&users[1], &users[3]);
    let (teaching0, enrolled0) = s.courses_of(t).await.unwrap();
    let later = T0.plus_secs(2_000_000);
    let a = s.create_course(None, &input("Mine A", 0, Visibility::Public), t, later).await.unwrap();
    let b = s.create_course(None, &input("Mine B", 0, Visibility::Public), t, later.plus_secs(1)).await.unwrap();
    let other = s.create_course(None, &input("Not mine", 0, Visibility::Public), learner, later).await.unwrap();
    let rec = s.course(&other.id).await.unwrap();
    assert!(s.enroll_free(&rec, t, later).await.unwrap());
    let (teaching, enrolled) = s.courses_of(t).await.unwrap();
    assert_eq!(teaching.len(), teaching0.len() + 2);
    assert_eq!((teaching[0].id.clone(), teaching[1].id.clone()), (b.id.clone(), a.id.clone()), "newest first");
    assert_eq!(enrolled.len(), enrolled0.len() + 1);
    assert!(enrolled.iter().any(|c| c.id == other.id));
    assert!(!enrolled.iter().any(|c| c.id == a.id), "teaching is not enrolling");
    let (lt, le) = s.courses_of(learner).await.unwrap();
    assert!(lt.iter().any(|c| c.id == other.id) && !le.iter().any(|c| c.id == a.id || c.id == b.id));
}

async fn catalog_searches_public_courses_and_pages(store: &Arc<dyn CourseStore>, users: &[UserId]) {
    let s = svc(store);
    let t = users[0].clone();
    let (_, before) = s.catalog(None, 0, 10).await.unwrap();
    let org = s.create_org("Acme", &t, T0).await.unwrap();
    // Newer than anything the other cases made, and with words no other case uses.
    let later = T0.plus_secs(1_000_000);
    for i in 0..25 {
        let title = if i % 5 == 0 { format!("Zyxrust {i}") } else { format!("Qwgo {i}") };
        s.create_course(None, &input(&title, 0, Visibility::Public), &t, later.plus_secs(i)).await.unwrap();
    }
    s.create_course(Some(&org.id), &input("Zyxrust internal", 0, Visibility::Org), &t, later.plus_secs(99))
        .await
        .unwrap();
    let (page, total) = s.catalog(None, 0, 10).await.unwrap();
    assert_eq!((page.len(), total), (10, before + 25), "org-only courses are not in the catalog");
    assert_eq!(page[0].title, "Qwgo 24", "newest first");
    let (second, _) = s.catalog(None, 1, 10).await.unwrap();
    assert_eq!(second[0].title, "Qwgo 14", "pages follow on");
    let (rust, total) = s.catalog(Some("zYXRUST"), 0, 100).await.unwrap();
    assert_eq!((rust.len(), total), (5, 5), "case-insensitive, public only");
    // LIKE's own characters are searched for literally.
    let (none, total) = s.catalog(Some("%"), 0, 100).await.unwrap();
    assert_eq!((none.len(), total), (0, 0));
    let (none, total) = s.catalog(Some("Qwgo_"), 0, 100).await.unwrap();
    assert_eq!((none.len(), total), (0, 0));
    assert!(s.catalog(None, 0, 0).await.is_err());
    assert!(s.catalog(None, 0, 1000).await.is_err());
    assert!(s.catalog(Some(&"q".repeat(MAX_QUERY + 1)), 0, 10).await.is_err());
    let (none, total) = s.catalog(None, 99_999, 10).await.unwrap();
    assert_eq!((none.len(), total), (0, before + 25));
}
