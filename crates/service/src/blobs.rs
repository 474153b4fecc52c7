//! Where the bytes of uploaded files live (their records are the store's). A port, so that the nodes of a
//! cluster can keep them where every node reads them: the default is a directory ([`LocalBlobs`], the data
//! dir's `files/`, which may be a shared filesystem), the other an object store (`confab-files-object`).
//! An upload is spooled to a local temporary file first (checked, hashed and synced there), then handed
//! over whole; its record is stored only once its bytes are.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use confab_domain::{DomainError, DomainResult, FileId};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

/// A file's bytes, read as they are sent.
pub type ByteStream = BoxStream<'static, std::io::Result<bytes::Bytes>>;

#[async_trait]
pub trait FileBlobs: Send + Sync {
    /// Makes `local` (a complete upload of `size` bytes, synced, in the spool directory) the bytes of file
    /// `id`, durably. It may move `local` or leave it for the caller to remove.
    async fn put(&self, id: &FileId, local: &Path, size: u64) -> DomainResult<()>;
    /// The bytes of file `id`; `NotFound` when there are none.
    async fn get(&self, id: &FileId) -> DomainResult<ByteStream>;
    /// Removes the bytes of file `id`; bytes already gone are no error.
    async fn delete(&self, id: &FileId) -> DomainResult<()>;
    /// Where the bytes are, for the start-up log (never a secret).
    fn describe(&self) -> String;
}

/// Files' bytes in a directory, sharded by the id's first two characters (`ab/abcdef…`).
pub struct LocalBlobs {
    dir: PathBuf,
}

impl LocalBlobs {
    pub fn new(dir: impl Into<PathBuf>) -> LocalBlobs {
        LocalBlobs { dir: dir.into() }
    }

    fn path(&self, id: &FileId) -> PathBuf {
        self.dir.join(Self::relative_path(id))
    }

    /// Where a file's bytes are under the directory (`ab/abcdef…`): also the layout of backups.
    pub fn relative_path(id: &FileId) -> PathBuf {
        Path::new(&id.as_str()[..2]).join(id.as_str())
    }
}

#[async_trait]
impl FileBlobs for LocalBlobs {
    /// A rename into place, then a sync of the directories it changed: durable once it returns.
    async fn put(&self, id: &FileId, local: &Path, _size: u64) -> DomainResult<()> {
        let path = self.path(id);
        let dir = path.parent().expect("has parent");
        tokio::fs::create_dir_all(dir).await.map_err(io_err)?;
        tokio::fs::rename(local, &path).await.map_err(io_err)?;
        let synced = async {
            sync_dir(dir).await?;
            sync_dir(&self.dir).await
        }
        .await;
        if let Err(e) = synced {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(io_err(e));
        }
        Ok(())
    }

    async fn get(&self, id: &FileId) -> DomainResult<ByteStream> {
        match tokio::fs::File::open(self.path(id)).await {
            Ok(file) => Ok(tokio_util::io::ReaderStream::new(file).boxed()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DomainError::not_found("file", id)),
            Err(e) => Err(io_err(e)),
        }
    }

    async fn delete(&self, id: &FileId) -> DomainResult<()> {
        match tokio::fs::remove_file(self.path(id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }
}

/// fsync of a directory: makes the entries created or renamed in it durable.
pub(crate) async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    tokio::fs::File::open(dir).await?.sync_all().await?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

pub(crate) fn io_err(e: std::io::Error) -> DomainError {
    DomainError::Unavailable(format!("file storage: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(mut s: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_put_file_is_read_back_and_deleted_once() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = LocalBlobs::new(dir.path().join("files"));
        let id = FileId::parse("0123456789abcdef0123456789abcdef").unwrap();
        assert!(matches!(blobs.get(&id).await, Err(DomainError::NotFound { .. })));
        let spooled = dir.path().join("upload");
        std::fs::write(&spooled, b"bytes of a file").unwrap();
        blobs.put(&id, &spooled, 15).await.unwrap();
        assert!(!spooled.exists(), "moved into place");
        assert_eq!(read_all(blobs.get(&id).await.unwrap()).await, b"bytes of a file");
        blobs.delete(&id).await.unwrap();
        blobs.delete(&id).await.unwrap();
        assert!(matches!(blobs.get(&id).await, Err(DomainError::NotFound { .. })));
    }
}
