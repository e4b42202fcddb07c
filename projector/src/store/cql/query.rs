//! Reads of the CQL read models, assembled into the model types.
//!
//! Unlike the embedded store, an answer that reads several rows does not come from one snapshot:
//! CQL has none. A conversation read while a batch is being applied may show a message count one
//! write ahead of its last message, which the next read puts right; every row is itself always
//! whole. The reads an answer needs are issued concurrently where one does not depend on another.

use std::cmp::Reverse;
use std::collections::HashMap;

use futures_util::{StreamExt, TryStreamExt, stream};
use switchboard_schemas::{CallId, ConversationId, MediaId, MessageId, UserId};

use super::bucket;
use super::rows::{Db, LocationRow, MarkerRow, MediaRow, UserRow, count};
use crate::store::rules::handle_key;
use crate::store::{
    Call, Conversation, InboxEntry, Location, Media, Message, ReadMarker, StoreError, User,
};

/// How many of an inbox's conversations are read at once.
const INBOX_READS_IN_FLIGHT: usize = 32;

pub(super) async fn user(db: &Db, id: UserId) -> Result<Option<User>, StoreError> {
    Ok(db.user(id.0).await?.map(UserRow::into_user))
}

pub(super) async fn user_by_handle(db: &Db, handle: &str) -> Result<Option<User>, StoreError> {
    match db.handle_claims(&handle_key(handle)).await?.first() {
        Some(&holder) => user(db, UserId(holder)).await,
        None => Ok(None),
    }
}

pub(super) async fn conversation(
    db: &Db,
    id: ConversationId,
) -> Result<Option<Conversation>, StoreError> {
    let (row, members, stats) =
        tokio::try_join!(db.conversation(id.0), members(db, id), db.stats(id.0))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (message_count, last_message) = match stats {
        Some(stats) => {
            let last_message = message(db, id, MessageId(stats.last_message_id)).await?;
            (count(stats.message_count, format_args!("message count of {id}"))?, last_message)
        }
        None => (0, None),
    };
    Ok(Some(Conversation {
        id,
        kind: row.kind()?,
        title: row.title.0,
        created_by: row.created_by.0.map(UserId),
        created_at: row.created_at,
        members,
        message_count,
        last_message,
    }))
}

/// Current members in join order.
async fn members(db: &Db, id: ConversationId) -> Result<Vec<UserId>, StoreError> {
    let mut members = db.members(id.0).await?;
    members.sort_unstable_by_key(|member| (member.join_order, member.user_id));
    Ok(members.into_iter().map(|member| UserId(member.user_id)).collect())
}

pub(super) async fn direct_conversation(
    db: &Db,
    a: UserId,
    b: UserId,
) -> Result<Option<ConversationId>, StoreError> {
    Ok(db.direct_pair(a.0.min(b.0), a.0.max(b.0)).await?.map(ConversationId))
}

/// Read at query time, like the embedded store's, rather than kept as an index ordered by
/// activity, which every message would have to rewrite for every member.
pub(super) async fn inbox(db: &Db, user: UserId) -> Result<Vec<InboxEntry>, StoreError> {
    let ids = db.inbox(user.0).await?;
    let entries: Vec<Option<InboxEntry>> = stream::iter(ids)
        .map(|id| inbox_entry(db, user, ConversationId(id)))
        .buffer_unordered(INBOX_READS_IN_FLIGHT)
        .try_collect()
        .await?;
    let mut entries: Vec<InboxEntry> = entries.into_iter().flatten().collect();
    entries.sort_by_key(|entry| {
        let conversation = &entry.conversation;
        let active =
            conversation.last_message.as_ref().map_or(conversation.created_at, |m| m.sent_at);
        Reverse((active, conversation.id))
    });
    Ok(entries)
}

async fn inbox_entry(
    db: &Db,
    user: UserId,
    id: ConversationId,
) -> Result<Option<InboxEntry>, StoreError> {
    let (conversation, marker) = tokio::try_join!(conversation(db, id), db.marker(id.0, user.0))?;
    let Some(conversation) = conversation else {
        return Ok(None);
    };
    let read = match marker {
        Some(marker) => count(marker.seq, format_args!("read marker of {user} in {id}"))?,
        None => 0,
    };
    let unread = conversation.message_count.saturating_sub(read);
    Ok(Some(InboxEntry { conversation, unread }))
}

