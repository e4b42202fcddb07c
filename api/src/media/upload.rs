//! Streaming a request body into the blob store.
//!
//! The body is read chunk by chunk into a multipart upload, in parts of [`PART_BYTES`] with at
//! most [`PARTS_IN_FLIGHT`] being written at once, so an upload holds a few parts in memory
//! whatever the size of the file. Nothing shows under the object's key until the upload
//! completes; an upload that fails — too large, cut off, stalled, or a failing store — is aborted
//! before the error is answered, and one whose request is dropped midway (the client went away
//! and the server stopped serving it) is aborted from [`Pending`]'s `Drop`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use object_store::WriteMultipart;

use super::Blobs;
use crate::error::ApiError;

/// The size of each part written to the store: S3's smallest part size, which keeps the memory
/// an upload holds small.
const PART_BYTES: usize = 5 * 1024 * 1024;

/// How many parts of one upload are written at once while the next is read.
const PARTS_IN_FLIGHT: usize = 2;

/// How large an upload may be and how long it may stall.
pub struct Limits {
    pub max_bytes: usize,
    /// Longest wait for the next chunk of the body.
    pub idle: Duration,
}

/// Writes `body` to `key` and returns its size once the object is complete.
pub async fn receive(
    blobs: &Blobs,
    key: &str,
    body: Body,
    limits: Limits,
) -> Result<u64, ApiError> {
    let mut pending =
        Pending(Some(WriteMultipart::new_with_chunk_size(blobs.start(key).await?, PART_BYTES)));
    let mut chunks = body.into_data_stream();
    let mut size: u64 = 0;
    loop {
        let chunk = match tokio::time::timeout(limits.idle, chunks.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(None) => break,
            Ok(Some(Err(error))) => {
                tracing::debug!(%error, key, "upload cut off");
                return Err(pending.abort(ApiError::upload_cut_off()).await);
            }
            Err(_) => return Err(pending.abort(ApiError::upload_stalled(limits.idle)).await),
        };
        size += chunk.len() as u64;
        if size > limits.max_bytes as u64 {
            return Err(pending.abort(ApiError::payload_too_large(limits.max_bytes)).await);
        }
        if let Err(error) = pending.write(chunk).await {
            return Err(pending.abort(error).await);
        }
    }
    pending.finish().await?;
    Ok(size)
}

/// An upload under way: aborted unless finished.
struct Pending(Option<WriteMultipart>);

impl Pending {
    fn writer(&mut self) -> &mut WriteMultipart {
        self.0.as_mut().expect("a pending upload has its writer until finished or aborted")
    }

    /// Buffers `chunk`, once fewer than [`PARTS_IN_FLIGHT`] parts are being written.
    async fn write(&mut self, chunk: Bytes) -> Result<(), ApiError> {
        self.writer().wait_for_capacity(PARTS_IN_FLIGHT).await?;
        self.writer().put(chunk);
        Ok(())
    }

    async fn finish(mut self) -> Result<(), ApiError> {
        let writer = self.0.take().expect("finished once");
        // A failed completion aborts the upload itself.
        writer.finish().await?;
        Ok(())
    }

    /// Aborts the upload, waiting until the store has let go of every part, and passes `error` on.
    async fn abort(mut self, error: ApiError) -> ApiError {
        if let Some(writer) = self.0.take()
            && let Err(abort) = writer.abort().await
        {
            tracing::warn!(error = %abort, "could not abort an upload");
        }
        error
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(writer) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(error) = writer.abort().await {
                    tracing::warn!(%error, "could not abort an abandoned upload");
                }
            });
        }
    }
}
