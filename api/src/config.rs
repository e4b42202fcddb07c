//! Configuration of `switchboard serve`: every option is a flag, a `SWITCHBOARD_*` environment
//! variable and a key of the TOML file given by `--config`, in that order of precedence, with
//! defaults taken from the capacity analysis this project answers.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use switchboard_ingest::log;
use switchboard_projector::feed::Retention;

use crate::calls::ice::{IceServers, IceUrls};
use crate::coordination::Quota;
use crate::media::{BlobUrl, MediaTypes};

#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What this node runs: `all` (API, fan-out and projector — the single-machine default),
    /// `api` (sockets and queries only), `projector` (folds the log into the read models, and
    /// serves only health and metrics) or `read-only` (queries of the store as it is, e.g. one
    /// `switchboard rebuild --until` made: no sockets, no writes, nothing projected). Separate
    /// roles need shared backends (not file://).
    #[arg(long, env = "SWITCHBOARD_ROLE", value_enum, default_value = "all")]
    pub role: Role,

    /// Address to listen on for HTTP and WebSocket.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory of the embedded log, the embedded store and the generated JWT secret.
    #[arg(long, env = "SWITCHBOARD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Event log: `file://DIR` for the embedded log [default: file://<data-dir>/log].
    #[arg(long, env = "SWITCHBOARD_LOG")]
    pub log: Option<String>,

    /// Read-model store: `file://DIR` for the embedded store [default: file://<data-dir>/store].
    #[arg(long, env = "SWITCHBOARD_STORE")]
    pub store: Option<String>,

    /// Presence, rate limits and idempotency claims: `memory://` keeps them in this process,
    /// `redis://[[user]:password@]host:port[/db][?prefix=P]` shares them between nodes
    /// (`rediss://` for TLS; `&ca=FILE` trusts the CA certificates in FILE).
    #[arg(long, env = "SWITCHBOARD_PRESENCE", default_value = "memory://")]
    pub presence: String,

    /// Users' feeds, which deliver every event in order and serve resumes: `file://DIR` keeps
    /// them in this process, `redis[s]://…` shares them between nodes [default: the presence URL
    /// when it is redis[s]://, else file://<data-dir>/feeds].
    #[arg(long, env = "SWITCHBOARD_FEEDS")]
    pub feeds: Option<String>,

    /// Partitions per topic, used when the log is created.
    #[arg(long, env = "SWITCHBOARD_PARTITIONS", default_value_t = 8)]
    pub partitions: u32,

    /// How long topics keep their records, as TOPIC=DURATION pairs joined by `,` (`forever`
    /// keeps a topic whole); topics not named keep the default. users and conversations are kept
    /// forever. What expires is gone from the log: a rebuild no longer sees it.
    #[arg(long, env = "SWITCHBOARD_LOG_RETENTION", default_value = "signals=1h,presence=7d")]
    pub log_retention: log::retention::Retention,

    /// This node's number (0–1023); nodes sharing a log need different ones, since it is part of
    /// every id they generate. A node holds a lease on its number in presence while it runs: a
    /// second node given the same number waits for that lease to run out, then refuses to start.
    #[arg(long, env = "SWITCHBOARD_NODE_ID", default_value_t = 0)]
    pub node_id: u16,

    /// Secret that signs access tokens, at least 32 bytes [default: generated once and kept in
    /// <data-dir>/jwt-secret].
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// How long an access token is valid.
    #[arg(long, env = "SWITCHBOARD_TOKEN_TTL", default_value = "24h")]
    pub token_ttl: Dur,

    /// Register and login requests per client IP, as COUNT/PERIOD or `off`.
    #[arg(long, env = "SWITCHBOARD_RATE_AUTH", default_value = "5/15m")]
    pub rate_auth: Rate,

    /// Messages sent per user.
    #[arg(long, env = "SWITCHBOARD_RATE_MESSAGES", default_value = "30/1m")]
    pub rate_messages: Rate,

    /// Other HTTP API requests per user (per IP before login).
    #[arg(long, env = "SWITCHBOARD_RATE_GENERAL", default_value = "100/15m")]
    pub rate_general: Rate,

    /// Strict operations per user: creating groups and changing their members or title.
    #[arg(long, env = "SWITCHBOARD_RATE_STRICT", default_value = "10/1h")]
    pub rate_strict: Rate,

    /// Live location shares and moves per user.
    #[arg(long, env = "SWITCHBOARD_RATE_LOCATIONS", default_value = "60/1m")]
    pub rate_locations: Rate,

    /// Message edits and deletes per user.
    #[arg(long, env = "SWITCHBOARD_RATE_EDITS", default_value = "30/1m")]
    pub rate_edits: Rate,

    /// Read receipts per user.
    #[arg(long, env = "SWITCHBOARD_RATE_RECEIPTS", default_value = "120/1m")]
    pub rate_receipts: Rate,

    /// WebSocket connections opened per user.
    #[arg(long, env = "SWITCHBOARD_RATE_SOCKETS", default_value = "20/1m")]
    pub rate_sockets: Rate,

    /// WebSocket connections opened per client IP.
    #[arg(long, env = "SWITCHBOARD_RATE_SOCKETS_IP", default_value = "300/1m")]
    pub rate_sockets_ip: Rate,

    /// Shortest time a location may be shared for.
    #[arg(long, env = "SWITCHBOARD_MIN_LOCATION_DURATION", default_value = "1m")]
    pub min_location_duration: Dur,

    /// Longest time a location may be shared for.
    #[arg(long, env = "SWITCHBOARD_MAX_LOCATION_DURATION", default_value = "8h")]
    pub max_location_duration: Dur,

    /// Longest time an HTTP request may take.
    #[arg(long, env = "SWITCHBOARD_REQUEST_TIMEOUT", default_value = "30s")]
    pub request_timeout: Dur,

    /// Largest JSON request body, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Where uploaded files are kept: `file://DIR`, or `s3://BUCKET[?endpoint=URL&region=NAME]`
    /// for an S3-compatible store (credentials from the usual AWS_* environment variables).
    /// Several API nodes must share one: S3, or a directory on a shared filesystem
    /// [default: file://<data-dir>/media].
    #[arg(long, env = "SWITCHBOARD_MEDIA_STORE")]
    pub media_store: Option<String>,

    /// Largest upload, in bytes (500 MiB).
    #[arg(long, env = "SWITCHBOARD_MAX_UPLOAD_BYTES", default_value_t = 500 * 1024 * 1024)]
    pub max_upload_bytes: usize,

    /// Content types an upload may have: comma-separated `type/subtype` or `type/*`.
    #[arg(
        long,
        env = "SWITCHBOARD_UPLOAD_TYPES",
        default_value = "image/*,video/*,audio/*,application/pdf,text/plain,application/octet-stream"
    )]
    pub upload_types: MediaTypes,

    /// An upload that sends nothing for this long is abandoned. Uploads are not bound by
    /// `request_timeout`: a large file on a slow link takes as long as it takes.
    #[arg(long, env = "SWITCHBOARD_UPLOAD_IDLE_TIMEOUT", default_value = "30s")]
    pub upload_idle_timeout: Dur,

    /// Largest WebSocket frame a client may send, in bytes; larger ones get a `frame_too_large`
    /// error (and past 64 times this, the connection is closed with code 1009).
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Longest message body, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024)]
    pub max_message_bytes: usize,

    /// Most members of a group conversation.
    #[arg(long, env = "SWITCHBOARD_MAX_GROUP_MEMBERS", default_value_t = 256)]
    pub max_group_members: usize,

    /// How long a call rings before it counts as missed.
    #[arg(long, env = "SWITCHBOARD_RING_TIMEOUT", default_value = "30s")]
    pub ring_timeout: Dur,

    /// A call participant whose last socket has been gone this long leaves the call (a 1:1 call
    /// ends).
    #[arg(long, env = "SWITCHBOARD_CALL_GRACE", default_value = "20s")]
    pub call_grace: Dur,

    /// Most participants of a group call room.
    #[arg(long, env = "SWITCHBOARD_MAX_ROOM_PARTICIPANTS", default_value_t = 16)]
    pub max_room_participants: usize,

    /// STUN servers call participants are given: comma-separated `stun:`/`stuns:` URLs.
    #[arg(long, env = "SWITCHBOARD_STUN_URLS", default_value = "")]
    pub stun_urls: IceUrls,

    /// TURN servers call participants are given, with credentials of their own that run out:
    /// comma-separated `turn:`/`turns:` URLs. Needs `turn_secret`.
    #[arg(long, env = "SWITCHBOARD_TURN_URLS", default_value = "")]
    pub turn_urls: IceUrls,

    /// The secret shared with the TURN servers, from which participants' credentials are made
    /// (coturn's `static-auth-secret`, with `use-auth-secret`).
    #[arg(long, env = "SWITCHBOARD_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,

    /// How long the TURN credentials given to a call participant stay valid.
    #[arg(long, env = "SWITCHBOARD_TURN_TTL", default_value = "24h")]
    pub turn_ttl: Dur,

    /// WebRTC signals (offers, answers, ICE candidates) per user.
    #[arg(long, env = "SWITCHBOARD_RATE_SIGNALS", default_value = "600/1m")]
    pub rate_signals: Rate,

    /// Most WebSocket connections this node holds at once.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Most sockets one user may hold open on this node at once.
    #[arg(long, env = "SWITCHBOARD_MAX_SOCKETS_PER_USER", default_value_t = 10)]
    pub max_sockets_per_user: usize,

    /// How often the server pings each socket.
    #[arg(long, env = "SWITCHBOARD_PING_INTERVAL", default_value = "25s")]
    pub ping_interval: Dur,

    /// A socket silent for this long is dropped.
    #[arg(long, env = "SWITCHBOARD_IDLE_TIMEOUT", default_value = "60s")]
    pub idle_timeout: Dur,

    /// How long a query with a consistency token waits for the read models to reach it.
    #[arg(long, env = "SWITCHBOARD_CONSISTENCY_TIMEOUT", default_value = "5s")]
    pub consistency_timeout: Dur,

    /// How long each user's feed keeps every event pushed to them: a client that reconnects
    /// within it resumes with exactly what it missed.
    #[arg(long, env = "SWITCHBOARD_RESUME_WINDOW", default_value = "24h")]
    pub resume_window: Dur,

    /// How many of each user's newest events their feed keeps beyond `resume_window`.
    #[arg(long, env = "SWITCHBOARD_RESUME_MIN_EVENTS", default_value_t = 10_000)]
    pub resume_min_events: u64,

    /// On shutdown, how long open requests may take to finish.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE", default_value = "10s")]
    pub shutdown_grace: Dur,
}

