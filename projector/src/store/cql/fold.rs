//! Folding a batch of events into the CQL read models, then moving the checkpoint.
//!
//! # Lanes
//!
//! A batch is split into lanes: one per conversation (its events from the conversations and
//! messages topics, and the locations shared with it from the presence topic), one for the users
//! topic and one for the rest of presence. Lanes touch disjoint rows — everything a conversation
//! event reads or writes is keyed by its conversation, users and handles belong to the users
//! lane, last-seen times to the presence lane — so lanes run concurrently while the events of
//! each apply in log order. The users topic is one lane rather
//! than one per user because two users can register the same handle.
//!
//! # Read, fold, write
//!
//! Each lane
//!
//! 1. reads, up front and concurrently, every row its events may consult (a send needs its
//!    message, its client id, the conversation's stats and the sender's read marker), so a lane
//!    of a thousand sends waits for about one round trip of reads, not a thousand;
//! 2. folds its events one by one into those rows in memory, so that each event sees what the
//!    ones before it did (the second of two sends in a batch gets `seq` 2). The rules are the
//!    embedded store's (`embedded/fold.rs`), handler for handler;
//! 3. writes the rows that changed as logged batches, a few events' worth at a time. An event's
//!    rows never straddle two batches, and a logged batch lands whole or not at all, so every
//!    event lands whole (a send's message, client id, stats and read marker together). A lane's
//!    batches are written one after another, so what has landed after a crash is always a prefix
//!    of the lane. Within a batch each row is written once, with its latest value.
//!
//! When every lane is done, the checkpoint moves, so it never runs ahead of the read models.
//!
//! # Idempotency
//!
//! Delivery is at least once, and a batch that failed halfway is applied again from the start.
//! Every handler finds the effect of an event already applied and does nothing: the message or
//! its client id is stored, the conversation or member exists, the read marker or last-seen time
//! is already as far on, the location was changed by an event at or after its log offset. Writes are upserts of values computed in memory, never increments, so
//! writing a row twice is writing it once.
//!
//! The session stamps writes with client-side monotonic timestamps, which makes a row written by
//! a later batch win over the same row from an earlier one whichever nodes coordinate them.
//!
//! # Where the rules differ from the embedded store
//!
//! Two rules that the embedded store bases on the order it applies events in are instead based
//! on ids here, so that a store rebuilt from the log ends up the same however the rebuild
//! interleaves the log's partitions, and without lightweight transactions (which ScyllaDB does
//! not support on keyspaces that use tablets, its default for new keyspaces in recent versions):
//!
//! - a handle belongs to the registration with the smallest user id. Every registration of a
//!   handle is kept in `handles`; when one with a smaller id than the holder's arrives later, the
//!   holder's user row is removed, so the outcome is as if the registrations had come in id order;
//! - the direct conversation of a pair is the one with the smallest conversation id.
//!
//! Ids are time-ordered, so both agree with the embedded store's "first one wins" unless two
//! registrations of one handle (or two direct conversations of one pair) race within the clock
//! skew between API nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use futures_util::{TryStreamExt, stream};
use scylla::statement::batch::BatchType;
use switchboard_ingest::log::Cursor;
use switchboard_schemas::{
    ConversationCreated, ConversationKind, ConversationRenamed, Event, LocationShared,
    LocationStopped, MediaUploaded, MemberAdded, MemberRemoved, MessageDeleted, MessageEdited,
    MessageSent, Payload, ProfileUpdated, ReadUpTo, SessionClosed, UserId, UserRegistered,
};

use super::lane::{CallIndex, Lane, Writes};
use super::rows::{
    CheckpointRow, ConversationRow, Db, LocationRow, MarkerRow, MediaRow, MessageRow, Sparse,
    StatsRow, UserRow,
};
use super::{CHECKPOINT_CONSUMER, bucket, handle_key};
use crate::store::calls::{self, CallKind};
use crate::store::{Logged, StoreError};

