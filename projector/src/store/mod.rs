//! The read-model abstraction: what queries can ask, and how events get folded in.
//!
//! [`embedded`] keeps the read models in a local storage engine; a CQL implementation keeps them
//! in ScyllaDB/Cassandra. Both pass the suite in [`conformance`].

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use switchboard_ingest::log::Cursor;
use switchboard_schemas::{
    CallId, ConversationId, ConversationKind, Event, MediaId, MessageId, Position, UserId,
};

pub mod calls;
pub mod conformance;
pub mod cql;
pub(crate) mod dump;
pub mod embedded;
#[cfg(test)]
pub(crate) mod history;
mod key_filter;
pub(crate) mod rows;
pub mod rules;

pub use calls::{Call, CallKind, CallOutcome, CallState};

/// Opens the read-model store a URL names: `file://DIR` (the embedded store) or
/// `scylla://host:port[,…]/keyspace[?…]` (also `cassandra://`; see [`cql::CqlConfig::from_url`]).
pub async fn open(url: &str) -> Result<Arc<dyn ReadModel>, StoreError> {
    match url.split_once("://") {
        Some(("file", dir)) => {
            let dir = std::path::PathBuf::from(dir);
            let store = tokio::task::spawn_blocking(move || embedded::EmbeddedStore::open(&dir))
                .await
                .map_err(|e| StoreError::Storage(format!("opening the embedded store: {e}")))??;
            Ok(Arc::new(store))
        }
        Some(("scylla" | "cassandra", _)) => {
            let config =
                cql::CqlConfig::from_url(url).map_err(|e| StoreError::Storage(e.to_string()))?;
            Ok(Arc::new(cql::CqlStore::connect(config).await?))
        }
        _ => Err(StoreError::Storage(format!(
            "`{url}` names no store: use file://DIR or scylla://HOST:PORT/KEYSPACE"
        ))),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot answer right now; the caller may retry.
    #[error("read-model store unavailable: {0}")]
    Unavailable(String),
    #[error("read-model store: {0}")]
    Storage(String),
}

/// An event together with where it sits in the log.
#[derive(Clone, Debug)]
pub struct Logged {
    pub position: Position,
    pub event: Event,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct User {
    pub id: UserId,
    pub handle: String,
    pub display_name: String,
    pub created_at: i64,
    /// Only for checking a login; never serialised.
    #[serde(skip)]
    pub password_hash: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Conversation {
    pub id: ConversationId,
    pub kind: ConversationKind,
    pub title: Option<String>,
    pub created_by: Option<UserId>,
    pub created_at: i64,
    /// Current members, in the order they joined.
    pub members: Vec<UserId>,
    /// How many messages were ever sent to it (deleted ones included).
    pub message_count: u64,
    pub last_message: Option<Message>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Message {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub sender: UserId,
    pub client_msg_id: String,
    /// Empty once deleted.
    pub body: String,
    pub reply_to: Option<MessageId>,
    pub sent_at: i64,
    pub edited_at: Option<i64>,
    pub deleted: bool,
    /// 1 for the first message of the conversation, 2 for the next, …
    pub seq: u64,
    /// Uploads the message carries, in the order the sender gave them.
    pub attachments: Vec<MediaId>,
}

/// A file uploaded to a conversation, complete in the media store.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Media {
    pub id: MediaId,
    pub conversation_id: ConversationId,
    pub uploader: UserId,
    pub content_type: String,
    /// Length in bytes.
    pub size: u64,
    /// The name the uploader gave it, if any.
    pub name: Option<String>,
    pub created_at: i64,
    /// Where the file is in the media store: the server's business, never serialised.
    #[serde(skip)]
    pub object_key: String,
}

/// A conversation as one member sees it in their list.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InboxEntry {
    pub conversation: Conversation,
    /// Messages after the member's read marker. Sending a message moves the sender's marker.
    pub unread: u64,
}

/// How far one member has read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReadMarker {
    pub user_id: UserId,
    pub message_id: MessageId,
    pub at: i64,
}

/// The last position a user shared with a conversation.
///
/// Sharing ends when the user stops or when `expires_at` passes, whichever comes first; the
/// position stays as the last known one either way. Whether a share is live depends on the time
/// of asking, so the store keeps `stopped` and the expiry and leaves the judgement to
/// [`Location::live_at`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Location {
    pub user_id: UserId,
    pub latitude: f64,
    pub longitude: f64,
    /// Radius of uncertainty in metres, when the device reported one.
    pub accuracy_m: Option<f64>,
    /// When the position was reported.
    pub updated_at: i64,
    /// When sharing ends by itself.
    pub expires_at: i64,
    /// The user stopped sharing (or left the conversation) before `expires_at`.
    #[serde(skip)]
    pub stopped: bool,
}

