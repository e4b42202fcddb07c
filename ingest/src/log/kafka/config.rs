//! Where the Kafka log lives and how it talks to it, parsed from a `kafka://` URL.
//!
//! The URL is how every other backend is chosen too (`--log kafka://host:9092`), so everything an
//! operator may need to set goes in it: credentials in the userinfo, the rest in the query
//! string. Anything else in the URL is refused with a message that says what is wrong, rather
//! than ignored: a misspelt parameter would otherwise silently run with the default. Messages
//! never repeat the password.
//!
//! Security follows the URL: credentials turn on SASL, `tls=true` or `ca=FILE` turns on TLS, so
//! `kafka://app:secret@k1:9093?ca=/etc/kafka/ca.pem` speaks SASL_SSL with SCRAM-SHA-512.

use std::time::Duration;

use rdkafka::ClientConfig;
use switchboard_schemas::Topic;

use crate::log::LogError;
use crate::log::retention::Retention;
use crate::url::{Credentials, Tls, TlsParameters, redacted, split_credentials};

/// Kafka's own limit on topic names.
const MAX_TOPIC_NAME: usize = 249;

/// The query parameters [`KafkaConfig::from_url`] understands, for error messages.
const PARAMETERS: &str =
    "prefix, replication, partitions, delivery_timeout_ms, fetch_wait_ms, sasl, tls, ca";

/// How to reach Kafka and how the log's topics are laid out.
///
/// Written as a URL ([`KafkaConfig::from_url`]):
///
/// ```text
/// kafka://[user:password@]host:port[,host:port…][?name=value&…]
/// ```
///
/// | parameter | default | what it sets |
/// | --- | --- | --- |
/// | `prefix` | empty | put before every topic name |
/// | `replication` | 1 | replication factor of the topics this log creates |
/// | `partitions` | the node's configured count | partitions per topic |
/// | `delivery_timeout_ms` | 10000 | how long an append may take before it fails as unavailable |
/// | `fetch_wait_ms` | 10 | the most a reader at the tail adds to an append's latency |
/// | `sasl` | `SCRAM-SHA-512` | the SASL mechanism for the credentials: `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN` |
/// | `tls` | `false` | `true` speaks TLS, checking the brokers' certificates against the system's trust store |
/// | `ca` | none | a PEM file of the CA certificates the brokers' certificates must chain to; turns TLS on |
///
/// User and password are percent-decoded (`%40` for `@`, `%3A` for `:`, `%2F` for `/`), as is
/// the `ca` path. Brokers' certificates must name the host the URL (or the cluster's metadata)
/// gives for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port` pairs joined by `,` (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    /// Put before every topic name, so several deployments (or test runs) can share a cluster:
    /// prefix `prod_` gives `prod_users`, `prod_messages`, …
    pub prefix: String,
    /// Partitions per topic. Keys are placed with [`Topic::partition_for`] over this count, so it
    /// must match the topics in the cluster; [`KafkaLog::connect`](super::KafkaLog::connect)
    /// refuses topics with another count.
    pub partitions: u32,
    /// Replication factor of the topics this log creates.
    pub replication: i32,
    /// How long the producer keeps trying to deliver one record (librdkafka's
    /// `message.timeout.ms`) before the append fails as unavailable.
    pub delivery_timeout: Duration,
    /// How long a request to the cluster (metadata, end offsets, committed offsets, topic
    /// creation) may take before it fails as unavailable.
    pub request_timeout: Duration,
    /// How long the broker may hold a fetch open when there is nothing new (`fetch.wait.max.ms`):
    /// the worst added latency between an append and a reader at the tail seeing it.
    pub fetch_wait: Duration,
    /// Who the clients authenticate as, when the URL has credentials.
    pub sasl: Option<Sasl>,
    /// Whether the clients speak TLS, and which CA they trust.
    pub tls: Option<Tls>,
    /// What each topic keeps. When set (a node's log), topics are created with it and existing
    /// topics are changed to it; when not (a tool reading the log), missing topics get the
    /// default and existing ones are left as they are.
    pub retention: Option<Retention>,
    /// The clients' `client.id`: the name a node goes by among a group's members.
    pub member: String,
}

/// SASL authentication: a mechanism and the credentials it proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sasl {
    pub mechanism: SaslMechanism,
    pub credentials: Credentials,
}

/// The SASL mechanisms a `kafka://` URL may name. SCRAM never sends the password; PLAIN does, so
/// it belongs on TLS only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    ScramSha512,
    ScramSha256,
    Plain,
}

impl SaslMechanism {
    /// The name Kafka and librdkafka use (`sasl.mechanism`).
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }

    fn parse(name: &str) -> Option<SaslMechanism> {
        [SaslMechanism::ScramSha512, SaslMechanism::ScramSha256, SaslMechanism::Plain]
            .into_iter()
            .find(|mechanism| mechanism.name().eq_ignore_ascii_case(name))
    }
}

