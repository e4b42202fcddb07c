//! Users' feeds: for each user, the numbered sequence of the events pushed to them.
//!
//! The log orders events per partition, and a user's events come from many partitions, so no
//! log position says "everything this user has seen" in a few bytes. A feed does: the delivery
//! stage routes every event once and appends it to the feed of each recipient, where it gets the
//! next number of that user's sequence. A socket is pushed a user's entries in that order, and a
//! client that reconnects names the last number it processed: what it missed is a range read of
//! its own feed, whatever everyone else sent meanwhile.
//!
//! A feed keeps every entry for [`Retention::window`] and, older than that, its newest
//! [`Retention::min_events`]. Each feed has an *epoch*, fixed when it is created: a feed lost and
//! created afresh (its backend wiped) starts a new epoch, and a token of the old one is refused
//! rather than read against numbers that mean something else now.
//!
//! Appends are idempotent per log position: the feeds remember, per source partition, the next
//! offset they have taken, and skip anything older. The stage delivers each partition in order,
//! so a stage that restarts from an earlier offset (after a crash, or a partition moving to
//! another worker) adds nothing twice. Embedded appends are atomic, so one offset per partition
//! covers every feed; Redis appends go user by user, so each feed remembers its own.
//!
//! Events that are state rather than history (someone typing, someone coming online) are
//! [`Feeds::publish`]ed to the sockets connected now and kept nowhere.
//!
//! Two implementations: [`embedded`] (fjall on local disk, one process) and [`redis`] (Redis
//! streams and pub/sub, shared by every node); [`conformance`] holds both to the same behaviour.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_schemas::{Position, UserId};
use tokio::sync::mpsc;

pub mod conformance;
pub mod embedded;
pub mod redis;

/// Opens the feeds a URL names: `file://DIR` (this process only) or
/// `redis[s]://…` as presence takes it (see [`crate::redis_client::RedisConfig::from_url`]),
/// shared by every node using it.
pub async fn open(url: &str, retention: Retention) -> Result<Arc<dyn Feeds>, FeedError> {
    match url.split_once("://") {
        Some(("file", dir)) => {
            let dir = std::path::PathBuf::from(dir);
            let feeds =
                tokio::task::spawn_blocking(move || embedded::EmbeddedFeeds::open(&dir, retention))
                    .await
                    .map_err(|e| {
                        FeedError::Storage(format!("opening the embedded feeds: {e}"))
                    })??;
            Ok(Arc::new(feeds))
        }
        Some(("redis" | "rediss", _)) => {
            Ok(Arc::new(redis::RedisFeeds::connect(url, retention).await?))
        }
        _ => Err(FeedError::Storage(format!(
            "`{url}` names no feed backend: use file://DIR or redis://HOST:PORT"
        ))),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The backend cannot be reached right now; the caller may retry.
    #[error("feeds unavailable: {0}")]
    Unavailable(String),
    #[error("feeds: {0}")]
    Storage(String),
}

/// How much of each feed is kept: every entry younger than `window`, and the newest
/// `min_events` whatever their age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub window: Duration,
    pub min_events: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention { window: Duration::from_secs(24 * 3600), min_events: 10_000 }
    }
}

/// One routed event on its way into the feeds of its recipients.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Where the event is in the log.
    pub source: Position,
    pub recipients: Vec<UserId>,
    /// The pushed frame up to its token: a JSON object missing its closing brace, to which the
    /// socket appends `,"token":"…"}` (see [`Entry::frame`]).
    pub frame: Arc<str>,
}

/// Where a user's feed stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub epoch: u64,
    /// The number of the newest entry; 0 while there is none.
    pub seq: u64,
    /// When the newest entry was appended, ms since the Unix epoch; 0 while there is none.
    pub at: i64,
    /// The number of the oldest entry still kept (`seq + 1` while there is none).
    pub first: u64,
}

/// One entry of a feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// When it was appended, ms since the Unix epoch.
    pub at: i64,
    /// The pushed frame up to its token, as [`Delivery::frame`].
    pub frame: Arc<str>,
}

/// What a process that follows feeds hears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Published {
    /// An entry was appended to the feed of a followed user.
    Entry { user: UserId, epoch: u64, entry: Entry },
    /// A frame for a followed user's sockets that no feed keeps.
    Passing { user: UserId, frame: Arc<str> },
    /// The backend may have dropped what was published for a while (its connection broke), and
    /// hears again now: the follower should compare the heads of the feeds it follows with what
    /// it has.
    Interrupted,
}

/// How many published items may wait for the process that follows them. Beyond that, embedded
/// appends wait for it; a Redis subscription buffers in the process rather than lose them.
pub const PUBLISHED_CAPACITY: usize = 8192;

#[async_trait]
pub trait Feeds: Send + Sync + 'static {
    /// Appends each delivery to the feed of each of its recipients, in order, and publishes the
    /// new entries. A delivery the feeds already took this or a later offset of the source
    /// partition from is skipped. Either every delivery is appended or, on an error, the caller
    /// appends them all again (what did go in is then skipped).
    async fn append(&self, deliveries: &[Delivery]) -> Result<(), FeedError>;

    /// Publishes `frame` (up to its token, as [`Delivery::frame`]) to the followed sockets of
    /// `users`, keeping it nowhere.
    async fn publish(&self, users: &[UserId], frame: &str) -> Result<(), FeedError>;

    /// Where `user`'s feed stands, creating it (and its epoch) if it does not exist yet.
    async fn head(&self, user: UserId) -> Result<Head, FeedError>;

    /// Up to `limit` entries of `user`'s feed after number `after`, oldest first.
    async fn read(&self, user: UserId, after: u64, limit: usize) -> Result<Vec<Entry>, FeedError>;

    /// Starts hearing what is published for `user` on the channel [`Feeds::listen`] returned.
    async fn follow(&self, user: UserId) -> Result<(), FeedError>;

    /// Stops hearing what is published for `user`.
    async fn unfollow(&self, user: UserId) -> Result<(), FeedError>;

    /// The channel this process hears published entries on, for the users it follows. There is
    /// one per handle: a second call fails.
    async fn listen(&self) -> Result<mpsc::Receiver<Published>, FeedError>;
}

/// The field a feed keeps the next offset of a source partition under: `messages.3`.
fn source_key(source: &Position) -> String {
    format!("{}.{}", source.topic.name(), source.partition)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}
