//! The course service: validates input, makes ids and codes, and calls the store. Authorization happens before, in
//! the server, with Cedar.

use crate::model::*;
use crate::store::{CourseStore, RedeemError};
use async_trait::async_trait;
use cloister_accounts::{StoreError, UnixTime, UserId};
use cloister_audit::{AuditEvent, Evidence};
use std::sync::Arc;

/// Limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoursesConfig {
    /// Most participants in a live session.
    pub max_capacity: u32,
    /// Longest live session, in hours.
    pub max_session_hours: i64,
    /// Most codes in one seat pack.
    pub max_seats_per_pack: u32,
    /// Longest seat-code validity, in days.
    pub max_seat_days: i64,
    /// Largest catalog page.
    pub max_page_size: u32,
}

impl Default for CoursesConfig {
    fn default() -> Self {
        Self {
            max_capacity: 1000,
            max_session_hours: 12,
            max_seats_per_pack: 1000,
            max_seat_days: 366,
            max_page_size: 100,
        }
    }
}

/// Why a course operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CourseError {
    /// Bad input.
    #[error(transparent)]
    Input(#[from] InputError),
    /// No such org, course or session.
    #[error("not found")]
    NotFound,
    /// A code could not be redeemed.
    #[error(transparent)]
    Redeem(#[from] RedeemError),
    /// Free enrollment asked for a paid course.
    #[error("this course is not free; buy it or use a seat code or invitation")]
    NotFree,
    /// The change would leave an org without an admin.
    #[error("an org keeps at least one admin")]
    LastAdmin,
    /// The change would leave a course without a teacher.
    #[error("a course keeps at least one teacher")]
    LastTeacher,
    /// No payment provider is configured.
    #[error("payments are not configured on this server")]
    PaymentNotConfigured,
    /// Every learner seat of the live session is taken.
    #[error("this live session is full")]
    SessionFull,
    /// The live session is over.
    #[error("this live session has ended")]
    SessionEnded,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a checkout continues (the provider's hosted page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// URL to send the buyer to.
    pub url: String,
}

/// A payment provider adapter (Stripe, ...): starts a checkout; its webhook later confirms and the server enrolls
/// with [`EnrolledVia::Payment`]. None exists yet: [`PaymentsNotConfigured`] answers every request.
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    /// Starts buying `course` for `buyer`.
    async fn start_checkout(&self, course: &Course, buyer: &UserId) -> Result<Checkout, CourseError>;
}

/// The provider used until an adapter is configured: refuses with `payment_not_configured`.
#[derive(Debug, Default, Clone, Copy)]
pub struct PaymentsNotConfigured;

#[async_trait]
impl PaymentProvider for PaymentsNotConfigured {
    async fn start_checkout(&self, _: &Course, _: &UserId) -> Result<Checkout, CourseError> {
        Err(CourseError::PaymentNotConfigured)
    }
}

/// What a new or edited course says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CourseInput {
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Price in minor units (0 = free).
    pub price_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// `public` or `org`.
    pub visibility: Visibility,
}

/// Title limit in characters.
pub const MAX_TITLE: usize = 200;
/// Description limit in characters.
pub const MAX_DESCRIPTION: usize = 5000;
/// Org name and display name limit in characters.
pub const MAX_NAME: usize = 80;
/// Catalog search text limit in characters.
pub const MAX_QUERY: usize = 100;

/// A role change as the audit log records it.
fn role_changed(actor: &UserId, user: &UserId, role: &str, scope: &str, granted: bool) -> AuditEvent {
    AuditEvent::RoleChanged {
        actor: actor.to_string(),
        user: user.to_string(),
        role: role.to_owned(),
        scope: scope.to_owned(),
        granted,
    }
}

fn course_deleted(actor: &UserId, course: &CourseId, enrollments: u64) -> AuditEvent {
    AuditEvent::CourseDeleted { actor: actor.to_string(), course: course.to_string(), enrollments }
}

/// The course service. Every change a reviewer must see (roles, enrollments, seat packs and redemptions,
/// deletions) is stored together with its audit entry, in one transaction.
pub struct Courses {
    store: Arc<dyn CourseStore>,
    payments: Arc<dyn PaymentProvider>,
    config: CoursesConfig,
}

impl Courses {
    /// A service over `store`.
    pub fn new(store: Arc<dyn CourseStore>, payments: Arc<dyn PaymentProvider>, config: CoursesConfig) -> Self {
        Self { store, payments, config }
    }

    /// Creates an org; `admin` becomes its first admin.
    pub async fn create_org(&self, name: &str, admin: &UserId, now: UnixTime) -> Result<Org, CourseError> {
        let org = Org { id: OrgId::random(), name: clean_text("name", name, MAX_NAME, false)?, created_at: now };
        let evidence = Evidence::of(now.as_millis(), [role_changed(admin, admin, "org_admin", org.id.as_str(), true)]);
        self.store.insert_org(&org, admin, &evidence).await?;
        Ok(org)
    }

