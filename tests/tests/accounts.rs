//! System tests: the real `cloister` binary on port 0, real HTTP clients, SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, missing_docs)]

use cloister_testkit::canary;
use serde_json::{json, Value};
use sha2::Digest as _;
use std::io::{Read as _, Write as _};
use tests::{contains_ci, files_containing, Backend, Server};

async fn post(s: &Server, c: &reqwest::Client, path: &str, body: Value) -> (u16, Value) {
    let r = c.post(s.url(path)).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(s: &Server, c: &reqwest::Client, path: &str, token: &str) -> (u16, Value) {
    let r = c.get(s.url(path)).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
}

async fn lifecycle(backend: Backend) {
    let mut s = Server::start(backend, &[]).await;
    let c = s.client();
    let creds = json!({"email": "lena@example.org", "password": "lena-password"});
    let (st, created) = post(&s, &c, "/api/v1/accounts", creds.clone()).await;
    assert_eq!(st, 201, "{created}");
    let (st, body) = post(&s, &c, "/api/v1/accounts", creds.clone()).await;
    assert_eq!((st, code(&body)), (409, "email_taken"));
    let (st, session) = post(&s, &c, "/api/v1/sessions", creds.clone()).await;
    assert_eq!(st, 201);
    let token = session["token"].as_str().unwrap().to_owned();
    let (st, me) = get(&s, &c, "/api/v1/me", &token).await;
    assert_eq!((st, &me["user_id"]), (200, &created["user_id"]));
    let (st, export) = get(&s, &c, "/api/v1/me/export", &token).await;
    assert_eq!(st, 200);
    assert_eq!(export["sessions"].as_array().unwrap().len(), 1);

    // Data and sessions survive a graceful restart.
    let status = s.stop();
    assert!(status.success(), "exit status {status}\n{}", s.logs());
    assert!(s.stdout().contains("shutdown complete"));
    s.restart();
    let c = s.client();
    let (st, _) = get(&s, &c, "/api/v1/me", &token).await;
    assert_eq!(st, 200, "session survives restart");

    // Recovery revokes sessions.
    let (st, rec) = post(
        &s,
        &c,
        "/api/v1/accounts/recover",
        json!({"email": "lena@example.org", "recovery_code": created["recovery_code"], "new_password": "lena-new-password"}),
    )
    .await;
    assert_eq!(st, 200, "{rec}");
    assert_eq!(get(&s, &c, "/api/v1/me", &token).await.0, 401);
    let (st, session) =
        post(&s, &c, "/api/v1/sessions", json!({"email": "lena@example.org", "password": "lena-new-password"})).await;
    assert_eq!(st, 201);
    let token = session["token"].as_str().unwrap().to_owned();

    // Logout, then erase with a fresh session.
    let r = c.delete(s.url("/api/v1/sessions/current")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(get(&s, &c, "/api/v1/me", &token).await.0, 401);
    let (_, session) =
        post(&s, &c, "/api/v1/sessions", json!({"email": "lena@example.org", "password": "lena-new-password"})).await;
    let token = session["token"].as_str().unwrap().to_owned();
    let r = c.delete(s.url("/api/v1/me")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    s.restart();
    let c = s.client();
    let (st, body) = get(&s, &c, "/api/v1/me", &token).await;
    assert_eq!((st, code(&body)), (401, "invalid_token"));
    let (st, body) =
        post(&s, &c, "/api/v1/sessions", json!({"email": "lena@example.org", "password": "lena-new-password"})).await;
    assert_eq!((st, code(&body)), (401, "invalid_credentials"), "erased stays erased");
    assert!(!s.logs().contains("panicked"));
}

#[tokio::test]
async fn lifecycle_sqlite() {
    lifecycle(Backend::Sqlite).await;
}

#[tokio::test]
async fn lifecycle_postgres() {
    lifecycle(Backend::Postgres).await;
}

/// Random canary email and password go through sign-up, login, failed login, recovery and export; none of them (nor
/// the recovery codes and tokens handed out) may appear in any file of the data dir, the PostgreSQL cluster's files,
/// the server's logs (at debug level) or /metrics, in any letter case.
async fn canaries(backend: Backend) {
    let mut s = Server::start(backend, &[]).await;
    let c = s.client();
    let local = canary("mail");
    let email = format!("{}@Example.org", local.to_uppercase());
    let password = canary("pw");
    let password2 = canary("pw");
    let (st, created) = post(&s, &c, "/api/v1/accounts", json!({"email": email, "password": password})).await;
    assert_eq!(st, 201);
    let recovery = created["recovery_code"].as_str().unwrap().to_owned();
    assert_eq!(post(&s, &c, "/api/v1/accounts", json!({"email": email, "password": password})).await.0, 409);
    let (st, session) =
        post(&s, &c, "/api/v1/sessions", json!({"email": email.to_lowercase(), "password": password})).await;
    assert_eq!(st, 201);
    let token = session["token"].as_str().unwrap().to_owned();
    assert_eq!(post(&s, &c, "/api/v1/sessions", json!({"email": email, "password": password2})).await.0, 401);
    assert_eq!(get(&s, &c, "/api/v1/me/export", &token).await.0, 200);
    let (st, rec) = post(
        &s,
        &c,
        "/api/v1/accounts/recover",
        json!({"email": email, "recovery_code": recovery, "new_password": password2}),
    )
    .await;
    assert_eq!(st, 200);
    let recovery2 = rec["recovery_code"].as_str().unwrap().to_owned();
    let (_, session) = post(&s, &c, "/api/v1/sessions", json!({"email": email, "password": password2})).await;
    let token2 = session["token"].as_str().unwrap().to_owned();
    let metrics = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();

    let secrets = vec![local.clone(), password.clone(), password2.clone(), recovery.clone(), recovery2, token, token2];
    let canon = |code: &str| code.replace('-', "");
    let mut needles = secrets.clone();
    needles.push(canon(&recovery));
    for n in &needles {
        assert!(!contains_ci(&metrics, n), "secret in /metrics");
    }
    let pg_dir = match backend {
        Backend::Postgres => {
            // Force everything to disk before looking.
            let admin = cloister_testkit::postgres().admin_url().to_owned();
            let psql = cloister_testkit::postgres_bin_dir().unwrap().join("psql");
            let out = std::process::Command::new(psql).args([&admin, "-qc", "CHECKPOINT"]).output();
            assert!(out.is_ok_and(|o| o.status.success()), "CHECKPOINT");
            cloister_testkit::postgres().data_dir().map(|p| p.to_path_buf())
        }
        Backend::Sqlite => None,
    };
    // While running (SQLite WAL and -shm present), and again after a clean shutdown.
    for phase in ["running", "stopped"] {
        if phase == "stopped" {
            assert!(s.stop().success());
        }
        let hits = files_containing(&s.data_dir, &needles);
        assert!(hits.is_empty(), "{phase}: canaries in data dir files: {hits:?}");
        if let Some(dir) = &pg_dir {
            let hits = files_containing(dir, &needles);
            assert!(hits.is_empty(), "{phase}: canaries in PostgreSQL files: {hits:?}");
        }
        let logs = s.logs();
        assert!(logs.len() > 1000, "debug logs were captured ({} bytes)", logs.len());
        for n in &needles {
            assert!(!contains_ci(&logs, n), "{phase}: a canary is in the logs");
        }
    }
    // The canary check is not vacuous: the data dir does hold the database, and searching finds what is there.
    let db_files = files_containing(&s.data_dir, &["sqlite format 3".to_owned()]);
    if backend == Backend::Sqlite {
        assert!(!db_files.is_empty(), "the SQLite database is in the data dir");
    }
    let pepper = files_containing(&s.data_dir, &["# cloister email pepper".to_owned()]);
    assert_eq!(pepper.len(), 1, "the search reads files");
}

#[tokio::test]
async fn canaries_never_stored_logged_or_exported_sqlite() {
    canaries(Backend::Sqlite).await;
}

#[tokio::test]
async fn canaries_never_stored_logged_or_exported_postgres() {
    canaries(Backend::Postgres).await;
}

fn raw_request(s: &Server, request: &[u8]) -> String {
    let addr = s.base.trim_start_matches("http://");
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    tcp.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

async fn bad_input(backend: Backend) {
    let s = Server::start(backend, &[]).await;
    let c = s.client();
    let (_, _) =
        post(&s, &c, "/api/v1/accounts", json!({"email": "max@example.org", "password": "max-password"})).await;
    let (_, session) =
        post(&s, &c, "/api/v1/sessions", json!({"email": "max@example.org", "password": "max-password"})).await;
    let token = session["token"].as_str().unwrap().to_owned();

    let send_raw = |path: &'static str, body: Vec<u8>| {
        let c = c.clone();
        let url = s.url(path);
        async move {
            let r = c.post(url).header("content-type", "application/json").body(body).send().await.unwrap();
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/api/v1/accounts", b"{\"email\":".to_vec(), 400, "malformed_json"),
        (
            "/api/v1/accounts",
            b"{\"email\":\"a@b.cd\",\"password\":\"\xc3\x28abcdefgh\"}".to_vec(),
            400,
            "malformed_json",
        ),
        ("/api/v1/accounts", b"{\"email\":1,\"password\":2}".to_vec(), 422, "invalid_request"),
        ("/api/v1/accounts", b"{\"password\":\"12345678\"}".to_vec(), 422, "invalid_request"),
        (
            "/api/v1/accounts",
            format!("{{\"email\":\"a@b.cd\",\"password\":\"{}\"}}", "x".repeat(65)).into_bytes(),
            422,
            "invalid_password",
        ),
        ("/api/v1/accounts", b"{\"email\":\"a@b.cd\",\"password\":\"1234567\"}".to_vec(), 422, "invalid_password"),
        ("/api/v1/accounts", b"{\"email\":\"nope\",\"password\":\"12345678\"}".to_vec(), 422, "invalid_email"),
        ("/api/v1/accounts", vec![b' '; 1024 * 1024], 413, "payload_too_large"),
        ("/api/v1/sessions", vec![b'['; 1024 * 1024], 413, "payload_too_large"),
        ("/api/v1/sessions", b"{\"email\":\"max@example.org\",\"password\":[1]}".to_vec(), 422, "invalid_request"),
        ("/api/v1/accounts/recover", b"{}".to_vec(), 422, "invalid_request"),
    ];
    for (path, body, status, expected) in cases {
        let (st, body) = send_raw(path, body).await;
        assert_eq!((st, code(&body)), (status, expected), "{path}");
    }
    // Tokens: unknown, malformed, revoked.
    assert_eq!(
        code(&get(&s, &c, "/api/v1/me", "cls_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await.1),
        "invalid_token"
    );
    assert_eq!(code(&get(&s, &c, "/api/v1/me", "garbage").await.1), "invalid_token");
    let r = c.get(s.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(code(&r.json().await.unwrap()), "missing_token");
    // Methods and paths.
    let r = c.put(s.url("/api/v1/sessions")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), code(&r.json().await.unwrap())), (405, "method_not_allowed"));
    let r = c.get(s.url("/api/v2/anything")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), code(&r.json().await.unwrap())), (404, "not_found"));
    // Raw bytes on the socket: invalid UTF-8 body, and a request that is not HTTP at all.
    let body = b"{\"email\":\"\xff\xff@x.io\",\"password\":\"12345678\"}";
    let mut req = format!(
        "POST /api/v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let reply = raw_request(&s, &req);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("malformed_json"), "{reply}");
    let reply = raw_request(&s, b"\x16\x03\x01garbage that is not HTTP\r\n\r\n");
    assert!(!reply.contains("500"), "{reply}");

    // A flood of wrong logins gets 429 with Retry-After, and the server keeps serving everyone else.
    let mut saw_429 = false;
    for _ in 0..40 {
        let r = c
            .post(s.url("/api/v1/sessions"))
            .json(&json!({"email": "max@example.org", "password": "wrong-password"}))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 429 {
            assert!(r.headers().get("retry-after").is_some());
            saw_429 = true;
            break;
        }
    }
    assert!(saw_429, "login throttle engaged");
    assert_eq!(get(&s, &c, "/api/v1/me", &token).await.0, 200, "still serving");
    assert_eq!(c.get(s.url("/healthz")).send().await.unwrap().status().as_u16(), 200);
    let logs = s.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    let metrics = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("status=\"500\""), "no 500 was served:\n{metrics}");
}

#[tokio::test]
async fn bad_input_gets_stable_codes_sqlite() {
    bad_input(Backend::Sqlite).await;
}

#[tokio::test]
async fn bad_input_gets_stable_codes_postgres() {
    bad_input(Backend::Postgres).await;
}

#[tokio::test]
async fn https_with_a_self_signed_certificate() {
    let mut s = Server::start(Backend::Sqlite, &["--https"]).await;
    assert!(s.base.starts_with("https://127.0.0.1:"), "{}", s.base);
    let out = s.stdout();
    let printed = out.lines().find_map(|l| l.strip_prefix("tls certificate sha256 fingerprint ")).unwrap().to_owned();
    let pem = std::fs::read(s.data_dir.join("tls/localhost-cert.pem")).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_slice()).next().unwrap().unwrap();
    let fp: Vec<String> = sha2::Sha256::digest(der.as_ref()).iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(printed, fp.join(":"));
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.data_dir.join("tls/localhost-key.pem")).unwrap().permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
    let pepper_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.data_dir.join("pepper.key")).unwrap().permissions(),
    );
    assert_eq!(pepper_mode & 0o777, 0o600);

    let client =
        reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap()).build().unwrap();
    let url = s.base.replace("127.0.0.1", "localhost");
    let r = client.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // A client that does not trust the certificate is refused.
    assert!(reqwest::Client::new().get(format!("{url}/healthz")).send().await.is_err());
    // Restart: the same certificate is reused.
    s.restart();
    assert!(s.logs().matches(&printed).count() >= 2, "same fingerprint after restart");
}

