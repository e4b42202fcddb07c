//! How the embedded log lays records out in fjall.
//!
//! Each topic-partition is its own keyspace (`messages.3`), so a partition is one sorted run that
//! a reader scans with a range, and one that can be truncated on its own once retention is added
//! (signals are meant to be short-lived). Within it the key is the offset as a big-endian `u64`,
//! which makes byte order equal offset order. The value is
//!
//! ```text
//! version (1 byte) | timestamp_ms (i64 BE) | key length (u32 BE) | key | value
//! ```
//!
//! The version byte lets a later layout be read side by side with this one.

use switchboard_schemas::{Position, Topic};

use crate::log::{LogError, Record};

/// Holds the partition count the log was created with, under [`PARTITIONS_KEY`].
pub(super) const META_KEYSPACE: &str = "meta";
pub(super) const PARTITIONS_KEY: &str = "partitions";
/// Committed consumer positions: group name -> the cursor's text form.
pub(super) const CONSUMERS_KEYSPACE: &str = "consumers";

const VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 8 + 4;

pub(super) fn partition_keyspace(topic: Topic, partition: u32) -> String {
    format!("{topic}.{partition}")
}

/// Where the first offset a partition still keeps is recorded, in [`META_KEYSPACE`]; absent
/// until retention first removes records from it.
pub(super) fn start_key(topic: Topic, partition: u32) -> String {
    format!("start/{topic}.{partition}")
}

pub(super) fn offset_key(offset: u64) -> [u8; 8] {
    offset.to_be_bytes()
}

pub(super) fn encode_value(
    timestamp_ms: i64,
    key: &[u8],
    value: &[u8],
) -> Result<Vec<u8>, LogError> {
    let key_len = u32::try_from(key.len())
        .map_err(|_| LogError::Storage(format!("a key of {} bytes is too long", key.len())))?;
    let mut out = Vec::with_capacity(HEADER_LEN + key.len() + value.len());
    out.push(VERSION);
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&key_len.to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    Ok(out)
}

/// Rebuilds the record stored at `position` from its stored key and value.
pub(super) fn decode(
    position: Position,
    stored_key: &[u8],
    stored: &[u8],
) -> Result<Record, LogError> {
    let corrupt = |what: &str| LogError::Storage(format!("record {position} is corrupt: {what}"));
    let offset = <[u8; 8]>::try_from(stored_key)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt("its key is not an 8-byte offset"))?;
    if offset != position.offset {
        return Err(corrupt(&format!("found offset {offset} where {} belongs", position.offset)));
    }
    let Some((&version, rest)) = stored.split_first() else {
        return Err(corrupt("empty value"));
    };
    if version != VERSION {
        return Err(corrupt(&format!("unknown layout version {version}")));
    }
    let (timestamp, rest) =
        rest.split_first_chunk::<8>().ok_or_else(|| corrupt("truncated header"))?;
    let (key_len, rest) =
        rest.split_first_chunk::<4>().ok_or_else(|| corrupt("truncated header"))?;
    let key_len = u32::from_be_bytes(*key_len) as usize;
    if rest.len() < key_len {
        return Err(corrupt("key runs past the end"));
    }
    let (key, value) = rest.split_at(key_len);
    Ok(Record {
        position,
        key: key.to_vec(),
        value: value.to_vec(),
        timestamp_ms: i64::from_be_bytes(*timestamp),
    })
}

/// When a stored record was taken, without decoding the rest of it.
pub(super) fn decode_timestamp(stored: &[u8]) -> Option<i64> {
    let timestamp = stored.get(1..HEADER_LEN - 4)?;
    <[u8; 8]>::try_from(timestamp).ok().map(i64::from_be_bytes)
}

/// Reads the offset back from a stored key, for recovering where each partition ends.
pub(super) fn decode_offset(stored_key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(stored_key).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_damage_is_reported() {
        let position = Position { topic: Topic::Messages, partition: 2, offset: 7 };
        let stored = encode_value(1_700_000_000_123, b"conv-1", b"payload").unwrap();
        let record = decode(position, &offset_key(7), &stored).unwrap();
        assert_eq!(record.key, b"conv-1");
        assert_eq!(record.value, b"payload");
        assert_eq!(record.timestamp_ms, 1_700_000_000_123);
        assert_eq!(decode_offset(&offset_key(7)), Some(7));
        assert_eq!(decode_timestamp(&stored), Some(1_700_000_000_123));
        assert_eq!(decode_timestamp(&stored[..5]), None);

        assert!(decode(position, &offset_key(8), &stored).is_err(), "offset mismatch");
        assert!(decode(position, &offset_key(7), &stored[..10]).is_err(), "truncated header");
        let mut wrong_version = stored.clone();
        wrong_version[0] = 9;
        assert!(decode(position, &offset_key(7), &wrong_version).is_err(), "unknown version");
        let mut long_key = stored;
        long_key[9..13].copy_from_slice(&1000u32.to_be_bytes());
        assert!(decode(position, &offset_key(7), &long_key).is_err(), "key past the end");
    }

    #[test]
    fn offset_keys_sort_like_offsets() {
        assert!(offset_key(255) < offset_key(256));
        assert!(offset_key(1 << 40) < offset_key(u64::MAX));
    }
}
