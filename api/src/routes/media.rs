//! Uploading files into a conversation, and downloading them (whole or by range) and their
//! records.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{
    ACCEPT_RANGES, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use switchboard_projector::store::Media;
use switchboard_schemas::{ConversationId, MediaId};

use super::extract::{After, Params, QueryParams};
use crate::auth::{Caller, LinkCaller};
use crate::chat;
use crate::error::ApiError;
use crate::media::{self, NewUpload, Requested};
use crate::state::AppState;

/// Unknown parameters are ignored: the query string may also carry the access token.
#[derive(Deserialize)]
pub struct UploadQuery {
    /// The file's name, shown to members and offered when they save it.
    name: Option<String>,
}

#[derive(Serialize)]
pub struct Uploaded {
    media: Media,
    token: String,
}

/// `POST /v1/conversations/{id}/media`: the raw body is the file. Everything that can be judged
/// from the headers is judged before a byte of the body is read.
pub async fn upload(
    State(state): State<AppState>,
    Caller(me): Caller,
    Params(conversation): Params<ConversationId>,
    QueryParams(query): QueryParams<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    chat::ensure_member(&state, me, conversation).await?;
    let content_type = state.config.upload_types.check(headers.get(CONTENT_TYPE))?;
    let name = query.name.map(|name| state.ingest.check_file_name(&name)).transpose()?;
    let declared =
        headers.get(CONTENT_LENGTH).and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > state.config.max_upload_bytes as u64) {
        return Err(ApiError::payload_too_large(state.config.max_upload_bytes));
    }
    let file = NewUpload { conversation, uploader: me, content_type, name };
    let (media, position) = media::upload(&state, file, body).await?;
    Ok((StatusCode::CREATED, Json(Uploaded { media, token: position.to_string() })))
}

/// `GET /v1/media/{id}/info`: the upload's record.
pub async fn info(
    State(state): State<AppState>,
    Caller(me): Caller,
    Params(id): Params<MediaId>,
    QueryParams(after): QueryParams<After>,
) -> Result<Json<Media>, ApiError> {
    chat::wait_for(&state, after.after.as_deref()).await?;
    media::visible(&state, me, id).await.map(Json)
}

/// `GET /v1/media/{id}`: the file, streamed from the blob store, or the one range of it that
/// the `Range` header asks for.
pub async fn download(
    State(state): State<AppState>,
    LinkCaller(me): LinkCaller,
    Params(id): Params<MediaId>,
    QueryParams(after): QueryParams<After>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    chat::wait_for(&state, after.after.as_deref()).await?;
    let media = media::visible(&state, me, id).await?;
    let size = media.size;
    let (status, range) = match media::requested(headers.get(RANGE), size) {
        Requested::Whole => (StatusCode::OK, 0..size),
        Requested::Part(range) => (StatusCode::PARTIAL_CONTENT, range),
        Requested::Unsatisfiable => {
            let unsatisfied = AppendHeaders([(CONTENT_RANGE, format!("bytes */{size}"))]);
            return Ok((unsatisfied, ApiError::range_not_satisfiable(size)).into_response());
        }
    };
    // An empty file has no bytes to ask the store for.
    let body = if range.is_empty() {
        Body::empty()
    } else {
        state.blobs.read(&media.object_key, range.clone()).await?
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, header_value(&media.content_type)?);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(range.end - range.start));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Served as the uploader said, never as what a browser guesses from the bytes, and saved
    // rather than opened when navigated to; `<img>` and `<video>` show it all the same.
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(CONTENT_DISPOSITION, header_value(&disposition(media.name.as_deref()))?);
    if status == StatusCode::PARTIAL_CONTENT {
        let content_range = format!("bytes {}-{}/{size}", range.start, range.end - 1);
        headers.insert(CONTENT_RANGE, header_value(&content_range)?);
    }
    Ok(response)
}

fn header_value(value: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(value).map_err(|_| ApiError::internal("a stored value is no header"))
}

/// `attachment`, with the file's name as RFC 6266 gives it: percent-encoded UTF-8.
fn disposition(name: Option<&str>) -> String {
    let Some(name) = name else {
        return "attachment".to_owned();
    };
    let mut encoded = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_offered_percent_encoded() {
        assert_eq!(disposition(None), "attachment");
        assert_eq!(disposition(Some("tea.png")), "attachment; filename*=UTF-8''tea.png");
        assert_eq!(
            disposition(Some("thé \"party\";.png")),
            "attachment; filename*=UTF-8''th%C3%A9%20%22party%22%3B.png"
        );
    }
}
