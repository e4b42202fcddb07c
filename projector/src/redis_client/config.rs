//! Where Redis is and how long a call may wait for it.
//!
//! The timeouts are short on purpose: what nodes share in Redis (presence, limits, claims) is an
//! aid, not a dependency. When Redis is slow or gone, a call gives up within
//! [`RedisConfig::call_timeout`] and the caller carries on without it, rather than holding a
//! socket, a send or an HTTP request hostage.

use std::time::Duration;

use redis::{
    Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisResult, TlsCertificates,
};

use super::RedisFailure;

/// What every key starts with unless the URL says otherwise, so that switchboard can share a
/// Redis with other programs.
pub const DEFAULT_PREFIX: &str = "sb:";

/// How long opening a connection may take. Redis sits next to the nodes; a connection that takes
/// longer is as good as down.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_millis(500);

/// How long Redis may take to answer one request. Every request here is a few hash or set
/// operations, which Redis answers in well under a millisecond; the margin absorbs a busy machine.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A parsed `redis://` or `rediss://` URL plus the timeouts.
#[derive(Clone)]
pub struct RedisConfig {
    /// Where Redis is, and the credentials the URL gave.
    pub connection: ConnectionInfo,
    /// Prepended to every key.
    pub prefix: String,
    /// The CA certificates (PEM) that a TLS server's certificate must chain to, when the URL names
    /// a file of them (`ca=`); otherwise the system's trust store decides.
    pub root_cert: Option<Vec<u8>>,
    pub connection_timeout: Duration,
    pub response_timeout: Duration,
}

impl RedisConfig {
    /// Parses `redis[s]://[[user]:password@]host:port[/db][?prefix=P][&ca=FILE]` with the
    /// default timeouts. `rediss://` speaks TLS, checking the server's certificate against the CA
    /// certificates in FILE (PEM) when given, else against the system's trust store. The prefix
    /// defaults to [`DEFAULT_PREFIX`]; the other query parameters the redis crate knows (such as
    /// `protocol`) keep their meaning.
    pub fn from_url(url: &str) -> Result<RedisConfig, RedisFailure> {
        // The URL may carry a password, so errors do not repeat it.
        let parsed = redis::parse_redis_url(url).ok_or_else(|| {
            RedisFailure("the Redis URL is not a valid redis:// or rediss:// URL".to_owned())
        })?;
        let parameter = |name: &str| {
            parsed.query_pairs().find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
        };
        let prefix = parameter("prefix").unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        let ca = parameter("ca");
        let connection = parsed
            .into_connection_info()
            .map_err(|error| RedisFailure(format!("the Redis URL is not usable: {error}")))?;
        let root_cert = match (ca, connection.addr()) {
            (None, _) => None,
            (Some(path), ConnectionAddr::TcpTls { .. }) => {
                Some(std::fs::read(&path).map_err(|error| {
                    RedisFailure(format!("cannot read the CA certificates in {path}: {error}"))
                })?)
            }
            (Some(_), _) => {
                return Err(RedisFailure("`ca=` is for TLS: use a rediss:// URL".to_owned()));
            }
        };
        Ok(RedisConfig {
            connection,
            prefix,
            root_cert,
            connection_timeout: CONNECTION_TIMEOUT,
            response_timeout: RESPONSE_TIMEOUT,
        })
    }

    /// A client for `connection` (this configuration's, or one derived from it), trusting the
    /// configured CA certificates.
    pub fn client(&self, connection: ConnectionInfo) -> RedisResult<Client> {
        match &self.root_cert {
            Some(root_cert) => Client::build_with_tls(
                connection,
                TlsCertificates { client_tls: None, root_cert: Some(root_cert.clone()) },
            ),
            None => Client::open(connection),
        }
    }

    /// The longest one call may take: connecting (when the connection was lost) and
    /// then waiting for the answer. A guard over the client's own timeouts, so that no call can
    /// hang whatever state the connection is in.
    pub fn call_timeout(&self) -> Duration {
        self.connection_timeout + self.response_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_defaults_and_can_be_set() -> Result<(), RedisFailure> {
        let plain = RedisConfig::from_url("redis://127.0.0.1:16379")?;
        assert_eq!(plain.prefix, DEFAULT_PREFIX);
        assert_eq!(plain.connection.addr(), &ConnectionAddr::Tcp("127.0.0.1".to_owned(), 16379));

        let custom = RedisConfig::from_url("redis://redis.internal:6379/3?prefix=chat%3Aeu%3A")?;
        assert_eq!(custom.prefix, "chat:eu:");
        assert_eq!(custom.connection.redis_settings().db(), 3);
        Ok(())
    }

    #[test]
    fn tls_takes_a_ca_file_and_only_tls_does() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "PEM").expect("write");
        let url = format!("rediss://:secret@redis.internal:6380?ca={}", ca.display());
        let config = RedisConfig::from_url(&url).expect("a TLS URL");
        assert!(matches!(config.connection.addr(), ConnectionAddr::TcpTls { .. }));
        assert_eq!(config.root_cert.as_deref(), Some(&b"PEM"[..]));

        let missing = RedisConfig::from_url("rediss://redis.internal?ca=/nowhere/ca.pem");
        assert!(missing.is_err_and(|e| e.to_string().contains("/nowhere/ca.pem")));
        let plain = RedisConfig::from_url(&format!("redis://:secret@host?ca={}", ca.display()));
        let refused = plain.err().expect("ca= without TLS is refused").to_string();
        assert!(refused.contains("rediss://") && !refused.contains("secret"), "{refused}");
    }

    #[test]
    fn other_schemes_and_bad_databases_are_refused() {
        assert!(RedisConfig::from_url("memory://").is_err());
        assert!(RedisConfig::from_url("not a url").is_err());
        assert!(RedisConfig::from_url("redis://127.0.0.1:6379/not-a-db").is_err());
    }
}