    /// An org with its people.
    pub async fn org(&self, id: &OrgId) -> Result<OrgRecord, CourseError> {
        self.store.org(id).await?.ok_or(CourseError::NotFound)
    }

    /// Sets or removes (`None`) `user`'s role in an org, as `actor`. An org never loses its last admin.
    pub async fn set_org_role(
        &self,
        org: &OrgRecord,
        actor: &UserId,
        user: &UserId,
        role: Option<OrgRole>,
        now: UnixTime,
    ) -> Result<(), CourseError> {
        if org.admins == [user.clone()] && role != Some(OrgRole::Admin) {
            return Err(CourseError::LastAdmin);
        }
        let name = match role {
            Some(OrgRole::Admin) => "org_admin",
            Some(OrgRole::Member) => "org_member",
            None => "org_none",
        };
        let evidence =
            Evidence::of(now.as_millis(), [role_changed(actor, user, name, org.org.id.as_str(), role.is_some())]);
        self.store.set_org_role(&org.org.id, user, role, &evidence).await?;
        Ok(())
    }

    /// Deletes an org with its seat packs and its courses (and their sessions, staff, enrollments and
    /// invitations), as `actor`.
    pub async fn delete_org(&self, org: &OrgRecord, actor: &UserId, now: UnixTime) -> Result<(), CourseError> {
        let org_id = org.org.id.to_string();
        let evidence = |courses: &[(CourseId, u64)]| {
            let mut events: Vec<AuditEvent> = courses.iter().map(|(c, n)| course_deleted(actor, c, *n)).collect();
            events.push(AuditEvent::OrgDeleted { actor: actor.to_string(), org: org_id.clone() });
            Evidence::of(now.as_millis(), events)
        };
        if self.store.delete_org(&org.org.id, &evidence).await? {
            Ok(())
        } else {
            Err(CourseError::NotFound)
        }
    }

    /// Deletes a course with its live sessions, staff, enrollments, seat packs and invitations, as `actor`.
    pub async fn delete_course(&self, record: &CourseRecord, actor: &UserId, now: UnixTime) -> Result<(), CourseError> {
        let id = &record.course.id;
        let evidence = |enrollments: u64| Evidence::of(now.as_millis(), [course_deleted(actor, id, enrollments)]);
        if self.store.delete_course(id, &evidence).await? {
            Ok(())
        } else {
            Err(CourseError::NotFound)
        }
    }

    fn check(&self, org: Option<&OrgId>, input: &CourseInput) -> Result<(String, String, Price), CourseError> {
        let title = clean_text("title", &input.title, MAX_TITLE, false)?;
        let description = if input.description.trim().is_empty() {
            String::new()
        } else {
            clean_text("description", &input.description, MAX_DESCRIPTION, true)?
        };
        let price = Price::new(input.price_minor, &input.currency)?;
        if input.visibility == Visibility::Org && org.is_none() {
            return Err(InputError::Visibility.into());
        }
        Ok((title, description, price))
    }

    /// Creates a course; `teacher` becomes its first teacher. Org courses name their org (the caller checked the
    /// caller may create courses there).
    pub async fn create_course(
        &self,
        org: Option<&OrgId>,
        input: &CourseInput,
        teacher: &UserId,
        now: UnixTime,
    ) -> Result<Course, CourseError> {
        let (title, description, price) = self.check(org, input)?;
        let course = Course {
            id: CourseId::random(),
            org: org.cloned(),
            title,
            description,
            price,
            visibility: input.visibility,
            created_at: now,
        };
        let grant = role_changed(teacher, teacher, StaffRole::Teacher.as_str(), course.id.as_str(), true);
        self.store.insert_course(&course, teacher, &Evidence::of(now.as_millis(), [grant])).await?;
        Ok(course)
    }

    /// A course with its people.
    pub async fn course(&self, id: &CourseId) -> Result<CourseRecord, CourseError> {
        self.store.course(id).await?.ok_or(CourseError::NotFound)
    }

    /// Replaces a course's catalog fields.
    pub async fn update_course(&self, record: &CourseRecord, input: &CourseInput) -> Result<Course, CourseError> {
        let (title, description, price) = self.check(record.course.org.as_ref(), input)?;
        let course = Course { title, description, price, visibility: input.visibility, ..record.course.clone() };
        self.store.update_course(&course).await?;
        Ok(course)
    }

