//! The Kafka log: the log of the distributed setup, on an Apache Kafka cluster (see DESIGN.md).
//!
//! Each [`Topic`] is a Kafka topic named `{prefix}{topic}`, with the same partition count as the
//! node is configured for, and keys are placed by [`Topic::partition_for`], so a key has the same
//! partition number here as in the embedded log and offsets are Kafka's own.
//!
//! The pieces:
//!
//! - `config`: the `kafka://` URL and the settings it carries, credentials and TLS included.
//! - `access`: at start-up, fails at once when the cluster refuses the credentials or the TLS
//!   handshake, which librdkafka would otherwise retry until a request times out.
//! - `admin`: at start-up, creates missing topics and refuses ones with another partition
//!   count.
//! - `producer`: one idempotent producer (`acks=all`) for every append; an append resolves with
//!   the offset of its delivery report, or fails within the delivery timeout.
//! - `reader`: plain readers, assigned the partitions of their cursor, in no group.
//! - `group`: consumer-group members, and a group's committed offsets.
//!
//! Errors: a cluster that does not answer in time (or a broker, leader or coordinator that is
//! momentarily missing) is [`LogError::Unavailable`], anything else [`LogError::Storage`].

mod access;
mod admin;
mod config;
mod group;
mod producer;
mod reader;
#[cfg(test)]
mod tests;

use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::Producer as _;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use switchboard_schemas::{Position, Topic};
use tokio::sync::watch;

pub use config::{KafkaConfig, Sasl, SaslMechanism};

use super::{Appending, Cursor, Log, LogError, LogReader, Member};
use config::TopicNames;
use producer::Producer;

/// A log on a Kafka cluster. See the [module docs](self).
///
/// Clones share one producer. Readers end with [`LogError::Closed`] once the log is closed or
/// its last clone is dropped.
#[derive(Clone)]
pub struct KafkaLog {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    names: Arc<TopicNames>,
    producer: Producer,
    /// `true` once closed; readers watch it to end, and dropping it ends them too.
    closed: watch::Sender<bool>,
}

impl KafkaLog {
    /// Connects to the cluster, creating the log's topics where they are missing, and returns
    /// once they all show in the cluster's metadata.
    ///
    /// Fails if a topic exists with a partition count other than `config.partitions`: keys would
    /// land in other partitions than the ones the count puts them in.
    pub async fn connect(config: KafkaConfig) -> Result<KafkaLog, LogError> {
        admin::ensure_topics(&config, &TopicNames::new(&config)).await?;
        KafkaLog::start(config)
    }

    /// The log over topics that are assumed to be in place.
    fn start(config: KafkaConfig) -> Result<KafkaLog, LogError> {
        let (closed, _) = watch::channel(false);
        Ok(KafkaLog {
            inner: Arc::new(Inner {
                names: Arc::new(TopicNames::new(&config)),
                producer: Producer::new(&config)?,
                config,
                closed,
            }),
        })
    }

    /// What the log was connected with: topic names, partitions, timeouts.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    fn check_open(&self) -> Result<(), LogError> {
        if *self.inner.closed.borrow() { Err(LogError::Closed) } else { Ok(()) }
    }
}

#[async_trait]
impl Log for KafkaLog {
    fn append(&self, topic: Topic, key: &[u8], value: Vec<u8>) -> Appending {
        let inner = Arc::clone(&self.inner);
        let partition = Topic::partition_for(key, inner.config.partitions);
        let name = inner.names.name(topic).to_owned();
        let sending =
            self.check_open().and_then(|()| inner.producer.send(&name, partition, key, &value));
        Box::pin(async move {
            let offset = inner.producer.delivered(&name, sending?).await?;
            Ok(Position { topic, partition, offset })
        })
    }

    fn partitions(&self, _topic: Topic) -> u32 {
        self.inner.config.partitions
    }

    async fn end_offsets(&self, topic: Topic) -> Result<Vec<u64>, LogError> {
        let producer = self.inner.producer.get();
        let name = self.inner.names.name(topic).to_owned();
        let partitions = self.inner.config.partitions as i32;
        let deadline = Instant::now() + self.inner.config.request_timeout;
        blocking(move || {
            (0..partitions)
                .map(|partition| {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let (_, high) = retrying(left, |left| {
                        producer.client().fetch_watermarks(&name, partition, left)
                    })
                    .map_err(|e| {
                        kafka_error(format!("reading the end of {name}/{partition}"), e)
                    })?;
                    u64::try_from(high).map_err(|_| {
                        LogError::Storage(format!("Kafka gave {name}/{partition} an end of {high}"))
                    })
                })
                .collect()
        })
        .await
    }

