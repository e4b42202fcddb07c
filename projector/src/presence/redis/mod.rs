//! Presence, rate limits and claims in Redis: the backend that lets many API nodes share them.
//!
//! Every node talks to one Redis (a primary, with or without replicas; not Redis Cluster, because
//! the session scripts reach keys they discover while running). Redis 7.0 or newer is needed for
//! `SET … NX GET`. Each call is one round trip: one command, or one Lua script where several keys
//! must change together, so the edges `open_session`/`close_session` report and the rate limits
//! hold however many nodes call at once.
//!
//! # Keys
//!
//! Every key starts with the URL's prefix, `{P}` below (default
//! [`DEFAULT_PREFIX`](config::DEFAULT_PREFIX)):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{P}lease:NODE` | string, TTL = the lease | exists while NODE's lease is live |
//! | `{P}user:USER:sessions` | hash | session id → the node holding it |
//! | `{P}node:NODE:sessions` | set | the node's session registry: `USER:SESSION` members |
//! | `{P}nodes` | set | nodes that held sessions or leases; where lapsed nodes are swept from |
//! | `{P}rate:KEY` | string, TTL until it no longer matters | GCRA theoretical arrival time, µs |
//! | `{P}claim:KEY` | string, TTL = the claim's | the claim's value |
//!
//! The session, lease and registry keys are spelled out only in `scripts/sessions.lua`, the
//! prelude every session script shares; rate and claim keys only here.
//!
//! # Leases and clean-up
//!
//! A user is online while one of their sessions is on a node whose lease key exists, so when a
//! node dies its users go offline within its lease, with nothing to run. Entries left on lapsed
//! nodes are removed lazily: whenever a script reads a user's sessions it forgets those, and every
//! [`Presence::renew_lease`] sweeps a bounded batch from a few lapsed nodes' registries, so a dead
//! node's keys disappear even for users nobody asks about. Unlike the in-process backend, a
//! session opened on a node that holds no lease is therefore forgotten rather than kept in case
//! the node takes one later.
//!
//! # When Redis is down
//!
//! Calls go through a reconnecting [`ConnectionManager`] with short timeouts (see [`config`]) and
//! an overall guard, and fail with [`PresenceError::Unavailable`] instead of waiting, so that
//! messaging carries on without presence. The manager reconnects by itself on the next call once
//! Redis answers again. [`RedisPresence::connect`] does not need Redis either: it only parses the
//! URL, then tries once to take the node's first lease, and starts degraded if that fails.

pub mod config;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, RedisResult, Script, ScriptInvocation};
use switchboard_schemas::UserId;

pub use self::config::RedisConfig;
use super::memory::DEFAULT_LEASE;
use super::{Presence, PresenceError, Quota, RateDecision, Status};

/// How many known nodes each lease renewal checks for a lapsed lease.
const SWEEP_NODES: u32 = 3;

/// How many sessions of one lapsed node a renewal forgets at most, which bounds the time the
/// script holds Redis. Nodes renew every few seconds, so even a large dead node is gone quickly.
const SWEEP_BATCH: u32 = 500;

/// Presence shared through Redis. See the module docs.
pub struct RedisPresence {
    redis: ConnectionManager,
    /// Where Redis is, for error messages (the URL may hold a password; this never does).
    address: String,
    prefix: String,
    /// The node this process runs; see [`RedisPresence::connect`].
    node_id: String,
    call_timeout: Duration,
    scripts: Scripts,
}

/// The Lua scripts, loaded into Redis on first use (and again after Redis restarts, which the
/// redis crate notices from `NOSCRIPT`).
struct Scripts {
    open_session: Script,
    close_session: Script,
    status: Script,
    renew_lease: Script,
    node_sessions: Script,
    check_rate: Script,
    replace_claim: Script,
}