/// Walks the conversation's buckets downwards from the one holding `before` (or the newest),
/// each bucket a partition read newest first, until the page is full or the oldest bucket with
/// a message has been read.
pub(super) async fn messages(
    db: &Db,
    conversation: ConversationId,
    before: Option<MessageId>,
    limit: usize,
) -> Result<Vec<Message>, StoreError> {
    // "Older than `before`" is "at most `before - 1`", which also covers the newest page with
    // `i64::MAX` as the bound.
    let upper = match before {
        Some(before) => match before.0.checked_sub(1) {
            Some(upper) => upper,
            None => return Ok(Vec::new()),
        },
        None => i64::MAX,
    };
    if limit == 0 {
        return Ok(Vec::new());
    }
    let Some(stats) = db.stats(conversation.0).await? else {
        return Ok(Vec::new());
    };
    let mut page = Vec::new();
    let newest = stats.last_bucket.min(bucket(upper));
    for bucket in (stats.first_bucket..=newest).rev() {
        let wanted = i32::try_from(limit - page.len()).unwrap_or(i32::MAX);
        for row in db.messages_up_to(conversation.0, bucket, upper, wanted).await? {
            page.push(row.into_message()?);
        }
        if page.len() >= limit {
            break;
        }
    }
    Ok(page)
}

pub(super) async fn message(
    db: &Db,
    conversation: ConversationId,
    id: MessageId,
) -> Result<Option<Message>, StoreError> {
    let mut rows = db.messages_by_id(conversation.0, bucket(id.0), &[id.0]).await?;
    rows.pop().map(|row| row.into_message()).transpose()
}

pub(super) async fn message_by_client_id(
    db: &Db,
    conversation: ConversationId,
    sender: UserId,
    client_msg_id: &str,
) -> Result<Option<Message>, StoreError> {
    match db.client_msg_id(conversation.0, sender.0, client_msg_id).await? {
        Some(id) => message(db, conversation, MessageId(id)).await,
        None => Ok(None),
    }
}

/// The markers of current members, in join order; members who have read nothing have none.
pub(super) async fn read_markers(
    db: &Db,
    conversation: ConversationId,
) -> Result<Vec<ReadMarker>, StoreError> {
    let (members, markers) =
        tokio::try_join!(members(db, conversation), db.markers(conversation.0))?;
    let mut markers: HashMap<i64, MarkerRow> =
        markers.into_iter().map(|marker| (marker.user_id, marker)).collect();
    Ok(members
        .into_iter()
        .filter_map(|user| {
            markers.remove(&user.0).map(|marker| ReadMarker {
                user_id: user,
                message_id: MessageId(marker.message_id),
                at: marker.read_at,
            })
        })
        .collect())
}

pub(super) async fn location(
    db: &Db,
    conversation: ConversationId,
    user: UserId,
) -> Result<Option<Location>, StoreError> {
    db.location(conversation.0, user.0).await?.map(LocationRow::into_location).transpose()
}

/// The locations of current members, in join order.
pub(super) async fn locations(
    db: &Db,
    conversation: ConversationId,
) -> Result<Vec<Location>, StoreError> {
    let (members, locations) =
        tokio::try_join!(members(db, conversation), db.locations(conversation.0))?;
    let mut locations: HashMap<i64, LocationRow> =
        locations.into_iter().map(|row| (row.user_id, row)).collect();
    members
        .into_iter()
        .filter_map(|user| locations.remove(&user.0).map(LocationRow::into_location))
        .collect()
}

pub(super) async fn media(db: &Db, id: MediaId) -> Result<Option<Media>, StoreError> {
    db.media(id.0).await?.map(MediaRow::into_media).transpose()
}

pub(super) async fn last_seen(db: &Db, user: UserId) -> Result<Option<i64>, StoreError> {
    db.last_seen(user.0).await
}

pub(super) async fn call_history(
    db: &Db,
    user: UserId,
    before: Option<CallId>,
    limit: usize,
) -> Result<Vec<Call>, StoreError> {
    let before = before.map_or(i64::MAX, |call| call.0);
    let limit = i32::try_from(limit).unwrap_or(i32::MAX);
    db.calls(db.call_history(user.0, before, limit).await?).await
}
