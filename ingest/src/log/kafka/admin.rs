//! Start-up checks of the cluster: every topic exists, with the partition count keys are hashed
//! over.
//!
//! A key's partition is `murmur2(key) % partitions`; a topic with another partition count would
//! put keys where readers (and the embedded log's numbering) do not expect them and break
//! per-key order, so a mismatch stops the node instead of being worked around. Missing topics are
//! created here rather than by broker auto-creation, which would use the broker's defaults.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use switchboard_schemas::Topic;
use tokio::time::{Instant, sleep};

use super::config::{KafkaConfig, TopicNames};
use super::{access, blocking, error_from_code, kafka_error};
use crate::log::LogError;

/// Relay messages only matter while a call is being set up.
const SIGNALS_RETENTION_MS: &str = "3600000";

/// How often metadata is asked again while new topics appear.
const METADATA_POLL: Duration = Duration::from_millis(100);

/// Checks that the cluster lets this client in, creates the missing topics and waits until every
/// topic is in the cluster's metadata with all its partitions led, failing if one has a partition
/// count other than the configured one.
pub(super) async fn ensure_topics(
    config: &KafkaConfig,
    names: &TopicNames,
) -> Result<(), LogError> {
    access::check(config, names.name(Topic::ALL[0])).await?;
    let admin: AdminClient<DefaultClientContext> = config
        .client_config()
        .create()
        .map_err(|e| kafka_error("creating the Kafka admin client", e))?;
    let admin = std::sync::Arc::new(admin);

    let mut missing = Vec::new();
    for topic in Topic::ALL {
        if layout(&admin, names.name(topic), config.request_timeout).await?.is_none() {
            missing.push(topic);
        }
    }
    if !missing.is_empty() {
        create(&admin, config, names, &missing).await?;
    }

    let deadline = Instant::now() + config.request_timeout;
    for topic in Topic::ALL {
        let name = names.name(topic);
        let partitions = loop {
            if let Some(partitions) = layout(&admin, name, config.request_timeout).await? {
                break partitions;
            }
            if Instant::now() >= deadline {
                return Err(LogError::Unavailable(format!(
                    "topic {name} was created but has not appeared, with a leader for every \
                     partition, in the cluster's metadata after {:?}",
                    config.request_timeout
                )));
            }
            sleep(METADATA_POLL).await;
        };
        if partitions != config.partitions as usize {
            return Err(LogError::Storage(format!(
                "topic {name} has {partitions} partitions, but this log is configured for {}: \
                 keys are placed by hashing over the partition count, so the counts must match \
                 (set partitions={partitions}, or use another prefix)",
                config.partitions
            )));
        }
    }
    Ok(())
}

/// The partition count of a topic that exists and has a leader for every partition; `None` for
/// one that does not exist (yet) or is still being set up.
async fn layout(
    admin: &std::sync::Arc<AdminClient<DefaultClientContext>>,
    name: &str,
    timeout: Duration,
) -> Result<Option<usize>, LogError> {
    let admin = std::sync::Arc::clone(admin);
    let topic = name.to_owned();
    let metadata = blocking(move || {
        admin
            .inner()
            .fetch_metadata(Some(&topic), timeout)
            .map_err(|e| kafka_error(format!("reading the metadata of topic {topic}"), e))
    })
    .await?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == name) else {
        return Ok(None);
    };
    let partitions = found.partitions();
    let ready = found.error().is_none()
        && !partitions.is_empty()
        && partitions.iter().all(|p| p.error().is_none() && p.leader() >= 0);
    Ok(ready.then_some(partitions.len()))
}

async fn create(
    admin: &AdminClient<DefaultClientContext>,
    config: &KafkaConfig,
    names: &TopicNames,
    missing: &[Topic],
) -> Result<(), LogError> {
    let partitions = config.partitions as i32;
    // acks=all only protects a write if more than one replica must have it; one broker may still
    // be down without stopping appends.
    let min_insync = (config.replication - 1).max(1).to_string();
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|&topic| {
            let new = NewTopic::new(
                names.name(topic),
                partitions,
                TopicReplication::Fixed(config.replication),
            )
            // The timestamp a reader sees is when the log accepted the record, as in the
            // embedded log, not the producing node's clock.
            .set("message.timestamp.type", "LogAppendTime")
            .set("min.insync.replicas", &min_insync);
            match topic {
                Topic::Signals => new.set("retention.ms", SIGNALS_RETENTION_MS),
                // The log is the source of truth that read models are rebuilt from: it is kept
                // whole, whatever the broker's default retention is.
                _ => new.set("retention.ms", "-1"),
            }
        })
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(config.request_timeout))
        .operation_timeout(Some(config.request_timeout));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|e| kafka_error("creating the log's topics", e))?;
    for result in results {
        match result {
            // Another node created it between our metadata check and now: the partition check
            // that follows still applies to it.
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(error_from_code(format!("creating topic {name}"), code));
            }
        }
    }
    Ok(())
}
