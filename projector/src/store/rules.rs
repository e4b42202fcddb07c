//! The projection rules: how each event changes the read models, written once for every store.
//!
//! [`reduce`] takes one event and the rows it may consult ([`Rows`]) and returns the row changes
//! the event makes ([`Change`]). It neither fetches nor stores anything, so every store runs the
//! same rules: a store hands it its rows as they stand after the events before it in the batch,
//! then applies the changes both to what the next event sees and to what it writes. The stores
//! own only how rows are kept; the fan-out's membership cache and the call timer reuse the pieces
//! they need ([`founding_members`], [`calls::fold`]).
//!
//! # One outcome, however the partitions interleave
//!
//! Events of one partition arrive in order, but a rebuild (or a consumer group) may interleave
//! partitions any way. So no rule depends on the order of events from different partitions; each
//! depends only on its own partition's order, on ids, or on event times:
//!
//! - a handle belongs to the registration with the smallest user id (registrations of one handle
//!   by two users may sit in two partitions of the users topic). A smaller id arriving after a
//!   larger one takes the handle, and the larger one's user goes: the outcome is as if they had
//!   come in id order. Ids are time-ordered, so this is "first registered wins" unless two
//!   registrations race within the clock skew between API nodes;
//! - the direct conversation of a pair is the one with the smallest conversation id, for the
//!   same reason;
//! - the messages topic never waits for the conversations topic: a message is kept before the
//!   conversation it belongs to exists, and its counts live in their own row ([`StatsRecord`]);
//! - a member's join order is the log offset of the event that added them, so that applying an
//!   add again after the member left and came back does not move them;
//! - a read marker and a last-seen time only move forward, an edit older than the last one
//!   applied is ignored, and a location is changed only by an event after the one that last
//!   changed it in the user's presence partition.
//!
//! # Idempotency
//!
//! Delivery is at least once, and a batch that failed halfway is applied again. Every rule finds
//! the effect of an event already applied and returns no change: the message or its client id is
//! stored, the conversation or member exists, the marker is as far on. Changes carry whole rows,
//! never increments, so a store writing one twice writes it once.
//!
//! More than that: a stretch of a partition applied again after later events (a projector
//! restarting from its checkpoint) must end as it did the first time. So no rule counts or
//! appends what a replay would count or append again: join orders come from log offsets, a
//! room's participants are listed in the order they first joined, and an event that changed
//! nothing the first time round (a room's leave on a 1:1 call) is never folded. The property
//! tests in `history.rs` deliver histories that way.

use std::collections::HashSet;

use switchboard_schemas::{
    CallId, ConversationCreated, ConversationId, ConversationKind, ConversationRenamed, Event,
    LocationShared, LocationStopped, MediaId, MediaUploaded, MemberAdded, MemberRemoved,
    MessageDeleted, MessageEdited, MessageId, MessageSent, Payload, ProfileUpdated, ReadUpTo,
    SessionClosed, UserId, UserRegistered,
};

use super::calls::{self, Call, CallKind};
use super::rows::{
    ConversationRecord, LocationRecord, MediaRecord, MemberRecord, MessageRecord, ReadRecord,
    StatsRecord, UserRecord,
};
use super::{Logged, StoreError};

