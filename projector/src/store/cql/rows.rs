//! The rows of each table as Rust values, and the reads that fetch them.
//!
//! A row struct has one field per column, named like the column, so the same struct is read by
//! `SELECT` (`DeserializeRow`) and written by `INSERT` (`SerializeRow`), both matched by name.
//! Ids are plain `i64`s here: the driver's traits cannot be implemented for the id newtypes of
//! another crate. Both the fold and the queries read through [`Db`], so each table is read in
//! one place only.

use std::fmt::Display;

use futures_util::TryStreamExt;
use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::deserialize::value::DeserializeValue;
use scylla::deserialize::{DeserializationError, FrameSlice, TypeCheckError};
use scylla::frame::response::result::ColumnType;
use scylla::serialize::SerializationError;
use scylla::serialize::row::SerializeRow;
use scylla::serialize::value::SerializeValue;
use scylla::serialize::writers::{CellWriter, WrittenCellProof};
use scylla::statement::prepared::PreparedStatement;
use scylla::{DeserializeRow, SerializeRow}; // The derives of the traits above.
use switchboard_ingest::log::Cursor;
use switchboard_schemas::{ConversationId, ConversationKind, MediaId, MessageId, Topic, UserId};

use super::error::{corrupt, failed};
use super::statements::Statements;
use crate::store::rows::{
    ConversationRecord, LocationRecord, MediaRecord, MemberRecord, MessageRecord, ReadRecord,
    StatsRecord, UserRecord,
};
use crate::store::{Call, Location, Media, Message, StoreError, User};

/// The session, switched to the store's keyspace, and the statements prepared on it.
pub(super) struct Db {
    pub(super) session: Session,
    pub(super) statements: Statements,
}

/// A nullable column that writes leave untouched when empty, instead of setting it to null.
///
/// A null written to a CQL column is a tombstone, and tombstones slow every later read of their
/// partition until compaction purges them. No column of this type ever goes from a value back to
/// empty (a title is only ever renamed, `edited_at` only ever set, and a deleted message's
/// attachments become an empty list, which is a value), so leaving it unset gives the same rows
/// without the tombstones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Sparse<T>(pub Option<T>);

impl<T: SerializeValue> SerializeValue for Sparse<T> {
    fn serialize<'b>(
        &self,
        typ: &ColumnType,
        writer: CellWriter<'b>,
    ) -> Result<WrittenCellProof<'b>, SerializationError> {
        match &self.0 {
            Some(value) => value.serialize(typ, writer),
            None => Ok(writer.set_unset()),
        }
    }
}

impl<'frame, 'metadata, T: DeserializeValue<'frame, 'metadata>> DeserializeValue<'frame, 'metadata>
    for Sparse<T>
{
    fn type_check(typ: &ColumnType) -> Result<(), TypeCheckError> {
        Option::<T>::type_check(typ)
    }

    fn deserialize(
        typ: &'metadata ColumnType<'metadata>,
        value: Option<FrameSlice<'frame>>,
    ) -> Result<Self, DeserializationError> {
        Option::<T>::deserialize(typ, value).map(Sparse)
    }
}

#[derive(Clone, Debug, PartialEq, DeserializeRow, SerializeRow)]
pub(super) struct UserRow {
    pub user_id: i64,
    pub handle: String,
    pub display_name: String,
    pub created_at: i64,
    pub password_hash: String,
}

impl UserRow {
    pub fn into_user(self) -> User {
        let id = UserId(self.user_id);
        self.record().into_user(id)
    }
}

#[derive(Clone, Debug, PartialEq, DeserializeRow, SerializeRow)]
pub(super) struct ConversationRow {
    pub conversation_id: i64,
    /// `direct` or `group`.
    pub kind: String,
    pub title: Sparse<String>,
    pub created_by: Sparse<i64>,
    pub created_at: i64,
}

