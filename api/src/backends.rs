//! Turns the backend URLs of the configuration into implementations of the log, read-model,
//! presence, coordination and feed abstractions; each module knows the URLs of its own backends.

use std::sync::Arc;

use anyhow::Context;
use switchboard_ingest::log::{self, Log};
pub use switchboard_ingest::url::redacted;
use switchboard_projector::feed::{self, Feeds};
use switchboard_projector::presence::{self, Presence};
use switchboard_projector::store::{self, ReadModel};

use crate::config::{Config, Role};
use crate::coordination::{self, Coordination};

/// The node's log, where it goes by `node_id` among consumer groups' members. A read-only node
/// opens it as the tools do, leaving its retention alone.
pub async fn open_log(config: &Config, node_id: &str) -> anyhow::Result<Arc<dyn Log>> {
    let url = config.log_url();
    let opened = match config.role {
        Role::ReadOnly => log::open(&url, config.partitions).await,
        _ => {
            let settings =
                log::NodeSettings { retention: config.log_retention, member: node_id.to_owned() };
            log::open_for_node(&url, config.partitions, settings).await
        }
    };
    opened.with_context(|| format!("opening the log at {}", redacted(&url)))
}

pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn ReadModel>> {
    let url = config.store_url();
    store::open(&url)
        .await
        .with_context(|| format!("opening the read-model store at {}", redacted(&url)))
}

pub async fn open_presence(config: &Config, node_id: &str) -> anyhow::Result<Arc<dyn Presence>> {
    let url = &config.presence;
    presence::open(url, node_id)
        .await
        .with_context(|| format!("opening presence at {}", redacted(url)))
}

/// Rate limits and claims live beside presence: in this process, or in the same Redis.
pub fn open_coordination(config: &Config) -> anyhow::Result<Arc<dyn Coordination>> {
    let url = &config.presence;
    coordination::open(url)
        .with_context(|| format!("opening rate limits and claims at {}", redacted(url)))
}

pub async fn open_feeds(config: &Config) -> anyhow::Result<Arc<dyn Feeds>> {
    let url = config.feeds_url();
    feed::open(&url, config.retention())
        .await
        .with_context(|| format!("opening the feeds at {}", redacted(&url)))
}
