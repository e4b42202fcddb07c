//! Axum's extractors, with their rejections turned into typed [`ApiError`]s so that a malformed
//! body, path or query gets the same JSON error shape as everything else; and the extractors of
//! the caller an access token names.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::auth::{Caller, LinkCaller, header_token, query_token};
use crate::error::ApiError;
use crate::state::AppState;

/// A JSON request body.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(body_error(rejection, state.config.max_body_bytes)),
        }
    }
}

impl<T: DeserializeOwned> Body<T> {
    /// Reads a body whose bytes are all in, as the extractor does once it has them.
    pub fn read(bytes: &[u8]) -> Result<Body<T>, ApiError> {
        axum::Json::<T>::from_bytes(bytes)
            .map(|axum::Json(value)| Body(value))
            .map_err(|rejection| body_error(rejection, bytes.len()))
    }
}

fn body_error(rejection: JsonRejection, limit: usize) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(limit),
        _ => ApiError::bad_request(rejection.body_text()),
    }
}

/// Path parameters.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Params(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// The query of a read that takes only a consistency token. Other parameters are ignored: the
/// query string may also carry the access token.
#[derive(Deserialize)]
pub struct After {
    /// Answer once the read models include this write.
    pub after: Option<String>,
}

/// Query-string parameters.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<AppState> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| QueryParams(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        match header_token(parts) {
            Some(token) => state.tokens.verify(token).map(Caller),
            None if query_token(parts).is_some() => Err(ApiError::unauthorized(
                "send the access token as `Authorization: Bearer …`; only /v1/ws and media \
                 downloads take it as a `token` query parameter",
            )),
            None => Err(ApiError::unauthorized("an access token is required")),
        }
    }
}

impl FromRequestParts<AppState> for LinkCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<LinkCaller, ApiError> {
        let token = header_token(parts)
            .or_else(|| query_token(parts))
            .ok_or_else(|| ApiError::unauthorized("an access token is required"))?;
        state.tokens.verify(token).map(LinkCaller)
    }
}
