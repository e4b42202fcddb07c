//! Feeds in Redis: streams hold the entries and pub/sub carries them to the nodes following their
//! users, so every node shares one numbering of each feed.
//!
//! Needs Redis 7.0 or newer (`XTRIM … MINID`, scripts that read the clock before writing, RESP3
//! for the subscriptions). Every call is one round trip, and each change to a feed is one Lua
//! script, so two nodes appending to the same feed at once still hand out each number once and
//! publish the entries in the order they were numbered.
//!
//! The client talks to one Redis (a primary, with or without replicas). The key layout is ready
//! for Redis Cluster, a feed's keys sharing one slot; a cluster client would also have to split
//! an append's script calls, which take many users' feeds at once, by slot, and would better use
//! sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`).
//!
//! # Keys
//!
//! Every key and channel starts with the URL's prefix, `P` below (default
//! [`DEFAULT_PREFIX`](crate::redis_client::config::DEFAULT_PREFIX)). The braces around the
//! user are part of the name: they make the user the Redis Cluster hash tag, so a feed's keys
//! share a slot and each script may touch both (they are passed to it as `KEYS`).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `Pfeed:{USER}:head` | hash | `epoch`; `seq`, the newest number; `at`, its append time (ms); `first` and `first_at`, the oldest number kept and its time; per source partition (`messages.3`), the next offset the feed takes from it |
//! | `Pfeed:{USER}` | stream | one entry per number, ID `SEQ-0`, fields `t` (append time, ms) and `f` (the frame) |
//! | `Pfeed:{USER}` | pub/sub channel | `EPOCH SEQ AT FRAME` for each entry appended; `0 0 0 FRAME` for each frame [`Feeds::publish`]ed (no epoch is 0) |
//!
//! A feed's stream and channel share a name, in separate namespaces of Redis. The keys are
//! spelled out here and built only by `feed_key` and `head_key`; the scripts get them as `KEYS`.
//! No key has a TTL: a feed is kept as long as Redis keeps it, and appends are only as durable as
//! Redis is. Redis should run with `maxmemory-policy noeviction`; should it drop a feed's keys all
//! the same, or lose them in a restart, the feed starts over with a new epoch (see
//! `scripts/feed.lua`), and tokens of the old one are refused.
//!
//! # Appending
//!
//! [`Feeds::append`] sends one pipeline: `SCRIPT LOAD` of `scripts/append.lua`, then `EVALSHA`s
//! of it, each taking the next `ENTRIES_PER_CALL` entries (one per delivery and recipient), in
//! order. For each entry, the script takes the offset (skipping what the feed took already),
//! numbers the entry with Redis's clock as its time, `XADD`s it, trims what retention no longer
//! keeps, at most `TRIM_BATCH` entries per entry appended, and publishes it on the user's channel.
//!
//! # Following
//!
//! Subscriptions live on a connection of their own, speaking RESP3 so that what is published
//! arrives as pushes on a connection that can still send commands. The redis crate resubscribes
//! it after a reconnection; a task of this handle then checks that the connection is back and
//! announces [`Published::Interrupted`], once the subscriptions are in place again, so that the
//! follower's comparison of heads catches everything published while they were away.
//!
//! [`Feeds::follow`] may come before [`Feeds::listen`]: it subscribes, and what is published
//! before `listen` is dropped.
//!
//! # When Redis is down
//!
//! As with the Redis presence, calls go through reconnecting [`ConnectionManager`]s and an overall
//! time limit (longer for an append, in proportion to its entries), and fail with
//! [`FeedError::Unavailable`] rather than wait; [`RedisFeeds::connect`] only parses the URL and
//! connects on first use. Data Redis holds but this module cannot read (a key of another type, a
//! frame that is not UTF-8) fails with [`FeedError::Storage`]. Errors name Redis by its address,
//! never by the URL, which may hold a password.

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    FromRedisValue, ProtocolVersion, PushInfo, PushKind, RedisError, RedisResult, RetryMethod,
    Script, Value,
};
use switchboard_schemas::UserId;
use tokio::sync::mpsc;

use super::{
    Delivery, Entry, FeedError, Feeds, Head, PUBLISHED_CAPACITY, Published, Retention, source_key,
};
use crate::redis_client::{RedisConfig, RedisFailure};

