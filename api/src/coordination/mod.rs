//! What API nodes agree on between themselves, apart from presence: rate limits, and claims
//! (short-lived keys the first caller takes: a send's client id, a user's call line, a call's
//! outcome, a node id).
//!
//! Only the API uses these, and they need no history: [`memory`] keeps them in process for a
//! single node, [`redis`] shares them between nodes through the same Redis as presence. Every
//! key is one Redis key, so each call touches one key.

#[cfg(test)]
mod conformance;
pub mod memory;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// Opens the coordination backend a presence URL names: `memory://` (this process only) or
/// `redis[s]://…`, shared by every node using it, under the URL's key prefix.
pub fn open(url: &str) -> Result<Arc<dyn Coordination>, CoordinationError> {
    match url.split_once("://") {
        Some(("memory", "")) => Ok(Arc::new(memory::MemoryCoordination::default())),
        Some(("redis" | "rediss", _)) => Ok(Arc::new(redis::RedisCoordination::connect(url)?)),
        _ => Err(CoordinationError::Unavailable(format!(
            "`{url}` names no coordination backend: use memory:// or redis://HOST:PORT"
        ))),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinationError {
    /// The backend cannot be reached; rate limits then count on the node alone, and what needs
    /// a claim is refused as unavailable.
    #[error("coordination backend unavailable: {0}")]
    Unavailable(String),
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
pub trait Coordination: Send + Sync + 'static {
    /// Generic cell rate algorithm over `key`: allows `quota.limit` requests per `quota.period`.
    async fn check_rate(&self, key: &str, quota: Quota) -> Result<RateDecision, CoordinationError>;

    /// Sets `key` to `value` for `ttl` unless it is set; returns the value already there.
    async fn claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, CoordinationError>;

    /// Overwrites a claim's value (e.g. once the claimed work is done).
    async fn update_claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), CoordinationError>;

    /// Overwrites a claim's value only if it is still `seen`: of several callers taking over one
    /// abandoned claim, one succeeds. `false` if the claim holds another value or none.
    async fn replace_claim(
        &self,
        key: &str,
        seen: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, CoordinationError>;

    /// Drops claims, so that their work may be tried again or because it is settled elsewhere.
    async fn release_claims(&self, keys: &[&str]) -> Result<(), CoordinationError>;
}
