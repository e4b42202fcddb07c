//! The last known location of every member of a conversation.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use switchboard_schemas::ConversationId;

use super::extract::{After, Params, QueryParams};
use crate::auth::Caller;
use crate::chat;
use crate::error::ApiError;
use crate::locations::{self, Shown};
use crate::state::AppState;

#[derive(Serialize)]
pub struct Locations {
    locations: Vec<Shown>,
}

pub async fn list(
    State(state): State<AppState>,
    Caller(me): Caller,
    Params(id): Params<ConversationId>,
    QueryParams(after): QueryParams<After>,
) -> Result<Json<Locations>, ApiError> {
    chat::wait_for(&state, after.after.as_deref()).await?;
    Ok(Json(Locations { locations: locations::last_known(&state, me, id).await? }))
}
