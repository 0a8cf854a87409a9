//! `/api/v1` for orgs, courses, live sessions, seat packs, enrollment and the catalog. Every handler loads the facts,
//! asks Cedar (`AppState::authorize`), then calls the course service, which stores each change a reviewer must see
//! together with its audit entry in one transaction.

use crate::api::{ApiError, ApiJson, ApiQuery, AppState, Auth, MaybeAuth};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use cloister_accounts::{Authenticated, UnixTime, UserId};
use cloister_courses::{
    Course, CourseError, CourseId, CourseInput, CourseRecord, LiveSession, OrgId, OrgRecord, OrgRole, RedeemError,
    SeatPack, SessionId, StaffRole, Visibility,
};
use cloister_policy::{Action, Resource};
use cloister_wire::{
    CatalogPage, CourseBody, CourseOut, EnrollmentOut, EnrollmentsOut, ErrorCode, InvitationOut, LiveSessionOut,
    MyCourses, NewInvitation, NewLiveSession, NewOrg, NewSeatPack, OrgOut, ParticipationOut, RedeemSeat, RoleBody,
    SeatPackOut, SeatPacks, SessionStaff, TeacherProfileBody,
};
use serde::de::DeserializeOwned;

impl From<CourseError> for ApiError {
    fn from(e: CourseError) -> Self {
        let msg = e.to_string();
        match e {
            CourseError::Input(_) => Self::new(ErrorCode::InvalidRequest, msg),
            CourseError::NotFound => Self::new(ErrorCode::NotFound, msg),
            CourseError::NotFree | CourseError::PaymentNotConfigured => Self::new(ErrorCode::PaymentNotConfigured, msg),
            CourseError::LastAdmin | CourseError::LastTeacher => Self::new(ErrorCode::LastOwner, msg),
            CourseError::SessionFull => Self::new(ErrorCode::SessionFull, msg),
            CourseError::SessionEnded => Self::new(ErrorCode::SessionEnded, msg),
            CourseError::Redeem(RedeemError::Unknown) => Self::new(ErrorCode::CodeUnknown, msg),
            CourseError::Redeem(RedeemError::Used) => Self::new(ErrorCode::CodeUsed, msg),
            CourseError::Redeem(RedeemError::Expired) => Self::new(ErrorCode::CodeExpired, msg),
            other => Self::internal(&other),
        }
    }
}

/// Path parameters with the API's error shape.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(p)) => Ok(Self(p)),
            Err(_) => Err(ApiError::new(ErrorCode::NotFound, "no such resource")),
        }
    }
}

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "not found")
}

fn org_id(s: &str) -> Result<OrgId, ApiError> {
    OrgId::parse(s).ok_or_else(not_found)
}
fn course_id(s: &str) -> Result<CourseId, ApiError> {
    CourseId::parse(s).ok_or_else(not_found)
}
fn user_id(s: &str) -> Result<UserId, ApiError> {
    UserId::parse(s).ok_or_else(not_found)
}

fn invalid(msg: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, msg)
}

fn org_out(r: &OrgRecord) -> OrgOut {
    OrgOut {
        id: r.org.id.to_string(),
        name: r.org.name.clone(),
        created_at: r.org.created_at.to_rfc3339(),
        admins: r.admins.iter().map(ToString::to_string).collect(),
        members: r.members.iter().map(ToString::to_string).collect(),
    }
}

async fn course_out(state: &AppState, c: &Course) -> Result<CourseOut, ApiError> {
    let names = state.courses.teacher_names(&c.id).await?;
    Ok(CourseOut {
        id: c.id.to_string(),
        org_id: c.org.as_ref().map(ToString::to_string),
        title: c.title.clone(),
        description: c.description.clone(),
        price_minor: c.price.minor,
        currency: c.price.currency.as_str().to_owned(),
        visibility: c.visibility.as_str().to_owned(),
        created_at: c.created_at.to_rfc3339(),
        teachers: names,
    })
}

fn session_out(s: &LiveSession) -> LiveSessionOut {
    LiveSessionOut {
        id: s.id.to_string(),
        course_id: s.course.to_string(),
        starts_at: s.starts_at.to_rfc3339(),
        ends_at: s.ends_at.to_rfc3339(),
        capacity: s.capacity,
        staff: None,
    }
}