impl ConversationRow {
    pub fn kind_name(kind: ConversationKind) -> &'static str {
        match kind {
            ConversationKind::Direct => "direct",
            ConversationKind::Group => "group",
        }
    }

    pub fn kind(&self) -> Result<ConversationKind, StoreError> {
        match self.kind.as_str() {
            "direct" => Ok(ConversationKind::Direct),
            "group" => Ok(ConversationKind::Group),
            other => Err(corrupt(
                format_args!("conversation {}", self.conversation_id),
                format_args!("unknown kind `{other}`"),
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, DeserializeRow, SerializeRow)]
pub(super) struct MemberRow {
    pub conversation_id: i64,
    pub user_id: i64,
    pub join_order: i64,
}

#[derive(Clone, Debug, PartialEq, DeserializeRow, SerializeRow)]
pub(super) struct StatsRow {
    pub conversation_id: i64,
    /// Messages ever sent, which is also the `seq` of the latest one.
    pub message_count: i64,
    /// The message with the highest `seq`.
    pub last_message_id: i64,
    /// The lowest and highest bucket holding a message: paging walks between them.
    pub first_bucket: i32,
    pub last_bucket: i32,
}

#[derive(Clone, Debug, PartialEq, DeserializeRow, SerializeRow)]
pub(super) struct MessageRow {
    pub conversation_id: i64,
    pub bucket: i32,
    pub message_id: i64,
    pub sender: i64,
    pub client_msg_id: String,
    pub body: String,
    pub reply_to: Sparse<i64>,
    pub sent_at: i64,
    pub edited_at: Sparse<i64>,
    pub deleted: bool,
    pub seq: i64,
    /// Unset when the message carries none.
    pub attachments: Sparse<Vec<i64>>,
}

impl MessageRow {
    pub fn into_message(self) -> Result<Message, StoreError> {
        let (conversation, id) = (ConversationId(self.conversation_id), MessageId(self.message_id));
        Ok(self.record()?.into_message(conversation, id))
    }
}

#[derive(Clone, Debug, PartialEq, DeserializeRow, SerializeRow)]
pub(super) struct MediaRow {
    pub media_id: i64,
    pub conversation_id: i64,
    pub uploader: i64,
    pub content_type: String,
    pub size: i64,
    pub file_name: Sparse<String>,
    pub created_at: i64,
    pub object_key: String,
}

impl MediaRow {
    pub fn into_media(self) -> Result<Media, StoreError> {
        let id = MediaId(self.media_id);
        Ok(self.record()?.into_media(id))
    }
}

#[derive(Clone, Debug, PartialEq, DeserializeRow, SerializeRow)]
pub(super) struct MarkerRow {
    pub conversation_id: i64,
    pub user_id: i64,
    pub message_id: i64,
    /// The `seq` of `message_id`: unread is the message count minus this.
    pub seq: i64,
    pub read_at: i64,
}

#[derive(Clone, Debug, PartialEq, DeserializeRow, SerializeRow)]
pub(super) struct LocationRow {
    pub conversation_id: i64,
    pub user_id: i64,
    pub latitude: f64,
    pub longitude: f64,
    /// Null when the device reported none: unlike a [`Sparse`] column, it can go back to empty.
    pub accuracy_m: Option<f64>,
    pub updated_at: i64,
    pub expires_at: i64,
    pub stopped: bool,
    /// The log offset of the event that last changed the row, in the user's presence partition.
    pub log_offset: i64,
}

impl LocationRow {
    pub fn into_location(self) -> Result<Location, StoreError> {
        Ok(self.record()?.into_location(UserId(self.user_id)))
    }
}

#[derive(Clone, Debug, PartialEq, DeserializeRow, SerializeRow)]
pub(super) struct CheckpointRow {
    pub consumer: String,
    pub topic: String,
    pub log_partition: i32,
    pub next_offset: i64,
}

/// A stored count or sequence number, which is never negative unless the row is damaged.
pub(super) fn count(value: i64, what: impl Display) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(what, format_args!("negative value {value}")))
}

