//! Call history, the calls live now, and one call.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use switchboard_projector::store::{Call, CallKind};
use switchboard_schemas::CallId;

use super::extract::{After, Params, QueryParams};
use crate::auth::Caller;
use crate::chat;
use crate::error::ApiError;
use crate::state::AppState;

const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;

/// Unknown parameters are ignored: the query string may also carry the access token.
#[derive(Deserialize)]
pub struct HistoryQuery {
    /// Only calls older than this one.
    before: Option<CallId>,
    limit: Option<usize>,
    /// A consistency token: answer once the read models include it.
    after: Option<String>,
}

#[derive(Serialize)]
pub struct History {
    calls: Vec<Call>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<CallId>,
}

#[derive(Serialize)]
pub struct Active {
    /// Calls the caller is in or being rung for.
    calls: Vec<Call>,
    /// Rooms open in the caller's conversations, joined or not.
    rooms: Vec<Call>,
}

pub async fn history(
    State(state): State<AppState>,
    Caller(me): Caller,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> Result<Json<History>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be 1 to {MAX_PAGE}")));
    }
    chat::wait_for(&state, query.after.as_deref()).await?;
    // One extra row tells whether an older page exists.
    let mut calls = state.store.call_history(me, query.before, limit + 1).await?;
    let next_before = (calls.len() > limit).then(|| calls[limit - 1].id);
    calls.truncate(limit);
    Ok(Json(History { calls, next_before }))
}

pub async fn active(
    State(state): State<AppState>,
    Caller(me): Caller,
    QueryParams(query): QueryParams<After>,
) -> Result<Json<Active>, ApiError> {
    chat::wait_for(&state, query.after.as_deref()).await?;
    let calls = state.store.live_calls(me).await?;
    let mut rooms = Vec::new();
    for entry in state.store.inbox(me).await? {
        rooms.extend(state.store.live_rooms(entry.conversation.id).await?);
    }
    Ok(Json(Active { calls, rooms }))
}

/// A call the caller was part of, or a room of one of their conversations.
pub async fn get(
    State(state): State<AppState>,
    Caller(me): Caller,
    Params(id): Params<CallId>,
    QueryParams(query): QueryParams<After>,
) -> Result<Json<Call>, ApiError> {
    chat::wait_for(&state, query.after.as_deref()).await?;
    let call = state.store.call(id).await?.ok_or_else(|| ApiError::not_found("call"))?;
    let visible = match call.conversation_id {
        _ if call.involved.contains(&me) => true,
        Some(conversation) if call.kind == CallKind::Room => {
            state.store.is_member(conversation, me).await?
        }
        _ => false,
    };
    match visible {
        true => Ok(Json(call)),
        false => Err(ApiError::not_found("call")),
    }
}
