//! Folding a batch of events into the CQL read models, then moving the checkpoint.
//!
//! # Lanes
//!
//! A batch is split into lanes: one per conversation (its events from the conversations and
//! messages topics), one for the users topic and one for presence. Lanes touch disjoint rows —
//! everything a conversation event reads or writes is keyed by its conversation, users and
//! handles belong to the users lane, last-seen times to the presence lane — so lanes run
//! concurrently while the events of each apply in log order. The users topic is one lane rather
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
//! is already as far on. Writes are upserts of values computed in memory, never increments, so
//! writing a row twice is writing it once.
//!
//! The session stamps writes with client-side monotonic timestamps, which makes a row written by
//! a later batch win over the same row from an earlier one whichever nodes coordinate them.
//!
//! # Where the rules differ from the embedded store
//!
//! Two rules that the embedded store bases on the order it applies events in are instead based
//! on ids here, so that a store rebuilt from the log ends up the same however the rebuild
//! interleaves the log's partitions (and without lightweight transactions, which ScyllaDB does
//! not offer on tablet keyspaces):
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
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;

use futures_util::future::try_join_all;
use futures_util::{TryStreamExt, stream};
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use switchboard_ingest::log::Cursor;
use switchboard_schemas::{
    ConversationCreated, ConversationKind, ConversationRenamed, Event, MemberAdded, MemberRemoved,
    MessageDeleted, MessageEdited, MessageSent, Payload, ProfileUpdated, ReadUpTo, SessionClosed,
    UserId, UserRegistered,
};

use super::error::failed;
use super::rows::{
    CheckpointRow, ConversationRow, Db, MarkerRow, MessageRow, Sparse, StatsRow, UserRow,
};
use super::{CHECKPOINT_CONSUMER, bucket, handle_key};
use crate::store::{Logged, StoreError};

/// How many lanes are read, folded and written at once. Most lanes of a busy batch hold a
/// message or two, so their time goes on round trips; many in flight keep the cluster busy
/// meanwhile (measured: 64 → 256 raised one-message lanes by about half, 1024 added little).
const LANES_IN_FLIGHT: usize = 256;

/// At most this many events go into one write batch…
const BATCH_EVENTS: usize = 32;

/// …and about this many bytes, as [`weight`] estimates them. Cassandra logs a warning for every
/// batch over 5 KiB and refuses batches over 50 KiB (its defaults); batches of ordinary messages
/// stay under the warning, and a batch of this size plus one more event of the largest message
/// body (16 KiB by default) stays far under the refusal.
const BATCH_BYTES: usize = 4608;

/// The most values one `IN` list carries: ScyllaDB refuses more than 100 by default.
const MAX_IN_VALUES: usize = 100;

