//! Presence and the other short-lived state API nodes share: who is online, rate limits and
//! idempotency claims.
//!
//! [`memory`] keeps it in process (one node); a Redis implementation shares it between nodes.
//! Sessions are held under per-node leases: when a node stops renewing, its users go offline.

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
/// [`redis::RedisConfig::from_url`]), shared by every node using it. `node_id` is the node whose
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

/// A rate: at most `limit` requests per `period`, with bursts up to `limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub period: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    /// Over the limit; the next request would be allowed after this long.
    Limited {
        retry_after: Duration,
    },
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

    /// Generic cell rate algorithm over `key`: allows `quota.limit` requests per `quota.period`.
    async fn check_rate(&self, key: &str, quota: Quota) -> Result<RateDecision, PresenceError>;

    /// Sets `key` to `value` for `ttl` unless it is set; returns the value already there.
    async fn claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, PresenceError>;

    /// Overwrites a claim's value (e.g. once the claimed work is done).
    async fn update_claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), PresenceError>;

    /// Overwrites a claim's value only if it is still `seen`: of several callers taking over one
    /// abandoned claim, one succeeds. `false` if the claim holds another value or none.
    async fn replace_claim(
        &self,
        key: &str,
        seen: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, PresenceError>;

    /// Drops claims, so that their work may be tried again or because it is settled elsewhere.
    async fn release_claims(&self, keys: &[&str]) -> Result<(), PresenceError>;
}
