//! The HTTP surface: routes under `/v1`, `/socket.io/`, the web app at `/`, health and metrics,
//! the schema registry, and the middleware every request passes through (timeout, limits, metrics).

mod auth;
mod calls;
mod conversations;
mod extract;
mod health;
mod locations;
mod media;
mod messages;
mod presence;
mod registry;
mod sync;
mod users;
mod web_app;

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use serde::de::DeserializeOwned;

use crate::auth::presented_token;
use crate::error::ApiError;
use crate::limits::{self, Limit};
use crate::state::AppState;
use crate::{description, socketio, ws};

/// Reads `body` as every route that takes a JSON body reads it (see [`crate::fuzzing`]).
pub(crate) fn read_every_body(body: &[u8]) {
    fn read<T: DeserializeOwned>(body: &[u8]) {
        let _ = extract::Body::<T>::read(body);
    }
    read::<auth::Register>(body);
    read::<auth::Login>(body);
    read::<conversations::Create>(body);
    read::<conversations::Rename>(body);
    read::<conversations::AddMember>(body);
    read::<messages::NewMessage>(body);
    read::<messages::Edit>(body);
    read::<messages::MarkRead>(body);
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/users/me", get(users::me))
        .route("/users/by-handle/{handle}", get(users::by_handle))
        .route("/users/{id}", get(users::by_id))
        .route("/conversations", get(conversations::list).post(conversations::create))
        .route("/conversations/{id}", get(conversations::get).patch(conversations::rename))
        .route("/conversations/{id}/members", post(conversations::add_member))
        .route("/conversations/{id}/members/{user_id}", delete(conversations::remove_member))
        .route("/conversations/{id}/messages", get(messages::history).post(messages::send))
        .route(
            "/conversations/{id}/messages/{message_id}",
            patch(messages::edit).delete(messages::delete),
        )
        .route("/conversations/{id}/read", get(messages::read_markers).post(messages::mark_read))
        .route("/conversations/{id}/locations", get(locations::list))
        .route("/presence", get(presence::status))
        .route("/calls", get(calls::history))
        .route("/calls/active", get(calls::active))
        .route("/calls/{id}", get(calls::get))
        .route("/sync", get(sync::sync))
        .route_layer(middleware::from_fn_with_state(state.clone(), general_limit));
    // Downloads are not rate-limited: a video player asks for a range at every seek.
    let v1 = Router::new()
        .route("/auth/register", post(auth::register))
        .route("/auth/login", post(auth::login))
        .route("/ws", get(ws::upgrade))
        .route("/media/{id}", get(media::download))
        .route("/media/{id}/info", get(media::info))
        .merge(api);
    let timed = Router::new()
        .nest("/v1", v1)
        .merge(description_routes())
        .merge(web_app::routes())
        .merge(operations_routes())
        .layer(middleware::from_fn_with_state(state.clone(), timeout));
    // An upload takes as long as its body does: instead of the request timeout it has an idle
    // timeout of its own (see `media::upload`), and its body is a stream, not a JSON document
    // under `max_body_bytes`.
    let uploads = Router::new()
        .route("/v1/conversations/{id}/media", post(media::upload))
        .route_layer(middleware::from_fn_with_state(state.clone(), general_limit));
    // Socket.IO answers `/socket.io/` itself, outside the request timeout: a long-polling
    // request waits for as long as the heartbeat allows.
    let socketio = socketio::layer(&state);
    with_common_layers(timed.merge(uploads), state).layer(socketio)
}

/// What a `read-only` node serves: the API's queries, answered from the store as it is. Logging
/// in is a query too; every other request that would write, and sockets (`/v1/ws`,
/// `/socket.io/`), are refused.
pub fn read_only(state: AppState) -> Router {
    router(state).layer(middleware::from_fn(refuse_writes))
}

async fn refuse_writes(request: Request, next: Next) -> Response {
    let reads = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let path = request.uri().path();
    let socket = path == "/v1/ws" || path.starts_with("/socket.io");
    if (reads && !socket) || path == "/v1/auth/login" {
        next.run(request).await
    } else {
        ApiError::read_only().into_response()
    }
}

/// What a node that serves no clients (a projector) still answers: health, readiness, metrics
/// and the schema registry.
pub fn operations(state: AppState) -> Router {
    let timed = operations_routes().layer(middleware::from_fn_with_state(state.clone(), timeout));
    with_common_layers(timed, state)
}

/// The API's descriptions, for anyone to read: no token, no rate limit.
fn description_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/openapi.json", get(description::openapi))
        .route("/v1/asyncapi.json", get(description::asyncapi))
}

fn operations_routes() -> Router<AppState> {
    Router::new()
        .nest("/registry", registry::router())
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/groups", get(health::groups))
}

fn with_common_layers(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn(measure))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// The general limit counts per user when a valid token is presented, per IP otherwise.
async fn general_limit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let who = presented_token(&parts)
        .and_then(|token| state.tokens.verify(token).ok())
        .map_or_else(|| peer.ip().to_string(), |user| user.to_string());
    if let Err(error) = limits::check(&state, Limit::General, &who).await {
        return error.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

async fn timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.config.request_timeout.0, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::timeout().into_response(),
    }
}

/// Request counts, latencies and error rates per route, for `/metrics`.
async fn measure(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed());
    response
}
