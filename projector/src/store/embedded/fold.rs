//! Folding a batch of events into the embedded read models.
//!
//! A [`Fold`] reads the store through a snapshot taken when the batch starts and keeps every key
//! the batch touches in an in-memory overlay, so an event sees what the events before it in the
//! same batch did (the second of two messages in one batch gets `seq` 2). Nothing reaches the
//! store until [`Fold::commit`], which writes the overlay and the checkpoint as one atomic fjall
//! batch: after a crash the store holds either all of a batch and its checkpoint, or neither.
//!
//! What each event changes is decided by [`rules`]; a fold only looks rows up for it and puts
//! the changes into the overlay.

use std::collections::BTreeMap;

use fjall::{Database, OwnedWriteBatch, PersistMode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchboard_ingest::log::Cursor;
use switchboard_schemas::{CallId, ConversationId, MessageId, UserId};

use super::filter::KeyFilter;
use super::keys::{self, Table};
use super::query::View;
use super::tables::{Tables, decode, storage};
use crate::store::calls::Call;
use crate::store::rows::{
    ConversationRecord, LocationRecord, MemberRecord, MessageRecord, ReadRecord, StatsRecord,
    UserRecord,
};
use crate::store::rules::{self, Change, ClientKey, Pair, Rows};
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
        for change in rules::reduce(self, logged)? {
            self.apply(change)?;
        }
        Ok(())
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

    fn apply(&mut self, change: Change) -> Result<(), StoreError> {
        match change {
            Change::User(id, Some(user)) => self.put(Table::Users, keys::id(id.0).to_vec(), &user),
            Change::User(id, None) => {
                self.remove(Table::Users, keys::id(id.0).to_vec());
                Ok(())
            }
            Change::Handle(handle, holder) => {
                self.put(Table::Handles, handle.into_bytes(), &holder)
            }
            Change::Conversation(id, record) => {
                self.put(Table::Conversations, keys::id(id.0).to_vec(), &record)
            }
            Change::Member(conversation, user, Some(member)) => {
                self.put(Table::Members, keys::ids(&[conversation.0, user.0]), &member)?;
                // The value carries nothing: the key alone lists the user's conversations.
                self.put(Table::Memberships, keys::ids(&[user.0, conversation.0]), &())
            }
            Change::Member(conversation, user, None) => {
                self.remove(Table::Members, keys::ids(&[conversation.0, user.0]));
                self.remove(Table::Memberships, keys::ids(&[user.0, conversation.0]));
                Ok(())
            }
            Change::Direct(Pair(low, high), conversation) => {
                self.put(Table::Directs, keys::ids(&[low.0, high.0]), &conversation)
            }
            Change::Stats(conversation, stats) => {
                self.put(Table::Stats, keys::id(conversation.0).to_vec(), &stats)
            }
            Change::Message(conversation, id, message) => {
                self.put(Table::Messages, keys::ids(&[conversation.0, id.0]), &message)
            }
            Change::ClientId(key, message) => {
                self.put(Table::ClientIds, client_key(&key), &message)
            }
            Change::Marker(conversation, user, read) => {
                self.put(Table::Reads, keys::ids(&[conversation.0, user.0]), &read)
            }
            Change::Media(id, media) => self.put(Table::Media, keys::id(id.0).to_vec(), &media),
            Change::LastSeen(user, at) => self.put(Table::LastSeen, keys::id(user.0).to_vec(), &at),
            Change::Call(call) => self.put(Table::Calls, keys::id(call.id.0).to_vec(), &call),
            Change::CallHistory(user, call) => {
                self.put(Table::CallHistory, keys::ids(&[user.0, call.0]), &())
            }
            Change::LiveCall(user, call, live) => {
                self.index(Table::LiveCalls, keys::ids(&[user.0, call.0]), live)
            }
            Change::LiveRoom(conversation, call, open) => {
                self.index(Table::LiveRooms, keys::ids(&[conversation.0, call.0]), open)
            }
            Change::Location(conversation, user, location) => {
                self.put(Table::Locations, keys::ids(&[conversation.0, user.0]), &location)
            }
        }
    }

    /// Puts (`present`) or removes an index entry, whose key is all it says.
    fn index(&mut self, table: Table, key: Vec<u8>, present: bool) -> Result<(), StoreError> {
        match present {
            true => self.put(table, key, &()),
            false => {
                self.remove(table, key);
                Ok(())
            }
        }
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
        if !self.overlay.contains_key(&(Table::ClientIds, key.clone()))
            && !self.client_ids.may_contain(&key)
        {
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