/// Reads of one table each. Point and bounded reads come back in one response; reads of a whole
/// partition that can grow without bound (a user's conversations, a group's members) are paged.
impl Db {
    async fn rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        what: impl Fn() -> String + Send,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| failed(what(), e))?
            .into_rows_result()
            .map_err(|e| failed(what(), e))?;
        result
            .rows::<R>()
            .map_err(|e| failed(what(), e))?
            .collect::<Result<_, _>>()
            .map_err(|e| failed(what(), e))
    }

    async fn row<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        what: impl Fn() -> String + Send,
    ) -> Result<Option<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| failed(what(), e))?
            .into_rows_result()
            .map_err(|e| failed(what(), e))?
            .maybe_first_row::<R>()
            .map_err(|e| failed(what(), e))
    }

    pub(super) async fn paged_rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        what: impl Fn() -> String + Send,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        self.session
            .execute_iter(statement.clone(), values)
            .await
            .map_err(|e| failed(what(), e))?
            .rows_stream::<R>()
            .map_err(|e| failed(what(), e))?
            .try_collect()
            .await
            .map_err(|e| failed(what(), e))
    }

    pub(super) async fn user(&self, user: i64) -> Result<Option<UserRow>, StoreError> {
        let what = || format!("reading user {user}");
        self.row(&self.statements.user, (user,), what).await
    }

    /// Everyone who registered `handle` (lower-cased), smallest id first.
    pub(super) async fn handle_claims(&self, handle: &str) -> Result<Vec<i64>, StoreError> {
        let what = || format!("reading handle `{handle}`");
        let rows: Vec<(i64,)> = self.rows(&self.statements.handle_claims, (handle,), what).await?;
        Ok(rows.into_iter().map(|(user,)| user).collect())
    }

    pub(super) async fn conversation(
        &self,
        conversation: i64,
    ) -> Result<Option<ConversationRow>, StoreError> {
        let what = || format!("reading conversation {conversation}");
        self.row(&self.statements.conversation, (conversation,), what).await
    }

    pub(super) async fn member(
        &self,
        conversation: i64,
        user: i64,
    ) -> Result<Option<MemberRow>, StoreError> {
        let what = || format!("checking whether {user} is a member of {conversation}");
        self.row(&self.statements.member, (conversation, user), what).await
    }

    /// Current members, in no particular order.
    pub(super) async fn members(&self, conversation: i64) -> Result<Vec<MemberRow>, StoreError> {
        let what = || format!("reading the members of {conversation}");
        self.paged_rows(&self.statements.members, (conversation,), what).await
    }

    /// The ids of a user's conversations.
    pub(super) async fn inbox(&self, user: i64) -> Result<Vec<i64>, StoreError> {
        let what = || format!("reading the conversations of {user}");
        let rows: Vec<(i64,)> = self.paged_rows(&self.statements.inbox, (user,), what).await?;
        Ok(rows.into_iter().map(|(conversation,)| conversation).collect())
    }

    pub(super) async fn direct_pair(&self, low: i64, high: i64) -> Result<Option<i64>, StoreError> {
        let what = || format!("reading the direct conversation of {low} and {high}");
        let row: Option<(i64,)> = self.row(&self.statements.direct_pair, (low, high), what).await?;
        Ok(row.map(|(conversation,)| conversation))
    }

    pub(super) async fn stats(&self, conversation: i64) -> Result<Option<StatsRow>, StoreError> {
        let what = || format!("reading the message stats of {conversation}");
        self.row(&self.statements.stats, (conversation,), what).await
    }

    /// The messages among `ids` that exist; all of `ids` must be in `bucket`.
    pub(super) async fn messages_by_id(
        &self,
        conversation: i64,
        bucket: i32,
        ids: &[i64],
    ) -> Result<Vec<MessageRow>, StoreError> {
        let what = || format!("reading messages of {conversation} in bucket {bucket}");
        self.rows(&self.statements.messages_by_id, (conversation, bucket, ids), what).await
    }

    /// Up to `limit` messages of `bucket` with ids up to `upper`, newest first.
    pub(super) async fn messages_up_to(
        &self,
        conversation: i64,
        bucket: i32,
        upper: i64,
        limit: i32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let what = || format!("paging messages of {conversation} in bucket {bucket}");
        let values = (conversation, bucket, upper, limit);
        self.rows(&self.statements.messages_up_to, values, what).await
    }

    /// The message a send with this `client_msg_id` was stored under.
    pub(super) async fn client_msg_id(
        &self,
        conversation: i64,
        sender: i64,
        client_msg_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let what = || format!("reading client id `{client_msg_id}` of {sender} in {conversation}");
        let values = (conversation, sender, client_msg_id);
        let row: Option<(i64,)> = self.row(&self.statements.client_msg_id, values, what).await?;
        Ok(row.map(|(message,)| message))
    }

    pub(super) async fn marker(
        &self,
        conversation: i64,
        user: i64,
    ) -> Result<Option<MarkerRow>, StoreError> {
        let what = || format!("reading the read marker of {user} in {conversation}");
        self.row(&self.statements.marker, (conversation, user), what).await
    }

    /// Every read marker of a conversation, former members' included.
    pub(super) async fn markers(&self, conversation: i64) -> Result<Vec<MarkerRow>, StoreError> {
        let what = || format!("reading the read markers of {conversation}");
        self.paged_rows(&self.statements.markers, (conversation,), what).await
    }

    pub(super) async fn location(
        &self,
        conversation: i64,
        user: i64,
    ) -> Result<Option<LocationRow>, StoreError> {
        let what = || format!("reading the location {user} shares with {conversation}");
        self.row(&self.statements.location, (conversation, user), what).await
    }

    /// Every location shared with a conversation, former members' included.
    pub(super) async fn locations(
        &self,
        conversation: i64,
    ) -> Result<Vec<LocationRow>, StoreError> {
        let what = || format!("reading the locations shared with {conversation}");
        self.paged_rows(&self.statements.locations, (conversation,), what).await
    }

    pub(super) async fn media(&self, media: i64) -> Result<Option<MediaRow>, StoreError> {
        let what = || format!("reading media {media}");
        self.row(&self.statements.media, (media,), what).await
    }

    pub(super) async fn last_seen(&self, user: i64) -> Result<Option<i64>, StoreError> {
        let what = || format!("reading when {user} was last seen");
        let row: Option<(i64,)> = self.row(&self.statements.last_seen, (user,), what).await?;
        Ok(row.map(|(seen,)| seen))
    }

    pub(super) async fn call(&self, call: i64) -> Result<Option<Call>, StoreError> {
        let what = || format!("reading call {call}");
        let row: Option<(String,)> = self.row(&self.statements.call, (call,), what).await?;
        row.map(|(record,)| serde_json::from_str(&record).map_err(|e| corrupt(what(), e)))
            .transpose()
    }

    /// The calls of `ids` that exist, in the order given.
    pub(super) async fn calls(&self, ids: Vec<i64>) -> Result<Vec<Call>, StoreError> {
        let calls = futures_util::future::try_join_all(ids.into_iter().map(|id| self.call(id)));
        Ok(calls.await?.into_iter().flatten().collect())
    }

    /// Up to `limit` of a user's calls older than `before`, newest first.
    pub(super) async fn call_history(
        &self,
        user: i64,
        before: i64,
        limit: i32,
    ) -> Result<Vec<i64>, StoreError> {
        let what = || format!("reading the call history of {user}");
        let values = (user, before, limit);
        let rows: Vec<(i64,)> = self.rows(&self.statements.call_history, values, what).await?;
        Ok(rows.into_iter().map(|(call,)| call).collect())
    }

    pub(super) async fn live_calls(&self, user: i64) -> Result<Vec<i64>, StoreError> {
        let what = || format!("reading the live calls of {user}");
        let rows: Vec<(i64,)> = self.paged_rows(&self.statements.live_calls, (user,), what).await?;
        Ok(rows.into_iter().map(|(call,)| call).collect())
    }

    pub(super) async fn live_rooms(&self, conversation: i64) -> Result<Vec<i64>, StoreError> {
        let what = || format!("reading the open rooms of {conversation}");
        let statement = &self.statements.live_rooms;
        let rows: Vec<(i64,)> = self.paged_rows(statement, (conversation,), what).await?;
        Ok(rows.into_iter().map(|(call,)| call).collect())
    }

    /// The checkpoint `consumer` has stored.
    pub(super) async fn checkpoint(&self, consumer: &str) -> Result<Cursor, StoreError> {
        let what = || format!("reading the checkpoint of `{consumer}`");
        // One row per log partition: bounded, so one response.
        let rows: Vec<CheckpointRow> =
            self.rows(&self.statements.checkpoint, (consumer,), what).await?;
        let mut cursor = Cursor::default();
        for row in rows {
            let what = || format!("checkpoint row {}.{}", row.topic, row.log_partition);
            let topic: Topic = row.topic.parse().map_err(|e| corrupt(what(), e))?;
            let partition = u32::try_from(row.log_partition)
                .map_err(|_| corrupt(what(), "negative partition"))?;
            cursor.set(topic, partition, count(row.next_offset, what())?);
        }
        Ok(cursor)
    }
}

