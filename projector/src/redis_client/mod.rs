//! Reaching Redis, for every backend that keeps state there: presence, feeds, and the API
//! nodes' rate limits and claims.
//!
//! [`config`] parses the URL (with TLS and credentials) and sets the timeouts. [`RedisClient`]
//! sends one command or script at a time, to a single Redis through a reconnecting
//! [`ConnectionManager`] or to a Redis Cluster through a [`ClusterConnection`] (which routes each
//! command by its first key and follows the cluster as slots move). Either way it gives up within
//! the call timeout with a [`RedisFailure`] instead of waiting: callers degrade while Redis is
//! away, and the connection comes back by itself on a later call once Redis answers.

pub mod config;

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisResult, ScriptInvocation, TlsCertificates};

pub use self::config::RedisConfig;

/// Why Redis could not be used: a URL that cannot be, a client that cannot be set up, a call
/// that failed or did not answer in time. Said in words that never hold the URL's password.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RedisFailure(pub String);

/// A client whose every call answers within a bounded time. See the module docs.
#[derive(Clone)]
pub struct RedisClient {
    redis: Connection,
    /// Where Redis is, for error messages (the URL may hold a password; this never does).
    address: String,
    call_timeout: Duration,
}

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisClient {
    /// A client of the Redis `config` names. It connects on first use, so Redis need not be up.
    pub fn new(config: &RedisConfig) -> Result<RedisClient, RedisFailure> {
        let address = config.connection.addr().to_string();
        let unusable = |error: redis::RedisError| {
            RedisFailure(format!("cannot set up a client for Redis at {address}: {error}"))
        };
        // No retries inside the client: a reconnection with back-off would hold every call that
        // waits on it for the whole back-off. The next call after a failure starts a new attempt.
        let redis = if config.is_cluster() {
            let mut cluster = ClusterClientBuilder::new(config.cluster.clone()).retries(0);
            if let Some(root_cert) = &config.root_cert {
                let root_cert = Some(root_cert.clone());
                cluster = cluster.certs(TlsCertificates { client_tls: None, root_cert });
            }
            let cluster = cluster.build().map_err(unusable)?;
            // Connects on the first call, as the single-server manager does.
            Connection::Cluster(
                cluster.get_pending_async_connection_with_config(
                    ClusterConfig::new()
                        .set_connection_timeout(config.connection_timeout)
                        .set_response_timeout(config.response_timeout),
                ),
            )
        } else {
            let client = config.client(config.connection.clone()).map_err(unusable)?;
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.connection_timeout))
                .set_response_timeout(Some(config.response_timeout))
                .set_number_of_retries(0);
            Connection::Single(
                ConnectionManager::new_lazy_with_config(client, manager).map_err(unusable)?,
            )
        };
        Ok(RedisClient { redis, address, call_timeout: config.call_timeout() })
    }

    /// Sends `request`, giving up after the call timeout; `what` says what the call was for.
    pub async fn run<T: FromRedisValue + Send>(
        &self,
        what: &str,
        request: &impl Request,
    ) -> Result<T, RedisFailure> {
        let attempt = async {
            match self.redis.clone() {
                Connection::Single(mut redis) => match request.send(&mut redis).await {
                    // The manager failed on a connection attempt made before this call and has
                    // just started a new one. A refused connection means the request never left,
                    // so it is safe to send again, and it then waits for the fresh attempt: the
                    // first call after Redis comes back succeeds instead of reporting the outage
                    // that has ended.
                    Err(error) if error.is_connection_refusal() => request.send(&mut redis).await,
                    result => result,
                },
                // The cluster connection reconnects to each node as it is needed.
                Connection::Cluster(mut redis) => request.send(&mut redis).await,
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
        redis: &mut (impl ConnectionLike + Send),
    ) -> impl Future<Output = RedisResult<T>> + Send;
}

impl Request for Cmd {
    fn send<T: FromRedisValue + Send>(
        &self,
        redis: &mut (impl ConnectionLike + Send),
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.query_async(redis)
    }
}

impl Request for ScriptInvocation<'_> {
    fn send<T: FromRedisValue + Send>(
        &self,
        redis: &mut (impl ConnectionLike + Send),
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.invoke_async(redis)
    }
}

/// Whole milliseconds for a TTL, at least one: Redis refuses an expiry of zero.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}
