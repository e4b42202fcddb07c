//! Which log a command reads, as the options `rebuild` and `tail` share.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use anyhow::{Context, ensure};
use switchboard_ingest::log::Log;
use switchboard_ingest::url::redacted;

/// A time as commands take it, RFC 3339 (`2026-12-05T10:00:00Z`, or without the zone for UTC),
/// in milliseconds since the Unix epoch.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("`{text}` is not a time such as 2026-12-05T10:00:00Z: {e}"))?;
    let millis = time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis());
    Ok(i64::try_from(millis).unwrap_or(i64::MAX))
}

/// Options naming the log to read.
#[derive(clap::Args, Debug)]
pub struct LogArgs {
    /// Data directory of the node, for the default log location. Stop a node that uses an
    /// embedded log first: it can only be open in one process.
    #[arg(long, env = "SWITCHBOARD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// The log: file://DIR or kafka://HOST:PORT[?prefix=P] [default: file://<data-dir>/log].
    #[arg(long, env = "SWITCHBOARD_LOG")]
    pub log: Option<String>,

    /// Partitions per topic of the log, as `switchboard serve` created it.
    #[arg(long, env = "SWITCHBOARD_PARTITIONS", default_value_t = 8)]
    pub partitions: u32,
}

impl LogArgs {
    /// Opens the log, which must exist.
    pub async fn open(&self) -> anyhow::Result<Arc<dyn Log>> {
        let url = match &self.log {
            Some(url) => url.clone(),
            None => format!("file://{}", self.data_dir.join("log").display()),
        };
        // Opening an embedded log creates it when missing, and an empty log would read as one
        // holding nothing.
        if let Some(dir) = url.strip_prefix("file://") {
            ensure!(Path::new(dir).is_dir(), "{dir} holds no log");
        }
        switchboard_ingest::log::open(&url, self.partitions)
            .await
            .with_context(|| format!("opening the log at {}", redacted(&url)))
    }
}
