//! Reads from the embedded store. Every answer comes from one fjall snapshot, so a query that
//! touches several keys (a conversation with its members, stats and last message; an inbox of
//! many conversations) sees one state of the store even while a batch is being applied.

use std::cmp::Reverse;
use std::collections::HashMap;

use fjall::{Iter, Readable, Slice, Snapshot};
use serde::de::DeserializeOwned;
use switchboard_ingest::log::Cursor;
use switchboard_schemas::{CallId, ConversationId, MediaId, MessageId, UserId};

use super::keys::{self, ID_LEN, Table};
use super::tables::{Tables, decode, storage};
use crate::store::dump::Dump;
use crate::store::rows::{
    ConversationRecord, LocationRecord, MediaRecord, MemberRecord, MessageRecord, ReadRecord,
    StatsRecord, UserRecord,
};
use crate::store::{
    Call, Conversation, InboxEntry, Location, Media, Message, ReadMarker, StoreError, User,
};

/// The store as of one instant.
pub(super) struct View<'a> {
    tables: &'a Tables,
    snapshot: Snapshot,
}

impl<'a> View<'a> {
    pub(super) fn new(tables: &'a Tables, snapshot: Snapshot) -> View<'a> {
        View { tables, snapshot }
    }

    pub(super) fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.snapshot
            .get(self.tables.get(table), key)
            .map_err(|e| {
                storage(format_args!("reading {}/{}", table.name(), table.describe_key(key)), e)
            })?
            .map(|bytes| decode(table, key, &bytes))
            .transpose()
    }

    /// Key/value pairs of `iter`, with read errors named after the table.
    fn entries(
        table: Table,
        iter: Iter,
    ) -> impl DoubleEndedIterator<Item = Result<(Slice, Slice), StoreError>> {
        iter.map(move |guard| {
            guard.into_inner().map_err(|e| storage(format_args!("scanning {}", table.name()), e))
        })
    }

    fn prefix(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<(Slice, Slice), StoreError>> {
        View::entries(table, self.snapshot.prefix(self.tables.get(table), prefix))
    }

    pub(super) fn checkpoint(&self) -> Result<Cursor, StoreError> {
        let stored = self
            .snapshot
            .get(self.tables.get(Table::Meta), keys::CHECKPOINT)
            .map_err(|e| storage("reading the checkpoint", e))?;
        let Some(bytes) = stored else {
            return Ok(Cursor::default());
        };
        std::str::from_utf8(&bytes)
            .map_err(|e| e.to_string())
            .and_then(str::parse)
            .map_err(|e| storage("corrupt checkpoint", e))
    }

    pub(super) fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let record: Option<UserRecord> = self.get(Table::Users, &keys::id(id.0))?;
        Ok(record.map(|record| record.into_user(id)))
    }

    pub(super) fn user_by_handle(&self, handle: &str) -> Result<Option<User>, StoreError> {
        match self.get::<UserId>(Table::Handles, &keys::handle(handle))? {
            Some(id) => self.user(id),
            None => Ok(None),
        }
    }

    pub(super) fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<Conversation>, StoreError> {
        let Some(record) = self.get::<ConversationRecord>(Table::Conversations, &keys::id(id.0))?
        else {
            return Ok(None);
        };
        let stats = self.stats(id)?;
        let last_message = match stats.last_message {
            Some(message) => self.message(id, message)?,
            None => None,
        };
        Ok(Some(Conversation {
            id,
            kind: record.kind,
            title: record.title,
            created_by: record.created_by,
            created_at: record.created_at,
            members: self.members(id)?,
            message_count: stats.message_count,
            last_message,
        }))
    }

    pub(super) fn is_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<bool, StoreError> {
        let key = keys::ids(&[conversation.0, user.0]);
        Ok(self.get::<MemberRecord>(Table::Members, &key)?.is_some())
    }

    fn stats(&self, id: ConversationId) -> Result<StatsRecord, StoreError> {
        Ok(self.get(Table::Stats, &keys::id(id.0))?.unwrap_or_default())
    }

