//! Cloister's HTTP API types: what crosses the wire between clients and the `cloister` server.
//!
//! This crate is plain data (serde types and the stable error-code list). It is not a client and not a server, and it
//! holds no logic beyond (de)serialization. Secrets in requests (passwords, recovery codes) are [`Secret`]s: zeroized on
//! drop and redacted in `Debug`, so a stray `{:?}` never logs them. User data that is not secret but must not reach a
//! log either (an email address) is wrapped in [`Pii`].

#![forbid(unsafe_code)]

pub mod live;

use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Seconds the server waits for a request's headers on an HTTP/1.1 connection, idle keep-alive time included: a
/// connection that sends nothing for this long is closed.
pub const SERVER_HTTP1_IDLE_SECS: u64 = 10;

/// Seconds a client keeps an idle pooled connection to the server. Well under [`SERVER_HTTP1_IDLE_SECS`]: a
/// connection the server is closing at that moment would take a request with it, and the client could not tell
/// whether the server saw it.
pub const CLIENT_POOL_IDLE_SECS: u64 = 4;

/// A secret string from a request (password, recovery code). Zeroized on drop, redacted in `Debug`.
#[derive(Clone, Deserialize, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a string.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Personal data that must never reach a log: `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Pii<T>(pub T);

impl<T> fmt::Debug for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `POST /api/v1/accounts` and `POST /api/v1/sessions`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The email address; only its keyed hash is stored.
    pub email: Pii<String>,
    /// The password, 8 to 64 Unicode scalar values.
    pub password: Secret,
}

/// `201` answer to `POST /api/v1/accounts`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AccountCreated {
    /// The new pseudonymous user id.
    pub user_id: String,
    /// The recovery code, shown once; the server keeps only its hash.
    pub recovery_code: String,
}

/// `201` answer to `POST /api/v1/sessions`.
#[derive(Clone, Deserialize, Serialize)]
pub struct SessionCreated {
    /// Bearer token for `Authorization: Bearer ...`.
    pub token: String,
    /// When the token stops working, RFC 3339 UTC.
    pub expires_at: String,
}

impl fmt::Debug for SessionCreated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCreated").field("token", &"<redacted>").field("expires_at", &self.expires_at).finish()
    }
}

/// `GET /api/v1/me`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Me {
    /// Pseudonymous user id.
    pub user_id: String,
    /// Account creation time, RFC 3339 UTC.
    pub created_at: String,
    /// When the current session expires, RFC 3339 UTC.
    pub session_expires_at: String,
}

/// `POST /api/v1/accounts/recover`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    /// The account's email address.
    pub email: Pii<String>,
    /// The recovery code shown at sign-up (or at the last recovery).
    pub recovery_code: Secret,
    /// The new password.
    pub new_password: Secret,
}

/// `200` answer to `POST /api/v1/accounts/recover`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Recovered {
    /// The account recovered.
    pub user_id: String,
    /// A fresh recovery code; the old one no longer works.
    pub recovery_code: String,
}

/// `GET /api/v1/me/export`: everything stored about the caller (GDPR Art. 15).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Export {
    /// What this document is.
    pub format: String,
    /// Row of the `accounts` table.
    pub account: ExportAccount,
    /// Rows of the `sessions` table that belong to the caller.
    pub sessions: Vec<ExportSession>,
}

/// The caller's `accounts` row, column by column.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ExportAccount {
    /// `accounts.user_id`.
    pub user_id: String,
    /// `accounts.email_key_id`: which pepper keyed the email hash.
    pub email_key_id: String,
    /// `accounts.email_hmac`, hex: HMAC-SHA256(pepper, normalized email).
    pub email_hmac: String,
    /// `accounts.password_hash`: algorithm and parameters; the hash value itself is withheld (see `withheld`).
    pub password_hash_algorithm: String,
    /// `accounts.created_at`, RFC 3339.
    pub created_at: String,
    /// `accounts.updated_at`, RFC 3339.
    pub updated_at: String,
    /// Stored values not returned, and why.
    pub withheld: Vec<String>,
}

