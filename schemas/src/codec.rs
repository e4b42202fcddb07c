//! Events to bytes and back, in the Confluent wire format.
//!
//! A framed event is the magic byte `0`, the writer schema's registry id as a 4-byte big-endian
//! integer, then the Avro binary encoding of the topic's envelope record. Decoding looks the id
//! up in the registry and reads with that exact writer schema, so events written by older schema
//! versions stay readable.

use std::sync::Once;

use apache_avro::Schema;
use apache_avro::schema::UnionSchema;
use apache_avro::types::Value;

use crate::events::{Event, EventMeta, Payload};
use crate::ids::UserId;
use crate::registry::{Registry, SchemaVersion};

const MAGIC: u8 = 0;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame too short or without the Confluent magic byte")]
    NotFramed,
    #[error("unknown schema id {0}")]
    UnknownSchema(u32),
    #[error("schema {0} is not an event envelope")]
    NotAnEnvelope(String),
    #[error("the schema has no `{0}` record in its payload union")]
    UnknownRecord(String),
    #[error("avro: {0}")]
    Avro(#[from] Box<apache_avro::Error>),
}

impl From<apache_avro::Error> for CodecError {
    fn from(e: apache_avro::Error) -> Self {
        CodecError::Avro(Box::new(e))
    }
}

/// Encodes and decodes [`Event`]s against the [`Registry`].
#[derive(Clone, Copy)]
pub struct Codec {
    registry: &'static Registry,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

impl Codec {
    pub fn new() -> Codec {
        // Ids are Avro `long`s but JSON strings; they tell the two apart by `is_human_readable`,
        // which apache-avro reports from this process-wide switch.
        static BINARY_IDS: Once = Once::new();
        BINARY_IDS.call_once(|| {
            apache_avro::util::set_serde_human_readable(false);
        });
        Codec { registry: Registry::builtin() }
    }

    pub fn encode(&self, event: &Event) -> Result<Vec<u8>, CodecError> {
        let topic = event.topic();
        let writer = self
            .registry
            .latest(&topic.subject())
            .ok_or_else(|| CodecError::NotAnEnvelope(topic.subject()))?;
        let union = payload_union(writer)?;
        let record = event.payload.record_name();
        let (index, branch) = union
            .variants()
            .iter()
            .enumerate()
            .find(|(_, s)| s.name().is_some_and(|n| n.name == record))
            .ok_or_else(|| CodecError::UnknownRecord(record.to_owned()))?;
        let payload = event.payload.to_avro()?.resolve_schemata(branch, vec![&writer.schema])?;
        let meta = &event.meta;
        let envelope = Value::Record(vec![
            ("event_id".into(), Value::String(meta.event_id.clone())),
            ("occurred_at".into(), Value::TimestampMillis(meta.occurred_at)),
            ("actor".into(), optional_long(meta.actor.map(|a| a.0))),
            ("trace_id".into(), Value::String(meta.trace_id.clone())),
            ("payload".into(), Value::Union(index as u32, Box::new(payload))),
        ]);
        let mut frame = Vec::with_capacity(64);
        frame.push(MAGIC);
        frame.extend_from_slice(&writer.id.to_be_bytes());
        frame.extend(apache_avro::to_avro_datum(&writer.schema, envelope)?);
        Ok(frame)
    }

    pub fn decode(&self, frame: &[u8]) -> Result<Event, CodecError> {
        let [MAGIC, a, b, c, d, body @ ..] = frame else {
            return Err(CodecError::NotFramed);
        };
        let id = u32::from_be_bytes([*a, *b, *c, *d]);
        let writer = self.registry.by_id(id).ok_or(CodecError::UnknownSchema(id))?;
        let mut body = body;
        let Value::Record(fields) = apache_avro::from_avro_datum(&writer.schema, &mut body, None)?
        else {
            return Err(CodecError::NotAnEnvelope(writer.subject.to_owned()));
        };
        let mut meta = EventMeta {
            event_id: String::new(),
            occurred_at: 0,
            actor: None,
            trace_id: String::new(),
        };
        let mut payload = None;
        for (name, value) in fields {
            match (name.as_str(), value) {
                ("event_id", Value::String(s)) => meta.event_id = s,
                ("occurred_at", Value::TimestampMillis(t) | Value::Long(t)) => meta.occurred_at = t,
                ("actor", Value::Union(_, inner)) => {
                    meta.actor = match *inner {
                        Value::Long(id) => Some(UserId(id)),
                        _ => None,
                    }
                }
                ("trace_id", Value::String(s)) => meta.trace_id = s,
                ("payload", Value::Union(index, inner)) => payload = Some((index, *inner)),
                _ => {}
            }
        }
        let (index, inner) =
            payload.ok_or_else(|| CodecError::NotAnEnvelope(writer.subject.to_owned()))?;
        let record = payload_union(writer)?
            .variants()
            .get(index as usize)
            .and_then(|s| s.name())
            .map(|n| n.name.clone())
            .ok_or_else(|| CodecError::UnknownRecord(format!("#{index}")))?;
        let payload =
            Payload::from_avro(&record, inner).ok_or(CodecError::UnknownRecord(record))??;
        Ok(Event { meta, payload })
    }
}

fn payload_union(version: &SchemaVersion) -> Result<&UnionSchema, CodecError> {
    let not_envelope = || CodecError::NotAnEnvelope(version.subject.to_owned());
    let Schema::Record(record) = &version.schema else {
        return Err(not_envelope());
    };
    match record.fields.iter().find(|f| f.name == "payload").map(|f| &f.schema) {
        Some(Schema::Union(union)) => Ok(union),
        _ => Err(not_envelope()),
    }
}

fn optional_long(value: Option<i64>) -> Value {
    match value {
        Some(v) => Value::Union(1, Box::new(Value::Long(v))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}
