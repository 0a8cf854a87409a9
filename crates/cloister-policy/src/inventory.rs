//! The data-flow inventory (`audits/data-inventory.toml`): every stored table and column with its data class, who
//! reads it, its retention class and why it exists; and the GDPR Art. 30 record of processing rendered from it
//! together with `policy/retention.toml` (`audits/RECORD_OF_PROCESSING.md`, `cloister audit inventory`).
//!
//! Sans-IO: text in, text out. The schema check (every column of both SQL schemas is listed, and nothing else) lives
//! in `cloister-store`'s tests, which read [`Inventory::columns`].

use crate::retention::RetentionPolicy;
use crate::PolicyError;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// The inventory as the repository holds it (compiled in, so `cloister audit inventory` works without a checkout).
pub const EMBEDDED: &str = include_str!("../../../audits/data-inventory.toml");

/// The parsed inventory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// What the record of processing says beyond the columns.
    pub record: Record,
    /// Data classes by name, with what each means.
    pub data_class: BTreeMap<String, DataClass>,
    /// Every stored table.
    pub table: Vec<Table>,
}

/// The processing-level facts of the record (GDPR Art. 30(1) (a), (b), (c), (d), (e), (g)).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Who the controller is (the operator of a deployment fills in its name and contact).
    pub controller: String,
    /// Why data is processed; every table serves at least one purpose.
    pub purpose: Vec<Purpose>,
    /// Whose data it is.
    pub subject: Vec<Subject>,
    /// Who receives data, beyond the readers named per column.
    pub recipients: Vec<String>,
    /// Transfers to third countries.
    pub transfers: String,
    /// Technical and organisational security measures.
    pub security: Vec<String>,
}

/// A purpose of processing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purpose {
    /// Short name.
    pub name: String,
    /// What is done and why.
    pub description: String,
    /// GDPR Art. 6 basis.
    pub legal_basis: String,
    /// Tables this purpose uses.
    pub tables: Vec<String>,
}

/// A category of data subjects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// Short name.
    pub name: String,
    /// Who they are.
    pub description: String,
}

/// A data class.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataClass {
    /// What values of this class are and what they reveal.
    pub description: String,
}

/// One stored table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    /// Table name (same on SQLite and PostgreSQL).
    pub name: String,
    /// Why it exists.
    pub purpose: String,
    /// Its columns.
    pub column: Vec<Column>,
}

/// One stored column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Data class (a key of [`Inventory::data_class`]).
    pub class: String,
    /// Retention class (a class of `policy/retention.toml`).
    pub retention: String,
    /// Who reads it.
    pub readers: Vec<String>,
    /// Why it exists.
    pub purpose: String,
}

impl Inventory {
    /// Parses and checks the inventory against the retention policy: every column names a known data class and an
    /// existing retention class, has readers and a purpose, and is listed once; every purpose names existing tables
    /// and every table serves a purpose.
    pub fn parse(text: &str, retention: &RetentionPolicy) -> Result<Self, PolicyError> {
        let bad = PolicyError::Inventory;
        let inv: Inventory = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut seen = BTreeSet::new();
        for t in &inv.table {
            if t.purpose.trim().is_empty() || t.column.is_empty() {
                return Err(bad(format!("table {} needs a purpose and columns", t.name)));
            }
            for c in &t.column {
                let at = format!("{}.{}", t.name, c.name);
                if !inv.data_class.contains_key(&c.class) {
                    return Err(bad(format!("{at}: unknown data class {:?}", c.class)));
                }
                if !retention.info.contains_key(&c.retention) {
                    return Err(bad(format!("{at}: retention class {:?} is not in retention.toml", c.retention)));
                }
                if c.readers.is_empty() || c.purpose.trim().is_empty() {
                    return Err(bad(format!("{at}: needs readers and a purpose")));
                }
                if !seen.insert(at.clone()) {
                    return Err(bad(format!("{at} is listed twice")));
                }
            }
        }
        let tables: BTreeSet<&str> = inv.table.iter().map(|t| t.name.as_str()).collect();
        let mut served = BTreeSet::new();
        for p in &inv.record.purpose {
            for t in &p.tables {
                if !tables.contains(t.as_str()) {
                    return Err(bad(format!("purpose {:?} names unknown table {t:?}", p.name)));
                }
                served.insert(t.as_str());
            }
        }
        if let Some(t) = tables.difference(&served).next() {
            return Err(bad(format!("table {t} serves no purpose in [record]")));
        }
        Ok(inv)
    }

    /// Every `(table, column)` listed.
    pub fn columns(&self) -> BTreeSet<(String, String)> {
        self.table.iter().flat_map(|t| t.column.iter().map(|c| (t.name.clone(), c.name.clone()))).collect()
    }

    /// The GDPR Art. 30 record of processing, as Markdown. Deterministic: the same inputs give the same bytes.
    pub fn record_of_processing(&self, retention: &RetentionPolicy) -> String {
        let mut o = String::new();
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let _ = writeln!(o, "# Record of processing activities (GDPR Art. 30)\n");
        let _ = writeln!(
            o,
            "Generated by `cloister audit inventory` from `audits/data-inventory.toml` and `policy/retention.toml`. \
             Do not edit by hand: a test fails when this file differs from what those two files generate.\n"
        );
        let _ = writeln!(o, "## 1. Controller\n\n{}\n", self.record.controller.trim());

        let _ = writeln!(o, "## 2. Purposes of the processing\n");
        let _ = writeln!(o, "| purpose | what and why | legal basis | tables |\n|---|---|---|---|");
        for p in &self.record.purpose {
            let tables = p.tables.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", ");
            let _ =
                writeln!(o, "| {} | {} | {} | {tables} |", cell(&p.name), cell(&p.description), cell(&p.legal_basis));
        }

