//! Message history with cursor paging, sending over HTTP, edits, deletes and read receipts.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use switchboard_projector::store::{Message, ReadMarker};
use switchboard_schemas::{ConversationId, MediaId, MessageId};

use super::extract::{After, Body, Params, QueryParams};
use crate::auth::Caller;
use crate::chat::{self, Accepted, SendRequest, Sent};
use crate::error::ApiError;
use crate::state::AppState;

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 100;

/// Unknown parameters are ignored: the query string may also carry the access token.
#[derive(Deserialize)]
pub struct HistoryQuery {
    /// Only messages older than this one.
    before: Option<MessageId>,
    limit: Option<usize>,
    /// A consistency token: answer once the read models include it.
    after: Option<String>,
}

#[derive(Serialize)]
pub struct Page {
    messages: Vec<Message>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<MessageId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    client_msg_id: String,
    body: String,
    #[serde(default)]
    reply_to: Option<MessageId>,
    #[serde(default)]
    attachments: Vec<MediaId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    body: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    message_id: MessageId,
}

#[derive(Serialize)]
pub struct Markers {
    markers: Vec<ReadMarker>,
}

pub async fn history(
    State(state): State<AppState>,
    Caller(me): Caller,
    Params(id): Params<ConversationId>,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> Result<Json<Page>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be 1 to {MAX_PAGE}")));
    }
    chat::wait_for(&state, query.after.as_deref()).await?;
    chat::ensure_member(&state, me, id).await?;
    // One extra row tells whether an older page exists.
    let mut messages = state.store.messages(id, query.before, limit + 1).await?;
    let next_before = (messages.len() > limit).then(|| {
        messages.truncate(limit);
        messages.last().map(|m| m.id)
    });
    Ok(Json(Page { messages, next_before: next_before.flatten() }))
}

pub async fn send(
    State(state): State<AppState>,
    Caller(me): Caller,
    Params(id): Params<ConversationId>,
    Body(message): Body<NewMessage>,
) -> Result<(StatusCode, Json<Sent>), ApiError> {
    let request = SendRequest {
        conversation_id: id,
        client_msg_id: message.client_msg_id,
        body: message.body,
        reply_to: message.reply_to,
        attachments: message.attachments,
    };
    let trace = uuid::Uuid::new_v4().to_string();
    let sent = chat::send(&state, me, &trace, request).await?;
    let status = if sent.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(sent)))
}

pub async fn edit(
    State(state): State<AppState>,
    Caller(me): Caller,
    Params((id, message)): Params<(ConversationId, MessageId)>,
    Body(edit): Body<Edit>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let trace = uuid::Uuid::new_v4().to_string();
    let accepted = chat::edit(&state, me, &trace, id, message, &edit.body).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

pub async fn delete(
    State(state): State<AppState>,
    Caller(me): Caller,
    Params((id, message)): Params<(ConversationId, MessageId)>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let trace = uuid::Uuid::new_v4().to_string();
    let accepted = chat::delete(&state, me, &trace, id, message).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

pub async fn mark_read(
    State(state): State<AppState>,
    Caller(me): Caller,
    Params(id): Params<ConversationId>,
    Body(read): Body<MarkRead>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let trace = uuid::Uuid::new_v4().to_string();
    let accepted = chat::mark_read(&state, me, &trace, id, read.message_id).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

pub async fn read_markers(
    State(state): State<AppState>,
    Caller(me): Caller,
    Params(id): Params<ConversationId>,
    QueryParams(after): QueryParams<After>,
) -> Result<Json<Markers>, ApiError> {
    chat::wait_for(&state, after.after.as_deref()).await?;
    chat::ensure_member(&state, me, id).await?;
    Ok(Json(Markers { markers: state.store.read_markers(id).await? }))
}
