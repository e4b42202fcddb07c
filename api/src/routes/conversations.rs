//! Conversations and their members. Writes answer once the read models show them, so a client
//! can use the conversation straight away.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use switchboard_ingest::Origin;
use switchboard_projector::store::{Conversation, InboxEntry};
use switchboard_schemas::{ConversationId, ConversationKind, Position, Topic, UserId};

use super::extract::{After, Body, Params, QueryParams};
use crate::auth::Caller;
use crate::chat::{self, Accepted, member_conversation, wait_for_position};
use crate::error::ApiError;
use crate::limits::{self, Limit};
use crate::locations;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Create {
    Direct { user_id: UserId },
    Group { title: String, members: Vec<UserId> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    user_id: UserId,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    title: String,
}

#[derive(Serialize)]
pub struct Written {
    conversation: Conversation,
    token: String,
}

#[derive(Serialize)]
pub struct Inbox {
    conversations: Vec<InboxEntry>,
}

pub async fn list(
    State(state): State<AppState>,
    Caller(me): Caller,
    QueryParams(after): QueryParams<After>,
) -> Result<Json<Inbox>, ApiError> {
    chat::wait_for(&state, after.after.as_deref()).await?;
    Ok(Json(Inbox { conversations: state.store.inbox(me).await? }))
}

pub async fn get(
    State(state): State<AppState>,
    Caller(me): Caller,
    Params(id): Params<ConversationId>,
    QueryParams(after): QueryParams<After>,
) -> Result<Json<Conversation>, ApiError> {
    chat::wait_for(&state, after.after.as_deref()).await?;
    member_conversation(&state, me, id).await.map(Json)
}

pub async fn create(
    State(state): State<AppState>,
    Caller(me): Caller,
    Body(request): Body<Create>,
) -> Result<(StatusCode, Json<Written>), ApiError> {
    let origin = Origin::user(me, uuid::Uuid::new_v4().to_string());
    let (kind, title, members) = match request {
        Create::Direct { user_id } => {
            if user_id == me {
                return Err(ApiError::invalid("a direct conversation needs another user"));
            }
            existing_user(&state, user_id).await?;
            if let Some(id) = state.store.direct_conversation(me, user_id).await? {
                let conversation = member_conversation(&state, me, id).await?;
                let token = chat::applied_token(&state, Topic::Conversations, &id.to_string());
                return Ok((StatusCode::OK, Json(Written { conversation, token })));
            }
            (ConversationKind::Direct, None, vec![me, user_id])
        }
        Create::Group { title, members } => {
            limits::check(&state, Limit::Strict, &me.to_string()).await?;
            for &member in &members {
                existing_user(&state, member).await?;
            }
            (ConversationKind::Group, Some(title), std::iter::once(me).chain(members).collect())
        }
    };
    let (id, position) =
        state.ingest.create_conversation(&origin, kind, title.as_deref(), members).await?;
    let written = written(&state, me, id, position).await?;
    Ok((StatusCode::CREATED, Json(written)))
}

pub async fn rename(
    State(state): State<AppState>,
    Caller(me): Caller,
    Params(id): Params<ConversationId>,
    Body(request): Body<Rename>,
) -> Result<Json<Written>, ApiError> {
    group_of(&state, me, id).await?;
    limits::check(&state, Limit::Strict, &me.to_string()).await?;
    let origin = Origin::user(me, uuid::Uuid::new_v4().to_string());
    let position = state.ingest.rename(&origin, id, &request.title).await?;
    written(&state, me, id, position).await.map(Json)
}

pub async fn add_member(
    State(state): State<AppState>,
    Caller(me): Caller,
    Params(id): Params<ConversationId>,
    Body(request): Body<AddMember>,
) -> Result<Json<Written>, ApiError> {
    let conversation = group_of(&state, me, id).await?;
    limits::check(&state, Limit::Strict, &me.to_string()).await?;
    existing_user(&state, request.user_id).await?;
    if conversation.members.contains(&request.user_id) {
        return Err(ApiError::conflict("the user is already a member"));
    }
    if conversation.members.len() >= state.config.max_group_members {
        return Err(ApiError::invalid(format!(
            "a group has at most {} members",
            state.config.max_group_members
        )));
    }
    let origin = Origin::user(me, uuid::Uuid::new_v4().to_string());
    let position = state.ingest.add_member(&origin, id, request.user_id).await?;
    written(&state, me, id, position).await.map(Json)
}

/// Any member may remove themselves (leave); removing others is for members too, as in the
/// groups this replaces — there are no admin roles yet. A location the removed member was
/// sharing with the group stops with the removal.
pub async fn remove_member(
    State(state): State<AppState>,
    Caller(me): Caller,
    Params((id, user_id)): Params<(ConversationId, UserId)>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let conversation = group_of(&state, me, id).await?;
    if !conversation.members.contains(&user_id) {
        return Err(ApiError::not_found("member"));
    }
    if user_id != me {
        limits::check(&state, Limit::Strict, &me.to_string()).await?;
    }
    let origin = Origin::user(me, uuid::Uuid::new_v4().to_string());
    let position = state.ingest.remove_member(&origin, id, user_id).await?;
    wait_for_position(&state, position).await?;
    // The removal stands either way; the locations query leaves former members out regardless.
    if let Err(error) = locations::stop_after_removal(&state, &origin, id, user_id).await {
        let (code, message) = (error.code, &error.message);
        tracing::warn!(code, %message, "a removed member's location was not stopped");
    }
    Ok((StatusCode::OK, Json(position.into())))
}

async fn group_of(
    state: &AppState,
    me: UserId,
    id: ConversationId,
) -> Result<Conversation, ApiError> {
    let conversation = member_conversation(state, me, id).await?;
    if conversation.kind != ConversationKind::Group {
        return Err(ApiError::invalid("only group conversations change members or title"));
    }
    Ok(conversation)
}

async fn existing_user(state: &AppState, id: UserId) -> Result<(), ApiError> {
    match state.store.user(id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("user {id}"))),
    }
}

async fn written(
    state: &AppState,
    me: UserId,
    id: ConversationId,
    position: Position,
) -> Result<Written, ApiError> {
    wait_for_position(state, position).await?;
    let conversation = state
        .store
        .conversation(id)
        .await?
        .filter(|c| c.members.contains(&me))
        .ok_or_else(|| ApiError::not_found("conversation"))?;
    Ok(Written { conversation, token: position.to_string() })
}
