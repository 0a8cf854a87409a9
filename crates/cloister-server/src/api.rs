//! The HTTP API: routes, the JSON extractor, authentication, and the one error type every handler returns.

use crate::audit::{AuditError, AuditLog};
use crate::courses_api as c;
use crate::metrics::{self, Metrics};
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::{self as mw, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::{Json, Router};
use cloister_accounts::{AccountError, Accounts, Authenticated, UnixTime};

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::OutOfRange => Self::new(ErrorCode::NotFound, "no such entry or tree size in the audit log"),
            e @ (AuditError::Store(_) | AuditError::Gap(_)) => Self::internal(&e),
        }
    }
}
use cloister_policy::{Action, Policy, Principal, Resource};
use cloister_wire::{
    AccountCreated, AuditCheckpoint, AuditEntries, AuditEntryOut, AuditProof, Credentials, ErrorBody, ErrorCode,
    ErrorDetail, Health, Me, RecoverRequest, Recovered, SessionCreated, WsTicket,
};
use serde::de::DeserializeOwned;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// Largest request body any endpoint accepts; larger ones are refused before parsing or hashing.
pub const MAX_BODY_BYTES: usize = 8 * 1024;

/// A clock: the only place the server reads wall time, replaceable in tests.
pub type Clock = Arc<dyn Fn() -> UnixTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        let secs =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        UnixTime(secs)
    })
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The account service.
    pub accounts: Arc<Accounts>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Wall clock.
    pub clock: Clock,
    /// Authorization policies (Cedar).
    pub policy: Arc<Policy>,
    /// The tamper-evident audit log.
    pub audit: Arc<AuditLog>,
    /// The database (roles; domain services hold their own stores).
    pub db: cloister_store::Database,
    /// The course service.
    pub courses: Arc<cloister_courses::Courses>,
    /// Outstanding WebSocket tickets (in memory, hashed; see `cloister_accounts::TicketBook`).
    pub tickets: Arc<std::sync::Mutex<cloister_accounts::TicketBook>>,
    /// The delivery service behind `/api/v1/ws`.
    pub live: Arc<crate::live::LiveHub>,
    /// Its limits.
    pub live_limits: cloister_ds::Limits,
}

impl AppState {
    /// Now, in milliseconds (audit entries).
    pub fn now_ms(&self) -> i64 {
        (self.clock)().0.saturating_mul(1000)
    }

    /// The principal for a caller: anonymous, or a user with their platform roles.
    pub async fn principal(&self, auth: Option<&Authenticated>) -> Result<Principal, ApiError> {
        let Some(auth) = auth else { return Ok(Principal::Anonymous) };
        self.principal_of(&auth.user_id.to_string()).await
    }

    /// The principal for a signed-in user id (a WebSocket's ticket named it).
    pub async fn principal_of(&self, user_id: &str) -> Result<Principal, ApiError> {
        let id = user_id.to_owned();
        let reviewer = self.db.has_platform_role(&id, REVIEWER_ROLE).await.map_err(|e| ApiError::internal(&e))?;
        Ok(Principal::User { id, reviewer })
    }

    /// Asks the policy; a denial is recorded in the audit log and answered 403 `forbidden`.
    pub async fn authorize(
        &self,
        auth: Option<&Authenticated>,
        action: Action,
        resource: &Resource,
    ) -> Result<(), ApiError> {
        let principal = self.principal(auth).await?;
        self.authorize_principal(principal, action, resource).await
    }

    /// [`Self::authorize`] for a principal already known.
    pub async fn authorize_principal(
        &self,
        principal: Principal,
        action: Action,
        resource: &Resource,
    ) -> Result<(), ApiError> {
        match self.policy.authorize(&principal, action, resource) {
            Ok(d) if d.allowed => Ok(()),
            Ok(d) => {
                let (principal, action, resource) = d.request;
                self.audit.record_denial(principal, action, resource, self.now_ms()).await;
                Err(ApiError::new(ErrorCode::Forbidden, "the authorization policy does not allow this"))
            }
            Err(e) => {
                // The server built a request the schema refuses: a bug. Deny, and say so in the log.
                tracing::error!(error = %e, "authorization request does not fit the schema");
                Err(ApiError::new(ErrorCode::Forbidden, "the authorization policy does not allow this"))
            }
        }
    }
}

/// The platform role name of compliance reviewers.
pub const REVIEWER_ROLE: &str = "reviewer";

/// The peer address of the connection, inserted by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

