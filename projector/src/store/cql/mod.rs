//! The read models in ScyllaDB or Apache Cassandra: the store for when switchboard outgrows one
//! machine. Everything here is CQL both engines run (no materialized views, secondary indexes,
//! SAI or engine-only options), spoken through the `scylla` driver.
//!
//! - `config` parses the store URL (`scylla://[user:password@]host:port/keyspace[?…]`);
//! - `session` opens a driver session as the URL says: contact points, login and TLS;
//! - `migrations` creates the keyspace and brings its tables (`migrations/*.cql`) up to date when
//!   a store connects;
//! - `statements` prepares every statement once; `rows` maps each table's rows to Rust and reads
//!   them;
//! - `fold` applies a batch of events: it splits the batch into lanes, holds the rules each
//!   event follows, and moves the checkpoint; `lane` reads, folds and writes one lane's rows;
//!   `carried` keeps the rows every send consults from one batch for the next;
//! - `query` answers reads;
//! - `error` sorts driver errors into "try again later" and the rest.
//!
//! # Tables
//!
//! | table | key | holds |
//! |---|---|---|
//! | `users` | user | the registered user |
//! | `handles` | lower-cased handle, user | every registration of a handle; the smallest id holds it |
//! | `conversations` | conversation | kind, title, creator (its `next_member` column is no longer used: join orders come from log offsets) |
//! | `members` | conversation, user | current members and their join order |
//! | `conversations_by_user` | user, conversation | the inbox index |
//! | `conversation_stats` | conversation | message count, last message, first and last bucket |
//! | `messages` | (conversation, bucket), message desc | the messages and their attachments |
//! | `client_msg_ids` | (conversation, sender, client_msg_id) | the message a send was stored as |
//! | `read_markers` | conversation, user | how far the user has read |
//! | `direct_pairs` | (user_low, user_high), conversation | direct conversations; the smallest is the pair's |
//! | `last_seen` | user | when the user's last session closed |
//! | `locations` | conversation, user | the last location the user shared with the conversation |
//! | `media` | media | an upload: conversation, uploader, type, size, name, object key |
//! | `checkpoints` | consumer, topic, partition | the next offset to read in each log partition |
//!
//! Every table but `checkpoints` and `schema_migrations` is in [`dump`](ReadModel::dump), one
//! line per row (`table column=value …`), sorted.
//!
//! As in the embedded store, what the conversations topic says (`conversations`, `members`) and
//! what the messages topic says (`conversation_stats`, `messages`) are kept apart, so either may
//! be folded before the other; so are the locations the presence topic brings, which queries
//! match to the current members when they read them.
//!
//! # Messages and buckets
//!
//! Messages are partitioned by conversation *and* time bucket, newest first within a partition,
//! the way Discord stores them: a busy conversation's history is spread over many partitions of
//! bounded size instead of one that grows forever, and the latest page is one partition read.
//! The bucket is ten days of the time inside the message id ([`timestamp_ms`]), so a message is
//! found from its id alone. A conversation's stats keep the lowest and highest bucket holding a
//! message; a page walks the buckets in between downwards from the one holding `before`, one
//! query per bucket, until it is full.

mod carried;
mod config;
mod dump;
mod error;
mod fold;
mod lane;
mod migrations;
mod query;
mod rows;
mod session;
mod statements;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_ingest::ids::timestamp_ms;
use switchboard_ingest::log::Cursor;
use switchboard_schemas::{CallId, ConversationId, MediaId, MessageId, UserId};
use tokio::sync::{Mutex, OwnedMutexGuard};

use self::carried::Carried;
pub use self::config::{CqlConfig, DEFAULT_PORT, Replication, UrlError};
use self::rows::Db;
pub use self::session::open as open_session;
use self::statements::Statements;
use crate::store::{
    Call, Conversation, InboxEntry, Location, Logged, Media, Message, ReadMarker, ReadModel,
    StoreError, User,
};

/// Ten days, in milliseconds: the time span of one message partition. Small enough that a busy
/// conversation's partition stays far below the sizes the engines handle well, large enough that
/// a page of a quiet one seldom needs more than a few partitions.
const BUCKET_MS: i64 = 10 * 24 * 60 * 60 * 1000;

/// Whose checkpoint the `checkpoints` table holds: the read models' (its partition key).
const CHECKPOINT_CONSUMER: &str = "read_models";

/// The bucket of a message: which ten days of id time it was created in.
fn bucket(message: i64) -> i32 {
    // Id times lie within about 70 years of 2025, a few thousand buckets either way of 0.
    timestamp_ms(message).div_euclid(BUCKET_MS) as i32
}

/// The read models in a ScyllaDB or Cassandra keyspace. Cheap to share behind an `Arc`; any
/// number of stores (in one process or many) may use one keyspace at once, as long as each
/// conversation's events are applied by one of them at a time, as the log's partitioning ensures.
pub struct CqlStore {
    db: Arc<Db>,
    /// Rows the last batch ended with, for the next one; held by a batch from start to end.
    carried: Arc<Mutex<Carried>>,
}

