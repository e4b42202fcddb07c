//! `/v1/ws`: the WebSocket endpoint. Authentication, the rate limits on opening sockets and the
//! caps on open ones are checked before the upgrade, so a refused client gets a typed JSON error
//! rather than a dropped socket.

pub(crate) mod ops;
pub(crate) mod protocol;
pub(crate) mod session;
pub(crate) mod slots;

use std::net::SocketAddr;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::response::Response;
use serde::Deserialize;

use crate::auth::LinkCaller;
use crate::error::ApiError;
use crate::hub::Resume;
use crate::limits::{self, Limit};
use crate::state::AppState;

/// A hard cap, well above the configured frame limit: frames between the two get an error
/// reply and the socket stays open; past it, the socket is closed with code 1009.
pub(crate) const HARD_FRAME_FACTOR: usize = 64;

#[derive(Deserialize)]
pub struct Connect {
    /// A resume token from a previous connection: what was missed since is replayed first.
    resume: Option<String>,
    /// A free-form device label, recorded with the session.
    device: Option<String>,
}

pub async fn upgrade(
    State(state): State<AppState>,
    LinkCaller(user): LinkCaller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(connect): Query<Connect>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|rejection| {
        ApiError::bad_request(format!("not a WebSocket upgrade: {}", rejection.body_text()))
    })?;
    let resume = connect
        .resume
        .map(|token| token.parse::<Resume>())
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("bad resume token: {e}")))?;
    limits::check(&state, Limit::SocketsFromIp, &peer.ip().to_string()).await?;
    limits::check(&state, Limit::Sockets, &user.to_string()).await?;
    let max_per_user = state.config.max_sockets_per_user;
    let slot = state
        .user_sockets
        .take(user, max_per_user)
        .ok_or_else(|| ApiError::too_many_sockets(max_per_user))?;
    let permit = state
        .connections
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::too_many_connections())?;
    let hard_limit = state.config.max_frame_bytes.saturating_mul(HARD_FRAME_FACTOR);
    // Every socket holds its read buffer for as long as it is open, idle or not. Client frames
    // are small (an op is a few hundred bytes), so 512 bytes still takes one or two per read and
    // costs an idle socket 3.5 KiB less than the default 4 KiB; a larger frame takes more reads.
    Ok(ws
        .read_buffer_size(512)
        .write_buffer_size(8 * 1024)
        .max_frame_size(hard_limit)
        .max_message_size(hard_limit)
        .on_upgrade(move |socket| {
            session::serve(state, user, connect.device, resume, (permit, slot), socket)
        }))
}
