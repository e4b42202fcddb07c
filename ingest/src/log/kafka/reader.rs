//! Readers of the Kafka log: a consumer per reader, turned into batches of [`Record`]s.
//!
//! A plain reader ([`Log::reader`](crate::log::Log::reader)) is *assigned* exactly the partitions
//! its cursor names, at the cursor's offsets: it joins no group and commits nothing, so any
//! number of readers (one per WebSocket fan-out, one per replay) can follow the same partitions
//! without disturbing each other or a group. librdkafka still wants a `group.id` before it
//! assigns, so each gets a throwaway one, which is never joined or committed to.
//!
//! Latency is the reason for the consumer settings: a reader at the tail is answered by the
//! broker as soon as a record arrives, or after `fetch.wait.max.ms` (a few ms) otherwise, and
//! `next_batch` hands out whatever is already fetched rather than waiting to fill a batch.
//!
//! Dropping a reader closes its consumer on a blocking thread: closing waits for the broker (a
//! group member leaves its group there), which must not stall an async worker.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use rdkafka::config::FromClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, DefaultConsumerContext, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message, TopicPartitionList};
use switchboard_schemas::Position;
use tokio::sync::watch;

use super::config::{KafkaConfig, TopicNames};
use super::{is_transient, kafka_error, kafka_offset};
use crate::log::{Cursor, LogError, LogReader, Record};

/// The settings every consumer of this log shares. The `group.id` is `group` under the log's
/// topic prefix: logs with different prefixes on one cluster must never share a group, or every
/// member of one would rebalance whenever a member of another came or went.
pub(super) fn consumer_config(config: &KafkaConfig, group: &str) -> ClientConfig {
    let mut client = config.client_config();
    client
        .set("group.id", format!("{}{group}", config.prefix))
        // Progress is recorded only by explicit commits of what the caller has processed.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A cursor below the oldest record still kept (the signals topic expires records)
        // resumes at the oldest one, rather than failing.
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", config.fetch_wait.as_millis().to_string())
        .set("fetch.min.bytes", "1");
    client
}

/// A consumer that reads or looks up offsets by itself: its group id is its own, never joined
/// nor committed to.
pub(super) fn outside_any_group<C: FromClientConfig>(config: &KafkaConfig) -> Result<C, LogError> {
    let group = format!("switchboard-reader-{}", uuid::Uuid::new_v4());
    consumer_config(config, &group)
        .create()
        .map_err(|e| kafka_error("creating a Kafka consumer", e))
}

/// A reader assigned the partitions of `from`, starting at its offsets.
pub(super) fn assigned(
    config: &KafkaConfig,
    names: Arc<TopicNames>,
    closed: watch::Receiver<bool>,
    from: &Cursor,
) -> Result<Box<dyn LogReader>, LogError> {
    let mut partitions = TopicPartitionList::new();
    for (topic, partition, next) in from.iter() {
        if partition >= config.partitions {
            return Err(LogError::Storage(format!(
                "partition {topic}.{partition} does not exist: topics have {} partitions",
                config.partitions
            )));
        }
        partitions
            .add_partition_offset(names.name(topic), partition as i32, kafka_offset(next))
            .map_err(|e| kafka_error(format!("reading from {topic}.{partition}={next}"), e))?;
    }
    if partitions.count() == 0 {
        return Err(LogError::Storage(
            "a reader needs a cursor naming at least one partition".into(),
        ));
    }
    let consumer: StreamConsumer = outside_any_group(config)?;
    consumer.assign(&partitions).map_err(|e| kafka_error(format!("assigning {from}"), e))?;
    Ok(Box::new(Reader::new(consumer, names, closed)))
}

/// Batches records from a consumer, for plain readers and group members alike.
pub(super) struct Reader<C: ConsumerContext + 'static> {
    /// Only ever `None` while the reader is being dropped.
    consumer: Option<Arc<StreamConsumer<C>>>,
    names: Arc<TopicNames>,
    closed: watch::Receiver<bool>,
    /// An error met after a batch had already been gathered; the next call returns it.
    pending: Option<LogError>,
}

