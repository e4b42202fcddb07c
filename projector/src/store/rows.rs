//! The rows of the read models, as the projection rules read and write them.
//!
//! The public model types ([`User`], [`Conversation`], …) are shaped for answers: a conversation
//! carries its members and last message, a user hides its password hash from serde. The records
//! here are shaped for storage instead: each holds only what its own table owns, so that folding
//! one event touches few rows. [`rules`](super::rules) works on them for every store; the
//! embedded store keeps them as they are (as JSON, which also keeps dumps readable), the CQL store
//! maps each to the columns of its table. Dumps of either store print them as JSON.

use serde::{Deserialize, Serialize};
use switchboard_schemas::{ConversationId, ConversationKind, MediaId, MessageId, UserId};

use crate::store::{Location, Media, Message, User};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub handle: String,
    pub display_name: String,
    pub created_at: i64,
    pub password_hash: String,
}

impl UserRecord {
    pub fn into_user(self, id: UserId) -> User {
        User {
            id,
            handle: self.handle,
            display_name: self.display_name,
            created_at: self.created_at,
            password_hash: self.password_hash,
        }
    }
}

/// What the conversations topic says about a conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationRecord {
    pub kind: ConversationKind,
    pub title: Option<String>,
    pub created_by: Option<UserId>,
    pub created_at: i64,
}

/// A current member of a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Position in join order (see `rules::join_order`); a member who leaves and comes back
    /// joins at the end.
    pub order: u64,
}

/// What the messages topic says about a conversation as a whole.
///
/// Kept apart from [`ConversationRecord`] because the two come from different topics, which a
/// reader may interleave in any order (a rebuild can read every message before the conversation
/// that holds them); keeping them apart means neither has to wait for the other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsRecord {
    /// Messages ever sent, which is also the `seq` of the latest one.
    pub message_count: u64,
    /// The message with the highest `seq`.
    pub last_message: Option<MessageId>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub sender: UserId,
    pub client_msg_id: String,
    pub body: String,
    pub reply_to: Option<MessageId>,
    pub sent_at: i64,
    pub edited_at: Option<i64>,
    pub deleted: bool,
    pub seq: u64,
    /// Left out when empty, so that messages without attachments are stored (and dumped) as
    /// they were before messages could have any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<MediaId>,
}

impl MessageRecord {
    pub fn into_message(self, conversation_id: ConversationId, id: MessageId) -> Message {
        Message {
            id,
            conversation_id,
            sender: self.sender,
            client_msg_id: self.client_msg_id,
            body: self.body,
            reply_to: self.reply_to,
            sent_at: self.sent_at,
            edited_at: self.edited_at,
            deleted: self.deleted,
            seq: self.seq,
            attachments: self.attachments,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MediaRecord {
    pub conversation_id: ConversationId,
    pub uploader: UserId,
    pub content_type: String,
    pub size: u64,
    pub name: Option<String>,
    pub created_at: i64,
    pub object_key: String,
}

impl MediaRecord {
    pub fn into_media(self, id: MediaId) -> Media {
        Media {
            id,
            conversation_id: self.conversation_id,
            uploader: self.uploader,
            content_type: self.content_type,
            size: self.size,
            name: self.name,
            created_at: self.created_at,
            object_key: self.object_key,
        }
    }
}

/// How far a user has read in a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadRecord {
    pub message_id: MessageId,
    /// The `seq` of `message_id`: unread is the message count minus this.
    pub seq: u64,
    pub at: i64,
}

/// The last location a user shared with a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocationRecord {
    pub latitude: f64,
    pub longitude: f64,
    pub accuracy_m: Option<f64>,
    pub updated_at: i64,
    pub expires_at: i64,
    pub stopped: bool,
    /// The log offset of the event that last changed the record, in the user's presence
    /// partition: an event from before it is a replay and changes nothing.
    pub log_offset: u64,
}

impl LocationRecord {
    pub fn into_location(self, user_id: UserId) -> Location {
        Location {
            user_id,
            latitude: self.latitude,
            longitude: self.longitude,
            accuracy_m: self.accuracy_m,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
            stopped: self.stopped,
        }
    }
}