// Each row as the projection rules see it (`store::rows`), and back.
impl UserRow {
    pub fn new(id: UserId, user: UserRecord) -> UserRow {
        UserRow {
            user_id: id.0,
            handle: user.handle,
            display_name: user.display_name,
            created_at: user.created_at,
            password_hash: user.password_hash,
        }
    }

    pub fn record(self) -> UserRecord {
        UserRecord {
            handle: self.handle,
            display_name: self.display_name,
            created_at: self.created_at,
            password_hash: self.password_hash,
        }
    }
}

impl ConversationRow {
    pub fn new(id: ConversationId, conversation: ConversationRecord) -> ConversationRow {
        ConversationRow {
            conversation_id: id.0,
            kind: ConversationRow::kind_name(conversation.kind).to_owned(),
            title: Sparse(conversation.title),
            created_by: Sparse(conversation.created_by.map(|user| user.0)),
            created_at: conversation.created_at,
        }
    }

    pub fn record(self) -> Result<ConversationRecord, StoreError> {
        Ok(ConversationRecord {
            kind: self.kind()?,
            title: self.title.0,
            created_by: self.created_by.0.map(UserId),
            created_at: self.created_at,
        })
    }
}

impl MemberRow {
    pub fn record(&self) -> Result<MemberRecord, StoreError> {
        let what = format_args!("join order of {} in {}", self.user_id, self.conversation_id);
        Ok(MemberRecord { order: count(self.join_order, what)? })
    }
}

