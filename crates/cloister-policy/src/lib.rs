//! Every API decision goes through AWS Cedar: the policies (`policy/authz.cedar`) and schema
//! (`policy/schema.cedarschema`) are loaded at start, validated in strict mode, and evaluated per request against
//! entities built from typed facts the server reads from its database ([`Principal`], [`Resource`]).
//!
//! Roles are facts, not Cedar data: an org admin is in [`OrgFacts::admins`], a teacher in
//! [`CourseFacts::teachers`], and so on; a compliance reviewer is a flag on the principal. A denial carries the
//! request's description so the caller can write it to the audit log.

#![forbid(unsafe_code)]

pub mod inventory;
pub mod retention;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, EntityUid, PolicySet, Request, Schema, ValidationMode,
    Validator,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::str::FromStr;

/// The policy file.
pub const POLICY_FILE: &str = "authz.cedar";
/// The schema file.
pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// The retention file's name in the policy directory.
pub const RETENTION_FILE: &str = "retention.toml";

/// The policy files compiled in: `(name, text)`.
pub const EMBEDDED: [(&str, &str); 3] = [
    (POLICY_FILE, include_str!("../../../policy/authz.cedar")),
    (SCHEMA_FILE, include_str!("../../../policy/schema.cedarschema")),
    (RETENTION_FILE, include_str!("../../../policy/retention.toml")),
];

/// Why policies cannot be loaded or a request cannot be evaluated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A policy file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The schema does not parse.
    #[error("policy schema: {0}")]
    Schema(String),
    /// The policies do not parse.
    #[error("policies: {0}")]
    Policies(String),
    /// The policies do not validate against the schema in strict mode.
    #[error("policies fail strict validation against the schema: {0}")]
    Validation(String),
    /// retention.toml is malformed.
    #[error("retention policy: {0}")]
    Retention(String),
    /// The data-flow inventory is malformed or disagrees with retention.toml.
    #[error("data-flow inventory: {0}")]
    Inventory(String),
    /// A request or its entities do not fit the schema (a bug in the caller: the server builds them).
    #[error("authorization request does not fit the schema: {0}")]
    Request(String),
}

/// Every action in the schema, as the server names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// List and search the public catalog.
    CatalogRead,
    /// Found an org.
    OrgCreate,
    /// Offer a public course.
    CourseCreatePublic,
    /// See an org.
    OrgRead,
    /// Change an org's admins and members.
    OrgManage,
    /// Delete an org with its courses and seat packs.
    OrgDelete,
    /// Create a seat pack for an org.
    SeatPackCreate,
    /// List an org's seat packs.
    SeatPackList,
    /// Create an org-only course.
    CourseCreateInOrg,
    /// See a seat pack (its codes are shown once at creation only).
    SeatPackRead,
    /// Redeem a seat code.
    SeatRedeem,
    /// Redeem a teacher's invitation.
    InvitationRedeem,
    /// See a course.
    CourseRead,
    /// Edit a course.
    CourseUpdate,
    /// Delete a course with its sessions, staff, enrollments, seat packs and invitations.
    CourseDelete,
    /// Add or remove teachers and TAs.
    CourseManageStaff,
    /// Invite learners.
    CourseInvite,
    /// See who is enrolled.
    CourseListEnrollments,
    /// Enroll in a free course.
    CourseEnrollFree,
    /// Buy a paid course.
    CoursePurchase,
    /// Schedule a live session.
    SessionCreate,
    /// See a live session's schedule and metadata.
    SessionRead,
    /// Join a live session (its MLS group: content).
    SessionJoin,
    /// Publish media in a live session.
    SessionPublish,
    /// Stage or remove participants.
    SessionModerate,
    /// Read the audit log and its proofs.
    AuditRead,
}

impl Action {
    /// All actions.
    pub const ALL: [Action; 26] = [
        Action::CatalogRead,
        Action::OrgCreate,
        Action::CourseCreatePublic,
        Action::OrgRead,
        Action::OrgManage,
        Action::OrgDelete,
        Action::SeatPackCreate,
        Action::SeatPackList,
        Action::CourseCreateInOrg,
        Action::SeatPackRead,
        Action::SeatRedeem,
        Action::InvitationRedeem,
        Action::CourseRead,
        Action::CourseUpdate,
        Action::CourseDelete,
        Action::CourseManageStaff,
        Action::CourseInvite,
        Action::CourseListEnrollments,
        Action::CourseEnrollFree,
        Action::CoursePurchase,
        Action::SessionCreate,
        Action::SessionRead,
        Action::SessionJoin,
        Action::SessionPublish,
        Action::SessionModerate,
        Action::AuditRead,
    ];

