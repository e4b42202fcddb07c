//! Where the shared presence lives and how long a call may wait for it.
//!
//! The timeouts are short on purpose: presence is an aid, not a dependency. When Redis is slow or
//! gone, a call gives up within [`RedisConfig::call_timeout`] and the caller carries on without
//! presence, rather than holding a socket, a send or an HTTP request hostage.

use std::time::Duration;

use redis::{ConnectionInfo, IntoConnectionInfo};

use crate::presence::PresenceError;

/// What every key starts with unless the URL says otherwise, so that switchboard can share a
/// Redis with other programs.
pub const DEFAULT_PREFIX: &str = "sb:";

/// How long opening a connection may take. Redis sits next to the nodes; a connection that takes
/// longer is as good as down.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_millis(500);

/// How long Redis may take to answer one request. Every request here is a few hash or set
/// operations, which Redis answers in well under a millisecond; the margin absorbs a busy machine.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A parsed `redis://` presence URL plus the timeouts.
#[derive(Clone)]
pub struct RedisConfig {
    pub connection: ConnectionInfo,
    /// Prepended to every key.
    pub prefix: String,
    pub connection_timeout: Duration,
    pub response_timeout: Duration,
}

impl RedisConfig {
    /// Parses `redis://[user:password@]host:port[/db][?prefix=P]` with the default timeouts.
    /// The prefix defaults to [`DEFAULT_PREFIX`]; the other query parameters the redis crate
    /// knows (such as `protocol`) keep their meaning.
    pub fn from_url(url: &str) -> Result<RedisConfig, PresenceError> {
        // The URL may carry a password, so errors do not repeat it.
        let parsed = redis::parse_redis_url(url).ok_or_else(|| {
            PresenceError::Unavailable("the presence URL is not a valid redis:// URL".to_owned())
        })?;
        let prefix = parsed
            .query_pairs()
            .find(|(name, _)| name == "prefix")
            .map_or_else(|| DEFAULT_PREFIX.to_owned(), |(_, value)| value.into_owned());
        let connection = parsed.into_connection_info().map_err(|error| {
            PresenceError::Unavailable(format!("the presence URL is not usable: {error}"))
        })?;
        Ok(RedisConfig {
            connection,
            prefix,
            connection_timeout: CONNECTION_TIMEOUT,
            response_timeout: RESPONSE_TIMEOUT,
        })
    }

    /// The longest one presence call may take: connecting (when the connection was lost) and
    /// then waiting for the answer. A guard over the client's own timeouts, so that no call can
    /// hang whatever state the connection is in.
    pub fn call_timeout(&self) -> Duration {
        self.connection_timeout + self.response_timeout
    }
}

#[cfg(test)]
mod tests {
    use redis::ConnectionAddr;

    use super::*;

    #[test]
    fn the_prefix_defaults_and_can_be_set() -> Result<(), PresenceError> {
        let plain = RedisConfig::from_url("redis://127.0.0.1:16379")?;
        assert_eq!(plain.prefix, DEFAULT_PREFIX);
        assert_eq!(plain.connection.addr(), &ConnectionAddr::Tcp("127.0.0.1".to_owned(), 16379));

        let custom = RedisConfig::from_url("redis://redis.internal:6379/3?prefix=chat%3Aeu%3A")?;
        assert_eq!(custom.prefix, "chat:eu:");
        assert_eq!(custom.connection.redis_settings().db(), 3);
        Ok(())
    }

    #[test]
    fn other_schemes_and_bad_databases_are_refused() {
        assert!(RedisConfig::from_url("memory://").is_err());
        assert!(RedisConfig::from_url("not a url").is_err());
        assert!(RedisConfig::from_url("redis://127.0.0.1:6379/not-a-db").is_err());
    }
}