    /// Kafka's own time index answers (`ListOffsets` by timestamp); the topics stamp records
    /// with the time the broker appended them, which it keeps from going backwards.
    async fn offsets_at(&self, topic: Topic, time_ms: i64) -> Result<Vec<u64>, LogError> {
        let ends = self.end_offsets(topic).await?;
        let consumer: BaseConsumer = reader::outside_any_group(&self.inner.config)?;
        let name = self.inner.names.name(topic).to_owned();
        let mut wanted = TopicPartitionList::new();
        for partition in 0..self.inner.config.partitions as i32 {
            wanted
                .add_partition_offset(&name, partition, Offset::Offset(time_ms))
                .map_err(|e| kafka_error(format!("asking for {name} at {time_ms} ms"), e))?;
        }
        let timeout = self.inner.config.request_timeout;
        let found = blocking(move || {
            retrying(timeout, |left| consumer.offsets_for_times(wanted.clone(), left))
                .map_err(|e| kafka_error(format!("finding {name} at {time_ms} ms"), e))
        })
        .await?;
        let mut offsets = ends;
        for element in found.elements() {
            // A partition with nothing taken since comes back as the end (`Offset::End`).
            if let (Ok(partition), Offset::Offset(offset)) =
                (usize::try_from(element.partition()), element.offset())
                && let (Some(slot), Ok(offset)) =
                    (offsets.get_mut(partition), u64::try_from(offset))
            {
                *slot = offset;
            }
        }
        Ok(offsets)
    }

    async fn reader(&self, from: Cursor) -> Result<Box<dyn LogReader>, LogError> {
        self.check_open()?;
        let names = Arc::clone(&self.inner.names);
        reader::assigned(&self.inner.config, names, self.inner.closed.subscribe(), &from)
    }

    async fn join_group(
        &self,
        group: &str,
        topics: &[Topic],
        start: Cursor,
    ) -> Result<Box<dyn LogReader>, LogError> {
        self.check_open()?;
        let names = Arc::clone(&self.inner.names);
        let closed = self.inner.closed.subscribe();
        group::join(&self.inner.config, names, closed, group, topics, start)
    }

    async fn members(&self, group: &str) -> Result<Vec<Member>, LogError> {
        group::members(&self.inner.config, Arc::clone(&self.inner.names), group).await
    }

    async fn committed(&self, group: &str) -> Result<Cursor, LogError> {
        group::committed(&self.inner.config, Arc::clone(&self.inner.names), group).await
    }

    /// Records `cursor` as `group`'s offsets. Kafka refuses this while the group has active
    /// members (they commit through [`LogReader::commit`]), and keeps the offsets of partitions
    /// the cursor does not name.
    async fn commit(&self, group: &str, cursor: &Cursor) -> Result<(), LogError> {
        group::commit(&self.inner.config, &self.inner.names, group, cursor).await
    }

    /// Stops appends and readers, then waits (up to the delivery timeout) for the appends in
    /// flight to be delivered or fail.
    async fn close(&self) -> Result<(), LogError> {
        self.inner.closed.send_replace(true);
        self.inner.producer.flush().await
    }
}

/// Runs a blocking librdkafka call off the async worker threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LogError::Storage(format!("Kafka client task failed: {e}")))?
}

/// How long a blocking call waits before it asks again after a transient error.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Calls `attempt` with the time left, again and again while it fails with a transient error
/// and the time is not up. Such errors are mostly moments, not outages: a leader that has just
/// been elected (right after a topic is created, say), a coordinator that moves, a group between
/// generations. Blocking: run it off the async workers.
fn retrying<T>(
    timeout: Duration,
    mut attempt: impl FnMut(Duration) -> KafkaResult<T>,
) -> KafkaResult<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt(deadline.saturating_duration_since(Instant::now())) {
            Err(error)
                if error.rdkafka_error_code().is_some_and(is_transient)
                    && Instant::now() + RETRY_PAUSE < deadline =>
            {
                std::thread::sleep(RETRY_PAUSE);
            }
            result => return result,
        }
    }
}

/// The offset to give librdkafka for a cursor's offset. One past `i64::MAX` is past the end of
/// any partition, which is what the end means.
fn kafka_offset(next: u64) -> Offset {
    i64::try_from(next).map_or(Offset::End, Offset::Offset)
}

/// Errors that mean the cluster, or part of it, cannot answer right now; librdkafka retries
/// them by itself, and the caller may too. A group's generation changes during every rebalance,
/// so a commit refused for an old one goes through once the member has the new one.
fn is_transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        BrokerTransportFailure
            | Resolve
            | MessageTimedOut
            | AllBrokersDown
            | OperationTimedOut
            | TimedOutQueue
            | QueueFull
            | WaitingForCoordinator
            | BrokerDestroy
            | PurgeQueue
            | PurgeInflight
            | LeaderNotAvailable
            | NotLeaderForPartition
            | RequestTimedOut
            | BrokerNotAvailable
            | NetworkException
            | CoordinatorLoadInProgress
            | CoordinatorNotAvailable
            | NotCoordinator
            | NotEnoughReplicas
            | NotEnoughReplicasAfterAppend
            | RebalanceInProgress
            | IllegalGeneration
    )
}

fn kafka_error(context: impl Display, error: KafkaError) -> LogError {
    classify(error.rdkafka_error_code(), format!("{context}: {error}"))
}

/// For the per-item error codes of admin results, which come without a [`KafkaError`].
fn error_from_code(context: impl Display, code: RDKafkaErrorCode) -> LogError {
    classify(Some(code), format!("{context}: {code}"))
}

fn classify(code: Option<RDKafkaErrorCode>, message: String) -> LogError {
    if code.is_some_and(is_transient) {
        LogError::Unavailable(message)
    } else {
        LogError::Storage(message)
    }
}
