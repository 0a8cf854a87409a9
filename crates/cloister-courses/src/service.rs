//! The course service: validates input, makes ids and codes, and calls the store. Authorization happens before, in
//! the server, with Cedar.

use crate::model::*;
use crate::store::{CourseStore, RedeemError};
use async_trait::async_trait;
use cloister_accounts::{StoreError, UnixTime, UserId};
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

/// The course service.
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
        self.store.insert_org(&org, admin).await?;
        Ok(org)
    }

    /// An org with its people.
    pub async fn org(&self, id: &OrgId) -> Result<OrgRecord, CourseError> {
        self.store.org(id).await?.ok_or(CourseError::NotFound)
    }

    /// Sets or removes a role in an org. An org never loses its last admin.
    pub async fn set_org_role(&self, org: &OrgRecord, user: &UserId, role: Option<OrgRole>) -> Result<(), CourseError> {
        if org.admins == [user.clone()] && role != Some(OrgRole::Admin) {
            return Err(CourseError::LastAdmin);
        }
        self.store.set_org_role(&org.org.id, user, role).await?;
        Ok(())
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
        self.store.insert_course(&course, teacher).await?;
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

    /// Adds, changes or removes a staff member. A course never loses its last teacher.
    pub async fn set_staff(
        &self,
        record: &CourseRecord,
        user: &UserId,
        role: Option<StaffRole>,
    ) -> Result<(), CourseError> {
        if record.teachers == [user.clone()] && role != Some(StaffRole::Teacher) {
            return Err(CourseError::LastTeacher);
        }
        self.store.set_staff(&record.course.id, user, role).await?;
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

    /// Enrolls in a free course; `Ok(false)` if already enrolled.
    pub async fn enroll_free(&self, record: &CourseRecord, user: &UserId, now: UnixTime) -> Result<bool, CourseError> {
        if !record.course.price.is_free() {
            return Err(CourseError::NotFree);
        }
        Ok(self.store.enroll(&record.course.id, user, EnrolledVia::Free, now).await?)
    }

    /// Starts buying a paid course through the payment provider.
    pub async fn purchase(&self, record: &CourseRecord, user: &UserId) -> Result<Checkout, CourseError> {
        self.payments.start_checkout(&record.course, user).await
    }

    /// Creates a seat pack of `seats` single-use codes for `course`, valid for `days`; the codes are returned once.
    pub async fn create_seat_pack(
        &self,
        org: &OrgRecord,
        course: &CourseRecord,
        seats: u32,
        days: i64,
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
        self.store.insert_seat_pack(&pack, &hashes).await?;
        Ok((pack, codes))
    }

    /// An org's seat packs with the number of used codes.
    pub async fn seat_packs(&self, org: &OrgId) -> Result<Vec<(SeatPack, u32)>, CourseError> {
        Ok(self.store.seat_packs(org).await?)
    }

    /// Redeems a seat code: enrolls `user` in the pack's course.
    pub async fn redeem_seat(&self, code: &str, user: &UserId, now: UnixTime) -> Result<SeatPack, CourseError> {
        let hash = Code::hash_of(code).ok_or(RedeemError::Unknown)?;
        Ok(self.store.redeem_seat(&hash, user, now).await?)
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
        Ok(self.store.redeem_invitation(&hash, user, now).await?)
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
