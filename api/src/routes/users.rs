//! Looking people up: yourself, by id, by handle.

use axum::Json;
use axum::extract::State;
use switchboard_projector::store::User;
use switchboard_schemas::UserId;

use super::extract::Params;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn me(State(state): State<AppState>, Caller(me): Caller) -> Result<Json<User>, ApiError> {
    by_id(State(state), Caller(me), Params(me)).await
}

pub async fn by_id(
    State(state): State<AppState>,
    _: Caller,
    Params(id): Params<UserId>,
) -> Result<Json<User>, ApiError> {
    state.store.user(id).await?.map(Json).ok_or_else(|| ApiError::not_found("user"))
}

pub async fn by_handle(
    State(state): State<AppState>,
    _: Caller,
    Params(handle): Params<String>,
) -> Result<Json<User>, ApiError> {
    let user = state.store.user_by_handle(&handle.to_lowercase()).await?;
    user.map(Json).ok_or_else(|| ApiError::not_found("user"))
}