/// A script that works on sessions: the shared prelude, then the script's own body.
macro_rules! session_script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("scripts/sessions.lua"),
            include_str!(concat!("scripts/", $file))
        ))
    };
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            open_session: session_script!("open_session.lua"),
            close_session: session_script!("close_session.lua"),
            status: session_script!("status.lua"),
            renew_lease: session_script!("renew_lease.lua"),
            node_sessions: session_script!("node_sessions.lua"),
            check_rate: Script::new(include_str!("scripts/check_rate.lua")),
            replace_claim: Script::new(include_str!("scripts/replace_claim.lua")),
        }
    }
}

impl RedisPresence {
    /// Presence in the Redis at `url` (`redis://host:port[/db][?prefix=P]`) for the node
    /// `node_id`, whose lease starts out live for [`DEFAULT_LEASE`] as with the in-process
    /// backend. Fails only for a URL that cannot be used.
    ///
    /// Redis need not be up: the node then starts degraded (every call fails with
    /// [`PresenceError::Unavailable`] until Redis answers) and takes its lease with the first
    /// [`Presence::renew_lease`] or [`Presence::open_session`] on its own node that gets through.
    /// A node that cannot start without presence can check with a call of its own.
    pub async fn connect(url: &str, node_id: &str) -> Result<RedisPresence, PresenceError> {
        RedisPresence::with_config(RedisConfig::from_url(url)?, node_id).await
    }

    /// [`RedisPresence::connect`] with a configuration built by the caller, e.g. other timeouts.
    pub async fn with_config(
        config: RedisConfig,
        node_id: &str,
    ) -> Result<RedisPresence, PresenceError> {
        let call_timeout = config.call_timeout();
        let address = config.connection.addr().to_string();
        let unusable = |error: redis::RedisError| {
            PresenceError::Unavailable(format!(
                "cannot set up a client for Redis at {address}: {error}"
            ))
        };
        let client = config.client(config.connection.clone()).map_err(unusable)?;
        // No retries inside the manager: a reconnection with back-off would hold every call that
        // waits on it for the whole back-off. The next call after a failure starts a new attempt.
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connection_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(0);
        let redis = ConnectionManager::new_lazy_with_config(client, manager).map_err(unusable)?;
        let presence = RedisPresence {
            redis,
            address,
            prefix: config.prefix,
            node_id: node_id.to_owned(),
            call_timeout,
            scripts: Scripts::new(),
        };
        if let Err(error) = presence.renew_lease(node_id, DEFAULT_LEASE).await {
            tracing::warn!(%error, node_id, "Redis presence unavailable at start-up; running degraded");
        }
        Ok(presence)
    }

    /// The sessions in `node_id`'s registry: every session it holds, or held when its lease
    /// lapsed and has not been swept yet.
    pub async fn node_sessions(
        &self,
        node_id: &str,
    ) -> Result<Vec<(UserId, String)>, PresenceError> {
        let mut script = self.session_script(&self.scripts.node_sessions);
        script.arg(node_id);
        let sessions: Vec<(i64, String)> =
            self.run(&format!("listing the sessions of node {node_id}"), &script).await?;
        Ok(sessions.into_iter().map(|(user, session)| (UserId(user), session)).collect())
    }

    fn session_script<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        script.arg(&self.prefix)
    }

    /// Sends `request`, giving up after the call timeout; `what` says what the call was for.
    async fn run<T: FromRedisValue + Send>(
        &self,
        what: &str,
        request: &impl Request,
    ) -> Result<T, PresenceError> {
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
            Ok(Err(error)) => Err(PresenceError::Unavailable(format!(
                "{what}: Redis at {}: {error}",
                self.address
            ))),
            Err(_) => Err(PresenceError::Unavailable(format!(
                "{what}: Redis at {} did not answer within {:?}",
                self.address, self.call_timeout
            ))),
        }
    }

    fn key(&self, kind: &str, key: &str) -> String {
        format!("{}{kind}:{key}", self.prefix)
    }
}