/// The `serve` flags alone, for [`Config::from_args`].
#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// The configuration `args` (the `serve` flags, without the program name) give, with
    /// environment variables and defaults for the rest, checked: for starting a node from code.
    pub fn from_args<I>(args: I) -> anyhow::Result<Config>
    where
        I: IntoIterator,
        I::Item: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let args = std::iter::once("switchboard".into()).chain(args.into_iter().map(Into::into));
        let matches = Flags::command().try_get_matches_from(args)?;
        Flags::from_arg_matches(&matches)?.config.layered(&matches, None)
    }

    /// Fills in what the TOML file at `path` sets, for every option not given as a flag or an
    /// environment variable, then checks the result.
    pub fn layered(
        self,
        matches: &clap::ArgMatches,
        path: Option<&Path>,
    ) -> anyhow::Result<Config> {
        let config = match path {
            None => self,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                let file: toml::Table = toml::from_str(&text)
                    .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
                let mut merged = serde_json::to_value(&self)?;
                let fields = merged.as_object_mut().expect("config serialises to an object");
                for (key, value) in file {
                    if !fields.contains_key(&key) {
                        let known: Vec<_> = fields.keys().map(String::as_str).collect();
                        bail!(
                            "config file {}: unknown setting `{key}`; known settings: {}",
                            path.display(),
                            known.join(", ")
                        );
                    }
                    let given = matches!(
                        matches.value_source(&key),
                        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                    );
                    if !given {
                        fields.insert(key, serde_json::to_value(value)?);
                    }
                }
                serde_json::from_value(merged)
                    .with_context(|| format!("config file {}", path.display()))?
            }
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.idle_timeout.0 <= self.ping_interval.0 {
            bail!(
                "idle_timeout ({}) must be longer than ping_interval ({}), or every socket would be dropped",
                self.idle_timeout,
                self.ping_interval
            );
        }
        if let Some(secret) = &self.jwt_secret
            && secret.len() < crate::auth::MIN_SECRET_BYTES
        {
            bail!(
                "jwt_secret is {} bytes long; it must be at least {} (e.g. `openssl rand -hex 32`)",
                secret.len(),
                crate::auth::MIN_SECRET_BYTES
            );
        }
        if self.node_id >= 1024 {
            bail!("node_id must be below 1024, not {}", self.node_id);
        }
        if self.partitions == 0 {
            bail!("partitions must be at least 1");
        }
        if self.max_message_bytes > switchboard_schemas::MAX_FIELD_LENGTH {
            bail!(
                "max_message_bytes ({}) must be at most {}, the longest field an event may hold",
                self.max_message_bytes,
                switchboard_schemas::MAX_FIELD_LENGTH
            );
        }
        if self.max_message_bytes > self.max_frame_bytes {
            bail!(
                "max_message_bytes ({}) must fit in max_frame_bytes ({})",
                self.max_message_bytes,
                self.max_frame_bytes
            );
        }
        if matches!(self.role, Role::Api | Role::Projector)
            && (self.log_url().starts_with("file://") || self.store_url().starts_with("file://"))
        {
            bail!(
                "role `{}` shares the log and store with other nodes, so it needs shared backends \
                 (--log kafka://…, --store scylla://…), not the embedded ones of one process",
                self.role
            );
        }
        if self.max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        if self.max_sockets_per_user == 0 {
            bail!("max_sockets_per_user must be at least 1");
        }
        // Shares are asked for in whole seconds.
        if self.min_location_duration.0 < Duration::from_secs(1) {
            bail!("min_location_duration must be at least 1s, not {}", self.min_location_duration);
        }
        if self.min_location_duration.0 > self.max_location_duration.0 {
            bail!(
                "min_location_duration ({}) must not be longer than max_location_duration ({})",
                self.min_location_duration,
                self.max_location_duration
            );
        }
        if let Err(problem) = BlobUrl::parse(&self.media_store_url()) {
            bail!("media_store: {problem}");
        }
        if self.upload_idle_timeout.0.is_zero() {
            bail!("upload_idle_timeout must be longer than 0s");
        }
        if let Some(url) = self.stun_urls.not_of(&["stun", "stuns"]) {
            bail!("stun_urls: `{url}` is not a stun: or stuns: URL");
        }
        if let Some(url) = self.turn_urls.not_of(&["turn", "turns"]) {
            bail!("turn_urls: `{url}` is not a turn: or turns: URL");
        }
        if self.turn_urls.0.is_empty() != self.turn_secret.is_none() {
            bail!(
                "turn_urls and turn_secret go together: TURN credentials are made with the secret"
            );
        }
        if self.turn_ttl.0 < Duration::from_secs(1) {
            bail!("turn_ttl must be at least 1s, not {}", self.turn_ttl);
        }
        Ok(())
    }

    /// The ICE servers call participants are given.
    pub fn ice_servers(&self) -> IceServers {
        IceServers {
            stun: self.stun_urls.clone(),
            turn: self.turn_urls.clone(),
            turn_secret: self.turn_secret.clone(),
            turn_ttl: self.turn_ttl.0,
        }
    }

    pub fn log_url(&self) -> String {
        self.log
            .clone()
            .unwrap_or_else(|| format!("file://{}", self.data_dir.join("log").display()))
    }

    pub fn store_url(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| format!("file://{}", self.data_dir.join("store").display()))
    }

    pub fn feeds_url(&self) -> String {
        match &self.feeds {
            Some(url) => url.clone(),
            None if self.presence.starts_with("redis") => self.presence.clone(),
            None => format!("file://{}", self.data_dir.join("feeds").display()),
        }
    }

    pub fn retention(&self) -> Retention {
        Retention { window: self.resume_window.0, min_events: self.resume_min_events }
    }

    pub fn media_store_url(&self) -> String {
        self.media_store
            .clone()
            .unwrap_or_else(|| format!("file://{}", self.data_dir.join("media").display()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    All,
    Api,
    Projector,
    ReadOnly,
}

impl Role {
    /// Answers the API's queries.
    pub fn serves_clients(self) -> bool {
        self != Role::Projector
    }

    /// Takes writes and sockets, so appends to the log.
    pub fn takes_writes(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }

    pub fn projects(self) -> bool {
        matches!(self, Role::All | Role::Projector)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::All => "all",
            Role::Api => "api",
            Role::Projector => "projector",
            Role::ReadOnly => "read-only",
        })
    }
}

