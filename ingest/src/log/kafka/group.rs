//! Consumer groups on Kafka: members that share a topic's partitions, and the group's offsets.
//!
//! A member subscribes with `partition.assignment.strategy=cooperative-sticky`: when a member
//! joins or leaves, only the partitions that move are revoked and assigned, and the others keep
//! flowing (the eager strategies stop every member for every change). It also keeps partitions
//! with the member that had them, so a member's progress is rarely thrown away.
//!
//! Where a newly assigned partition starts is decided in the rebalance callback, before the
//! partitions are handed to librdkafka: at the later of the group's committed offset and the
//! offset the member's `start` cursor names (its own checkpoint), or at the beginning when there
//! is neither. Doing it there, rather than seeking after the assignment, means no record below
//! that offset is ever fetched.
//!
//! Rebalances run inside `next_batch`, as librdkafka serves them from the consumer's poll: a
//! member must keep reading (as with Kafka's `max.poll.interval.ms`) for the group to move
//! partitions to or from it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use switchboard_schemas::Topic;
use tokio::sync::watch;

use super::config::{KafkaConfig, TopicNames};
use super::reader::{Reader, consumer_config};
use super::{blocking, kafka_error, kafka_offset, retrying};
use crate::log::{self, Cursor, LogError, LogReader, Record};

/// Joins `group` over `topics`; see the [module docs](self).
pub(super) fn join(
    config: &KafkaConfig,
    names: Arc<TopicNames>,
    closed: watch::Receiver<bool>,
    group: &str,
    topics: &[Topic],
    start: Cursor,
) -> Result<Box<dyn LogReader>, LogError> {
    check_group(group)?;
    if topics.is_empty() {
        return Err(LogError::Storage(format!("group `{group}` must read at least one topic")));
    }
    let context = Placement {
        names: Arc::clone(&names),
        start,
        timeout: config.request_timeout,
        placed: Mutex::default(),
    };
    let consumer: StreamConsumer<Placement> = consumer_config(config, group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        // The coordinator tells members about a rebalance in heartbeat replies: a member that
        // leaves is replaced within about this long.
        .set("heartbeat.interval.ms", "1000")
        // A member that dies without leaving (kill -9) holds its partitions until its session
        // times out: 10 s rather than the default 45 s, so a crashed worker is replaced quickly.
        .set("session.timeout.ms", "10000")
        .create_with_context(context)
        .map_err(|e| kafka_error(format!("creating a consumer for group `{group}`"), e))?;
    let subscribed: Vec<&str> = topics.iter().map(|&topic| names.name(topic)).collect();
    consumer
        .subscribe(&subscribed)
        .map_err(|e| kafka_error(format!("joining group `{group}`"), e))?;
    Ok(Box::new(Member {
        reader: Reader::new(consumer, names, closed),
        timeout: config.request_timeout,
    }))
}

/// The offsets `group` has committed, read without joining it.
pub(super) async fn committed(
    config: &KafkaConfig,
    names: Arc<TopicNames>,
    group: &str,
) -> Result<Cursor, LogError> {
    let consumer = outsider(config, group)?;
    let mut partitions = TopicPartitionList::new();
    for topic in Topic::ALL {
        partitions.add_partition_range(names.name(topic), 0, config.partitions as i32 - 1);
    }
    let timeout = config.request_timeout;
    let group = group.to_owned();
    let committed = blocking(move || {
        retrying(timeout, |left| consumer.committed_offsets(partitions.clone(), left))
            .map_err(|e| kafka_error(format!("reading the offsets of group `{group}`"), e))
    })
    .await?;
    let mut cursor = Cursor::default();
    for element in committed.elements() {
        // Partitions the group never committed come back as `Offset::Invalid`.
        if let (Some(topic), Offset::Offset(next)) =
            (names.topic(element.topic()), element.offset())
            && let (Ok(partition), Ok(next)) =
                (u32::try_from(element.partition()), u64::try_from(next))
        {
            cursor.set(topic, partition, next);
        }
    }
    Ok(cursor)
}

/// The members of `group` and their partitions, as the group's coordinator describes them.
pub(super) async fn members(
    config: &KafkaConfig,
    names: Arc<TopicNames>,
    group: &str,
) -> Result<Vec<log::Member>, LogError> {
    let consumer = outsider(config, group)?;
    let name = format!("{}{group}", config.prefix);
    let timeout = config.request_timeout;
    blocking(move || {
        let described = retrying(timeout, |left| consumer.fetch_group_list(Some(&name), left))
            .map_err(|e| kafka_error(format!("describing group `{name}`"), e))?;
        let members = described.groups().iter().flat_map(|group| group.members());
        Ok(members
            .map(|member| log::Member {
                name: format!(
                    "{}@{}",
                    member.client_id(),
                    member.client_host().trim_start_matches('/')
                ),
                partitions: member
                    .assignment()
                    .and_then(assigned_partitions)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(topic, partition)| {
                        Some((names.topic(&topic)?, u32::try_from(partition).ok()?))
                    })
                    .collect(),
            })
            .collect())
    })
    .await
}

