//! The schema registry: every registered schema version with its stable id.
//!
//! Ids are fixed here, in the source, so every build and every node frames events with the same
//! ids. Registering a new version of a topic's schema means copying its `.avsc` to
//! `avro/versions/<subject>.v<N>.avsc` and adding a row below with the next id; the compatibility
//! tests refuse a version that cannot read the data its predecessors wrote.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::error::CompatibilityError;
use apache_avro::schema_compatibility::SchemaCompatibility;

/// Registered versions: subject, version, id and the schema text.
const REGISTERED: &[(&str, u32, u32, &str)] = &[
    ("users-value", 1, 1, include_str!("../avro/versions/users-value.v1.avsc")),
    ("conversations-value", 1, 2, include_str!("../avro/versions/conversations-value.v1.avsc")),
    ("messages-value", 1, 3, include_str!("../avro/versions/messages-value.v1.avsc")),
    ("messages-value", 2, 7, include_str!("../avro/versions/messages-value.v2.avsc")),
    ("presence-value", 1, 4, include_str!("../avro/versions/presence-value.v1.avsc")),
    ("calls-value", 1, 5, include_str!("../avro/versions/calls-value.v1.avsc")),
    ("signals-value", 1, 6, include_str!("../avro/versions/signals-value.v1.avsc")),
    ("calls-value", 2, 8, include_str!("../avro/versions/calls-value.v2.avsc")),
];

/// The evolution rule every subject follows, in Confluent's terms: each new version reads what
/// all earlier versions of its subject wrote (`tests/compatibility.rs` holds the registered
/// versions to it).
pub const COMPATIBILITY_LEVEL: &str = "BACKWARD_TRANSITIVE";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema {subject} v{version} does not parse: {source}")]
    Parse { subject: String, version: u32, source: Box<apache_avro::Error> },
}

/// One registered version of a subject's schema.
#[derive(Debug)]
pub struct SchemaVersion {
    pub subject: &'static str,
    pub version: u32,
    pub id: u32,
    /// The schema as registered, for serving over HTTP.
    pub text: &'static str,
    pub schema: Schema,
}

impl SchemaVersion {
    /// Whether `reader` reads every datum written with this version: what a new version must
    /// do for each earlier one under [`COMPATIBILITY_LEVEL`].
    pub fn readable_by(&self, reader: &Schema) -> Result<(), CompatibilityError> {
        SchemaCompatibility::can_read(&self.schema, reader)
    }
}

#[derive(Debug)]
pub struct Registry {
    versions: Vec<SchemaVersion>,
    by_id: HashMap<u32, usize>,
}

impl Registry {
    /// The registry compiled into this binary.
    pub fn builtin() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            Registry::parse(REGISTERED).expect("the built-in schemas parse (checked by tests)")
        })
    }

    fn parse(rows: &[(&'static str, u32, u32, &'static str)]) -> Result<Registry, RegistryError> {
        let versions = rows
            .iter()
            .map(|&(subject, version, id, text)| {
                let schema = Schema::parse_str(text).map_err(|e| RegistryError::Parse {
                    subject: subject.to_owned(),
                    version,
                    source: Box::new(e),
                })?;
                Ok(SchemaVersion { subject, version, id, text, schema })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let by_id = versions.iter().enumerate().map(|(i, v)| (v.id, i)).collect();
        Ok(Registry { versions, by_id })
    }

    pub fn by_id(&self, id: u32) -> Option<&SchemaVersion> {
        self.by_id.get(&id).map(|&i| &self.versions[i])
    }

    /// Every registered version.
    pub fn all(&self) -> impl Iterator<Item = &SchemaVersion> {
        self.versions.iter()
    }

    /// All versions of a subject, oldest first.
    pub fn versions(&self, subject: &str) -> impl Iterator<Item = &SchemaVersion> {
        self.versions.iter().filter(move |v| v.subject == subject)
    }

    /// The version new events of a subject are written with.
    pub fn latest(&self, subject: &str) -> Option<&SchemaVersion> {
        self.versions(subject).max_by_key(|v| v.version)
    }

    /// The version of `subject` that is `schema`. Both are compared as parsed schemas written
    /// out again, so layout, key order and how a type is spelled (`"string"` or
    /// `{"type":"string"}`) do not matter, while what a reader resolves by (names, defaults,
    /// aliases, logical types) does.
    pub fn find(&self, subject: &str, schema: &Schema) -> Option<&SchemaVersion> {
        let wanted = normalized(schema);
        self.versions(subject).find(|version| normalized(&version.schema) == wanted)
    }

    pub fn subjects(&self) -> Vec<&'static str> {
        let mut subjects: Vec<_> = Vec::new();
        for version in &self.versions {
            if !subjects.contains(&version.subject) {
                subjects.push(version.subject);
            }
        }
        subjects
    }
}

fn normalized(schema: &Schema) -> serde_json::Value {
    serde_json::to_value(schema).expect("a parsed schema writes out as JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subject_is_listed_once_whatever_order_its_versions_were_registered_in() {
        let registry = Registry::builtin();
        let subjects = registry.subjects();
        assert_eq!(subjects.len(), 6, "{subjects:?}");
        assert_eq!(registry.latest("calls-value").map(|v| (v.version, v.id)), Some((2, 8)));
    }

    #[test]
    fn a_schema_is_found_under_its_subject_however_its_text_is_laid_out() {
        let registry = Registry::builtin();
        let v1 = registry.versions("messages-value").next().unwrap();
        let mut json: serde_json::Value = serde_json::from_str(v1.text).unwrap();
        let compact = Schema::parse_str(&json.to_string()).unwrap();
        assert_eq!(registry.find("messages-value", &compact).map(|v| v.id), Some(v1.id));
        assert!(registry.find("calls-value", &compact).is_none(), "another subject's schema");

        json["fields"][0]["default"] = serde_json::json!("changed");
        let changed = Schema::parse_str(&json.to_string()).unwrap();
        assert!(registry.find("messages-value", &changed).is_none(), "a default is part of it");
    }
}
