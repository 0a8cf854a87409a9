//! [`CourseStore`] over SQLite and PostgreSQL: the same SQL, instantiated per pool type by a macro (as accounts).

use crate::accounts::{backend, corrupt};
use crate::evidence::{write_evidence, PG_AUDIT_LOCK, PG_BEGIN, SQLITE_BEGIN};
use async_trait::async_trait;
use cloister_accounts::{StoreError, UnixTime, UserId};
use cloister_audit::Evidence;
use cloister_courses::{
    Admission, Course, CourseDeletionEvidence, CourseId, CourseRecord, CourseStore, EnrolledVia, InvitationEvidence,
    LiveSession, Org, OrgDeletionEvidence, OrgId, OrgRecord, OrgRole, Price, RedeemError, SeatEvidence, SeatPack,
    SeatPackId, SessionId, StaffRole, TeacherProfile, Visibility,
};
use sqlx::{PgPool, SqlitePool};

/// Courses in SQLite.
pub(crate) struct SqliteCourses(pub(crate) SqlitePool);
/// Courses in PostgreSQL.
pub(crate) struct PgCourses(pub(crate) PgPool);

type CourseRow = (String, Option<String>, String, String, i64, String, String, i64);
type SessionRow = (String, String, i64, i64, i64);
type PackRow = (String, String, String, i64, i64, i64);

const COURSE_COLUMNS: &str =
    "SELECT id, org_id, title, description, price_minor, currency, visibility, created_at FROM courses";
const SESSION_COLUMNS: &str = "SELECT id, course_id, starts_at, ends_at, capacity FROM live_sessions";
const PACK_COLUMNS: &str = "SELECT id, org_id, course_id, seats, expires_at, created_at FROM seat_packs";

fn course_from_row(r: CourseRow) -> Result<Course, StoreError> {
    Ok(Course {
        id: CourseId::parse(&r.0).ok_or_else(|| corrupt("course id"))?,
        org: r.1.map(|o| OrgId::parse(&o).ok_or_else(|| corrupt("org id"))).transpose()?,
        title: r.2,
        description: r.3,
        price: Price::new(r.4, &r.5).map_err(|_| corrupt("price"))?,
        visibility: Visibility::parse(&r.6).ok_or_else(|| corrupt("visibility"))?,
        created_at: UnixTime(r.7),
    })
}

fn session_from_row(r: SessionRow) -> Result<LiveSession, StoreError> {
    Ok(LiveSession {
        id: SessionId::parse(&r.0).ok_or_else(|| corrupt("session id"))?,
        course: CourseId::parse(&r.1).ok_or_else(|| corrupt("course id"))?,
        starts_at: UnixTime(r.2),
        ends_at: UnixTime(r.3),
        capacity: u32::try_from(r.4).map_err(|_| corrupt("capacity"))?,
    })
}

fn pack_from_row(r: PackRow) -> Result<SeatPack, StoreError> {
    Ok(SeatPack {
        id: SeatPackId::parse(&r.0).ok_or_else(|| corrupt("seat pack id"))?,
        org: OrgId::parse(&r.1).ok_or_else(|| corrupt("org id"))?,
        course: CourseId::parse(&r.2).ok_or_else(|| corrupt("course id"))?,
        seats: u32::try_from(r.3).map_err(|_| corrupt("seats"))?,
        expires_at: UnixTime(r.4),
        created_at: UnixTime(r.5),
    })
}

fn users(rows: Vec<(String,)>) -> Result<Vec<UserId>, StoreError> {
    rows.into_iter().map(|(u,)| UserId::parse(&u).ok_or_else(|| corrupt("user id"))).collect()
}

/// `%text%` for LIKE, with LIKE's own characters escaped (`\` is the escape).
fn like_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for c in q.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Marks a code used (only if still unused: two redemptions racing see one winner) and enrolls its holder, inside
/// the caller's transaction.
macro_rules! take_code_and_enroll {
    ($tx:ident, $table:literal, $hash:expr, $user:expr, $now:expr, $course:expr, $via:literal) => {
        let taken = sqlx::query(concat!(
            "UPDATE ",
            $table,
            " SET redeemed_by = $2, redeemed_at = $3 WHERE code_hash = $1 AND redeemed_at IS NULL"
        ))
        .bind(&$hash[..])
        .bind($user.as_str())
        .bind($now.0)
        .execute(&mut *$tx)
        .await
        .map_err(backend)?;
        if taken.rows_affected() != 1 {
            return Err(RedeemError::Used);
        }
        sqlx::query(concat!(
            "INSERT INTO enrollments (course_id, user_id, via, enrolled_at) VALUES ($1, $2, '",
            $via,
            "', $3) ON CONFLICT (course_id, user_id) DO NOTHING"
        ))
        .bind($course)
        .bind($user.as_str())
        .bind($now.0)
        .execute(&mut *$tx)
        .await
        .map_err(backend)?;
    };
}