/// The partitions in a member's assignment, as Kafka's consumer protocol encodes it: a version
/// (`i16`), then an array (`i32` length) of topics, each a string (`i16` length) and an array of
/// `i32` partitions, then user data, which is not needed. `None` if it does not parse.
fn assigned_partitions(assignment: &[u8]) -> Option<Vec<(String, i32)>> {
    fn take<'a>(bytes: &mut &'a [u8], count: usize) -> Option<&'a [u8]> {
        let (taken, rest) = bytes.split_at_checked(count)?;
        *bytes = rest;
        Some(taken)
    }
    let i16_at = |bytes: &mut &[u8]| Some(i16::from_be_bytes(take(bytes, 2)?.try_into().ok()?));
    let i32_at = |bytes: &mut &[u8]| Some(i32::from_be_bytes(take(bytes, 4)?.try_into().ok()?));
    let mut bytes = assignment;
    i16_at(&mut bytes)?;
    let mut partitions = Vec::new();
    for _ in 0..i32_at(&mut bytes)?.max(0) {
        let length = usize::try_from(i16_at(&mut bytes)?).ok()?;
        let topic = String::from_utf8(take(&mut bytes, length)?.to_vec()).ok()?;
        for _ in 0..i32_at(&mut bytes)?.max(0) {
            partitions.push((topic.clone(), i32_at(&mut bytes)?));
        }
    }
    Some(partitions)
}

/// Commits `cursor` for `group` without joining it.
///
/// Kafka takes such a commit only while the group has no active member: a member's commits carry
/// its generation, and one from outside is refused (`UNKNOWN_MEMBER_ID`) while the group is in
/// use. Partitions the cursor does not name keep their committed offsets.
pub(super) async fn commit(
    config: &KafkaConfig,
    names: &TopicNames,
    group: &str,
    cursor: &Cursor,
) -> Result<(), LogError> {
    let what = format!("committing {cursor} for group `{group}`");
    let offsets = offsets(names, cursor.iter()).map_err(|e| kafka_error(&what, e))?;
    if offsets.count() == 0 {
        return Ok(());
    }
    let consumer = outsider(config, group)?;
    let timeout = config.request_timeout;
    blocking(move || {
        retrying(timeout, |_| consumer.commit(&offsets, CommitMode::Sync))
            .map_err(|e| kafka_error(what, e))
    })
    .await
}

/// A consumer carrying `group`'s id that never joins it: enough to read and write its offsets.
fn outsider(config: &KafkaConfig, group: &str) -> Result<BaseConsumer, LogError> {
    check_group(group)?;
    consumer_config(config, group)
        .create()
        .map_err(|e| kafka_error(format!("creating a consumer for group `{group}`"), e))
}

fn check_group(group: &str) -> Result<(), LogError> {
    if group.is_empty() {
        return Err(LogError::Storage("a consumer group needs a name".into()));
    }
    Ok(())
}

fn offsets(
    names: &TopicNames,
    positions: impl Iterator<Item = (Topic, u32, u64)>,
) -> KafkaResult<TopicPartitionList> {
    let mut offsets = TopicPartitionList::new();
    for (topic, partition, next) in positions {
        offsets.add_partition_offset(names.name(topic), partition as i32, kafka_offset(next))?;
    }
    Ok(offsets)
}

/// A member of a group: a reader whose commits go to its group.
struct Member {
    reader: Reader<Placement>,
    timeout: Duration,
}

#[async_trait]
impl LogReader for Member {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, LogError> {
        self.reader.next(max).await
    }

