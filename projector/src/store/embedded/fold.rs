//! Folding a batch of events into the embedded read models.
//!
//! A [`Fold`] reads the store through a snapshot taken when the batch starts and keeps every row
//! the batch touches in an in-memory overlay, so an event sees what the events before it in the
//! same batch did (the second of two messages in one batch gets `seq` 2). Nothing reaches the
//! store until [`Changed::commit`] writes the overlay, once the batch is folded, and the
//! checkpoint as one atomic fjall batch: after a crash the store holds either all of a batch and
//! its checkpoint, or neither.
//!
//! Rows stay typed in the overlay until the commit encodes them, so a row that every event of a
//! busy conversation rewrites (its stats, the sender's read marker) is encoded once per batch,
//! not once per event, and read back without decoding. The overlay of the batch folded last is
//! handed on as [`Changed`] rows for the next batch to read before the snapshot. That is what
//! lets the next batch be folded while the last one is still being committed, and it saves
//! reads besides: the conversations of one batch are mostly those of the next, and a point read
//! in fjall (a memtable search, then a filter per table file) costs more than the fold of the
//! event that asks for it.
//!
//! What each event changes is decided by [`rules`]; a fold only looks rows up for it and puts
//! the changes into the overlay.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use fjall::{Database, OwnedWriteBatch, PersistMode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchboard_ingest::log::Cursor;
use switchboard_schemas::{CallId, ConversationId, MessageId, UserId};

use super::keys::{self, Table};
use super::query::View;
use super::tables::{Tables, storage};
use crate::store::calls::Call;
use crate::store::key_filter::KeyFilter;
use crate::store::rows::{
    ConversationRecord, LocationRecord, MemberRecord, MessageRecord, ReadRecord, StatsRecord,
    UserRecord,
};
use crate::store::rules::{self, Change, ClientKey, Pair, Rows};
use crate::store::{Logged, StoreError};

/// A row as a batch holds it before the commit encodes it: any of the record types of
/// `store::rows` (and the ids and markers some tables hold), with a way to encode it.
trait Row: Any + Send + Sync {
    fn encode(&self) -> serde_json::Result<Vec<u8>>;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Serialize + Any + Send + Sync> Row for T {
    fn encode(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Rows by table (indexed like [`Table::ALL`]) and key: `Some` for a new value, `None` for a
/// removal. Ordered, so the batch written to fjall is the same for the same events.
type Overlay = Vec<BTreeMap<Vec<u8>, Option<Box<dyn Row>>>>;

/// The rows one folded batch changed: what it writes when it is committed.
pub(super) struct Changed(Overlay);

/// One batch on its way into the store.
pub(super) struct Fold<'a> {
    base: View<'a>,
    /// The rows of the batch before, which `base` may not hold yet.
    recent: Option<Arc<Changed>>,
    /// Knows every stored client id; told of new ones as they are folded.
    client_ids: &'a KeyFilter,
    overlay: Overlay,
}

impl<'a> Fold<'a> {
    /// Starts a batch on top of `base` and `recent`, the rows of the batch folded before it (or
    /// none). `base` must hold every batch committed before that one; it may hold that one too.
    pub(super) fn new(
        base: View<'a>,
        recent: Option<Arc<Changed>>,
        client_ids: &'a KeyFilter,
    ) -> Fold<'a> {
        let overlay = Table::ALL.iter().map(|_| BTreeMap::new()).collect();
        Fold { base, recent, client_ids, overlay }
    }

    fn get<T: DeserializeOwned + Clone + Any>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        let held = [Some(&self.overlay), self.recent.as_deref().map(|recent| &recent.0)]
            .into_iter()
            .find_map(|rows| rows?.get(table as usize)?.get(key));
        match held {
            Some(Some(row)) => {
                row.as_any().downcast_ref::<T>().cloned().map(Some).ok_or_else(|| {
                    storage(
                        format_args!("folding {}/{}", table.name(), table.describe_key(key)),
                        "the batch holds a row of another type",
                    )
                })
            }
            Some(None) => Ok(None),
            None => self.base.get(table, key),
        }
    }

    fn put<T: Serialize + Any + Send + Sync>(&mut self, table: Table, key: Vec<u8>, value: T) {
        self.overlay[table as usize].insert(key, Some(Box::new(value)));
    }

    fn remove(&mut self, table: Table, key: Vec<u8>) {
        self.overlay[table as usize].insert(key, None);
    }

    /// Folds one event into the overlay.
    pub(super) fn event(&mut self, logged: &Logged) -> Result<(), StoreError> {
        for change in rules::reduce(self, logged)? {
            self.apply(change);
        }
        Ok(())
    }