    /// Current members in join order.
    fn members(&self, id: ConversationId) -> Result<Vec<UserId>, StoreError> {
        let mut members = Vec::new();
        for entry in self.prefix(Table::Members, &keys::id(id.0)) {
            let (key, value) = entry?;
            let record: MemberRecord = decode(Table::Members, &key, &value)?;
            members.push((record.order, UserId(second_id(Table::Members, &key)?)));
        }
        members.sort_unstable();
        Ok(members.into_iter().map(|(_, user)| user).collect())
    }

    pub(super) fn direct_conversation(
        &self,
        a: UserId,
        b: UserId,
    ) -> Result<Option<ConversationId>, StoreError> {
        self.get(Table::Directs, &keys::direct(a.0, b.0))
    }

    /// Read at query time rather than kept as an index ordered by activity: such an index would
    /// have to be rewritten for every member on every message, which for a large group costs far
    /// more than sorting one user's conversations when they open their list.
    pub(super) fn inbox(&self, user: UserId) -> Result<Vec<InboxEntry>, StoreError> {
        let mut entries = Vec::new();
        for entry in self.prefix(Table::Memberships, &keys::id(user.0)) {
            let (key, _) = entry?;
            let id = ConversationId(second_id(Table::Memberships, &key)?);
            let Some(conversation) = self.conversation(id)? else {
                continue;
            };
            let read: Option<ReadRecord> = self.get(Table::Reads, &keys::ids(&[id.0, user.0]))?;
            let unread = conversation.message_count.saturating_sub(read.map_or(0, |r| r.seq));
            entries.push(InboxEntry { conversation, unread });
        }
        entries.sort_by_key(|entry| {
            let conversation = &entry.conversation;
            let active =
                conversation.last_message.as_ref().map_or(conversation.created_at, |m| m.sent_at);
            Reverse((active, conversation.id))
        });
        Ok(entries)
    }