/// The most old entries one entry's append removes from its feed. Retention is thereby never late
/// by more than a few appends, and a feed that got far behind (the window was shortened) catches
/// up over several appends rather than holding Redis in one.
const TRIM_BATCH: u32 = 100;

/// How much longer than a single call an append may take for each entry it sends: Redis runs an
/// append script in some tens of microseconds, and a large append must not be cut short (and then
/// sent again whole) only because it is large.
const PER_ENTRY: Duration = Duration::from_micros(200);

/// The most entries one call of the append script takes: starting a script costs Redis about a
/// third of what appending an entry does (measured: 27 µs of its CPU per entry one by one, 19.5 in
/// calls of 16 or 64). Few enough that one call holds Redis for a millisecond or two.
const ENTRIES_PER_CALL: usize = 64;

/// The longest pause between checks that the subscription connection is back.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

const APPEND_SCRIPT: &str =
    concat!(include_str!("scripts/feed.lua"), include_str!("scripts/append.lua"));

/// Feeds shared through Redis. See the module docs.
pub struct RedisFeeds {
    /// Appends, heads, reads and publishing.
    redis: ConnectionManager,
    /// The subscriptions, on a RESP3 connection of their own.
    subscriber: ConnectionManager,
    /// Where Redis is, for error messages (the URL may hold a password; this never does).
    address: String,
    prefix: String,
    retention: Retention,
    call_timeout: Duration,
    scripts: Scripts,
    /// Where the relay task sends what is heard, once [`Feeds::listen`] was called.
    listener: Arc<Mutex<Option<mpsc::Sender<Published>>>>,
    relay: tokio::task::AbortHandle,
}

/// The Lua scripts. `head` is loaded into Redis on first use (and again after Redis restarts,
/// which the redis crate notices from `NOSCRIPT`); `append` goes with every append (see
/// `RedisFeeds::append` for why).
struct Scripts {
    append: Script,
    head: Script,
}

impl RedisFeeds {
    /// The feeds in the Redis at `url` (`redis://host:port[/db][?prefix=P]`), kept for
    /// `retention`. Fails only for a URL that cannot be used: Redis need not be up, and until it
    /// answers every call fails with [`FeedError::Unavailable`].
    pub async fn connect(url: &str, retention: Retention) -> Result<RedisFeeds, FeedError> {
        let config = RedisConfig::from_url(url).map_err(|RedisFailure(reason)| {
            FeedError::Storage(format!("cannot use the feeds URL: {reason}"))
        })?;
        RedisFeeds::with_config(config, retention).await
    }