/// Deletes course `$id` (its sessions, staff, enrollments, seat packs with their codes, and invitations go by
/// cascade) inside `$tx`; evaluates to the number of enrollments that went with it, or `None` if there was none.
macro_rules! delete_course_in {
    ($tx:ident, $id:expr) => {{
        let (enrollments,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM enrollments WHERE course_id = $1")
            .bind($id)
            .fetch_one(&mut *$tx)
            .await
            .map_err(backend)?;
        let gone = sqlx::query("DELETE FROM courses WHERE id = $1")
            .bind($id)
            .execute(&mut *$tx)
            .await
            .map_err(backend)?
            .rows_affected();
        (gone == 1).then_some(u64::try_from(enrollments).unwrap_or(0))
    }};
}

macro_rules! sql_course_store {
    ($store:ident, $begin:expr, $lock:expr, $lock_session:expr) => {
        impl $store {
            async fn org_record(&self, id: &str) -> Result<Option<OrgRecord>, StoreError> {
                let row: Option<(String, String, i64)> =
                    sqlx::query_as("SELECT id, name, created_at FROM orgs WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&self.0)
                        .await
                        .map_err(backend)?;
                let Some((id, name, created_at)) = row else { return Ok(None) };
                let with = |role: &'static str| {
                    sqlx::query_as::<_, (String,)>(
                        "SELECT user_id FROM org_roles WHERE org_id = $1 AND role = $2 ORDER BY user_id",
                    )
                    .bind(id.clone())
                    .bind(role)
                    .fetch_all(&self.0)
                };
                let admins = users(with("admin").await.map_err(backend)?)?;
                let members = users(with("member").await.map_err(backend)?)?;
                let org = Org { id: OrgId::parse(&id).ok_or_else(|| corrupt("org id"))?, name, created_at: UnixTime(created_at) };
                Ok(Some(OrgRecord { org, admins, members }))
            }
        }

        #[async_trait]
        impl CourseStore for $store {
            async fn insert_org(&self, org: &Org, admin: &UserId, evidence: &Evidence) -> Result<(), StoreError> {
                let mut tx = self.0.begin_with($begin).await.map_err(backend)?;
                sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)")
                    .bind(org.id.as_str())
                    .bind(&org.name)
                    .bind(org.created_at.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                sqlx::query("INSERT INTO org_roles (org_id, user_id, role) VALUES ($1, $2, 'admin')")
                    .bind(org.id.as_str())
                    .bind(admin.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                write_evidence!(tx, evidence, $lock);
                tx.commit().await.map_err(backend)
            }

            async fn org(&self, id: &OrgId) -> Result<Option<OrgRecord>, StoreError> {
                self.org_record(id.as_str()).await
            }

            async fn set_org_role(&self, org: &OrgId, user: &UserId, role: Option<OrgRole>, evidence: &Evidence) -> Result<(), StoreError> {
                let mut tx = self.0.begin_with($begin).await.map_err(backend)?;
                let q = match role {
                    Some(r) => sqlx::query(
                        "INSERT INTO org_roles (org_id, user_id, role) VALUES ($1, $2, $3) \
                         ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role",
                    )
                    .bind(org.as_str())
                    .bind(user.as_str())
                    .bind(r.as_str()),
                    None => sqlx::query("DELETE FROM org_roles WHERE org_id = $1 AND user_id = $2")
                        .bind(org.as_str())
                        .bind(user.as_str()),
                };
                q.execute(&mut *tx).await.map_err(backend)?;
                write_evidence!(tx, evidence, $lock);
                tx.commit().await.map_err(backend)
            }

            async fn delete_org(&self, org: &OrgId, evidence: OrgDeletionEvidence<'_>) -> Result<bool, StoreError> {
                let mut tx = self.0.begin_with($begin).await.map_err(backend)?;
                // Courses first: an org's courses restrict its deletion, so nothing goes by accident.
                let ids: Vec<(String,)> = sqlx::query_as("SELECT id FROM courses WHERE org_id = $1 ORDER BY id")
                    .bind(org.as_str())
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(backend)?;
                let mut courses = Vec::with_capacity(ids.len());
                for (id,) in ids {
                    let enrollments = delete_course_in!(tx, &id).unwrap_or(0);
                    courses.push((CourseId::parse(&id).ok_or_else(|| corrupt("course id"))?, enrollments));
                }
                let gone = sqlx::query("DELETE FROM orgs WHERE id = $1")
                    .bind(org.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                if gone != 1 {
                    return Ok(false);
                }
                write_evidence!(tx, &evidence(&courses), $lock);
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn delete_course(&self, course: &CourseId, evidence: CourseDeletionEvidence<'_>) -> Result<bool, StoreError> {
                let mut tx = self.0.begin_with($begin).await.map_err(backend)?;
                let Some(enrollments) = delete_course_in!(tx, course.as_str()) else { return Ok(false) };
                write_evidence!(tx, &evidence(enrollments), $lock);
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn insert_course(&self, c: &Course, teacher: &UserId, evidence: &Evidence) -> Result<(), StoreError> {
                let mut tx = self.0.begin_with($begin).await.map_err(backend)?;
                sqlx::query(
                    "INSERT INTO courses (id, org_id, title, description, price_minor, currency, visibility, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(c.id.as_str())
                .bind(c.org.as_ref().map(|o| o.as_str().to_owned()))
                .bind(&c.title)
                .bind(&c.description)
                .bind(c.price.minor)
                .bind(c.price.currency.as_str())
                .bind(c.visibility.as_str())
                .bind(c.created_at.0)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
                sqlx::query("INSERT INTO course_staff (course_id, user_id, role) VALUES ($1, $2, 'teacher')")
                    .bind(c.id.as_str())
                    .bind(teacher.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                write_evidence!(tx, evidence, $lock);
                tx.commit().await.map_err(backend)
            }

            async fn course(&self, id: &CourseId) -> Result<Option<CourseRecord>, StoreError> {
                let row: Option<CourseRow> = sqlx::query_as(&format!("{COURSE_COLUMNS} WHERE id = $1"))
                    .bind(id.as_str())
                    .fetch_optional(&self.0)
                    .await
                    .map_err(backend)?;
                let Some(row) = row else { return Ok(None) };
                let course = course_from_row(row)?;
                let org = match &course.org {
                    Some(o) => self.org_record(o.as_str()).await?,
                    None => None,
                };
                let staff = |role: &'static str| {
                    sqlx::query_as::<_, (String,)>(
                        "SELECT user_id FROM course_staff WHERE course_id = $1 AND role = $2 ORDER BY user_id",
                    )
                    .bind(id.as_str())
                    .bind(role)
                    .fetch_all(&self.0)
                };
                let teachers = users(staff("teacher").await.map_err(backend)?)?;
                let tas = users(staff("ta").await.map_err(backend)?)?;
                let students = users(
                    sqlx::query_as("SELECT user_id FROM enrollments WHERE course_id = $1 ORDER BY user_id")
                        .bind(id.as_str())
                        .fetch_all(&self.0)
                        .await
                        .map_err(backend)?,
                )?;
                Ok(Some(CourseRecord { course, org, teachers, tas, students }))
            }

            async fn update_course(&self, c: &Course) -> Result<(), StoreError> {
                let done = sqlx::query(
                    "UPDATE courses SET title = $2, description = $3, price_minor = $4, currency = $5, visibility = $6 \
                     WHERE id = $1",
                )
                .bind(c.id.as_str())
                .bind(&c.title)
                .bind(&c.description)
                .bind(c.price.minor)
                .bind(c.price.currency.as_str())
                .bind(c.visibility.as_str())
                .execute(&self.0)
                .await
                .map_err(backend)?;
                if done.rows_affected() == 1 { Ok(()) } else { Err(StoreError::Backend("no such course".into())) }
            }

            async fn set_staff(&self, course: &CourseId, user: &UserId, role: Option<StaffRole>, evidence: &Evidence) -> Result<(), StoreError> {
                let mut tx = self.0.begin_with($begin).await.map_err(backend)?;
                let q = match role {
                    Some(r) => sqlx::query(
                        "INSERT INTO course_staff (course_id, user_id, role) VALUES ($1, $2, $3) \
                         ON CONFLICT (course_id, user_id) DO UPDATE SET role = excluded.role",
                    )
                    .bind(course.as_str())
                    .bind(user.as_str())
                    .bind(r.as_str()),
                    None => sqlx::query("DELETE FROM course_staff WHERE course_id = $1 AND user_id = $2")
                        .bind(course.as_str())
                        .bind(user.as_str()),
                };
                q.execute(&mut *tx).await.map_err(backend)?;
                write_evidence!(tx, evidence, $lock);
                tx.commit().await.map_err(backend)
            }

            async fn catalog(&self, query: Option<&str>, offset: u64, limit: u32) -> Result<(Vec<Course>, u64), StoreError> {
                let pattern = like_pattern(query.unwrap_or(""));
                let filter = "WHERE visibility = 'public' AND (LOWER(title) LIKE $1 ESCAPE '\\' \
                              OR LOWER(description) LIKE $1 ESCAPE '\\')";
                let (total,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM courses {filter}"))
                    .bind(&pattern)
                    .fetch_one(&self.0)
                    .await
                    .map_err(backend)?;
                let rows: Vec<CourseRow> =
                    sqlx::query_as(&format!("{COURSE_COLUMNS} {filter} ORDER BY created_at DESC, id LIMIT $2 OFFSET $3"))
                        .bind(&pattern)
                        .bind(i64::from(limit))
                        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
                        .fetch_all(&self.0)
                        .await
                        .map_err(backend)?;
                let courses = rows.into_iter().map(course_from_row).collect::<Result<_, _>>()?;
                Ok((courses, u64::try_from(total).unwrap_or(0)))
            }

            async fn courses_of(&self, user: &UserId) -> Result<(Vec<Course>, Vec<Course>), StoreError> {
                let mut out = Vec::with_capacity(2);
                for table in ["course_staff", "enrollments"] {
                    let rows: Vec<CourseRow> = sqlx::query_as(&format!(
                        "{COURSE_COLUMNS} WHERE id IN (SELECT course_id FROM {table} WHERE user_id = $1) \
                         ORDER BY created_at DESC, id"
                    ))
                    .bind(user.as_str())
                    .fetch_all(&self.0)
                    .await
                    .map_err(backend)?;
                    out.push(rows.into_iter().map(course_from_row).collect::<Result<Vec<_>, _>>()?);
                }
                let enrolled = out.pop().unwrap_or_default();
                let staff = out.pop().unwrap_or_default();
                Ok((staff, enrolled))
            }

            async fn insert_session(&self, s: &LiveSession) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO live_sessions (id, course_id, starts_at, ends_at, capacity) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(s.id.as_str())
                .bind(s.course.as_str())
                .bind(s.starts_at.0)
                .bind(s.ends_at.0)
                .bind(i64::from(s.capacity))
                .execute(&self.0)
                .await
                .map_err(backend)?;
                Ok(())
            }

            async fn sessions(&self, course: &CourseId) -> Result<Vec<LiveSession>, StoreError> {
                let rows: Vec<SessionRow> =
                    sqlx::query_as(&format!("{SESSION_COLUMNS} WHERE course_id = $1 ORDER BY starts_at, id"))
                        .bind(course.as_str())
                        .fetch_all(&self.0)
                        .await
                        .map_err(backend)?;
                rows.into_iter().map(session_from_row).collect()
            }

            async fn session(&self, id: &SessionId) -> Result<Option<LiveSession>, StoreError> {
                let row: Option<SessionRow> = sqlx::query_as(&format!("{SESSION_COLUMNS} WHERE id = $1"))
                    .bind(id.as_str())
                    .fetch_optional(&self.0)
                    .await
                    .map_err(backend)?;
                row.map(session_from_row).transpose()
            }

            async fn admit(&self, session: &LiveSession, user: &UserId, staff: bool, at: UnixTime) -> Result<Admission, StoreError> {
                let mut tx = self.0.begin_with($begin).await.map_err(backend)?;
                let found: Option<(String,)> = sqlx::query_as($lock_session)
                    .bind(session.id.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
                if found.is_none() {
                    return Err(StoreError::Backend("no such live session".into()));
                }
                let learners = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
                let count = "SELECT COUNT(*) FROM session_participants WHERE session_id = $1 AND staff = $2";
                let (n,): (i64,) = sqlx::query_as(count)
                    .bind(session.id.as_str())
                    .bind(false)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?;
                let already: Option<(i64,)> =
                    sqlx::query_as("SELECT joined_at FROM session_participants WHERE session_id = $1 AND user_id = $2")
                        .bind(session.id.as_str())
                        .bind(user.as_str())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(backend)?;
                if already.is_some() {
                    return Ok(Admission::Admitted { new: false, learners: learners(n) });
                }
                if !staff && learners(n) >= session.capacity {
                    return Ok(Admission::Full);
                }
                sqlx::query("INSERT INTO session_participants (session_id, user_id, staff, joined_at) VALUES ($1, $2, $3, $4)")
                    .bind(session.id.as_str())
                    .bind(user.as_str())
                    .bind(staff)
                    .bind(at.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(Admission::Admitted { new: true, learners: learners(n + i64::from(!staff)) })
            }

            async fn leave(&self, session: &SessionId, user: &UserId) -> Result<bool, StoreError> {
                let n = sqlx::query("DELETE FROM session_participants WHERE session_id = $1 AND user_id = $2")
                    .bind(session.as_str())
                    .bind(user.as_str())
                    .execute(&self.0)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                Ok(n == 1)
            }

            async fn participants(&self, session: &SessionId) -> Result<Vec<UserId>, StoreError> {
                let rows: Vec<(String,)> = sqlx::query_as(
                    "SELECT user_id FROM session_participants WHERE session_id = $1 ORDER BY joined_at, user_id",
                )
                .bind(session.as_str())
                .fetch_all(&self.0)
                .await
                .map_err(backend)?;
                users(rows)
            }

            async fn enroll(&self, course: &CourseId, user: &UserId, via: EnrolledVia, at: UnixTime, evidence: &Evidence) -> Result<bool, StoreError> {
                let mut tx = self.0.begin_with($begin).await.map_err(backend)?;
                let done = sqlx::query(
                    "INSERT INTO enrollments (course_id, user_id, via, enrolled_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (course_id, user_id) DO NOTHING",
                )
                .bind(course.as_str())
                .bind(user.as_str())
                .bind(via.as_str())
                .bind(at.0)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                write_evidence!(tx, evidence, $lock);
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn insert_seat_pack(&self, p: &SeatPack, code_hashes: &[[u8; 32]], evidence: &Evidence) -> Result<(), StoreError> {
                let mut tx = self.0.begin_with($begin).await.map_err(backend)?;
                sqlx::query(
                    "INSERT INTO seat_packs (id, org_id, course_id, seats, expires_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(p.id.as_str())
                .bind(p.org.as_str())
                .bind(p.course.as_str())
                .bind(i64::from(p.seats))
                .bind(p.expires_at.0)
                .bind(p.created_at.0)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
                for h in code_hashes {
                    sqlx::query("INSERT INTO seat_codes (code_hash, pack_id) VALUES ($1, $2)")
                        .bind(&h[..])
                        .bind(p.id.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
                write_evidence!(tx, evidence, $lock);
                tx.commit().await.map_err(backend)
            }

            async fn seat_packs(&self, org: &OrgId) -> Result<Vec<(SeatPack, u32)>, StoreError> {
                let rows: Vec<PackRow> = sqlx::query_as(&format!("{PACK_COLUMNS} WHERE org_id = $1 ORDER BY created_at, id"))
                    .bind(org.as_str())
                    .fetch_all(&self.0)
                    .await
                    .map_err(backend)?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let pack = pack_from_row(r)?;
                    let (used,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM seat_codes WHERE pack_id = $1 AND redeemed_at IS NOT NULL",
                    )
                    .bind(pack.id.as_str())
                    .fetch_one(&self.0)
                    .await
                    .map_err(backend)?;
                    out.push((pack, u32::try_from(used).unwrap_or(u32::MAX)));
                }
                Ok(out)
            }

            async fn redeem_seat(&self, code_hash: &[u8; 32], user: &UserId, now: UnixTime, evidence: SeatEvidence<'_>) -> Result<SeatPack, RedeemError> {
                let mut tx = self.0.begin_with($begin).await.map_err(backend)?;
                let row: Option<(String, Option<i64>)> =
                    sqlx::query_as("SELECT pack_id, redeemed_at FROM seat_codes WHERE code_hash = $1")
                        .bind(&code_hash[..])
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(backend)?;
                let (pack_id, redeemed_at) = row.ok_or(RedeemError::Unknown)?;
                if redeemed_at.is_some() {
                    return Err(RedeemError::Used);
                }
                let row: PackRow = sqlx::query_as(&format!("{PACK_COLUMNS} WHERE id = $1"))
                    .bind(&pack_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?;
                let pack = pack_from_row(row)?;
                if now.0 >= pack.expires_at.0 {
                    return Err(RedeemError::Expired);
                }
                take_code_and_enroll!(tx, "seat_codes", code_hash, user, now, pack.course.as_str(), "seat");
                write_evidence!(tx, &evidence(&pack), $lock);
                tx.commit().await.map_err(backend)?;
                Ok(pack)
            }

            async fn insert_invitation(
                &self,
                code_hash: &[u8; 32],
                course: &CourseId,
                by: &UserId,
                expires_at: UnixTime,
            ) -> Result<(), StoreError> {
                sqlx::query("INSERT INTO invitations (code_hash, course_id, invited_by, expires_at) VALUES ($1, $2, $3, $4)")
                    .bind(&code_hash[..])
                    .bind(course.as_str())
                    .bind(by.as_str())
                    .bind(expires_at.0)
                    .execute(&self.0)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn redeem_invitation(&self, code_hash: &[u8; 32], user: &UserId, now: UnixTime, evidence: InvitationEvidence<'_>) -> Result<CourseId, RedeemError> {
                let mut tx = self.0.begin_with($begin).await.map_err(backend)?;
                let row: Option<(String, i64, Option<i64>)> =
                    sqlx::query_as("SELECT course_id, expires_at, redeemed_at FROM invitations WHERE code_hash = $1")
                        .bind(&code_hash[..])
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(backend)?;
                let (course, expires_at, redeemed_at) = row.ok_or(RedeemError::Unknown)?;
                if redeemed_at.is_some() {
                    return Err(RedeemError::Used);
                }
                if now.0 >= expires_at {
                    return Err(RedeemError::Expired);
                }
                let course = CourseId::parse(&course).ok_or_else(|| RedeemError::Store(corrupt("course id")))?;
                take_code_and_enroll!(tx, "invitations", code_hash, user, now, course.as_str(), "invitation");
                write_evidence!(tx, &evidence(&course), $lock);
                tx.commit().await.map_err(backend)?;
                Ok(course)
            }

            async fn set_teacher_profile(&self, p: &TeacherProfile) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO teacher_profiles (user_id, display_name) VALUES ($1, $2) \
                     ON CONFLICT (user_id) DO UPDATE SET display_name = excluded.display_name",
                )
                .bind(p.user.as_str())
                .bind(&p.display_name)
                .execute(&self.0)
                .await
                .map_err(backend)?;
                Ok(())
            }

            async fn teacher_names(&self, course: &CourseId) -> Result<Vec<String>, StoreError> {
                let rows: Vec<(String,)> = sqlx::query_as(
                    "SELECT p.display_name FROM course_staff s JOIN teacher_profiles p ON p.user_id = s.user_id \
                     WHERE s.course_id = $1 AND s.role = 'teacher' ORDER BY p.display_name",
                )
                .bind(course.as_str())
                .fetch_all(&self.0)
                .await
                .map_err(backend)?;
                Ok(rows.into_iter().map(|(n,)| n).collect())
            }
        }
    };
}

// Admission serializes on the session: SQLite's BEGIN IMMEDIATE already holds the write lock; PostgreSQL locks the
// session's row so two joiners cannot both take the last seat.
sql_course_store!(SqliteCourses, SQLITE_BEGIN, "", "SELECT id FROM live_sessions WHERE id = $1");
sql_course_store!(PgCourses, PG_BEGIN, PG_AUDIT_LOCK, "SELECT id FROM live_sessions WHERE id = $1 FOR UPDATE");