impl StatsRow {
    pub fn record(&self) -> Result<StatsRecord, StoreError> {
        let what = format_args!("message count of {}", self.conversation_id);
        Ok(StatsRecord {
            message_count: count(self.message_count, what)?,
            last_message: Some(MessageId(self.last_message_id)),
        })
    }

    /// The row after a send, which `stats` counts: the bucket range grows to take in the
    /// bucket of the message sent.
    pub fn after_send(
        current: Option<&StatsRow>,
        conversation: ConversationId,
        stats: &StatsRecord,
    ) -> StatsRow {
        let last_message_id = stats.last_message.map_or(0, |message| message.0);
        let bucket = super::bucket(last_message_id);
        StatsRow {
            conversation_id: conversation.0,
            message_count: signed(stats.message_count),
            last_message_id,
            first_bucket: current.map_or(bucket, |row| row.first_bucket.min(bucket)),
            last_bucket: current.map_or(bucket, |row| row.last_bucket.max(bucket)),
        }
    }
}

impl MessageRow {
    /// The attachments of a deleted message are written as an empty list: leaving the column
    /// unset would keep the ones stored.
    pub fn new(conversation: ConversationId, id: MessageId, message: MessageRecord) -> MessageRow {
        let attachments: Vec<i64> = message.attachments.iter().map(|media| media.0).collect();
        MessageRow {
            conversation_id: conversation.0,
            bucket: super::bucket(id.0),
            message_id: id.0,
            sender: message.sender.0,
            client_msg_id: message.client_msg_id,
            body: message.body,
            reply_to: Sparse(message.reply_to.map(|reply| reply.0)),
            sent_at: message.sent_at,
            edited_at: Sparse(message.edited_at),
            deleted: message.deleted,
            seq: signed(message.seq),
            attachments: Sparse(Some(attachments).filter(|ids| message.deleted || !ids.is_empty())),
        }
    }