fn client_ip(parts: &Parts) -> IpAddr {
    parts.extensions.get::<ClientAddr>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.0.ip())
}

/// The client's IP address (unspecified when the router is called without a socket, as in tests).
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(client_ip(parts)))
    }
}

/// An API error: a stable code, a human message, and for 429 a retry delay.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after: None }
    }

    /// The opaque 500; the cause goes to the log (causes never hold user data: see `StoreError`).
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(ErrorCode::Internal, "internal server error; the cause has been logged")
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody { error: ErrorDetail { code: self.code.as_str().to_owned(), message: self.message } };
        let mut resp = (status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        let code = match &e {
            AccountError::InvalidEmail => ErrorCode::InvalidEmail,
            AccountError::InvalidPassword(_) => ErrorCode::InvalidPassword,
            AccountError::EmailTaken => ErrorCode::EmailTaken,
            AccountError::InvalidCredentials => ErrorCode::InvalidCredentials,
            AccountError::InvalidToken => ErrorCode::InvalidToken,
            AccountError::RateLimited { retry_after_secs } => {
                return Self {
                    code: ErrorCode::RateLimited,
                    message: e.to_string(),
                    retry_after: Some(*retry_after_secs),
                }
            }
            _ => return Self::internal(&e),
        };
        Self::new(code, e.to_string())
    }
}

/// A JSON body: `Content-Type: application/json`, at most [`MAX_BODY_BYTES`], each failure with its own code.
pub struct ApiJson<T>(pub T);

/// An over-long body is read and dropped up to this many bytes before the 413 goes out, so that the client, still
/// sending, reads the answer instead of a connection reset (a lingering close). Beyond it the connection is closed.
const DRAIN_LIMIT: usize = 2 * 1024 * 1024;

/// Reads at most [`MAX_BODY_BYTES`]; drains (bounded in bytes and time) and refuses anything longer.
async fn read_limited(body: axum::body::Body) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt as _;
    let too_large =
        || ApiError::new(ErrorCode::PayloadTooLarge, format!("the body is larger than {MAX_BODY_BYTES} bytes"));
    let unreadable = || ApiError::new(ErrorCode::MalformedJson, "the body could not be read");
    let mut body = body;
    let mut buf = Vec::new();
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(if seen > MAX_BODY_BYTES { too_large() } else { unreadable() }),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(if seen > MAX_BODY_BYTES { too_large() } else { unreadable() }),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen <= MAX_BODY_BYTES {
            buf.extend_from_slice(&data);
        } else if seen > DRAIN_LIMIT {
            return Err(too_large());
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(buf)
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as Content-Type: application/json",
            ));
        }
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
        let bytes = read_limited(req.into_body()).await?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => {
                    // serde's message names the field and the expected type; cut it short, never log it.
                    let msg: String = e.to_string().chars().take(200).collect();
                    ApiError::new(ErrorCode::InvalidRequest, format!("the request is not valid: {msg}"))
                }
                _ => ApiError::new(ErrorCode::MalformedJson, "the body is not well-formed UTF-8 JSON"),
            }
        })
    }
}

/// A caller authenticated by `Authorization: Bearer <token>`.
pub struct Auth(pub Authenticated);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let missing = || ApiError::new(ErrorCode::MissingToken, "send Authorization: Bearer <token>");
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(missing)?;
        let value = value.to_str().map_err(|_| missing())?;
        let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(missing());
        }
        Ok(Self(state.accounts.authenticate(token.trim(), (state.clock)()).await?))
    }
}

