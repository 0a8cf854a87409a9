//! Records, ids, codes and the validation of what users type.

use cloister_accounts::{RecoveryCode, UnixTime, UserId};
use std::fmt;
use unicode_normalization::UnicodeNormalization as _;

cloister_accounts::random_hex_id!(
    /// An org.
    OrgId
);
cloister_accounts::random_hex_id!(
    /// A course.
    CourseId
);
cloister_accounts::random_hex_id!(
    /// A live session of a course.
    SessionId
);
cloister_accounts::random_hex_id!(
    /// A seat pack.
    SeatPackId
);

/// Why user input was refused; each maps to a stable API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A text field is empty, too long, or holds control characters.
    #[error("{field} must be 1 to {max} characters without control characters")]
    Text {
        /// Which field.
        field: &'static str,
        /// Its limit.
        max: usize,
    },
    /// Not an ISO 4217 code (three capital letters).
    #[error("currency must be an ISO 4217 code such as EUR or USD")]
    Currency,
    /// Price below 0 or above the limit.
    #[error("price must be 0 (free) to {max} minor units")]
    Price {
        /// The limit.
        max: i64,
    },
    /// Capacity outside its range.
    #[error("capacity must be 1 to {max}")]
    Capacity {
        /// The limit.
        max: u32,
    },
    /// A session ending before it starts, or longer than allowed.
    #[error("a session must end after it starts and last at most {max_hours} hours")]
    Schedule {
        /// The limit.
        max_hours: i64,
    },
    /// Seat count outside its range.
    #[error("a seat pack holds 1 to {max} seats")]
    Seats {
        /// The limit.
        max: u32,
    },
    /// An expiry in the past or too far ahead.
    #[error("expiry must be in the future and at most {max_days} days ahead")]
    Expiry {
        /// The limit.
        max_days: i64,
    },
    /// An org-only course without an org, or a public course given one.
    #[error("org-only courses belong to an org; public courses may too, and must be visible in the catalog")]
    Visibility,
}

/// Normalizes user text (NFC, trimmed) and checks its length in characters and that it has no control characters
/// (newlines allowed where `multiline`).
pub fn clean_text(field: &'static str, s: &str, max: usize, multiline: bool) -> Result<String, InputError> {
    let t: String = s.nfc().collect::<String>().trim().to_owned();
    let n = t.chars().count();
    let bad_char = t.chars().any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\t')));
    if n == 0 || n > max || bad_char {
        return Err(InputError::Text { field, max });
    }
    Ok(t)
}

/// ISO 4217 currency code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Parses three capital ASCII letters.
    pub fn parse(s: &str) -> Result<Self, InputError> {
        let b: [u8; 3] = s.as_bytes().try_into().map_err(|_| InputError::Currency)?;
        if b.iter().all(u8::is_ascii_uppercase) {
            Ok(Self(b))
        } else {
            Err(InputError::Currency)
        }
    }
    /// The code.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

/// A price in minor units of a currency; 0 is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// Minor units (cents).
    pub minor: i64,
    /// Currency.
    pub currency: Currency,
}

/// The largest price accepted (10 million in major units of a two-decimal currency).
pub const MAX_PRICE_MINOR: i64 = 1_000_000_000;

impl Price {
    /// Checks the range.
    pub fn new(minor: i64, currency: &str) -> Result<Self, InputError> {
        if !(0..=MAX_PRICE_MINOR).contains(&minor) {
            return Err(InputError::Price { max: MAX_PRICE_MINOR });
        }
        Ok(Self { minor, currency: Currency::parse(currency)? })
    }
    /// Free?
    pub fn is_free(&self) -> bool {
        self.minor == 0
    }
}

/// Who can find a course.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// In the public catalog.
    Public,
    /// Only for the org's people (and the course's own participants).
    Org,
}

impl Visibility {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Org => "org",
        }
    }
    /// From the stored or received form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Self::Public),
            "org" => Some(Self::Org),
            _ => None,
        }
    }
}

/// An org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    /// Id.
    pub id: OrgId,
    /// The org's name (a company's name, not a person's).
    pub name: String,
    /// Created.
    pub created_at: UnixTime,
}

/// A role in an org.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrgRole {
    /// Runs the org: members, seat packs, org-only courses.
    Admin,
    /// Staff the org buys seats for.
    Member,
}

impl OrgRole {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }
    /// From the stored or received form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "member" => Some(Self::Member),
            _ => None,
        }
    }
}

/// An org with its people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRecord {
    /// The org.
    pub org: Org,
    /// Admins.
    pub admins: Vec<UserId>,
    /// Members.
    pub members: Vec<UserId>,
}

