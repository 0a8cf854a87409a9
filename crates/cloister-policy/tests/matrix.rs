//! Replays policy/tests/matrix.toml: every case is one action on one resource, the roles listed are allowed and every
//! other role must be denied. Also checks that the cases cover every action of the schema.

#![allow(clippy::unwrap_used, missing_docs)]

use cloister_policy::{Action, CourseFacts, OrgFacts, Policy, Principal, Resource};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Deserialize)]
struct Matrix {
    roles: BTreeMap<String, String>,
    world: World,
    case: Vec<Case>,
}

#[derive(Deserialize)]
struct World {
    reviewers: Vec<String>,
    orgs: BTreeMap<String, OrgDef>,
    courses: BTreeMap<String, CourseDef>,
    sessions: BTreeMap<String, String>,
    seat_packs: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct OrgDef {
    admins: Vec<String>,
    members: Vec<String>,
}

#[derive(Deserialize)]
struct CourseDef {
    org: Option<String>,
    public: bool,
    free: bool,
    teachers: Vec<String>,
    tas: Vec<String>,
    students: Vec<String>,
}

#[derive(Deserialize)]
struct Case {
    action: String,
    resource: String,
    allow: Vec<String>,
}

/// `Cloister::Type::"id"` -> (Type, id).
fn split_uid(s: &str) -> (String, String) {
    let rest = s.strip_prefix("Cloister::").unwrap();
    let (ty, id) = rest.split_once("::").unwrap();
    (ty.to_owned(), id.trim_matches('"').to_owned())
}

impl World {
    fn org(&self, id: &str) -> OrgFacts {
        let o = &self.orgs[id];
        OrgFacts { id: id.into(), admins: o.admins.clone(), members: o.members.clone() }
    }
    fn course(&self, id: &str) -> CourseFacts {
        let c = &self.courses[id];
        CourseFacts {
            id: id.into(),
            org: c.org.as_deref().map(|o| self.org(o)),
            public: c.public,
            free: c.free,
            teachers: c.teachers.clone(),
            tas: c.tas.clone(),
            students: c.students.clone(),
        }
    }
    fn resource(&self, uid: &str) -> Resource {
        let (ty, id) = split_uid(uid);
        match ty.as_str() {
            "Platform" => Resource::Platform,
            "AuditLog" => Resource::AuditLog,
            "Org" => Resource::Org(self.org(&id)),
            "Course" => Resource::Course(self.course(&id)),
            "LiveSession" => Resource::LiveSession { course: self.course(&self.sessions[&id]), id },
            "SeatPack" => Resource::SeatPack { org: self.org(&self.seat_packs[&id]), id },
            other => panic!("unknown resource type {other}"),
        }
    }
    fn principal(&self, uid: &str) -> Principal {
        let (ty, id) = split_uid(uid);
        match ty.as_str() {
            "Anonymous" => Principal::Anonymous,
            "User" => Principal::User { reviewer: self.reviewers.contains(&id), id },
            other => panic!("unknown principal type {other}"),
        }
    }
}

/// Actions whose schema admits an anonymous principal.
fn anonymous_allowed_by_schema(a: Action) -> bool {
    matches!(a, Action::CatalogRead | Action::CourseRead)
}

#[test]
fn every_case_of_the_decision_matrix_holds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy");
    let policy = Policy::load(&root).unwrap();
    let m: Matrix = toml::from_str(&std::fs::read_to_string(root.join("tests/matrix.toml")).unwrap()).unwrap();
    let mut covered = BTreeSet::new();
    let mut failures = Vec::new();
    let (mut allows, mut denies) = (0, 0);
    for case in &m.case {
        let action = Action::from_name(&case.action).unwrap_or_else(|| panic!("unknown action {}", case.action));
        covered.insert(case.action.clone());
        for r in &case.allow {
            assert!(m.roles.contains_key(r), "case {} names unknown role {r}", case.action);
        }
        let resource = m.world.resource(&case.resource);
        for (role, uid) in &m.roles {
            let principal = m.world.principal(uid);
            if principal == Principal::Anonymous && !anonymous_allowed_by_schema(action) {
                continue;
            }
            let want = case.allow.contains(role);
            let got = policy.authorize(&principal, action, &resource).unwrap();
            if got.allowed != want {
                failures.push(format!(
                    "{role} {} {}: expected {}, got {} (policies {:?})",
                    case.action,
                    case.resource,
                    if want { "allow" } else { "deny" },
                    if got.allowed { "allow" } else { "deny" },
                    got.policies
                ));
            }
            if want {
                allows += 1;
                assert!(!got.policies.is_empty() || !got.allowed, "an allow names its policy");
            } else {
                denies += 1;
            }
        }
    }
    assert!(failures.is_empty(), "{} decisions differ:\n{}", failures.len(), failures.join("\n"));
    let all: BTreeSet<String> = Action::ALL.iter().map(|a| a.as_str().to_owned()).collect();
    let missing: Vec<&String> = all.difference(&covered).collect();
    assert!(missing.is_empty(), "actions without a case: {missing:?}");
    assert!(allows > 50 && denies > 100, "{allows} allows, {denies} denies");
}

#[test]
fn an_anonymous_principal_for_a_signed_in_action_is_a_request_error_not_an_allow() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy");
    let policy = Policy::load(&root).unwrap();
    assert!(policy.authorize(&Principal::Anonymous, Action::OrgCreate, &Resource::Platform).is_err());
    // A wrong resource type for the action: also a request error.
    let user = Principal::User { id: "u".into(), reviewer: false };
    assert!(policy.authorize(&user, Action::AuditRead, &Resource::Platform).is_err());
    // A forbid names itself; an allow names the permit that gave it.
    let rex = Principal::User { id: "rex".into(), reviewer: true };
    let course = CourseFacts { id: "c".into(), students: vec!["rex".into()], ..CourseFacts::default() };
    let session = Resource::LiveSession { id: "s".into(), course };
    let d = policy.authorize(&rex, Action::SessionJoin, &session).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.policies, vec!["reviewer-no-content".to_owned()]);
    let d = policy.authorize(&rex, Action::SessionRead, &session).unwrap();
    assert!(d.allowed);
    assert!(d.policies.contains(&"session-participant".to_owned()), "{:?}", d.policies);
    // A denial describes the request for the audit log.
    let d = policy.authorize(&user, Action::AuditRead, &Resource::AuditLog).unwrap();
    assert!(!d.allowed);
    assert_eq!(
        d.request,
        (r#"Cloister::User::"u""#.into(), "audit.read".into(), r#"Cloister::AuditLog::"log""#.into())
    );
}
