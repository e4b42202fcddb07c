//! Every failure a client can see, and how it is rendered: one place for status codes, error
//! codes and messages, used by HTTP handlers and WebSocket replies alike.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use switchboard_ingest::IngestError;
use switchboard_ingest::log::LogError;
use switchboard_projector::feed::FeedError;
use switchboard_projector::presence::PresenceError;

use crate::coordination::CoordinationError;
use switchboard_projector::store::StoreError;

/// Declares [`Code`]: every error code, and the text clients see for it.
macro_rules! codes {
    ($($variant:ident = $text:literal,)*) => {
        /// The `code` of an error body: stable, meant for programs. Every code a client can see
        /// is one of these; the API descriptions list them all (see [`crate::description`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Code {
            $($variant,)*
        }

        impl Code {
            pub const ALL: &[Code] = &[$(Code::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)*
                }
            }
        }
    };
}

codes! {
    BadRequest = "bad_request",
    Invalid = "invalid",
    Unauthorized = "unauthorized",
    TokenExpired = "token_expired",
    InvalidCredentials = "invalid_credentials",
    Forbidden = "forbidden",
    ReadOnly = "read_only",
    NotFound = "not_found",
    Conflict = "conflict",
    Busy = "busy",
    AlreadyInCall = "already_in_call",
    CallNotRinging = "call_not_ringing",
    CallEnded = "call_ended",
    RoomFull = "room_full",
    NotSharing = "not_sharing",
    RateLimited = "rate_limited",
    PayloadTooLarge = "payload_too_large",
    UnsupportedMediaType = "unsupported_media_type",
    RangeNotSatisfiable = "range_not_satisfiable",
    Timeout = "timeout",
    MethodNotAllowed = "method_not_allowed",
    FrameTooLarge = "frame_too_large",
    UnknownOp = "unknown_op",
    SyncRequired = "sync_required",
    TooManySockets = "too_many_sockets",
    TooManyConnections = "too_many_connections",
    NotCaughtUp = "not_caught_up",
    Unavailable = "unavailable",
    Internal = "internal",
}