#[test]
fn plain_http_is_refused_off_loopback_and_weak_settings_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(tests::cloister_bin())
        .args(["serve", "--plain-http", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg = dir.path().join("weak.toml");
    std::fs::write(&cfg, "[accounts.argon2]\nmemory_kib = 4096\niterations = 1\n").unwrap();
    let out = std::process::Command::new(tests::cloister_bin())
        .args(["serve", "--plain-http", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("OWASP"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Regression: the server panicked at shutdown when its stdout pipe had been closed by the parent.
#[test]
fn shutdown_with_a_closed_stdout_pipe_does_not_panic() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(tests::cloister_bin())
        .args(["serve", "--plain-http", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    assert!(lines.any(|l| l.unwrap().starts_with("listening on ")));
    drop(lines); // closes the read end of the pipe
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// SIGTERM while a request is in flight (headers sent, body still coming): the server finishes that request, answers
/// it, and only then exits cleanly.
#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    let mut s = Server::start(Backend::Sqlite, &[]).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let body = br#"{"email":"inflight@example.org","password":"inflight-password"}"#;
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /api/v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).unwrap();
    tcp.write_all(&body[..10]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Signal while the body is incomplete; then finish sending it.
    let _ = std::process::Command::new("kill").args(["-TERM", &s.pid().to_string()]).status();
    std::thread::sleep(std::time::Duration::from_millis(300));
    tcp.write_all(&body[10..]).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&reply).contains("recovery_code") {
                    break;
                }
            }
        }
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert!(reply.starts_with("HTTP/1.1 201"), "in-flight request answered: {reply}");
    drop(tcp);
    let status = s.stop_after_signal();
    assert!(status.success(), "clean exit: {status}");
    assert!(s.stdout().contains("shutdown complete"));
    // The account it created is there after a restart.
    s.restart();
    let c = s.client();
    let (st, _) =
        post(&s, &c, "/api/v1/sessions", json!({"email": "inflight@example.org", "password": "inflight-password"}))
            .await;
    assert_eq!(st, 201);
}