/// One of the caller's `sessions` rows.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ExportSession {
    /// First 8 hex digits of `sessions.token_hash` (enough to tell sessions apart, useless to an attacker).
    pub token_hash_prefix: String,
    /// `sessions.created_at`, RFC 3339.
    pub created_at: String,
    /// `sessions.expires_at`, RFC 3339.
    pub expires_at: String,
    /// Whether this is the session making the request.
    pub current: bool,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Health {
    /// `"ok"`.
    pub status: String,
}

/// The body of every error answer: `{"error":{"code":"...","message":"..."}}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error answer.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ErrorDetail {
    /// Stable snake_case code; see [`ErrorCode`].
    pub code: String,
    /// A human sentence.
    pub message: String,
}

/// Every stable error code the API returns, with its HTTP status.
///
/// Codes never change meaning once published; new ones may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the body is not well-formed JSON (syntax, invalid UTF-8, trailing data).
    MalformedJson,
    /// 422: the JSON is well-formed but a field is missing, unknown or of the wrong type.
    InvalidRequest,
    /// 415: the request needs `Content-Type: application/json`.
    UnsupportedMediaType,
    /// 413: the body is larger than the endpoint accepts.
    PayloadTooLarge,
    /// 422: the email address is not a plausible address.
    InvalidEmail,
    /// 422: the password is shorter than 8 or longer than 64 characters.
    InvalidPassword,
    /// 409: an account with this email exists.
    EmailTaken,
    /// 401: email and password (or recovery code) do not match an account.
    InvalidCredentials,
    /// 401: no bearer token was sent, or it is not of the token's form.
    MissingToken,
    /// 401: the bearer token is unknown, expired or revoked.
    InvalidToken,
    /// 401: the WebSocket ticket is unknown, used or expired (get a new one from `POST /api/v1/ws-tickets`).
    InvalidTicket,
    /// 426: `GET /api/v1/ws` without a WebSocket upgrade.
    UpgradeRequired,
    /// 429: too many attempts; see `Retry-After`.
    RateLimited,
    /// 402: the course is paid and no payment provider is configured on this server.
    PaymentNotConfigured,
    /// 404: no such seat or invitation code.
    CodeUnknown,
    /// 409: the seat or invitation code was already used.
    CodeUsed,
    /// 410: the seat or invitation code has expired.
    CodeExpired,
    /// 409: the change would leave an org without an admin or a course without a teacher.
    LastOwner,
    /// 409: every learner seat of the live session is taken.
    SessionFull,
    /// 410: the live session has ended.
    SessionEnded,
    /// 403: signed in, but the authorization policy does not allow this action on this resource.
    Forbidden,
    /// 403: the live session's staff removed this user from it; they cannot rejoin it.
    RemovedFromSession,
    /// 404: no such route or resource.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 503: the server is shutting down or overloaded.
    Unavailable,
    /// 500: a fault on the server; the cause is in the server's log.
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: &'static [ErrorCode] = &[
        Self::MalformedJson,
        Self::InvalidRequest,
        Self::UnsupportedMediaType,
        Self::PayloadTooLarge,
        Self::InvalidEmail,
        Self::InvalidPassword,
        Self::EmailTaken,
        Self::InvalidCredentials,
        Self::MissingToken,
        Self::InvalidToken,
        Self::InvalidTicket,
        Self::UpgradeRequired,
        Self::RateLimited,
        Self::PaymentNotConfigured,
        Self::CodeUnknown,
        Self::CodeUsed,
        Self::CodeExpired,
        Self::LastOwner,
        Self::SessionFull,
        Self::SessionEnded,
        Self::Forbidden,
        Self::RemovedFromSession,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Unavailable,
        Self::Internal,
    ];

    /// The stable snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::InvalidRequest => "invalid_request",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InvalidEmail => "invalid_email",
            Self::InvalidPassword => "invalid_password",
            Self::EmailTaken => "email_taken",
            Self::InvalidCredentials => "invalid_credentials",
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::InvalidTicket => "invalid_ticket",
            Self::UpgradeRequired => "upgrade_required",
            Self::RateLimited => "rate_limited",
            Self::PaymentNotConfigured => "payment_not_configured",
            Self::CodeUnknown => "code_unknown",
            Self::CodeUsed => "code_used",
            Self::CodeExpired => "code_expired",
            Self::LastOwner => "last_owner",
            Self::SessionFull => "session_full",
            Self::SessionEnded => "session_ended",
            Self::RemovedFromSession => "removed_from_session",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            Self::MalformedJson => 400,
            Self::InvalidRequest | Self::InvalidEmail | Self::InvalidPassword => 422,
            Self::UnsupportedMediaType => 415,
            Self::PayloadTooLarge => 413,
            Self::EmailTaken => 409,
            Self::InvalidCredentials | Self::MissingToken | Self::InvalidToken | Self::InvalidTicket => 401,
            Self::UpgradeRequired => 426,
            Self::RateLimited => 429,
            Self::PaymentNotConfigured => 402,
            Self::CodeUnknown => 404,
            Self::CodeUsed | Self::LastOwner | Self::SessionFull => 409,
            Self::CodeExpired | Self::SessionEnded => 410,
            Self::Forbidden | Self::RemovedFromSession => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /api/v1/audit/checkpoint`: the latest signed checkpoint and the key to check it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// The signed note: `cloister audit log v1 <origin>`, tree size, base64 root, time in ms, one per line.
    pub note: String,
    /// Base64 Ed25519 signature over `note`.
    pub signature: String,
    /// The log's Ed25519 public key, hex.
    pub public_key: String,
    /// Entries covered (also in the note).
    pub tree_size: u64,
    /// Root hash, hex (also in the note, base64).
    pub root: String,
}

/// One audit entry as stored: `entry` is the exact UTF-8 JSON text whose bytes are the Merkle leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntryOut {
    /// Position (leaf index).
    pub seq: u64,
    /// The stored JSON text (hash `0x00 || entry` for the leaf).
    pub entry: String,
}

/// `GET /api/v1/audit/entries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntries {
    /// Entries in order.
    pub entries: Vec<AuditEntryOut>,
    /// Entries in the log now.
    pub tree_size: u64,
}

