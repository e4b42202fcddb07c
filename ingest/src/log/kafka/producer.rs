//! The write side: one idempotent producer per log, shared by every append.
//!
//! An append is acknowledged with the offset from Kafka's delivery report, and only once every
//! in-sync replica has the record (`acks=all`), so a token handed to a client always names a
//! record that is in the log. Idempotence keeps librdkafka's retries from writing a record twice
//! or out of order. Every append ends: it is delivered within `message.timeout.ms` or fails, so a
//! Kafka that does not answer turns into [`LogError::Unavailable`], never into a hang.
//!
//! The partition is chosen here, with [`Topic::partition_for`], and set on each record, rather
//! than left to librdkafka's partitioner: that keeps a key in the same partition number as in the
//! embedded log, whatever client library wrote it.

use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use super::config::KafkaConfig;
use super::{blocking, kafka_error};
use crate::log::LogError;

pub(super) struct Producer {
    /// Replaced when librdkafka declares it unusable (a fatal error of the idempotent producer),
    /// so that one bad moment of the cluster does not stop every later append.
    current: RwLock<FutureProducer>,
    config: ClientConfig,
    delivery_timeout: Duration,
}

impl Producer {
    pub(super) fn new(config: &KafkaConfig) -> Result<Producer, LogError> {
        let mut client = config.client_config();
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            // Appends wait at most this long for others to share a batch: low latency first.
            .set("linger.ms", "2")
            .set("message.timeout.ms", config.delivery_timeout.as_millis().to_string());
        Ok(Producer {
            current: RwLock::new(create(&client)?),
            config: client,
            delivery_timeout: config.delivery_timeout,
        })
    }

    /// A handle on the current producer (cheap: it is reference-counted).
    pub(super) fn get(&self) -> FutureProducer {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Hands one record for `topic`'s `partition` to the producer, which keeps the order records
    /// are handed to it in (idempotence); [`Producer::delivered`] waits for it to be stored.
    ///
    /// A full local queue (librdkafka's, of `queue.buffering.max.messages`) fails the append at
    /// once rather than waiting for room, which would let a later record overtake it. It holds
    /// far more than sockets and requests can have in flight, so only a cluster that stopped
    /// taking records fills it, and the caller is told it is unavailable.
    pub(super) fn send(
        &self,
        topic: &str,
        partition: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<Sending, LogError> {
        let producer = self.get();
        let partition_id = i32::try_from(partition)
            .map_err(|_| LogError::Storage(format!("partition {partition} is out of range")))?;
        let record = FutureRecord::to(topic).partition(partition_id).key(key).payload(value);
        match producer.send_result(record) {
            Ok(delivery) => Ok(Sending { producer, delivery, partition: partition_id }),
            Err((error, _)) => {
                self.replace_if_fatal(&producer);
                Err(kafka_error(format!("appending to {topic}/{partition}"), error))
            }
        }
    }

    /// The offset of a record handed over by [`Producer::send`], once it is stored.
    pub(super) async fn delivered(&self, topic: &str, sending: Sending) -> Result<u64, LogError> {
        let Sending { producer, delivery, partition } = sending;
        let failed = |error| {
            self.replace_if_fatal(&producer);
            kafka_error(format!("appending to {topic}/{partition}"), error)
        };
        match delivery.await {
            Ok(Ok(delivery)) if delivery.partition == partition => u64::try_from(delivery.offset)
                .map_err(|_| {
                    LogError::Storage(format!(
                        "Kafka stored a record in {topic}/{partition} without an offset"
                    ))
                }),
            Ok(Ok(delivery)) => Err(LogError::Storage(format!(
                "a record sent to {topic}/{partition} was stored in partition {}",
                delivery.partition
            ))),
            Ok(Err((error, _))) => Err(failed(error)),
            Err(_) => Err(failed(KafkaError::Canceled)),
        }
    }

    /// Waits until every record handed to the producer is delivered or has failed, for at most
    /// the delivery timeout.
    pub(super) async fn flush(&self) -> Result<(), LogError> {
        let producer = self.get();
        let timeout = self.delivery_timeout;
        blocking(move || {
            producer
                .flush(Timeout::After(timeout))
                .map_err(|e| kafka_error("flushing the records in flight", e))
        })
        .await
    }

    fn replace_if_fatal(&self, failed: &FutureProducer) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        // Several appends may fail together; only the first replaces the broken producer.
        if current.client().native_ptr() != failed.client().native_ptr() {
            return;
        }
        tracing::error!(%code, %reason, "the Kafka producer failed fatally; starting a new one");
        match create(&self.config) {
            Ok(fresh) => *current = fresh,
            Err(e) => tracing::error!(error = %e, "could not start a new Kafka producer"),
        }
    }
}

/// A record in the producer's hands, not yet known to be stored.
pub(super) struct Sending {
    producer: FutureProducer,
    delivery: DeliveryFuture,
    partition: i32,
}

fn create(config: &ClientConfig) -> Result<FutureProducer, LogError> {
    config.create().map_err(|e| kafka_error("creating the Kafka producer", e))
}