    /// The Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::CatalogRead => "catalog.read",
            Action::OrgCreate => "org.create",
            Action::CourseCreatePublic => "course.create_public",
            Action::OrgRead => "org.read",
            Action::OrgManage => "org.manage",
            Action::OrgDelete => "org.delete",
            Action::SeatPackCreate => "seatpack.create",
            Action::SeatPackList => "seatpack.list",
            Action::CourseCreateInOrg => "course.create_in_org",
            Action::SeatPackRead => "seatpack.read",
            Action::SeatRedeem => "seat.redeem",
            Action::InvitationRedeem => "invitation.redeem",
            Action::CourseRead => "course.read",
            Action::CourseUpdate => "course.update",
            Action::CourseDelete => "course.delete",
            Action::CourseManageStaff => "course.manage_staff",
            Action::CourseInvite => "course.invite",
            Action::CourseListEnrollments => "course.list_enrollments",
            Action::CourseEnrollFree => "course.enroll_free",
            Action::CoursePurchase => "course.purchase",
            Action::SessionCreate => "session.create",
            Action::SessionRead => "session.read",
            Action::SessionJoin => "session.join",
            Action::SessionPublish => "session.publish",
            Action::SessionModerate => "session.moderate",
            Action::AuditRead => "audit.read",
        }
    }

    /// The action with this Cedar id.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// Who asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Not signed in.
    Anonymous,
    /// A signed-in account.
    User {
        /// Pseudonymous user id.
        id: String,
        /// Holds the compliance reviewer role.
        reviewer: bool,
    },
}

/// An org and its people.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgFacts {
    /// Org id.
    pub id: String,
    /// Org admins' user ids.
    pub admins: Vec<String>,
    /// Members' user ids (staff the org buys seats for).
    pub members: Vec<String>,
}

/// A course and its people.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CourseFacts {
    /// Course id.
    pub id: String,
    /// The org, for org-only courses.
    pub org: Option<OrgFacts>,
    /// In the public catalog.
    pub public: bool,
    /// Price 0.
    pub free: bool,
    /// Teachers' user ids.
    pub teachers: Vec<String>,
    /// TAs' user ids.
    pub tas: Vec<String>,
    /// Enrolled students' user ids.
    pub students: Vec<String>,
}

/// What is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// The service (for creating top-level things and the catalog).
    Platform,
    /// An org.
    Org(OrgFacts),
    /// A course.
    Course(CourseFacts),
    /// A live session of a course.
    LiveSession {
        /// Session id.
        id: String,
        /// Its course.
        course: CourseFacts,
    },
    /// A seat pack of an org.
    SeatPack {
        /// Seat pack id.
        id: String,
        /// Its org.
        org: OrgFacts,
    },
    /// The audit log.
    AuditLog,
}

/// A decision and what made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed?
    pub allowed: bool,
    /// `@id` of the policies that determined it (empty on a default deny).
    pub policies: Vec<String>,
    /// `principal action resource`, for the audit log on a denial (ids only).
    pub request: (String, String, String),
}

fn uid(ty: &str, id: &str) -> Value {
    json!({ "type": format!("Cloister::{ty}"), "id": id })
}

fn users(ids: &[String]) -> Value {
    Value::Array(ids.iter().map(|id| json!({ "__entity": uid("User", id) })).collect())
}

fn entity_ref(ty: &str, id: &str) -> Value {
    json!({ "__entity": uid(ty, id) })
}

fn org_entity(o: &OrgFacts) -> Value {
    json!({ "uid": uid("Org", &o.id), "attrs": { "admins": users(&o.admins), "members": users(&o.members) }, "parents": [] })
}

fn course_entities(c: &CourseFacts, out: &mut Vec<Value>) {
    let mut attrs = json!({
        "public": c.public,
        "free": c.free,
        "teachers": users(&c.teachers),
        "tas": users(&c.tas),
        "students": users(&c.students),
    });
    if let Some(org) = &c.org {
        attrs["org"] = entity_ref("Org", &org.id);
        out.push(org_entity(org));
    }
    out.push(json!({ "uid": uid("Course", &c.id), "attrs": attrs, "parents": [] }));
}

/// Loaded, validated policies.
pub struct Policy {
    retention: retention::RetentionPolicy,
    policies: PolicySet,
    schema: Schema,
    authorizer: Authorizer,
    digests: Vec<(String, String)>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("digests", &self.digests).finish_non_exhaustive()
    }
}

