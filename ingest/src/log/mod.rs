//! The log abstraction: partitioned, append-only, durable, readable from any offset.
//!
//! Two implementations sit behind it: [`embedded`] (a directory on local disk) and Kafka.
//! Callers see only [`Log`] and [`LogReader`]; the conformance suite in [`conformance`] holds
//! every implementation to the same behaviour.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use switchboard_schemas::{Position, Topic};

use retention::Retention;

pub mod conformance;
pub mod embedded;
pub mod kafka;
pub mod retention;

/// Opens the log a URL names: `file://DIR` (the embedded log) or `kafka://host:port[,…][?…]`
/// (see [`kafka::KafkaConfig::from_url`]). `partitions` is the count new topics get.
///
/// This is how tools open a log: how long topics keep records is left as it is. A node opens
/// its log with [`open_for_node`].
pub async fn open(url: &str, partitions: u32) -> Result<Arc<dyn Log>, LogError> {
    open_with(url, partitions, None).await
}

/// How a node runs its log, beyond where the log is.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// How long each topic keeps its records: the embedded log removes expired records while it
    /// is open; on Kafka, topics are created with it and existing ones changed to it.
    pub retention: Retention,
    /// The name the node goes by among a consumer group's [`Member`]s (Kafka's `client.id`).
    pub member: String,
}

/// Opens the log a node serves from: see [`NodeSettings`].
pub async fn open_for_node(
    url: &str,
    partitions: u32,
    settings: NodeSettings,
) -> Result<Arc<dyn Log>, LogError> {
    open_with(url, partitions, Some(settings)).await
}

async fn open_with(
    url: &str,
    partitions: u32,
    node: Option<NodeSettings>,
) -> Result<Arc<dyn Log>, LogError> {
    match url.split_once("://") {
        Some(("file", dir)) => {
            let dir = std::path::PathBuf::from(dir);
            let mut log =
                tokio::task::spawn_blocking(move || embedded::EmbeddedLog::open(&dir, partitions))
                    .await
                    .map_err(|e| LogError::Storage(format!("opening the embedded log: {e}")))??;
            if let Some(node) = node {
                log.expire(node.retention);
                log = log.with_member(&node.member);
            }
            Ok(Arc::new(log))
        }
        Some(("kafka", _)) => {
            let mut config = kafka::KafkaConfig::from_url(url, partitions)?;
            if let Some(node) = node {
                config.retention = Some(node.retention);
                config.member = node.member;
            }
            Ok(Arc::new(kafka::KafkaLog::connect(config).await?))
        }
        _ => Err(LogError::Storage(format!(
            "`{url}` names no log: use file://DIR or kafka://HOST:PORT"
        ))),
    }
}

/// A reader in a consumer group, and the partitions it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The name its node goes by ([`NodeSettings::member`]), with its host on Kafka.
    pub name: String,
    pub partitions: Vec<(Topic, u32)>,
}

/// One stored event: where it is, its key, its framed value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub position: Position,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// When the log accepted it, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log cannot take or serve records right now; the caller may retry.
    #[error("log unavailable: {0}")]
    Unavailable(String),
    /// The log is shutting down and takes no more appends.
    #[error("log is closed")]
    Closed,
    #[error("log storage: {0}")]
    Storage(String),
}

/// An append under way: the record already has its place in its partition, and the future
/// resolves once it is durable.
pub type Appending = BoxFuture<'static, Result<Position, LogError>>;

/// A partitioned, durable, append-only log.
#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Appends `value` under `key` to the partition the key hashes to
    /// ([`Topic::partition_for`]).
    ///
    /// The record takes its place in the partition when this is called, before the returned
    /// future is first polled: appends made one after another keep that order whether or not
    /// each was waited for before the next. That is what lets a client send again before its
    /// last send is acknowledged. The future resolves only once the record is durable;
    /// concurrent appends share one sync (group commit).
    fn append(&self, topic: Topic, key: &[u8], value: Vec<u8>) -> Appending;

    /// The number of partitions of a topic.
    fn partitions(&self, topic: Topic) -> u32;

    /// For each partition of `topic`, the offset the next append will get.
    async fn end_offsets(&self, topic: Topic) -> Result<Vec<u64>, LogError>;

    /// For each partition of `topic`, the offset of the first record the log took at or after
    /// `time_ms` (milliseconds since the Unix epoch), or the partition's end offset if it has
    /// taken none since. A log's timestamps never go backwards within a partition, so a time
    /// names one place in each: everything before it was taken earlier.
    async fn offsets_at(&self, topic: Topic, time_ms: i64) -> Result<Vec<u64>, LogError>;

    /// A reader that starts at `from` and follows the tail of the partitions named in it.
    async fn reader(&self, from: Cursor) -> Result<Box<dyn LogReader>, LogError>;

    /// Joins consumer group `group` over `topics`: the log shares their partitions among the
    /// group's readers, moving them as readers come and go. Each partition a reader is given
    /// starts at the later of the group's committed offset and the offset `start` names for it
    /// (a consumer that keeps its own checkpoint passes it here). Progress is recorded with
    /// [`LogReader::commit`].
    async fn join_group(
        &self,
        group: &str,
        topics: &[Topic],
        start: Cursor,
    ) -> Result<Box<dyn LogReader>, LogError>;

    /// The cursor a named consumer last committed (empty if none).
    async fn committed(&self, group: &str) -> Result<Cursor, LogError>;

    /// The readers in consumer group `group` now, each with the partitions it holds; none when
    /// nobody reads in the group.
    async fn members(&self, group: &str) -> Result<Vec<Member>, LogError>;

    /// Records how far a named consumer has got.
    async fn commit(&self, group: &str, cursor: &Cursor) -> Result<(), LogError>;

    /// Makes every acknowledged append durable and stops taking new ones.
    async fn close(&self) -> Result<(), LogError>;
}

