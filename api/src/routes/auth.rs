//! Registering and logging in. Both count against the auth limit per client IP.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use switchboard_ingest::Origin;
use switchboard_projector::store::User;

use super::extract::Body;
use crate::auth::{Issued, hash_password, verify_password};
use crate::chat::wait_for_position;
use crate::error::ApiError;
use crate::limits::{self, Limit};
use crate::state::AppState;

/// Long enough for the registration to be projected, after which the store answers.
const HANDLE_CLAIM: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    handle: String,
    password: String,
    display_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    handle: String,
    password: String,
}

#[derive(Serialize)]
pub struct Session {
    user: User,
    #[serde(flatten)]
    token: Issued,
}

pub async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Body(request): Body<Register>,
) -> Result<(StatusCode, axum::Json<Session>), ApiError> {
    limits::check(&state, Limit::Auth, &peer.ip().to_string()).await?;
    if !(8..=128).contains(&request.password.chars().count()) {
        return Err(ApiError::invalid("password must be 8 to 128 characters"));
    }
    let handle = request.handle.to_lowercase();
    if state.store.user_by_handle(&handle).await?.is_some() {
        return Err(ApiError::conflict(format!("the handle `{handle}` is taken")));
    }
    // The claim keeps two registrations of one handle from both reaching the log (the store
    // only knows a handle once the first is projected).
    let claim = format!("handle:{handle}");
    match state.coordination.claim(&claim, "registering", HANDLE_CLAIM).await {
        Ok(None) => {}
        Ok(Some(_)) => return Err(ApiError::conflict(format!("the handle `{handle}` is taken"))),
        Err(error) => tracing::warn!(%error, "handle claim unavailable"),
    }
    let display_name = request.display_name.unwrap_or_else(|| request.handle.clone());
    let hash = hash_password(request.password).await?;
    let origin = Origin::system(uuid::Uuid::new_v4().to_string());
    let registered =
        state.ingest.register_user(&origin, &request.handle, &display_name, hash).await;
    let (user_id, position) = match registered {
        Ok(registered) => registered,
        Err(error) => {
            let _ = state.coordination.release_claims(&[&claim]).await;
            return Err(error.into());
        }
    };
    wait_for_position(&state, position).await?;
    // Should the claim have been unavailable, the log decides: the first registration wins.
    match state.store.user_by_handle(&handle).await? {
        Some(user) if user.id == user_id => {
            let token = state.tokens.issue(user.id);
            Ok((StatusCode::CREATED, axum::Json(Session { user, token })))
        }
        _ => Err(ApiError::conflict(format!("the handle `{handle}` is taken"))),
    }
}

pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Body(request): Body<Login>,
) -> Result<axum::Json<Session>, ApiError> {
    limits::check(&state, Limit::Auth, &peer.ip().to_string()).await?;
    let user = state
        .store
        .user_by_handle(&request.handle.to_lowercase())
        .await?
        .ok_or_else(ApiError::invalid_credentials)?;
    if !verify_password(request.password, user.password_hash.clone()).await {
        return Err(ApiError::invalid_credentials());
    }
    let token = state.tokens.issue(user.id);
    Ok(axum::Json(Session { user, token }))
}