async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".to_owned() })
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let mut text = state.metrics.render() + &state.live.metrics.render();
    if let Some(sfu) = &state.live.sfu {
        text.push_str(&sfu.metrics().render());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn sign_up(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(creds): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<AccountCreated>), ApiError> {
    // The account and its `account_created` audit entry are stored in one transaction.
    let (user_id, code) = state.accounts.sign_up(&creds, ip, (state.clock)()).await?;
    Ok((
        StatusCode::CREATED,
        Json(AccountCreated { user_id: user_id.to_string(), recovery_code: code.as_str().to_owned() }),
    ))
}

async fn log_in(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(creds): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<SessionCreated>), ApiError> {
    let (token, expires_at) = match state.accounts.log_in(&creds, ip, (state.clock)()).await {
        Ok(x) => x,
        Err(e) => {
            if matches!(e, AccountError::RateLimited { .. }) {
                state.audit.count_throttled_sign_in();
            }
            return Err(e.into());
        }
    };
    Ok((
        StatusCode::CREATED,
        Json(SessionCreated { token: token.to_text().to_string(), expires_at: expires_at.to_rfc3339() }),
    ))
}

/// `POST /api/v1/ws-tickets`: a single-use ticket to open the WebSocket with (browsers cannot send a bearer header
/// there, and a token in a URL would end up in logs).
async fn ws_ticket(State(state): State<AppState>, Auth(auth): Auth) -> Result<(StatusCode, Json<WsTicket>), ApiError> {
    let now_ms = state.now_ms();
    let issued = match state.tickets.lock() {
        Ok(mut book) => book.issue(&auth.user_id, now_ms),
        Err(_) => return Err(ApiError::internal(&"ticket book lock poisoned")),
    };
    let (ticket, expires_ms) = issued.map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))?;
    let expires_at = UnixTime(expires_ms / 1000).to_rfc3339();
    Ok((StatusCode::CREATED, Json(WsTicket { ticket: ticket.to_string(), expires_at })))
}

async fn log_out(State(state): State<AppState>, Auth(auth): Auth) -> Result<StatusCode, ApiError> {
    state.accounts.log_out(&auth).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(State(state): State<AppState>, Auth(auth): Auth) -> Result<Json<Me>, ApiError> {
    let account = state.accounts.me(&auth).await?;
    Ok(Json(Me {
        user_id: account.user_id.to_string(),
        created_at: account.created_at.to_rfc3339(),
        session_expires_at: auth.expires_at.to_rfc3339(),
    }))
}

async fn export(State(state): State<AppState>, Auth(auth): Auth) -> Result<Json<cloister_wire::Export>, ApiError> {
    Ok(Json(state.accounts.export(&auth).await?))
}

async fn erase(State(state): State<AppState>, Auth(auth): Auth) -> Result<StatusCode, ApiError> {
    // The erasure and its `account_erased` audit entry are stored in one transaction.
    state.accounts.erase(&auth, (state.clock)()).await?;
    tracing::info!("an account was erased");
    Ok(StatusCode::NO_CONTENT)
}

async fn recover(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<RecoverRequest>,
) -> Result<Json<Recovered>, ApiError> {
    let (user_id, code) = state.accounts.recover(&req, ip, (state.clock)()).await?;
    Ok(Json(Recovered { user_id: user_id.to_string(), recovery_code: code.as_str().to_owned() }))
}

/// A caller who may or may not be signed in: a missing token is anonymous, a bad one is still an error.
pub struct MaybeAuth(pub Option<Authenticated>);

impl FromRequestParts<AppState> for MaybeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if parts.headers.get(header::AUTHORIZATION).is_none() {
            return Ok(Self(None));
        }
        Ok(Self(Some(Auth::from_request_parts(parts, state).await?.0)))
    }
}

/// Largest page of audit entries.
pub const MAX_AUDIT_PAGE: u32 = 1000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EntriesQuery {
    #[serde(default)]
    from: u64,
    limit: Option<u32>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InclusionQuery {
    seq: u64,
    tree_size: u64,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    first: u64,
    second: u64,
}

/// Query strings with the same error shape as bodies.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(Self(q)),
            Err(e) => Err(ApiError::new(ErrorCode::InvalidRequest, format!("bad query string: {}", e.body_text()))),
        }
    }
}

fn hex32(h: &[u8; 32]) -> String {
    hex::encode(h)
}

async fn audit_checkpoint(State(state): State<AppState>, Auth(auth): Auth) -> Result<Json<AuditCheckpoint>, ApiError> {
    state.authorize(Some(&auth), Action::AuditRead, &Resource::AuditLog).await?;
    let signed = state.audit.checkpoint(state.now_ms()).await?;
    let cp = cloister_audit::Checkpoint::parse(&signed.note).map_err(|e| ApiError::internal(&e))?;
    Ok(Json(AuditCheckpoint {
        note: signed.note,
        signature: signed.signature,
        public_key: hex::encode(state.audit.public_key()),
        tree_size: cp.tree_size,
        root: hex32(&cp.root),
    }))
}

