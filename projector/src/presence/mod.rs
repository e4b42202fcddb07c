//! Presence: who is online, shared by the API nodes.
//!
//! [`memory`] keeps it in process (one node); [`redis`] shares it between nodes. Sessions are
//! held under per-node leases: when a node stops renewing, its users go offline.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use switchboard_schemas::UserId;

pub mod conformance;
pub mod memory;
pub mod redis;

/// Opens the presence backend a URL names: `memory://` (this process only) or
/// `redis[s]://[[user]:password@]host:port[/db][?prefix=P][&ca=FILE]` (see
/// [`RedisConfig::from_url`](crate::redis_client::RedisConfig::from_url)), shared by every node using it. `node_id` is the node whose
/// sessions this handle opens.
pub async fn open(url: &str, node_id: &str) -> Result<Arc<dyn Presence>, PresenceError> {
    match url.split_once("://") {
        Some(("memory", "")) => Ok(Arc::new(memory::MemoryPresence::new(node_id))),
        Some(("redis" | "rediss", _)) => {
            Ok(Arc::new(redis::RedisPresence::connect(url, node_id).await?))
        }
        _ => Err(PresenceError::Unavailable(format!(
            "`{url}` names no presence backend: use memory:// or redis://HOST:PORT"
        ))),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The backend cannot be reached; callers degrade (presence unknown) rather than fail.
    #[error("presence backend unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    pub user_id: UserId,
    pub online: bool,
}

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records an open session held by `node_id`. Returns whether the user just came online.
    async fn open_session(
        &self,
        user: UserId,
        session_id: &str,
        node_id: &str,
    ) -> Result<bool, PresenceError>;

    /// Drops a session. Returns whether the user just went offline.
    async fn close_session(&self, user: UserId, session_id: &str) -> Result<bool, PresenceError>;

    /// Whether each user has a session on a node whose lease is live.
    async fn status(&self, users: &[UserId]) -> Result<Vec<Status>, PresenceError>;

    /// Extends `node_id`'s lease; its sessions count as online until the lease runs out.
    async fn renew_lease(&self, node_id: &str, lease: Duration) -> Result<(), PresenceError>;
}
