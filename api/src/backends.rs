//! Turns the backend URLs of the configuration into implementations of the log, read-model and
//! presence abstractions.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use switchboard_ingest::log::Log;
use switchboard_ingest::log::embedded::EmbeddedLog;
use switchboard_projector::presence::Presence;
use switchboard_projector::presence::memory::MemoryPresence;
use switchboard_projector::store::ReadModel;
use switchboard_projector::store::embedded::EmbeddedStore;

use crate::config::Config;

fn split(url: &str) -> anyhow::Result<(&str, &str)> {
    url.split_once("://")
        .with_context(|| format!("`{url}` is not a backend URL such as file://./data/log"))
}

pub fn open_log(config: &Config) -> anyhow::Result<Arc<dyn Log>> {
    let url = config.log_url();
    match split(&url)? {
        ("file", dir) => {
            let log = EmbeddedLog::open(Path::new(dir), config.partitions)
                .with_context(|| format!("opening the embedded log in {dir}"))?;
            Ok(Arc::new(log))
        }
        (scheme, _) => bail!("unsupported log backend `{scheme}://`; use file://DIR"),
    }
}

pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn ReadModel>> {
    let url = config.store_url();
    match split(&url)? {
        ("file", dir) => {
            let store = EmbeddedStore::open(Path::new(dir))
                .with_context(|| format!("opening the embedded store in {dir}"))?;
            Ok(Arc::new(store))
        }
        (scheme, _) => bail!("unsupported store backend `{scheme}://`; use file://DIR"),
    }
}

pub fn open_presence(config: &Config, node_id: &str) -> anyhow::Result<Arc<dyn Presence>> {
    match split(&config.presence)? {
        ("memory", "") => Ok(Arc::new(MemoryPresence::new(node_id))),
        (scheme, _) => bail!("unsupported presence backend `{scheme}://`; use memory://"),
    }
}