/// Applies `events` lane by lane, then moves the checkpoint to `checkpoint`.
pub(super) async fn apply(
    db: &Db,
    events: &[Logged],
    checkpoint: &Cursor,
) -> Result<(), StoreError> {
    let mut lanes: HashMap<LaneKey, Vec<&Event>> = HashMap::new();
    for logged in events {
        if let Some(lane) = lane_of(&logged.event.payload) {
            lanes.entry(lane).or_default().push(&logged.event);
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
}

/// The lane an event belongs to, or `None` for events these read models do not keep.
fn lane_of(payload: &Payload) -> Option<LaneKey> {
    match payload {
        Payload::UserRegistered(_) | Payload::ProfileUpdated(_) => Some(LaneKey::Users),
        Payload::SessionClosed(_) => Some(LaneKey::Presence),
        Payload::ConversationCreated(ConversationCreated { conversation_id, .. })
        | Payload::MemberAdded(MemberAdded { conversation_id, .. })
        | Payload::MemberRemoved(MemberRemoved { conversation_id, .. })
        | Payload::ConversationRenamed(ConversationRenamed { conversation_id, .. })
        | Payload::MessageSent(MessageSent { conversation_id, .. })
        | Payload::MessageEdited(MessageEdited { conversation_id, .. })
        | Payload::MessageDeleted(MessageDeleted { conversation_id, .. })
        | Payload::ReadUpTo(ReadUpTo { conversation_id, .. }) => {
            Some(LaneKey::Conversation(conversation_id.0))
        }
        // Not modelled by these read models (yet). Listed one by one so that a new event type is
        // a compile error here rather than silently dropped.
        Payload::Delivered(_)
        | Payload::SessionOpened(_)
        | Payload::Typing(_)
        | Payload::LocationShared(_)
        | Payload::LocationStopped(_)
        | Payload::NodeHeartbeat(_)
        | Payload::CallInvited(_)
        | Payload::CallRinging(_)
        | Payload::CallAccepted(_)
        | Payload::CallDeclined(_)
        | Payload::CallBusy(_)
        | Payload::CallMissed(_)
        | Payload::CallEnded(_)
        | Payload::RoomStarted(_)
        | Payload::ParticipantJoined(_)
        | Payload::ParticipantLeft(_)
        | Payload::SignalRelayed(_) => None,
    }
}

/// Roughly how many bytes folding an event adds to a write batch, as engines count batch sizes:
/// its text plus the keys and overheads of the rows it writes (a send, measured on Cassandra:
/// about 250 bytes besides its body and client id).
fn weight(payload: &Payload) -> usize {
    const ROW: usize = 64;
    match payload {
        Payload::MessageSent(e) => e.body.len() + 2 * e.client_msg_id.len() + 4 * ROW,
        Payload::MessageEdited(e) => e.body.len() + 2 * ROW,
        Payload::ConversationCreated(e) => (2 * e.members.len() + 2) * ROW,
        _ => 2 * ROW,
    }
}

/// One table's rows as a lane has read and changed them.
struct Table<K, V> {
    name: &'static str,
    rows: HashMap<K, Row<V>>,
}

struct Row<V> {
    /// `None`: no such row.
    value: Option<V>,
    /// Changed since the lane last wrote.
    changed: bool,
}

impl<K: Hash + Eq + Debug, V> Table<K, V> {
    fn new(name: &'static str) -> Table<K, V> {
        Table { name, rows: HashMap::new() }
    }

    /// Records what the read step found under `key`.
    fn loaded(&mut self, key: K, value: Option<V>) {
        self.rows.insert(key, Row { value, changed: false });
    }

    /// The row under `key`, which the read step must have fetched (or an earlier event written).
    fn get(&self, key: &K) -> Result<Option<&V>, StoreError> {
        let row = self.rows.get(key).ok_or_else(|| {
            StoreError::Storage(format!(
                "{} {key:?} is needed by an event but was not read before folding",
                self.name
            ))
        })?;
        Ok(row.value.as_ref())
    }

    fn put(&mut self, key: K, value: V) {
        self.rows.insert(key, Row { value: Some(value), changed: true });
    }

    fn delete(&mut self, key: K) {
        self.rows.insert(key, Row { value: None, changed: true });
    }

    /// Every row changed since the last write: `None` for a removed one.
    fn changed(&self) -> impl Iterator<Item = (&K, Option<&V>)> {
        self.rows.iter().filter(|(_, row)| row.changed).map(|(key, row)| (key, row.value.as_ref()))
    }

    /// Every changed row that still exists.
    fn upserted(&self) -> impl Iterator<Item = &V> {
        self.changed().filter_map(|(_, value)| value)
    }

    fn written(&mut self) {
        for row in self.rows.values_mut() {
            row.changed = false;
        }
    }
}

/// The rows a lane's events may consult, by table, gathered before any of them is read.
#[derive(Default)]
struct Wanted {
    users: BTreeSet<i64>,
    handles: BTreeSet<String>,
    conversations: BTreeSet<i64>,
    /// conversation → users.
    members: BTreeMap<i64, BTreeSet<i64>>,
    stats: BTreeSet<i64>,
    /// (conversation, bucket) → message ids.
    messages: BTreeMap<(i64, i32), BTreeSet<i64>>,
    /// (conversation, sender, client_msg_id).
    client_ids: BTreeSet<(i64, i64, String)>,
    /// conversation → users.
    markers: BTreeMap<i64, BTreeSet<i64>>,
    last_seen: BTreeSet<i64>,
}

impl Wanted {
    fn of(events: &[&Event]) -> Wanted {
        let mut wanted = Wanted::default();
        for event in events {
            match &event.payload {
                Payload::UserRegistered(e) => {
                    wanted.users.insert(e.user_id.0);
                    wanted.handles.insert(handle_key(&e.handle));
                }
                Payload::ProfileUpdated(e) => {
                    wanted.users.insert(e.user_id.0);
                }
                Payload::ConversationCreated(e) => {
                    wanted.conversations.insert(e.conversation_id.0);
                }
                Payload::ConversationRenamed(e) => {
                    wanted.conversations.insert(e.conversation_id.0);
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

/// Runs `read` for every key concurrently, pairing each key with what was read for it.
async fn read_each<K, V, F, R>(
    keys: impl IntoIterator<Item = K>,
    read: F,
) -> Result<Vec<(K, V)>, StoreError>
where
    K: Clone,
    F: Fn(K) -> R,
    R: Future<Output = Result<V, StoreError>>,
{
    try_join_all(keys.into_iter().map(|key| {
        let reading = read(key.clone());
        async move { Ok((key, reading.await?)) }
    }))
    .await
}

/// The statements of one write batch and the values each is bound to.
struct Writes<'a> {
    batch: Batch,
    values: Vec<Box<dyn SerializeRow + Send + Sync + 'a>>,
}

impl<'a> Writes<'a> {
    fn new(kind: BatchType) -> Writes<'a> {
        let mut batch = Batch::new(kind);
        // Every write is an upsert or delete of precomputed values: safe to retry.
        batch.set_is_idempotent(true);
        Writes { batch, values: Vec::new() }
    }

    fn add(&mut self, statement: &PreparedStatement, values: impl SerializeRow + Send + Sync + 'a) {
        self.batch.append_statement(statement.clone());
        self.values.push(Box::new(values));
    }

    async fn run(&self, db: &Db, what: &str) -> Result<(), StoreError> {
        if self.values.is_empty() {
            return Ok(());
        }
        db.session.batch(&self.batch, &self.values).await.map_err(|e| failed(what, e))?;
        Ok(())
    }
}

/// One lane's rows, from the read step through the fold to the writes.
struct Lane<'a> {
    db: &'a Db,
    users: Table<i64, UserRow>,
    /// Lower-cased handle → every user id that registered it, ascending.
    handles: Table<String, Vec<i64>>,
    conversations: Table<i64, ConversationRow>,
    /// (conversation, user) → join order.
    members: Table<(i64, i64), i64>,
    /// (user_low, user_high, conversation) rows to insert; nothing reads them while folding.
    direct_pairs: Vec<(i64, i64, i64)>,
    stats: Table<i64, StatsRow>,
    messages: Table<(i64, i64), MessageRow>,
    /// (conversation, sender, client_msg_id) → message id.
    client_ids: Table<(i64, i64, String), i64>,
    markers: Table<(i64, i64), MarkerRow>,
    last_seen: Table<i64, i64>,
}

impl<'a> Lane<'a> {
    fn new(db: &'a Db) -> Lane<'a> {
        Lane {
            db,
            users: Table::new("user"),
            handles: Table::new("handle"),
            conversations: Table::new("conversation"),
            members: Table::new("member"),
            direct_pairs: Vec::new(),
            stats: Table::new("message stats"),
            messages: Table::new("message"),
            client_ids: Table::new("client id"),
            markers: Table::new("read marker"),
            last_seen: Table::new("last seen"),
        }
    }

    async fn run(mut self, events: Vec<&Event>) -> Result<(), StoreError> {
        self.read(Wanted::of(&events)).await?;
        let (mut pending, mut bytes) = (0, 0);
        for event in events {
            self.fold(event)?;
            pending += 1;
            bytes += weight(&event.payload);
            if pending >= BATCH_EVENTS || bytes >= BATCH_BYTES {
                self.write().await?;
                (pending, bytes) = (0, 0);
            }
        }
        self.write().await
    }

    async fn read(&mut self, wanted: Wanted) -> Result<(), StoreError> {
        let db = self.db;
        let message_lists = wanted.messages.iter().flat_map(|(&(conversation, bucket), ids)| {
            let ids: Vec<i64> = ids.iter().copied().collect();
            ids.chunks(MAX_IN_VALUES)
                .map(|chunk| (conversation, bucket, chunk.to_vec()))
                .collect::<Vec<_>>()
        });
        let (users, handles, conversations, members, stats, messages, client_ids, markers, seen) =
            tokio::try_join!(
                read_each(wanted.users.iter().copied(), |user| db.user(user)),
                read_each(wanted.handles.iter().cloned(), |handle| async move {
                    db.handle_claims(&handle).await
                }),
                read_each(wanted.conversations.iter().copied(), |id| db.conversation(id)),
                read_each(wanted.members.keys().copied(), |id| db.members(id)),
                read_each(wanted.stats.iter().copied(), |id| db.stats(id)),
                read_each(message_lists, |(conversation, bucket, ids)| async move {
                    db.messages_by_id(conversation, bucket, &ids).await
                }),
                read_each(wanted.client_ids.iter().cloned(), |(conversation, sender, id)| {
                    async move { db.client_msg_id(conversation, sender, &id).await }
                }),
                read_each(wanted.markers.keys().copied(), |id| db.markers(id)),
                read_each(wanted.last_seen.iter().copied(), |user| db.last_seen(user)),
            )?;

        for (user, row) in users {
            self.users.loaded(user, row);
        }
        for (handle, claims) in handles {
            self.handles.loaded(handle, Some(claims).filter(|claims| !claims.is_empty()));
        }
        for (id, row) in conversations {
            self.conversations.loaded(id, row);
        }
        for (conversation, rows) in members {
            let found: HashMap<i64, i64> =
                rows.into_iter().map(|row| (row.user_id, row.join_order)).collect();
            for &user in &wanted.members[&conversation] {
                self.members.loaded((conversation, user), found.get(&user).copied());
            }
        }
        for (id, row) in stats {
            self.stats.loaded(id, row);
        }
        for ((conversation, _, ids), rows) in messages {
            let mut found: HashMap<i64, MessageRow> =
                rows.into_iter().map(|row| (row.message_id, row)).collect();
            for id in ids {
                self.messages.loaded((conversation, id), found.remove(&id));
            }
        }
        for (key, message) in client_ids {
            self.client_ids.loaded(key, message);
        }
        for (conversation, rows) in markers {
            let mut found: HashMap<i64, MarkerRow> =
                rows.into_iter().map(|row| (row.user_id, row)).collect();
            for &user in &wanted.markers[&conversation] {
                self.markers.loaded((conversation, user), found.remove(&user));
            }
        }
        for (user, at) in seen {
            self.last_seen.loaded(user, at);
        }
        Ok(())
    }

    /// Writes every row changed since the last write as one logged batch.
    async fn write(&mut self) -> Result<(), StoreError> {
        let direct_pairs = std::mem::take(&mut self.direct_pairs);
        self.writes(&direct_pairs).run(self.db, "writing read models").await?;
        self.users.written();
        self.handles.written();
        self.conversations.written();
        self.members.written();
        self.stats.written();
        self.messages.written();
        self.client_ids.written();
        self.markers.written();
        self.last_seen.written();
        Ok(())
    }

    fn writes<'w>(&'w self, direct_pairs: &'w [(i64, i64, i64)]) -> Writes<'w> {
        let statements = &self.db.statements;
        let mut writes = Writes::new(BatchType::Logged);
        for (user, row) in self.users.changed() {
            match row {
                Some(row) => writes.add(&statements.insert_user, row),
                None => writes.add(&statements.delete_user, (user,)),
            }
        }
        for (handle, claims) in self.handles.changed() {
            for user in claims.into_iter().flatten() {
                writes.add(&statements.insert_handle_claim, (handle, user));
            }
        }
        for row in self.conversations.upserted() {
            writes.add(&statements.insert_conversation, row);
        }
        for (&(conversation, user), order) in self.members.changed() {
            match order {
                Some(order) => {
                    writes.add(&statements.insert_member, (conversation, user, order));
                    writes.add(&statements.insert_inbox, (user, conversation));
                }
                None => {
                    writes.add(&statements.delete_member, (conversation, user));
                    writes.add(&statements.delete_inbox, (user, conversation));
                }
            }
        }
        for pair in direct_pairs {
            writes.add(&statements.insert_direct_pair, pair);
        }
        for row in self.stats.upserted() {
            writes.add(&statements.insert_stats, row);
        }
        for row in self.messages.upserted() {
            writes.add(&statements.insert_message, row);
        }
        for ((conversation, sender, client_msg_id), message) in self.client_ids.changed() {
            if let Some(message) = message {
                let values = (conversation, sender, client_msg_id, message);
                writes.add(&statements.insert_client_msg_id, values);
            }
        }
        for row in self.markers.upserted() {
            writes.add(&statements.insert_marker, row);
        }
        for (user, seen) in self.last_seen.changed() {
            if let Some(seen) = seen {
                writes.add(&statements.insert_last_seen, (user, seen));
            }
        }
        writes
    }

    fn fold(&mut self, event: &Event) -> Result<(), StoreError> {
        let at = event.meta.occurred_at;
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
            Payload::SessionClosed(e) => self.session_closed(e, at),
            // Events without a lane never reach one.
            _ => Ok(()),
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

    /// The message keeps its place and `seq` (counts and paging stay stable); only its body goes.
    fn message_deleted(&mut self, e: &MessageDeleted) -> Result<(), StoreError> {
        let key = (e.conversation_id.0, e.message_id.0);
        let Some(mut message) = self.messages.get(&key)?.cloned() else {
            return Ok(());
        };
        if message.deleted {
            return Ok(());
        }
        message.body.clear();
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

    fn session_closed(&mut self, e: &SessionClosed, at: i64) -> Result<(), StoreError> {
        let user = e.user_id.0;
        if self.last_seen.get(&user)?.is_some_and(|&seen| seen >= at) {
            return Ok(());
        }
        self.last_seen.put(user, at);
        Ok(())
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
