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
    /// A course was deleted with its sessions, staff roles, enrollments, seat packs and invitations.
    CourseDeleted {
        /// Who deleted it.
        actor: String,
        /// Course id.
        course: String,
        /// Enrollments removed with it.
        enrollments: u64,
    },
    /// An org was deleted with its roles, courses (as [`AuditEvent::CourseDeleted`] each) and seat packs.
    OrgDeleted {
        /// Who deleted it.
        actor: String,
        /// Org id.
        org: String,
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
    /// Staff removed a user from a live session: the delivery service proposed the removal of the user's devices
    /// from the session's group (the next commit takes them out) and freed the user's seat.
    MemberRemoved {
        /// Live session id.
        session: String,
        /// Who removed them (pseudonymous user id).
        actor: String,
        /// Whom (pseudonymous user id).
        user: String,
        /// How many of the user's devices were proposed for removal.
        devices: u32,
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
            AuditEvent::CourseDeleted { .. } => "course_deleted",
            AuditEvent::OrgDeleted { .. } => "org_deleted",
            AuditEvent::KeyCustody { .. } => "key_custody",
            AuditEvent::MemberRemoved { .. } => "member_removed",
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

/// Audit events that a store writes in the same transaction as the change they record, so that no change stands
/// without its entry and no entry without its change. The store places them after the last stored entry, under its
/// write lock, and encodes them there ([`Evidence::encode`]); the running log reads them back from storage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// When the change happened (Unix ms).
    pub at_ms: i64,
    /// What to record, in order.
    pub events: Vec<AuditEvent>,
}

impl Evidence {
    /// Nothing to record (tests, and changes a reviewer need not see).
    pub fn none() -> Self {
        Self::default()
    }

    /// `events` at `at_ms`.
    pub fn of(at_ms: i64, events: impl IntoIterator<Item = AuditEvent>) -> Self {
        Self { at_ms, events: events.into_iter().collect() }
    }

    /// Whether there is nothing to record.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The stored bytes of the entries at positions `first_seq, first_seq + 1, ..`, timed no earlier than
    /// `not_before_ms` (the last stored entry's time: concurrent writers may commit out of clock order, and the log's
    /// times never go backwards).
    pub fn encode(&self, first_seq: u64, not_before_ms: i64) -> Vec<Vec<u8>> {
        let at_ms = self.at_ms.max(not_before_ms);
        self.events
            .iter()
            .zip(first_seq..)
            .map(|(event, seq)| AuditEntry { seq, at_ms, event: event.clone() }.encode())
            .collect()
    }

    /// Appends the entries to an in-memory log (the memory stores' audit table).
    pub fn append_to(&self, log: &mut Vec<Vec<u8>>) {
        let not_before = log.last().and_then(|b| AuditEntry::decode(b)).map_or(i64::MIN, |e| e.at_ms);
        let rows = self.encode(log.len() as u64, not_before);
        log.extend(rows);
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

    #[test]
    fn evidence_is_placed_in_order_and_never_goes_back_in_time() {
        let ev = Evidence::of(
            100,
            [AuditEvent::AccountCreated { user: "a".into() }, AuditEvent::AccountErased { user: "a".into() }],
        );
        let rows: Vec<AuditEntry> = ev.encode(7, 50).iter().map(|b| AuditEntry::decode(b).unwrap()).collect();
        assert_eq!((rows[0].seq, rows[0].at_ms, rows[1].seq, rows[1].at_ms), (7, 100, 8, 100));
        let later = ev.encode(0, 250);
        assert_eq!(AuditEntry::decode(&later[1]).unwrap().at_ms, 250);
        assert!(Evidence::none().encode(3, 0).is_empty());
    }
}