    /// Adds, changes or removes a staff member, as `actor`. A course never loses its last teacher.
    pub async fn set_staff(
        &self,
        record: &CourseRecord,
        actor: &UserId,
        user: &UserId,
        role: Option<StaffRole>,
        now: UnixTime,
    ) -> Result<(), CourseError> {
        if record.teachers == [user.clone()] && role != Some(StaffRole::Teacher) {
            return Err(CourseError::LastTeacher);
        }
        let name = role.map_or("staff_none", StaffRole::as_str);
        let scope = record.course.id.as_str();
        let evidence = Evidence::of(now.as_millis(), [role_changed(actor, user, name, scope, role.is_some())]);
        self.store.set_staff(&record.course.id, user, role, &evidence).await?;
        Ok(())
    }

    /// A page of the public catalog: `page` from 0, `per_page` up to the configured maximum. Returns the courses
    /// and the total number of matches.
    pub async fn catalog(
        &self,
        query: Option<&str>,
        page: u64,
        per_page: u32,
    ) -> Result<(Vec<Course>, u64), CourseError> {
        if per_page == 0 || per_page > self.config.max_page_size {
            return Err(InputError::Capacity { max: self.config.max_page_size }.into());
        }
        let q = match query.map(str::trim).filter(|q| !q.is_empty()) {
            Some(q) => Some(clean_text("q", q, MAX_QUERY, false)?),
            None => None,
        };
        let offset = page.saturating_mul(u64::from(per_page));
        Ok(self.store.catalog(q.as_deref(), offset, per_page).await?)
    }

    /// The courses `user` is staff of, and those it is enrolled in.
    pub async fn courses_of(&self, user: &UserId) -> Result<(Vec<Course>, Vec<Course>), CourseError> {
        Ok(self.store.courses_of(user).await?)
    }

    /// Schedules a live session.
    pub async fn schedule_session(
        &self,
        record: &CourseRecord,
        starts_at: UnixTime,
        ends_at: UnixTime,
        capacity: u32,
        now: UnixTime,
    ) -> Result<LiveSession, CourseError> {
        let max_secs = self.config.max_session_hours * 3600;
        if ends_at.0 <= starts_at.0 || ends_at.0 - starts_at.0 > max_secs || ends_at.0 <= now.0 {
            return Err(InputError::Schedule { max_hours: self.config.max_session_hours }.into());
        }
        if capacity == 0 || capacity > self.config.max_capacity {
            return Err(InputError::Capacity { max: self.config.max_capacity }.into());
        }
        let session =
            LiveSession { id: SessionId::random(), course: record.course.id.clone(), starts_at, ends_at, capacity };
        self.store.insert_session(&session).await?;
        Ok(session)
    }

    /// A course's live sessions.
    pub async fn sessions(&self, course: &CourseId) -> Result<Vec<LiveSession>, CourseError> {
        Ok(self.store.sessions(course).await?)
    }

    /// One live session with its course.
    pub async fn session(&self, id: &SessionId) -> Result<(LiveSession, CourseRecord), CourseError> {
        let s = self.store.session(id).await?.ok_or(CourseError::NotFound)?;
        let c = self.course(&s.course).await?;
        Ok((s, c))
    }

    /// Admits `user` to a live session of `course` (the caller asked Cedar for `session.join`, which requires
    /// enrollment or a staff role). Teachers and TAs are always admitted; learners while a seat is free, until the
    /// session's end. Returns whether this was a new admission, how many learners are in, and whether `user` was
    /// admitted as staff.
    pub async fn join_session(
        &self,
        session: &LiveSession,
        course: &CourseRecord,
        user: &UserId,
        now: UnixTime,
    ) -> Result<(bool, u32, bool), CourseError> {
        if now.0 >= session.ends_at.0 {
            return Err(CourseError::SessionEnded);
        }
        let staff = course.teachers.contains(user) || course.tas.contains(user);
        match self.store.admit(session, user, staff, now).await? {
            Admission::Admitted { new, learners } => Ok((new, learners, staff)),
            Admission::Full => Err(CourseError::SessionFull),
        }
    }

    /// Leaves a live session (freeing the seat).
    pub async fn leave_session(&self, session: &SessionId, user: &UserId) -> Result<(), CourseError> {
        if self.store.leave(session, user).await? {
            Ok(())
        } else {
            Err(CourseError::NotFound)
        }
    }

    /// A live session's participants in the order they were admitted.
    pub async fn participants(&self, session: &SessionId) -> Result<Vec<UserId>, CourseError> {
        Ok(self.store.participants(session).await?)
    }

    /// Enrolls in a free course; `Ok(false)` if already enrolled.
    pub async fn enroll_free(&self, record: &CourseRecord, user: &UserId, now: UnixTime) -> Result<bool, CourseError> {
        if !record.course.price.is_free() {
            return Err(CourseError::NotFree);
        }
        let enrolled = AuditEvent::Enrolled {
            course: record.course.id.to_string(),
            user: user.to_string(),
            via: EnrolledVia::Free.as_str().to_owned(),
        };
        let evidence = Evidence::of(now.as_millis(), [enrolled]);
        Ok(self.store.enroll(&record.course.id, user, EnrolledVia::Free, now, &evidence).await?)
    }