        let _ = writeln!(o, "\n## 3. Categories of data subjects\n");
        for s in &self.record.subject {
            let _ = writeln!(o, "- **{}**: {}", s.name, s.description.trim());
        }

        let _ = writeln!(o, "\n## 4. Categories of personal data\n");
        let _ = writeln!(o, "Every stored column belongs to one data class:\n");
        let _ = writeln!(o, "| data class | what it is | columns |\n|---|---|---|");
        for (name, class) in &self.data_class {
            let cols = self.columns_where(|c| &c.class == name);
            if !cols.is_empty() {
                let _ = writeln!(o, "| `{name}` | {} | {} |", cell(&class.description), cols.join(", "));
            }
        }

        let _ = writeln!(o, "\n## 5. Recipients\n");
        for r in &self.record.recipients {
            let _ = writeln!(o, "- {}", r.trim());
        }
        let _ = writeln!(o, "\nWho reads each column is in the annex.\n");

        let _ = writeln!(o, "## 6. Transfers to third countries\n\n{}\n", self.record.transfers.trim());

        let _ = writeln!(o, "## 7. Time limits for erasure\n");
        let _ = writeln!(
            o,
            "| retention class | limit | what starts or ends it | enforced by | columns |\n|---|---|---|---|---|"
        );
        for (name, info) in &retention.info {
            let cols = self.columns_where(|c| &c.retention == name);
            if cols.is_empty() {
                continue;
            }
            let _ = writeln!(
                o,
                "| `{name}` | {} | {} | {} | {} |",
                cell(&info.limit),
                cell(&info.trigger),
                cell(&info.enforced_by),
                cols.join(", ")
            );
        }

        let _ = writeln!(o, "\n## 8. Technical and organisational security measures\n");
        for m in &self.record.security {
            let _ = writeln!(o, "- {}", m.trim());
        }

        let _ = writeln!(o, "\n## Annex: every stored column\n");
        for t in &self.table {
            let _ = writeln!(o, "### `{}`\n\n{}\n", t.name, t.purpose.trim());
            let _ = writeln!(o, "| column | class | retention | readers | purpose |\n|---|---|---|---|---|");
            for c in &t.column {
                let _ = writeln!(
                    o,
                    "| `{}` | `{}` | `{}` | {} | {} |",
                    c.name,
                    c.class,
                    c.retention,
                    cell(&c.readers.join("; ")),
                    cell(&c.purpose)
                );
            }
            let _ = writeln!(o);
        }
        while o.ends_with("\n\n") {
            o.pop();
        }
        o
    }

    fn columns_where(&self, keep: impl Fn(&Column) -> bool) -> Vec<String> {
        self.table
            .iter()
            .flat_map(|t| t.column.iter().filter(|c| keep(c)).map(move |c| format!("`{}.{}`", t.name, c.name)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn retention() -> RetentionPolicy {
        RetentionPolicy::parse(include_str!("../../../policy/retention.toml")).unwrap()
    }

    #[test]
    fn the_committed_record_of_processing_is_what_the_inventory_generates() {
        let r = retention();
        let generated = Inventory::parse(EMBEDDED, &r).unwrap().record_of_processing(&r);
        let committed = include_str!("../../../audits/RECORD_OF_PROCESSING.md");
        assert!(
            committed == generated,
            "audits/RECORD_OF_PROCESSING.md is stale: run \
             `cargo run -p cloister-server -- audit inventory --out audits/RECORD_OF_PROCESSING.md`"
        );
        for heading in ["## 1. Controller", "## 2. Purposes", "## 3. Categories of data subjects", "## 7. Time limits"]
        {
            assert!(generated.contains(heading), "{heading}");
        }
        assert!(generated.contains("`accounts.email_hmac`") && generated.contains("| `erasure_record` | 6y |"));
    }

    #[test]
    fn a_bad_inventory_is_refused_with_the_place_named() {
        let r = retention();
        let good = EMBEDDED;
        let cases = [
            (good.replacen("class = \"keyed_hash\"", "class = \"plain_email\"", 1), "unknown data class"),
            (good.replacen("retention = \"account\"", "retention = \"forever\"", 1), "not in retention.toml"),
            (good.replacen("name = \"email_key_id\"", "name = \"user_id\"", 1), "accounts.user_id is listed twice"),
            (good.replacen("tables = [\"accounts\"", "tables = [\"nope\"", 1), "unknown table \"nope\""),
            (
                good.replacen("readers = [\"server (login lookup)\", \"the user (export)\"]", "readers = []", 1),
                "readers",
            ),
        ];
        for (text, want) in cases {
            assert_ne!(text, good, "case for {want:?} changed nothing");
            let err = Inventory::parse(&text, &r).unwrap_err().to_string();
            assert!(err.contains(want), "{err} does not say {want:?}");
        }
    }
}
