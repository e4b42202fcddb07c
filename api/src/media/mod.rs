//! Media: files uploaded into a conversation, attached to its messages and downloaded by its
//! members.
//!
//! The bytes go to a blob store ([`Blobs`]: a directory by default, an S3-compatible bucket when
//! configured), streamed through in parts so that a file is never held in memory whole. The log
//! records each finished upload as a `MediaUploaded` event on the messages topic, keyed by its
//! conversation, so uploads are projected into the read models, replayed and seen by analytics
//! like every other event; a message refers to uploads of its own conversation by id.
//!
//! - `blobs` opens the blob store a URL names and reads and writes objects in it;
//! - `types` is the allow-list of content types;
//! - `upload` streams a request body into the blob store, or leaves nothing behind;
//! - `range` reads a download's `Range` header.

pub(crate) mod blobs;
mod range;
mod types;
mod upload;

use axum::body::Body;
use switchboard_ingest::Origin;
use switchboard_projector::store::Media;
use switchboard_schemas::{ConversationId, MediaId, MediaUploaded, Position, UserId};

pub use self::blobs::{BlobUrl, Blobs};
pub use self::range::{Requested, requested};
pub use self::types::MediaTypes;
use crate::chat;
use crate::error::ApiError;
use crate::state::AppState;

/// What the uploader says about a file before sending it.
pub struct NewUpload {
    pub conversation: ConversationId,
    pub uploader: UserId,
    /// The request's `Content-Type`, already checked against the allow-list.
    pub content_type: String,
    pub name: Option<String>,
}

/// Streams `body` into the blob store and records the upload in the log. On any failure nothing
/// is left behind: neither an object, nor a part of one, nor an event.
///
/// Returns the upload's record and its position in the log.
pub async fn upload(
    state: &AppState,
    file: NewUpload,
    body: Body,
) -> Result<(Media, Position), ApiError> {
    let id = MediaId(state.ingest.next_id());
    // Under the conversation, so that an operator can find (or remove) a conversation's files.
    let key = format!("{}/{id}", file.conversation);
    let limits = upload::Limits {
        max_bytes: state.config.max_upload_bytes,
        idle: state.config.upload_idle_timeout.0,
    };
    let size = upload::receive(&state.blobs, &key, body, limits).await?;
    let event = MediaUploaded {
        conversation_id: file.conversation,
        media_id: id,
        uploader: file.uploader,
        content_type: file.content_type,
        size: i64::try_from(size).map_err(|_| ApiError::internal("upload size out of range"))?,
        file_name: file.name,
        object_key: key,
    };
    // Once the object is complete it must be recorded, or removed if that fails, even if the
    // client goes away meanwhile and this request is dropped: a spawned task runs to its end.
    let (position, at) = tokio::spawn(record(state.clone(), event.clone()))
        .await
        .map_err(|e| ApiError::internal(format!("recording an upload: {e}")))??;
    metrics::counter!("media_uploads_total").increment(1);
    metrics::counter!("media_upload_bytes_total").increment(size);
    // Answered once the upload can be downloaded, as the uploader will want to at once. It is
    // stored either way: if the read models are slow, the answer's token tells a download to
    // wait for them.
    if let Err(error) = chat::wait_for_position(state, position).await {
        tracing::warn!(error = %error.message, media = %id, "answering before the upload is projected");
    }
    let media = Media {
        id,
        conversation_id: event.conversation_id,
        uploader: event.uploader,
        content_type: event.content_type,
        size,
        name: event.file_name,
        created_at: at,
        object_key: event.object_key,
    };
    Ok((media, position))
}

/// Appends the upload's event; an object the log does not record could never be downloaded, so
/// it is removed when the append fails.
async fn record(state: AppState, event: MediaUploaded) -> Result<(Position, i64), ApiError> {
    let origin = Origin::user(event.uploader, uuid::Uuid::new_v4().to_string());
    let key = event.object_key.clone();
    match state.ingest.record_upload(&origin, event).await {
        Ok(recorded) => Ok(recorded),
        Err(error) => {
            state.blobs.remove(&key).await;
            Err(error.into())
        }
    }
}

/// The upload, if `caller` is a member of its conversation; to anyone else it does not exist.
pub async fn visible(state: &AppState, caller: UserId, id: MediaId) -> Result<Media, ApiError> {
    match state.store.media(id).await? {
        Some(media) if state.store.is_member(media.conversation_id, caller).await? => Ok(media),
        _ => Err(ApiError::not_found("media")),
    }
}
