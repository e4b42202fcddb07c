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

/// A parsed `redis://`, `rediss://` or `redis[s]+cluster://` URL plus the timeouts.
#[derive(Clone)]
pub struct RedisConfig {
    /// Where Redis is, and the credentials the URL gave: the server, or the first node the URL
    /// names of a cluster.
    pub connection: ConnectionInfo,
    /// For a Redis Cluster, every node the URL names, which the client learns the cluster from;
    /// empty for a single Redis.
    pub cluster: Vec<ConnectionInfo>,
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
    ///
    /// `redis+cluster://[[user]:password@]host:port[,host:port…][?prefix=P]` (`rediss+cluster://`
    /// with TLS, taking `ca=` as well) names a Redis Cluster by some of its nodes. A cluster has
    /// one database only, so the URL has no `/db`, and the prefix may not hold `{` or `}`: the
    /// keys that must share a slot put the prefix in a hash tag.
    pub fn from_url(url: &str) -> Result<RedisConfig, RedisFailure> {
        let Some((scheme, rest)) = url.split_once("+cluster://") else {
            return RedisConfig::single(url);
        };
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
            None => (String::new(), authority),
        };
        if hosts.contains('/') {
            return Err(RedisFailure(
                "a Redis Cluster has one database: its URL takes no /db".to_owned(),
            ));
        }
        let query = if query.is_empty() { String::new() } else { format!("?{query}") };
        let nodes = hosts
            .split(',')
            .map(|host| RedisConfig::single(&format!("{scheme}://{credentials}{host}{query}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut config = nodes[0].clone();
        if config.prefix.contains(['{', '}']) {
            return Err(RedisFailure(
                "on a Redis Cluster the key prefix may not hold `{` or `}`".to_owned(),
            ));
        }
        config.cluster = nodes.into_iter().map(|node| node.connection).collect();
        Ok(config)
    }

    /// Whether the URL named a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        !self.cluster.is_empty()
    }

    fn single(url: &str) -> Result<RedisConfig, RedisFailure> {
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
            cluster: Vec::new(),
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
    fn a_cluster_is_named_by_its_nodes_sharing_credentials_and_prefix() {
        let url = "redis+cluster://app:secret@10.0.0.1:7000,10.0.0.2:7001?prefix=chat:";
        let config = RedisConfig::from_url(url).expect("a cluster URL");
        assert!(config.is_cluster());
        assert_eq!(config.prefix, "chat:");
        let nodes: Vec<_> = config.cluster.iter().map(|node| node.addr().to_string()).collect();
        assert_eq!(nodes, ["10.0.0.1:7000", "10.0.0.2:7001"]);
        for node in &config.cluster {
            assert_eq!(node.redis_settings().username(), Some("app"));
            assert_eq!(node.redis_settings().password(), Some("secret"));
        }
        assert!(!RedisConfig::from_url("redis://10.0.0.1:7000").expect("a URL").is_cluster());

        let database = RedisConfig::from_url("redis+cluster://:secret@h1:7000,h2:7001/2");
        let refused = database.err().expect("a cluster has one database").to_string();
        assert!(refused.contains("/db") && !refused.contains("secret"), "{refused}");
        let tagged = RedisConfig::from_url("redis+cluster://h1:7000?prefix=%7Bsb%7D");
        assert!(tagged.is_err_and(|e| e.to_string().contains("`{` or `}`")));
    }

    #[test]
    fn other_schemes_and_bad_databases_are_refused() {
        assert!(RedisConfig::from_url("memory://").is_err());
        assert!(RedisConfig::from_url("not a url").is_err());
        assert!(RedisConfig::from_url("redis://127.0.0.1:6379/not-a-db").is_err());
    }
}