impl Policy {
    /// Loads `authz.cedar` and `schema.cedarschema` from `dir`, validates them in strict mode, and records the
    /// SHA-256 of every file under `dir` (for the audit log's policy-loaded entry).
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map_err(|source| PolicyError::Read { path: path.display().to_string(), source })
        };
        let mut policy = Self::from_sources(&read(POLICY_FILE)?, &read(SCHEMA_FILE)?)?;
        policy.retention = retention::RetentionPolicy::parse(&read(RETENTION_FILE)?)?;
        policy.digests = digests(dir)?;
        Ok(policy)
    }

    /// The policy files compiled into the binary: what runs when no policy directory is configured. The digests
    /// cover the same files as in the repository's `policy/` (`authz.cedar`, `schema.cedarschema`, `retention.toml`).
    pub fn embedded() -> Result<Self, PolicyError> {
        let mut policy = Self::from_sources(EMBEDDED[0].1, EMBEDDED[1].1)?;
        policy.retention = retention::RetentionPolicy::parse(EMBEDDED[2].1)?;
        let mut digests: Vec<(String, String)> =
            EMBEDDED.iter().map(|(n, t)| ((*n).to_owned(), hex::encode(Sha256::digest(t.as_bytes())))).collect();
        digests.sort();
        policy.digests = digests;
        Ok(policy)
    }

    /// Parses and strictly validates policies against a schema.
    pub fn from_sources(policies: &str, schema: &str) -> Result<Self, PolicyError> {
        let (schema, warnings) =
            Schema::from_cedarschema_str(schema).map_err(|e| PolicyError::Schema(e.to_string()))?;
        // Warnings (shadowed names and the like) are errors here: the schema is small and should be clean.
        let warnings: Vec<String> = warnings.map(|w| w.to_string()).collect();
        if !warnings.is_empty() {
            return Err(PolicyError::Schema(warnings.join("; ")));
        }
        let policies = PolicySet::from_str(policies).map_err(|e| PolicyError::Policies(e.to_string()))?;
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !result.validation_passed_without_warnings() {
            let all: Vec<String> = result
                .validation_errors()
                .map(|e| e.to_string())
                .chain(result.validation_warnings().map(|w| w.to_string()))
                .collect();
            return Err(PolicyError::Validation(all.join("; ")));
        }
        let retention = retention::RetentionPolicy { info: Default::default(), automated: Vec::new() };
        Ok(Self { retention, policies, schema, authorizer: Authorizer::new(), digests: Vec::new() })
    }

    /// The retention policy (empty when built with [`Policy::from_sources`]).
    pub fn retention(&self) -> &retention::RetentionPolicy {
        &self.retention
    }

    /// `(path relative to the policy dir, hex SHA-256)` of every policy file, sorted by path.
    pub fn digests(&self) -> &[(String, String)] {
        &self.digests
    }

    /// Decides one request. An error means the request does not fit the schema: a server bug, which callers
    /// treat as a denial.
    pub fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource,
    ) -> Result<Decision, PolicyError> {
        let mut entities: Vec<Value> = Vec::new();
        let principal_uid = match principal {
            Principal::Anonymous => {
                entities.push(json!({ "uid": uid("Anonymous", "anonymous"), "attrs": {}, "parents": [] }));
                uid("Anonymous", "anonymous")
            }
            Principal::User { id, reviewer } => {
                entities.push(json!({ "uid": uid("User", id), "attrs": { "reviewer": reviewer }, "parents": [] }));
                uid("User", id)
            }
        };
        let resource_uid = match resource {
            Resource::Platform => {
                entities.push(json!({ "uid": uid("Platform", "cloister"), "attrs": {}, "parents": [] }));
                uid("Platform", "cloister")
            }
            Resource::AuditLog => {
                entities.push(json!({ "uid": uid("AuditLog", "log"), "attrs": {}, "parents": [] }));
                uid("AuditLog", "log")
            }
            Resource::Org(o) => {
                entities.push(org_entity(o));
                uid("Org", &o.id)
            }
            Resource::Course(c) => {
                course_entities(c, &mut entities);
                uid("Course", &c.id)
            }
            Resource::LiveSession { id, course } => {
                course_entities(course, &mut entities);
                entities.push(json!({
                    "uid": uid("LiveSession", id),
                    "attrs": { "course": entity_ref("Course", &course.id) },
                    "parents": []
                }));
                uid("LiveSession", id)
            }
            Resource::SeatPack { id, org } => {
                entities.push(org_entity(org));
                entities.push(json!({
                    "uid": uid("SeatPack", id),
                    "attrs": { "org": entity_ref("Org", &org.id) },
                    "parents": []
                }));
                uid("SeatPack", id)
            }
        };
        // Users named in sets but not asking are referenced, not stored: Cedar's `contains` compares ids.
        dedup_entities(&mut entities);
        let entities = Entities::from_json_value(Value::Array(entities), Some(&self.schema))
            .map_err(|e| PolicyError::Request(e.to_string()))?;
        let to_uid = |v: &Value| EntityUid::from_json(v.clone()).map_err(|e| PolicyError::Request(e.to_string()));
        let p = to_uid(&principal_uid)?;
        let r = to_uid(&resource_uid)?;
        let a = to_uid(&json!({ "type": "Cloister::Action", "id": action.as_str() }))?;
        let request = Request::new(p.clone(), a, r.clone(), Context::empty(), Some(&self.schema))
            .map_err(|e| PolicyError::Request(e.to_string()))?;
        let response = self.authorizer.is_authorized(&request, &self.policies, &entities);
        let errors: Vec<String> = response.diagnostics().errors().map(|e| e.to_string()).collect();
        if !errors.is_empty() {
            return Err(PolicyError::Request(errors.join("; ")));
        }
        Ok(Decision {
            allowed: response.decision() == CedarDecision::Allow,
            policies: response
                .diagnostics()
                .reason()
                .map(|id| {
                    // The policy's @id annotation when it has one (every shipped policy does).
                    let named = self.policies.policy(id).and_then(|p| p.annotation("id"));
                    named.map_or_else(|| id.to_string(), str::to_owned)
                })
                .collect(),
            request: (p.to_string(), action.as_str().to_owned(), r.to_string()),
        })
    }
}

