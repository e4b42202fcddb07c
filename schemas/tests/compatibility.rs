//! Schemas evolve only in backward-compatible ways: each registered version reads everything its
//! predecessors wrote, and the hand-edited `.avsc` of every topic is registered.

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use serde_json::json;
use switchboard_schemas::{Registry, Topic};

fn current(topic: Topic) -> &'static str {
    match topic {
        Topic::Users => include_str!("../avro/users.avsc"),
        Topic::Conversations => include_str!("../avro/conversations.avsc"),
        Topic::Messages => include_str!("../avro/messages.avsc"),
        Topic::Presence => include_str!("../avro/presence.avsc"),
        Topic::Calls => include_str!("../avro/calls.avsc"),
        Topic::Signals => include_str!("../avro/signals.avsc"),
    }
}

#[test]
fn every_current_schema_is_the_latest_registered_version() {
    for topic in Topic::ALL {
        let schema = Schema::parse_str(current(topic)).unwrap();
        let latest = Registry::builtin().latest(&topic.subject()).unwrap();
        assert_eq!(
            schema.canonical_form(),
            latest.schema.canonical_form(),
            "avro/{topic}.avsc changed: register it as {} v{} in schemas/src/registry.rs",
            topic.subject(),
            latest.version + 1
        );
    }
}

#[test]
fn every_version_reads_what_all_earlier_versions_wrote() {
    let registry = Registry::builtin();
    for subject in registry.subjects() {
        let versions: Vec<_> = registry.versions(subject).collect();
        for (i, reader) in versions.iter().enumerate() {
            for writer in &versions[..i] {
                writer.readable_by(&reader.schema).unwrap_or_else(|e| {
                    panic!("{subject} v{} cannot read v{}: {e}", reader.version, writer.version)
                });
            }
        }
    }
}

/// The check above must be able to fail: a new required field breaks old data, an optional one
/// with a default does not.
#[test]
fn the_compatibility_check_catches_a_breaking_change() {
    let old = Schema::parse_str(current(Topic::Messages)).unwrap();
    let with_field = |field: serde_json::Value| {
        let mut json: serde_json::Value = serde_json::from_str(current(Topic::Messages)).unwrap();
        let payload = json["fields"].as_array_mut().unwrap().last_mut().unwrap();
        let sent = &mut payload["type"][0];
        assert_eq!(sent["name"], "MessageSent");
        sent["fields"].as_array_mut().unwrap().push(field);
        Schema::parse_str(&json.to_string()).unwrap()
    };
    let breaking = with_field(json!({ "name": "priority", "type": "int" }));
    let compatible =
        with_field(json!({ "name": "priority", "type": ["null", "int"], "default": null }));
    assert!(SchemaCompatibility::can_read(&old, &breaking).is_err());
    assert!(SchemaCompatibility::can_read(&old, &compatible).is_ok());
}