fn pack_out(p: &SeatPack, used: u32, codes: Vec<String>) -> SeatPackOut {
    SeatPackOut {
        id: p.id.to_string(),
        course_id: p.course.to_string(),
        seats: p.seats,
        used,
        expires_at: p.expires_at.to_rfc3339(),
        codes,
    }
}

fn input(body: &CourseBody) -> Result<CourseInput, ApiError> {
    Ok(CourseInput {
        title: body.title.clone(),
        description: body.description.clone(),
        price_minor: body.price_minor,
        currency: body.currency.clone(),
        visibility: Visibility::parse(&body.visibility).ok_or_else(|| invalid("visibility must be public or org"))?,
    })
}

async fn load_org(state: &AppState, id: &str) -> Result<OrgRecord, ApiError> {
    Ok(state.courses.org(&org_id(id)?).await?)
}

async fn load_course(state: &AppState, id: &str) -> Result<CourseRecord, ApiError> {
    Ok(state.courses.course(&course_id(id)?).await?)
}

/// `POST /api/v1/orgs`
pub async fn create_org(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiJson(body): ApiJson<NewOrg>,
) -> Result<(StatusCode, Json<OrgOut>), ApiError> {
    state.authorize(Some(&auth), Action::OrgCreate, &Resource::Platform).await?;
    let org = state.courses.create_org(&body.name, &auth.user_id, (state.clock)()).await?;
    let record = state.courses.org(&org.id).await?;
    Ok((StatusCode::CREATED, Json(org_out(&record))))
}

