//! Identifier newtypes.
//!
//! Ids are 64-bit integers. Avro carries them as `long`; JSON carries them as decimal strings,
//! because JavaScript numbers lose precision past 2^53. The switch is made on serde's
//! `is_human_readable`, which the [`Codec`](crate::Codec) turns off for Avro.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! id_type {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.collect_str(&self.0)
                } else {
                    serializer.serialize_i64(self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_any(IdVisitor).map($name)
            }
        }
    )*};
}

id_type! {
    /// A user account.
    UserId;
    /// A direct or group conversation.
    ConversationId;
    /// A message; time-ordered, so ordering by id orders by send time.
    MessageId;
    /// A 1:1 call or a group call room.
    CallId;
    /// An uploaded file.
    MediaId;
}

/// Accepts an id as a JSON string or as any integer form a format offers.
struct IdVisitor;

impl Visitor<'_> for IdVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a 64-bit id as a decimal string or an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_i32<E: de::Error>(self, v: i32) -> Result<i64, E> {
        Ok(v.into())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom("id out of range"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        v.parse().map_err(|_| E::custom(format!("`{v}` is not a decimal id")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_carries_ids_as_strings_and_accepts_both_forms() {
        let id = MessageId(7_234_567_890_123_456_789);
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"7234567890123456789\"");
        assert_eq!(serde_json::from_str::<MessageId>("\"42\"").unwrap(), MessageId(42));
        assert_eq!(serde_json::from_str::<MessageId>("42").unwrap(), MessageId(42));
        assert!(serde_json::from_str::<MessageId>("\"4x\"").is_err());
    }
}