/// How many lanes are read, folded and written at once. Most lanes of a busy batch hold a
/// message or two, so their time goes on round trips; many in flight keep the cluster busy
/// meanwhile (measured: 64 → 256 raised one-message lanes by about half, 1024 added little).
const LANES_IN_FLIGHT: usize = 256;

/// Applies `events` lane by lane, then moves the checkpoint to `checkpoint`.
pub(super) async fn apply(
    db: &Db,
    events: &[Logged],
    checkpoint: &Cursor,
) -> Result<(), StoreError> {
    let mut lanes: HashMap<LaneKey, Vec<&Logged>> = HashMap::new();
    for logged in events {
        if let Some(lane) = lane_of(&logged.event.payload) {
            lanes.entry(lane).or_default().push(logged);
        }
    }
    stream::iter(lanes.into_values().map(Ok))
        .try_for_each_concurrent(LANES_IN_FLIGHT, |events| Lane::new(db).run(events))
        .await?;
    write_checkpoint(db, checkpoint).await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum LaneKey {
    Users,
    Presence,
    Conversation(i64),
    Call(i64),
}

/// The lane an event belongs to, or `None` for events these read models do not keep.
fn lane_of(payload: &Payload) -> Option<LaneKey> {
    match payload {
        Payload::UserRegistered(_) | Payload::ProfileUpdated(_) => Some(LaneKey::Users),
        Payload::SessionClosed(_) => Some(LaneKey::Presence),
        Payload::CallInvited(_)
        | Payload::CallAccepted(_)
        | Payload::CallDeclined(_)
        | Payload::CallBusy(_)
        | Payload::CallMissed(_)
        | Payload::CallEnded(_)
        | Payload::RoomStarted(_)
        | Payload::ParticipantJoined(_)
        | Payload::ParticipantLeft(_) => calls::call_of(payload).map(|call| LaneKey::Call(call.0)),
        Payload::ConversationCreated(ConversationCreated { conversation_id, .. })
        | Payload::MemberAdded(MemberAdded { conversation_id, .. })
        | Payload::MemberRemoved(MemberRemoved { conversation_id, .. })
        | Payload::ConversationRenamed(ConversationRenamed { conversation_id, .. })
        | Payload::MessageSent(MessageSent { conversation_id, .. })
        | Payload::MessageEdited(MessageEdited { conversation_id, .. })
        | Payload::MessageDeleted(MessageDeleted { conversation_id, .. })
        | Payload::ReadUpTo(ReadUpTo { conversation_id, .. })
        | Payload::MediaUploaded(MediaUploaded { conversation_id, .. })
        | Payload::LocationShared(LocationShared { conversation_id, .. })
        | Payload::LocationStopped(LocationStopped { conversation_id, .. }) => {
            Some(LaneKey::Conversation(conversation_id.0))
        }
        // Not modelled by these read models (yet). Listed one by one so that a new event type is
        // a compile error here rather than silently dropped.
        Payload::Delivered(_)
        | Payload::SessionOpened(_)
        | Payload::Typing(_)
        | Payload::NodeHeartbeat(_)
        | Payload::CallRinging(_)
        | Payload::SignalRelayed(_) => None,
    }
}

/// The rows a lane's events may consult, by table, gathered before any of them is read. Each
/// handler below reads only what its event lists here; reading anything else is an error (see
/// `Table::get`), which the conformance suite would catch.
#[derive(Default)]
pub(super) struct Wanted {
    pub(super) users: BTreeSet<i64>,
    pub(super) handles: BTreeSet<String>,
    pub(super) conversations: BTreeSet<i64>,
    /// conversation → users.
    pub(super) members: BTreeMap<i64, BTreeSet<i64>>,
    pub(super) stats: BTreeSet<i64>,
    /// (conversation, bucket) → message ids.
    pub(super) messages: BTreeMap<(i64, i32), BTreeSet<i64>>,
    /// (conversation, sender, client_msg_id).
    pub(super) client_ids: BTreeSet<(i64, i64, String)>,
    /// conversation → users.
    pub(super) markers: BTreeMap<i64, BTreeSet<i64>>,
    pub(super) last_seen: BTreeSet<i64>,
    pub(super) calls: BTreeSet<i64>,
    /// (conversation, user).
    pub(super) locations: BTreeSet<(i64, i64)>,
}

impl Wanted {
    pub(super) fn of(events: &[&Logged]) -> Wanted {
        let mut wanted = Wanted::default();
        for logged in events {
            match &logged.event.payload {
                Payload::UserRegistered(e) => {
                    wanted.users.insert(e.user_id.0);
                    wanted.handles.insert(handle_key(&e.handle));
                }
                Payload::ProfileUpdated(e) => {
                    wanted.users.insert(e.user_id.0);
                }
                Payload::ConversationCreated(ConversationCreated { conversation_id, .. })
                | Payload::ConversationRenamed(ConversationRenamed { conversation_id, .. }) => {
                    wanted.conversations.insert(conversation_id.0);
                }
                Payload::MemberAdded(MemberAdded { conversation_id, user_id })
                | Payload::MemberRemoved(MemberRemoved { conversation_id, user_id }) => {
                    wanted.conversations.insert(conversation_id.0);
                    wanted.members.entry(conversation_id.0).or_default().insert(user_id.0);
                }
                Payload::MessageSent(e) => {
                    let conversation = e.conversation_id.0;
                    wanted.message(conversation, e.message_id.0);
                    wanted.client_ids.insert((conversation, e.sender.0, e.client_msg_id.clone()));
                    wanted.stats.insert(conversation);
                    wanted.markers.entry(conversation).or_default().insert(e.sender.0);
                }
                Payload::MessageEdited(MessageEdited { conversation_id, message_id, .. })
                | Payload::MessageDeleted(MessageDeleted { conversation_id, message_id }) => {
                    wanted.message(conversation_id.0, message_id.0);
                }
                Payload::ReadUpTo(e) => {
                    wanted.message(e.conversation_id.0, e.message_id.0);
                    wanted.markers.entry(e.conversation_id.0).or_default().insert(e.user_id.0);
                }
                Payload::SessionClosed(e) => {
                    wanted.last_seen.insert(e.user_id.0);
                }
                payload if calls::call_of(payload).is_some() => {
                    wanted.calls.extend(calls::call_of(payload).map(|call| call.0));
                }
                Payload::LocationShared(LocationShared { conversation_id, user_id, .. })
                | Payload::LocationStopped(LocationStopped { conversation_id, user_id }) => {
                    wanted.locations.insert((conversation_id.0, user_id.0));
                }
                // Events without a lane never reach one.
                _ => {}
            }
        }
        wanted
    }

    fn message(&mut self, conversation: i64, message: i64) {
        self.messages.entry((conversation, bucket(message))).or_default().insert(message);
    }
}

/// The fold rules, event by event: the embedded store's.
impl Lane<'_> {
    pub(super) fn fold(&mut self, logged: &Logged) -> Result<(), StoreError> {
        let event = &logged.event;
        let at = event.meta.occurred_at;
        let offset = log_offset(logged)?;
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
            Payload::LocationShared(e) => self.location_shared(e, at, offset),
            Payload::LocationStopped(e) => self.location_stopped(e, offset),
            payload => match calls::call_of(payload) {
                Some(call) => self.call_event(call.0, event),
                // Events without a lane never reach one.
                None => Ok(()),
            },
        }
    }

    /// The smallest user id registering a handle holds it (see the module docs). A registration
    /// that does not get its handle leaves no user behind; the claim row stays, so that the
    /// outcome does not depend on which registration was applied first.
    fn user_registered(&mut self, e: &UserRegistered, at: i64) -> Result<(), StoreError> {
        let user = e.user_id.0;
        if self.users.get(&user)?.is_some() {
            return Ok(());
        }
        let handle = handle_key(&e.handle);
        let mut claims = self.handles.get(&handle)?.cloned().unwrap_or_default();
        let holder = claims.first().copied();
        if let Err(slot) = claims.binary_search(&user) {
            claims.insert(slot, user);
            self.handles.put(handle, claims);
        }
        match holder {
            Some(holder) if holder < user => return Ok(()),
            Some(holder) if holder > user => self.users.delete(holder),
            _ => {}
        }
        let row = UserRow {
            user_id: user,
            handle: e.handle.clone(),
            display_name: e.display_name.clone(),
            created_at: at,
            password_hash: e.password_hash.clone(),
        };
        self.users.put(user, row);
        Ok(())
    }

    fn profile_updated(&mut self, e: &ProfileUpdated) -> Result<(), StoreError> {
        let Some(mut user) = self.users.get(&e.user_id.0)?.cloned() else {
            return Ok(());
        };
        user.display_name.clone_from(&e.display_name);
        self.users.put(user.user_id, user);
        Ok(())
    }

    fn conversation_created(
        &mut self,
        e: &ConversationCreated,
        actor: Option<UserId>,
        at: i64,
    ) -> Result<(), StoreError> {
        let conversation = e.conversation_id.0;
        if self.conversations.get(&conversation)?.is_some() {
            return Ok(());
        }
        let mut seen = HashSet::new();
        let members: Vec<i64> =
            e.members.iter().map(|member| member.0).filter(|&m| seen.insert(m)).collect();
        for (order, &user) in (0..).zip(&members) {
            self.members.put((conversation, user), order);
        }
        if let (ConversationKind::Direct, &[a, b]) = (e.kind, members.as_slice()) {
            self.direct_pairs.push((a.min(b), a.max(b), conversation));
        }
        let row = ConversationRow {
            conversation_id: conversation,
            kind: ConversationRow::kind_name(e.kind).to_owned(),
            title: Sparse(e.title.clone()),
            created_by: Sparse(actor.map(|actor| actor.0)),
            created_at: at,
            next_member: (0..).zip(&members).count() as i64,
        };
        self.conversations.put(conversation, row);
        Ok(())
    }

    fn member_added(&mut self, e: &MemberAdded) -> Result<(), StoreError> {
        let (conversation, user) = (e.conversation_id.0, e.user_id.0);
        let Some(mut row) = self.conversations.get(&conversation)?.cloned() else {
            return Ok(());
        };
        if self.members.get(&(conversation, user))?.is_some() {
            return Ok(());
        }
        self.members.put((conversation, user), row.next_member);
        row.next_member += 1;
        self.conversations.put(conversation, row);
        Ok(())
    }

    /// The member's read marker stays: if they are added back, their unread count picks up
    /// where they left off.
    fn member_removed(&mut self, e: &MemberRemoved) -> Result<(), StoreError> {
        let key = (e.conversation_id.0, e.user_id.0);
        if self.members.get(&key)?.is_some() {
            self.members.delete(key);
        }
        Ok(())
    }

    fn conversation_renamed(&mut self, e: &ConversationRenamed) -> Result<(), StoreError> {
        let conversation = e.conversation_id.0;
        let Some(mut row) = self.conversations.get(&conversation)?.cloned() else {
            return Ok(());
        };
        row.title = Sparse(Some(e.title.clone()));
        self.conversations.put(conversation, row);
        Ok(())
    }

    /// Does not require the conversation to exist yet: a rebuild may read a conversation's
    /// messages before its creation.
    fn message_sent(&mut self, e: &MessageSent, at: i64) -> Result<(), StoreError> {
        let (conversation, message) = (e.conversation_id.0, e.message_id.0);
        let client_key = (conversation, e.sender.0, e.client_msg_id.clone());
        // The same message again, or a retried send that got a new message id: either way the
        // first one stands.
        if self.messages.get(&(conversation, message))?.is_some()
            || self.client_ids.get(&client_key)?.is_some()
        {
            return Ok(());
        }
        let bucket = bucket(message);
        let stats = match self.stats.get(&conversation)? {
            Some(stats) => StatsRow {
                conversation_id: conversation,
                message_count: stats.message_count + 1,
                last_message_id: message,
                first_bucket: stats.first_bucket.min(bucket),
                last_bucket: stats.last_bucket.max(bucket),
            },
            None => StatsRow {
                conversation_id: conversation,
                message_count: 1,
                last_message_id: message,
                first_bucket: bucket,
                last_bucket: bucket,
            },
        };
        let seq = stats.message_count;
        let row = MessageRow {
            conversation_id: conversation,
            bucket,
            message_id: message,
            sender: e.sender.0,
            client_msg_id: e.client_msg_id.clone(),
            body: e.body.clone(),
            reply_to: Sparse(e.reply_to.map(|reply| reply.0)),
            sent_at: at,
            edited_at: Sparse(None),
            deleted: false,
            seq,
            attachments: Sparse(
                Some(e.attachments.iter().map(|media| media.0).collect::<Vec<_>>())
                    .filter(|ids| !ids.is_empty()),
            ),
        };
        self.messages.put((conversation, message), row);
        self.client_ids.put(client_key, message);
        self.stats.put(conversation, stats);
        // Whoever sends a message has read everything before it.
        self.advance_marker(conversation, e.sender.0, message, seq, at)
    }

    /// Edits of unknown or deleted messages are ignored, and so is an edit older than the one
    /// already applied (a replay of an earlier edit must not undo a later one).
    fn message_edited(&mut self, e: &MessageEdited, at: i64) -> Result<(), StoreError> {
        let key = (e.conversation_id.0, e.message_id.0);
        let Some(mut message) = self.messages.get(&key)?.cloned() else {
            return Ok(());
        };
        if message.deleted || message.edited_at.0.is_some_and(|edited| edited > at) {
            return Ok(());
        }
        message.body.clone_from(&e.body);
        message.edited_at = Sparse(Some(at));
        self.messages.put(key, message);
        Ok(())
    }

    /// The message keeps its place and `seq` (counts and paging stay stable); what it said, its
    /// body and attachments, goes. The attachments become an empty list rather than unset, which
    /// would leave the stored ones in place.
    fn message_deleted(&mut self, e: &MessageDeleted) -> Result<(), StoreError> {
        let key = (e.conversation_id.0, e.message_id.0);
        let Some(mut message) = self.messages.get(&key)?.cloned() else {
            return Ok(());
        };
        if message.deleted {
            return Ok(());
        }
        message.body.clear();
        if message.attachments.0.is_some() {
            message.attachments = Sparse(Some(Vec::new()));
        }
        message.deleted = true;
        self.messages.put(key, message);
        Ok(())
    }

    fn read_up_to(&mut self, e: &ReadUpTo, at: i64) -> Result<(), StoreError> {
        let (conversation, message) = (e.conversation_id.0, e.message_id.0);
        let Some(seq) = self.messages.get(&(conversation, message))?.map(|m| m.seq) else {
            return Ok(());
        };
        self.advance_marker(conversation, e.user_id.0, message, seq, at)
    }

    /// Moves a read marker forward only: receipts may arrive out of order across devices.
    fn advance_marker(
        &mut self,
        conversation: i64,
        user: i64,
        message: i64,
        seq: i64,
        at: i64,
    ) -> Result<(), StoreError> {
        if self.markers.get(&(conversation, user))?.is_some_and(|marker| marker.seq >= seq) {
            return Ok(());
        }
        let row = MarkerRow {
            conversation_id: conversation,
            user_id: user,
            message_id: message,
            seq,
            read_at: at,
        };
        self.markers.put((conversation, user), row);
        Ok(())
    }

    /// The row is the event's alone (media ids are never reused), so it is written without
    /// being read: writing it again writes the same.
    fn media_uploaded(&mut self, e: &MediaUploaded, at: i64) -> Result<(), StoreError> {
        let row = MediaRow {
            media_id: e.media_id.0,
            conversation_id: e.conversation_id.0,
            uploader: e.uploader.0,
            content_type: e.content_type.clone(),
            size: e.size,
            file_name: Sparse(e.file_name.clone()),
            created_at: at,
            object_key: e.object_key.clone(),
        };
        self.media.put(e.media_id.0, row);
        Ok(())
    }

    fn session_closed(&mut self, e: &SessionClosed, at: i64) -> Result<(), StoreError> {
        let user = e.user_id.0;
        if self.last_seen.get(&user)?.is_some_and(|&seen| seen >= at) {
            return Ok(());
        }
        self.last_seen.put(user, at);
        Ok(())
    }

    /// The shared rules of `store::calls`; the history and live indexes follow the call.
    fn call_event(&mut self, call: i64, event: &Event) -> Result<(), StoreError> {
        let before = self.calls.get(&call)?;
        let Some(after) = calls::fold(before, event) else { return Ok(()) };
        let was_live = before.map(|call| call.live_users().to_vec()).unwrap_or_default();
        let indexes = &mut self.call_indexes;
        for user in &after.involved {
            indexes.insert(CallIndex::History(user.0, call), true);
        }
        for user in was_live.iter().filter(|user| !after.live_users().contains(user)) {
            indexes.insert(CallIndex::Live(user.0, call), false);
        }
        for user in after.live_users() {
            indexes.insert(CallIndex::Live(user.0, call), true);
        }
        if let (CallKind::Room, Some(conversation)) = (after.kind, after.conversation_id) {
            indexes.insert(CallIndex::Room(conversation.0, call), after.is_live());
        }
        self.calls.put(call, after);
        Ok(())
    }

    /// A share, or a move of one, replaces the location whole; a replay of an event at or before
    /// the row's log offset changes nothing (the offsets of one user's presence partition order
    /// all their location events).
    fn location_shared(
        &mut self,
        e: &LocationShared,
        at: i64,
        offset: i64,
    ) -> Result<(), StoreError> {
        let key = (e.conversation_id.0, e.user_id.0);
        if self.locations.get(&key)?.is_some_and(|row| row.log_offset >= offset) {
            return Ok(());
        }
        let row = LocationRow {
            conversation_id: key.0,
            user_id: key.1,
            latitude: e.latitude,
            longitude: e.longitude,
            accuracy_m: e.accuracy_m,
            updated_at: at,
            expires_at: e.expires_at,
            stopped: false,
            log_offset: offset,
        };
        self.locations.put(key, row);
        Ok(())
    }

    /// The position stays as the last known one. Stopping what was never shared leaves nothing.
    fn location_stopped(&mut self, e: &LocationStopped, offset: i64) -> Result<(), StoreError> {
        let key = (e.conversation_id.0, e.user_id.0);
        let Some(mut row) = self.locations.get(&key)?.cloned() else {
            return Ok(());
        };
        if row.stopped || row.log_offset >= offset {
            return Ok(());
        }
        row.stopped = true;
        row.log_offset = offset;
        self.locations.put(key, row);
        Ok(())
    }
}