impl Location {
    /// Whether the share is running at `now` (ms): neither stopped nor expired.
    pub fn live_at(&self, now: i64) -> bool {
        !self.stopped && now < self.expires_at
    }
}

/// The read models. Every query answers from what has been applied so far; a caller that needs
/// its own write reflected first waits on [`Progress`](crate::Progress).
#[async_trait]
pub trait ReadModel: Send + Sync + 'static {
    /// How far the read models have got: the log position after the last applied event.
    async fn checkpoint(&self) -> Result<Cursor, StoreError>;

    /// Folds `events` (in log order within each partition) into the read models and moves the
    /// checkpoint of each partition `checkpoint` names to the offset it names; other partitions
    /// (another projector's, in a consumer group) keep theirs. Applying an event a second time
    /// changes nothing. The store takes the batch, which the embedded one hands to its threads.
    async fn apply(&self, events: Vec<Logged>, checkpoint: &Cursor) -> Result<(), StoreError>;

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError>;
    async fn user_by_handle(&self, handle: &str) -> Result<Option<User>, StoreError>;

    async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError>;
    /// Whether `user` is a current member of `conversation`: one lookup, for the checks every
    /// send and receipt makes.
    async fn is_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<bool, StoreError>;
    /// The direct conversation between two users, if one exists.
    async fn direct_conversation(
        &self,
        a: UserId,
        b: UserId,
    ) -> Result<Option<ConversationId>, StoreError>;
    /// A user's conversations, most recently active first.
    async fn inbox(&self, user: UserId) -> Result<Vec<InboxEntry>, StoreError>;

    /// Messages of a conversation, newest first, strictly older than `before` when given.
    async fn messages(
        &self,
        conversation: ConversationId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;
    async fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> Result<Option<Message>, StoreError>;
    /// The message a sender already sent with this `client_msg_id`, if any.
    async fn message_by_client_id(
        &self,
        conversation: ConversationId,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<Message>, StoreError>;
    /// Every member's read marker in a conversation.
    async fn read_markers(
        &self,
        conversation: ConversationId,
    ) -> Result<Vec<ReadMarker>, StoreError>;

    /// The last location `user` shared with `conversation`, stopped or not, member or not.
    async fn location(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<Location>, StoreError>;
    /// The last location of every current member who has shared one with `conversation`, in
    /// join order. Former members are left out: what they shared is no longer the members'.
    async fn locations(&self, conversation: ConversationId) -> Result<Vec<Location>, StoreError>;
    /// An upload, whichever conversation it belongs to.
    async fn media(&self, id: MediaId) -> Result<Option<Media>, StoreError>;

    /// When the user's last session closed, if ever.
    async fn last_seen(&self, user: UserId) -> Result<Option<i64>, StoreError>;

    async fn call(&self, id: CallId) -> Result<Option<Call>, StoreError>;
    /// The calls a user was part of, newest first, strictly older than `before` when given.
    async fn call_history(
        &self,
        user: UserId,
        before: Option<CallId>,
        limit: usize,
    ) -> Result<Vec<Call>, StoreError>;
    /// The calls ringing or going on now that `user` is in (for a room: has joined).
    async fn live_calls(&self, user: UserId) -> Result<Vec<Call>, StoreError>;
    /// The group call rooms open now in a conversation.
    async fn live_rooms(&self, conversation: ConversationId) -> Result<Vec<Call>, StoreError>;

    /// Every read model in a stable textual form, the same for every store (see [`dump`]): for
    /// comparing a rebuilt store with a live one, or one store with another.
    async fn dump(&self) -> Result<String, StoreError>;
}
