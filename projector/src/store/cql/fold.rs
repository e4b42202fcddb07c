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
//!    client id, the conversation's stats and the sender's read marker), so a lane
//!    of a thousand sends waits for about one round trip of reads, not a thousand; rows the
//!    store carries from the batch before, or knows not to exist, are not read (see `carried`);
//! 2. folds its events one by one into those rows in memory, so that each event sees what the
//!    ones before it did (the second of two sends in a batch gets `seq` 2). What an event changes
//!    is decided by `store::rules`, as for the embedded store; the lane only serves the rules
//!    the rows they look up and keeps the changes they make;
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
//! The rules make no change for an event already applied, and changes are whole rows, never
//! increments, so writing a row twice is writing it once.
//!
//! That needs the attempt applying a batch again to read what the one before landed as it
//! landed: a lane's prefix of whole events, not an event's client id without the stats counting
//! it. So an attempt ends only when none of its writes is in flight: a failed lane lets the
//! running ones finish, and a batch runs to its end even when its caller gives up on it (see
//! [`CqlStore::apply`](super::CqlStore)). An engine may still apply a write after answering that
//! it timed out; the projector and a rebuild wait a second or more before they try again.
//!
//! The session stamps writes with client-side monotonic timestamps, which makes a row written by
//! a later batch win over the same row from an earlier one whichever nodes coordinate them.
//!
//! # Rows kept for every holder
//!
//! The rules give a handle to the registration with the smallest user id and a pair of users the
//! direct conversation with the smallest id. Here every holder a handle or pair ever had keeps
//! its clustering row, and reads take the smallest: a row is only ever inserted, so no write
//! needs a lightweight transaction (which ScyllaDB does not support on keyspaces that use
//! tablets, its default for new keyspaces in recent versions).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::{StreamExt, stream};
use scylla::statement::batch::BatchType;
use switchboard_ingest::log::Cursor;
use switchboard_schemas::{
    CallId, ConversationCreated, ConversationId, ConversationKind, ConversationRenamed,
    LocationShared, LocationStopped, MediaUploaded, MemberAdded, MemberRemoved, MessageDeleted,
    MessageEdited, MessageId, MessageSent, Payload, ReadUpTo, UserId,
};

use super::carried::{Carried, LaneRows};
use super::lane::{CallIndex, Lane, Writes};
use super::rows::{CheckpointRow, Db, StatsRow};
use super::{CHECKPOINT_CONSUMER, bucket};
use crate::store::calls::{self, Call};
use crate::store::rows::{
    ConversationRecord, LocationRecord, MemberRecord, MessageRecord, ReadRecord, StatsRecord,
    UserRecord,
};
use crate::store::rules::{self, Change, ClientKey, Pair, Rows, founding_members, handle_key};
use crate::store::{Logged, StoreError};

/// How many lanes are read, folded and written at once. Most lanes of a busy batch hold a
/// message or two, so their time goes on round trips; many in flight keep the cluster busy
/// meanwhile (measured: 64 → 256 raised one-message lanes by about half, 1024 added little).
const LANES_IN_FLIGHT: usize = 256;

/// Applies `events` lane by lane, with the rows `carried` from the batch before where they still
/// hold, then moves the checkpoint to `checkpoint` and takes into `carried` the rows to carry into
/// the next batch.
pub(super) async fn apply(
    db: &Db,
    events: &[Logged],
    checkpoint: &Cursor,
    carried: &mut Carried,
) -> Result<(), StoreError> {
    carried.for_batch(db, events).await?;
    let mut lanes: HashMap<LaneKey, Vec<&Logged>> = HashMap::new();
    for logged in events {
        if let Some(lane) = lane_of(&logged.event.payload) {
            lanes.entry(lane).or_default().push(logged);
        }
    }
    // Once a lane fails, no other starts, but those running finish their writes before the
    // error is returned: the batch is applied again from the start, and its reads must not race
    // writes still in flight from this attempt.
    let failed = AtomicBool::new(false);
    let carrying: &Carried = carried;
    let runs: Vec<_> = lanes
        .into_values()
        .map(|events| run_unless_failed(Lane::new(db), events, carrying, &failed))
        .collect();
    let ended: Vec<Result<Option<LaneRows>, StoreError>> =
        stream::iter(runs).buffer_unordered(LANES_IN_FLIGHT).collect().await;
    let ended: Vec<LaneRows> =
        ended.into_iter().filter_map(Result::transpose).collect::<Result<_, _>>()?;
    write_checkpoint(db, checkpoint).await?;
    carried.applied(ended, checkpoint);
    Ok(())
}

