//! The REST calls a participant needs: sign up, sign in, WebSocket tickets, admission to a live session, and (for
//! the terminal's `new-session` helper) creating a course and a session.

use cloister_wire::{ErrorBody, LiveSessionOut};
use serde_json::{json, Value};
use std::time::Duration;
use zeroize::Zeroizing;

/// A refusal or a failure talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server refused with a stable code.
    #[error("{status} {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: String,
        /// Reason.
        message: String,
    },
    /// Network or protocol trouble.
    #[error("cannot talk to the server: {0}")]
    Transport(String),
}

impl ApiError {
    /// The stable code, when the server refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => Some(code),
            Self::Transport(_) => None,
        }
    }
}

/// A signed-in account: its id and bearer token (zeroized on drop, never printed).
#[derive(Clone)]
pub struct Login {
    /// Pseudonymous user id.
    pub user_id: String,
    token: Zeroizing<String>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("user_id", &self.user_id).field("token", &"<redacted>").finish()
    }
}

/// The server's REST API.
#[derive(Clone, Debug)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    tls_roots: Option<std::sync::Arc<rustls::RootCertStore>>,
}

fn transport(e: impl std::fmt::Display) -> ApiError {
    ApiError::Transport(e.to_string())
}

impl Api {
    /// `base` is `http://host:port` or `https://host:port`; `ca_pem` the certificate to trust for HTTPS (the
    /// server's self-signed one, or its CA).
    pub fn new(base: &str, ca_pem: Option<&[u8]>) -> Result<Self, ApiError> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(cloister_wire::CLIENT_POOL_IDLE_SECS));
        let mut roots = None;
        if let Some(pem) = ca_pem {
            let mut store = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                store.add(cert.map_err(transport)?).map_err(transport)?;
            }
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(pem).map_err(transport)?);
            roots = Some(std::sync::Arc::new(store));
        }
        let http = builder.build().map_err(transport)?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), tls_roots: roots })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Trust roots for the WebSocket's TLS, if any were given.
    pub(crate) fn tls_roots(&self) -> Option<std::sync::Arc<rustls::RootCertStore>> {
        self.tls_roots.clone()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&Login>,
        body: Option<Value>,
    ) -> Result<Value, ApiError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t.token.as_str());
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(transport)?;
        if (200..300).contains(&status) {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(transport);
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => Err(ApiError::Refused { status, code: e.error.code, message: e.error.message }),
            Err(_) => Err(ApiError::Refused { status, code: "unknown".into(), message: format!("HTTP {status}") }),
        }
    }

    /// Creates an account; returns its id and the recovery code (shown once).
    pub async fn sign_up(&self, email: &str, password: &str) -> Result<(String, Zeroizing<String>), ApiError> {
        let body = json!({"email": email, "password": password});
        let v = self.call(reqwest::Method::POST, "/api/v1/accounts", None, Some(body)).await?;
        let id = v["user_id"].as_str().unwrap_or_default().to_owned();
        Ok((id, Zeroizing::new(v["recovery_code"].as_str().unwrap_or_default().to_owned())))
    }

    /// Signs in.
    pub async fn log_in(&self, email: &str, password: &str) -> Result<Login, ApiError> {
        let body = json!({"email": email, "password": password});
        let v = self.call(reqwest::Method::POST, "/api/v1/sessions", None, Some(body)).await?;
        let token = Zeroizing::new(v["token"].as_str().unwrap_or_default().to_owned());
        let me = self
            .call(
                reqwest::Method::GET,
                "/api/v1/me",
                Some(&Login { user_id: String::new(), token: token.clone() }),
                None,
            )
            .await?;
        Ok(Login { user_id: me["user_id"].as_str().unwrap_or_default().to_owned(), token })
    }

    /// A single-use WebSocket ticket.
    pub async fn ticket(&self, login: &Login) -> Result<Zeroizing<String>, ApiError> {
        let v = self.call(reqwest::Method::POST, "/api/v1/ws-tickets", Some(login), None).await?;
        Ok(Zeroizing::new(v["ticket"].as_str().unwrap_or_default().to_owned()))
    }

    /// Asks to be admitted to a live session (enrollment, Cedar and capacity decide); returns the role.
    pub async fn admit(&self, login: &Login, session: &str) -> Result<String, ApiError> {
        let path = format!("/api/v1/live-sessions/{session}/participants");
        let v = self.call(reqwest::Method::POST, &path, Some(login), None).await?;
        Ok(v["role"].as_str().unwrap_or_default().to_owned())
    }

    /// Leaves a live session over REST (frees the seat; the delivery service proposes the Remove).
    pub async fn leave(&self, login: &Login, session: &str) -> Result<(), ApiError> {
        let path = format!("/api/v1/live-sessions/{session}/participants/me");
        self.call(reqwest::Method::DELETE, &path, Some(login), None).await.map(|_| ())
    }

    /// Enrolls in a free course.
    pub async fn enroll(&self, login: &Login, course: &str) -> Result<(), ApiError> {
        let path = format!("/api/v1/courses/{course}/enrollments");
        self.call(reqwest::Method::POST, &path, Some(login), None).await.map(|_| ())
    }

    /// Creates a free public course and a live session in it (now, for `hours`, `capacity` learners); returns
    /// `(course id, session)`.
    pub async fn new_session(
        &self,
        login: &Login,
        title: &str,
        hours: u32,
        capacity: u32,
    ) -> Result<(String, LiveSessionOut), ApiError> {
        let body =
            json!({"title": title, "description": "", "price_minor": 0, "currency": "EUR", "visibility": "public"});
        let course = self.call(reqwest::Method::POST, "/api/v1/courses", Some(login), Some(body)).await?;
        let course_id = course["id"].as_str().unwrap_or_default().to_owned();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let rfc = |t: u64| rfc3339(t);
        let body = json!({"starts_at": rfc(now.saturating_sub(60)), "ends_at": rfc(now + u64::from(hours) * 3600), "capacity": capacity});
        let path = format!("/api/v1/courses/{course_id}/sessions");
        let s = self.call(reqwest::Method::POST, &path, Some(login), Some(body)).await?;
        let session: LiveSessionOut = serde_json::from_value(s).map_err(transport)?;
        Ok((course_id, session))
    }
}