/// `GET /api/v1/orgs/{org_id}`
pub async fn get_org(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<OrgOut>, ApiError> {
    let org = load_org(&state, &id).await?;
    state.authorize(Some(&auth), Action::OrgRead, &Resource::Org(org.facts())).await?;
    Ok(Json(org_out(&org)))
}

/// `DELETE /api/v1/orgs/{org_id}`: the org with its seat packs and its courses (and their sessions, staff,
/// enrollments and invitations).
pub async fn delete_org(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let org = load_org(&state, &id).await?;
    state.authorize(Some(&auth), Action::OrgDelete, &Resource::Org(org.facts())).await?;
    state.courses.delete_org(&org, &auth.user_id, (state.clock)()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/v1/orgs/{org_id}/members/{user_id}`
pub async fn put_org_member(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath((id, user)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<RoleBody>,
) -> Result<Json<OrgOut>, ApiError> {
    let role = OrgRole::parse(&body.role).ok_or_else(|| invalid("role must be admin or member"))?;
    set_org_role(&state, &auth, &id, &user, Some(role)).await
}

/// `DELETE /api/v1/orgs/{org_id}/members/{user_id}`
pub async fn delete_org_member(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath((id, user)): ApiPath<(String, String)>,
) -> Result<Json<OrgOut>, ApiError> {
    set_org_role(&state, &auth, &id, &user, None).await
}

/// Loads the org, asks Cedar for `org.manage`, changes the role and records it.
async fn set_org_role(
    state: &AppState,
    auth: &Authenticated,
    org_id: &str,
    user: &str,
    role: Option<OrgRole>,
) -> Result<Json<OrgOut>, ApiError> {
    let org = load_org(state, org_id).await?;
    state.authorize(Some(auth), Action::OrgManage, &Resource::Org(org.facts())).await?;
    let user = user_id(user)?;
    state.courses.set_org_role(&org, &auth.user_id, &user, role, (state.clock)()).await.map_err(|e| match e {
        // An account that does not exist cannot be given a role.
        CourseError::Store(_) => not_found(),
        other => other.into(),
    })?;
    Ok(Json(org_out(&state.courses.org(&org.org.id).await?)))
}

/// `POST /api/v1/courses`
pub async fn create_course(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiJson(body): ApiJson<CourseBody>,
) -> Result<(StatusCode, Json<CourseOut>), ApiError> {
    let input = input(&body)?;
    let org = match &body.org_id {
        Some(id) => {
            let org = load_org(&state, id).await?;
            state.authorize(Some(&auth), Action::CourseCreateInOrg, &Resource::Org(org.facts())).await?;
            Some(org.org.id)
        }
        None => {
            state.authorize(Some(&auth), Action::CourseCreatePublic, &Resource::Platform).await?;
            None
        }
    };
    let course = state.courses.create_course(org.as_ref(), &input, &auth.user_id, (state.clock)()).await?;
    let out = course_out(&state, &course).await?;
    Ok((StatusCode::CREATED, Json(out)))
}

/// `GET /api/v1/courses/{course_id}` (public courses: anyone, signed in or not)
pub async fn get_course(
    State(state): State<AppState>,
    MaybeAuth(auth): MaybeAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CourseOut>, ApiError> {
    let c = load_course(&state, &id).await?;
    state.authorize(auth.as_ref(), Action::CourseRead, &Resource::Course(c.facts())).await?;
    Ok(Json(course_out(&state, &c.course).await?))
}

/// `PUT /api/v1/courses/{course_id}`
pub async fn put_course(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CourseBody>,
) -> Result<Json<CourseOut>, ApiError> {
    let c = load_course(&state, &id).await?;
    state.authorize(Some(&auth), Action::CourseUpdate, &Resource::Course(c.facts())).await?;
    if body.org_id.as_deref() != c.course.org.as_ref().map(OrgId::as_str) && body.org_id.is_some() {
        return Err(invalid("a course's org cannot change"));
    }
    let course = state.courses.update_course(&c, &input(&body)?).await?;
    Ok(Json(course_out(&state, &course).await?))
}

/// `DELETE /api/v1/courses/{course_id}`: the course with its live sessions, staff, enrollments, seat packs and
/// invitations.
pub async fn delete_course(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let c = load_course(&state, &id).await?;
    state.authorize(Some(&auth), Action::CourseDelete, &Resource::Course(c.facts())).await?;
    state.courses.delete_course(&c, &auth.user_id, (state.clock)()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/v1/courses/{course_id}/staff/{user_id}`
pub async fn put_staff(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath((id, user)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<RoleBody>,
) -> Result<StatusCode, ApiError> {
    let role = StaffRole::parse(&body.role).ok_or_else(|| invalid("role must be teacher or ta"))?;
    set_staff(&state, &auth, &id, &user, Some(role)).await
}

/// `DELETE /api/v1/courses/{course_id}/staff/{user_id}`
pub async fn delete_staff(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath((id, user)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    set_staff(&state, &auth, &id, &user, None).await
}

/// Loads the course, asks Cedar for `course.manage_staff`, changes the role and records it.
async fn set_staff(
    state: &AppState,
    auth: &Authenticated,
    course_id: &str,
    user: &str,
    role: Option<StaffRole>,
) -> Result<StatusCode, ApiError> {
    let c = load_course(state, course_id).await?;
    state.authorize(Some(auth), Action::CourseManageStaff, &Resource::Course(c.facts())).await?;
    let user = user_id(user)?;
    state.courses.set_staff(&c, &auth.user_id, &user, role, (state.clock)()).await.map_err(|e| match e {
        CourseError::Store(_) => not_found(),
        other => other.into(),
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/courses/{course_id}/sessions`
pub async fn create_session(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<NewLiveSession>,
) -> Result<(StatusCode, Json<LiveSessionOut>), ApiError> {
    let c = load_course(&state, &id).await?;
    state.authorize(Some(&auth), Action::SessionCreate, &Resource::Course(c.facts())).await?;
    let parse = |s: &str| UnixTime::parse_rfc3339(s).ok_or_else(|| invalid("times must be RFC 3339"));
    let (starts, ends) = (parse(&body.starts_at)?, parse(&body.ends_at)?);
    let s = state.courses.schedule_session(&c, starts, ends, body.capacity, (state.clock)()).await?;
    Ok((StatusCode::CREATED, Json(session_out(&s))))
}

/// `GET /api/v1/courses/{course_id}/sessions`
pub async fn list_sessions(
    State(state): State<AppState>,
    MaybeAuth(auth): MaybeAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<LiveSessionOut>>, ApiError> {
    let c = load_course(&state, &id).await?;
    state.authorize(auth.as_ref(), Action::CourseRead, &Resource::Course(c.facts())).await?;
    Ok(Json(state.courses.sessions(&c.course.id).await?.iter().map(session_out).collect()))
}

/// `GET /api/v1/sessions/{session_id}`
pub async fn get_session(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<LiveSessionOut>, ApiError> {
    let sid = SessionId::parse(&id).ok_or_else(not_found)?;
    let (s, c) = state.courses.session(&sid).await?;
    let resource = Resource::LiveSession { id: s.id.to_string(), course: c.facts() };
    state.authorize(Some(&auth), Action::SessionRead, &resource).await?;
    let ids = |v: &[UserId]| v.iter().map(ToString::to_string).collect();
    let staff = SessionStaff { teachers: ids(&c.teachers), tas: ids(&c.tas) };
    Ok(Json(LiveSessionOut { staff: Some(staff), ..session_out(&s) }))
}

/// `POST /api/v1/live-sessions/{session_id}/participants`: admission to a live session (Cedar `session.join`:
/// its course's staff and enrolled students). Learners take a seat while one is free; staff always get in.
pub async fn join_session(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<ParticipationOut>), ApiError> {
    let sid = SessionId::parse(&id).ok_or_else(not_found)?;
    let (s, c) = state.courses.session(&sid).await?;
    let resource = Resource::LiveSession { id: s.id.to_string(), course: c.facts() };
    state.authorize(Some(&auth), Action::SessionJoin, &resource).await?;
    if state.live.was_removed(&s.id.to_string(), &auth.user_id.to_string()) {
        return Err(ApiError::new(
            ErrorCode::RemovedFromSession,
            "the session's staff removed you from this live session",
        ));
    }
    let (new, learners, staff) = state.courses.join_session(&s, &c, &auth.user_id, (state.clock)()).await?;
    let out = ParticipationOut {
        session_id: s.id.to_string(),
        role: if staff { "staff" } else { "learner" }.to_owned(),
        new,
        learners,
        capacity: s.capacity,
    };
    Ok((if new { StatusCode::CREATED } else { StatusCode::OK }, Json(out)))
}

/// `DELETE /api/v1/live-sessions/{session_id}/participants/me`: leave, freeing the seat.
pub async fn leave_session(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let sid = SessionId::parse(&id).ok_or_else(not_found)?;
    state.courses.leave_session(&sid, &auth.user_id).await?;
    // The delivery service proposes the Remove of the participant's devices; the committer commits it.
    state.live.remove_user(&sid.to_string(), &auth.user_id.to_string());
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/courses/{course_id}/enrollments`: free courses enroll at once; paid ones go to the payment
/// provider (402 `payment_not_configured` until one exists).
pub async fn enroll(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<EnrollmentOut>), ApiError> {
    let c = load_course(&state, &id).await?;
    if !c.course.price.is_free() {
        state.authorize(Some(&auth), Action::CoursePurchase, &Resource::Course(c.facts())).await?;
        state.courses.purchase(&c, &auth.user_id).await?;
        return Err(ApiError::internal(&"a payment provider started a checkout the API cannot answer yet"));
    }
    state.authorize(Some(&auth), Action::CourseEnrollFree, &Resource::Course(c.facts())).await?;
    let new = state.courses.enroll_free(&c, &auth.user_id, (state.clock)()).await?;
    let status = if new { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(EnrollmentOut { course_id: c.course.id.to_string(), via: "free".into(), new })))
}

/// `GET /api/v1/courses/{course_id}/enrollments`
pub async fn list_enrollments(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EnrollmentsOut>, ApiError> {
    let c = load_course(&state, &id).await?;
    state.authorize(Some(&auth), Action::CourseListEnrollments, &Resource::Course(c.facts())).await?;
    Ok(Json(EnrollmentsOut { students: c.students.iter().map(ToString::to_string).collect() }))
}

/// `POST /api/v1/orgs/{org_id}/seat-packs`: the codes are in this answer only.
pub async fn create_seat_pack(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<NewSeatPack>,
) -> Result<(StatusCode, Json<SeatPackOut>), ApiError> {
    let org = load_org(&state, &id).await?;
    state.authorize(Some(&auth), Action::SeatPackCreate, &Resource::Org(org.facts())).await?;
    let course = load_course(&state, &body.course_id).await?;
    let (pack, codes) = state
        .courses
        .create_seat_pack(&org, &course, body.seats, body.valid_days, &auth.user_id, (state.clock)())
        .await?;
    let codes = codes.iter().map(|c| c.as_str().to_owned()).collect();
    Ok((StatusCode::CREATED, Json(pack_out(&pack, 0, codes))))
}

/// `GET /api/v1/orgs/{org_id}/seat-packs`
pub async fn list_seat_packs(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SeatPacks>, ApiError> {
    let org = load_org(&state, &id).await?;
    state.authorize(Some(&auth), Action::SeatPackList, &Resource::Org(org.facts())).await?;
    let packs = state.courses.seat_packs(&org.org.id).await?;
    Ok(Json(SeatPacks { seat_packs: packs.iter().map(|(p, used)| pack_out(p, *used, Vec::new())).collect() }))
}

/// `POST /api/v1/seat-codes/redeem`
pub async fn redeem_seat(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiJson(body): ApiJson<RedeemSeat>,
) -> Result<(StatusCode, Json<EnrollmentOut>), ApiError> {
    state.authorize(Some(&auth), Action::SeatRedeem, &Resource::Platform).await?;
    let pack = state.courses.redeem_seat(body.code.expose(), &auth.user_id, (state.clock)()).await?;
    Ok((StatusCode::CREATED, Json(EnrollmentOut { course_id: pack.course.to_string(), via: "seat".into(), new: true })))
}

/// `POST /api/v1/courses/{course_id}/invitations`: the code is in this answer only.
pub async fn create_invitation(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<NewInvitation>,
) -> Result<(StatusCode, Json<InvitationOut>), ApiError> {
    let c = load_course(&state, &id).await?;
    state.authorize(Some(&auth), Action::CourseInvite, &Resource::Course(c.facts())).await?;
    let (code, expires_at) = state.courses.invite(&c, &auth.user_id, body.valid_days, (state.clock)()).await?;
    Ok((
        StatusCode::CREATED,
        Json(InvitationOut {
            course_id: c.course.id.to_string(),
            code: code.as_str().to_owned(),
            expires_at: expires_at.to_rfc3339(),
        }),
    ))
}

/// `POST /api/v1/invitations/redeem`
pub async fn redeem_invitation(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiJson(body): ApiJson<RedeemSeat>,
) -> Result<(StatusCode, Json<EnrollmentOut>), ApiError> {
    state.authorize(Some(&auth), Action::InvitationRedeem, &Resource::Platform).await?;
    let course = state.courses.redeem_invitation(body.code.expose(), &auth.user_id, (state.clock)()).await?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollmentOut { course_id: course.to_string(), via: "invitation".into(), new: true }),
    ))
}

/// `GET /api/v1/catalog` query.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogQuery {
    /// Search text (title or description, case-insensitive).
    #[serde(default)]
    pub q: Option<String>,
    /// Page from 0.
    #[serde(default)]
    pub page: u64,
    /// Page size, 1-100 (default 20).
    pub per_page: Option<u32>,
}

/// `GET /api/v1/catalog?q=&page=&per_page=` (anyone)
pub async fn catalog(
    State(state): State<AppState>,
    MaybeAuth(auth): MaybeAuth,
    ApiQuery(q): ApiQuery<CatalogQuery>,
) -> Result<Json<CatalogPage>, ApiError> {
    state.authorize(auth.as_ref(), Action::CatalogRead, &Resource::Platform).await?;
    let per_page = q.per_page.unwrap_or(20);
    let (courses, total) = state.courses.catalog(q.q.as_deref(), q.page, per_page).await?;
    let mut out = Vec::with_capacity(courses.len());
    for c in &courses {
        out.push(course_out(&state, c).await?);
    }
    Ok(Json(CatalogPage { courses: out, total, page: q.page, per_page }))
}

/// `GET /api/v1/me/courses`: the caller's own courses (taught and enrolled); nothing of anyone else's.
pub async fn my_courses(State(state): State<AppState>, Auth(auth): Auth) -> Result<Json<MyCourses>, ApiError> {
    let (staff, enrolled) = state.courses.courses_of(&auth.user_id).await?;
    let (mut teaching, mut learning) = (Vec::with_capacity(staff.len()), Vec::with_capacity(enrolled.len()));
    for c in &staff {
        teaching.push(course_out(&state, c).await?);
    }
    for c in &enrolled {
        learning.push(course_out(&state, c).await?);
    }
    Ok(Json(MyCourses { teaching, enrolled: learning }))
}

/// `PUT /api/v1/me/teacher-profile`: the public display name shown in the catalog.
pub async fn put_teacher_profile(
    State(state): State<AppState>,
    Auth(auth): Auth,
    ApiJson(body): ApiJson<TeacherProfileBody>,
) -> Result<Json<TeacherProfileBody>, ApiError> {
    let p = state.courses.set_display_name(&auth.user_id, &body.display_name).await?;
    Ok(Json(TeacherProfileBody { display_name: p.display_name }))
}