/// Keeps the first of entities with the same uid (an org can appear as the course's org and as a seat pack's).
fn dedup_entities(entities: &mut Vec<Value>) {
    let mut seen = std::collections::HashSet::new();
    entities.retain(|e| seen.insert(e["uid"].to_string()));
}

fn digests(dir: &Path) -> Result<Vec<(String, String)>, PolicyError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).map_err(|source| PolicyError::Read { path: d.display().to_string(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| PolicyError::Read { path: d.display().to_string(), source })?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path)
                    .map_err(|source| PolicyError::Read { path: path.display().to_string(), source })?;
                let rel = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().into_owned();
                out.push((rel, hex::encode(Sha256::digest(&bytes))));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SCHEMA: &str = include_str!("../../../policy/schema.cedarschema");
    const POLICIES: &str = include_str!("../../../policy/authz.cedar");

    #[test]
    fn the_shipped_policies_validate_strictly() {
        Policy::from_sources(POLICIES, SCHEMA).unwrap();
    }

    #[test]
    fn invalid_policies_are_refused_with_the_reason() {
        let bad = format!("{POLICIES}\npermit (principal is Cloister::User, action == Cloister::Action::\"course.read\", resource is Cloister::Course) when {{ resource.price > 0 }};");
        match Policy::from_sources(&bad, SCHEMA) {
            Err(PolicyError::Validation(why)) => assert!(why.contains("price"), "{why}"),
            other => panic!("expected a validation error, got {other:?}"),
        }
        // Strict mode: an optional attribute used without `has` is refused.
        let bad = format!("{POLICIES}\npermit (principal is Cloister::User, action == Cloister::Action::\"course.read\", resource is Cloister::Course) when {{ resource.org.admins.contains(principal) }};");
        assert!(matches!(Policy::from_sources(&bad, SCHEMA), Err(PolicyError::Validation(_))));
        assert!(matches!(Policy::from_sources("permit (", SCHEMA), Err(PolicyError::Policies(_))));
        assert!(matches!(Policy::from_sources(POLICIES, "namespace {"), Err(PolicyError::Schema(_))));
    }

    #[test]
    fn every_action_in_the_schema_has_a_name_here_and_back() {
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA).unwrap();
        let mut in_schema: Vec<String> = schema.actions().map(|a| a.id().unescaped().to_owned()).collect();
        in_schema.sort();
        let mut ours: Vec<String> = Action::ALL.iter().map(|a| a.as_str().to_owned()).collect();
        ours.sort();
        assert_eq!(in_schema, ours);
        for a in Action::ALL {
            assert_eq!(Action::from_name(a.as_str()), Some(a));
        }
    }

    #[test]
    fn the_embedded_files_are_the_repository_files() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy");
        let loaded = Policy::load(&dir).unwrap();
        let embedded = Policy::embedded().unwrap();
        for (name, hash) in embedded.digests() {
            assert!(loaded.digests().contains(&(name.clone(), hash.clone())), "{name} differs from policy/{name}");
        }
        assert_eq!(embedded.digests().len(), 3);
    }

    #[test]
    fn load_reads_the_policy_dir_and_hashes_every_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy");
        let p = Policy::load(&dir).unwrap();
        let names: Vec<&str> = p.digests().iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&POLICY_FILE) && names.contains(&SCHEMA_FILE) && names.contains(&"retention.toml"),
            "{names:?}"
        );
        let (_, h) = p.digests().iter().find(|(n, _)| n == POLICY_FILE).unwrap();
        assert_eq!(*h, hex::encode(Sha256::digest(POLICIES.as_bytes())));
        assert!(matches!(Policy::load(Path::new("/nonexistent")), Err(PolicyError::Read { .. })));
    }
}