/// The rows the rules consult, as a store holds them for the event being folded. A store that
/// reads ahead (the CQL store) fails a lookup it did not prepare for rather than guessing.
pub(crate) trait Rows {
    fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError>;
    /// The user holding a handle, given lower-cased (see [`handle_key`]).
    fn handle_holder(&self, handle: &str) -> Result<Option<UserId>, StoreError>;
    fn conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>, StoreError>;
    fn member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<MemberRecord>, StoreError>;
    fn direct(&self, pair: Pair) -> Result<Option<ConversationId>, StoreError>;
    fn stats(&self, conversation: ConversationId) -> Result<Option<StatsRecord>, StoreError>;
    fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> Result<Option<MessageRecord>, StoreError>;
    fn client_id(&self, key: &ClientKey) -> Result<Option<MessageId>, StoreError>;
    fn marker(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<ReadRecord>, StoreError>;
    fn last_seen(&self, user: UserId) -> Result<Option<i64>, StoreError>;
    fn call(&self, id: CallId) -> Result<Option<Call>, StoreError>;
    fn location(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<LocationRecord>, StoreError>;
}

/// Two users of a direct conversation, the smaller id first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Pair(pub UserId, pub UserId);

impl Pair {
    pub(crate) fn new(a: UserId, b: UserId) -> Pair {
        Pair(a.min(b), a.max(b))
    }
}

/// A sender's `client_msg_id` in a conversation: what makes a retried send the same send.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ClientKey {
    pub conversation: ConversationId,
    pub sender: UserId,
    pub client_msg_id: String,
}

/// One row written or removed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Change {
    /// `None` removes the user: their handle went to a registration with a smaller id.
    User(UserId, Option<UserRecord>),
    /// The user now holding a (lower-cased) handle.
    Handle(String, UserId),
    Conversation(ConversationId, ConversationRecord),
    /// A member joining (`Some`, with their join order) or leaving (`None`). The index of the
    /// user's conversations follows.
    Member(ConversationId, UserId, Option<MemberRecord>),
    /// The direct conversation of a pair.
    Direct(Pair, ConversationId),
    Stats(ConversationId, StatsRecord),
    Message(ConversationId, MessageId, MessageRecord),
    /// The message a sender's `client_msg_id` was stored as.
    ClientId(ClientKey, MessageId),
    Marker(ConversationId, UserId, ReadRecord),
    Media(MediaId, MediaRecord),
    LastSeen(UserId, i64),
    Call(Call),
    /// The call is in the user's history.
    CallHistory(UserId, CallId),
    /// The call is live for the user (`true`), or no longer (`false`).
    LiveCall(UserId, CallId, bool),
    /// The room is open in the conversation (`true`), or no longer (`false`).
    LiveRoom(ConversationId, CallId, bool),
    Location(ConversationId, UserId, LocationRecord),
}

/// Handles are unique regardless of case.
pub(crate) fn handle_key(handle: &str) -> String {
    handle.to_lowercase()
}

/// The members a conversation starts with: the event's list without repeats, in its order
/// (which is their join order).
pub fn founding_members(e: &ConversationCreated) -> Vec<UserId> {
    let mut seen = HashSet::new();
    e.members.iter().copied().filter(|member| seen.insert(*member)).collect()
}

/// A member's place in join order: the log offset of the event that added them (ConversationCreated
/// and MemberAdded share the conversation's partition), then their place in a creation's list.
/// Unlike a counter kept with the conversation, an offset comes out the same when an add is
/// applied again after the member left and came back. Room for 65,536 founding members and 2^48
/// events in a partition; past either, members tie, and ties go by user id.
fn join_order(offset: u64, place: u64) -> u64 {
    const PLACES: u64 = 1 << 16;
    offset.saturating_mul(PLACES).saturating_add(place.min(PLACES - 1))
}

/// The changes `logged` makes to the read models whose rows `rows` holds; none for an event
/// already applied or one the read models do not keep.
pub(crate) fn reduce(rows: &impl Rows, logged: &Logged) -> Result<Vec<Change>, StoreError> {
    let mut fold = Fold { rows, changes: Vec::new() };
    fold.event(logged)?;
    Ok(fold.changes)
}

struct Fold<'a, R> {
    rows: &'a R,
    changes: Vec<Change>,
}

