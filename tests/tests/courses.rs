//! Courses through the real binary on SQLite and PostgreSQL: orgs and roles, public and org courses, the catalog,
//! free and paid enrollment, seat packs, live sessions, every decision through Cedar (denials audited), and the audit
//! log intact afterwards.

#![allow(clippy::unwrap_used, missing_docs)]

use reqwest::Method;
use serde_json::{json, Value};
use tests::{Backend, Server};

struct User {
    id: String,
    token: String,
}

async fn user(s: &Server, email: &str) -> User {
    let c = s.client();
    let body = json!({ "email": email, "password": "correct horse battery" });
    let r: Value = c.post(s.url("/api/v1/accounts")).json(&body).send().await.unwrap().json().await.unwrap();
    let id = r["user_id"].as_str().unwrap().to_owned();
    let r: Value = c.post(s.url("/api/v1/sessions")).json(&body).send().await.unwrap().json().await.unwrap();
    User { id, token: r["token"].as_str().unwrap().to_owned() }
}

async fn call(s: &Server, who: Option<&User>, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = s.client().request(method, s.url(path));
    if let Some(u) = who {
        req = req.bearer_auth(&u.token);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

async fn scenario(backend: Backend) {
    let mut s = Server::start(backend, &[]).await;
    let (admin, member, teacher, learner, outsider) = (
        user(&s, "admin@example.org").await,
        user(&s, "member@example.org").await,
        user(&s, "teacher@example.org").await,
        user(&s, "learner@example.org").await,
        user(&s, "outsider@example.org").await,
    );
    use Method as M;

    // An org, its people, and a cross-user attempt refused.
    let (st, org) = call(&s, Some(&admin), M::POST, "/api/v1/orgs", Some(json!({"name": "Acme Corp"}))).await;
    assert_eq!(st, 201, "{org}");
    let org_id = org["id"].as_str().unwrap().to_owned();
    let members = format!("/api/v1/orgs/{org_id}/members/{}", member.id);
    let (st, o) = call(&s, Some(&admin), M::PUT, &members, Some(json!({"role": "member"}))).await;
    assert_eq!((st, o["members"][0].as_str()), (200, Some(member.id.as_str())), "{o}");
    let (st, e) = call(&s, Some(&outsider), M::PUT, &members, Some(json!({"role": "admin"}))).await;
    assert_eq!((st, code(&e)), (403, "forbidden"));
    let last_admin = format!("/api/v1/orgs/{org_id}/members/{}", admin.id);
    let (st, e) = call(&s, Some(&admin), M::DELETE, &last_admin, None).await;
    assert_eq!((st, code(&e)), (409, "last_owner"));
    let (st, _) = call(&s, Some(&outsider), M::GET, &format!("/api/v1/orgs/{org_id}"), None).await;
    assert_eq!(st, 403);

    // A teacher's public free course and paid course; the catalog shows them with the chosen display name.
    let (st, _) =
        call(&s, Some(&teacher), M::PUT, "/api/v1/me/teacher-profile", Some(json!({"display_name": "Dr. Tee"}))).await;
    assert_eq!(st, 200);
    let new_course = |title: &str, price: i64| json!({"title": title, "description": "Hands-on", "price_minor": price, "currency": "EUR", "visibility": "public"});
    let (st, free) = call(&s, Some(&teacher), M::POST, "/api/v1/courses", Some(new_course("Intro to MLS", 0))).await;
    assert_eq!(st, 201, "{free}");
    let free_id = free["id"].as_str().unwrap().to_owned();
    let (_, paid) =
        call(&s, Some(&teacher), M::POST, "/api/v1/courses", Some(new_course("Advanced SFrame", 9900))).await;
    let paid_id = paid["id"].as_str().unwrap().to_owned();
    let (st, e) = call(&s, Some(&teacher), M::POST, "/api/v1/courses", Some(new_course("", 0))).await;
    assert_eq!((st, code(&e)), (422, "invalid_request"));
    let (st, page) = call(&s, None, M::GET, "/api/v1/catalog?q=mls", None).await;
    assert_eq!((st, page["total"].as_u64()), (200, Some(1)), "{page}");
    assert_eq!(page["courses"][0]["teachers"][0], "Dr. Tee");
    let (st, _) = call(&s, None, M::GET, "/api/v1/catalog?per_page=0", None).await;
    assert_eq!(st, 422);
    let (st, c) = call(&s, None, M::GET, &format!("/api/v1/courses/{free_id}"), None).await;
    assert_eq!((st, c["title"].as_str()), (200, Some("Intro to MLS")));

    // Enrollment: free at once (once), paid refused clearly, lists for staff only.
    let enroll = format!("/api/v1/courses/{free_id}/enrollments");
    let (st, en) = call(&s, Some(&learner), M::POST, &enroll, None).await;
    assert_eq!((st, en["new"].as_bool()), (201, Some(true)), "{en}");
    let (st, en) = call(&s, Some(&learner), M::POST, &enroll, None).await;
    assert_eq!((st, en["new"].as_bool()), (200, Some(false)));
    let (st, e) = call(&s, Some(&learner), M::POST, &format!("/api/v1/courses/{paid_id}/enrollments"), None).await;
    assert_eq!((st, code(&e)), (402, "payment_not_configured"));
    let (st, list) = call(&s, Some(&teacher), M::GET, &enroll, None).await;
    assert_eq!((st, list["students"][0].as_str()), (200, Some(learner.id.as_str())));
    let (st, _) = call(&s, Some(&learner), M::GET, &enroll, None).await;
    assert_eq!(st, 403);

    // A teacher's invitation enrolls in the paid course too, once.
    let (st, inv) = call(
        &s,
        Some(&teacher),
        M::POST,
        &format!("/api/v1/courses/{paid_id}/invitations"),
        Some(json!({"valid_days": 7})),
    )
    .await;
    assert_eq!(st, 201, "{inv}");
    let (st, _) = call(
        &s,
        Some(&learner),
        M::POST,
        &format!("/api/v1/courses/{paid_id}/invitations"),
        Some(json!({"valid_days": 7})),
    )
    .await;
    assert_eq!(st, 403, "students do not invite");
    let (st, en) =
        call(&s, Some(&learner), M::POST, "/api/v1/invitations/redeem", Some(json!({"code": inv["code"]}))).await;
    assert_eq!((st, en["via"].as_str()), (201, Some("invitation")), "{en}");
    let (st, e) =
        call(&s, Some(&outsider), M::POST, "/api/v1/invitations/redeem", Some(json!({"code": inv["code"]}))).await;
    assert_eq!((st, code(&e)), (409, "code_used"));

    // Live sessions: scheduled by the teacher, readable by participants only.
    let sessions = format!("/api/v1/courses/{free_id}/sessions");
    let (st, e) = call(
        &s,
        Some(&teacher),
        M::POST,
        &sessions,
        Some(json!({"starts_at": "2099-01-01T10:00:00Z", "ends_at": "2099-01-01T09:00:00Z", "capacity": 30})),
    )
    .await;
    assert_eq!((st, code(&e)), (422, "invalid_request"));
    let (st, ls) = call(
        &s,
        Some(&teacher),
        M::POST,
        &sessions,
        Some(json!({"starts_at": "2099-01-01T10:00:00Z", "ends_at": "2099-01-01T11:00:00Z", "capacity": 30})),
    )
    .await;
    assert_eq!(st, 201, "{ls}");
    let live = format!("/api/v1/live-sessions/{}", ls["id"].as_str().unwrap());
    assert_eq!(call(&s, Some(&learner), M::GET, &live, None).await.0, 200);
    assert_eq!(call(&s, Some(&outsider), M::GET, &live, None).await.0, 403);
    let (st, _) = call(
        &s,
        Some(&learner),
        M::POST,
        &sessions,
        Some(json!({"starts_at": "2099-01-01T10:00:00Z", "ends_at": "2099-01-01T11:00:00Z", "capacity": 30})),
    )
    .await;
    assert_eq!(st, 403, "students do not schedule");

    // Admission: a session of one seat takes one learner; staff always get in; outsiders never.
    let (st, small) = call(
        &s,
        Some(&teacher),
        M::POST,
        &sessions,
        Some(json!({"starts_at": "2099-02-01T10:00:00Z", "ends_at": "2099-02-01T11:00:00Z", "capacity": 1})),
    )
    .await;
    assert_eq!(st, 201, "{small}");
    let join = format!("/api/v1/live-sessions/{}/participants", small["id"].as_str().unwrap());
    let (st, p) = call(&s, Some(&learner), M::POST, &join, None).await;
    assert_eq!((st, p["role"].as_str(), p["learners"].as_u64()), (201, Some("learner"), Some(1)), "{p}");
    assert_eq!(call(&s, Some(&learner), M::POST, &join, None).await.0, 200, "joining again changes nothing");
    let (st, e) = call(&s, Some(&outsider), M::POST, &join, None).await;
    assert_eq!((st, code(&e)), (403, "forbidden"), "not enrolled");
    let second = user(&s, "second@example.org").await;
    assert_eq!(call(&s, Some(&second), M::POST, &enroll, None).await.0, 201);
    let (st, e) = call(&s, Some(&second), M::POST, &join, None).await;
    assert_eq!((st, code(&e)), (409, "session_full"));
    let (st, p) = call(&s, Some(&teacher), M::POST, &join, None).await;
    assert_eq!((st, p["role"].as_str()), (201, Some("staff")), "{p}");
    assert_eq!(call(&s, Some(&learner), M::DELETE, &format!("{join}/me"), None).await.0, 204);
    assert_eq!(call(&s, Some(&learner), M::DELETE, &format!("{join}/me"), None).await.0, 404);
    assert_eq!(call(&s, Some(&second), M::POST, &join, None).await.0, 201, "the freed seat");
    assert_eq!(call(&s, Some(&second), M::POST, "/api/v1/live-sessions/nope/participants", None).await.0, 404);

    // An org-only course and a seat pack for it: a member redeems once; others cannot use the same code.
    let body = json!({"org_id": org_id, "title": "Acme secure coding", "price_minor": 0, "currency": "EUR", "visibility": "org"});
    let (st, oc) = call(&s, Some(&admin), M::POST, "/api/v1/courses", Some(body.clone())).await;
    assert_eq!(st, 201, "{oc}");
    let oc_id = oc["id"].as_str().unwrap().to_owned();
    let (st, _) = call(&s, Some(&outsider), M::POST, "/api/v1/courses", Some(body)).await;
    assert_eq!(st, 403, "only the org's admins create org courses");
    assert_eq!(call(&s, None, M::GET, &format!("/api/v1/courses/{oc_id}"), None).await.0, 403);
    let (_, page) = call(&s, None, M::GET, "/api/v1/catalog", None).await;
    assert_eq!(page["total"].as_u64(), Some(2), "org courses are not in the catalog");
    let packs = format!("/api/v1/orgs/{org_id}/seat-packs");
    let (st, pack) =
        call(&s, Some(&admin), M::POST, &packs, Some(json!({"course_id": oc_id, "seats": 2, "valid_days": 30}))).await;
    assert_eq!(st, 201, "{pack}");
    let code0 = pack["codes"][0].as_str().unwrap().to_owned();
    let (st, _) =
        call(&s, Some(&member), M::POST, &packs, Some(json!({"course_id": oc_id, "seats": 2, "valid_days": 30}))).await;
    assert_eq!(st, 403);
    let redeem = "/api/v1/seat-codes/redeem";
    let (st, en) = call(&s, Some(&member), M::POST, redeem, Some(json!({"code": code0.to_lowercase()}))).await;
    assert_eq!((st, en["course_id"].as_str()), (201, Some(oc_id.as_str())), "{en}");
    let (st, e) = call(&s, Some(&outsider), M::POST, redeem, Some(json!({"code": code0}))).await;
    assert_eq!((st, code(&e)), (409, "code_used"));
    let (st, e) = call(&s, Some(&outsider), M::POST, redeem, Some(json!({"code": "AAAA-BBBB"}))).await;
    assert_eq!((st, code(&e)), (404, "code_unknown"));
    let (st, list) = call(&s, Some(&admin), M::GET, &packs, None).await;
    assert_eq!((st, list["seat_packs"][0]["used"].as_u64()), (200, Some(1)));
    assert!(list["seat_packs"][0].get("codes").is_none(), "codes are shown once");
    let (st, c) = call(&s, Some(&member), M::GET, &format!("/api/v1/courses/{oc_id}"), None).await;
    assert_eq!(st, 200, "{c}");

    // Deletion: only a course's teachers (or its org's admins) delete it, with everything of it; an org's admins
    // delete the org with its courses.
    let free_course = format!("/api/v1/courses/{free_id}");
    assert_eq!(call(&s, Some(&learner), M::DELETE, &free_course, None).await.0, 403);
    assert_eq!(call(&s, Some(&admin), M::DELETE, &free_course, None).await.0, 403, "not the admin's org");
    assert_eq!(call(&s, Some(&teacher), M::DELETE, "/api/v1/courses/not-an-id", None).await.0, 404);
    assert_eq!(call(&s, Some(&teacher), M::DELETE, &free_course, None).await.0, 204);
    assert_eq!(call(&s, Some(&teacher), M::GET, &free_course, None).await.0, 404);
    assert_eq!(call(&s, Some(&learner), M::GET, &live, None).await.0, 404, "its live sessions went with it");
    assert_eq!(call(&s, Some(&teacher), M::DELETE, &free_course, None).await.0, 404, "once");
    let org_path = format!("/api/v1/orgs/{org_id}");
    assert_eq!(call(&s, Some(&member), M::DELETE, &org_path, None).await.0, 403);
    assert_eq!(call(&s, Some(&outsider), M::DELETE, &org_path, None).await.0, 403);
    assert_eq!(call(&s, Some(&admin), M::DELETE, &org_path, None).await.0, 204);
    assert_eq!(call(&s, Some(&admin), M::GET, &org_path, None).await.0, 404);
    assert_eq!(call(&s, Some(&member), M::GET, &format!("/api/v1/courses/{oc_id}"), None).await.0, 404);
    let (_, page) = call(&s, None, M::GET, "/api/v1/catalog", None).await;
    assert_eq!(page["total"].as_u64(), Some(1), "the paid course is left");

    // Everything above left its trace, and the log verifies.
    s.shut_down();
    let out = s.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let text = tests::with_db!(s, pool => {
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT entry FROM audit_entries ORDER BY seq").fetch_all(pool).await.unwrap();
        rows.into_iter().map(|(e,)| String::from_utf8(e).unwrap()).collect::<Vec<_>>().join("\n")
    });
    for kind in [
        "enrolled",
        "seat_pack_created",
        "seat_redeemed",
        "role_changed",
        "authz_denied",
        "course_deleted",
        "org_deleted",
    ] {
        assert!(text.contains(&format!("\"kind\":\"{kind}\"")), "{kind} missing");
    }
    assert!(!text.contains(&code0), "seat codes never reach the audit log");
    assert!(
        text.contains(&format!(
            "\"kind\":\"course_deleted\",\"actor\":\"{}\",\"course\":\"{free_id}\",\"enrollments\":2",
            teacher.id
        )),
        "the free course's deletion names its two enrollments"
    );
    assert!(text.contains(&format!("\"course\":\"{oc_id}\"")) && text.contains(&format!("\"org\":\"{org_id}\"")));
    assert!(!text.contains("Dr. Tee") && !text.contains("example.org"), "no names or emails in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn courses_on_sqlite() {
    scenario(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn courses_on_postgres() {
    scenario(Backend::Postgres).await;
}