/// A duration written the human way: `30s`, `15m`, `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(Dur).map_err(|e| format!("`{s}` is not a duration: {e}"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

/// A rate limit written as `COUNT/PERIOD` (`30/1m`), or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate(pub Option<Quota>);

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(Rate(None));
        }
        let bad = || format!("`{s}` is not a rate such as `30/1m` or `off`");
        let (count, period) = s.split_once('/').ok_or_else(bad)?;
        let limit: u32 = count.trim().parse().map_err(|_| bad())?;
        let period = humantime::parse_duration(period.trim()).map_err(|_| bad())?;
        if limit == 0 || period.is_zero() {
            return Err(bad());
        }
        Ok(Rate(Some(Quota { limit, period })))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("off"),
            Some(q) => write!(f, "{}/{}", q.limit, humantime::format_duration(q.period)),
        }
    }
}

/// These types travel through TOML and JSON in their text form.
macro_rules! serde_as_text {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_as_text!(Dur, Rate, MediaTypes, IceUrls);

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn load(args: &[&str], file: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("switchboard.toml");
        std::fs::write(&path, file)?;
        let matches = Flags::command()
            .try_get_matches_from(std::iter::once("switchboard").chain(args.iter().copied()))?;
        let flags = Flags::from_arg_matches(&matches)?;
        flags.config.layered(&matches, Some(&path))
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let config = load(
            &["--rate-messages", "60/1m"],
            "rate_messages = \"1/1s\"\nping_interval = \"10s\"\nlisten = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        assert_eq!(config.rate_messages.to_string(), "60/1m");
        assert_eq!(config.ping_interval.0, Duration::from_secs(10));
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.request_timeout.0, Duration::from_secs(30));
        assert_eq!(config.rate_auth.0, Some(Quota { limit: 5, period: Duration::from_secs(900) }));
        assert_eq!(config.max_upload_bytes, 524_288_000, "the seed's 500 MB, as Express counts");
        assert_eq!(
            config.media_store_url(),
            format!("file://{}", Path::new("./data/media").display())
        );
    }

    #[test]
    fn mistakes_are_explained() {
        let unknown = load(&[], "listen_port = 8080\n").unwrap_err().to_string();
        assert!(unknown.contains("unknown setting `listen_port`"), "{unknown}");
        let bad_rate = format!("{:#}", load(&[], "rate_auth = \"lots\"\n").unwrap_err());
        assert!(bad_rate.contains("is not a rate"), "{bad_rate}");
        let pings = load(&["--idle-timeout", "10s"], "").unwrap_err().to_string();
        assert!(pings.contains("must be longer than ping_interval"), "{pings}");
        let shares = load(&["--min-location-duration", "9h"], "").unwrap_err().to_string();
        assert!(shares.contains("must not be longer than max_location_duration"), "{shares}");
        let store = format!("{:#}", load(&["--media-store", "ftp://files"], "").unwrap_err());
        assert!(store.contains("media_store: `ftp://files` names no media store"), "{store}");
        let types = format!("{:#}", load(&[], "upload_types = \"images\"\n").unwrap_err());
        assert!(types.contains("`images` is not a content type"), "{types}");
        let turn =
            load(&["--turn-urls", "turn:turn.example.org:3478"], "").unwrap_err().to_string();
        assert!(turn.contains("turn_urls and turn_secret go together"), "{turn}");
        let stun =
            load(&[], "stun_urls = \"turn:turn.example.org:3478\"\n").unwrap_err().to_string();
        assert!(stun.contains("stun_urls: `turn:turn.example.org:3478` is not a stun:"), "{stun}");
        assert!("0/1m".parse::<Rate>().is_err());
        assert_eq!("off".parse::<Rate>().unwrap(), Rate(None));
    }
}
