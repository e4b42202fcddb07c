//! The Rust mirror of the Avro schemas: one struct per event, one [`Payload`] variant per struct.
//!
//! The struct and field names match the records in `schemas/avro/*.avsc` exactly; the round-trip
//! tests fail when the two drift apart.

use serde::{Deserialize, Serialize};

use crate::Topic;
use crate::ids::{CallId, ConversationId, MediaId, MessageId, UserId};

/// What every event carries besides its payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventMeta {
    /// Unique id of the event (UUID).
    pub event_id: String,
    /// Milliseconds since the Unix epoch.
    pub occurred_at: i64,
    /// The user whose action this is; `None` for events the system raises itself.
    pub actor: Option<UserId>,
    /// Correlates the event with the request that caused it.
    pub trace_id: String,
}

/// One event: metadata and what happened.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub meta: EventMeta,
    pub payload: Payload,
}

impl Event {
    pub fn topic(&self) -> Topic {
        self.payload.topic()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    Direct,
    Group,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallMedia {
    Audio,
    Video,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    Offer,
    Answer,
    IceCandidate,
}

/// Declares the payload structs of every topic and the [`Payload`] enum over them, keeping the
/// variant order equal to the order of the Avro union in each topic's schema.
macro_rules! events {
    ($(
        $topic:ident {
            $(
                $(#[$doc:meta])*
                $name:ident as $type_name:literal { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? }
            )*
        }
    )*) => {
        $($(
            $(#[$doc])*
            #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
            pub struct $name { $($(#[$fdoc])* pub $field: $ty),* }

            impl From<$name> for Payload {
                fn from(event: $name) -> Payload {
                    Payload::$name(event)
                }
            }
        )*)*

        /// Everything that can happen, across all topics.
        #[derive(Clone, Debug, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum Payload {
            $($($name($name),)*)*
        }

        impl Payload {
            /// Every [`Payload::type_name`], topic by topic.
            pub const TYPE_NAMES: &[&str] = &[$($($type_name,)*)*];

            /// The topic this event is appended to.
            pub fn topic(&self) -> Topic {
                match self {
                    $($(Payload::$name(_) => Topic::$topic,)*)*
                }
            }

            /// Every [`Payload::record_name`], topic by topic.
            pub(crate) const RECORD_NAMES: &[&str] = &[$($(stringify!($name),)*)*];

            /// The name clients see in pushed frames, such as `message.sent`.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $($(Payload::$name(_) => $type_name,)*)*
                }
            }

            /// The Avro record name of the payload, as it appears in the topic's union.
            pub fn record_name(&self) -> &'static str {
                match self {
                    $($(Payload::$name(_) => stringify!($name),)*)*
                }
            }

            /// Reads the payload of the record named `record_name` from the enum variant a
            /// decoder offers a topic's union as.
            pub(crate) fn from_variant<'de, A: serde::de::VariantAccess<'de>>(
                record_name: &str,
                variant: A,
            ) -> Result<Payload, A::Error> {
                match record_name {
                    $($(stringify!($name) => variant.newtype_variant().map(Payload::$name),)*)*
                    other => Err(serde::de::Error::unknown_variant(other, Self::RECORD_NAMES)),
                }
            }
        }
    };
}

events! {
    Users {
        /// A new account.
        UserRegistered as "user.registered" {
            user_id: UserId,
            handle: String,
            display_name: String,
            /// PHC-format argon2id hash; never the password.
            password_hash: String,
        }
        /// A user changed their profile.
        ProfileUpdated as "user.profile_updated" { user_id: UserId, display_name: String }
    }
    Conversations {
        /// A direct or group conversation came into being with its first members.
        ConversationCreated as "conversation.created" {
            conversation_id: ConversationId,
            kind: ConversationKind,
            title: Option<String>,
            members: Vec<UserId>,
        }
        /// A user joined a group conversation.
        MemberAdded as "conversation.member_added" { conversation_id: ConversationId, user_id: UserId }
        /// A user left or was removed from a group conversation.
        MemberRemoved as "conversation.member_removed" { conversation_id: ConversationId, user_id: UserId }
        /// A group conversation got a new title.
        ConversationRenamed as "conversation.renamed" { conversation_id: ConversationId, title: String }
    }
    Messages {
        /// A message was posted to a conversation.
        MessageSent as "message.sent" {
            conversation_id: ConversationId,
            message_id: MessageId,
            sender: UserId,
            /// Chosen by the sending client; a retried send carries the same one.
            client_msg_id: String,
            body: String,
            reply_to: Option<MessageId>,
            /// Uploads of the same conversation the message carries; none in events written
            /// before the field existed.
            #[serde(default)]
            attachments: Vec<MediaId>,
        }
        /// The sender changed a message's body.
        MessageEdited as "message.edited" { conversation_id: ConversationId, message_id: MessageId, body: String }
        /// The sender deleted a message.
        MessageDeleted as "message.deleted" { conversation_id: ConversationId, message_id: MessageId }
        /// A member has read every message up to and including this one.
        ReadUpTo as "message.read" { conversation_id: ConversationId, user_id: UserId, message_id: MessageId }
        /// A member's device has received every message up to and including this one.
        Delivered as "message.delivered" { conversation_id: ConversationId, user_id: UserId, message_id: MessageId }
        /// A file was uploaded to a conversation and is complete in the media store.
        MediaUploaded as "media.uploaded" {
            conversation_id: ConversationId,
            media_id: MediaId,
            uploader: UserId,
            /// The `Content-Type` it was uploaded with.
            content_type: String,
            /// Length in bytes.
            size: i64,
            /// The name the uploader gave it, if any.
            file_name: Option<String>,
            /// Where the file is in the media store.
            object_key: String,
        }
    }
    Presence {
        /// A device connected.
        SessionOpened as "presence.session_opened" {
            user_id: UserId,
            session_id: String,
            node_id: String,
            device: Option<String>,
        }
        /// A device disconnected.
        SessionClosed as "presence.session_closed" { user_id: UserId, session_id: String, node_id: String }
        /// A user started or stopped typing in a conversation.
        Typing as "typing" { user_id: UserId, conversation_id: ConversationId, active: bool }
        /// A user shares (or updates) their live location with a conversation until `expires_at`.
        LocationShared as "location.shared" {
            user_id: UserId,
            conversation_id: ConversationId,
            latitude: f64,
            longitude: f64,
            accuracy_m: Option<f64>,
            expires_at: i64,
        }
        /// A user stopped sharing their location with a conversation.
        LocationStopped as "location.stopped" { user_id: UserId, conversation_id: ConversationId }
        /// An API node is alive and holds its sessions for `lease_ms` more.
        NodeHeartbeat as "node.heartbeat" { node_id: String, lease_ms: i64 }
    }
    Calls {
        /// A caller rings a callee.
        CallInvited as "call.invited" {
            call_id: CallId,
            caller: UserId,
            callee: UserId,
            media: CallMedia,
            conversation_id: Option<ConversationId>,
        }
        /// One of the callee's devices is ringing.
        CallRinging as "call.ringing" { call_id: CallId, user_id: UserId, session_id: String }
        /// The callee answered on one device.
        CallAccepted as "call.accepted" { call_id: CallId, user_id: UserId, session_id: String }
        /// The callee declined.
        CallDeclined as "call.declined" { call_id: CallId, user_id: UserId }
        /// The callee was already in a call: nobody rang.
        CallBusy as "call.busy" {
            call_id: CallId,
            user_id: UserId,
            /// Who tried to call (absent from events written before schema version 2).
            caller: Option<UserId>,
            media: Option<CallMedia>,
        }
        /// Nobody answered within the ring timeout.
        CallMissed as "call.missed" { call_id: CallId }
        /// A call (or a group room) ended.
        CallEnded as "call.ended" { call_id: CallId, reason: String }
        /// A group call room opened in a conversation.
        RoomStarted as "room.started" { call_id: CallId, conversation_id: ConversationId, media: CallMedia }
        /// A user joined a group call room.
        ParticipantJoined as "room.joined" { call_id: CallId, user_id: UserId, session_id: String }
        /// A user left a group call room.
        ParticipantLeft as "room.left" { call_id: CallId, user_id: UserId }
    }
    Signals {
        /// A WebRTC offer, answer or ICE candidate for one participant of a call.
        SignalRelayed as "signal" {
            call_id: CallId,
            from_user: UserId,
            to_user: UserId,
            kind: SignalKind,
            payload: String,
        }
    }
}

impl Payload {
    /// The log key: everything that must stay ordered shares it (see DESIGN.md, events and topics).
    pub fn key(&self) -> String {
        use Payload::*;
        match self {
            UserRegistered(e) => e.user_id.to_string(),
            ProfileUpdated(e) => e.user_id.to_string(),
            ConversationCreated(e) => e.conversation_id.to_string(),
            MemberAdded(e) => e.conversation_id.to_string(),
            MemberRemoved(e) => e.conversation_id.to_string(),
            ConversationRenamed(e) => e.conversation_id.to_string(),
            MessageSent(e) => e.conversation_id.to_string(),
            MessageEdited(e) => e.conversation_id.to_string(),
            MessageDeleted(e) => e.conversation_id.to_string(),
            ReadUpTo(e) => e.conversation_id.to_string(),
            Delivered(e) => e.conversation_id.to_string(),
            MediaUploaded(e) => e.conversation_id.to_string(),
            SessionOpened(e) => e.user_id.to_string(),
            SessionClosed(e) => e.user_id.to_string(),
            Typing(e) => e.user_id.to_string(),
            LocationShared(e) => e.user_id.to_string(),
            LocationStopped(e) => e.user_id.to_string(),
            NodeHeartbeat(e) => e.node_id.clone(),
            CallInvited(e) => e.call_id.to_string(),
            CallRinging(e) => e.call_id.to_string(),
            CallAccepted(e) => e.call_id.to_string(),
            CallDeclined(e) => e.call_id.to_string(),
            CallBusy(e) => e.call_id.to_string(),
            CallMissed(e) => e.call_id.to_string(),
            CallEnded(e) => e.call_id.to_string(),
            RoomStarted(e) => e.call_id.to_string(),
            ParticipantJoined(e) => e.call_id.to_string(),
            ParticipantLeft(e) => e.call_id.to_string(),
            SignalRelayed(e) => e.to_user.to_string(),
        }
    }

    /// The conversation the event belongs to, when it belongs to one.
    pub fn conversation_id(&self) -> Option<ConversationId> {
        use Payload::*;
        match self {
            ConversationCreated(e) => Some(e.conversation_id),
            MemberAdded(e) => Some(e.conversation_id),
            MemberRemoved(e) => Some(e.conversation_id),
            ConversationRenamed(e) => Some(e.conversation_id),
            MessageSent(e) => Some(e.conversation_id),
            MessageEdited(e) => Some(e.conversation_id),
            MessageDeleted(e) => Some(e.conversation_id),
            ReadUpTo(e) => Some(e.conversation_id),
            Delivered(e) => Some(e.conversation_id),
            MediaUploaded(e) => Some(e.conversation_id),
            Typing(e) => Some(e.conversation_id),
            LocationShared(e) => Some(e.conversation_id),
            LocationStopped(e) => Some(e.conversation_id),
            CallInvited(e) => e.conversation_id,
            RoomStarted(e) => Some(e.conversation_id),
            _ => None,
        }
    }
}