impl<R: Rows> Fold<'_, R> {
    fn event(&mut self, logged: &Logged) -> Result<(), StoreError> {
        let event = &logged.event;
        let at = event.meta.occurred_at;
        let offset = logged.position.offset;
        match &event.payload {
            Payload::UserRegistered(e) => self.user_registered(e, at),
            Payload::ProfileUpdated(e) => self.profile_updated(e),
            Payload::ConversationCreated(e) => {
                self.conversation_created(e, event.meta.actor, at, offset)
            }
            Payload::MemberAdded(e) => self.member_added(e, offset),
            Payload::MemberRemoved(e) => self.member_removed(e),
            Payload::ConversationRenamed(e) => self.conversation_renamed(e),
            Payload::MessageSent(e) => self.message_sent(e, at),
            Payload::MessageEdited(e) => self.message_edited(e, at),
            Payload::MessageDeleted(e) => self.message_deleted(e),
            Payload::ReadUpTo(e) => self.read_up_to(e, at),
            Payload::MediaUploaded(e) => {
                self.media_uploaded(e, at);
                Ok(())
            }
            Payload::SessionClosed(e) => self.session_closed(e, at),
            Payload::CallInvited(_)
            | Payload::CallAccepted(_)
            | Payload::CallDeclined(_)
            | Payload::CallBusy(_)
            | Payload::CallMissed(_)
            | Payload::CallEnded(_)
            | Payload::RoomStarted(_)
            | Payload::ParticipantJoined(_)
            | Payload::ParticipantLeft(_) => self.call_event(event),
            Payload::LocationShared(e) => self.location_shared(e, at, offset),
            Payload::LocationStopped(e) => self.location_stopped(e, offset),
            // Not modelled by these read models (yet). Listed one by one so that a new event
            // type is a compile error here rather than silently dropped.
            Payload::Delivered(_)
            | Payload::SessionOpened(_)
            | Payload::Typing(_)
            | Payload::NodeHeartbeat(_)
            | Payload::CallRinging(_)
            | Payload::SignalRelayed(_) => Ok(()),
        }
    }

    fn change(&mut self, change: Change) {
        self.changes.push(change);
    }

    /// The smallest user id registering a handle holds it (see the module docs). A registration
    /// that does not get its handle leaves no user behind: an account nobody can log in to by
    /// handle would only be a dangling row.
    fn user_registered(&mut self, e: &UserRegistered, at: i64) -> Result<(), StoreError> {
        if self.rows.user(e.user_id)?.is_some() {
            return Ok(());
        }
        let handle = handle_key(&e.handle);
        match self.rows.handle_holder(&handle)? {
            Some(holder) if holder <= e.user_id => return Ok(()),
            Some(holder) => self.change(Change::User(holder, None)),
            None => {}
        }
        self.change(Change::Handle(handle, e.user_id));
        let record = UserRecord {
            handle: e.handle.clone(),
            display_name: e.display_name.clone(),
            created_at: at,
            password_hash: e.password_hash.clone(),
        };
        self.change(Change::User(e.user_id, Some(record)));
        Ok(())
    }

    fn profile_updated(&mut self, e: &ProfileUpdated) -> Result<(), StoreError> {
        let Some(mut user) = self.rows.user(e.user_id)? else {
            return Ok(());
        };
        user.display_name.clone_from(&e.display_name);
        self.change(Change::User(e.user_id, Some(user)));
        Ok(())
    }

    fn conversation_created(
        &mut self,
        e: &ConversationCreated,
        actor: Option<UserId>,
        at: i64,
        offset: u64,
    ) -> Result<(), StoreError> {
        let conversation = e.conversation_id;
        if self.rows.conversation(conversation)?.is_some() {
            return Ok(());
        }
        let members = founding_members(e);
        for (place, &user) in (0..).zip(&members) {
            let joined = MemberRecord { order: join_order(offset, place) };
            self.change(Change::Member(conversation, user, Some(joined)));
        }
        if let (ConversationKind::Direct, &[a, b]) = (e.kind, members.as_slice()) {
            let pair = Pair::new(a, b);
            if self.rows.direct(pair)?.is_none_or(|holder| holder > conversation) {
                self.change(Change::Direct(pair, conversation));
            }
        }
        let record = ConversationRecord {
            kind: e.kind,
            title: e.title.clone(),
            created_by: actor,
            created_at: at,
        };
        self.change(Change::Conversation(conversation, record));
        Ok(())
    }

    /// A member who leaves and comes back joins at the end.
    fn member_added(&mut self, e: &MemberAdded, offset: u64) -> Result<(), StoreError> {
        if self.rows.conversation(e.conversation_id)?.is_none()
            || self.rows.member(e.conversation_id, e.user_id)?.is_some()
        {
            return Ok(());
        }
        let joined = MemberRecord { order: join_order(offset, 0) };
        self.change(Change::Member(e.conversation_id, e.user_id, Some(joined)));
        Ok(())
    }

    /// The member's read marker stays: if they are added back, their unread count picks up
    /// where they left off.
    fn member_removed(&mut self, e: &MemberRemoved) -> Result<(), StoreError> {
        if self.rows.member(e.conversation_id, e.user_id)?.is_some() {
            self.change(Change::Member(e.conversation_id, e.user_id, None));
        }
        Ok(())
    }

    fn conversation_renamed(&mut self, e: &ConversationRenamed) -> Result<(), StoreError> {
        let Some(mut conversation) = self.rows.conversation(e.conversation_id)? else {
            return Ok(());
        };
        conversation.title = Some(e.title.clone());
        self.change(Change::Conversation(e.conversation_id, conversation));
        Ok(())
    }

    /// Does not require the conversation to exist yet: messages and conversations are different
    /// topics, and a rebuild may well read a conversation's messages before its creation.
    fn message_sent(&mut self, e: &MessageSent, at: i64) -> Result<(), StoreError> {
        let client_key = ClientKey {
            conversation: e.conversation_id,
            sender: e.sender,
            client_msg_id: e.client_msg_id.clone(),
        };
        // The same message again, or a retried send that got a new message id: either way the
        // first one stands. Its client id says so for both: a message and its client id are
        // always changed together, so there is no need to look the message up as well (which
        // would be a read of a row that, for nearly every send, does not exist).
        if self.rows.client_id(&client_key)?.is_some() {
            return Ok(());
        }
        let mut stats = self.rows.stats(e.conversation_id)?.unwrap_or_default();
        stats.message_count += 1;
        stats.last_message = Some(e.message_id);
        let seq = stats.message_count;
        let record = MessageRecord {
            sender: e.sender,
            client_msg_id: e.client_msg_id.clone(),
            body: e.body.clone(),
            reply_to: e.reply_to,
            sent_at: at,
            edited_at: None,
            deleted: false,
            seq,
            attachments: e.attachments.clone(),
        };
        self.change(Change::Message(e.conversation_id, e.message_id, record));
        self.change(Change::ClientId(client_key, e.message_id));
        self.change(Change::Stats(e.conversation_id, stats));
        // Whoever sends a message has read everything before it.
        self.advance_marker(e.conversation_id, e.sender, e.message_id, seq, at)
    }

    /// Edits of unknown or deleted messages are ignored, and so is an edit older than the one
    /// already applied (a replay of an earlier edit must not undo a later one).
    fn message_edited(&mut self, e: &MessageEdited, at: i64) -> Result<(), StoreError> {
        let Some(mut message) = self.rows.message(e.conversation_id, e.message_id)? else {
            return Ok(());
        };
        if message.deleted || message.edited_at.is_some_and(|edited| edited > at) {
            return Ok(());
        }
        message.body.clone_from(&e.body);
        message.edited_at = Some(at);
        self.change(Change::Message(e.conversation_id, e.message_id, message));
        Ok(())
    }

    /// The message keeps its place and `seq` (counts and paging stay stable); what it said, its
    /// body and attachments, goes.
    fn message_deleted(&mut self, e: &MessageDeleted) -> Result<(), StoreError> {
        let Some(mut message) = self.rows.message(e.conversation_id, e.message_id)? else {
            return Ok(());
        };
        if message.deleted {
            return Ok(());
        }
        message.body.clear();
        message.attachments.clear();
        message.deleted = true;
        self.change(Change::Message(e.conversation_id, e.message_id, message));
        Ok(())
    }

    fn read_up_to(&mut self, e: &ReadUpTo, at: i64) -> Result<(), StoreError> {
        let Some(message) = self.rows.message(e.conversation_id, e.message_id)? else {
            return Ok(());
        };
        self.advance_marker(e.conversation_id, e.user_id, e.message_id, message.seq, at)
    }

    /// Moves a read marker forward only: receipts may arrive out of order across devices.
    fn advance_marker(
        &mut self,
        conversation: ConversationId,
        user: UserId,
        message_id: MessageId,
        seq: u64,
        at: i64,
    ) -> Result<(), StoreError> {
        if self.rows.marker(conversation, user)?.is_some_and(|read| read.seq >= seq) {
            return Ok(());
        }
        self.change(Change::Marker(conversation, user, ReadRecord { message_id, seq, at }));
        Ok(())
    }

    /// The row is the event's alone (media ids are never reused), so it is written without
    /// being read: writing it again writes the same.
    fn media_uploaded(&mut self, e: &MediaUploaded, at: i64) {
        let record = MediaRecord {
            conversation_id: e.conversation_id,
            uploader: e.uploader,
            content_type: e.content_type.clone(),
            size: u64::try_from(e.size).unwrap_or_default(),
            name: e.file_name.clone(),
            created_at: at,
            object_key: e.object_key.clone(),
        };
        self.change(Change::Media(e.media_id, record));
    }

    fn session_closed(&mut self, e: &SessionClosed, at: i64) -> Result<(), StoreError> {
        if self.rows.last_seen(e.user_id)?.is_some_and(|seen| seen >= at) {
            return Ok(());
        }
        self.change(Change::LastSeen(e.user_id, at));
        Ok(())
    }

    /// Folds a calls-topic event with the rules of [`calls`], then moves the call's rows in the
    /// history and live indexes to match.
    fn call_event(&mut self, event: &Event) -> Result<(), StoreError> {
        let Some(id) = calls::call_of(&event.payload) else { return Ok(()) };
        let before = self.rows.call(id)?;
        let Some(after) = calls::fold(before.as_ref(), event) else { return Ok(()) };
        for &user in &after.involved {
            self.change(Change::CallHistory(user, id));
        }
        let was_live = before.as_ref().map_or(&[][..], Call::live_users);
        for &user in was_live.iter().filter(|user| !after.live_users().contains(user)) {
            self.change(Change::LiveCall(user, id, false));
        }
        for &user in after.live_users() {
            self.change(Change::LiveCall(user, id, true));
        }
        if let (CallKind::Room, Some(conversation)) = (after.kind, after.conversation_id) {
            self.change(Change::LiveRoom(conversation, id, after.is_live()));
        }
        self.change(Change::Call(after));
        Ok(())
    }

    /// A share, or a move of one, replaces the location whole. Every location event of a user is
    /// in the user's presence partition, so log offsets order them; an event at or before the
    /// offset that last changed the record is a replay and must not undo what came after it.
    fn location_shared(
        &mut self,
        e: &LocationShared,
        at: i64,
        offset: u64,
    ) -> Result<(), StoreError> {
        let current = self.rows.location(e.conversation_id, e.user_id)?;
        if current.is_some_and(|location| location.log_offset >= offset) {
            return Ok(());
        }
        let record = LocationRecord {
            latitude: e.latitude,
            longitude: e.longitude,
            accuracy_m: e.accuracy_m,
            updated_at: at,
            expires_at: e.expires_at,
            stopped: false,
            log_offset: offset,
        };
        self.change(Change::Location(e.conversation_id, e.user_id, record));
        Ok(())
    }

    /// The position stays as the last known one. Stopping what was never shared leaves nothing.
    fn location_stopped(&mut self, e: &LocationStopped, offset: u64) -> Result<(), StoreError> {
        let Some(mut location) = self.rows.location(e.conversation_id, e.user_id)? else {
            return Ok(());
        };
        if location.stopped || location.log_offset >= offset {
            return Ok(());
        }
        location.stopped = true;
        location.log_offset = offset;
        self.change(Change::Location(e.conversation_id, e.user_id, location));
        Ok(())
    }
}
