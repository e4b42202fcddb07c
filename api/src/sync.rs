//! `sync`: what changed for a user since a resume token, as state to merge, for a client that
//! cannot resume (its token is older than its feed keeps) or does not hold a socket at all.
//!
//! While the user's feed still holds what followed the token, the delta is exact: the
//! conversations, messages, members and read markers the events since the token touched, each
//! as it stands now. Past that (or without a token) the read models do not say what changed
//! since when (an edit or a member leaving keeps no time of its own), so the answer is the whole
//! state, marked `full`: the client replaces what it holds rather than merging.
//!
//! Either way the answer is consistent as of its token: the read models are first brought up to
//! everything logged before the sync began, and everything after the returned token reaches the
//! client as events (or the next sync).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_ingest::log::Cursor;
use switchboard_projector::feed::Entry;
use switchboard_projector::store::{Call, Conversation, InboxEntry, Message, ReadMarker};
use switchboard_schemas::{ConversationId, MessageId, Topic, UserId};

use crate::error::ApiError;
use crate::hub::{Resume, ResumeToken};
use crate::state::AppState;

/// Changed messages per conversation unless the request says otherwise, and at most.
pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 100;

/// How many feed entries one read takes while collecting what changed.
const FEED_PAGE: usize = 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// The last resume token the client processed; none for everything.
    pub since: Option<String>,
    /// Most changed messages per conversation.
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct Delta {
    /// Where to resume (a socket) or sync (again) from.
    pub token: String,
    /// The whole state rather than what changed: replace, do not merge.
    pub full: bool,
    /// Conversations that changed (all of them when `full`), most recently active first.
    pub conversations: Vec<ConversationDelta>,
    /// Conversations the user was removed from since the token.
    pub left: Vec<ConversationId>,
    /// Calls the user is in or is being rung for, now.
    pub calls: Vec<Call>,
}

#[derive(Debug, Serialize)]
pub struct ConversationDelta {
    /// As it stands now: title, members, last message.
    pub conversation: Conversation,
    pub unread: u64,
    /// Messages sent, edited or deleted since the token (when `full`, the newest), newest
    /// first, as they stand now.
    pub messages: Vec<Message>,
    /// More such messages exist, older than the last one here: page back with the history
    /// route's `before`.
    pub more: bool,
    pub read_markers: Vec<ReadMarker>,
    /// Group call rooms open in it now.
    pub rooms: Vec<Call>,
}

/// What the events since a token touched.
#[derive(Default)]
struct Touched {
    conversations: BTreeSet<ConversationId>,
    messages: BTreeMap<ConversationId, BTreeSet<MessageId>>,
    left: BTreeSet<ConversationId>,
}

impl Touched {
    /// Notes what one feed entry is about. Entries are events the user was sent, as pushed.
    fn note(&mut self, user: UserId, entry: &Entry) {
        let Ok(frame) = serde_json::from_str::<Value>(&format!("{}}}", entry.frame)) else {
            return;
        };
        let data = &frame["data"];
        let id = |field: &str| data[field].as_str().and_then(|text| text.parse::<i64>().ok());
        let Some(conversation) = id("conversation_id").map(ConversationId) else { return };
        self.conversations.insert(conversation);
        match frame["type"].as_str().unwrap_or_default() {
            "message.sent" | "message.edited" | "message.deleted" => {
                if let Some(message) = id("message_id") {
                    self.messages.entry(conversation).or_default().insert(MessageId(message));
                }
            }
            "conversation.member_removed" if id("user_id") == Some(user.0) => {
                self.left.insert(conversation);
            }
            _ => {}
        }
    }
}

