//! The machine-readable descriptions of the API, kept in `docs/` beside the protocol document
//! they formalise: an OpenAPI 3.1 document of every HTTP route and an AsyncAPI 3 document of the
//! WebSocket and Socket.IO messages. Both are served as they are, for clients and tools to
//! generate code from and check against.
//!
//! They are kept by hand: most of what they describe (users, conversations, messages, calls) is
//! read-model types of other crates, and the socket messages have no generator at all. What keeps
//! them exact is the test suite: it holds them to what the server defines here (its ops, pushed
//! events and error codes) and to its router, and validates every captured exchange of
//! `docs/protocol.md` against their schemas.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use crate::error::Code;

pub const OPENAPI: &str = include_str!("../../docs/openapi.json");
pub const ASYNCAPI: &str = include_str!("../../docs/asyncapi.json");

pub async fn openapi() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], OPENAPI)
}

pub async fn asyncapi() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], ASYNCAPI)
}

/// Every op a socket takes, by name.
pub fn ops() -> &'static [&'static str] {
    crate::ws::protocol::OP_NAMES
}

/// The `type` of every event pushed to sockets.
pub fn pushed_events() -> Vec<&'static str> {
    crate::hub::pushed_types()
}

/// Every error code a client can be answered with.
pub fn error_codes() -> Vec<&'static str> {
    Code::ALL.iter().map(|code| code.as_str()).collect()
}