/// The event's offset in its log partition, as the bigint the tables keep.
fn log_offset(logged: &Logged) -> Result<i64, StoreError> {
    i64::try_from(logged.position.offset)
        .map_err(|_| StoreError::Storage(format!("log offset of {} out of range", logged.position)))
}

/// Moves the stored checkpoint of every partition `checkpoint` names to the offset it names,
/// never backwards, as the embedded store does; partitions it does not name (another projector's)
/// keep theirs.
async fn write_checkpoint(db: &Db, checkpoint: &Cursor) -> Result<(), StoreError> {
    let stored = db.checkpoint(CHECKPOINT_CONSUMER).await?;
    // One partition, so the batch is atomic and isolated without going through the batchlog.
    let mut writes = Writes::new(BatchType::Unlogged);
    for (topic, partition, next) in checkpoint.iter() {
        if stored.get(topic, partition).is_some_and(|stored| stored >= next) {
            continue;
        }
        let invalid = |what: &str| {
            StoreError::Storage(format!(
                "checkpoint {topic}.{partition}={next}: {what} out of range"
            ))
        };
        let row = CheckpointRow {
            consumer: CHECKPOINT_CONSUMER.to_owned(),
            topic: topic.name().to_owned(),
            log_partition: i32::try_from(partition).map_err(|_| invalid("partition"))?,
            next_offset: i64::try_from(next).map_err(|_| invalid("offset"))?,
        };
        writes.add(&db.statements.insert_checkpoint, row);
    }
    writes.run(db, "writing the checkpoint").await
}