    /// Commits the cursor's offsets of the partitions this member owns now; those the group has
    /// moved to another member are that member's to commit. An offset below where this member
    /// started a partition is not committed: a cursor that has not caught up with a partition it
    /// was just given would otherwise take the group back over records already processed.
    async fn commit(&mut self, cursor: &Cursor) -> Result<(), LogError> {
        let consumer = self.reader.consumer();
        let names = Arc::clone(self.reader.names());
        let cursor = cursor.clone();
        let timeout = self.timeout;
        let committing = blocking(move || {
            // Kafka refuses commits while the group is between generations; the assignment is
            // read again on each try, as that is when it changes.
            retrying(timeout, |_| {
                let owned = consumer.assignment()?;
                let placement = consumer.context();
                let mine = owned.elements().into_iter().filter_map(|element| {
                    let topic = names.topic(element.topic())?;
                    let partition = element.partition() as u32;
                    let next = cursor.get(topic, partition)?;
                    (next >= placement.placed(topic, partition)).then_some((topic, partition, next))
                });
                let offsets = offsets(&names, mine)?;
                if offsets.count() == 0 {
                    return Ok(());
                }
                consumer.commit(&offsets, CommitMode::Sync)
            })
            .map_err(|e| kafka_error(format!("committing {cursor}"), e))
        });
        tokio::time::timeout(self.timeout, committing).await.map_err(|_| {
            LogError::Unavailable(format!(
                "Kafka did not confirm the commit within {:?}; it may still be recorded",
                self.timeout
            ))
        })?
    }
}

/// The consumer context of a member: places newly assigned partitions (see the
/// [module docs](self)).
struct Placement {
    names: Arc<TopicNames>,
    start: Cursor,
    timeout: Duration,
    /// Where each partition this member owns was started.
    placed: Mutex<HashMap<(Topic, u32), u64>>,
}

impl Placement {
    /// Where this member started `partition` (0 if unknown).
    fn placed(&self, topic: Topic, partition: u32) -> u64 {
        let placed = self.placed.lock().unwrap_or_else(PoisonError::into_inner);
        placed.get(&(topic, partition)).copied().unwrap_or(0)
    }

    /// Forgets where the partitions of a revocation were started.
    fn forget(&self, revoked: &TopicPartitionList) {
        let mut placed = self.placed.lock().unwrap_or_else(PoisonError::into_inner);
        for element in revoked.elements() {
            if let Some(topic) = self.names.topic(element.topic()) {
                placed.remove(&(topic, element.partition() as u32));
            }
        }
    }

    /// Sets each partition of `assigned` to the later of the committed and the start offset.
    fn place(&self, consumer: &BaseConsumer<Self>, assigned: &mut TopicPartitionList) {
        let committed = match consumer.committed_offsets(assigned.clone(), self.timeout) {
            Ok(committed) => committed,
            Err(error) => {
                // Left unset, the partitions start at the committed offset, or the beginning:
                // records before `start` may come again, but none is skipped.
                tracing::warn!(
                    %error,
                    "could not read the group's offsets; ignoring the start cursor"
                );
                return;
            }
        };
        let mut placed = self.placed.lock().unwrap_or_else(PoisonError::into_inner);
        for element in committed.elements() {
            let Some(topic) = self.names.topic(element.topic()) else {
                continue;
            };
            let partition = element.partition() as u32;
            let committed = match element.offset() {
                Offset::Offset(next) => u64::try_from(next).ok(),
                _ => None,
            };
            let next = committed.max(self.start.get(topic, partition));
            let offset = next.map_or(Offset::Beginning, kafka_offset);
            match assigned.set_partition_offset(element.topic(), element.partition(), offset) {
                Ok(()) => {
                    placed.insert((topic, partition), next.unwrap_or(0));
                }
                Err(error) => tracing::warn!(
                    %error,
                    %topic,
                    partition,
                    "could not place a newly assigned partition; it starts at the committed offset"
                ),
            }
        }
    }
}

impl ClientContext for Placement {}

impl ConsumerContext for Placement {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        event: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let outcome = if event == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            self.place(consumer, partitions);
            if cooperative {
                consumer.incremental_assign(partitions)
            } else {
                consumer.assign(partitions)
            }
        } else {
            // A revocation, or a failed rebalance, after which librdkafka wants the partitions
            // given up so that the group can start over.
            if event != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                tracing::error!(?event, "Kafka group rebalance failed; giving up the partitions");
            }
            self.forget(partitions);
            if cooperative {
                consumer.incremental_unassign(partitions)
            } else {
                consumer.unassign()
            }
        };
        if let Err(error) = outcome {
            tracing::error!(%error, ?event, "could not apply a Kafka group rebalance");
        }
    }
}
