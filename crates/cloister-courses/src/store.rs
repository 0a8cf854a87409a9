//! Storage of courses, as a trait the SQL store implements, and an in-memory store for tests and embedding.

use crate::model::*;
use async_trait::async_trait;
use cloister_accounts::{StoreError, UnixTime, UserId};
use cloister_audit::Evidence;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Why a code could not be redeemed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedeemError {
    /// No such code.
    #[error("unknown code")]
    Unknown,
    /// Already used.
    #[error("this code was already used")]
    Used,
    /// Past its expiry.
    #[error("this code has expired")]
    Expired,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Builds a redemption's evidence once the store has found what the code is for.
pub type SeatEvidence<'a> = &'a (dyn Fn(&SeatPack) -> Evidence + Send + Sync);
/// Builds an invitation redemption's evidence from the invitation's course.
pub type InvitationEvidence<'a> = &'a (dyn Fn(&CourseId) -> Evidence + Send + Sync);
/// Builds a course deletion's evidence from the number of enrollments deleted with it.
pub type CourseDeletionEvidence<'a> = &'a (dyn Fn(u64) -> Evidence + Send + Sync);
/// Builds an org deletion's evidence from its courses deleted with it (id, enrollments).
pub type OrgDeletionEvidence<'a> = &'a (dyn Fn(&[(CourseId, u64)]) -> Evidence + Send + Sync);

/// Where courses live. Every method is one transaction: a failure changes nothing. Methods that take evidence
/// write it to the audit log in that same transaction, and only when the change happens.
#[async_trait]
pub trait CourseStore: Send + Sync {
    /// Stores a new org with its first admin.
    async fn insert_org(&self, org: &Org, admin: &UserId, evidence: &Evidence) -> Result<(), StoreError>;
    /// An org with its people.
    async fn org(&self, id: &OrgId) -> Result<Option<OrgRecord>, StoreError>;
    /// Sets (or with `None` removes) a user's role in an org.
    async fn set_org_role(
        &self,
        org: &OrgId,
        user: &UserId,
        role: Option<OrgRole>,
        evidence: &Evidence,
    ) -> Result<(), StoreError>;
    /// Deletes an org with its roles, seat packs and courses (and everything of theirs); `Ok(false)` when there was
    /// no such org.
    async fn delete_org(&self, org: &OrgId, evidence: OrgDeletionEvidence<'_>) -> Result<bool, StoreError>;

    /// Stores a new course with its first teacher.
    async fn insert_course(&self, course: &Course, teacher: &UserId, evidence: &Evidence) -> Result<(), StoreError>;
    /// Deletes a course with its live sessions, staff, enrollments, seat packs and invitations; `Ok(false)` when
    /// there was no such course.
    async fn delete_course(&self, course: &CourseId, evidence: CourseDeletionEvidence<'_>) -> Result<bool, StoreError>;
    /// A course with its org and people.
    async fn course(&self, id: &CourseId) -> Result<Option<CourseRecord>, StoreError>;
    /// Replaces a course's catalog fields (title, description, price, visibility).
    async fn update_course(&self, course: &Course) -> Result<(), StoreError>;
    /// Sets (or removes) a user's staff role on a course.
    async fn set_staff(
        &self,
        course: &CourseId,
        user: &UserId,
        role: Option<StaffRole>,
        evidence: &Evidence,
    ) -> Result<(), StoreError>;
    /// Public courses whose title or description contains `query` (case-insensitive; all when `None`), newest
    /// first, `limit` from `offset`; and the total count of matches.
    async fn catalog(&self, query: Option<&str>, offset: u64, limit: u32) -> Result<(Vec<Course>, u64), StoreError>;
    /// The courses `user` teaches or assists in (staff), and those it is enrolled in, each newest first.
    async fn courses_of(&self, user: &UserId) -> Result<(Vec<Course>, Vec<Course>), StoreError>;

    /// Stores a live session.
    async fn insert_session(&self, session: &LiveSession) -> Result<(), StoreError>;
    /// A course's live sessions by start time.
    async fn sessions(&self, course: &CourseId) -> Result<Vec<LiveSession>, StoreError>;
    /// One live session.
    async fn session(&self, id: &SessionId) -> Result<Option<LiveSession>, StoreError>;
    /// Admits `user` to the session unless it is full, in one transaction (concurrent joiners never exceed the
    /// capacity). `staff` participants are admitted without taking a seat.
    async fn admit(
        &self,
        session: &LiveSession,
        user: &UserId,
        staff: bool,
        at: UnixTime,
    ) -> Result<Admission, StoreError>;
    /// Removes a participant (freeing the seat); `Ok(false)` when `user` was not one.
    async fn leave(&self, session: &SessionId, user: &UserId) -> Result<bool, StoreError>;
    /// A session's participants, in the order they were admitted.
    async fn participants(&self, session: &SessionId) -> Result<Vec<UserId>, StoreError>;

    /// Enrolls; `Ok(false)` when already enrolled (nothing changes).
    async fn enroll(
        &self,
        course: &CourseId,
        user: &UserId,
        via: EnrolledVia,
        at: UnixTime,
        evidence: &Evidence,
    ) -> Result<bool, StoreError>;

    /// Stores a seat pack with the hashes of its codes.
    async fn insert_seat_pack(
        &self,
        pack: &SeatPack,
        code_hashes: &[[u8; 32]],
        evidence: &Evidence,
    ) -> Result<(), StoreError>;
    /// An org's seat packs with the number of redeemed codes.
    async fn seat_packs(&self, org: &OrgId) -> Result<Vec<(SeatPack, u32)>, StoreError>;
    /// Redeems a seat code and enrolls its holder in the pack's course, in one transaction.
    async fn redeem_seat(
        &self,
        code_hash: &[u8; 32],
        user: &UserId,
        now: UnixTime,
        evidence: SeatEvidence<'_>,
    ) -> Result<SeatPack, RedeemError>;

    /// Stores an invitation (the code's hash) to `course` by `by`, valid until `expires_at`.
    async fn insert_invitation(
        &self,
        code_hash: &[u8; 32],
        course: &CourseId,
        by: &UserId,
        expires_at: UnixTime,
    ) -> Result<(), StoreError>;
    /// Redeems an invitation and enrolls its holder (via `invitation`), in one transaction; returns the course.
    async fn redeem_invitation(
        &self,
        code_hash: &[u8; 32],
        user: &UserId,
        now: UnixTime,
        evidence: InvitationEvidence<'_>,
    ) -> Result<CourseId, RedeemError>;

    /// Sets a teacher's public display name.
    async fn set_teacher_profile(&self, profile: &TeacherProfile) -> Result<(), StoreError>;
    /// The display names of a course's teachers who set one, sorted (one query for the catalog).
    async fn teacher_names(&self, course: &CourseId) -> Result<Vec<String>, StoreError>;
}

#[derive(Default)]
struct Inner {
    orgs: BTreeMap<OrgId, Org>,
    org_roles: BTreeMap<(OrgId, UserId), OrgRole>,
    courses: BTreeMap<CourseId, Course>,
    staff: BTreeMap<(CourseId, UserId), StaffRole>,
    enrollments: BTreeMap<(CourseId, UserId), (EnrolledVia, UnixTime)>,
    sessions: BTreeMap<SessionId, LiveSession>,
    packs: BTreeMap<SeatPackId, SeatPack>,
    /// code hash -> (pack, redeemed by)
    codes: BTreeMap<[u8; 32], (SeatPackId, Option<UserId>)>,
    profiles: BTreeMap<UserId, String>,
    /// code hash -> (course, expires at, redeemed by)
    invitations: BTreeMap<[u8; 32], (CourseId, UnixTime, Option<UserId>)>,
    audit: Vec<Vec<u8>>,
    /// (session, user) -> (staff, joined at, admission order)
    participants: BTreeMap<(SessionId, UserId), (bool, UnixTime, u64)>,
    admitted: u64,
}

impl Inner {
    /// Removes a course and everything of it; returns the number of enrollments removed.
    fn remove_course(&mut self, id: &CourseId) -> u64 {
        self.courses.remove(id);
        self.staff.retain(|(c, _), _| c != id);
        let before = self.enrollments.len();
        self.enrollments.retain(|(c, _), _| c != id);
        let removed = (before - self.enrollments.len()) as u64;
        let gone: Vec<SessionId> = self.sessions.values().filter(|s| &s.course == id).map(|s| s.id.clone()).collect();
        self.sessions.retain(|_, s| &s.course != id);
        self.participants.retain(|(s, _), _| !gone.contains(s));
        self.remove_packs(|p| &p.course == id);
        self.invitations.retain(|_, (c, _, _)| c != id);
        removed
    }

    /// Removes the seat packs `gone` picks, with their codes.
    fn remove_packs(&mut self, gone: impl Fn(&SeatPack) -> bool) {
        let packs: Vec<SeatPackId> = self.packs.values().filter(|p| gone(p)).map(|p| p.id.clone()).collect();
        self.packs.retain(|_, p| !gone(p));
        self.codes.retain(|_, (p, _)| !packs.contains(p));
    }
}

/// An in-memory [`CourseStore`].
#[derive(Default)]
pub struct MemoryStore(Mutex<Inner>);

impl MemoryStore {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// The audit entries written with changes, as stored bytes.
    pub fn audit_entries(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self.lock()?.audit.clone())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.0.lock().map_err(|_| StoreError::Backend("memory store lock poisoned".into()))
    }
}

fn org_record(inner: &Inner, id: &OrgId) -> Option<OrgRecord> {
    let org = inner.orgs.get(id)?.clone();
    let with = |want: OrgRole| {
        inner.org_roles.iter().filter(|((o, _), r)| o == id && **r == want).map(|((_, u), _)| u.clone()).collect()
    };
    Some(OrgRecord { org, admins: with(OrgRole::Admin), members: with(OrgRole::Member) })
}

#[async_trait]
impl CourseStore for MemoryStore {
    async fn insert_org(&self, org: &Org, admin: &UserId, evidence: &Evidence) -> Result<(), StoreError> {
        let mut i = self.lock()?;
        if i.orgs.contains_key(&org.id) {
            return Err(StoreError::Conflict);
        }
        i.orgs.insert(org.id.clone(), org.clone());
        i.org_roles.insert((org.id.clone(), admin.clone()), OrgRole::Admin);
        evidence.append_to(&mut i.audit);
        Ok(())
    }

    async fn org(&self, id: &OrgId) -> Result<Option<OrgRecord>, StoreError> {
        let inner = self.lock()?;
        Ok(org_record(&inner, id))
    }

    async fn set_org_role(
        &self,
        org: &OrgId,
        user: &UserId,
        role: Option<OrgRole>,
        evidence: &Evidence,
    ) -> Result<(), StoreError> {
        let mut i = self.lock()?;
        let key = (org.clone(), user.clone());
        match role {
            Some(r) => i.org_roles.insert(key, r),
            None => i.org_roles.remove(&key),
        };
        evidence.append_to(&mut i.audit);
        Ok(())
    }

    async fn delete_org(&self, org: &OrgId, evidence: OrgDeletionEvidence<'_>) -> Result<bool, StoreError> {
        let mut i = self.lock()?;
        if i.orgs.remove(org).is_none() {
            return Ok(false);
        }
        let courses: Vec<CourseId> =
            i.courses.values().filter(|c| c.org.as_ref() == Some(org)).map(|c| c.id.clone()).collect();
        let removed: Vec<(CourseId, u64)> = courses.into_iter().map(|c| (c.clone(), i.remove_course(&c))).collect();
        i.org_roles.retain(|(o, _), _| o != org);
        i.remove_packs(|p| &p.org == org);
        evidence(&removed).append_to(&mut i.audit);
        Ok(true)
    }

    async fn insert_course(&self, course: &Course, teacher: &UserId, evidence: &Evidence) -> Result<(), StoreError> {
        let mut i = self.lock()?;
        if i.courses.contains_key(&course.id) {
            return Err(StoreError::Conflict);
        }
        i.courses.insert(course.id.clone(), course.clone());
        i.staff.insert((course.id.clone(), teacher.clone()), StaffRole::Teacher);
        evidence.append_to(&mut i.audit);
        Ok(())
    }

    async fn delete_course(&self, course: &CourseId, evidence: CourseDeletionEvidence<'_>) -> Result<bool, StoreError> {
        let mut i = self.lock()?;
        if !i.courses.contains_key(course) {
            return Ok(false);
        }
        let enrollments = i.remove_course(course);
        evidence(enrollments).append_to(&mut i.audit);
        Ok(true)
    }

    async fn course(&self, id: &CourseId) -> Result<Option<CourseRecord>, StoreError> {
        let i = self.lock()?;
        let Some(course) = i.courses.get(id).cloned() else { return Ok(None) };
        let org = course.org.as_ref().and_then(|o| org_record(&i, o));
        let staff = |want: StaffRole| {
            i.staff.iter().filter(|((c, _), r)| c == id && **r == want).map(|((_, u), _)| u.clone()).collect()
        };
        let students = i.enrollments.keys().filter(|(c, _)| c == id).map(|(_, u)| u.clone()).collect();
        Ok(Some(CourseRecord { course, org, teachers: staff(StaffRole::Teacher), tas: staff(StaffRole::Ta), students }))
    }

    async fn update_course(&self, course: &Course) -> Result<(), StoreError> {
        let mut i = self.lock()?;
        match i.courses.get_mut(&course.id) {
            Some(c) => {
                *c = course.clone();
                Ok(())
            }
            None => Err(StoreError::Backend("no such course".into())),
        }
    }

    async fn set_staff(
        &self,
        course: &CourseId,
        user: &UserId,
        role: Option<StaffRole>,
        evidence: &Evidence,
    ) -> Result<(), StoreError> {
        let mut i = self.lock()?;
        let key = (course.clone(), user.clone());
        match role {
            Some(r) => i.staff.insert(key, r),
            None => i.staff.remove(&key),
        };
        evidence.append_to(&mut i.audit);
        Ok(())
    }

    async fn catalog(&self, query: Option<&str>, offset: u64, limit: u32) -> Result<(Vec<Course>, u64), StoreError> {
        let i = self.lock()?;
        let q = query.map(str::to_lowercase);
        let mut hits: Vec<&Course> = i
            .courses
            .values()
            .filter(|c| c.visibility == Visibility::Public)
            .filter(|c| {
                q.as_ref()
                    .is_none_or(|q| c.title.to_lowercase().contains(q) || c.description.to_lowercase().contains(q))
            })
            .collect();
        hits.sort_by(|a, b| b.created_at.0.cmp(&a.created_at.0).then_with(|| a.id.cmp(&b.id)));
        let total = hits.len() as u64;
        let page = hits.into_iter().skip(offset as usize).take(limit as usize).cloned().collect();
        Ok((page, total))
    }

    async fn courses_of(&self, user: &UserId) -> Result<(Vec<Course>, Vec<Course>), StoreError> {
        let i = self.lock()?;
        let pick = |ids: Vec<&CourseId>| {
            let mut v: Vec<Course> = ids.into_iter().filter_map(|id| i.courses.get(id)).cloned().collect();
            v.sort_by(|a, b| b.created_at.0.cmp(&a.created_at.0).then_with(|| a.id.cmp(&b.id)));
            v
        };
        let staff = pick(i.staff.keys().filter(|(_, u)| u == user).map(|(c, _)| c).collect());
        let enrolled = pick(i.enrollments.keys().filter(|(_, u)| u == user).map(|(c, _)| c).collect());
        Ok((staff, enrolled))
    }

    async fn insert_session(&self, session: &LiveSession) -> Result<(), StoreError> {
        self.lock()?.sessions.insert(session.id.clone(), session.clone());
        Ok(())
    }

    async fn sessions(&self, course: &CourseId) -> Result<Vec<LiveSession>, StoreError> {
        let i = self.lock()?;
        let mut v: Vec<LiveSession> = i.sessions.values().filter(|s| &s.course == course).cloned().collect();
        v.sort_by_key(|s| s.starts_at.0);
        Ok(v)
    }

    async fn session(&self, id: &SessionId) -> Result<Option<LiveSession>, StoreError> {
        Ok(self.lock()?.sessions.get(id).cloned())
    }

    async fn admit(
        &self,
        session: &LiveSession,
        user: &UserId,
        staff: bool,
        at: UnixTime,
    ) -> Result<Admission, StoreError> {
        let mut i = self.lock()?;
        let learners =
            |i: &Inner| i.participants.iter().filter(|((s, _), (st, _, _))| s == &session.id && !st).count() as u32;
        let key = (session.id.clone(), user.clone());
        if i.participants.contains_key(&key) {
            return Ok(Admission::Admitted { new: false, learners: learners(&i) });
        }
        if !staff && learners(&i) >= session.capacity {
            return Ok(Admission::Full);
        }
        i.admitted += 1;
        let order = i.admitted;
        i.participants.insert(key, (staff, at, order));
        Ok(Admission::Admitted { new: true, learners: learners(&i) })
    }

    async fn leave(&self, session: &SessionId, user: &UserId) -> Result<bool, StoreError> {
        Ok(self.lock()?.participants.remove(&(session.clone(), user.clone())).is_some())
    }

    async fn participants(&self, session: &SessionId) -> Result<Vec<UserId>, StoreError> {
        let i = self.lock()?;
        let mut v: Vec<(u64, UserId)> = i
            .participants
            .iter()
            .filter(|((s, _), _)| s == session)
            .map(|((_, u), (_, _, o))| (*o, u.clone()))
            .collect();
        v.sort();
        Ok(v.into_iter().map(|(_, u)| u).collect())
    }

    async fn enroll(
        &self,
        course: &CourseId,
        user: &UserId,
        via: EnrolledVia,
        at: UnixTime,
        evidence: &Evidence,
    ) -> Result<bool, StoreError> {
        let mut i = self.lock()?;
        let key = (course.clone(), user.clone());
        if i.enrollments.contains_key(&key) {
            return Ok(false);
        }
        i.enrollments.insert(key, (via, at));
        evidence.append_to(&mut i.audit);
        Ok(true)
    }

    async fn insert_seat_pack(
        &self,
        pack: &SeatPack,
        code_hashes: &[[u8; 32]],
        evidence: &Evidence,
    ) -> Result<(), StoreError> {
        let mut i = self.lock()?;
        if code_hashes.iter().any(|h| i.codes.contains_key(h)) {
            return Err(StoreError::Conflict);
        }
        i.packs.insert(pack.id.clone(), pack.clone());
        for h in code_hashes {
            i.codes.insert(*h, (pack.id.clone(), None));
        }
        evidence.append_to(&mut i.audit);
        Ok(())
    }

    async fn seat_packs(&self, org: &OrgId) -> Result<Vec<(SeatPack, u32)>, StoreError> {
        let i = self.lock()?;
        Ok(i.packs
            .values()
            .filter(|p| &p.org == org)
            .map(|p| {
                let used = i.codes.values().filter(|(id, by)| id == &p.id && by.is_some()).count() as u32;
                (p.clone(), used)
            })
            .collect())
    }

    async fn redeem_seat(
        &self,
        code_hash: &[u8; 32],
        user: &UserId,
        now: UnixTime,
        evidence: SeatEvidence<'_>,
    ) -> Result<SeatPack, RedeemError> {
        let mut i = self.lock()?;
        let (pack_id, by) = i.codes.get(code_hash).cloned().ok_or(RedeemError::Unknown)?;
        if by.is_some() {
            return Err(RedeemError::Used);
        }
        let pack = i.packs.get(&pack_id).cloned().ok_or(RedeemError::Unknown)?;
        if now.0 >= pack.expires_at.0 {
            return Err(RedeemError::Expired);
        }
        i.codes.insert(*code_hash, (pack_id, Some(user.clone())));
        i.enrollments.entry((pack.course.clone(), user.clone())).or_insert((EnrolledVia::Seat, now));
        evidence(&pack).append_to(&mut i.audit);
        Ok(pack)
    }

    async fn insert_invitation(
        &self,
        code_hash: &[u8; 32],
        course: &CourseId,
        _by: &UserId,
        expires_at: UnixTime,
    ) -> Result<(), StoreError> {
        let mut i = self.lock()?;
        if i.invitations.contains_key(code_hash) {
            return Err(StoreError::Conflict);
        }
        i.invitations.insert(*code_hash, (course.clone(), expires_at, None));
        Ok(())
    }

    async fn redeem_invitation(
        &self,
        code_hash: &[u8; 32],
        user: &UserId,
        now: UnixTime,
        evidence: InvitationEvidence<'_>,
    ) -> Result<CourseId, RedeemError> {
        let mut i = self.lock()?;
        let (course, expires_at, by) = i.invitations.get(code_hash).cloned().ok_or(RedeemError::Unknown)?;
        if by.is_some() {
            return Err(RedeemError::Used);
        }
        if now.0 >= expires_at.0 {
            return Err(RedeemError::Expired);
        }
        i.invitations.insert(*code_hash, (course.clone(), expires_at, Some(user.clone())));
        i.enrollments.entry((course.clone(), user.clone())).or_insert((EnrolledVia::Invitation, now));
        evidence(&course).append_to(&mut i.audit);
        Ok(course)
    }

    async fn set_teacher_profile(&self, profile: &TeacherProfile) -> Result<(), StoreError> {
        self.lock()?.profiles.insert(profile.user.clone(), profile.display_name.clone());
        Ok(())
    }

    async fn teacher_names(&self, course: &CourseId) -> Result<Vec<String>, StoreError> {
        let i = self.lock()?;
        let mut names: Vec<String> = i
            .staff
            .iter()
            .filter(|((c, _), r)| c == course && **r == StaffRole::Teacher)
            .filter_map(|((_, u), _)| i.profiles.get(u).cloned())
            .collect();
        names.sort();
        Ok(names)
    }
}