pub async fn sync(state: &AppState, user: UserId, request: SyncRequest) -> Result<Delta, ApiError> {
    let limit = request.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let from = request
        .since
        .as_deref()
        .map(str::parse::<Resume>)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("bad sync token: {e}")))?;
    let head = ResumeToken::from(state.feeds.head(user).await?);
    catch_up(state).await?;
    let touched = match from {
        Some(Resume::From(token)) => touched_since(state, user, token, head).await?,
        _ => None,
    };
    let inbox = state.store.inbox(user).await?;
    let calls = state.store.live_calls(user).await?;
    let (full, conversations, left) = match touched {
        Some(touched) => {
            let mut deltas = Vec::new();
            for entry in
                inbox.into_iter().filter(|e| touched.conversations.contains(&e.conversation.id))
            {
                let changed = touched.messages.get(&entry.conversation.id);
                deltas.push(changed_since(state, entry, changed, limit).await?);
            }
            let still_in: BTreeSet<_> = deltas.iter().map(|d| d.conversation.id).collect();
            let left = touched.left.into_iter().filter(|c| !still_in.contains(c)).collect();
            (false, deltas, left)
        }
        None => {
            let mut deltas = Vec::new();
            for entry in inbox {
                deltas.push(newest(state, entry, limit).await?);
            }
            (true, deltas, Vec::new())
        }
    };
    Ok(Delta { token: head.to_string(), full, conversations, left, calls })
}

/// Waits (bounded) until the read models hold everything logged so far.
async fn catch_up(state: &AppState) -> Result<(), ApiError> {
    let topics = [Topic::Conversations, Topic::Messages, Topic::Calls];
    let end = Cursor::end(state.ingest.log().as_ref(), &topics).await?;
    let caught_up = state.progress.wait_for_cursor(&end);
    tokio::time::timeout(state.config.consistency_timeout.0, caught_up).await.map_err(|_| {
        ApiError::not_caught_up("the read models are behind the log; sync again shortly")
    })
}

/// What the feed entries after `token` up to `head` touched; `None` when the feed no longer
/// holds them all (or the token is of another epoch).
async fn touched_since(
    state: &AppState,
    user: UserId,
    token: ResumeToken,
    head: ResumeToken,
) -> Result<Option<Touched>, ApiError> {
    if token.epoch != head.epoch || token.seq > head.seq {
        return Ok(None);
    }
    let mut touched = Touched::default();
    let mut last = token.seq;
    while last < head.seq {
        let page = state.feeds.read(user, last, FEED_PAGE).await?;
        match page.first() {
            Some(first) if first.seq == last + 1 => {}
            _ => return Ok(None),
        }
        for entry in page.iter().take_while(|entry| entry.seq <= head.seq) {
            touched.note(user, entry);
            last = entry.seq;
        }
    }
    Ok(Some(touched))
}

/// A conversation with the messages among `changed` as they stand now, newest first.
async fn changed_since(
    state: &AppState,
    entry: InboxEntry,
    changed: Option<&BTreeSet<MessageId>>,
    limit: usize,
) -> Result<ConversationDelta, ApiError> {
    let id = entry.conversation.id;
    let changed =
        changed.map(|ids| ids.iter().rev().copied().collect::<Vec<_>>()).unwrap_or_default();
    let mut messages = Vec::with_capacity(changed.len().min(limit));
    for message in changed.iter().take(limit) {
        if let Some(message) = state.store.message(id, *message).await? {
            messages.push(message);
        }
    }
    let more = changed.len() > limit;
    conversation_delta(state, entry, messages, more).await
}

/// A conversation with its newest messages.
async fn newest(
    state: &AppState,
    entry: InboxEntry,
    limit: usize,
) -> Result<ConversationDelta, ApiError> {
    // One extra row tells whether older ones exist.
    let mut messages = state.store.messages(entry.conversation.id, None, limit + 1).await?;
    let more = messages.len() > limit;
    messages.truncate(limit);
    conversation_delta(state, entry, messages, more).await
}

async fn conversation_delta(
    state: &AppState,
    entry: InboxEntry,
    messages: Vec<Message>,
    more: bool,
) -> Result<ConversationDelta, ApiError> {
    let id = entry.conversation.id;
    Ok(ConversationDelta {
        read_markers: state.store.read_markers(id).await?,
        rooms: state.store.live_rooms(id).await?,
        conversation: entry.conversation,
        unread: entry.unread,
        messages,
        more,
    })
}
