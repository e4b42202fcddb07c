//! Presence in Redis: the backend that lets many API nodes share who is online.
//!
//! Every node talks to one Redis (a primary, with or without replicas) or one Redis Cluster. Each
//! call is one round trip, one Lua script, so the edges `open_session`/`close_session` report hold
//! however many nodes call at once.
//!
//! # Keys
//!
//! Every key starts with the URL's prefix `P` (default
//! [`DEFAULT_PREFIX`](crate::redis_client::config::DEFAULT_PREFIX)) in braces, a Redis hash tag:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{P}lease:NODE` | string, TTL = the lease | exists while NODE's lease is live |
//! | `{P}user:USER:sessions` | hash | session id → the node holding it |
//! | `{P}node:NODE:sessions` | set | the node's session registry: `USER:SESSION` members |
//! | `{P}nodes` | set | nodes that held sessions or leases; where lapsed nodes are swept from |
//!
//! The keys are spelled out only in `scripts/sessions.lua`, the prelude every script shares. The
//! scripts reach keys they find while running (the nodes a user's sessions are on, a lapsed
//! node's registry), which no caller could name beforehand. The hash tag puts every presence key
//! of a deployment in one slot, so on a Redis Cluster they are all on the node that runs the
//! script, which each script is routed to by the one key it names, `{P}nodes`. Presence is light
//! (a call per connect, disconnect and status query, a renewal per node every few seconds), so one
//! slot carries it; the per-message traffic, rate limits and claims, spreads over the cluster.
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
//! Calls go through a [`RedisClient`] with short timeouts and an overall guard, and fail with
//! [`PresenceError::Unavailable`] instead of waiting, so that
//! messaging carries on without presence. The manager reconnects by itself on the next call once
//! Redis answers again. [`RedisPresence::connect`] does not need Redis either: it only parses the
//! URL, then tries once to take the node's first lease, and starts degraded if that fails.

#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use redis::{FromRedisValue, Script, ScriptInvocation};
use switchboard_schemas::UserId;

use super::memory::DEFAULT_LEASE;
use super::{Presence, PresenceError, Status};
use crate::redis_client::{RedisClient, RedisConfig, RedisFailure, Request, millis};

/// How many known nodes each lease renewal checks for a lapsed lease.
const SWEEP_NODES: u32 = 3;

/// How many sessions of one lapsed node a renewal forgets at most, which bounds the time the
/// script holds Redis. Nodes renew every few seconds, so even a large dead node is gone quickly.
const SWEEP_BATCH: u32 = 500;

/// Presence shared through Redis. See the module docs.
pub struct RedisPresence {
    redis: RedisClient,
    /// The prefix in braces: what every key starts with.
    tag: String,
    /// The node this process runs; see [`RedisPresence::connect`].
    node_id: String,
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
        let presence = RedisPresence {
            redis: RedisClient::new(&config)?,
            tag: format!("{{{}}}", config.prefix),
            node_id: node_id.to_owned(),
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
        let mut invocation = script.key(format!("{}nodes", self.tag));
        invocation.arg(&self.tag);
        invocation
    }

    async fn run<T: FromRedisValue + Send>(
        &self,
        what: &str,
        request: &impl Request,
    ) -> Result<T, PresenceError> {
        Ok(self.redis.run(what, request).await?)
    }
}

impl From<RedisFailure> for PresenceError {
    fn from(RedisFailure(reason): RedisFailure) -> PresenceError {
        PresenceError::Unavailable(reason)
    }
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
}
