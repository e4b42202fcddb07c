//! Live locations: a member shares their position with a conversation for a while, moves it as
//! they go, and stops, or lets it run out. Each step is an event in the presence topic, keyed by
//! the sharer, which the fan-out pushes to every member and the projector folds into the last
//! known location of each member. The WebSocket ops and the locations query both come here.
//!
//! A share ends by itself at its `expires_at`, with no event to say so: the read models keep the
//! expiry, the query judges at the time it is asked whether a share is live, a move after it is
//! refused, and every push carries it so that clients stop showing the share on time.
//!
//! A move keeps the expiry of the share it moves, so it must see that share as it is now: a stop
//! sent a moment ago from another device must not be undone by a move that read the state from
//! before it. A move therefore first waits until the read models hold everything logged so far
//! in the sharer's presence partition. What remains is a move and a stop sent within the same
//! few milliseconds, where whichever the log holds last stands.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_ingest::{Ingest, Origin, now_ms};
use switchboard_projector::store::Location;
use switchboard_schemas::{ConversationId, LocationShared, Topic, UserId};

use crate::chat::{self, Accepted};
use crate::error::ApiError;
use crate::limits::{self, Limit};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    pub conversation_id: ConversationId,
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default)]
    pub accuracy_m: Option<f64>,
    /// How long to share for, in seconds.
    pub duration_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    pub conversation_id: ConversationId,
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default)]
    pub accuracy_m: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    pub conversation_id: ConversationId,
}

/// What a share or a move is answered with.
#[derive(Debug, Serialize)]
pub struct Sharing {
    pub token: String,
    /// When the share ends by itself.
    pub expires_at: i64,
}

/// A member's last known location as the query shows it.
#[derive(Debug, Serialize)]
pub struct Shown {
    #[serde(flatten)]
    location: Location,
    /// Neither stopped nor expired at the time of the query.
    live: bool,
}

/// Starts sharing, or restarts a share with a new position and expiry.
pub async fn share(
    state: &AppState,
    caller: UserId,
    trace: &str,
    request: ShareRequest,
) -> Result<Sharing, ApiError> {
    limits::check(state, Limit::Locations, &caller.to_string()).await?;
    Ingest::check_location(request.latitude, request.longitude, request.accuracy_m)?;
    let duration = duration_ms(state, request.duration_s)?;
    chat::ensure_member(state, caller, request.conversation_id).await?;
    let location = LocationShared {
        user_id: caller,
        conversation_id: request.conversation_id,
        latitude: request.latitude,
        longitude: request.longitude,
        accuracy_m: request.accuracy_m,
        expires_at: now_ms().saturating_add(duration),
    };
    append(state, trace, location).await
}

/// Moves a running share, which keeps its expiry.
pub async fn update(
    state: &AppState,
    caller: UserId,
    trace: &str,
    request: UpdateRequest,
) -> Result<Sharing, ApiError> {
    limits::check(state, Limit::Locations, &caller.to_string()).await?;
    Ingest::check_location(request.latitude, request.longitude, request.accuracy_m)?;
    chat::ensure_member(state, caller, request.conversation_id).await?;
    let Some(running) = running_share(state, caller, request.conversation_id).await? else {
        return Err(ApiError::not_sharing());
    };
    let location = LocationShared {
        user_id: caller,
        conversation_id: request.conversation_id,
        latitude: request.latitude,
        longitude: request.longitude,
        accuracy_m: request.accuracy_m,
        expires_at: running.expires_at,
    };
    append(state, trace, location).await
}

/// Stops sharing. Not rate-limited, and accepted whether or not a share is running: a client
/// making sure it shares nothing must never be refused.
pub async fn stop(
    state: &AppState,
    caller: UserId,
    trace: &str,
    conversation: ConversationId,
) -> Result<Accepted, ApiError> {
    chat::ensure_member(state, caller, conversation).await?;
    let origin = Origin::user(caller, trace);
    Ok(state.ingest.stop_location(&origin, caller, conversation).await?.into())
}

/// Every member's last known location, for a member.
pub async fn last_known(
    state: &AppState,
    caller: UserId,
    conversation: ConversationId,
) -> Result<Vec<Shown>, ApiError> {
    chat::ensure_member(state, caller, conversation).await?;
    let now = now_ms();
    let locations = state.store.locations(conversation).await?;
    Ok(locations
        .into_iter()
        .map(|location| Shown { live: location.live_at(now), location })
        .collect())
}

/// Stops the share a member removed from a conversation was still running there, so that the
/// remaining members' clients stop showing it and adding them back does not bring it back.
/// Returns once the read models show the stop, as conversation writes do.
pub async fn stop_after_removal(
    state: &AppState,
    origin: &Origin,
    conversation: ConversationId,
    removed: UserId,
) -> Result<(), ApiError> {
    if running_share(state, removed, conversation).await?.is_some() {
        let position = state.ingest.stop_location(origin, removed, conversation).await?;
        chat::wait_for_position(state, position).await?;
    }
    Ok(())
}

/// The share `user` is running in `conversation` now, seen after everything logged so far in
/// their presence partition (see the module docs).
async fn running_share(
    state: &AppState,
    user: UserId,
    conversation: ConversationId,
) -> Result<Option<Location>, ApiError> {
    chat::catch_up_with(state, Topic::Presence, &user.to_string()).await?;
    let now = now_ms();
    Ok(state.store.location(conversation, user).await?.filter(|location| location.live_at(now)))
}

async fn append(
    state: &AppState,
    trace: &str,
    location: LocationShared,
) -> Result<Sharing, ApiError> {
    let expires_at = location.expires_at;
    let origin = Origin::user(location.user_id, trace);
    let position = state.ingest.share_location(&origin, location).await?;
    Ok(Sharing { token: position.to_string(), expires_at })
}

/// A share's length in milliseconds, once it is within the configured bounds.
fn duration_ms(state: &AppState, seconds: u64) -> Result<i64, ApiError> {
    let config = &state.config;
    let (shortest, longest) = (config.min_location_duration.0, config.max_location_duration.0);
    let duration = Duration::from_secs(seconds);
    if duration < shortest || duration > longest {
        return Err(ApiError::invalid(format!(
            "duration_s must be {} to {} seconds",
            shortest.as_secs_f64().ceil(),
            longest.as_secs()
        )));
    }
    Ok(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}