    pub(super) fn messages(
        &self,
        conversation: ConversationId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let space = self.tables.get(Table::Messages);
        let prefix = keys::id(conversation.0);
        let iter = match before {
            // The bare prefix sorts before every message key of the conversation and after every
            // key of the one before it, so it is the range's lower bound.
            Some(before) => {
                self.snapshot.range(space, prefix.to_vec()..keys::ids(&[conversation.0, before.0]))
            }
            None => self.snapshot.prefix(space, prefix),
        };
        View::entries(Table::Messages, iter)
            .rev()
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                let id = MessageId(second_id(Table::Messages, &key)?);
                let record: MessageRecord = decode(Table::Messages, &key, &value)?;
                Ok(record.into_message(conversation, id))
            })
            .collect()
    }

    pub(super) fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> Result<Option<Message>, StoreError> {
        let record: Option<MessageRecord> =
            self.get(Table::Messages, &keys::ids(&[conversation.0, id.0]))?;
        Ok(record.map(|record| record.into_message(conversation, id)))
    }

    pub(super) fn message_by_client_id(
        &self,
        conversation: ConversationId,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<Message>, StoreError> {
        let key = keys::client_id(conversation.0, sender.0, client_msg_id);
        match self.get::<MessageId>(Table::ClientIds, &key)? {
            Some(id) => self.message(conversation, id),
            None => Ok(None),
        }
    }

    /// The markers of current members, in join order; members who have read nothing have none.
    pub(super) fn read_markers(
        &self,
        conversation: ConversationId,
    ) -> Result<Vec<ReadMarker>, StoreError> {
        let mut markers = Vec::new();
        for user in self.members(conversation)? {
            let read: Option<ReadRecord> =
                self.get(Table::Reads, &keys::ids(&[conversation.0, user.0]))?;
            if let Some(read) = read {
                markers.push(ReadMarker {
                    user_id: user,
                    message_id: read.message_id,
                    at: read.at,
                });
            }
        }
        Ok(markers)
    }

    pub(super) fn location(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<Location>, StoreError> {
        let record: Option<LocationRecord> =
            self.get(Table::Locations, &keys::ids(&[conversation.0, user.0]))?;
        Ok(record.map(|record| record.into_location(user)))
    }

    /// The locations of current members, in join order. Few members share at once, so the
    /// conversation's locations are scanned and matched to the members rather than looked up
    /// member by member.
    pub(super) fn locations(
        &self,
        conversation: ConversationId,
    ) -> Result<Vec<Location>, StoreError> {
        let order: HashMap<UserId, usize> =
            self.members(conversation)?.into_iter().enumerate().map(|(i, u)| (u, i)).collect();
        let mut locations = Vec::new();
        for entry in self.prefix(Table::Locations, &keys::id(conversation.0)) {
            let (key, value) = entry?;
            let user = UserId(second_id(Table::Locations, &key)?);
            if let Some(&place) = order.get(&user) {
                let record: LocationRecord = decode(Table::Locations, &key, &value)?;
                locations.push((place, record.into_location(user)));
            }
        }
        locations.sort_unstable_by_key(|&(place, _)| place);
        Ok(locations.into_iter().map(|(_, location)| location).collect())
    }

    pub(super) fn media(&self, id: MediaId) -> Result<Option<Media>, StoreError> {
        let record: Option<MediaRecord> = self.get(Table::Media, &keys::id(id.0))?;
        Ok(record.map(|record| record.into_media(id)))
    }

    pub(super) fn last_seen(&self, user: UserId) -> Result<Option<i64>, StoreError> {
        self.get(Table::LastSeen, &keys::id(user.0))
    }

    pub(super) fn call(&self, id: CallId) -> Result<Option<Call>, StoreError> {
        self.get(Table::Calls, &keys::id(id.0))
    }

    pub(super) fn call_history(
        &self,
        user: UserId,
        before: Option<CallId>,
        limit: usize,
    ) -> Result<Vec<Call>, StoreError> {
        let space = self.tables.get(Table::CallHistory);
        let prefix = keys::id(user.0);
        let iter = match before {
            Some(before) => {
                self.snapshot.range(space, prefix.to_vec()..keys::ids(&[user.0, before.0]))
            }
            None => self.snapshot.prefix(space, prefix),
        };
        self.calls_listed(
            Table::CallHistory,
            View::entries(Table::CallHistory, iter).rev().take(limit),
        )
    }

    /// Newest first.
    pub(super) fn live_calls(&self, user: UserId) -> Result<Vec<Call>, StoreError> {
        let prefix = keys::id(user.0);
        self.calls_listed(Table::LiveCalls, self.prefix(Table::LiveCalls, &prefix).rev())
    }

    pub(super) fn live_rooms(&self, conversation: ConversationId) -> Result<Vec<Call>, StoreError> {
        let prefix = keys::id(conversation.0);
        self.calls_listed(Table::LiveRooms, self.prefix(Table::LiveRooms, &prefix).rev())
    }

    /// The calls an index lists: the call id is the second id of each key.
    fn calls_listed(
        &self,
        index: Table,
        entries: impl Iterator<Item = Result<(Slice, Slice), StoreError>>,
    ) -> Result<Vec<Call>, StoreError> {
        let mut calls = Vec::new();
        for entry in entries {
            let (key, _) = entry?;
            if let Some(call) = self.call(CallId(second_id(index, &key)?))? {
                calls.push(call);
            }
        }
        Ok(calls)
    }

    /// Every stored row but the checkpoint, in the form of `store::dump`: the stored JSON is
    /// already the row of `store::rows`.
    pub(super) fn dump(&self) -> Result<String, StoreError> {
        let mut dump = Dump::default();
        for table in Table::ALL.into_iter().filter(|&table| table != Table::Meta) {
            let iter = self.snapshot.iter(self.tables.get(table));
            for entry in View::entries(table, iter) {
                let (key, value) = entry?;
                dump.line(table.name(), table.describe_key(&key), String::from_utf8_lossy(&value));
            }
        }
        Ok(dump.finish())
    }
}

/// The id after the leading one in a two-id key (the user of a member key, the message of a
/// message key, …).
fn second_id(table: Table, key: &[u8]) -> Result<i64, StoreError> {
    keys::id_at(key, ID_LEN).ok_or_else(|| {
        storage(format_args!("corrupt {} key", table.name()), table.describe_key(key))
    })
}