/// Runs `lane` unless another lane of the batch has `failed` (then `None`), and marks the batch
/// failed if this one does.
async fn run_unless_failed(
    lane: Lane<'_>,
    events: Vec<&Logged>,
    carried: &Carried,
    failed: &AtomicBool,
) -> Result<Option<LaneRows>, StoreError> {
    if failed.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let ended = lane.run(events, carried).await;
    failed.fetch_or(ended.is_err(), Ordering::Relaxed);
    ended.map(Some)
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
    /// (smaller user, larger user).
    pub(super) directs: BTreeSet<(i64, i64)>,
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
                Payload::ConversationCreated(e) => {
                    wanted.conversations.insert(e.conversation_id.0);
                    if let (ConversationKind::Direct, &[a, b]) =
                        (e.kind, founding_members(e).as_slice())
                    {
                        let Pair(low, high) = Pair::new(a, b);
                        wanted.directs.insert((low.0, high.0));
                    }
                }
                Payload::ConversationRenamed(ConversationRenamed { conversation_id, .. }) => {
                    wanted.conversations.insert(conversation_id.0);
                }
                Payload::MemberAdded(MemberAdded { conversation_id, user_id })
                | Payload::MemberRemoved(MemberRemoved { conversation_id, user_id }) => {
                    wanted.conversations.insert(conversation_id.0);
                    wanted.members.entry(conversation_id.0).or_default().insert(user_id.0);
                }
                Payload::MessageSent(e) => {
                    let conversation = e.conversation_id.0;
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

impl Lane<'_> {
    /// Folds one event into the lane's rows.
    pub(super) fn fold(&mut self, logged: &Logged) -> Result<(), StoreError> {
        for change in rules::reduce(self, logged)? {
            self.apply(change)?;
        }
        Ok(())
    }

    fn apply(&mut self, change: Change) -> Result<(), StoreError> {
        match change {
            Change::User(id, user) => self.users.set(id.0, user),
            Change::Handle(handle, holder) => self.handles.put(handle, holder),
            Change::Conversation(id, conversation) => self.conversations.put(id.0, conversation),
            Change::Member(conversation, user, member) => {
                self.members.set((conversation.0, user.0), member)
            }
            Change::Direct(Pair(low, high), conversation) => {
                self.directs.put((low.0, high.0), conversation)
            }
            Change::Stats(conversation, stats) => {
                let row =
                    StatsRow::after_send(self.stats.get(&conversation.0)?, conversation, &stats);
                self.stats.put(conversation.0, row);
            }
            Change::Message(conversation, id, message) => {
                self.messages.put((conversation.0, id.0), message)
            }
            Change::ClientId(key, message) => {
                self.client_ids.put((key.conversation.0, key.sender.0, key.client_msg_id), message)
            }
            Change::Marker(conversation, user, read) => {
                self.markers.put((conversation.0, user.0), read)
            }
            Change::Media(id, media) => self.media.put(id.0, media),
            Change::LastSeen(user, at) => self.last_seen.put(user.0, at),
            Change::Call(call) => self.calls.put(call.id.0, call),
            Change::CallHistory(user, call) => {
                self.call_indexes.insert(CallIndex::History(user.0, call.0), true);
            }
            Change::LiveCall(user, call, live) => {
                self.call_indexes.insert(CallIndex::Live(user.0, call.0), live);
            }
            Change::LiveRoom(conversation, call, open) => {
                self.call_indexes.insert(CallIndex::Room(conversation.0, call.0), open);
            }
            Change::Location(conversation, user, location) => {
                self.locations.put((conversation.0, user.0), location)
            }
        }
        Ok(())
    }
}

/// The rows the lane read ahead, as its events left them; a lookup the read step did not
/// prepare for is an error (see `Table::get`), which the conformance suite would catch.
impl Rows for Lane<'_> {
    fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        Ok(self.users.get(&id.0)?.cloned())
    }

    fn handle_holder(&self, handle: &str) -> Result<Option<UserId>, StoreError> {
        Ok(self.handles.get(&handle.to_owned())?.copied())
    }

    fn conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>, StoreError> {
        Ok(self.conversations.get(&id.0)?.cloned())
    }

    fn member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<MemberRecord>, StoreError> {
        Ok(self.members.get(&(conversation.0, user.0))?.copied())
    }

    fn direct(&self, Pair(low, high): Pair) -> Result<Option<ConversationId>, StoreError> {
        Ok(self.directs.get(&(low.0, high.0))?.copied())
    }

    fn stats(&self, conversation: ConversationId) -> Result<Option<StatsRecord>, StoreError> {
        self.stats.get(&conversation.0)?.map(StatsRow::record).transpose()
    }

    fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> Result<Option<MessageRecord>, StoreError> {
        Ok(self.messages.get(&(conversation.0, id.0))?.cloned())
    }

    fn client_id(&self, key: &ClientKey) -> Result<Option<MessageId>, StoreError> {
        let key = (key.conversation.0, key.sender.0, key.client_msg_id.clone());
        Ok(self.client_ids.get(&key)?.copied())
    }

    fn marker(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<ReadRecord>, StoreError> {
        Ok(self.markers.get(&(conversation.0, user.0))?.copied())
    }

    fn last_seen(&self, user: UserId) -> Result<Option<i64>, StoreError> {
        Ok(self.last_seen.get(&user.0)?.copied())
    }

    fn call(&self, id: CallId) -> Result<Option<Call>, StoreError> {
        Ok(self.calls.get(&id.0)?.cloned())
    }

    fn location(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<LocationRecord>, StoreError> {
        Ok(self.locations.get(&(conversation.0, user.0))?.copied())
    }
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
