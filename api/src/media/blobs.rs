//! The blob store uploads are kept in, named by a URL: `file://DIR` for a directory on this
//! machine (object_store's `LocalFileSystem`), `s3://BUCKET[?endpoint=URL&region=REGION]` for an
//! S3-compatible bucket (`AmazonS3Builder`, with credentials from the usual `AWS_*` environment
//! variables).

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Body;
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, MultipartUpload, ObjectStore};

use crate::error::ApiError;

/// Where the blob store is, as its URL says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobUrl {
    File(PathBuf),
    S3 { bucket: String, endpoint: Option<String>, region: Option<String> },
}

impl BlobUrl {
    pub fn parse(url: &str) -> Result<BlobUrl, String> {
        match url.split_once("://") {
            Some(("file", dir)) if !dir.is_empty() => Ok(BlobUrl::File(PathBuf::from(dir))),
            Some(("s3", rest)) => {
                let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
                if bucket.is_empty() || bucket.contains('/') {
                    return Err(format!("`{url}` names no bucket: use s3://BUCKET[?endpoint=URL]"));
                }
                let (mut endpoint, mut region) = (None, None);
                for pair in query.split('&').filter(|pair| !pair.is_empty()) {
                    match pair.split_once('=') {
                        Some(("endpoint", value)) => endpoint = Some(value.to_owned()),
                        Some(("region", value)) => region = Some(value.to_owned()),
                        _ => {
                            return Err(format!(
                                "`{pair}` in `{url}` is not a setting of an s3 media store \
                                 (endpoint=URL, region=NAME)"
                            ));
                        }
                    }
                }
                Ok(BlobUrl::S3 { bucket: bucket.to_owned(), endpoint, region })
            }
            _ => Err(format!(
                "`{url}` names no media store: use file://DIR or s3://BUCKET[?endpoint=URL&region=NAME]"
            )),
        }
    }
}

/// The blob store of this node. Cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    url: String,
}

impl fmt::Display for Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl Blobs {
    /// Opens the store `url` names, creating the directory of a `file://` store.
    pub fn open(url: &str) -> anyhow::Result<Blobs> {
        let store: Arc<dyn ObjectStore> = match BlobUrl::parse(url).map_err(anyhow::Error::msg)? {
            BlobUrl::File(dir) => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating the media directory {}", dir.display()))?;
                Arc::new(LocalFileSystem::new_with_prefix(&dir)?)
            }
            BlobUrl::S3 { bucket, endpoint, region } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_endpoint(endpoint);
                }
                if let Some(region) = region {
                    builder = builder.with_region(region);
                }
                Arc::new(builder.build()?)
            }
        };
        Ok(Blobs { store, url: url.to_owned() })
    }

    /// Starts a multipart upload to `key`; nothing is visible under `key` until it completes.
    pub async fn start(&self, key: &str) -> Result<Box<dyn MultipartUpload>, ApiError> {
        Ok(self.store.put_multipart(&Path::from(key)).await?)
    }

    /// The bytes of `range` of the object at `key`, as a streaming body.
    pub async fn read(&self, key: &str, range: Range<u64>) -> Result<Body, ApiError> {
        let options = GetOptions { range: Some(GetRange::Bounded(range)), ..GetOptions::default() };
        let result = self.store.get_opts(&Path::from(key), options).await?;
        Ok(Body::from_stream(result.into_stream().map_err(axum::Error::new)))
    }

    /// Removes the object at `key`, logging rather than failing: this tidies up after another
    /// failure, which is the one to report.
    pub async fn remove(&self, key: &str) {
        if let Err(error) = self.store.delete(&Path::from(key)).await {
            tracing::warn!(%error, key, "could not remove an unrecorded upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_directory_or_a_bucket() {
        assert_eq!(BlobUrl::parse("file:///var/media"), Ok(BlobUrl::File("/var/media".into())));
        assert_eq!(
            BlobUrl::parse("s3://uploads?endpoint=http://127.0.0.1:9000&region=eu-west-1"),
            Ok(BlobUrl::S3 {
                bucket: "uploads".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("eu-west-1".into()),
            })
        );
        assert_eq!(
            BlobUrl::parse("s3://uploads"),
            Ok(BlobUrl::S3 { bucket: "uploads".into(), endpoint: None, region: None })
        );
        for bad in ["media", "file://", "s3://", "s3://a/b", "s3://a?colour=red", "ftp://x"] {
            assert!(BlobUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