    /// [`RedisFeeds::connect`] with a configuration built by the caller, e.g. other timeouts.
    pub async fn with_config(
        config: RedisConfig,
        retention: Retention,
    ) -> Result<RedisFeeds, FeedError> {
        // An append writes many users' feeds in one script, and the fan-out listens on one
        // subscription: both want one server.
        if config.is_cluster() {
            return Err(FeedError::Storage(
                "feeds need a single Redis, not a Redis Cluster: give --feeds a redis:// URL of                  its own, or file://DIR"
                    .to_owned(),
            ));
        }
        let call_timeout = config.call_timeout();
        let address = config.connection.addr().to_string();
        let unusable = |error: RedisError| {
            FeedError::Unavailable(format!(
                "cannot set up a client for Redis at {address}: {error}"
            ))
        };
        // No retries inside the managers: a reconnection with back-off would hold every call that
        // waits on it for the whole back-off. The next call after a failure starts a new attempt;
        // the relay task makes those attempts for the subscriptions.
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connection_timeout))
            .set_number_of_retries(0);
        // Without a response timeout of the client's own: an append's pipeline may take longer
        // than one command, and every call has a limit of ours (see `RedisFeeds::call`).
        let redis = ConnectionManager::new_lazy_with_config(
            config.client(config.connection.clone()).map_err(unusable)?,
            manager.clone().set_response_timeout(None),
        )
        .map_err(unusable)?;

        let resp3 = config.connection.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let (pushes, pushed) = mpsc::unbounded_channel();
        let subscriber = ConnectionManager::new_lazy_with_config(
            config.client(config.connection.clone().set_redis_settings(resp3)).map_err(unusable)?,
            manager
                .set_response_timeout(Some(config.response_timeout))
                .set_push_sender(pushes)
                .set_automatic_resubscription(),
        )
        .map_err(unusable)?;

        let listener = Arc::new(Mutex::new(None));
        let relay = Relay {
            prefix: config.prefix.clone(),
            subscriber: subscriber.clone(),
            call_timeout,
            listener: Arc::clone(&listener),
        };
        let relay = tokio::spawn(relay.run(pushed)).abort_handle();
        Ok(RedisFeeds {
            redis,
            subscriber,
            address,
            prefix: config.prefix,
            retention,
            call_timeout,
            scripts: Scripts {
                append: Script::new(APPEND_SCRIPT),
                head: Script::new(concat!(
                    include_str!("scripts/feed.lua"),
                    include_str!("scripts/head.lua")
                )),
            },
            listener,
            relay,
        })
    }

    /// Runs `attempt` within `limit`; `what` says what the call was for.
    async fn call<T, F>(
        &self,
        what: &str,
        limit: Duration,
        attempt: impl Fn() -> F,
    ) -> Result<T, FeedError>
    where
        F: Future<Output = RedisResult<T>>,
    {
        let attempts = async {
            match attempt().await {
                // The manager failed on a connection attempt made before this call and has just
                // started a new one. A refused connection means the request never left, so it is
                // safe to send again, and it then waits for the fresh attempt: the first call after
                // Redis comes back succeeds instead of reporting the outage that has ended.
                Err(error) if error.is_connection_refusal() => attempt().await,
                result => result,
            }
        };
        match tokio::time::timeout(limit, attempts).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                let message = format!("{what}: Redis at {}: {error}", self.address);
                Err(if is_transient(&error) {
                    FeedError::Unavailable(message)
                } else {
                    FeedError::Storage(message)
                })
            }
            Err(_) => Err(FeedError::Unavailable(format!(
                "{what}: Redis at {} did not answer within {limit:?}",
                self.address
            ))),
        }
    }

    /// Sends `command` on the command connection.
    async fn query<T: FromRedisValue + Send>(
        &self,
        what: &str,
        limit: Duration,
        command: &(impl Query + Sync),
    ) -> Result<T, FeedError> {
        self.call(what, limit, || {
            let mut redis = self.redis.clone();
            async move { command.query(&mut redis).await }
        })
        .await
    }
}

impl Drop for RedisFeeds {
    fn drop(&mut self) {
        // The relay task holds the subscription connection, which holds the sender of the pushes
        // the task waits for: left alone, the two would keep each other alive.
        self.relay.abort();
    }
}

/// A command or a pipeline, so that [`RedisFeeds::query`] can send either.
trait Query {
    fn query<T: FromRedisValue + Send>(
        &self,
        redis: &mut ConnectionManager,
    ) -> impl Future<Output = RedisResult<T>> + Send;
}

impl Query for redis::Cmd {
    fn query<T: FromRedisValue + Send>(
        &self,
        redis: &mut ConnectionManager,
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.query_async(redis)
    }
}

impl Query for redis::Pipeline {
    fn query<T: FromRedisValue + Send>(
        &self,
        redis: &mut ConnectionManager,
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.query_async(redis)
    }
}

/// Whether `error` says Redis could not be reached or asked to be retried, rather than that it
/// refused what it was sent.
fn is_transient(error: &RedisError) -> bool {
    error.is_io_error() || !matches!(error.retry_method(), RetryMethod::NoRetry)
}

/// The name of `user`'s stream, which is also the name of their channel.
fn feed_key(prefix: &str, user: UserId) -> String {
    format!("{prefix}feed:{{{user}}}")
}

fn head_key(feed_key: &str) -> String {
    format!("{feed_key}:head")
}

/// The user whose channel `channel` is.
fn channel_user(prefix: &str, channel: &str) -> Option<UserId> {
    let user = channel.strip_prefix(prefix)?.strip_prefix("feed:{")?.strip_suffix('}')?;
    user.parse().ok().map(UserId)
}