/// Unix seconds as RFC 3339 UTC (days from the civil-from-days algorithm; no leap seconds).
fn rfc3339(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{Api, Login};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use zeroize::Zeroizing;

    /// Reads one request's head; false when the peer closed first.
    async fn read_head(s: &mut tokio::net::TcpStream) -> bool {
        let mut head = Vec::new();
        let mut b = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&b[..n]),
            }
        }
        true
    }

    /// The server closes a keep-alive connection after `SERVER_HTTP1_IDLE_SECS` of silence; a request written at
    /// that moment is lost with the connection (seen in CI: "error sending request" on a call after a quiet 10 s).
    /// This server plays the worst case: it answers the first request on a connection and closes the connection on
    /// the second one without answering. The client must not have reused an idle connection that old.
    #[tokio::test]
    async fn a_connection_idle_for_the_pool_time_is_not_reused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if !read_head(&mut s).await {
                        return;
                    }
                    let body = br#"{"ticket":"t1"}"#;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    s.write_all(head.as_bytes()).await.unwrap();
                    s.write_all(body).await.unwrap();
                    // The second request on this connection is dropped with it.
                    let _ = read_head(&mut s).await;
                });
            }
        });
        let api = Api::new(&base, None).unwrap();
        let login = Login { user_id: String::new(), token: Zeroizing::new("token".into()) };
        assert_eq!(api.ticket(&login).await.unwrap().as_str(), "t1");
        tokio::time::sleep(Duration::from_secs(cloister_wire::CLIENT_POOL_IDLE_SECS) + Duration::from_millis(700))
            .await;
        assert_eq!(api.ticket(&login).await.unwrap().as_str(), "t1", "the stale connection was reused");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        const { assert!(2 * cloister_wire::CLIENT_POOL_IDLE_SECS <= cloister_wire::SERVER_HTTP1_IDLE_SECS) };
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
