//! Start-up checks of the cluster: every topic exists, with the partition count keys are hashed
//! over and the retention the node is configured with.
//!
//! A key's partition is `murmur2(key) % partitions`; a topic with another partition count would
//! put keys where readers (and the embedded log's numbering) do not expect them and break
//! per-key order, so a mismatch stops the node instead of being worked around. Missing topics are
//! created here rather than by broker auto-creation, which would use the broker's defaults.

use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use switchboard_schemas::Topic;
use tokio::time::{Instant, sleep};

use super::config::{KafkaConfig, TopicNames};
use super::{access, blocking, error_from_code, kafka_error};
use crate::log::LogError;

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
    if let Some(retention) = &config.retention {
        for topic in Topic::ALL.into_iter().filter(|topic| !missing.contains(topic)) {
            keep_for(&admin, config, names.name(topic), retention.kafka_ms(topic)).await?;
        }
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
    let retention = config.retention.unwrap_or_default();
    let retention = Topic::ALL.map(|topic| retention.kafka_ms(topic));
    let options = options(config);
    // acks=all only protects a write if more than one replica must have it; one broker may still
    // be down without stopping appends.
    let min_insync = (config.replication - 1).max(1).to_string();
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|&topic| {
            NewTopic::new(
                names.name(topic),
                partitions,
                TopicReplication::Fixed(config.replication),
            )
            // The timestamp a reader sees is when the log accepted the record, as in the
            // embedded log, not the producing node's clock.
            .set("message.timestamp.type", "LogAppendTime")
            .set("min.insync.replicas", &min_insync)
            // Set whatever the broker's default is: what the log forgets, a rebuild cannot
            // bring back.
            .set("retention.ms", &retention[topic as usize])
        })
        .collect();
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

/// Changes an existing topic's `retention.ms` to `retention_ms` if it differs, keeping the
/// topic's other settings: Kafka's `AlterConfigs` replaces a topic's whole configuration, so
/// every setting made on the topic is sent along.
async fn keep_for(
    admin: &AdminClient<DefaultClientContext>,
    config: &KafkaConfig,
    name: &str,
    retention_ms: String,
) -> Result<(), LogError> {
    let options = options(config);
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(name)], &options)
        .await
        .map_err(|e| kafka_error(format!("reading the settings of topic {name}"), e))?;
    let resource = described
        .into_iter()
        .next()
        .ok_or_else(|| LogError::Storage(format!("Kafka described no settings of topic {name}")))?
        .map_err(|code| error_from_code(format!("reading the settings of topic {name}"), code))?;
    let current = resource.get("retention.ms").and_then(|entry| entry.value.clone());
    if current.as_deref() == Some(retention_ms.as_str()) {
        return Ok(());
    }
    let set_on_topic: Vec<(&str, &str)> = resource
        .entries
        .iter()
        .filter(|entry| entry.source == ConfigSource::DynamicTopic && entry.name != "retention.ms")
        .filter_map(|entry| Some((entry.name.as_str(), entry.value.as_deref()?)))
        .collect();
    let mut change = AlterConfig::new(ResourceSpecifier::Topic(name));
    for (key, value) in set_on_topic {
        change = change.set(key, value);
    }
    change = change.set("retention.ms", &retention_ms);
    for result in admin
        .alter_configs(&[change], &options)
        .await
        .map_err(|e| kafka_error(format!("changing the retention of topic {name}"), e))?
    {
        result.map_err(|(_, code)| {
            error_from_code(format!("changing the retention of topic {name}"), code)
        })?;
    }
    tracing::info!(
        topic = name,
        from_ms = current.as_deref().unwrap_or("unknown"),
        to_ms = retention_ms,
        "changed the topic's retention to the configured one"
    );
    Ok(())
}

fn options(config: &KafkaConfig) -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(config.request_timeout))
        .operation_timeout(Some(config.request_timeout))
}