    /// The rows the batch changed, ready to commit.
    pub(super) fn finish(self) -> Changed {
        Changed(self.overlay)
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::User(id, Some(user)) => self.put(Table::Users, keys::id(id.0).to_vec(), user),
            Change::User(id, None) => self.remove(Table::Users, keys::id(id.0).to_vec()),
            Change::Handle(handle, holder) => self.put(Table::Handles, handle.into_bytes(), holder),
            Change::Conversation(id, record) => {
                self.put(Table::Conversations, keys::id(id.0).to_vec(), record)
            }
            Change::Member(conversation, user, Some(member)) => {
                self.put(Table::Members, keys::ids(&[conversation.0, user.0]), member);
                // The value carries nothing: the key alone lists the user's conversations.
                self.put(Table::Memberships, keys::ids(&[user.0, conversation.0]), ())
            }
            Change::Member(conversation, user, None) => {
                self.remove(Table::Members, keys::ids(&[conversation.0, user.0]));
                self.remove(Table::Memberships, keys::ids(&[user.0, conversation.0]));
            }
            Change::Direct(Pair(low, high), conversation) => {
                self.put(Table::Directs, keys::ids(&[low.0, high.0]), conversation)
            }
            Change::Stats(conversation, stats) => {
                self.put(Table::Stats, keys::id(conversation.0).to_vec(), stats)
            }
            Change::Message(conversation, id, message) => {
                self.put(Table::Messages, keys::ids(&[conversation.0, id.0]), message)
            }
            Change::ClientId(key, message) => {
                let key = client_key(&key);
                self.client_ids.insert(&key);
                self.put(Table::ClientIds, key, message)
            }
            Change::Marker(conversation, user, read) => {
                self.put(Table::Reads, keys::ids(&[conversation.0, user.0]), read)
            }
            Change::Media(id, media) => self.put(Table::Media, keys::id(id.0).to_vec(), media),
            Change::LastSeen(user, at) => self.put(Table::LastSeen, keys::id(user.0).to_vec(), at),
            Change::Call(call) => self.put(Table::Calls, keys::id(call.id.0).to_vec(), call),
            Change::CallHistory(user, call) => {
                self.put(Table::CallHistory, keys::ids(&[user.0, call.0]), ())
            }
            Change::LiveCall(user, call, live) => {
                self.index(Table::LiveCalls, keys::ids(&[user.0, call.0]), live)
            }
            Change::LiveRoom(conversation, call, open) => {
                self.index(Table::LiveRooms, keys::ids(&[conversation.0, call.0]), open)
            }
            Change::Location(conversation, user, location) => {
                self.put(Table::Locations, keys::ids(&[conversation.0, user.0]), location)
            }
        }
    }

    /// Puts (`present`) or removes an index entry, whose key is all it says.
    fn index(&mut self, table: Table, key: Vec<u8>, present: bool) {
        match present {
            true => self.put(table, key, ()),
            false => self.remove(table, key),
        }
    }
}

impl Changed {
    /// Writes the rows and the checkpoint atomically. With `sync`, the journal is synced before
    /// this returns, with every write before it, so what it wrote survives `kill -9` and power
    /// loss alike; without, it is as durable as the next commit that syncs.
    pub(super) fn commit(
        &self,
        db: &Database,
        tables: &Tables,
        checkpoint: &Cursor,
        sync: bool,
    ) -> Result<(), StoreError> {
        let rows = self.0.iter().map(BTreeMap::len).sum::<usize>();
        // Sized up front: growing a batch of thousands of items by doubling copied it over and
        // over, into memory fresh from the OS each time.
        let mut batch = OwnedWriteBatch::with_capacity(db.clone(), rows + 1)
            .durability(sync.then_some(PersistMode::SyncAll));
        for (&table, rows) in Table::ALL.iter().zip(&self.0) {
            let space = tables.get(table);
            for (key, value) in rows {
                match value {
                    Some(row) => {
                        let bytes = row.encode().map_err(|e| {
                            storage(
                                format_args!(
                                    "encoding {}/{}",
                                    table.name(),
                                    table.describe_key(key)
                                ),
                                e,
                            )
                        })?;
                        batch.insert(space, key.clone(), bytes);
                    }
                    None => batch.remove(space, key.clone()),
                }
            }
        }
        batch.insert(tables.get(Table::Meta), keys::CHECKPOINT, checkpoint.to_string());
        batch.commit().map_err(|e| storage("committing a batch", e))?;
        Ok(())
    }
}

fn client_key(key: &ClientKey) -> Vec<u8> {
    keys::client_id(key.conversation.0, key.sender.0, &key.client_msg_id)
}

/// The rows as the batch has left them so far.
impl Rows for Fold<'_> {
    fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        self.get(Table::Users, &keys::id(id.0))
    }

    fn handle_holder(&self, handle: &str) -> Result<Option<UserId>, StoreError> {
        self.get(Table::Handles, handle.as_bytes())
    }

    fn conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>, StoreError> {
        self.get(Table::Conversations, &keys::id(id.0))
    }

    fn member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<MemberRecord>, StoreError> {
        self.get(Table::Members, &keys::ids(&[conversation.0, user.0]))
    }

    fn direct(&self, Pair(low, high): Pair) -> Result<Option<ConversationId>, StoreError> {
        self.get(Table::Directs, &keys::ids(&[low.0, high.0]))
    }

    fn stats(&self, conversation: ConversationId) -> Result<Option<StatsRecord>, StoreError> {
        self.get(Table::Stats, &keys::id(conversation.0))
    }

    fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> Result<Option<MessageRecord>, StoreError> {
        self.get(Table::Messages, &keys::ids(&[conversation.0, id.0]))
    }

    /// Most sends are new, and the filter says so without a lookup.
    fn client_id(&self, key: &ClientKey) -> Result<Option<MessageId>, StoreError> {
        let key = client_key(key);
        if !self.client_ids.may_contain(&key) {
            return Ok(None);
        }
        self.get(Table::ClientIds, &key)
    }

    fn marker(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<ReadRecord>, StoreError> {
        self.get(Table::Reads, &keys::ids(&[conversation.0, user.0]))
    }

    fn last_seen(&self, user: UserId) -> Result<Option<i64>, StoreError> {
        self.get(Table::LastSeen, &keys::id(user.0))
    }

    fn call(&self, id: CallId) -> Result<Option<Call>, StoreError> {
        self.get(Table::Calls, &keys::id(id.0))
    }

    fn location(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<LocationRecord>, StoreError> {
        self.get(Table::Locations, &keys::ids(&[conversation.0, user.0]))
    }
}