/// `GET /api/v1/audit/proof/inclusion` and `.../consistency`: a Merkle proof (RFC 9162 §2.1.3, §2.1.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditProof {
    /// Hashes, hex, in the RFC's order.
    pub proof: Vec<String>,
    /// Tree size the proof leads to.
    pub tree_size: u64,
    /// Root of that tree, hex.
    pub root: String,
    /// For inclusion proofs: the leaf hash, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_hash: Option<String>,
    /// For consistency proofs: the earlier tree size and its root, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<(u64, String)>,
}

/// `POST /api/v1/orgs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrg {
    /// The org's name (a company's, 1-80 characters).
    pub name: String,
}

/// An org as the API shows it to its people and reviewers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgOut {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    /// Admins' user ids.
    pub admins: Vec<String>,
    /// Members' user ids.
    pub members: Vec<String>,
}

/// `PUT .../members/{user_id}` and `PUT .../staff/{user_id}`: the role to give.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    /// `admin` or `member` in an org; `teacher` or `ta` on a course.
    pub role: String,
}

/// `POST /api/v1/courses` and `PUT /api/v1/courses/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CourseBody {
    /// The owning org (required for org-only courses; creation only).
    #[serde(default)]
    pub org_id: Option<String>,
    /// Title, 1-200 characters.
    pub title: String,
    /// Description, up to 5000 characters.
    #[serde(default)]
    pub description: String,
    /// Price in minor units; 0 is free.
    pub price_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// `public` (catalog) or `org`.
    pub visibility: String,
}

/// A course as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CourseOut {
    /// Id.
    pub id: String,
    /// Owning org, if any.
    pub org_id: Option<String>,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Price in minor units.
    pub price_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// `public` or `org`.
    pub visibility: String,
    /// RFC 3339.
    pub created_at: String,
    /// Teachers' public display names (those who set one).
    pub teachers: Vec<String>,
}