    pub fn record(self) -> Result<MessageRecord, StoreError> {
        Ok(MessageRecord {
            seq: count(self.seq, format_args!("seq of message {}", self.message_id))?,
            sender: UserId(self.sender),
            client_msg_id: self.client_msg_id,
            body: self.body,
            reply_to: self.reply_to.0.map(MessageId),
            sent_at: self.sent_at,
            edited_at: self.edited_at.0,
            deleted: self.deleted,
            attachments: self.attachments.0.unwrap_or_default().into_iter().map(MediaId).collect(),
        })
    }
}

impl MarkerRow {
    pub fn new(conversation: ConversationId, user: UserId, read: ReadRecord) -> MarkerRow {
        MarkerRow {
            conversation_id: conversation.0,
            user_id: user.0,
            message_id: read.message_id.0,
            seq: signed(read.seq),
            read_at: read.at,
        }
    }

    pub fn record(&self) -> Result<ReadRecord, StoreError> {
        let what = format_args!("read marker of {} in {}", self.user_id, self.conversation_id);
        Ok(ReadRecord {
            message_id: MessageId(self.message_id),
            seq: count(self.seq, what)?,
            at: self.read_at,
        })
    }
}

impl MediaRow {
    pub fn new(id: MediaId, media: MediaRecord) -> MediaRow {
        MediaRow {
            media_id: id.0,
            conversation_id: media.conversation_id.0,
            uploader: media.uploader.0,
            content_type: media.content_type,
            size: signed(media.size),
            file_name: Sparse(media.name),
            created_at: media.created_at,
            object_key: media.object_key,
        }
    }

    pub fn record(self) -> Result<MediaRecord, StoreError> {
        Ok(MediaRecord {
            conversation_id: ConversationId(self.conversation_id),
            uploader: UserId(self.uploader),
            size: count(self.size, format_args!("size of media {}", self.media_id))?,
            content_type: self.content_type,
            name: self.file_name.0,
            created_at: self.created_at,
            object_key: self.object_key,
        })
    }
}

impl LocationRow {
    pub fn new(
        conversation: ConversationId,
        user: UserId,
        location: LocationRecord,
    ) -> LocationRow {
        LocationRow {
            conversation_id: conversation.0,
            user_id: user.0,
            latitude: location.latitude,
            longitude: location.longitude,
            accuracy_m: location.accuracy_m,
            updated_at: location.updated_at,
            expires_at: location.expires_at,
            stopped: location.stopped,
            log_offset: signed(location.log_offset),
        }
    }

    pub fn record(&self) -> Result<LocationRecord, StoreError> {
        let what =
            format_args!("log offset of {}'s location in {}", self.user_id, self.conversation_id);
        Ok(LocationRecord {
            latitude: self.latitude,
            longitude: self.longitude,
            accuracy_m: self.accuracy_m,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
            stopped: self.stopped,
            log_offset: count(self.log_offset, what)?,
        })
    }
}

/// A count, offset or size as the `bigint` that holds it. Every one of them starts from a log
/// offset, an event's `i64` or a count of events, none of which reaches `i64::MAX`.
fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
