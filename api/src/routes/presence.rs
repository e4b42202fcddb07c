//! Who is online, for users who share a conversation with the caller.

use std::collections::HashSet;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use switchboard_schemas::UserId;

use super::extract::QueryParams;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

const MAX_USERS: usize = 200;

/// Unknown parameters are ignored: the query string may also carry the access token.
#[derive(Deserialize)]
pub struct Query {
    /// Comma-separated user ids.
    users: String,
}

#[derive(Serialize)]
pub struct Entry {
    user_id: UserId,
    /// `None` when the presence backend is unavailable.
    online: Option<bool>,
    last_seen: Option<i64>,
}

#[derive(Serialize)]
pub struct Report {
    presence: Vec<Entry>,
    /// True when online states could not be read (the presence backend is down).
    degraded: bool,
}

pub async fn status(
    State(state): State<AppState>,
    Caller(me): Caller,
    QueryParams(query): QueryParams<Query>,
) -> Result<Json<Report>, ApiError> {
    let requested = query
        .users
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim().parse().map_err(|_| ApiError::bad_request(format!("`{s}` is not a user id")))
        })
        .collect::<Result<Vec<UserId>, _>>()?;
    if requested.len() > MAX_USERS {
        return Err(ApiError::invalid(format!("at most {MAX_USERS} users per request")));
    }
    // Presence is visible only to people one shares a conversation with.
    let mut visible: HashSet<UserId> = HashSet::from([me]);
    for entry in state.store.inbox(me).await? {
        visible.extend(entry.conversation.members);
    }
    let users: Vec<UserId> = requested.into_iter().filter(|u| visible.contains(u)).collect();
    let online = state.presence.status(&users).await;
    let degraded = online.is_err();
    let online = online.unwrap_or_default();
    let mut presence = Vec::with_capacity(users.len());
    for user in users {
        presence.push(Entry {
            user_id: user,
            online: online.iter().find(|s| s.user_id == user).map(|s| s.online),
            last_seen: state.store.last_seen(user).await?,
        });
    }
    Ok(Json(Report { presence, degraded }))
}
