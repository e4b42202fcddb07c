//! One lane's working set: the rows its events read, changed in memory and written back.
//!
//! [`Lane::run`] reads every row the lane's events may consult ([`Wanted`]) that the store does
//! not carry ([`Carried`]), concurrently; folds the events one by one (`fold.rs`, by
//! `store::rules`); and writes the rows that changed in logged batches of a few events each, one
//! batch after another; then hands its rows back to be carried. [`Table`] holds one table's rows
//! with what changed since the last batch, so that a row changed by several events of a batch is
//! written once, with its latest value: two writes of one row in one batch would share a
//! timestamp, and the engine would then keep the larger value, not the later one.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;

use futures_util::future::try_join_all;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use switchboard_schemas::{ConversationId, MediaId, MessageId, Payload, UserId};

use super::carried::{Carried, LaneRows};
use super::error::failed;
use super::fold::Wanted;
use super::rows::{
    ConversationRow, Db, LocationRow, MarkerRow, MediaRow, MessageRow, StatsRow, UserRow,
};
use crate::store::rows::{
    ConversationRecord, LocationRecord, MediaRecord, MemberRecord, MessageRecord, ReadRecord,
    UserRecord,
};
use crate::store::{Call, Logged, StoreError};

/// At most this many events go into one write batch…
const BATCH_EVENTS: usize = 32;

/// …and about this many bytes, as [`weight`] estimates them. Cassandra logs a warning for every
/// batch over 5 KiB and refuses batches over 50 KiB (its defaults); batches of ordinary messages
/// stay under the warning, and a batch of this size plus one more event of the largest message
/// body (16 KiB by default) stays far under the refusal.
const BATCH_BYTES: usize = 4608;

/// The most values one `IN` list carries: ScyllaDB refuses more than 100 by default.
const MAX_IN_VALUES: usize = 100;

/// Roughly how many bytes folding an event adds to a write batch, as engines count batch sizes:
/// its text plus the keys and overheads of the rows it writes (a send, measured on Cassandra:
/// about 250 bytes besides its body and client id).
fn weight(payload: &Payload) -> usize {
    const ROW: usize = 64;
    match payload {
        Payload::MessageSent(e) => e.body.len() + 2 * e.client_msg_id.len() + 4 * ROW,
        Payload::MessageEdited(e) => e.body.len() + 2 * ROW,
        Payload::ConversationCreated(e) => (2 * e.members.len() + 2) * ROW,
        Payload::MediaUploaded(e) => {
            e.content_type.len()
                + e.object_key.len()
                + e.file_name.as_ref().map_or(0, String::len)
                + ROW
        }
        _ => 2 * ROW,
    }
}

/// One table's rows as a lane has read and changed them.
pub(super) struct Table<K, V> {
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
    pub(super) fn get(&self, key: &K) -> Result<Option<&V>, StoreError> {
        let row = self.rows.get(key).ok_or_else(|| {
            StoreError::Storage(format!(
                "{} {key:?} is needed by an event but was not read before folding",
                self.name
            ))
        })?;
        Ok(row.value.as_ref())
    }

    pub(super) fn put(&mut self, key: K, value: V) {
        self.set(key, Some(value));
    }

    /// Writes `value`, or removes the row when it is `None`.
    pub(super) fn set(&mut self, key: K, value: Option<V>) {
        self.rows.insert(key, Row { value, changed: true });
    }

    /// Every row changed since the last write: `None` for a removed one.
    fn changed(&self) -> impl Iterator<Item = (&K, Option<&V>)> {
        self.rows.iter().filter(|(_, row)| row.changed).map(|(key, row)| (key, row.value.as_ref()))
    }

    /// Every changed row that still exists.
    fn upserted(&self) -> impl Iterator<Item = &V> {
        self.changed().filter_map(|(_, value)| value)
    }

    /// Every row, as read or last changed: `None` for one known not to exist.
    fn into_rows(self) -> impl Iterator<Item = (K, Option<V>)> {
        self.rows.into_iter().map(|(key, row)| (key, row.value))
    }

    fn written(&mut self) {
        for row in self.rows.values_mut() {
            row.changed = false;
        }
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
pub(super) struct Writes<'a> {
    batch: Batch,
    values: Vec<Box<dyn SerializeRow + Send + Sync + 'a>>,
}

impl<'a> Writes<'a> {
    pub(super) fn new(kind: BatchType) -> Writes<'a> {
        let mut batch = Batch::new(kind);
        // Every write is an upsert or delete of precomputed values: safe to retry.
        batch.set_is_idempotent(true);
        Writes { batch, values: Vec::new() }
    }

