//! Every event type survives encode → decode unchanged, framed the Confluent way.

use std::collections::BTreeSet;

use apache_avro::Schema;
use apache_avro::schema::UnionSchema;
use apache_avro::types::Value;
use switchboard_schemas::*;

fn event(payload: Payload, actor: Option<UserId>) -> Event {
    Event {
        meta: EventMeta {
            event_id: "4b3f3b5e-8a8e-4d4e-9a57-0f4f3c7f2b11".into(),
            occurred_at: 1_764_000_000_123,
            actor,
            trace_id: "trace-1".into(),
        },
        payload,
    }
}

#[test]
fn every_event_type_round_trips() {
    let codec = Codec::new();
    for (i, payload) in samples::payloads().into_iter().enumerate() {
        let actor = (i % 2 == 0).then_some(UserId(i as i64 + 1));
        let original = event(payload, actor);
        let frame = codec.encode(&original).unwrap_or_else(|e| panic!("{original:?}: {e}"));
        assert_eq!(frame[0], 0, "magic byte");
        let id = u32::from_be_bytes(frame[1..5].try_into().unwrap());
        let registered = Registry::builtin().by_id(id).expect("id is registered");
        assert_eq!(registered.subject, original.topic().subject());
        assert_eq!(codec.decode(&frame).unwrap(), original);
    }
}

/// The codec serialises the Rust structs straight into Avro, in their field order; the bytes must
/// be exactly what a generic Avro encoder writes for the schema, or other consumers misread them.
#[test]
fn frames_are_what_a_generic_avro_encoder_writes() {
    let codec = Codec::new();
    for (i, payload) in samples::payloads().into_iter().enumerate() {
        let actor = (i % 2 == 0).then_some(UserId(i as i64 + 1));
        let event = event(payload, actor);
        let writer = Registry::builtin().latest(&event.topic().subject()).unwrap();
        let expected = generic_frame(&event, writer).expect("the latest version has every record");
        assert_eq!(codec.encode(&event).unwrap(), expected, "{event:?}");
    }
}

/// Producers built against an older registered version still write to the topics: whatever each
/// version writes decodes, and nothing it wrote is lost on the way (written again by the same
/// version, the decoded event is the same bytes).
#[test]
fn what_every_registered_version_writes_decodes() {
    let codec = Codec::new();
    let mut versions_read = BTreeSet::new();
    for (i, payload) in samples::payloads().into_iter().enumerate() {
        let event = event(payload, (i % 2 == 0).then_some(UserId(i as i64 + 1)));
        for version in Registry::builtin().versions(&event.topic().subject()) {
            let Some(frame) = generic_frame(&event, version) else {
                continue;
            };
            let decoded = codec
                .decode(&frame)
                .unwrap_or_else(|e| panic!("v{} of {event:?}: {e}", version.version));
            assert_eq!(generic_frame(&decoded, version), Some(frame), "v{}", version.version);
            versions_read.insert((version.subject, version.version));
        }
    }
    let registered: BTreeSet<_> =
        Registry::builtin().all().map(|v| (v.subject, v.version)).collect();
    assert_eq!(versions_read, registered);
}

/// The frame a generic Avro encoder writes for `event` with `version` of its topic's schema, or
/// `None` if that version has no record for the event. Fields the version lacks are left out.
fn generic_frame(event: &Event, version: &SchemaVersion) -> Option<Vec<u8>> {
    let union = payload_union(&version.schema);
    let (index, branch) = union
        .variants()
        .iter()
        .enumerate()
        .find(|(_, s)| s.name().unwrap().name == event.payload.record_name())?;
    let payload = apache_avro::to_value(&event.payload)
        .unwrap()
        .resolve_schemata(branch, vec![&version.schema])
        .unwrap();
    let actor = match event.meta.actor {
        Some(actor) => Value::Union(1, Box::new(Value::Long(actor.0))),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let envelope = Value::Record(vec![
        ("event_id".into(), Value::String(event.meta.event_id.clone())),
        ("occurred_at".into(), Value::TimestampMillis(event.meta.occurred_at)),
        ("actor".into(), actor),
        ("trace_id".into(), Value::String(event.meta.trace_id.clone())),
        ("payload".into(), Value::Union(index as u32, Box::new(payload))),
    ]);
    let mut frame = vec![0];
    frame.extend_from_slice(&version.id.to_be_bytes());
    frame.extend(apache_avro::to_avro_datum(&version.schema, envelope).unwrap());
    Some(frame)
}

fn payload_union(schema: &Schema) -> &UnionSchema {
    let Schema::Record(envelope) = schema else { panic!("{schema:?} is no record") };
    let payload = envelope.fields.iter().find(|f| f.name == "payload").unwrap();
    let Schema::Union(union) = &payload.schema else { panic!("the payload is no union") };
    union
}

#[test]
fn samples_cover_every_record_of_every_topic() {
    let sampled: BTreeSet<String> =
        samples::payloads().iter().map(|p| p.record_name().to_owned()).collect();
    let mut declared = BTreeSet::new();
    for topic in Topic::ALL {
        let latest = Registry::builtin().latest(&topic.subject()).unwrap();
        declared.extend(
            payload_union(&latest.schema).variants().iter().map(|s| s.name().unwrap().name.clone()),
        );
    }
    assert_eq!(sampled, declared);
}

/// A send framed with `messages-value` v1 (schema id 3), before messages could carry attachments,
/// as the codec of that version wrote it: it still decodes, with no attachments.
#[test]
fn a_message_written_before_attachments_still_decodes() {
    const V1_FRAME: &str =
        "000000000306652d31f6a1bfe9d66602540274000e105406632d311a7772697474656e206279207631020a";
    let frame: Vec<u8> = (0..V1_FRAME.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&V1_FRAME[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(u32::from_be_bytes(frame[1..5].try_into().unwrap()), 3, "framed with v1");
    let event = Codec::new().decode(&frame).expect("v1 frames decode");
    let Payload::MessageSent(sent) = event.payload else { panic!("{event:?}") };
    assert_eq!(sent.body, "written by v1");
    assert_eq!(sent.reply_to, Some(MessageId(5)));
    assert_eq!(sent.attachments, []);
}

#[test]
fn bad_frames_are_rejected_not_panicked_on() {
    let codec = Codec::new();
    let good = codec.encode(&event(samples::payloads().remove(0), None)).unwrap();
    assert!(matches!(codec.decode(&[]), Err(CodecError::NotFramed)));
    assert!(matches!(codec.decode(&[1, 0, 0, 0, 1, 0]), Err(CodecError::NotFramed)));
    assert!(matches!(codec.decode(&[0, 0, 0, 0, 99, 0]), Err(CodecError::UnknownSchema(99))));
    assert!(codec.decode(&good[..good.len() - 3]).is_err());
    // A frame of 279 bytes claiming an array of billions of items (found by fuzzing) is an error,
    // not an allocation of tens of gigabytes that aborts the process.
    let claim = include_bytes!("../../fuzz/corpus/event_frame/huge-array-claim");
    assert!(codec.decode(claim).is_err());
}
