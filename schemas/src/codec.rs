//! Events to bytes and back, in the Confluent wire format.
//!
//! A framed event is the magic byte `0`, the writer schema's registry id as a 4-byte big-endian
//! integer, then the Avro binary encoding of the topic's envelope record. Decoding looks the id
//! up in the registry and reads with that exact writer schema, so events written by older schema
//! versions stay readable.
//!
//! Every event is encoded once and decoded a few times (projector, fan-out, replays), so what can
//! be worked out from the schemas alone is worked out once per process, in [`Prepared`]:
//!
//! - encoding serialises the event's structs straight into Avro bytes, guided by the latest
//!   schema of its topic ([`apache_avro::write_avro_datum_ref`]), instead of building a generic
//!   Avro value, resolving it against the schema and validating it, which each time re-walked the
//!   whole schema and was most of the cost of an append. That serialiser looks up named types
//!   only in the schema it is given, so the schema it gets has every reference to a named type
//!   replaced by the type itself ([`inline_references`]);
//! - decoding deserialises the Avro bytes straight into the event's structs with
//!   [`serde_avro_fast`], guided by the schema version the frame names, parsed once per version.
//!   apache-avro would first build a generic value, a `String` per field name included, and
//!   then deserialise that, at about three times the CPU per event (`benches/codec.rs`). Fields
//!   a later version added are filled from the structs' own defaults (`#[serde(default)]`,
//!   `None` for an option), as the registered defaults say.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::schema::{Name, RecordSchema, ResolvedSchema, UnionSchema};
use serde::de::{self, DeserializeSeed, EnumAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_avro_fast::de::read::SliceRead;
use serde_avro_fast::de::{DeserializerConfig, DeserializerState};

use crate::events::{Event, EventMeta, Payload};
use crate::ids::UserId;
use crate::registry::{Registry, SchemaVersion};
use crate::topic::Topic;

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
    #[error("schema {subject} does not parse for decoding: {source}")]
    ReaderSchema { subject: &'static str, source: serde_avro_fast::schema::SchemaError },
    #[error("avro: {0}")]
    Decode(#[from] serde_avro_fast::de::DeError),
}

impl From<apache_avro::Error> for CodecError {
    fn from(e: apache_avro::Error) -> Self {
        CodecError::Avro(Box::new(e))
    }
}

/// The longest string, and the most items of an array, an event may hold: a message body, the
/// largest field, is at most `max_message_bytes`, which may not exceed this. A decoded string
/// cannot be longer than its frame, and the decoder refuses an array claiming more items than
/// this rather than reading on: a frame of a few hundred bytes once claimed billions (found by the
/// `event_frame` fuzz target), and apache-avro, the decoder then, asked for tens of gigabytes.
pub const MAX_FIELD_LENGTH: usize = 4 * 1024 * 1024;

/// Encodes and decodes [`Event`]s against the [`Registry`].
#[derive(Clone, Copy)]
pub struct Codec {
    prepared: &'static Prepared,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

impl Codec {
    pub fn new() -> Codec {
        // Ids are Avro `long`s but JSON strings, and tell the two apart by `is_human_readable`,
        // which this process-wide switch of apache-avro's serialiser turns off. It holds from the
        // first serialisation on, so it must come before.
        let human_readable = apache_avro::util::set_serde_human_readable(false);
        assert!(!human_readable, "apache-avro serialised something before the codec was made");
        static PREPARED: OnceLock<Prepared> = OnceLock::new();
        let prepared = PREPARED.get_or_init(|| {
            Prepared::new(Registry::builtin())
                .expect("the built-in schemas prepare (checked by tests)")
        });
        Codec { prepared }
    }

    pub fn encode(&self, event: &Event) -> Result<Vec<u8>, CodecError> {
        let topic = event.topic();
        let writer = &self.prepared.writers[topic as usize];
        let record = event.payload.record_name();
        let index = writer
            .branches
            .iter()
            .position(|name| name == record)
            .ok_or_else(|| CodecError::UnknownRecord(record.to_owned()))?;
        let envelope = Envelope::new(
            &event.meta,
            Branch { index: index as u32, record, payload: &event.payload },
        );
        let mut frame = Vec::with_capacity(128);
        frame.push(MAGIC);
        frame.extend_from_slice(&writer.id.to_be_bytes());
        apache_avro::write_avro_datum_ref(&writer.schema, &envelope, &mut frame)?;
        Ok(frame)
    }

    pub fn decode(&self, frame: &[u8]) -> Result<Event, CodecError> {
        let [MAGIC, a, b, c, d, datum @ ..] = frame else {
            return Err(CodecError::NotFramed);
        };
        let id = u32::from_be_bytes([*a, *b, *c, *d]);
        let schema = self.prepared.readers.get(&id).ok_or(CodecError::UnknownSchema(id))?;
        let mut config = DeserializerConfig::new(schema);
        config.max_seq_size = MAX_FIELD_LENGTH;
        let mut state = DeserializerState::with_config(SliceRead::new(datum), config);
        let envelope = DecodedEnvelope::deserialize(state.deserializer())?;
        let DecodedEnvelope { event_id, occurred_at, actor, trace_id, payload } = envelope;
        Ok(Event { meta: EventMeta { event_id, occurred_at, actor, trace_id }, payload: payload.0 })
    }
}

/// What the codec works out once from the registry.
struct Prepared {
    /// The latest version of each topic's schema, indexed by `Topic as usize`.
    writers: Vec<Writer>,
    /// Every registered version, by id, as the decoder reads it.
    readers: HashMap<u32, serde_avro_fast::Schema>,
}

struct Writer {
    id: u32,
    /// The schema with its named-type references inlined.
    schema: Schema,
    /// The payload union's record names, in union order.
    branches: Vec<String>,
}

impl Prepared {
    fn new(registry: &Registry) -> Result<Prepared, CodecError> {
        let writers = Topic::ALL
            .iter()
            .map(|topic| {
                let subject = topic.subject();
                let version =
                    registry.latest(&subject).ok_or(CodecError::NotAnEnvelope(subject))?;
                let names = ResolvedSchema::try_from(&version.schema)?;
                Ok(Writer {
                    id: version.id,
                    schema: inline_references(&version.schema, names.get_names(), &mut Vec::new())?,
                    branches: payload_branches(version)?,
                })
            })
            .collect::<Result<_, CodecError>>()?;
        let readers = registry
            .all()
            .map(|version| {
                let schema = version.text.parse().map_err(|source| CodecError::ReaderSchema {
                    subject: version.subject,
                    source,
                })?;
                Ok((version.id, schema))
            })
            .collect::<Result<_, CodecError>>()?;
        Ok(Prepared { writers, readers })
    }
}

/// The record names of an envelope's payload union, in union order.
fn payload_branches(version: &SchemaVersion) -> Result<Vec<String>, CodecError> {
    let not_envelope = || CodecError::NotAnEnvelope(version.subject.to_owned());
    let Schema::Record(record) = &version.schema else {
        return Err(not_envelope());
    };
    let Some(Schema::Union(union)) =
        record.fields.iter().find(|f| f.name == "payload").map(|f| &f.schema)
    else {
        return Err(not_envelope());
    };
    union
        .variants()
        .iter()
        .map(|s| s.name().map(|n| n.name.clone()).ok_or_else(not_envelope))
        .collect()
}

/// `schema` with every reference to a named type replaced by the type's definition. `inlining`
/// holds the types being inlined, so that a recursive type is refused instead of looping.
fn inline_references(
    schema: &Schema,
    names: &HashMap<Name, &Schema>,
    inlining: &mut Vec<Name>,
) -> Result<Schema, CodecError> {
    let mut inline = |schema: &Schema| inline_references(schema, names, inlining);
    Ok(match schema {
        Schema::Ref { name } => {
            let definition =
                names.get(name).ok_or_else(|| CodecError::UnknownRecord(name.to_string()))?;
            if inlining.contains(name) {
                return Err(CodecError::NotAnEnvelope(format!("recursive type {name}")));
            }
            inlining.push(name.clone());
            let inlined = inline_references(definition, names, inlining);
            inlining.pop();
            inlined?
        }
        Schema::Record(record) => {
            let mut fields = record.fields.clone();
            for field in &mut fields {
                field.schema = inline(&field.schema)?;
            }
            Schema::Record(RecordSchema { fields, ..record.clone() })
        }
        Schema::Union(union) => Schema::Union(UnionSchema::new(
            union.variants().iter().map(inline).collect::<Result<_, _>>()?,
        )?),
        Schema::Array(array) => {
            let mut array = array.clone();
            array.items = Box::new(inline(&array.items)?);
            Schema::Array(array)
        }
        Schema::Map(map) => {
            let mut map = map.clone();
            map.types = Box::new(inline(&map.types)?);
            Schema::Map(map)
        }
        other => other.clone(),
    })
}

/// The envelope record, field for field in schema order.
#[derive(serde::Serialize)]
struct Envelope<'a> {
    event_id: &'a str,
    occurred_at: i64,
    actor: Option<UserId>,
    trace_id: &'a str,
    payload: Branch<'a>,
}

impl<'a> Envelope<'a> {
    fn new(meta: &'a EventMeta, payload: Branch<'a>) -> Envelope<'a> {
        Envelope {
            event_id: &meta.event_id,
            occurred_at: meta.occurred_at,
            actor: meta.actor,
            trace_id: &meta.trace_id,
            payload,
        }
    }
}

/// The payload as the branch of the topic's union it belongs in.
struct Branch<'a> {
    index: u32,
    record: &'static str,
    payload: &'a Payload,
}

