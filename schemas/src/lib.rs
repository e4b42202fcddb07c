//! The switchboard event contract.
//!
//! Every state change in switchboard is an event on one of six topics (see [`Topic`]). The Avro
//! schemas under `schemas/avro/` are the source of truth for what an event looks like on the wire;
//! this crate holds the Rust types that mirror them ([`Event`], [`Payload`] and one struct per
//! event), the codec that frames them the way Confluent's serializers do ([`Codec`]), and the
//! schema registry that gives every schema version a stable id ([`Registry`]).
//!
//! Analytics consumers read the same bytes with any Confluent-compatible Avro deserializer; the
//! API serves the registry read-only in the Confluent REST shape so they can resolve the ids.

mod codec;
mod events;
mod ids;
mod registry;
// Also for other crates' tests, through the `testing` feature.
#[cfg(any(test, feature = "testing"))]
pub mod samples;
mod topic;

pub use codec::{Codec, CodecError, MAX_FIELD_LENGTH};
pub use events::*;
pub use ids::{CallId, ConversationId, MediaId, MessageId, UserId};
pub use registry::{COMPATIBILITY_LEVEL, Registry, RegistryError, SchemaVersion};
pub use topic::{Position, Topic};