impl OrgRecord {
    /// The facts Cedar decides on.
    pub fn facts(&self) -> cloister_policy::OrgFacts {
        cloister_policy::OrgFacts {
            id: self.org.id.to_string(),
            admins: self.admins.iter().map(ToString::to_string).collect(),
            members: self.members.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A course.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Course {
    /// Id.
    pub id: CourseId,
    /// The org, for org courses.
    pub org: Option<OrgId>,
    /// Title (catalog text).
    pub title: String,
    /// Description (catalog text).
    pub description: String,
    /// Price.
    pub price: Price,
    /// Catalog or org-only.
    pub visibility: Visibility,
    /// Created.
    pub created_at: UnixTime,
}

/// A role on a course's staff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaffRole {
    /// Runs the course.
    Teacher,
    /// Helps: invites, moderates.
    Ta,
}

impl StaffRole {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Teacher => "teacher",
            Self::Ta => "ta",
        }
    }
    /// From the stored or received form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "teacher" => Some(Self::Teacher),
            "ta" => Some(Self::Ta),
            _ => None,
        }
    }
}

/// A course with its people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CourseRecord {
    /// The course.
    pub course: Course,
    /// Its org with its people, for org courses.
    pub org: Option<OrgRecord>,
    /// Teachers.
    pub teachers: Vec<UserId>,
    /// TAs.
    pub tas: Vec<UserId>,
    /// Enrolled students.
    pub students: Vec<UserId>,
}

impl CourseRecord {
    /// The facts Cedar decides on.
    pub fn facts(&self) -> cloister_policy::CourseFacts {
        let ids = |v: &[UserId]| v.iter().map(ToString::to_string).collect();
        cloister_policy::CourseFacts {
            id: self.course.id.to_string(),
            org: self.org.as_ref().map(OrgRecord::facts),
            public: self.course.visibility == Visibility::Public,
            free: self.course.price.is_free(),
            teachers: ids(&self.teachers),
            tas: ids(&self.tas),
            students: ids(&self.students),
        }
    }
}

/// A live session of a course.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSession {
    /// Id (also the MLS group id's basis).
    pub id: SessionId,
    /// Its course.
    pub course: CourseId,
    /// Scheduled start.
    pub starts_at: UnixTime,
    /// Scheduled end.
    pub ends_at: UnixTime,
    /// Most learners admitted at once (the course's teachers and TAs do not count).
    pub capacity: u32,
}

/// The outcome of asking to be admitted to a live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted; `new` is false when the participant already was.
    Admitted {
        /// First admission (false: already a participant, nothing changed).
        new: bool,
        /// Learners admitted now, this one included.
        learners: u32,
    },
    /// Every seat is taken.
    Full,
}

/// How a learner came to be enrolled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrolledVia {
    /// A free course, by a click.
    Free,
    /// An org seat code.
    Seat,
    /// A teacher's invitation.
    Invitation,
    /// A payment.
    Payment,
}

impl EnrolledVia {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Seat => "seat",
            Self::Invitation => "invitation",
            Self::Payment => "payment",
        }
    }
    /// From the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "free" => Some(Self::Free),
            "seat" => Some(Self::Seat),
            "invitation" => Some(Self::Invitation),
            "payment" => Some(Self::Payment),
            _ => None,
        }
    }
}

/// A seat pack: N single-use codes an org admin hands to staff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatPack {
    /// Id.
    pub id: SeatPackId,
    /// Paying org.
    pub org: OrgId,
    /// The course the seats are for.
    pub course: CourseId,
    /// Number of codes.
    pub seats: u32,
    /// When unused codes stop working.
    pub expires_at: UnixTime,
    /// Created.
    pub created_at: UnixTime,
}

/// A teacher's public display name for the catalog: the one personal name the server keeps, chosen to be public.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeacherProfile {
    /// The teacher.
    pub user: UserId,
    /// The name shown in the catalog.
    pub display_name: String,
}

/// A single-use code (seat or invitation): the same form as an account's recovery code (160 random bits as
/// `XXXX-XXXX-...` in RFC 4648 base32), shown once, stored as SHA-256 of its canonical form. Zeroized on drop.
pub struct Code(RecoveryCode);

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Code(<redacted>)")
    }
}

impl Code {
    /// A fresh code.
    pub fn random() -> Self {
        Self(RecoveryCode::random())
    }

    /// The code's text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// What is stored for this code.
    pub fn stored_hash(&self) -> [u8; 32] {
        self.0.hash().0
    }

    /// The stored hash of a typed code (case, dashes and spaces ignored); `None` when the text cannot be a code.
    pub fn hash_of(text: &str) -> Option<[u8; 32]> {
        RecoveryCode::hash_typed(text).map(|h| h.0)
    }
}