    pub(super) fn add(
        &mut self,
        statement: &PreparedStatement,
        values: impl SerializeRow + Send + Sync + 'a,
    ) {
        self.batch.append_statement(statement.clone());
        self.values.push(Box::new(values));
    }

    pub(super) async fn run(&self, db: &Db, what: &str) -> Result<(), StoreError> {
        if self.values.is_empty() {
            return Ok(());
        }
        db.session.batch(&self.batch, &self.values).await.map_err(|e| failed(what, e))?;
        Ok(())
    }
}

/// One lane's rows, from the read step through the fold to the writes, as the projection rules
/// see them; each becomes its table's row when written.
pub(super) struct Lane<'a> {
    pub(super) db: &'a Db,
    pub(super) users: Table<i64, UserRecord>,
    /// Lower-cased handle → the user holding it.
    pub(super) handles: Table<String, UserId>,
    pub(super) conversations: Table<i64, ConversationRecord>,
    pub(super) members: Table<(i64, i64), MemberRecord>,
    /// (smaller user, larger user) → their direct conversation.
    pub(super) directs: Table<(i64, i64), ConversationId>,
    /// Kept as stored, for the bucket range that only this store keeps.
    pub(super) stats: Table<i64, StatsRow>,
    pub(super) messages: Table<(i64, i64), MessageRecord>,
    /// (conversation, sender, client_msg_id) → message id.
    pub(super) client_ids: Table<(i64, i64, String), MessageId>,
    pub(super) markers: Table<(i64, i64), ReadRecord>,
    pub(super) last_seen: Table<i64, i64>,
    pub(super) calls: Table<i64, Call>,
    /// Index rows that follow the calls: `true` to insert, `false` to delete. Each row once,
    /// with its latest state, as for every table (an insert and a delete of one row in one
    /// batch would share a timestamp, and the delete would win whichever came last).
    pub(super) call_indexes: HashMap<CallIndex, bool>,
    /// (conversation, user) → the last location the user shared with the conversation.
    pub(super) locations: Table<(i64, i64), LocationRecord>,
    /// Written, never read: an upload's row is its event's alone.
    pub(super) media: Table<i64, MediaRecord>,
}

/// A row of the call indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum CallIndex {
    /// (user, call) in the user's history.
    History(i64, i64),
    /// (user, call) live for the user.
    Live(i64, i64),
    /// (conversation, call) open in the conversation.
    Room(i64, i64),
}

