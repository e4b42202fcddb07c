//! Reaching Redis, for every backend that keeps state there: presence, feeds, and the API
//! nodes' rate limits and claims.
//!
//! [`config`] parses the URL (with TLS and credentials) and sets the timeouts. [`RedisClient`]
//! sends one command or script at a time through a reconnecting [`ConnectionManager`], and gives
//! up within the call timeout with a [`RedisFailure`] instead of waiting: callers degrade while
//! Redis is away, and the manager reconnects by itself on the next call once Redis answers.

pub mod config;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, RedisResult, ScriptInvocation};

pub use self::config::RedisConfig;

/// Why Redis could not be used: a URL that cannot be, a client that cannot be set up, a call
/// that failed or did not answer in time. Said in words that never hold the URL's password.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RedisFailure(pub String);

/// A client whose every call answers within a bounded time. See the module docs.
#[derive(Clone)]
pub struct RedisClient {
    redis: ConnectionManager,
    /// Where Redis is, for error messages (the URL may hold a password; this never does).
    address: String,
    call_timeout: Duration,
}

impl RedisClient {
    /// A client of the Redis `config` names. It connects on first use, so Redis need not be up.
    pub fn new(config: &RedisConfig) -> Result<RedisClient, RedisFailure> {
        let address = config.connection.addr().to_string();
        let unusable = |error: redis::RedisError| {
            RedisFailure(format!("cannot set up a client for Redis at {address}: {error}"))
        };
        let client = config.client(config.connection.clone()).map_err(unusable)?;
        // No retries inside the manager: a reconnection with back-off would hold every call that
        // waits on it for the whole back-off. The next call after a failure starts a new attempt.
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connection_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(0);
        let redis = ConnectionManager::new_lazy_with_config(client, manager).map_err(unusable)?;
        Ok(RedisClient { redis, address, call_timeout: config.call_timeout() })
    }

    /// Sends `request`, giving up after the call timeout; `what` says what the call was for.
    pub async fn run<T: FromRedisValue + Send>(
        &self,
        what: &str,
        request: &impl Request,
    ) -> Result<T, RedisFailure> {
        let mut redis = self.redis.clone();
        let attempt = async {
            match request.send(&mut redis).await {
                // The manager failed on a connection attempt made before this call and has just
                // started a new one. A refused connection means the request never left, so it is
                // safe to send again, and it then waits for the fresh attempt: the first call after
                // Redis comes back succeeds instead of reporting the outage that has ended.
                Err(error) if error.is_connection_refusal() => request.send(&mut redis).await,
                result => result,
            }
        };
        match tokio::time::timeout(self.call_timeout, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                Err(RedisFailure(format!("{what}: Redis at {}: {error}", self.address)))
            }
            Err(_) => Err(RedisFailure(format!(
                "{what}: Redis at {} did not answer within {:?}",
                self.address, self.call_timeout
            ))),
        }
    }
}

/// One request to Redis, a command or a script invocation, so that [`RedisClient::run`] can
/// send either and, when it is safe, send it again.
pub trait Request: Sync {
    fn send<T: FromRedisValue + Send>(
        &self,
        redis: &mut ConnectionManager,
    ) -> impl Future<Output = RedisResult<T>> + Send;
}

impl Request for Cmd {
    fn send<T: FromRedisValue + Send>(
        &self,
        redis: &mut ConnectionManager,
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.query_async(redis)
    }
}

impl Request for ScriptInvocation<'_> {
    fn send<T: FromRedisValue + Send>(
        &self,
        redis: &mut ConnectionManager,
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.invoke_async(redis)
    }
}

/// Whole milliseconds for a TTL, at least one: Redis refuses an expiry of zero.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}