/// `GET /api/v1/catalog`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogPage {
    /// This page.
    pub courses: Vec<CourseOut>,
    /// Matches in all.
    pub total: u64,
    /// Page number, from 0.
    pub page: u64,
    /// Page size.
    pub per_page: u32,
}

/// `GET /api/v1/me/courses`: the caller's courses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MyCourses {
    /// Courses the caller teaches or assists in, newest first.
    pub teaching: Vec<CourseOut>,
    /// Courses the caller is enrolled in, newest first.
    pub enrolled: Vec<CourseOut>,
}

/// `POST /api/v1/courses/{id}/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLiveSession {
    /// RFC 3339.
    pub starts_at: String,
    /// RFC 3339.
    pub ends_at: String,
    /// Most participants.
    pub capacity: u32,
}

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSessionOut {
    /// Id.
    pub id: String,
    /// Course.
    pub course_id: String,
    /// RFC 3339.
    pub starts_at: String,
    /// RFC 3339.
    pub ends_at: String,
    /// Most participants.
    pub capacity: u32,
    /// Only from `GET /api/v1/live-sessions/{id}` (its members and reviewers): the pseudonymous user ids of the
    /// course's staff, so the room can tell who teaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staff: Option<SessionStaff>,
}

/// The staff of a live session's course, by pseudonymous user id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionStaff {
    /// Teachers.
    pub teachers: Vec<String>,
    /// Teaching assistants.
    pub tas: Vec<String>,
}

/// `POST /api/v1/ws-tickets`: what opens the WebSocket once. Never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsTicket {
    /// `cwt_` + 43 base64url characters; single use.
    pub ticket: String,
    /// RFC 3339; about 30 seconds from now.
    pub expires_at: String,
}

impl fmt::Debug for WsTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsTicket").field("ticket", &"<redacted>").field("expires_at", &self.expires_at).finish()
    }
}

/// `POST /api/v1/live-sessions/{id}/participants`: the caller's admission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipationOut {
    /// The live session.
    pub session_id: String,
    /// `staff` (teacher or TA: takes no seat) or `learner`.
    pub role: String,
    /// False when the caller already was a participant.
    pub new: bool,
    /// Learners admitted now.
    pub learners: u32,
    /// The session's learner seats.
    pub capacity: u32,
}

/// `POST /api/v1/courses/{id}/enrollments` and seat redemption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentOut {
    /// Course.
    pub course_id: String,
    /// `free`, `seat`, `invitation` or `payment`.
    pub via: String,
    /// False when the caller was already enrolled.
    pub new: bool,
}

/// `GET /api/v1/courses/{id}/enrollments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentsOut {
    /// Enrolled students' user ids.
    pub students: Vec<String>,
}

/// `POST /api/v1/orgs/{id}/seat-packs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSeatPack {
    /// The course the seats are for.
    pub course_id: String,
    /// Number of codes.
    pub seats: u32,
    /// Days until unused codes expire.
    pub valid_days: i64,
}

/// A seat pack; `codes` only in the answer that created it (shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatPackOut {
    /// Id.
    pub id: String,
    /// Course.
    pub course_id: String,
    /// Number of codes.
    pub seats: u32,
    /// Codes redeemed so far.
    pub used: u32,
    /// RFC 3339.
    pub expires_at: String,
    /// The codes, once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<String>,
}

/// `GET /api/v1/orgs/{id}/seat-packs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatPacks {
    /// The org's packs.
    pub seat_packs: Vec<SeatPackOut>,
}

/// `POST /api/v1/seat-codes/redeem`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeemSeat {
    /// The seat code.
    pub code: Secret,
}

/// `PUT /api/v1/me/teacher-profile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherProfileBody {
    /// The public display name for the catalog, 1-80 characters.
    pub display_name: String,
}

/// `POST /api/v1/courses/{id}/invitations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInvitation {
    /// Days until the invitation expires.
    pub valid_days: i64,
}

/// An invitation, with its code (shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitationOut {
    /// The course.
    pub course_id: String,
    /// The single-use code to hand to the learner.
    pub code: String,
    /// RFC 3339.
    pub expires_at: String,
}

#[cfg(test)]
mod tests;