impl KafkaConfig {
    /// Parses `kafka://[user:password@]host:port[,host:port…][?name=value&…]` (see
    /// [`KafkaConfig`]).
    ///
    /// `partitions` is the node's configured default; a `partitions` query parameter overrides
    /// it.
    pub fn from_url(url: &str, partitions: u32) -> Result<KafkaConfig, LogError> {
        let bad =
            |why: String| LogError::Storage(format!("bad Kafka URL `{}`: {why}", redacted(url)));
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| bad("it must start with kafka://".into()))?;
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        if let Some((_, path)) = authority.split_once('/') {
            return Err(bad(format!(
                "it has a path (`/{path}`), but topics are named by the `prefix` parameter"
            )));
        }
        let (credentials, brokers) = split_credentials(authority).map_err(bad)?;
        if brokers.is_empty() {
            return Err(bad("it names no broker: use kafka://host:port".into()));
        }
        for broker in brokers.split(',') {
            check_broker(broker).map_err(bad)?;
        }

        let mut config = KafkaConfig {
            brokers: brokers.to_owned(),
            prefix: String::new(),
            partitions,
            replication: 1,
            delivery_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            fetch_wait: Duration::from_millis(10),
            sasl: None,
            tls: None,
            retention: None,
            member: "switchboard".to_owned(),
        };
        let mut mechanism = None;
        let mut tls = TlsParameters::default();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) =
                pair.split_once('=').ok_or_else(|| bad(format!("`{pair}` is not name=value")))?;
            let number = |min: u64, max: u64| {
                value.parse::<u64>().ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| {
                    bad(format!("{name} must be a whole number from {min} to {max}, not `{value}`"))
                })
            };
            match name {
                "prefix" => config.prefix = value.to_owned(),
                "replication" => config.replication = number(1, i16::MAX as u64)? as i32,
                "partitions" => config.partitions = number(1, i32::MAX as u64)? as u32,
                "delivery_timeout_ms" => {
                    config.delivery_timeout = Duration::from_millis(number(1, i32::MAX as u64)?)
                }
                "fetch_wait_ms" => config.fetch_wait = Duration::from_millis(number(0, 300_000)?),
                "sasl" => {
                    mechanism = Some(SaslMechanism::parse(value).ok_or_else(|| {
                        bad(format!(
                            "sasl must be SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN, not `{value}`"
                        ))
                    })?)
                }
                _ if tls.take(name, value).map_err(bad)? => {}
                _ => return Err(bad(format!("unknown parameter `{name}`; known: {PARAMETERS}"))),
            }
        }
        config.tls = tls.finish().map_err(bad)?;
        config.sasl = match (credentials, mechanism) {
            (Some(credentials), mechanism) => Some(Sasl {
                mechanism: mechanism.unwrap_or(SaslMechanism::ScramSha512),
                credentials,
            }),
            (None, Some(mechanism)) => {
                return Err(bad(format!(
                    "sasl={} needs credentials: kafka://user:password@host:port",
                    mechanism.name()
                )));
            }
            (None, None) => None,
        };
        if config.partitions == 0 || config.partitions > i32::MAX as u32 {
            return Err(bad(format!(
                "topics need 1 to {} partitions, not {}",
                i32::MAX,
                config.partitions
            )));
        }
        check_prefix(&config.prefix).map_err(bad)?;
        Ok(config)
    }

    /// The name of `topic` in the cluster.
    pub fn topic_name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.name())
    }

    /// What every client of this log shares: where the cluster is, how to authenticate to it,
    /// and that no client may create a topic by naming it (with the broker's default partition
    /// count and retention, where the broker allows that), since [`super::admin`] creates them
    /// as they must be.
    pub(super) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.member)
            .set("allow.auto.create.topics", "false");
        let protocol = match (&self.sasl, &self.tls) {
            (None, None) => "PLAINTEXT",
            (None, Some(_)) => "SSL",
            (Some(_), None) => "SASL_PLAINTEXT",
            (Some(_), Some(_)) => "SASL_SSL",
        };
        config.set("security.protocol", protocol);
        if let Some(Sasl { mechanism, credentials }) = &self.sasl {
            config
                .set("sasl.mechanism", mechanism.name())
                .set("sasl.username", &credentials.user)
                .set("sasl.password", &credentials.password);
        }
        if let Some(Tls { ca: Some(ca) }) = &self.tls {
            config.set("ssl.ca.location", ca.to_string_lossy());
        }
        config
    }
}

fn check_broker(broker: &str) -> Result<(), String> {
    let bad = || format!("`{broker}` is not host:port");
    let (host, port) = broker.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |port| port == 0) {
        return Err(bad());
    }
    Ok(())
}

/// Kafka allows only ASCII letters, digits, `.`, `_` and `-` in topic names.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if let Some(c) = prefix.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c))) {
        return Err(format!(
            "prefix `{prefix}` has `{c}`, but Kafka topic names allow only letters, digits, `.`, \
             `_` and `-`"
        ));
    }
    let longest = Topic::ALL.iter().map(|t| t.name().len()).max().unwrap_or(0);
    if prefix.len() + longest > MAX_TOPIC_NAME {
        return Err(format!(
            "prefix `{prefix}` is too long: topic names are at most {MAX_TOPIC_NAME} characters"
        ));
    }
    Ok(())
}

/// The cluster's names of the log's topics, and back.
pub(super) struct TopicNames {
    names: Vec<String>,
}

impl TopicNames {
    pub(super) fn new(config: &KafkaConfig) -> TopicNames {
        TopicNames { names: Topic::ALL.iter().map(|&topic| config.topic_name(topic)).collect() }
    }

    pub(super) fn name(&self, topic: Topic) -> &str {
        &self.names[topic as usize]
    }

    pub(super) fn topic(&self, name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|&topic| self.name(topic) == name)
    }
}