impl<C: ConsumerContext + 'static> Reader<C> {
    pub(super) fn new(
        consumer: StreamConsumer<C>,
        names: Arc<TopicNames>,
        closed: watch::Receiver<bool>,
    ) -> Reader<C> {
        Reader { consumer: Some(Arc::new(consumer)), names, closed, pending: None }
    }

    /// The consumer, to hand to a blocking thread.
    pub(super) fn consumer(&self) -> Arc<StreamConsumer<C>> {
        Arc::clone(self.consumer.as_ref().expect("the consumer is taken only by drop"))
    }

    pub(super) fn names(&self) -> &Arc<TopicNames> {
        &self.names
    }

    /// Waits for the first record, then takes what else has already arrived, up to `max`.
    ///
    /// Cancel-safe: a message is taken from the consumer only in the same poll that returns it.
    pub(super) async fn next(&mut self, max: usize) -> Result<Vec<Record>, LogError> {
        if let Some(error) = self.pending.take() {
            return Err(error);
        }
        let consumer = self.consumer.as_deref().expect("the consumer is taken only by drop");
        let mut stream = consumer.stream();
        let mut batch = Vec::new();
        while batch.is_empty() {
            let polled = tokio::select! {
                biased;
                // Either the log was closed or every handle on it is gone: nothing more comes.
                _ = self.closed.wait_for(|closed| *closed) => return Err(LogError::Closed),
                polled = stream.next() => polled,
            };
            batch.extend(record(&self.names, polled)?);
        }
        while batch.len() < max.max(1) {
            let Some(polled) = stream.next().now_or_never() else {
                break;
            };
            match record(&self.names, polled) {
                Ok(record) => batch.extend(record),
                Err(error) => {
                    self.pending = Some(error);
                    break;
                }
            }
        }
        Ok(batch)
    }
}

impl<C: ConsumerContext + 'static> Drop for Reader<C> {
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        // Outside a runtime there is no async worker to protect; closing in place is fine.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || drop(consumer));
        }
    }
}

#[async_trait]
impl LogReader for Reader<DefaultConsumerContext> {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, LogError> {
        self.next(max).await
    }
}

/// The record in what the consumer stream yielded; `None` for a passing client error.
fn record(
    names: &TopicNames,
    polled: Option<KafkaResult<BorrowedMessage<'_>>>,
) -> Result<Option<Record>, LogError> {
    let message = match polled {
        Some(Ok(message)) => message,
        // librdkafka reconnects and refetches by itself; a reader at the tail keeps waiting, as
        // it would for an append, and the outage shows in the logs.
        Some(Err(error)) if error.rdkafka_error_code().is_some_and(is_transient) => {
            tracing::warn!(%error, "Kafka reader waiting for the cluster");
            return Ok(None);
        }
        Some(Err(error)) => return Err(kafka_error("reading from Kafka", error)),
        None => return Err(LogError::Storage("the Kafka consumer stopped".into())),
    };
    let topic = names.topic(message.topic()).ok_or_else(|| {
        LogError::Storage(format!(
            "a record came from topic {}, not one of the log's",
            message.topic()
        ))
    })?;
    let (Ok(partition), Ok(offset)) =
        (u32::try_from(message.partition()), u64::try_from(message.offset()))
    else {
        return Err(LogError::Storage(format!(
            "a record of {} came without a partition or offset",
            message.topic()
        )));
    };
    Ok(Some(Record {
        position: Position { topic, partition, offset },
        key: message.key().unwrap_or_default().to_vec(),
        value: message.payload().unwrap_or_default().to_vec(),
        timestamp_ms: message.timestamp().to_millis().unwrap_or_default(),
    }))
}