impl<'a> Lane<'a> {
    pub(super) fn new(db: &'a Db) -> Lane<'a> {
        Lane {
            db,
            users: Table::new("user"),
            handles: Table::new("handle"),
            conversations: Table::new("conversation"),
            members: Table::new("member"),
            directs: Table::new("direct pair"),
            stats: Table::new("message stats"),
            messages: Table::new("message"),
            client_ids: Table::new("client id"),
            markers: Table::new("read marker"),
            last_seen: Table::new("last seen"),
            calls: Table::new("call"),
            call_indexes: HashMap::new(),
            locations: Table::new("location"),
            media: Table::new("media"),
        }
    }

    /// Reads, folds and writes the lane's `events`, taking the rows `carried` holds instead of
    /// reading them; returns the rows to carry into the next batch.
    pub(super) async fn run(
        mut self,
        events: Vec<&Logged>,
        carried: &Carried,
    ) -> Result<LaneRows, StoreError> {
        let mut wanted = Wanted::of(&events);
        self.take_carried(&mut wanted, carried);
        self.read(wanted).await?;
        let (mut pending, mut bytes) = (0, 0);
        for logged in events {
            self.fold(logged)?;
            pending += 1;
            bytes += weight(&logged.event.payload);
            if pending >= BATCH_EVENTS || bytes >= BATCH_BYTES {
                self.write().await?;
                (pending, bytes) = (0, 0);
            }
        }
        self.write().await?;
        Ok(LaneRows {
            stats: self.stats.into_rows().collect(),
            markers: self.markers.into_rows().collect(),
        })
    }

    /// Loads the wanted rows `carried` holds or knows not to exist, and takes them off the list
    /// to read: a conversation's markers only when every wanted user's is carried, as they are
    /// read together.
    fn take_carried(&mut self, wanted: &mut Wanted, carried: &Carried) {
        wanted.client_ids.retain(|key| {
            let new = carried.take_new(key);
            if new {
                self.client_ids.loaded(key.clone(), None);
            }
            !new
        });
        wanted.stats.retain(|conversation| match carried.stats.get(conversation) {
            Some(row) => {
                self.stats.loaded(*conversation, row.clone());
                false
            }
            None => true,
        });
        wanted.markers.retain(|&conversation, users| {
            let rows: Option<Vec<_>> =
                users.iter().map(|&user| carried.markers.get(&(conversation, user))).collect();
            let Some(rows) = rows else { return true };
            for (&user, row) in users.iter().zip(rows) {
                self.markers.loaded((conversation, user), *row);
            }
            false
        });
    }

    async fn read(&mut self, wanted: Wanted) -> Result<(), StoreError> {
        let db = self.db;
        let message_lists = wanted.messages.iter().flat_map(|(&(conversation, bucket), ids)| {
            let ids: Vec<i64> = ids.iter().copied().collect();
            ids.chunks(MAX_IN_VALUES)
                .map(|chunk| (conversation, bucket, chunk.to_vec()))
                .collect::<Vec<_>>()
        });
        let (
            users,
            handles,
            conversations,
            members,
            directs,
            stats,
            messages,
            client_ids,
            markers,
            seen,
            calls,
            locations,
        ) = tokio::try_join!(
            read_each(wanted.users.iter().copied(), |user| db.user(user)),
            read_each(wanted.handles.iter().cloned(), |handle| async move {
                db.handle_claims(&handle).await
            }),
            read_each(wanted.conversations.iter().copied(), |id| db.conversation(id)),
            read_each(wanted.members.keys().copied(), |id| db.members(id)),
            read_each(wanted.directs.iter().copied(), |(low, high)| db.direct_pair(low, high)),
            read_each(wanted.stats.iter().copied(), |id| db.stats(id)),
            read_each(message_lists, |(conversation, bucket, ids)| async move {
                db.messages_by_id(conversation, bucket, &ids).await
            }),
            read_each(wanted.client_ids.iter().cloned(), |(conversation, sender, id)| {
                async move { db.client_msg_id(conversation, sender, &id).await }
            }),
            read_each(wanted.markers.keys().copied(), |id| db.markers(id)),
            read_each(wanted.last_seen.iter().copied(), |user| db.last_seen(user)),
            read_each(wanted.calls.iter().copied(), |call| db.call(call)),
            read_each(wanted.locations.iter().copied(), |(conversation, user)| {
                db.location(conversation, user)
            }),
        )?;

        for (user, row) in users {
            self.users.loaded(user, row.map(UserRow::record));
        }
        for (handle, claims) in handles {
            // The smallest claim holds the handle; see `store::rules`.
            self.handles.loaded(handle, claims.first().copied().map(UserId));
        }
        for (id, row) in conversations {
            self.conversations.loaded(id, row.map(ConversationRow::record).transpose()?);
        }
        for (conversation, rows) in members {
            let mut found = HashMap::new();
            for row in rows {
                found.insert(row.user_id, row.record()?);
            }
            for &user in &wanted.members[&conversation] {
                self.members.loaded((conversation, user), found.remove(&user));
            }
        }
        for (pair, conversation) in directs {
            self.directs.loaded(pair, conversation.map(ConversationId));
        }
        for (id, row) in stats {
            self.stats.loaded(id, row);
        }
        for ((conversation, _, ids), rows) in messages {
            let mut found = HashMap::new();
            for row in rows {
                found.insert(row.message_id, row.record()?);
            }
            for id in ids {
                self.messages.loaded((conversation, id), found.remove(&id));
            }
        }
        for (key, message) in client_ids {
            self.client_ids.loaded(key, message.map(MessageId));
        }
        // Every marker read is kept, wanted or not, so that the next batch may find it carried.
        for (conversation, rows) in markers {
            for &user in &wanted.markers[&conversation] {
                self.markers.loaded((conversation, user), None);
            }
            for row in rows {
                self.markers.loaded((conversation, row.user_id), Some(row.record()?));
            }
        }
        for (user, at) in seen {
            self.last_seen.loaded(user, at);
        }
        for (id, call) in calls {
            self.calls.loaded(id, call);
        }
        for (key, row) in locations {
            self.locations.loaded(key, row.as_ref().map(LocationRow::record).transpose()?);
        }
        Ok(())
    }

    /// Writes every row changed since the last write as one logged batch.
    async fn write(&mut self) -> Result<(), StoreError> {
        let call_indexes = std::mem::take(&mut self.call_indexes);
        self.writes(&call_indexes)?.run(self.db, "writing read models").await?;
        self.users.written();
        self.handles.written();
        self.conversations.written();
        self.members.written();
        self.directs.written();
        self.stats.written();
        self.messages.written();
        self.client_ids.written();
        self.markers.written();
        self.last_seen.written();
        self.calls.written();
        self.locations.written();
        self.media.written();
        Ok(())
    }

    fn writes<'w>(
        &'w self,
        call_indexes: &'w HashMap<CallIndex, bool>,
    ) -> Result<Writes<'w>, StoreError> {
        let statements = &self.db.statements;
        let mut writes = Writes::new(BatchType::Logged);
        for (&user, row) in self.users.changed() {
            match row {
                Some(row) => {
                    writes.add(&statements.insert_user, UserRow::new(UserId(user), row.clone()))
                }
                None => writes.add(&statements.delete_user, (user,)),
            }
        }
        // A handle's rows are the claims that held it in turn; the smallest is the holder.
        for (handle, holder) in self.handles.changed() {
            if let Some(holder) = holder {
                writes.add(&statements.insert_handle_claim, (handle, holder.0));
            }
        }
        for (&id, row) in self.conversations.changed() {
            if let Some(row) = row {
                let row = ConversationRow::new(ConversationId(id), row.clone());
                writes.add(&statements.insert_conversation, row);
            }
        }
        for (&(conversation, user), member) in self.members.changed() {
            match member {
                Some(member) => {
                    let order = i64::try_from(member.order).unwrap_or(i64::MAX);
                    writes.add(&statements.insert_member, (conversation, user, order));
                    writes.add(&statements.insert_inbox, (user, conversation));
                }
                None => {
                    writes.add(&statements.delete_member, (conversation, user));
                    writes.add(&statements.delete_inbox, (user, conversation));
                }
            }
        }
        // Likewise every conversation that held a pair keeps its row; the smallest is the pair's.
        for (&(low, high), conversation) in self.directs.changed() {
            if let Some(conversation) = conversation {
                writes.add(&statements.insert_direct_pair, (low, high, conversation.0));
            }
        }
        for row in self.stats.upserted() {
            writes.add(&statements.insert_stats, row);
        }
        for (&(conversation, id), message) in self.messages.changed() {
            if let Some(message) = message {
                let row =
                    MessageRow::new(ConversationId(conversation), MessageId(id), message.clone());
                writes.add(&statements.insert_message, row);
            }
        }
        for ((conversation, sender, client_msg_id), message) in self.client_ids.changed() {
            if let Some(message) = message {
                let values = (conversation, sender, client_msg_id, message.0);
                writes.add(&statements.insert_client_msg_id, values);
            }
        }
        for (&(conversation, user), read) in self.markers.changed() {
            if let Some(read) = read {
                let row = MarkerRow::new(ConversationId(conversation), UserId(user), *read);
                writes.add(&statements.insert_marker, row);
            }
        }
        for (user, seen) in self.last_seen.changed() {
            if let Some(seen) = seen {
                writes.add(&statements.insert_last_seen, (user, seen));
            }
        }
        for call in self.calls.upserted() {
            let record = serde_json::to_string(call)
                .map_err(|e| StoreError::Storage(format!("encoding call {}: {e}", call.id)))?;
            writes.add(&statements.insert_call, (call.id.0, call.state.name(), record));
        }
        for (&index, &present) in call_indexes {
            let (statement, key) = match (index, present) {
                (CallIndex::History(user, call), _) => {
                    (&statements.insert_call_history, (user, call))
                }
                (CallIndex::Live(user, call), true) => (&statements.insert_live_call, (user, call)),
                (CallIndex::Live(user, call), false) => {
                    (&statements.delete_live_call, (user, call))
                }
                (CallIndex::Room(room, call), true) => (&statements.insert_live_room, (room, call)),
                (CallIndex::Room(room, call), false) => {
                    (&statements.delete_live_room, (room, call))
                }
            };
            writes.add(statement, key);
        }
        for (&(conversation, user), location) in self.locations.changed() {
            if let Some(location) = location {
                let row = LocationRow::new(ConversationId(conversation), UserId(user), *location);
                writes.add(&statements.insert_location, row);
            }
        }
        for (&id, media) in self.media.changed() {
            if let Some(media) = media {
                writes.add(&statements.insert_media, MediaRow::new(MediaId(id), media.clone()));
            }
        }
        Ok(writes)
    }
}