impl CqlStore {
    /// Connects to the cluster, creates or migrates the keyspace and prepares every statement.
    /// A cluster that cannot be reached is [`StoreError::Unavailable`].
    pub async fn connect(config: CqlConfig) -> Result<CqlStore, StoreError> {
        let session = session::open(&config).await?;
        // Another process migrating the same keyspace at this moment can replace a table after
        // this one has checked it (see `migrations::run`): migrating again heals that.
        let mut attempts = 0;
        let statements = loop {
            migrations::run(&session, &config).await?;
            match Statements::prepare(&session).await {
                Ok(statements) => break statements,
                Err(error) if attempts < SCHEMA_RACE_RETRIES => {
                    attempts += 1;
                    tracing::warn!(%error, "schema changed under the statements; migrating again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => return Err(error),
            }
        };
        Ok(CqlStore { db: Arc::new(Db { session, statements }), carried: Arc::default() })
    }
}

/// The carried rows while a batch is applied, told when the batch ends before it is whole (it
/// failed, or its task was stopped) that it may have landed in part.
struct Applying {
    carried: OwnedMutexGuard<Carried>,
    whole: bool,
}

impl Drop for Applying {
    fn drop(&mut self) {
        if !self.whole {
            self.carried.failed();
        }
    }
}

/// How often connecting migrates again when the statements do not fit the schema it found.
const SCHEMA_RACE_RETRIES: u32 = 5;

#[async_trait]
impl ReadModel for CqlStore {
    async fn checkpoint(&self) -> Result<Cursor, StoreError> {
        self.db.checkpoint(CHECKPOINT_CONSUMER).await
    }

    /// Applies the batch in a task of its own, which goes on to its end even when the caller
    /// stops waiting: a batch given up halfway would otherwise leave writes in flight that the
    /// next batch's reads could see only in part (a message's client id, say, without the stats
    /// that count it). The next batch waits for the carried rows, so for that end.
    async fn apply(&self, events: Vec<Logged>, checkpoint: &Cursor) -> Result<(), StoreError> {
        let carried = Arc::clone(&self.carried).lock_owned().await;
        let (db, checkpoint) = (Arc::clone(&self.db), checkpoint.clone());
        let batch = tokio::spawn(async move {
            let mut applying = Applying { carried, whole: false };
            fold::apply(&db, &events, &checkpoint, &mut applying.carried).await?;
            applying.whole = true;
            Ok(())
        });
        match batch.await {
            Ok(applied) => applied,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(StoreError::Unavailable("the runtime is shutting down".to_owned())),
        }
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        query::user(&self.db, id).await
    }

    async fn user_by_handle(&self, handle: &str) -> Result<Option<User>, StoreError> {
        query::user_by_handle(&self.db, handle).await
    }

    async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError> {
        query::conversation(&self.db, id).await
    }

    async fn is_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<bool, StoreError> {
        Ok(self.db.member(conversation.0, user.0).await?.is_some())
    }

    async fn direct_conversation(
        &self,
        a: UserId,
        b: UserId,
    ) -> Result<Option<ConversationId>, StoreError> {
        query::direct_conversation(&self.db, a, b).await
    }

    async fn inbox(&self, user: UserId) -> Result<Vec<InboxEntry>, StoreError> {
        query::inbox(&self.db, user).await
    }

    async fn messages(
        &self,
        conversation: ConversationId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        query::messages(&self.db, conversation, before, limit).await
    }

    async fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> Result<Option<Message>, StoreError> {
        query::message(&self.db, conversation, id).await
    }

    async fn message_by_client_id(
        &self,
        conversation: ConversationId,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<Message>, StoreError> {
        query::message_by_client_id(&self.db, conversation, sender, client_msg_id).await
    }

    async fn read_markers(
        &self,
        conversation: ConversationId,
    ) -> Result<Vec<ReadMarker>, StoreError> {
        query::read_markers(&self.db, conversation).await
    }

    async fn location(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<Location>, StoreError> {
        query::location(&self.db, conversation, user).await
    }

    async fn locations(&self, conversation: ConversationId) -> Result<Vec<Location>, StoreError> {
        query::locations(&self.db, conversation).await
    }

    async fn media(&self, id: MediaId) -> Result<Option<Media>, StoreError> {
        query::media(&self.db, id).await
    }

    async fn last_seen(&self, user: UserId) -> Result<Option<i64>, StoreError> {
        query::last_seen(&self.db, user).await
    }

    async fn call(&self, id: CallId) -> Result<Option<Call>, StoreError> {
        self.db.call(id.0).await
    }

    async fn call_history(
        &self,
        user: UserId,
        before: Option<CallId>,
        limit: usize,
    ) -> Result<Vec<Call>, StoreError> {
        query::call_history(&self.db, user, before, limit).await
    }

    async fn live_calls(&self, user: UserId) -> Result<Vec<Call>, StoreError> {
        self.db.calls(self.db.live_calls(user.0).await?).await
    }

    async fn live_rooms(&self, conversation: ConversationId) -> Result<Vec<Call>, StoreError> {
        self.db.calls(self.db.live_rooms(conversation.0).await?).await
    }

    async fn dump(&self) -> Result<String, StoreError> {
        dump::dump(&self.db).await
    }
}
