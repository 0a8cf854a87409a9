//! Service tests: the whole router, called without a socket, on an in-memory store and a fake clock.

#![allow(clippy::unwrap_used, missing_docs)]

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use cloister_accounts::{Accounts, AccountsConfig, EmailHasher, UnixTime};
use cloister_server::api::{router, AppState};
use cloister_server::metrics::Metrics;
use cloister_server::serve::TokioOffload;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tower::ServiceExt as _;

const PEPPER: &str = "k1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";

struct Harness {
    app: axum::Router,
    now: Arc<AtomicI64>,
    state: AppState,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let now = Arc::new(AtomicI64::new(1_800_000_000));
    let clock_now = now.clone();
    let dir = tempfile::tempdir().unwrap();
    let db = cloister_store::Database::open_sqlite(dir.path()).await.unwrap();
    let (signer, _) = cloister_server::audit::load_or_create_key(&dir.path().join("audit.key")).unwrap();
    let audit = cloister_server::audit::AuditLog::open(db.clone(), signer, "test".into()).await.unwrap();
    let accounts = Accounts::new(
        db.account_store(),
        EmailHasher::from_pepper_text(PEPPER).unwrap(),
        AccountsConfig::default(),
        Arc::new(TokioOffload::new(4)),
    )
    .unwrap();
    let state = AppState {
        accounts: Arc::new(accounts),
        metrics: Arc::new(Metrics::default()),
        clock: Arc::new(move || UnixTime(clock_now.load(Ordering::SeqCst))),
        policy: Arc::new(cloister_policy::Policy::embedded().unwrap()),
        audit: Arc::new(audit),
        courses: Arc::new(cloister_courses::Courses::new(
            db.course_store(),
            Arc::new(cloister_courses::PaymentsNotConfigured),
            cloister_courses::CoursesConfig::default(),
        )),
        live: cloister_server::live::LiveHub::open(
            db.clone(),
            cloister_e2ee::group::ExternalSenderIdentity::generate().unwrap(),
            cloister_ds::Limits::default(),
            None,
            None,
        )
        .await
        .unwrap()
        .0,
        live_limits: cloister_ds::Limits::default(),
        db,
        tickets: Default::default(),
    };
    Harness { app: router(state.clone()), now, state, _dir: dir }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    raw: Vec<u8>,
}

impl Harness {
    async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let raw = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Reply { status, headers, body, raw }
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(&v).unwrap())
            }
            None => Body::empty(),
        };
        self.send(b.body(body).unwrap()).await
    }

    async fn raw_post(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
        let mut b = Request::builder().method(Method::POST).uri(path);
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        self.send(b.body(Body::from(body)).unwrap()).await
    }

    async fn sign_up_and_log_in(&self, email: &str, password: &str) -> String {
        let r = self
            .call(Method::POST, "/api/v1/accounts", None, Some(json!({"email": email, "password": password})))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let r = self
            .call(Method::POST, "/api/v1/sessions", None, Some(json!({"email": email, "password": password})))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body["token"].as_str().unwrap().to_owned()
    }
}

fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "body: {}", String::from_utf8_lossy(&r.raw));
    assert_eq!(r.body["error"]["code"], code, "body: {}", String::from_utf8_lossy(&r.raw));
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(r.body.as_object().unwrap().len(), 1, "only the error key");
}

