//! `/socket.io/`: the protocol of `/v1/ws` for Socket.IO clients (Socket.IO v5 over Engine.IO 4,
//! and v4 over Engine.IO 3 for older clients), over WebSocket or HTTP long-polling, with upgrade.
//! Engine.IO and Socket.IO themselves are socketioxide's; what is switchboard's is the same as on
//! `/v1/ws`: the checks before a socket is admitted (here), and the session behind it
//! ([`session`]), whose ops and pushes are those of `/v1/ws` as Socket.IO events.

mod session;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{ConnectInfo, Query};
use serde::Deserialize;
use serde_json::json;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::{SocketIo, TransportType};
use switchboard_schemas::UserId;
use tokio::sync::OwnedSemaphorePermit;

use crate::auth::header_token;
use crate::error::ApiError;
use crate::hub::Resume;
use crate::limits::{self, Limit};
use crate::state::AppState;
use crate::ws::HARD_FRAME_FACTOR;
use crate::ws::slots::Slot;

/// The `/socket.io/` endpoint, as a layer in front of the node's routes.
pub fn layer(state: &AppState) -> SocketIoLayer {
    let config = &state.config;
    let hard_limit = config.max_frame_bytes.saturating_mul(HARD_FRAME_FACTOR);
    let (layer, io) = SocketIo::builder()
        .ping_interval(config.ping_interval.0)
        .ping_timeout(config.idle_timeout.0)
        .transports([TransportType::Polling, TransportType::Websocket])
        .max_payload(hard_limit as u64)
        .ws_max_message_size(hard_limit)
        .ws_max_frame_size(hard_limit)
        .ws_read_buffer_size(512)
        .max_buffer_size(session::MAX_QUEUED_PACKETS)
        .with_state(state.clone())
        .build_layer();
    io.ns("/", session::connect.with(admit));
    layer
}

/// The handshake's `auth` payload; each field may be given as a query parameter instead.
#[derive(Default, Deserialize)]
struct Handshake {
    token: Option<String>,
    resume: Option<String>,
    device: Option<String>,
}

/// What a socket was admitted with, for its session to take once it connects.
struct Admitted {
    user: UserId,
    device: Option<String>,
    resume: Option<Resume>,
    places: (OwnedSemaphorePermit, Slot),
}

/// Hands [`Admitted`] from the admission to the connection (socket extensions must be `Clone`).
#[derive(Clone)]
struct Admission(Arc<Mutex<Option<Admitted>>>);

impl Admission {
    fn take(&self) -> Option<Admitted> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// A refused connection: the client's `connect_error` carries the error body, as JSON, in its
/// `message`.
struct Refusal(ApiError);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&json!(self.0.body()).to_string())
    }
}

/// The checks of `/v1/ws` before a socket is served: the access token, the resume token, the
/// rate limits on opening sockets and the caps on open ones.
async fn admit(
    socket: SocketRef,
    State(state): State<AppState>,
    TryData(auth): TryData<Handshake>,
) -> Result<(), Refusal> {
    let parts = socket.req_parts();
    let Query(query) = Query::<Handshake>::try_from_uri(&parts.uri)
        .map_err(|rejection| Refusal(ApiError::bad_request(rejection.body_text())))?;
    // Engine.IO 3 clients have no `auth` payload: everything comes in the query.
    let auth = auth.unwrap_or_default();
    let token = auth
        .token
        .or_else(|| header_token(parts).map(str::to_owned))
        .or(query.token)
        .ok_or_else(|| Refusal(ApiError::unauthorized("an access token is required")))?;
    let user = state.tokens.verify(&token).map_err(Refusal)?;
    let resume = auth
        .resume
        .or(query.resume)
        .map(|token| token.parse::<Resume>())
        .transpose()
        .map_err(|e| Refusal(ApiError::bad_request(format!("bad resume token: {e}"))))?;
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        let peer = peer.ip().to_string();
        limits::check(&state, Limit::SocketsFromIp, &peer).await.map_err(Refusal)?;
    }
    limits::check(&state, Limit::Sockets, &user.to_string()).await.map_err(Refusal)?;
    let max_per_user = state.config.max_sockets_per_user;
    let slot = state
        .user_sockets
        .take(user, max_per_user)
        .ok_or_else(|| Refusal(ApiError::too_many_sockets(max_per_user)))?;
    let permit = state
        .connections
        .clone()
        .try_acquire_owned()
        .map_err(|_| Refusal(ApiError::too_many_connections()))?;
    let device = auth.device.or(query.device);
    let admitted = Admitted { user, device, resume, places: (permit, slot) };
    socket.extensions.insert(Admission(Arc::new(Mutex::new(Some(admitted)))));
    Ok(())
}