fn corrupt(what: &str) -> FeedError {
    FeedError::Storage(format!("a corrupt {what} in Redis"))
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

/// The elements of an array, or the keys and values of a map in turn (RESP3 may answer either).
fn items(value: Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        Value::Map(pairs) => Some(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        _ => None,
    }
}

/// One entry of an `XRANGE` answer: `[ID, [field, value, …]]`.
fn decode_entry(value: Value) -> Result<Entry, FeedError> {
    let corrupt = || corrupt("feed entry");
    let [id, fields]: [Value; 2] =
        items(value).and_then(|items| items.try_into().ok()).ok_or_else(corrupt)?;
    let seq = text(&id)
        .and_then(|id| id.strip_suffix("-0"))
        .and_then(|seq| seq.parse().ok())
        .ok_or_else(corrupt)?;
    let (mut at, mut frame) = (None, None);
    let fields = items(fields).ok_or_else(corrupt)?;
    for pair in fields.chunks_exact(2) {
        match text(&pair[0]) {
            Some("t") => at = text(&pair[1]).and_then(|at| at.parse().ok()),
            Some("f") => frame = text(&pair[1]).map(Arc::<str>::from),
            _ => {}
        }
    }
    Ok(Entry { seq, at: at.ok_or_else(corrupt)?, frame: frame.ok_or_else(corrupt)? })
}

/// The part of a handle that turns pushes from the subscription connection into [`Published`].
struct Relay {
    prefix: String,
    subscriber: ConnectionManager,
    call_timeout: Duration,
    listener: Arc<Mutex<Option<mpsc::Sender<Published>>>>,
}

impl Relay {
    async fn run(self, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
        while let Some(push) = pushes.recv().await {
            let published = match push.kind {
                PushKind::Message => match self.message(push.data) {
                    Some(published) => published,
                    None => {
                        tracing::warn!(prefix = %self.prefix, "unreadable feed message ignored");
                        continue;
                    }
                },
                PushKind::Disconnection => {
                    self.reconnected().await;
                    Published::Interrupted
                }
                // Subscription confirmations; `follow` and `unfollow` have their own.
                _ => continue,
            };
            let listener = self.listener.lock().unwrap_or_else(PoisonError::into_inner).clone();
            // Waits while the follower is behind, as the embedded feeds do. Nothing upstream can
            // be held up here, since publishers are other clients of Redis, so what waits is
            // buffered in this process; a follower that stops reading for good shows as its
            // memory.
            if let Some(listener) = listener {
                // A follower that went away hears nothing more.
                let _ = listener.send(published).await;
            }
        }
    }

    /// `[channel, message]` of a message push.
    fn message(&self, data: Vec<Value>) -> Option<Published> {
        let [channel, message]: [Value; 2] = data.try_into().ok()?;
        let user = channel_user(&self.prefix, text(&channel)?)?;
        let mut parts = text(&message)?.splitn(4, ' ');
        let mut number = || parts.next()?.parse::<u64>().ok();
        let (epoch, seq, at) = (number()?, number()?, number()?);
        let frame = Arc::from(parts.next()?);
        if epoch == 0 {
            return Some(Published::Passing { user, frame });
        }
        let at = i64::try_from(at).ok()?;
        Some(Published::Entry { user, epoch, entry: Entry { seq, at, frame } })
    }

    /// Waits until the subscription connection answers again. The crate has started reconnecting
    /// by the time the disconnection is reported, and a connection it makes answers only once it
    /// has resubscribed, so after this the channels are followed again. When Redis is not back,
    /// each attempt fails and the next one starts another reconnection.
    async fn reconnected(&self) {
        let mut delay = Duration::from_millis(50);
        loop {
            let mut subscriber = self.subscriber.clone();
            let ping = redis::cmd("PING");
            let answer = ping.query_async::<Value>(&mut subscriber);
            match tokio::time::timeout(self.call_timeout, answer).await {
                Ok(Ok(_)) => return,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "the feeds' subscription connection is still down");
                }
                Err(_) => tracing::debug!("the feeds' subscription connection does not answer"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        }
    }
}

#[async_trait]
impl Feeds for RedisFeeds {
    async fn append(&self, deliveries: &[Delivery]) -> Result<(), FeedError> {
        let window = u64::try_from(self.retention.window.as_millis()).unwrap_or(u64::MAX);
        let entries: Vec<(UserId, &Delivery)> = deliveries
            .iter()
            .flat_map(|delivery| delivery.recipients.iter().map(move |&user| (user, delivery)))
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        // Loading the script with every append rather than after a NOSCRIPT: a pipeline whose
        // first scripts fail with NOSCRIPT while another node loads the script would append its
        // later deliveries and skip the earlier ones, which a retry would then skip for good,
        // their offsets being below the ones taken. Redis only hashes the known script again.
        pipeline.cmd("SCRIPT").arg("LOAD").arg(APPEND_SCRIPT).ignore();
        for part in entries.chunks(ENTRIES_PER_CALL) {
            let call = pipeline.cmd("EVALSHA").arg(self.scripts.append.get_hash());
            call.arg(2 * part.len());
            for &(user, _) in part {
                let feed = feed_key(&self.prefix, user);
                call.arg(head_key(&feed)).arg(feed);
            }
            call.arg(window).arg(self.retention.min_events).arg(TRIM_BATCH);
            for (_, delivery) in part {
                let source = &delivery.source;
                call.arg(source_key(source)).arg(source.offset + 1).arg(delivery.frame.as_bytes());
            }
            call.ignore();
        }
        let entries = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        let limit = self.call_timeout + PER_ENTRY * entries;
        let what = format!("appending {entries} entries to feeds");
        self.query::<()>(&what, limit, &pipeline).await
    }

    async fn publish(&self, users: &[UserId], frame: &str) -> Result<(), FeedError> {
        if users.is_empty() {
            return Ok(());
        }
        let message = format!("0 0 0 {frame}");
        let mut pipeline = redis::pipe();
        for &user in users {
            pipeline.cmd("PUBLISH").arg(feed_key(&self.prefix, user)).arg(&message).ignore();
        }
        let what = format!("publishing to {} users", users.len());
        self.query::<()>(&what, self.call_timeout, &pipeline).await
    }

    async fn head(&self, user: UserId) -> Result<Head, FeedError> {
        let feed = feed_key(&self.prefix, user);
        let mut script = self.scripts.head.key(head_key(&feed));
        script.key(&feed);
        let fields: Vec<Option<String>> = self
            .call(&format!("reading the head of user {user}'s feed"), self.call_timeout, || {
                let mut redis = self.redis.clone();
                let script = &script;
                async move { script.invoke_async(&mut redis).await }
            })
            .await?;
        let corrupt = || corrupt("feed head");
        let field = |i: usize| fields.get(i).and_then(Option::as_deref).ok_or_else(corrupt);
        let number = |i: usize| field(i)?.parse::<u64>().map_err(|_| corrupt());
        Ok(Head {
            epoch: number(0)?,
            seq: number(1)?,
            at: field(2)?.parse().map_err(|_| corrupt())?,
            first: number(3)?,
        })
    }

    async fn read(&self, user: UserId, after: u64, limit: usize) -> Result<Vec<Entry>, FeedError> {
        let Some(from) = after.checked_add(1) else { return Ok(Vec::new()) };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut range = redis::cmd("XRANGE");
        range.arg(feed_key(&self.prefix, user)).arg(format!("{from}-0")).arg("+");
        range.arg("COUNT").arg(limit);
        let what = format!("reading user {user}'s feed");
        let answer: Value = self.query(&what, self.call_timeout, &range).await?;
        items(answer).ok_or_else(|| corrupt("feed"))?.into_iter().map(decode_entry).collect()
    }

    /// Returns once Redis confirmed the subscription, so whatever is published after is heard.
    async fn follow(&self, user: UserId) -> Result<(), FeedError> {
        let channel = feed_key(&self.prefix, user);
        self.call(&format!("following user {user}"), self.call_timeout, || {
            let mut subscriber = self.subscriber.clone();
            let channel = &channel;
            async move { subscriber.subscribe(channel).await }
        })
        .await
    }

    async fn unfollow(&self, user: UserId) -> Result<(), FeedError> {
        let channel = feed_key(&self.prefix, user);
        self.call(&format!("unfollowing user {user}"), self.call_timeout, || {
            let mut subscriber = self.subscriber.clone();
            let channel = &channel;
            async move { subscriber.unsubscribe(channel).await }
        })
        .await
    }

    async fn listen(&self) -> Result<mpsc::Receiver<Published>, FeedError> {
        let mut listener = self.listener.lock().unwrap_or_else(PoisonError::into_inner);
        if listener.is_some() {
            return Err(FeedError::Storage("these feeds are listened to already".to_owned()));
        }
        let (sender, receiver) = mpsc::channel(PUBLISHED_CAPACITY);
        *listener = Some(sender);
        Ok(receiver)
    }
}
