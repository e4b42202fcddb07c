//! `GET /v1/sync`: what changed for the caller since a resume token (see [`crate::sync`]).

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::extract::QueryParams;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::sync::{self, Delta, SyncRequest};

/// Unknown parameters are ignored: the query string may also carry the access token.
#[derive(Deserialize)]
pub struct SyncQuery {
    since: Option<String>,
    limit: Option<usize>,
}

pub async fn sync(
    State(state): State<AppState>,
    Caller(me): Caller,
    QueryParams(query): QueryParams<SyncQuery>,
) -> Result<Json<Delta>, ApiError> {
    let request = SyncRequest { since: query.since, limit: query.limit };
    Ok(Json(sync::sync(&state, me, request).await?))
}