impl Serialize for Branch<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_variant("payload", self.index, self.record, self.payload)
    }
}

/// The envelope record as the decoder reads it, of any registered version.
#[derive(Deserialize)]
struct DecodedEnvelope {
    event_id: String,
    occurred_at: i64,
    actor: Option<UserId>,
    trace_id: String,
    payload: UnionPayload,
}

/// The payload, read from the branch of the topic's union the datum names. The decoder offers a
/// union as an enum whose variant is named by the branch's full record name.
struct UnionPayload(Payload);

impl<'de> Deserialize<'de> for UnionPayload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_enum("payload", Payload::RECORD_NAMES, PayloadVisitor)
    }
}

struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = UnionPayload;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a branch of an event payload union")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<UnionPayload, A::Error> {
        let (record, variant) = data.variant_seed(RecordName)?;
        Payload::from_variant(record, variant).map(UnionPayload)
    }
}

/// A branch's record name, as the one of [`Payload::RECORD_NAMES`] it is; the decoder gives it
/// with its namespace.
struct RecordName;

impl<'de> DeserializeSeed<'de> for RecordName {
    type Value = &'static str;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<&'static str, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl Visitor<'_> for RecordName {
    type Value = &'static str;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the name of an event record")
    }

    fn visit_str<E: de::Error>(self, full_name: &str) -> Result<&'static str, E> {
        let name = full_name.rsplit('.').next().unwrap_or(full_name);
        Payload::RECORD_NAMES
            .iter()
            .find(|known| **known == name)
            .copied()
            .ok_or_else(|| E::unknown_variant(full_name, Payload::RECORD_NAMES))
    }
}
