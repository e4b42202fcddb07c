//! Folding a batch of events into the embedded read models.
//!
//! A [`Fold`] reads the store through a snapshot taken when the batch starts and keeps every key
//! the batch touches in an in-memory overlay, so an event sees what the events before it in the
//! same batch did (the second of two messages in one batch gets `seq` 2). Nothing reaches the
//! store until [`Fold::commit`], which writes the overlay and the checkpoint as one atomic fjall
//! batch: after a crash the store holds either all of a batch and its checkpoint, or neither.
//!
//! Every handler is idempotent, because delivery is at least once: a replayed event finds its
//! effect already there (the message id stored, the member present, the marker further on, the
//! location changed by an event at or after its log offset) and changes nothing.

use std::collections::{BTreeMap, HashSet};

use fjall::{Database, OwnedWriteBatch, PersistMode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchboard_ingest::log::Cursor;
use switchboard_schemas::{
    ConversationCreated, ConversationId, ConversationKind, ConversationRenamed, Event,
    LocationShared, LocationStopped, MediaUploaded, MemberAdded, MemberRemoved, MessageDeleted,
    MessageEdited, MessageId, MessageSent, Payload, ProfileUpdated, ReadUpTo, SessionClosed,
    UserId, UserRegistered,
};

use super::filter::KeyFilter;
use super::keys::{self, Table};
use super::query::View;
use super::records::{
    ConversationRecord, LocationRecord, MediaRecord, MemberRecord, MessageRecord, ReadRecord,
    StatsRecord, UserRecord,
};
use super::tables::{Tables, decode, storage};
use crate::store::calls::{self, Call, CallKind};
use crate::store::{Logged, StoreError};

/// One batch on its way into the store.
pub(super) struct Fold<'a> {
    base: View<'a>,
    /// Knows every stored client id; told of new ones before they are committed.
    client_ids: &'a KeyFilter,
    /// Every key the batch wrote: `Some` for a new value, `None` for a removal. Ordered, so the
    /// batch written to fjall is the same for the same events.
    overlay: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a> Fold<'a> {
    /// Starts a batch on top of `base`, which must be the store's latest state.
    pub(super) fn new(base: View<'a>, client_ids: &'a KeyFilter) -> Fold<'a> {
        Fold { base, client_ids, overlay: BTreeMap::new() }
    }

    fn get<T: DeserializeOwned>(&self, table: Table, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.overlay.get(&(table, key.to_vec())) {
            Some(Some(bytes)) => decode(table, key, bytes).map(Some),
            Some(None) => Ok(None),
            None => self.base.get(table, key),
        }
    }

    fn contains(&self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        let surely_absent = table == Table::ClientIds
            && !self.overlay.contains_key(&(table, key.to_vec()))
            && !self.client_ids.may_contain(key);
        Ok(!surely_absent && self.get::<serde::de::IgnoredAny>(table, key)?.is_some())
    }

    fn put<T: Serialize>(
        &mut self,
        table: Table,
        key: Vec<u8>,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| {
            storage(format_args!("encoding {}/{}", table.name(), table.describe_key(&key)), e)
        })?;
        self.overlay.insert((table, key), Some(bytes));
        Ok(())
    }

    fn remove(&mut self, table: Table, key: Vec<u8>) {
        self.overlay.insert((table, key), None);
    }

    /// Folds one event into the overlay.
    pub(super) fn event(&mut self, logged: &Logged) -> Result<(), StoreError> {
        let event = &logged.event;
        let at = event.meta.occurred_at;
        let offset = logged.position.offset;
        match &event.payload {
            Payload::UserRegistered(e) => self.user_registered(e, at),
            Payload::ProfileUpdated(e) => self.profile_updated(e),
            Payload::ConversationCreated(e) => self.conversation_created(e, event.meta.actor, at),
            Payload::MemberAdded(e) => self.member_added(e),
            Payload::MemberRemoved(e) => self.member_removed(e),
            Payload::ConversationRenamed(e) => self.conversation_renamed(e),
            Payload::MessageSent(e) => self.message_sent(e, at),
            Payload::MessageEdited(e) => self.message_edited(e, at),
            Payload::MessageDeleted(e) => self.message_deleted(e),
            Payload::ReadUpTo(e) => self.read_up_to(e, at),
            Payload::MediaUploaded(e) => self.media_uploaded(e, at),
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

    /// Writes everything the batch changed and the checkpoint atomically, and syncs the journal
    /// before returning, so an applied batch survives `kill -9` and power loss alike.
    pub(super) fn commit(
        self,
        db: &Database,
        tables: &Tables,
        checkpoint: &Cursor,
    ) -> Result<(), StoreError> {
        // Sized up front: growing a batch of thousands of items by doubling copied it over and
        // over, into memory fresh from the OS each time.
        let mut batch = OwnedWriteBatch::with_capacity(db.clone(), self.overlay.len() + 1)
            .durability(Some(PersistMode::SyncAll));
        for ((table, key), value) in self.overlay {
            if let (Table::ClientIds, Some(_)) = (table, &value) {
                self.client_ids.insert(&key);
            }
            match value {
                Some(value) => batch.insert(tables.get(table), key, value),
                None => batch.remove(tables.get(table), key),
            }
        }
        batch.insert(tables.get(Table::Meta), keys::CHECKPOINT, checkpoint.to_string());
        batch.commit().map_err(|e| storage("committing a batch", e))
    }

    /// The first registration of a handle wins. A later one under a taken handle leaves no trace
    /// at all, not even a user by id: an account nobody can log in to by handle would only be a
    /// dangling row that a rebuild has to reproduce.
    fn user_registered(&mut self, e: &UserRegistered, at: i64) -> Result<(), StoreError> {
        let user_key = keys::id(e.user_id.0).to_vec();
        let handle_key = keys::handle(&e.handle);
        if self.contains(Table::Users, &user_key)? || self.contains(Table::Handles, &handle_key)? {
            return Ok(());
        }
        self.put(Table::Handles, handle_key, &e.user_id)?;
        let record = UserRecord {
            handle: e.handle.clone(),
            display_name: e.display_name.clone(),
            created_at: at,
            password_hash: e.password_hash.clone(),
        };
        self.put(Table::Users, user_key, &record)
    }

    fn profile_updated(&mut self, e: &ProfileUpdated) -> Result<(), StoreError> {
        let key = keys::id(e.user_id.0).to_vec();
        let Some(mut user) = self.get::<UserRecord>(Table::Users, &key)? else {
            return Ok(());
        };
        user.display_name.clone_from(&e.display_name);
        self.put(Table::Users, key, &user)
    }

    fn conversation_created(
        &mut self,
        e: &ConversationCreated,
        actor: Option<UserId>,
        at: i64,
    ) -> Result<(), StoreError> {
        let key = keys::id(e.conversation_id.0).to_vec();
        if self.contains(Table::Conversations, &key)? {
            return Ok(());
        }
        let mut seen = HashSet::new();
        let members: Vec<UserId> = e.members.iter().copied().filter(|m| seen.insert(*m)).collect();
        for (order, &user) in (0u64..).zip(&members) {
            self.join(e.conversation_id, user, order)?;
        }
        if let (ConversationKind::Direct, &[a, b]) = (e.kind, members.as_slice()) {
            // The first direct conversation of a pair is the one lookups find; a racing second
            // one still exists by id but is never returned for the pair.
            let pair = keys::direct(a.0, b.0);
            if !self.contains(Table::Directs, &pair)? {
                self.put(Table::Directs, pair, &e.conversation_id)?;
            }
        }
        let record = ConversationRecord {
            kind: e.kind,
            title: e.title.clone(),
            created_by: actor,
            created_at: at,
            next_member: members.len() as u64,
        };
        self.put(Table::Conversations, key, &record)
    }

    fn join(
        &mut self,
        conversation: ConversationId,
        user: UserId,
        order: u64,
    ) -> Result<(), StoreError> {
        self.put(Table::Members, keys::ids(&[conversation.0, user.0]), &MemberRecord { order })?;
        // The value carries nothing: the key alone lists the user's conversations.
        self.put(Table::Memberships, keys::ids(&[user.0, conversation.0]), &())
    }

    fn member_added(&mut self, e: &MemberAdded) -> Result<(), StoreError> {
        let key = keys::id(e.conversation_id.0).to_vec();
        let Some(mut conversation) = self.get::<ConversationRecord>(Table::Conversations, &key)?
        else {
            return Ok(());
        };
        if self.contains(Table::Members, &keys::ids(&[e.conversation_id.0, e.user_id.0]))? {
            return Ok(());
        }
        self.join(e.conversation_id, e.user_id, conversation.next_member)?;
        conversation.next_member += 1;
        self.put(Table::Conversations, key, &conversation)
    }

    /// The member's read marker stays: if they are added back, their unread count picks up
    /// where they left off.
    fn member_removed(&mut self, e: &MemberRemoved) -> Result<(), StoreError> {
        let member = keys::ids(&[e.conversation_id.0, e.user_id.0]);
        if self.contains(Table::Members, &member)? {
            self.remove(Table::Members, member);
            self.remove(Table::Memberships, keys::ids(&[e.user_id.0, e.conversation_id.0]));
        }
        Ok(())
    }

    fn conversation_renamed(&mut self, e: &ConversationRenamed) -> Result<(), StoreError> {
        let key = keys::id(e.conversation_id.0).to_vec();
        let Some(mut conversation) = self.get::<ConversationRecord>(Table::Conversations, &key)?
        else {
            return Ok(());
        };
        conversation.title = Some(e.title.clone());
        self.put(Table::Conversations, key, &conversation)
    }

    /// Does not require the conversation to exist yet: messages and conversations are different
    /// topics, and a rebuild may well read a conversation's messages before its creation.
    fn message_sent(&mut self, e: &MessageSent, at: i64) -> Result<(), StoreError> {
        let conversation = e.conversation_id.0;
        let message_key = keys::ids(&[conversation, e.message_id.0]);
        let client_key = keys::client_id(conversation, e.sender.0, &e.client_msg_id);
        // The same message again, or a retried send that got a new message id: either way the
        // first one stands.
        if self.contains(Table::Messages, &message_key)?
            || self.contains(Table::ClientIds, &client_key)?
        {
            return Ok(());
        }
        let stats_key = keys::id(conversation).to_vec();
        let mut stats: StatsRecord = self.get(Table::Stats, &stats_key)?.unwrap_or_default();
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
        self.put(Table::Messages, message_key, &record)?;
        self.put(Table::ClientIds, client_key, &e.message_id)?;
        self.put(Table::Stats, stats_key, &stats)?;
        // Whoever sends a message has read everything before it.
        self.advance_marker(e.conversation_id, e.sender, e.message_id, seq, at)
    }

    /// Edits of unknown or deleted messages are ignored, and so is an edit older than the one
    /// already applied (a replay of an earlier edit must not undo a later one).
    fn message_edited(&mut self, e: &MessageEdited, at: i64) -> Result<(), StoreError> {
        let key = keys::ids(&[e.conversation_id.0, e.message_id.0]);
        let Some(mut message) = self.get::<MessageRecord>(Table::Messages, &key)? else {
            return Ok(());
        };
        if message.deleted || message.edited_at.is_some_and(|edited| edited > at) {
            return Ok(());
        }
        message.body.clone_from(&e.body);
        message.edited_at = Some(at);
        self.put(Table::Messages, key, &message)
    }

    /// The message keeps its place and `seq` (counts and paging stay stable); what it said, its
    /// body and attachments, goes.
    fn message_deleted(&mut self, e: &MessageDeleted) -> Result<(), StoreError> {
        let key = keys::ids(&[e.conversation_id.0, e.message_id.0]);
        let Some(mut message) = self.get::<MessageRecord>(Table::Messages, &key)? else {
            return Ok(());
        };
        if message.deleted {
            return Ok(());
        }
        message.body.clear();
        message.attachments.clear();
        message.deleted = true;
        self.put(Table::Messages, key, &message)
    }

    fn read_up_to(&mut self, e: &ReadUpTo, at: i64) -> Result<(), StoreError> {
        let key = keys::ids(&[e.conversation_id.0, e.message_id.0]);
        let Some(message) = self.get::<MessageRecord>(Table::Messages, &key)? else {
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
        let key = keys::ids(&[conversation.0, user.0]);
        let current: Option<ReadRecord> = self.get(Table::Reads, &key)?;
        if current.is_some_and(|read| read.seq >= seq) {
            return Ok(());
        }
        self.put(Table::Reads, key, &ReadRecord { message_id, seq, at })
    }

    /// The record is the event's alone (media ids are never reused), so writing it again
    /// writes the same.
    fn media_uploaded(&mut self, e: &MediaUploaded, at: i64) -> Result<(), StoreError> {
        let record = MediaRecord {
            conversation_id: e.conversation_id,
            uploader: e.uploader,
            content_type: e.content_type.clone(),
            size: u64::try_from(e.size).unwrap_or_default(),
            name: e.file_name.clone(),
            created_at: at,
            object_key: e.object_key.clone(),
        };
        self.put(Table::Media, keys::id(e.media_id.0).to_vec(), &record)
    }

    fn session_closed(&mut self, e: &SessionClosed, at: i64) -> Result<(), StoreError> {
        let key = keys::id(e.user_id.0).to_vec();
        let current: Option<i64> = self.get(Table::LastSeen, &key)?;
        if current.is_some_and(|seen| seen >= at) {
            return Ok(());
        }
        self.put(Table::LastSeen, key, &at)
    }

    /// Folds a calls-topic event with the rules both stores share, then moves the call's rows
    /// in the history and live indexes to match.
    fn call_event(&mut self, event: &Event) -> Result<(), StoreError> {
        let Some(id) = calls::call_of(&event.payload) else { return Ok(()) };
        let key = keys::id(id.0).to_vec();
        let before: Option<Call> = self.get(Table::Calls, &key)?;
        let Some(after) = calls::fold(before.as_ref(), event) else { return Ok(()) };
        for user in &after.involved {
            self.put(Table::CallHistory, keys::ids(&[user.0, id.0]), &())?;
        }
        let was_live = before.as_ref().map_or(&[][..], Call::live_users);
        for user in was_live.iter().filter(|user| !after.live_users().contains(user)) {
            self.remove(Table::LiveCalls, keys::ids(&[user.0, id.0]));
        }
        for user in after.live_users() {
            self.put(Table::LiveCalls, keys::ids(&[user.0, id.0]), &())?;
        }
        if let (CallKind::Room, Some(conversation)) = (after.kind, after.conversation_id) {
            let room = keys::ids(&[conversation.0, id.0]);
            match after.is_live() {
                true => self.put(Table::LiveRooms, room, &())?,
                false => self.remove(Table::LiveRooms, room),
            }
        }
        self.put(Table::Calls, key, &after)
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
        let key = keys::ids(&[e.conversation_id.0, e.user_id.0]);
        let current: Option<LocationRecord> = self.get(Table::Locations, &key)?;
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
        self.put(Table::Locations, key, &record)
    }

    /// The position stays as the last known one. Stopping what was never shared leaves nothing.
    fn location_stopped(&mut self, e: &LocationStopped, offset: u64) -> Result<(), StoreError> {
        let key = keys::ids(&[e.conversation_id.0, e.user_id.0]);
        let Some(mut location) = self.get::<LocationRecord>(Table::Locations, &key)? else {
            return Ok(());
        };
        if location.stopped || location.log_offset >= offset {
            return Ok(());
        }
        location.stopped = true;
        location.log_offset = offset;
        self.put(Table::Locations, key, &location)
    }
}
