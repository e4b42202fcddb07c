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
//! - decoding reads with a [`GenericSingleObjectReader`] per registered version, which resolves
//!   the schema's names once; its header is the Confluent frame prefix, so it also checks that.

use std::collections::HashMap;
use std::sync::{Once, OnceLock};

use apache_avro::GenericSingleObjectReader;
use apache_avro::Schema;
use apache_avro::headers::HeaderBuilder;
use apache_avro::schema::{Name, RecordSchema, ResolvedSchema, UnionSchema};
use apache_avro::types::Value;
use serde::{Serialize, Serializer};

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
}

impl From<apache_avro::Error> for CodecError {
    fn from(e: apache_avro::Error) -> Self {
        CodecError::Avro(Box::new(e))
    }
}

/// The longest string or bytes value, and the most items of an array or map, a decoded event may
/// hold. apache-avro reserves room for as many items as a frame claims before reading them, and
/// bounds that claim by this count rather than by bytes: by default 512 Mi items, so that a frame
/// of a few bytes could make a reader ask for tens of gigabytes and abort the process (found by
/// the `event_frame` fuzz target). At 4 Mi, a false claim reserves at most a few hundred megabytes
/// of address space, untouched and given back once the read fails, while every real event is far
/// smaller: a message body, the largest field, is at most `max_message_bytes`.
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
        // Two process-wide switches of apache-avro, set before it reads anything: ids are Avro
        // `long`s but JSON strings, and tell the two apart by `is_human_readable`, which the first
        // switch sets; the second is the bound of [`MAX_FIELD_LENGTH`].
        static SETTINGS: Once = Once::new();
        SETTINGS.call_once(|| {
            apache_avro::util::set_serde_human_readable(false);
            let limit = apache_avro::util::max_allocation_bytes(MAX_FIELD_LENGTH);
            assert_eq!(
                limit, MAX_FIELD_LENGTH,
                "apache-avro decoded something before the codec was made"
            );
        });
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
        let [MAGIC, a, b, c, d, ..] = frame else {
            return Err(CodecError::NotFramed);
        };
        let id = u32::from_be_bytes([*a, *b, *c, *d]);
        let reader = self.prepared.readers.get(&id).ok_or(CodecError::UnknownSchema(id))?;
        let not_envelope = || CodecError::NotAnEnvelope(reader.subject.to_owned());
        let mut frame = frame;
        let Value::Record(fields) = reader.reader.read_value(&mut frame)? else {
            return Err(not_envelope());
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
        let (index, inner) = payload.ok_or_else(not_envelope)?;
        let record = reader
            .branches
            .get(index as usize)
            .ok_or_else(|| CodecError::UnknownRecord(format!("#{index}")))?;
        let payload = Payload::from_avro(record, inner)
            .ok_or_else(|| CodecError::UnknownRecord(record.clone()))??;
        Ok(Event { meta, payload })
    }
}

/// What the codec works out once from the registry.
struct Prepared {
    /// The latest version of each topic's schema, indexed by `Topic as usize`.
    writers: Vec<Writer>,
    /// Every registered version, by id.
    readers: HashMap<u32, Reader>,
}

struct Writer {
    id: u32,
    /// The schema with its named-type references inlined.
    schema: Schema,
    /// The payload union's record names, in union order.
    branches: Vec<String>,
}

struct Reader {
    subject: &'static str,
    reader: GenericSingleObjectReader,
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
                let header = ConfluentHeader(version.id);
                let reader = GenericSingleObjectReader::new_with_header_builder(
                    version.schema.clone(),
                    header,
                )?;
                let branches = payload_branches(version)?;
                Ok((version.id, Reader { subject: version.subject, reader, branches }))
            })
            .collect::<Result<_, CodecError>>()?;
        Ok(Prepared { writers, readers })
    }
}

/// The Confluent frame prefix of one schema id.
struct ConfluentHeader(u32);

impl HeaderBuilder for ConfluentHeader {
    fn build_header(&self) -> Vec<u8> {
        let mut header = vec![MAGIC];
        header.extend_from_slice(&self.0.to_be_bytes());
        header
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