    /// Starts buying a paid course through the payment provider.
    pub async fn purchase(&self, record: &CourseRecord, user: &UserId) -> Result<Checkout, CourseError> {
        self.payments.start_checkout(&record.course, user).await
    }

    /// Creates a seat pack of `seats` single-use codes for `course`, valid for `days`, bought by `actor`; the codes
    /// are returned once.
    pub async fn create_seat_pack(
        &self,
        org: &OrgRecord,
        course: &CourseRecord,
        seats: u32,
        days: i64,
        actor: &UserId,
        now: UnixTime,
    ) -> Result<(SeatPack, Vec<Code>), CourseError> {
        if seats == 0 || seats > self.config.max_seats_per_pack {
            return Err(InputError::Seats { max: self.config.max_seats_per_pack }.into());
        }
        if !(1..=self.config.max_seat_days).contains(&days) {
            return Err(InputError::Expiry { max_days: self.config.max_seat_days }.into());
        }
        let codes: Vec<Code> = (0..seats).map(|_| Code::random()).collect();
        let hashes: Vec<[u8; 32]> = codes.iter().map(Code::stored_hash).collect();
        let pack = SeatPack {
            id: SeatPackId::random(),
            org: org.org.id.clone(),
            course: course.course.id.clone(),
            seats,
            expires_at: now.plus_secs(days * 86_400),
            created_at: now,
        };
        let created = AuditEvent::SeatPackCreated {
            org: pack.org.to_string(),
            pack: pack.id.to_string(),
            seats,
            actor: actor.to_string(),
        };
        self.store.insert_seat_pack(&pack, &hashes, &Evidence::of(now.as_millis(), [created])).await?;
        Ok((pack, codes))
    }

    /// An org's seat packs with the number of used codes.
    pub async fn seat_packs(&self, org: &OrgId) -> Result<Vec<(SeatPack, u32)>, CourseError> {
        Ok(self.store.seat_packs(org).await?)
    }

    /// Redeems a seat code: enrolls `user` in the pack's course.
    pub async fn redeem_seat(&self, code: &str, user: &UserId, now: UnixTime) -> Result<SeatPack, CourseError> {
        let hash = Code::hash_of(code).ok_or(RedeemError::Unknown)?;
        let evidence = |pack: &SeatPack| {
            let redeemed = AuditEvent::SeatRedeemed { pack: pack.id.to_string(), user: user.to_string() };
            let enrolled = AuditEvent::Enrolled {
                course: pack.course.to_string(),
                user: user.to_string(),
                via: EnrolledVia::Seat.as_str().to_owned(),
            };
            Evidence::of(now.as_millis(), [redeemed, enrolled])
        };
        Ok(self.store.redeem_seat(&hash, user, now, &evidence).await?)
    }

    /// Creates a single-use invitation to `course` by `by`, valid for `days`; the code is returned once.
    pub async fn invite(
        &self,
        course: &CourseRecord,
        by: &UserId,
        days: i64,
        now: UnixTime,
    ) -> Result<(Code, UnixTime), CourseError> {
        if !(1..=self.config.max_seat_days).contains(&days) {
            return Err(InputError::Expiry { max_days: self.config.max_seat_days }.into());
        }
        let code = Code::random();
        let expires_at = now.plus_secs(days * 86_400);
        self.store.insert_invitation(&code.stored_hash(), &course.course.id, by, expires_at).await?;
        Ok((code, expires_at))
    }

    /// Redeems an invitation: enrolls `user` in its course.
    pub async fn redeem_invitation(&self, code: &str, user: &UserId, now: UnixTime) -> Result<CourseId, CourseError> {
        let hash = Code::hash_of(code).ok_or(RedeemError::Unknown)?;
        let evidence = |course: &CourseId| {
            let enrolled = AuditEvent::Enrolled {
                course: course.to_string(),
                user: user.to_string(),
                via: EnrolledVia::Invitation.as_str().to_owned(),
            };
            Evidence::of(now.as_millis(), [enrolled])
        };
        Ok(self.store.redeem_invitation(&hash, user, now, &evidence).await?)
    }

    /// Sets the teacher's public display name for the catalog.
    pub async fn set_display_name(&self, user: &UserId, name: &str) -> Result<TeacherProfile, CourseError> {
        let profile =
            TeacherProfile { user: user.clone(), display_name: clean_text("display_name", name, MAX_NAME, false)? };
        self.store.set_teacher_profile(&profile).await?;
        Ok(profile)
    }

    /// The public display names of a course's teachers.
    pub async fn teacher_names(&self, course: &CourseId) -> Result<Vec<String>, CourseError> {
        Ok(self.store.teacher_names(course).await?)
    }
}
