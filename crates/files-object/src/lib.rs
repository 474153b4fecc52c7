//! Uploaded files' bytes in an object store: Amazon S3 or a server that speaks its API (MinIO, Ceph, R2,
//! …), through the `object_store` crate, so that every node of a cluster reads what any node stored. Only
//! this crate knows object storage; the service sees the [`FileBlobs`] port.
//!
//! A file is one object, `{prefix}/{first two characters of its id}/{id}`. An upload of up to
//! [`SINGLE_PUT_MAX`] bytes is one `PUT`; a larger one a multipart upload in parts of [`PART_SIZE`], read
//! from the spooled file as it goes. A put that fails or is abandoned halfway leaves no object (S3 makes
//! an object visible only when its upload completes), though an abandoned multipart upload may leave
//! parts: give the bucket a lifecycle rule that aborts incomplete multipart uploads.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use confab_domain::{DomainError, DomainResult, FileId};
use confab_service::blobs::{ByteStream, FileBlobs};
use futures_util::StreamExt;
use object_store::path::Path as Location;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;

/// Uploads up to this size are one `PUT` (read whole into memory; the upload limit bounds it).
pub const SINGLE_PUT_MAX: u64 = 8 << 20;
/// The part size of larger uploads (S3's smallest part is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;

/// Where an S3 bucket is. Credentials come from the environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or the instance's role), never from the configuration.
#[derive(Clone, Debug, Default)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    /// Empty: Amazon's endpoint for the region; else an S3-compatible server's URL.
    pub endpoint: String,
    /// Keys start with it (`confab/files`, say); empty for the bucket's root.
    pub prefix: String,
    /// Lets `endpoint` be plain `http://` (a server on a private network).
    pub allow_http: bool,
}

pub struct ObjectBlobs {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    describe: String,
}

impl ObjectBlobs {
    /// Files in an S3 bucket (or an S3-compatible server's).
    pub fn s3(cfg: &S3Config) -> DomainResult<ObjectBlobs> {
        if cfg.bucket.trim().is_empty() {
            return Err(DomainError::invalid("files.s3_bucket", "name the bucket"));
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&cfg.bucket)
            .with_allow_http(cfg.allow_http);
        if !cfg.region.is_empty() {
            builder = builder.with_region(&cfg.region);
        }
        if !cfg.endpoint.is_empty() {
            builder = builder.with_endpoint(&cfg.endpoint);
        }
        let store = builder
            .build()
            .map_err(|e| DomainError::invalid("files", e.to_string()))?;
        let at = match cfg.endpoint.as_str() {
            "" => format!("s3://{}", cfg.bucket),
            endpoint => format!("bucket {} at {endpoint}", cfg.bucket),
        };
        Ok(ObjectBlobs::new(Arc::new(store), &cfg.prefix, at))
    }

    /// Files in any object store, under `prefix`; `describe` says where for the logs.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, describe: String) -> ObjectBlobs {
        ObjectBlobs {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            describe,
        }
    }

    /// Writes and removes an object of this node's: at start, a clear error when the store cannot be
    /// reached or written (wrong bucket, credentials or endpoint) rather than a failure at the first upload.
    pub async fn probe(&self, node_id: &str) -> DomainResult<()> {
        let location = self.at(&format!(".probe/{node_id}"));
        self.store
            .put(&location, PutPayload::from_static(b"confab"))
            .await
            .map_err(|e| unavailable(&self.describe, e))?;
        self.store
            .delete(&location)
            .await
            .map_err(|e| unavailable(&self.describe, e))
    }

    fn at(&self, key: &str) -> Location {
        match self.prefix.is_empty() {
            true => Location::from(key),
            false => Location::from(format!("{}/{key}", self.prefix)),
        }
    }

    fn location(&self, id: &FileId) -> Location {
        self.at(&format!("{}/{}", &id.as_str()[..2], id.as_str()))
    }

    /// A multipart upload of `local`, part by part; aborted on any error.
    async fn put_in_parts(&self, location: &Location, local: &Path) -> object_store::Result<()> {
        let upload = self.store.put_multipart(location).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let written = async {
            let mut file = tokio::fs::File::open(local).await.map_err(io_error)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).await.map_err(io_error)?;
                if n == 0 {
                    return Ok(());
                }
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        match written {
            Ok(()) => writer.finish().await.map(drop),
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl FileBlobs for ObjectBlobs {
    async fn put(&self, id: &FileId, local: &Path, size: u64) -> DomainResult<()> {
        let location = self.location(id);
        let stored = if size <= SINGLE_PUT_MAX {
            let bytes = tokio::fs::read(local)
                .await
                .map_err(|e| DomainError::Unavailable(format!("file storage: {e}")))?;
            self.store.put(&location, PutPayload::from(bytes)).await.map(drop)
        } else {
            self.put_in_parts(&location, local).await
        };
        stored.map_err(|e| unavailable(&self.describe, e))
    }

    async fn get(&self, id: &FileId) -> DomainResult<ByteStream> {
        match self.store.get(&self.location(id)).await {
            Ok(found) => Ok(found.into_stream().map(|r| r.map_err(std::io::Error::other)).boxed()),
            Err(object_store::Error::NotFound { .. }) => Err(DomainError::not_found("file", id)),
            Err(e) => Err(unavailable(&self.describe, e)),
        }
    }

    async fn delete(&self, id: &FileId) -> DomainResult<()> {
        match self.store.delete(&self.location(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(unavailable(&self.describe, e)),
        }
    }

    fn describe(&self) -> String {
        match self.prefix.is_empty() {
            true => self.describe.clone(),
            false => format!("{}, under {}/", self.describe, self.prefix),
        }
    }
}

fn unavailable(at: &str, e: object_store::Error) -> DomainError {
    DomainError::Unavailable(format!("file storage ({at}): {e}"))
}

fn io_error(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "spooled upload",
        source: Box::new(e),
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
