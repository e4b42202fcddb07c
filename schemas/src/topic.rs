//! Topics, partitioning and log positions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One topic per aggregate; everything that must stay ordered shares a key, so a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topic {
    /// Keyed by user id.
    Users,
    /// Keyed by conversation id.
    Conversations,
    /// Keyed by conversation id.
    Messages,
    /// Keyed by user id (node id for heartbeats).
    Presence,
    /// Keyed by call id.
    Calls,
    /// Keyed by recipient user id.
    Signals,
}

impl Topic {
    pub const ALL: [Topic; 6] = [
        Topic::Users,
        Topic::Conversations,
        Topic::Messages,
        Topic::Presence,
        Topic::Calls,
        Topic::Signals,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Topic::Users => "users",
            Topic::Conversations => "conversations",
            Topic::Messages => "messages",
            Topic::Presence => "presence",
            Topic::Calls => "calls",
            Topic::Signals => "signals",
        }
    }

    /// The registry subject of the topic's value schema (Confluent's `TopicNameStrategy`).
    pub fn subject(self) -> String {
        format!("{}-value", self.name())
    }

    /// The partition a key lands in: murmur2 of the key, as Kafka's Java clients compute it, so
    /// the embedded log and Kafka place every key in the same partition number.
    pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
        (murmur2(key) & 0x7fff_ffff) % partitions
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Topic {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| format!("unknown topic `{s}`"))
    }
}

/// Where an event sits in the log: the consistency token a command returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub topic: Topic,
    pub partition: u32,
    pub offset: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

impl FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('/');
        let (Some(topic), Some(partition), Some(offset), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("`{s}` is not a topic/partition/offset token"));
        };
        Ok(Position {
            topic: topic.parse()?,
            partition: partition.parse().map_err(|_| format!("bad partition in `{s}`"))?,
            offset: offset.parse().map_err(|_| format!("bad offset in `{s}`"))?,
        })
    }
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`), seed 0x9747b28c.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("chunk of 4"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_match_kafkas_java_partitioner() {
        // Values from Kafka's own `UtilsTest.testMurmur2`.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58897971);
    }

    #[test]
    fn positions_round_trip_as_tokens() {
        let p = Position { topic: Topic::Messages, partition: 3, offset: 1042 };
        assert_eq!(p.to_string(), "messages/3/1042");
        assert_eq!("messages/3/1042".parse::<Position>().unwrap(), p);
        assert!("messages/3".parse::<Position>().is_err());
        assert!("chats/3/1".parse::<Position>().is_err());
    }
}
