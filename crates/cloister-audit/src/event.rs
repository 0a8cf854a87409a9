//! What the audit log records. Every field is metadata a reviewer may see: pseudonymous ids (random, not derived from
//! an email), roles, counts, hashes and commitments. Never content, never an email or a display name; the types
//! have no field that could hold one.
//!
//! An entry is stored as the exact JSON bytes that were hashed into the tree (`{"seq":..,"at_ms":..,"event":{..}}`),
//! so verification re-hashes what is stored, and the sequence number inside the bytes pins each entry's position.

use serde::{Deserialize, Serialize};

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum AuditEvent {
    /// The server started with these policy files (SHA-256 over each, by path).
    PolicyLoaded {
        /// `(path relative to policy/, hex SHA-256)`, sorted by path.
        files: Vec<(String, String)>,
    },
    /// An account was created.
    AccountCreated {
        /// Pseudonymous user id.
        user: String,
    },
    /// An account was erased (its row and sessions are gone; this entry keeps only the id).
    AccountErased {
        /// Pseudonymous user id.
        user: String,
    },
    /// Sign-in attempts were refused by the rate limiter.
    SignInThrottled {
        /// Which bucket: `account` or `ip`.
        scope: String,
        /// How many attempts were refused in the reporting interval.
        count: u64,
    },
    /// A role was granted or revoked.
    RoleChanged {
        /// Who changed it.
        actor: String,
        /// Whose role.
        user: String,
        /// The role (`org_admin`, `teacher`, `ta`, `student`, `reviewer`).
        role: String,
        /// Org or course id the role is scoped to.
        scope: String,
        /// Granted (true) or revoked.
        granted: bool,
    },
    /// A learner was enrolled in a course.
    Enrolled {
        /// Course id.
        course: String,
        /// Pseudonymous user id.
        user: String,
        /// How: `free`, `seat`, `invitation`, `payment`.
        via: String,
    },
    /// An org admin created a seat pack.
    SeatPackCreated {
        /// Org id.
        org: String,
        /// Seat pack id.
        pack: String,
        /// Number of codes.
        seats: u32,
        /// Who created it.
        actor: String,
    },
    /// A seat code was redeemed.
    SeatRedeemed {
        /// Seat pack id.
        pack: String,
        /// Pseudonymous user id.
        user: String,
    },
    /// An authorization request was denied.
    AuthzDenied {
        /// Principal (`User::"id"`, or `Anonymous`).
        principal: String,
        /// Action.
        action: String,
        /// Resource (`Course::"id"`, ...).
        resource: String,
    },
    /// More denials of one principal than the log records one by one in an interval: their count.
    AuthzDeniedSuppressed {
        /// Principal.
        principal: String,
        /// Denials not recorded individually.
        count: u64,
    },
    /// The retention engine deleted (or in a dry run would delete) what was due in one class.
    RetentionRun {
        /// The policy id in policy/retention.toml.
        policy: String,
        /// Data class.
        class: String,
        /// Rows deleted.
        count: u64,
        /// SHA-256 over a random salt and the deleted ids, hex (the salt is not kept, so ids cannot be confirmed
        /// by guessing; the count and the commitment show a run happened).
        commitment: String,
    },
    /// An MLS epoch's key-custody record for a live session.
    KeyCustody {
        /// Live session id.
        session: String,
        /// MLS epoch.
        epoch: u64,
        /// Hash commitment to the roster.
        roster_commitment: String,
        /// Leaf of the committer.
        committer_leaf: u32,
    },
}

impl AuditEvent {
    /// The event's kind as stored (`account_created`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::PolicyLoaded { .. } => "policy_loaded",
            AuditEvent::AccountCreated { .. } => "account_created",
            AuditEvent::AccountErased { .. } => "account_erased",
            AuditEvent::SignInThrottled { .. } => "sign_in_throttled",
            AuditEvent::RoleChanged { .. } => "role_changed",
            AuditEvent::Enrolled { .. } => "enrolled",
            AuditEvent::SeatPackCreated { .. } => "seat_pack_created",
            AuditEvent::SeatRedeemed { .. } => "seat_redeemed",
            AuditEvent::AuthzDenied { .. } => "authz_denied",
            AuditEvent::AuthzDeniedSuppressed { .. } => "authz_denied_suppressed",
            AuditEvent::RetentionRun { .. } => "retention_run",
            AuditEvent::KeyCustody { .. } => "key_custody",
        }
    }
}

/// An entry: position, time, event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the log (0-based leaf index).
    pub seq: u64,
    /// When it was recorded (Unix ms).
    pub at_ms: i64,
    /// What happened.
    pub event: AuditEvent,
}

impl AuditEntry {
    /// The bytes stored and hashed.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain data serializes")
    }

    /// Parses stored bytes; `None` when they are not an entry.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn encoding_is_stable_and_round_trips() {
        let e =
            AuditEntry { seq: 3, at_ms: 5, event: AuditEvent::SeatRedeemed { pack: "p1".into(), user: "u1".into() } };
        assert_eq!(
            String::from_utf8(e.encode()).unwrap(),
            r#"{"seq":3,"at_ms":5,"event":{"kind":"seat_redeemed","pack":"p1","user":"u1"}}"#
        );
        assert_eq!(AuditEntry::decode(&e.encode()).unwrap(), e);
        assert_eq!(e.event.kind(), "seat_redeemed");
        assert!(AuditEntry::decode(br#"{"seq":3,"at_ms":5,"event":{"kind":"chat","text":"x"}}"#).is_none());
    }
}