/// A typed error: `{"error": {"code": ..., "message": ..., "retry_after_ms": ...}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'a str,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: Code, message: impl Into<String>) -> ApiError {
        ApiError { status, code: code.as_str(), message: message.into(), retry_after: None }
    }

    /// The request is not well-formed: bad JSON, a missing field, a wrong type.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, Code::BadRequest, message)
    }

    /// The request is well-formed but a value is not acceptable.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, Code::Invalid, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, Code::Unauthorized, message)
    }

    pub fn token_expired() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            Code::TokenExpired,
            "the token has expired; log in again",
        )
    }

    pub fn invalid_credentials() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            Code::InvalidCredentials,
            "wrong handle or password",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, Code::Forbidden, message)
    }

    /// What a `read-only` node answers to anything but a query.
    pub fn read_only() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            Code::ReadOnly,
            "this node serves the read models as they are and takes no writes or sockets \
             (--role read-only)",
        )
    }

    /// Also what a stranger gets for a conversation they are not in: to them it does not exist.
    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, Code::NotFound, format!("{} not found", what.into()))
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, Code::Conflict, message)
    }

    /// The user called is in another call (or their phone is ringing for one).
    pub fn busy() -> ApiError {
        ApiError::new(StatusCode::CONFLICT, Code::Busy, "the user is in another call")
    }

    /// The caller is in a call already and must leave it first.
    pub fn already_in_call() -> ApiError {
        ApiError::new(StatusCode::CONFLICT, Code::AlreadyInCall, "you are in another call")
    }

    /// An accept, decline or cancel of a call that is no longer ringing; the message says why.
    pub fn call_not_ringing(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, Code::CallNotRinging, message)
    }

    pub fn call_ended() -> ApiError {
        ApiError::new(StatusCode::CONFLICT, Code::CallEnded, "the call has ended")
    }

    pub fn room_full(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            Code::RoomFull,
            format!("the room has its maximum of {limit} participants"),
        )
    }

    /// A location update with no share running: never started, stopped, or run out.
    pub fn not_sharing() -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            Code::NotSharing,
            "you are not sharing your location with this conversation; share it first",
        )
    }

    pub fn rate_limited(retry_after: Duration) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                Code::RateLimited,
                "too many requests; slow down",
            )
        }
    }

    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::PayloadTooLarge,
            format!("the request is larger than the {limit}-byte limit"),
        )
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, Code::UnsupportedMediaType, message)
    }

    /// A download's range lies past the end of the file; the response also says how long the
    /// file is (`Content-Range: bytes */size`).
    pub fn range_not_satisfiable(size: u64) -> ApiError {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            Code::RangeNotSatisfiable,
            format!("the range lies past the end of the {size}-byte file"),
        )
    }

    /// An upload whose body ended before it was complete (the client went away or broke off).
    pub fn upload_cut_off() -> ApiError {
        ApiError::bad_request("the upload was cut off before its end; nothing was stored")
    }

    /// An upload that sent nothing for the idle timeout.
    pub fn upload_stalled(idle: Duration) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            Code::Timeout,
            format!(
                "the upload sent nothing for {} s; nothing was stored",
                idle.as_secs_f64().ceil() as u64
            ),
        )
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::MethodNotAllowed,
            "this route does not take that method",
        )
    }

    /// A WebSocket frame over the configured limit; the socket stays open.
    pub fn frame_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::FrameTooLarge,
            format!("the frame is larger than the {limit}-byte limit; nothing in it was processed"),
        )
    }

    pub fn unknown_op(op: &str) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, Code::UnknownOp, format!("unknown op `{op}`"))
    }

    /// A resume token so old that replaying from it would mean reading too much of the log.
    /// A resume that cannot be served from the user's feed: what was missed must be synced.
    pub fn sync_required(why: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::GONE,
            Code::SyncRequired,
            format!("{why}; sync from the token, then continue from this connection's ready token"),
        )
    }

    pub fn too_many_sockets(max: usize) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            Code::TooManySockets,
            format!(
                "you hold {max} sockets on this node, as many as one user may; close one first"
            ),
        )
    }

    pub fn too_many_connections() -> ApiError {
        ApiError {
            retry_after: Some(Duration::from_secs(5)),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::TooManyConnections,
                "this node holds as many connections as it may; try another or retry later",
            )
        }
    }

    /// A query's consistency token was not reached within the bounded wait.
    pub fn not_caught_up(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(Duration::from_millis(500)),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, Code::NotCaughtUp, message)
        }
    }

    /// A backend is down; the request changed nothing and may be retried.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(Duration::from_secs(1)),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, message)
        }
    }

    pub fn timeout() -> ApiError {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, Code::Timeout, "the request took too long")
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, Code::Internal, message)
    }

    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            code: self.code,
            message: &self.message,
            retry_after_ms: self.retry_after.map(|d| d.as_millis() as u64),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("api_errors_total", "code" => self.code).increment(1);
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "request failed");
        }
        let mut response =
            (self.status, Json(serde_json::json!({ "error": self.body() }))).into_response();
        if let Some(retry) = self.retry_after {
            let seconds = retry.as_secs_f64().ceil().max(1.0) as u64;
            response.headers_mut().insert("retry-after", seconds.into());
        }
        response
    }
}

impl From<IngestError> for ApiError {
    fn from(error: IngestError) -> ApiError {
        match error {
            IngestError::Invalid(message) => ApiError::invalid(message),
            IngestError::Malformed(message) => ApiError::bad_request(message),
            IngestError::Log(log) => log.into(),
            IngestError::Encode(e) => ApiError::internal(format!("event encoding failed: {e}")),
        }
    }
}

impl From<LogError> for ApiError {
    fn from(error: LogError) -> ApiError {
        match error {
            LogError::Unavailable(_) | LogError::Closed => ApiError::unavailable(format!(
                "the event log cannot take writes right now ({error}); nothing was stored"
            )),
            LogError::Storage(_) => ApiError::internal(error.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Unavailable(_) => ApiError::unavailable(error.to_string()),
            StoreError::Storage(_) => ApiError::internal(error.to_string()),
        }
    }
}

/// The blob store failing: whatever was being written was not stored, and a retry may work.
impl From<object_store::Error> for ApiError {
    fn from(error: object_store::Error) -> ApiError {
        match error {
            object_store::Error::NotFound { .. } => ApiError::internal(format!(
                "a recorded upload is missing from the media store: {error}"
            )),
            _ => ApiError::unavailable(format!("the media store failed: {error}")),
        }
    }
}

impl From<FeedError> for ApiError {
    fn from(error: FeedError) -> ApiError {
        match error {
            FeedError::Unavailable(_) => ApiError::unavailable(error.to_string()),
            FeedError::Storage(_) => ApiError::internal(error.to_string()),
        }
    }
}

impl From<PresenceError> for ApiError {
    fn from(error: PresenceError) -> ApiError {
        ApiError::unavailable(error.to_string())
    }
}

impl From<CoordinationError> for ApiError {
    fn from(error: CoordinationError) -> ApiError {
        ApiError::unavailable(error.to_string())
    }
}
