//! The CQL read models in the form of `store::dump`: each table read whole, each row turned back
//! into the row the rules wrote. A handle and a direct pair print their holder only, the
//! smallest of the rows kept for them (see `fold.rs`).

use std::collections::BTreeMap;

use scylla::deserialize::row::DeserializeRow;
use switchboard_schemas::{ConversationId, MediaId, MessageId, UserId};

use super::error::failed;
use super::rows::{
    ConversationRow, Db, LocationRow, MarkerRow, MediaRow, MemberRow, MessageRow, StatsRow, UserRow,
};
use crate::store::StoreError;
use crate::store::calls::Call;
use crate::store::dump::{Dump, key};

const CONVERSATIONS: &str =
    "SELECT conversation_id, kind, title, created_by, created_at FROM conversations";

pub(super) async fn dump(db: &Db) -> Result<String, StoreError> {
    let mut dump = Dump::default();
    for row in all::<UserRow>(db, "SELECT * FROM users").await? {
        dump.row("users", row.user_id, &row.record())?;
    }
    let mut holders = BTreeMap::new();
    for (handle, user) in all::<(String, i64)>(db, "SELECT handle, user_id FROM handles").await? {
        holders
            .entry(handle)
            .and_modify(|holder: &mut i64| *holder = user.min(*holder))
            .or_insert(user);
    }
    for (handle, holder) in holders {
        dump.row("handles", handle, &UserId(holder))?;
    }
    for row in all::<ConversationRow>(db, CONVERSATIONS).await? {
        dump.row("conversations", row.conversation_id, &row.record()?)?;
    }
    for row in all::<MemberRow>(db, "SELECT * FROM members").await? {
        dump.row("members", key(&[row.conversation_id, row.user_id]), &row.record()?)?;
    }
    let inboxes = "SELECT user_id, conversation_id FROM conversations_by_user";
    for (user, conversation) in all::<(i64, i64)>(db, inboxes).await? {
        dump.row("memberships", key(&[user, conversation]), &())?;
    }
    for row in all::<StatsRow>(db, "SELECT * FROM conversation_stats").await? {
        dump.row("stats", row.conversation_id, &row.record()?)?;
    }
    for row in all::<MessageRow>(db, "SELECT * FROM messages").await? {
        let message_key = key(&[row.conversation_id, row.message_id]);
        dump.row("messages", message_key, &row.record()?)?;
    }
    let client_ids =
        "SELECT conversation_id, sender, client_msg_id, message_id FROM client_msg_ids";
    for (conversation, sender, client_msg_id, message) in
        all::<(i64, i64, String, i64)>(db, client_ids).await?
    {
        let client_key = format!("{}/{client_msg_id}", key(&[conversation, sender]));
        dump.row("client_ids", client_key, &MessageId(message))?;
    }
    let mut pairs = BTreeMap::new();
    let directs = "SELECT user_low, user_high, conversation_id FROM direct_pairs";
    for (low, high, conversation) in all::<(i64, i64, i64)>(db, directs).await? {
        pairs
            .entry((low, high))
            .and_modify(|holder: &mut i64| *holder = conversation.min(*holder))
            .or_insert(conversation);
    }
    for ((low, high), conversation) in pairs {
        dump.row("directs", key(&[low, high]), &ConversationId(conversation))?;
    }
    for row in all::<MarkerRow>(db, "SELECT * FROM read_markers").await? {
        dump.row("reads", key(&[row.conversation_id, row.user_id]), &row.record()?)?;
    }
    for (user, seen) in all::<(i64, i64)>(db, "SELECT user_id, seen_at FROM last_seen").await? {
        dump.row("last_seen", user, &seen)?;
    }
    for (id, record) in all::<(i64, String)>(db, "SELECT call_id, record FROM calls").await? {
        let call: Call = serde_json::from_str(&record)
            .map_err(|e| StoreError::Storage(format!("dumping call {id}: {e}")))?;
        dump.row("calls", id, &call)?;
    }
    let indexes = [
        ("call_history", "SELECT user_id, call_id FROM calls_by_user"),
        ("live_calls", "SELECT user_id, call_id FROM live_calls_by_user"),
        ("live_rooms", "SELECT conversation_id, call_id FROM live_rooms_by_conversation"),
    ];
    for (table, cql) in indexes {
        for (owner, call) in all::<(i64, i64)>(db, cql).await? {
            dump.row(table, key(&[owner, call]), &())?;
        }
    }
    for row in all::<LocationRow>(db, "SELECT * FROM locations").await? {
        dump.row("locations", key(&[row.conversation_id, row.user_id]), &row.record()?)?;
    }
    for row in all::<MediaRow>(db, "SELECT * FROM media").await? {
        dump.row("media", MediaId(row.media_id), &row.record()?)?;
    }
    Ok(dump.finish())
}

/// Every row a query over a whole table returns, read page by page.
async fn all<R>(db: &Db, cql: &str) -> Result<Vec<R>, StoreError>
where
    R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
{
    let what = || format!("dumping: {cql}");
    let statement = db.session.prepare(cql).await.map_err(|e| failed(what(), e))?;
    db.paged_rows(&statement, (), what).await
}
