//! The retention engine's sans-IO core: reads `policy/retention.toml`, decides for a given time which rows of which
//! class are due (as a cutoff per automated rule), and makes the salted commitment to deleted ids that the audit log
//! keeps. The server's scheduled task and `cloister retention run` do the deleting.

use crate::PolicyError;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A deletion the server knows how to do. Each automated class in retention.toml names one (`rule = "..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Rule {
    /// `sessions` rows whose `expires_at` has passed (the limit is the session lifetime itself).
    ExpiredSessions,
    /// `erasures` rows older than the class limit.
    ErasureRecords,
    /// Unredeemed `seat_codes` of packs that expired more than the class limit ago.
    ExpiredSeatCodes,
    /// Unredeemed `invitations` that expired more than the class limit ago.
    ExpiredInvitations,
    /// `enrollments` of courses whose last live session ended more than the class limit ago.
    EndedCourseEnrollments,
    /// `session_participants` of live sessions that ended more than the class limit ago.
    EndedSessionParticipants,
    /// The delivery service's group logs (`ds_groups`, cascading to entries and leaves) of live sessions that ended
    /// more than the class limit ago.
    EndedSessionLogs,
    /// Unused `ds_key_packages` whose lifetime ended more than the class limit ago.
    ExpiredKeyPackages,
    /// `ds_used_key_packages` references whose KeyPackage's lifetime ended more than the class limit ago.
    ExpiredKeyPackageReferences,
}

impl Rule {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "expired_sessions" => Some(Self::ExpiredSessions),
            "erasure_records" => Some(Self::ErasureRecords),
            "expired_seat_codes" => Some(Self::ExpiredSeatCodes),
            "expired_invitations" => Some(Self::ExpiredInvitations),
            "ended_course_enrollments" => Some(Self::EndedCourseEnrollments),
            "ended_session_participants" => Some(Self::EndedSessionParticipants),
            "ended_session_logs" => Some(Self::EndedSessionLogs),
            "expired_key_packages" => Some(Self::ExpiredKeyPackages),
            "expired_key_package_references" => Some(Self::ExpiredKeyPackageReferences),
            _ => None,
        }
    }

    /// The rule's name in retention.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExpiredSessions => "expired_sessions",
            Self::ErasureRecords => "erasure_records",
            Self::ExpiredSeatCodes => "expired_seat_codes",
            Self::ExpiredInvitations => "expired_invitations",
            Self::EndedCourseEnrollments => "ended_course_enrollments",
            Self::EndedSessionParticipants => "ended_session_participants",
            Self::EndedSessionLogs => "ended_session_logs",
            Self::ExpiredKeyPackages => "expired_key_packages",
            Self::ExpiredKeyPackageReferences => "expired_key_package_references",
        }
    }
}

#[derive(Debug, Deserialize)]
struct File {
    class: BTreeMap<String, ClassDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassDef {
    description: String,
    limit: String,
    limit_seconds: Option<i64>,
    trigger: String,
    enforced_by: String,
    /// Policy id recorded in the audit log (required with `rule`).
    id: Option<String>,
    rule: Option<String>,
}

/// One automated class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutomatedClass {
    /// Policy id (e.g. `ret-session-v1`).
    pub policy_id: String,
    /// Data class name.
    pub class: String,
    /// What deletes it.
    pub rule: Rule,
    /// Limit in seconds (None for rules whose rows carry their own expiry).
    pub limit_seconds: Option<i64>,
}

/// What is due at a given time for one class: rows whose reference time is before `cutoff` (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Policy id.
    pub policy_id: String,
    /// Data class.
    pub class: String,
    /// The deletion.
    pub rule: Rule,
    /// Rows with reference time `<= cutoff` (expiry rules) or `< cutoff` (age rules) are due.
    pub cutoff: i64,
}

/// What retention.toml says of one class, for people (the record of processing quotes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassInfo {
    /// What the class holds.
    pub description: String,
    /// The time limit, as people read it ("6y", "until erased").
    pub limit: String,
    /// What starts or ends the clock.
    pub trigger: String,
    /// What deletes it.
    pub enforced_by: String,
}

/// The parsed retention policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Every class (automated or not) with its description, limit, trigger and enforcement, by name.
    pub info: BTreeMap<String, ClassInfo>,
    /// The automated ones.
    pub automated: Vec<AutomatedClass>,
}

impl RetentionPolicy {
    /// Parses retention.toml strictly: every class has a description, limit, trigger and enforcement; an automated
    /// class has an id, a known rule and (for age rules) `limit_seconds`.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let bad = |m: String| PolicyError::Retention(m);
        let file: File = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut automated = Vec::new();
        for (name, c) in &file.class {
            for (field, v) in [
                ("description", &c.description),
                ("limit", &c.limit),
                ("trigger", &c.trigger),
                ("enforced_by", &c.enforced_by),
            ] {
                if v.trim().is_empty() {
                    return Err(bad(format!("class {name}: {field} is empty")));
                }
            }
            if c.limit_seconds.is_some_and(|s| s <= 0) {
                return Err(bad(format!("class {name}: limit_seconds must be positive")));
            }
            let Some(rule_name) = &c.rule else {
                if c.id.is_some() {
                    return Err(bad(format!("class {name}: id without a rule")));
                }
                continue;
            };
            let rule =
                Rule::from_name(rule_name).ok_or_else(|| bad(format!("class {name}: unknown rule {rule_name:?}")))?;
            let policy_id = c.id.clone().ok_or_else(|| bad(format!("class {name}: a rule needs an id")))?;
            if rule != Rule::ExpiredSessions && c.limit_seconds.is_none() {
                return Err(bad(format!("class {name}: rule {rule_name} needs limit_seconds")));
            }
            automated.push(AutomatedClass { policy_id, class: name.clone(), rule, limit_seconds: c.limit_seconds });
        }
        let mut ids: Vec<&str> = automated.iter().map(|a| a.policy_id.as_str()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad("two classes share a policy id".into()));
        }
        let info = file
            .class
            .into_iter()
            .map(|(name, c)| {
                let info = ClassInfo {
                    description: c.description,
                    limit: c.limit,
                    trigger: c.trigger,
                    enforced_by: c.enforced_by,
                };
                (name, info)
            })
            .collect::<BTreeMap<_, _>>();
        Ok(Self { info, automated })
    }

    /// What is due at `now` (unix seconds), one entry per automated class.
    pub fn plan(&self, now: i64) -> Vec<Due> {
        self.automated
            .iter()
            .map(|a| Due {
                policy_id: a.policy_id.clone(),
                class: a.class.clone(),
                rule: a.rule,
                cutoff: match a.rule {
                    Rule::ExpiredSessions => now,
                    _ => now.saturating_sub(a.limit_seconds.unwrap_or(i64::MAX)),
                },
            })
            .collect()
    }
}

/// `SHA-256(salt || id_1 || "\n" || id_2 || "\n" ...)` over the sorted ids, hex. With the salt discarded, the
/// commitment shows that a set was deleted without letting anyone test guesses of which ids it held.
pub fn commitment(salt: &[u8; 16], ids: &[String]) -> String {
    let mut sorted: Vec<&String> = ids.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    h.update(salt);
    for id in sorted {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_shipped_retention_policy_parses_and_plans() {
        let p = RetentionPolicy::parse(include_str!("../../../policy/retention.toml")).unwrap();
        let rules: Vec<Rule> = p.automated.iter().map(|a| a.rule).collect();
        assert!(rules.contains(&Rule::ExpiredSessions) && rules.contains(&Rule::ErasureRecords), "{rules:?}");
        let plan = p.plan(1_000_000_000);
        let erasures = plan.iter().find(|d| d.rule == Rule::ErasureRecords).unwrap();
        assert_eq!(erasures.cutoff, 1_000_000_000 - 189_216_000, "six years");
        let sessions = plan.iter().find(|d| d.rule == Rule::ExpiredSessions).unwrap();
        assert_eq!(sessions.cutoff, 1_000_000_000);
    }

    #[test]
    fn malformed_policies_are_refused() {
        let base = "[class.x]\ndescription = \"d\"\nlimit = \"1d\"\ntrigger = \"t\"\nenforced_by = \"e\"\n";
        assert!(RetentionPolicy::parse(base).unwrap().automated.is_empty());
        for extra in [
            "rule = \"erasure_records\"\nid = \"a\"\n",
            "rule = \"no_such_rule\"\nid = \"a\"\nlimit_seconds = 5\n",
            "rule = \"expired_sessions\"\n",
            "id = \"a\"\n",
            "limit_seconds = -1\n",
            "unknown_key = 1\n",
        ] {
            let text = format!("{base}{extra}");
            assert!(RetentionPolicy::parse(&text).is_err(), "{text}");
        }
        let two = format!("{base}rule = \"expired_sessions\"\nid = \"a\"\n[class.y]\ndescription = \"d\"\nlimit = \"1d\"\ntrigger = \"t\"\nenforced_by = \"e\"\nrule = \"erasure_records\"\nid = \"a\"\nlimit_seconds = 9\n");
        assert!(RetentionPolicy::parse(&two).is_err(), "duplicate policy id");
    }

    #[test]
    fn commitments_depend_on_salt_and_set_not_order() {
        let ids = vec!["b".to_owned(), "a".to_owned()];
        let rev = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(commitment(&[1; 16], &ids), commitment(&[1; 16], &rev));
        assert_ne!(commitment(&[1; 16], &ids), commitment(&[2; 16], &ids));
        assert_ne!(commitment(&[1; 16], &ids), commitment(&[1; 16], &ids[..1]));
    }
}