/// Reads records in order within each partition, waiting at the tail for new ones.
#[async_trait]
pub trait LogReader: Send {
    /// Returns between 1 and `max` records, waiting until at least one is available.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, LogError>;

    /// Records that the reader's group has processed everything before `cursor`. Readers that
    /// belong to no group have nothing to record.
    async fn commit(&mut self, _cursor: &Cursor) -> Result<(), LogError> {
        Ok(())
    }
}

/// For each partition, the offset of the next record to read.
///
/// A cursor is also the resume token a client keeps: it names exactly the records it has seen.
/// Its text form is `topic.partition=offset` pairs joined by `,`, e.g. `messages.0=12,users.1=4`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    next: BTreeMap<(Topic, u32), u64>,
}

impl Cursor {
    /// A cursor at offset 0 of every partition of `topics`.
    pub fn beginning(log: &dyn Log, topics: &[Topic]) -> Cursor {
        let mut cursor = Cursor::default();
        for &topic in topics {
            for partition in 0..log.partitions(topic) {
                cursor.next.insert((topic, partition), 0);
            }
        }
        cursor
    }

    /// A cursor at the current end of every partition of `topics`: only new records follow.
    pub async fn end(log: &dyn Log, topics: &[Topic]) -> Result<Cursor, LogError> {
        Cursor::per_partition(topics, |topic| log.end_offsets(topic)).await
    }

    /// A cursor at the first record each partition of `topics` took at or after `time_ms`
    /// ([`Log::offsets_at`]): reading up to it reads the log as it was at that time.
    pub async fn at_time(
        log: &dyn Log,
        topics: &[Topic],
        time_ms: i64,
    ) -> Result<Cursor, LogError> {
        Cursor::per_partition(topics, |topic| log.offsets_at(topic, time_ms)).await
    }

    /// A cursor from the offsets `offsets` gives for each partition of each topic, in order.
    async fn per_partition<F>(
        topics: &[Topic],
        offsets: impl Fn(Topic) -> F,
    ) -> Result<Cursor, LogError>
    where
        F: Future<Output = Result<Vec<u64>, LogError>>,
    {
        let mut cursor = Cursor::default();
        for &topic in topics {
            for (partition, offset) in (0u32..).zip(offsets(topic).await?) {
                cursor.next.insert((topic, partition), offset);
            }
        }
        Ok(cursor)
    }

    /// Whether the cursor names no partition at all.
    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    pub fn get(&self, topic: Topic, partition: u32) -> Option<u64> {
        self.next.get(&(topic, partition)).copied()
    }

    pub fn set(&mut self, topic: Topic, partition: u32, next: u64) {
        self.next.insert((topic, partition), next);
    }

    /// Moves past `position` (never backwards).
    pub fn advance(&mut self, position: Position) {
        let next = self.next.entry((position.topic, position.partition)).or_insert(0);
        *next = (*next).max(position.offset + 1);
    }

    /// Whether the record at `position` is behind this cursor, i.e. already read.
    pub fn has_passed(&self, position: Position) -> bool {
        self.get(position.topic, position.partition).is_some_and(|next| next > position.offset)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Topic, u32, u64)> + '_ {
        self.next.iter().map(|(&(t, p), &o)| (t, p, o))
    }

    /// For every partition in either cursor, the larger offset.
    pub fn furthest(mut self, other: &Cursor) -> Cursor {
        for (&key, &offset) in &other.next {
            let next = self.next.entry(key).or_insert(offset);
            *next = (*next).max(offset);
        }
        self
    }

    /// Partitions present in `self` keep their offset; those only in `base` are taken from it.
    pub fn or(mut self, base: &Cursor) -> Cursor {
        for (&key, &offset) in &base.next {
            self.next.entry(key).or_insert(offset);
        }
        self
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (topic, partition, offset)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{topic}.{partition}={offset}")?;
        }
        Ok(())
    }
}

impl FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cursor = Cursor::default();
        for pair in s.split(',').filter(|p| !p.is_empty()) {
            let bad = || format!("`{pair}` is not topic.partition=offset");
            let (place, offset) = pair.split_once('=').ok_or_else(bad)?;
            let (topic, partition) = place.split_once('.').ok_or_else(bad)?;
            cursor.set(
                topic.parse()?,
                partition.parse().map_err(|_| bad())?,
                offset.parse().map_err(|_| bad())?,
            );
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_as_text_and_only_moves_forward() {
        let mut cursor: Cursor = "messages.0=12,users.1=4".parse().unwrap();
        cursor.advance(Position { topic: Topic::Messages, partition: 0, offset: 20 });
        cursor.advance(Position { topic: Topic::Messages, partition: 0, offset: 3 });
        assert_eq!(cursor.get(Topic::Messages, 0), Some(21));
        assert_eq!(cursor.to_string(), "users.1=4,messages.0=21");
        assert_eq!(cursor.to_string().parse::<Cursor>().unwrap(), cursor);
        assert!(cursor.has_passed(Position { topic: Topic::Users, partition: 1, offset: 3 }));
        assert!(!cursor.has_passed(Position { topic: Topic::Users, partition: 1, offset: 4 }));
        assert!("messages.x=1".parse::<Cursor>().is_err());
    }
}