#[tokio::test]
async fn account_lifecycle() {
    let h = harness().await;
    let r = h
        .call(
            Method::POST,
            "/api/v1/accounts",
            None,
            Some(json!({"email": "Ann@Example.org", "password": "s3cret-pass"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let user_id = r.body["user_id"].as_str().unwrap().to_owned();
    let code = r.body["recovery_code"].as_str().unwrap().to_owned();
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");

    let r = h
        .call(
            Method::POST,
            "/api/v1/sessions",
            None,
            Some(json!({"email": "ann@example.org", "password": "s3cret-pass"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let token = r.body["token"].as_str().unwrap().to_owned();
    assert!(r.body["expires_at"].as_str().unwrap().ends_with('Z'));

    let r = h.call(Method::GET, "/api/v1/me", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["user_id"], user_id.as_str());

    let r = h.call(Method::GET, "/api/v1/me/export", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["account"]["user_id"], user_id.as_str());
    assert_eq!(r.body["sessions"].as_array().unwrap().len(), 1);
    let export = String::from_utf8_lossy(&r.raw).to_string();
    assert!(!export.contains("ann@"), "export holds no email");
    assert!(!export.contains("$argon2id$"), "export withholds the password hash");

    // Recovery: new password and code; the old session dies.
    let r = h
        .call(
            Method::POST,
            "/api/v1/accounts/recover",
            None,
            Some(json!({"email": "ann@example.org", "recovery_code": code, "new_password": "brand-new-pass"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_ne!(r.body["recovery_code"].as_str().unwrap(), code);
    assert_error(&h.call(Method::GET, "/api/v1/me", Some(&token), None).await, 401, "invalid_token");

    let token = h
        .call(
            Method::POST,
            "/api/v1/sessions",
            None,
            Some(json!({"email": "ann@example.org", "password": "brand-new-pass"})),
        )
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = h.call(Method::DELETE, "/api/v1/sessions/current", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_error(&h.call(Method::GET, "/api/v1/me", Some(&token), None).await, 401, "invalid_token");
}

#[tokio::test]
async fn erasure_is_final() {
    let h = harness().await;
    let token = h.sign_up_and_log_in("bo@example.org", "password-bo").await;
    let second = h
        .call(
            Method::POST,
            "/api/v1/sessions",
            None,
            Some(json!({"email": "bo@example.org", "password": "password-bo"})),
        )
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(h.call(Method::DELETE, "/api/v1/me", Some(&token), None).await.status, StatusCode::NO_CONTENT);
    assert_error(&h.call(Method::GET, "/api/v1/me", Some(&token), None).await, 401, "invalid_token");
    assert_error(&h.call(Method::GET, "/api/v1/me", Some(&second), None).await, 401, "invalid_token");
    assert_error(&h.call(Method::DELETE, "/api/v1/me", Some(&token), None).await, 401, "invalid_token");
    let r = h
        .call(
            Method::POST,
            "/api/v1/sessions",
            None,
            Some(json!({"email": "bo@example.org", "password": "password-bo"})),
        )
        .await;
    assert_error(&r, 401, "invalid_credentials");
}

#[tokio::test]
async fn login_does_not_reveal_whether_an_email_exists() {
    let h = harness().await;
    h.sign_up_and_log_in("cy@example.org", "password-cy").await;
    let wrong = h
        .call(
            Method::POST,
            "/api/v1/sessions",
            None,
            Some(json!({"email": "cy@example.org", "password": "password-xx"})),
        )
        .await;
    let unknown = h
        .call(
            Method::POST,
            "/api/v1/sessions",
            None,
            Some(json!({"email": "nobody@example.org", "password": "password-cy"})),
        )
        .await;
    assert_error(&wrong, 401, "invalid_credentials");
    assert_eq!(wrong.raw, unknown.raw, "same body");
    assert_eq!(wrong.status, unknown.status);
    assert_eq!(wrong.headers.len(), unknown.headers.len());
}

#[tokio::test]
async fn sign_up_of_a_taken_email_is_409() {
    let h = harness().await;
    h.sign_up_and_log_in("di@example.org", "password-di").await;
    let r = h
        .call(
            Method::POST,
            "/api/v1/accounts",
            None,
            Some(json!({"email": "DI@example.org", "password": "another-pass"})),
        )
        .await;
    assert_error(&r, 409, "email_taken");
}

#[tokio::test]
async fn expired_and_malformed_tokens_are_refused() {
    let h = harness().await;
    let token = h.sign_up_and_log_in("ed@example.org", "password-ed").await;
    assert_eq!(h.call(Method::GET, "/api/v1/me", Some(&token), None).await.status, StatusCode::OK);
    h.now.fetch_add(12 * 3600, Ordering::SeqCst);
    assert_error(&h.call(Method::GET, "/api/v1/me", Some(&token), None).await, 401, "invalid_token");
    // The purge job finds nothing left of it.
    assert_eq!(h.state.accounts.purge_expired((h.state.clock)()).await.unwrap(), 0);

    assert_error(&h.call(Method::GET, "/api/v1/me", None, None).await, 401, "missing_token");
    assert_error(&h.call(Method::GET, "/api/v1/me", Some("not-a-token"), None).await, 401, "invalid_token");
    let unknown = format!("cls_{}", "A".repeat(43));
    assert_error(&h.call(Method::GET, "/api/v1/me", Some(&unknown), None).await, 401, "invalid_token");
    let r = h
        .send(
            Request::get("/api/v1/me").header(header::AUTHORIZATION, "Basic Zm9vOmJhcg==").body(Body::empty()).unwrap(),
        )
        .await;
    assert_error(&r, 401, "missing_token");
    assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
}

#[tokio::test]
async fn purge_job_deletes_expired_sessions() {
    let h = harness().await;
    h.sign_up_and_log_in("fay@example.org", "password-fa").await;
    h.sign_up_and_log_in("gus@example.org", "password-gu").await;
    h.now.fetch_add(12 * 3600 + 1, Ordering::SeqCst);
    assert_eq!(h.state.accounts.purge_expired((h.state.clock)()).await.unwrap(), 2);
}

#[tokio::test]
async fn bad_input_gets_stable_codes() {
    let h = harness().await;
    let token = h.sign_up_and_log_in("hal@example.org", "password-ha").await;
    let post = |body: &'static [u8]| h.raw_post("/api/v1/accounts", Some("application/json"), body.to_vec());

    assert_error(&post(b"{").await, 400, "malformed_json");
    assert_error(&post(b"").await, 400, "malformed_json");
    assert_error(&post(b"{\"email\":\"a@b.cd\",\"password\":\"12345678\"} trailing").await, 400, "malformed_json");
    assert_error(&post(b"{\"email\":\"a@b.cd\",\"password\":\"\xff\xfe\xfd12345\"}").await, 400, "malformed_json");
    assert_error(&post(b"{\"email\":42,\"password\":\"12345678\"}").await, 422, "invalid_request");
    assert_error(&post(b"{\"email\":\"a@b.cd\"}").await, 422, "invalid_request");
    assert_error(
        &post(b"{\"email\":\"a@b.cd\",\"password\":\"12345678\",\"admin\":true}").await,
        422,
        "invalid_request",
    );
    assert_error(&post(b"[]").await, 422, "invalid_request");
    assert_error(&post(b"{\"email\":\"not-an-email\",\"password\":\"12345678\"}").await, 422, "invalid_email");
    assert_error(&post(b"{\"email\":\"x@y.zz\",\"password\":\"1234567\"}").await, 422, "invalid_password");
    let long = format!("{{\"email\":\"x@y.zz\",\"password\":\"{}\"}}", "p".repeat(65));
    assert_error(
        &h.raw_post("/api/v1/accounts", Some("application/json"), long.into_bytes()).await,
        422,
        "invalid_password",
    );
    let ok64 = format!("{{\"email\":\"x@y.zz\",\"password\":\"{}\"}}", "é".repeat(64));
    assert_eq!(
        h.raw_post("/api/v1/accounts", Some("application/json"), ok64.into_bytes()).await.status,
        StatusCode::CREATED
    );

    // Size: 1 MiB and just over 8 KiB are refused before parsing.
    let mib = vec![b'{'; 1024 * 1024];
    assert_error(&h.raw_post("/api/v1/accounts", Some("application/json"), mib).await, 413, "payload_too_large");
    let over = format!("{{\"email\":\"x@y.zz\",\"password\":\"{}\"}}", "p".repeat(8 * 1024));
    assert_error(
        &h.raw_post("/api/v1/sessions", Some("application/json"), over.into_bytes()).await,
        413,
        "payload_too_large",
    );

    // Content type.
    assert_error(&h.raw_post("/api/v1/accounts", None, b"{}".to_vec()).await, 415, "unsupported_media_type");
    assert_error(
        &h.raw_post("/api/v1/accounts", Some("text/plain"), b"{}".to_vec()).await,
        415,
        "unsupported_media_type",
    );
    let r = h
        .raw_post(
            "/api/v1/sessions",
            Some("application/json; charset=utf-8"),
            b"{\"email\":\"hal@example.org\",\"password\":\"password-ha\"}".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // Routes and methods.
    assert_error(&h.call(Method::GET, "/api/v1/nope", None, None).await, 404, "not_found");
    assert_error(&h.call(Method::GET, "/", None, None).await, 404, "not_found");
    assert_error(&h.call(Method::GET, "/api/v1/accounts", None, None).await, 405, "method_not_allowed");
    assert_error(&h.call(Method::PUT, "/api/v1/me", Some(&token), None).await, 405, "method_not_allowed");
    assert_error(&h.call(Method::GET, "/api/v1/sessions/current", Some(&token), None).await, 405, "method_not_allowed");

    // Still serving.
    assert_eq!(h.call(Method::GET, "/api/v1/me", Some(&token), None).await.status, StatusCode::OK);
    assert_eq!(h.call(Method::GET, "/healthz", None, None).await.body["status"], "ok");
}

#[tokio::test]
async fn login_floods_get_429_with_retry_after() {
    let h = harness().await;
    h.sign_up_and_log_in("ida@example.org", "password-id").await;
    let mut limited = None;
    for _ in 0..40 {
        let r = h
            .call(
                Method::POST,
                "/api/v1/sessions",
                None,
                Some(json!({"email": "ida@example.org", "password": "wrong-password"})),
            )
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        assert_error(&r, 401, "invalid_credentials");
    }
    let r = limited.expect("throttle engages");
    assert_error(&r, 429, "rate_limited");
    // Throttled attempts are counted, then written as one audit entry per interval (not one per attempt).
    for _ in 0..3 {
        let again = h
            .call(
                Method::POST,
                "/api/v1/sessions",
                None,
                Some(json!({"email": "ida@example.org", "password": "x-x-x-x-x"})),
            )
            .await;
        assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS);
    }
    h.state.audit.flush_throttled(1).await.unwrap();
    let (entries, _) = h.state.audit.entries(0, 1000).await.unwrap();
    let throttled: Vec<String> = entries
        .iter()
        .map(|(_, e)| String::from_utf8(e.clone()).unwrap())
        .filter(|e| e.contains("sign_in_throttled"))
        .collect();
    assert_eq!(throttled.len(), 1, "{throttled:?}");
    assert!(throttled[0].contains(r#""count":4"#), "{}", throttled[0]);
    assert!(!throttled[0].contains("ida@"), "no email in the audit log");
    h.state.audit.flush_throttled(2).await.unwrap();
    assert_eq!(h.state.audit.entries(0, 1000).await.unwrap().0.len(), entries.len(), "nothing to flush: no entry");
    let retry: u64 = r.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    // After waiting, attempts are allowed again.
    h.now.fetch_add(retry as i64 + 1, Ordering::SeqCst);
    let r = h
        .call(
            Method::POST,
            "/api/v1/sessions",
            None,
            Some(json!({"email": "ida@example.org", "password": "password-id"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn metrics_use_route_templates_only() {
    let h = harness().await;
    let canary = cloister_testkit::canary("cnry");
    let email = format!("{canary}@example.org");
    h.sign_up_and_log_in(&email, &format!("pw-{canary}")).await;
    let _ = h.call(Method::GET, &format!("/api/v1/{canary}"), None, None).await;
    let r = h.send(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let text = String::from_utf8(r.raw).unwrap();
    assert!(
        text.contains(r#"cloister_http_requests_total{route="/api/v1/sessions",method="POST",status="201"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",method="GET",status="404""#), "{text}");
    assert!(!text.to_lowercase().contains(&canary), "canary in metrics");
}

#[tokio::test]
async fn sign_up_floods_from_one_address_get_429() {
    let h = harness().await;
    let mut limited = None;
    for i in 0..30 {
        let r = h
            .call(
                Method::POST,
                "/api/v1/accounts",
                None,
                Some(json!({"email": format!("u{i}@example.org"), "password": "password-xx"})),
            )
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((i, r));
            break;
        }
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let (i, r) = limited.expect("sign-up throttle engages");
    assert_eq!(i, 10, "burst of 10 sign-ups per address");
    assert_error(&r, 429, "rate_limited");
    assert!(r.headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn ws_tickets_are_for_signed_in_users_and_never_repeat() {
    let h = harness().await;
    assert_error(&h.call(Method::POST, "/api/v1/ws-tickets", None, None).await, 401, "missing_token");
    let token = h.sign_up_and_log_in("ws@example.org", "correct horse battery").await;
    let a = h.call(Method::POST, "/api/v1/ws-tickets", Some(&token), None).await;
    let b = h.call(Method::POST, "/api/v1/ws-tickets", Some(&token), None).await;
    assert_eq!((a.status, b.status), (StatusCode::CREATED, StatusCode::CREATED), "{:?}", a.body);
    let (ta, tb) = (a.body["ticket"].as_str().unwrap(), b.body["ticket"].as_str().unwrap());
    assert!(ta.starts_with("cwt_") && ta != tb);
    assert!(a.body["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    let book = &h.state.tickets;
    let user = book.lock().unwrap().redeem(ta, h.state.now_ms());
    assert!(user.is_some(), "the ticket names its user");
    assert!(book.lock().unwrap().redeem(ta, h.state.now_ms()).is_none(), "once");
}

#[tokio::test]
async fn the_openapi_document_describes_exactly_the_routes() {
    let h = harness().await;
    let served = h.call(Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(served.status, StatusCode::OK);
    let doc: Value = serde_json::from_str(cloister_server::api::OPENAPI).unwrap();
    assert_eq!(served.body, doc);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.push((method.to_uppercase(), path.clone()));
            assert!(op["summary"].is_string(), "{method} {path} has a summary");
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has responses");
            // Every schema a response or body names exists.
            for r in op.to_string().split("#/components/schemas/").skip(1) {
                let name = r.split('"').next().unwrap();
                assert!(doc["components"]["schemas"][name].is_object(), "{method} {path}: schema {name} is defined");
            }
        }
    }
    let mut routed: Vec<(String, String)> =
        cloister_server::api::route_list().into_iter().map(|(m, p)| (m.to_owned(), p.to_owned())).collect();
    documented.sort();
    routed.sort();
    assert_eq!(documented, routed, "openapi.json and the router disagree");
    // And every documented route is really served (not the "no such route" fallback, not 405).
    for (method, path) in &routed {
        let r = h.call(Method::from_bytes(method.as_bytes()).unwrap(), path, None, None).await;
        assert_ne!(r.body["error"]["message"], "no such route", "{method} {path}");
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
    }
    // Every error response names real codes: "code", "code / code" or "code: explanation".
    let codes: Vec<&str> = cloister_wire::ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let mut checked = 0;
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            for (status, resp) in op["responses"].as_object().unwrap() {
                if !status.starts_with('4') && !status.starts_with('5') {
                    continue;
                }
                let desc = resp["description"].as_str().unwrap();
                for part in desc.split(':').next().unwrap().split(" / ") {
                    let code = part.split_whitespace().next().unwrap_or("");
                    assert!(codes.contains(&code), "{status} {desc:?}: {code:?} is not an ErrorCode");
                    let listed = cloister_wire::ErrorCode::ALL.iter().find(|c| c.as_str() == code).unwrap();
                    assert_eq!(listed.status().to_string(), *status, "{code} is documented under the wrong status");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 50, "{checked}");
}

#[tokio::test]
async fn denials_are_audited_but_cannot_grow_the_log_at_will() {
    let h = harness().await;
    let token = h.sign_up_and_log_in("mallory@example.org", "password-mm").await;
    let (before, _) = h.state.audit.entries(0, 10_000).await.unwrap();
    let n = cloister_server::audit::DENIALS_PER_INTERVAL + 30;
    for _ in 0..n {
        let r = h.call(Method::GET, "/api/v1/audit/checkpoint", Some(&token), None).await;
        assert_error(&r, 403, "forbidden");
    }
    let (after, _) = h.state.audit.entries(0, 10_000).await.unwrap();
    let denied = after.len() - before.len();
    assert_eq!(denied as u64, cloister_server::audit::DENIALS_PER_INTERVAL, "one entry each up to the cap");
    h.state.audit.flush_throttled(1).await.unwrap();
    let (flushed, _) = h.state.audit.entries(0, 10_000).await.unwrap();
    let last = String::from_utf8(flushed.last().unwrap().1.clone()).unwrap();
    assert!(last.contains(r#""kind":"authz_denied_suppressed""#) && last.contains(r#""count":30"#), "{last}");
    // A new interval records again.
    let r = h.call(Method::GET, "/api/v1/audit/checkpoint", Some(&token), None).await;
    assert_error(&r, 403, "forbidden");
    assert_eq!(h.state.audit.entries(0, 10_000).await.unwrap().0.len(), flushed.len() + 1);
}

/// A web build's directory: an `index.html` and `assets/` holding `files` (name, contents).
fn web_build(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "<!doctype html><title>t</title>").unwrap();
    std::fs::create_dir(web.path().join("assets")).unwrap();
    for (name, contents) in files {
        std::fs::write(web.path().join("assets").join(name), contents).unwrap();
    }
    web
}

#[tokio::test]
async fn only_the_web_builds_content_named_assets_may_be_cached() {
    let h = harness().await;
    let web = web_build(&[("index-AbC123.js", b"export {};")]);
    let app = cloister_server::api::router_with_web(h.state.clone(), Some(web.path().to_owned()));
    let get = |path: &str| {
        let app = app.clone();
        let req = Request::builder().uri(path).body(Body::empty()).unwrap();
        async move { app.oneshot(req).await.unwrap() }
    };
    let r = get("/assets/index-AbC123.js").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CACHE_CONTROL], "public, max-age=31536000, immutable");
    for path in ["/", "/index.html", "/assets/missing-XyZ.js", "/api/v1/catalog"] {
        let r = get(path).await;
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store", "{path}: {}", r.status());
    }
}

#[tokio::test]
async fn an_assets_gzip_copy_goes_to_browsers_that_accept_gzip_and_only_to_them() {
    let h = harness().await;
    let plain = b"\0asm core bytes ".repeat(64);
    // What `cargo xtask web` writes beside it (contents need not be real gzip for the server's choice).
    let gz = b"gzip copy".to_vec();
    let web = web_build(&[("core-AbC.wasm", &plain), ("core-AbC.wasm.gz", &gz)]);
    let app = cloister_server::api::router_with_web(h.state.clone(), Some(web.path().to_owned()));
    let get = |accept: Option<&'static str>| {
        let app = app.clone();
        let mut req = Request::builder().uri("/assets/core-AbC.wasm");
        if let Some(a) = accept {
            req = req.header(header::ACCEPT_ENCODING, a);
        }
        async move { app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap() }
    };
    let r = get(Some("gzip, deflate, br, zstd")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
    assert_eq!(r.headers()[header::CONTENT_TYPE], "application/wasm", "streaming compilation needs the wasm type");
    assert_eq!(r.headers()[header::CACHE_CONTROL], "public, max-age=31536000, immutable");
    assert_eq!(r.headers()[header::VARY], "accept-encoding", "a shared cache must not mix the two");
    assert_eq!(axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap().as_ref(), gz.as_slice());
    for accept in [None, Some("identity"), Some("br")] {
        let r = get(accept).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none(), "{accept:?}");
        assert_eq!(r.headers()[header::VARY], "accept-encoding");
        assert_eq!(axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap().as_ref(), plain.as_slice());
    }
}