async fn audit_entries(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiQuery(q): ApiQuery<EntriesQuery>,
) -> Result<Json<AuditEntries>, ApiError> {
    state.authorize(Some(&auth), Action::AuditRead, &Resource::AuditLog).await?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_AUDIT_PAGE {
        return Err(ApiError::new(ErrorCode::InvalidRequest, format!("limit must be 1..={MAX_AUDIT_PAGE}")));
    }
    let (rows, tree_size) = state.audit.entries(q.from, limit).await?;
    let entries = rows
        .into_iter()
        .map(|(seq, bytes)| {
            String::from_utf8(bytes).map(|entry| AuditEntryOut { seq, entry }).map_err(|e| ApiError::internal(&e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(AuditEntries { entries, tree_size }))
}

async fn audit_inclusion(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiQuery(q): ApiQuery<InclusionQuery>,
) -> Result<Json<AuditProof>, ApiError> {
    state.authorize(Some(&auth), Action::AuditRead, &Resource::AuditLog).await?;
    let (leaf, path, root) = state.audit.inclusion(q.seq, q.tree_size).await?;
    Ok(Json(AuditProof {
        proof: path.iter().map(hex32).collect(),
        tree_size: q.tree_size,
        root: hex32(&root),
        leaf_hash: Some(hex32(&leaf)),
        first: None,
    }))
}

async fn audit_consistency(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> Result<Json<AuditProof>, ApiError> {
    state.authorize(Some(&auth), Action::AuditRead, &Resource::AuditLog).await?;
    let (proof, first_root, root) = state.audit.consistency(q.first, q.second).await?;
    Ok(Json(AuditProof {
        proof: proof.iter().map(hex32).collect(),
        tree_size: q.second,
        root: hex32(&root),
        leaf_hash: None,
        first: Some((q.first, hex32(&first_root))),
    }))
}

/// A file of the web client; API paths and other methods keep the API's JSON errors.
async fn web_file(files: tower_http::services::ServeDir, req: Request) -> Response {
    use tower::ServiceExt as _;
    let api = req.uri().path().starts_with("/api/");
    if api || !(req.method() == axum::http::Method::GET || req.method() == axum::http::Method::HEAD) {
        return if api { not_found().await.into_response() } else { method_not_allowed().await.into_response() };
    }
    match files.oneshot(req).await {
        Ok(resp) if resp.status() == axum::http::StatusCode::NOT_FOUND => not_found().await.into_response(),
        Ok(resp) => resp.map(axum::body::Body::new),
        Err(e) => match e {},
    }
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "this route does not take that method")
}

/// Where the web build keeps its content-addressed files: Vite names each after a hash of its contents, so a name
/// never changes meaning and a browser may keep the file (a new build has new names, and `index.html`, which names
/// them, is never kept).
const HASHED_ASSETS: &str = "/assets/";

/// Headers on every answer: nothing cached (answers carry tokens and codes) but the web build's content-named
/// assets, no sniffing, no referrer, the web client's content security policy (same-origin scripts, styles, workers
/// and connections; no framing).
async fn protective_headers(req: Request, next: Next) -> Response {
    let asset = req.uri().path().starts_with(HASHED_ASSETS);
    let mut resp = next.run(req).await;
    // A returning student's page then loads its script and the 1.8 MB e2ee core from the browser's cache, and
    // Chromium can keep the core's compiled code with it (BENCHMARKS.md, the first-frame benchmark).
    let cache = if asset && resp.status() == axum::http::StatusCode::OK {
        "public, max-age=31536000, immutable"
    } else {
        "no-store"
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(cloister_web::CONTENT_SECURITY_POLICY));
    h.insert(HeaderName::from_static("permissions-policy"), HeaderValue::from_static(cloister_web::PERMISSIONS_POLICY));
    h.insert(HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if asset {
        // An asset may go gzipped or not by the request's Accept-Encoding: a shared cache must keep them apart.
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    // The payload may hold request data: do not print it.
    tracing::error!("a handler panicked; this is a bug");
    ApiError::new(ErrorCode::Internal, "internal server error").into_response()
}

/// Every route: `(METHOD, path template, handler)`. The router is built from this table and the OpenAPI document
/// (`openapi.json`) must describe exactly these pairs (a test holds them together).
fn routes() -> Vec<(&'static str, &'static str, MethodRouter<AppState>)> {
    vec![
        ("GET", "/healthz", get(healthz)),
        ("GET", "/metrics", get(metrics_text)),
        ("GET", "/api/v1/openapi.json", get(openapi)),
        ("POST", "/api/v1/accounts", post(sign_up)),
        ("POST", "/api/v1/accounts/recover", post(recover)),
        ("POST", "/api/v1/sessions", post(log_in)),
        ("DELETE", "/api/v1/sessions/current", delete(log_out)),
        ("POST", "/api/v1/ws-tickets", post(ws_ticket)),
        ("GET", "/api/v1/ws", get(crate::live::ws)),
        ("GET", "/api/v1/me", get(me)),
        ("DELETE", "/api/v1/me", delete(erase)),
        ("GET", "/api/v1/me/export", get(export)),
        ("GET", "/api/v1/me/courses", get(c::my_courses)),
        ("PUT", "/api/v1/me/teacher-profile", put(c::put_teacher_profile)),
        ("POST", "/api/v1/orgs", post(c::create_org)),
        ("GET", "/api/v1/orgs/{org_id}", get(c::get_org)),
        ("DELETE", "/api/v1/orgs/{org_id}", delete(c::delete_org)),
        ("PUT", "/api/v1/orgs/{org_id}/members/{user_id}", put(c::put_org_member)),
        ("DELETE", "/api/v1/orgs/{org_id}/members/{user_id}", delete(c::delete_org_member)),
        ("POST", "/api/v1/orgs/{org_id}/seat-packs", post(c::create_seat_pack)),
        ("GET", "/api/v1/orgs/{org_id}/seat-packs", get(c::list_seat_packs)),
        ("POST", "/api/v1/seat-codes/redeem", post(c::redeem_seat)),
        ("POST", "/api/v1/courses", post(c::create_course)),
        ("GET", "/api/v1/courses/{course_id}", get(c::get_course)),
        ("PUT", "/api/v1/courses/{course_id}", put(c::put_course)),
        ("DELETE", "/api/v1/courses/{course_id}", delete(c::delete_course)),
        ("PUT", "/api/v1/courses/{course_id}/staff/{user_id}", put(c::put_staff)),
        ("DELETE", "/api/v1/courses/{course_id}/staff/{user_id}", delete(c::delete_staff)),
        ("POST", "/api/v1/courses/{course_id}/sessions", post(c::create_session)),
        ("GET", "/api/v1/courses/{course_id}/sessions", get(c::list_sessions)),
        ("POST", "/api/v1/courses/{course_id}/enrollments", post(c::enroll)),
        ("GET", "/api/v1/courses/{course_id}/enrollments", get(c::list_enrollments)),
        ("POST", "/api/v1/courses/{course_id}/invitations", post(c::create_invitation)),
        ("POST", "/api/v1/invitations/redeem", post(c::redeem_invitation)),
        ("GET", "/api/v1/live-sessions/{session_id}", get(c::get_session)),
        ("POST", "/api/v1/live-sessions/{session_id}/participants", post(c::join_session)),
        ("DELETE", "/api/v1/live-sessions/{session_id}/participants/me", delete(c::leave_session)),
        ("GET", "/api/v1/catalog", get(c::catalog)),
        ("GET", "/api/v1/audit/checkpoint", get(audit_checkpoint)),
        ("GET", "/api/v1/audit/entries", get(audit_entries)),
        ("GET", "/api/v1/audit/proof/inclusion", get(audit_inclusion)),
        ("GET", "/api/v1/audit/proof/consistency", get(audit_consistency)),
    ]
}

/// `(METHOD, path template)` of every route the router serves.
pub fn route_list() -> Vec<(&'static str, &'static str)> {
    routes().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The OpenAPI document describing [`route_list`].
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The whole HTTP surface (the API only).
pub fn router(state: AppState) -> Router {
    router_with_web(state, None)
}

/// The API and, outside `/api/`, the browser classroom's files from `web` (its `index.html` at `/`).
pub fn router_with_web(state: AppState, web: Option<std::path::PathBuf>) -> Router {
    let mut router = Router::new();
    for (_, path, handler) in routes() {
        router = router.route(path, handler);
    }
    let router = match web {
        Some(dir) => {
            // `cargo xtask web` writes a gzip copy beside each asset (the 1.8 MB core is 0.57 MB gzipped): served to
            // browsers that accept it, never compressed on the fly.
            let files =
                tower_http::services::ServeDir::new(dir).append_index_html_on_directories(true).precompressed_gzip();
            router.fallback(move |req: Request| web_file(files.clone(), req))
        }
        None => router.fallback(not_found),
    };
    router
        .method_not_allowed_fallback(method_not_allowed)
        .layer(mw::from_fn(protective_headers))
        .layer(mw::from_fn_with_state(state.metrics.clone(), metrics::track))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(state)
}