/// One request to Redis, a command or a script invocation, so that [`RedisPresence::run`] can
/// send either and, when it is safe, send it again.
trait Request: Sync {
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
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl Presence for RedisPresence {
    async fn open_session(
        &self,
        user: UserId,
        session_id: &str,
        node_id: &str,
    ) -> Result<bool, PresenceError> {
        let own_lease = if node_id == self.node_id { millis(DEFAULT_LEASE) } else { 0 };
        let mut script = self.session_script(&self.scripts.open_session);
        script.arg(user.0).arg(session_id).arg(node_id).arg(own_lease);
        self.run(&format!("opening session {session_id} of user {user} on node {node_id}"), &script)
            .await
    }

    async fn close_session(&self, user: UserId, session_id: &str) -> Result<bool, PresenceError> {
        let mut script = self.session_script(&self.scripts.close_session);
        script.arg(user.0).arg(session_id);
        self.run(&format!("closing session {session_id} of user {user}"), &script).await
    }

    async fn status(&self, users: &[UserId]) -> Result<Vec<Status>, PresenceError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut script = self.session_script(&self.scripts.status);
        for user in users {
            script.arg(user.0);
        }
        let online: Vec<bool> =
            self.run(&format!("reading the status of {} users", users.len()), &script).await?;
        if online.len() != users.len() {
            return Err(PresenceError::Unavailable(format!(
                "reading the status of {} users: Redis answered for {}",
                users.len(),
                online.len()
            )));
        }
        Ok(users.iter().zip(online).map(|(&user_id, online)| Status { user_id, online }).collect())
    }

    async fn renew_lease(&self, node_id: &str, lease: Duration) -> Result<(), PresenceError> {
        let mut script = self.session_script(&self.scripts.renew_lease);
        script.arg(node_id).arg(millis(lease)).arg(SWEEP_NODES).arg(SWEEP_BATCH);
        self.run(&format!("renewing the lease of node {node_id}"), &script).await
    }

    /// GCRA as in the in-process backend (burst = limit, a zero quota allows nothing), computed
    /// by `scripts/check_rate.lua` on Redis's clock, in microseconds.
    async fn check_rate(&self, key: &str, quota: Quota) -> Result<RateDecision, PresenceError> {
        if quota.limit == 0 {
            return Ok(RateDecision::Limited { retry_after: quota.period });
        }
        let in_micros =
            |duration: Duration| u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        // An interval below a microsecond would round to no spacing at all.
        let interval = in_micros(quota.period / quota.limit).max(1);
        let mut script = self.scripts.check_rate.key(self.key("rate", key));
        script.arg(interval).arg(in_micros(quota.period));
        let retry_after: u64 = self.run(&format!("checking rate limit {key}"), &script).await?;
        Ok(match retry_after {
            0 => RateDecision::Allowed,
            micros => RateDecision::Limited { retry_after: Duration::from_micros(micros) },
        })
    }

    async fn claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, PresenceError> {
        // NX with GET sets the key only when it is free and answers what was there, in one step.
        let mut set = redis::cmd("SET");
        set.arg(self.key("claim", key)).arg(value).arg("NX").arg("GET").arg("PX").arg(millis(ttl));
        self.run(&format!("claiming {key}"), &set).await
    }

    async fn update_claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let mut set = redis::cmd("SET");
        set.arg(self.key("claim", key)).arg(value).arg("PX").arg(millis(ttl));
        self.run(&format!("updating claim {key}"), &set).await
    }

    async fn replace_claim(
        &self,
        key: &str,
        seen: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, PresenceError> {
        let mut script = self.scripts.replace_claim.key(self.key("claim", key));
        script.arg(seen).arg(value).arg(millis(ttl));
        self.run(&format!("taking over claim {key}"), &script).await
    }

    async fn release_claims(&self, keys: &[&str]) -> Result<(), PresenceError> {
        if keys.is_empty() {
            return Ok(());
        }
        // One command however many: releasing is done in bulk as sends settle.
        let mut del = redis::cmd("DEL");
        for key in keys {
            del.arg(self.key("claim", key));
        }
        self.run(&format!("releasing {} claims", keys.len()), &del).await
    }
}
