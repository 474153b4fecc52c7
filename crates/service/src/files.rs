//! Uploads: streamed to a temporary file under the data dir with a size cap, hashed, their type sniffed from
//! the content (the client's claim is ignored), then moved into place (the directory synced, so an
//! acknowledged file survives power loss) and recorded for one channel. Limits: a per-user upload rate, and
//! storage quotas per uploader and in all (checked by the store with the record). Files no message carries
//! are removed after a while; partial uploads a crash left behind are removed at start.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use confab_domain::model::{FileObject, FileQuota};
use confab_domain::{ChannelId, DomainError, DomainResult, FileId, UserId, now_millis};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::auth::generate_token;
use crate::blobs::{ByteStream, io_err};
use crate::{Actor, Confab};

/// Bytes kept from the start of an upload for content sniffing.
const SNIFF_LEN: usize = 8192;
/// Files forgotten per store command of a sweep (the writer serves others between batches).
const SWEEP_BATCH: u32 = 256;

/// Limits on uploads (`[uploads]` in the configuration).
#[derive(Clone, Debug)]
pub struct UploadLimits {
    /// Uploads one user may start per minute (a burst of as many); the application is not limited.
    pub user_per_minute: u32,
    /// Bytes of all files one user uploaded.
    pub user_quota_bytes: u64,
    /// Bytes of all files.
    pub total_quota_bytes: u64,
    /// A file no message carries is removed once this old.
    pub unattached_ttl: Duration,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            user_per_minute: 20,
            user_quota_bytes: 1 << 30,
            total_quota_bytes: 50 << 30,
            unattached_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl UploadLimits {
    fn quota(&self) -> FileQuota {
        FileQuota {
            per_user: self.user_quota_bytes,
            total: self.total_quota_bytes,
        }
    }

    /// How often to look for unattached files: often enough that one is removed soon after its time.
    pub fn sweep_interval(&self) -> Duration {
        (self.unattached_ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(600))
    }
}

/// The per-user upload rate.
pub(crate) struct UploadRate(DefaultKeyedRateLimiter<UserId>);

impl UploadRate {
    pub(crate) fn new(limits: &UploadLimits) -> Self {
        let n = NonZeroU32::new(limits.user_per_minute.max(1)).expect("max(1)");
        UploadRate(RateLimiter::keyed(Quota::per_minute(n).allow_burst(n)))
    }

    fn check(&self, user: &UserId) -> DomainResult<()> {
        self.0.check_key(user).map_err(|not_until| DomainError::RateLimited {
            retry_after_ms: not_until
                .wait_time_from(DefaultClock::default().now())
                .as_millis()
                .max(1) as u64,
        })
    }

    pub(crate) fn housekeeping(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
    }
}

pub struct Upload {
    id: FileId,
    channel_id: ChannelId,
    uploader: Option<confab_domain::UserId>,
    tmp: TmpFile,
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
    limit: u64,
    head: Vec<u8>,
}

impl Upload {
    pub async fn write(&mut self, chunk: &[u8]) -> DomainResult<()> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(DomainError::LimitExceeded {
                what: "file size",
                limit: self.limit,
            });
        }
        if self.head.len() < SNIFF_LEN {
            let take = (SNIFF_LEN - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await.map_err(io_err)
    }

    /// Removes the partial file (an upload that failed or was refused).
    pub async fn abort(self) {
        drop(self.file);
        self.tmp.remove().await;
    }
}

/// The temporary file of an upload in progress. Removed when dropped unless it was moved into place, so an
/// upload whose request went away midway (its future dropped) leaves nothing behind.
struct TmpFile {
    path: PathBuf,
    armed: bool,
}

impl TmpFile {
    async fn remove(mut self) {
        self.armed = false;
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if self.armed {
            // An unlink: short enough to do in place.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The content type, from the bytes alone.
pub fn sniff_content_type(head: &[u8]) -> String {
    if let Some(kind) = infer::get(head) {
        return kind.mime_type().to_string();
    }
    // `infer` knows binary signatures only; text is recognised as valid UTF-8 without control bytes. A cut
    // multi-byte character at the end of the sniffed head does not make it binary.
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    };
    if valid && !head.iter().any(|&b| b < 0x09 || (b > 0x0d && b < 0x20)) {
        "text/plain; charset=utf-8".to_string()
    } else {
        "application/octet-stream".to_string()
    }
}

fn clean_name(name: &str) -> String {
    // Keep the last path component only, without control characters, at most 255 characters.
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    if cleaned.trim().is_empty() || cleaned == "." || cleaned == ".." {
        "file".to_string()
    } else {
        cleaned
    }
}

/// Why [`Confab::upload_stream`] failed: the service refused, or reading the request body failed.
#[derive(Debug)]
pub enum UploadFailed<E> {
    Domain(DomainError),
    Body(E),
}

impl Confab {
    /// Starts an upload for a channel the actor belongs to, within the actor's upload rate.
    pub async fn begin_upload(&self, actor: &Actor, channel: &ChannelId) -> DomainResult<Upload> {
        self.get_channel(actor, channel).await?;
        if let Some(user) = actor.user() {
            self.upload_rate.check(user)?;
        }
        let id = FileId::parse(&generate_token("")[..32]).expect("hex");
        let tmp_dir = self.cfg.files_dir.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir).await.map_err(io_err)?;
        let tmp_path = tmp_dir.join(id.as_str());
        let file = tokio::fs::File::create(&tmp_path).await.map_err(io_err)?;
        Ok(Upload {
            id,
            channel_id: channel.clone(),
            uploader: actor.user().cloned(),
            tmp: TmpFile {
                path: tmp_path,
                armed: true,
            },
            file,
            hasher: Sha256::new(),
            size: 0,
            limit: self.cfg.max_upload_bytes,
            head: Vec::new(),
        })
    }

    pub async fn finish_upload(&self, up: Upload, name: &str) -> DomainResult<FileObject> {
        if up.size == 0 {
            up.abort().await;
            return Err(DomainError::invalid("file", "must not be empty"));
        }
        if let Err(e) = up.file.sync_all().await {
            up.abort().await;
            return Err(io_err(e));
        }
        if let Err(e) = self.blobs.put(&up.id, &up.tmp.path, up.size).await {
            up.abort().await;
            return Err(e);
        }
        // Moved into place, or copied: either way the spooled file is no longer needed.
        drop(up.file);
        up.tmp.remove().await;
        let obj = FileObject {
            id: up.id,
            channel_id: up.channel_id,
            uploader_id: up.uploader,
            name: clean_name(name),
            size: up.size,
            content_type: sniff_content_type(&up.head),
            sha256: hex::encode(up.hasher.finalize()),
            created_at: now_millis(),
        };
        if let Err(e) = self.store.put_file(obj.clone(), self.cfg.uploads.quota()).await {
            if let Err(gone) = self.blobs.delete(&obj.id).await {
                tracing::warn!(file = %obj.id, error = %gone, "cannot remove the bytes of a refused upload");
            }
            return Err(e);
        }
        Ok(obj)
    }

    /// Streams a request body part into a new file of the channel: an upload begun, written chunk by chunk
    /// (bounded by the upload limit), and finished; aborted (nothing left on disk) on any error, including
    /// one reading the body.
    pub async fn upload_stream<E>(
        &self,
        actor: &Actor,
        channel: &ChannelId,
        name: &str,
        body: impl futures_util::Stream<Item = Result<bytes::Bytes, E>>,
    ) -> Result<FileObject, UploadFailed<E>> {
        use futures_util::StreamExt;
        let mut body = std::pin::pin!(body);
        let mut up = self.begin_upload(actor, channel).await.map_err(UploadFailed::Domain)?;
        while let Some(chunk) = body.next().await {
            let written = match chunk {
                Ok(chunk) => up.write(&chunk).await.map_err(UploadFailed::Domain),
                Err(e) => Err(UploadFailed::Body(e)),
            };
            if let Err(e) = written {
                up.abort().await;
                return Err(e);
            }
        }
        self.finish_upload(up, name).await.map_err(UploadFailed::Domain)
    }

    pub fn upload_limits(&self) -> &UploadLimits {
        &self.cfg.uploads
    }

    /// Removes what uploads a stopped process left in the temporary directory. Call before serving.
    pub async fn clean_upload_tmp(&self) -> std::io::Result<usize> {
        let tmp = self.cfg.files_dir.join("tmp");
        let mut entries = match tokio::fs::read_dir(&tmp).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        while let Some(entry) = entries.next_entry().await? {
            if entry.file_type().await?.is_file() {
                tokio::fs::remove_file(entry.path()).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes files no message carries once older than `unattached_ttl`: first their records, then their
    /// bytes. Returns how many.
    pub async fn sweep_unattached_files(&self) -> DomainResult<usize> {
        let ttl = i64::try_from(self.cfg.uploads.unattached_ttl.as_millis()).unwrap_or(i64::MAX);
        let before = now_millis().saturating_sub(ttl);
        let mut removed = 0;
        loop {
            let ids = self.store.delete_unattached_files(before, SWEEP_BATCH).await?;
            for id in &ids {
                if let Err(e) = self.blobs.delete(id).await {
                    tracing::warn!(file = %id, error = %e, "cannot remove an unattached file");
                }
            }
            removed += ids.len();
            if ids.len() < SWEEP_BATCH as usize {
                return Ok(removed);
            }
        }
    }

    /// The file and its bytes, if the actor is a member of the channel it was uploaded for.
    pub async fn open_file(&self, actor: &Actor, id: &FileId) -> DomainResult<(FileObject, ByteStream)> {
        let obj = self
            .store
            .get_file(id)
            .await?
            .ok_or_else(|| DomainError::not_found("file", id))?;
        if let Actor::User(u) = actor
            && self.store.get_member(&obj.channel_id, u).await?.is_none()
        {
            return Err(DomainError::not_found("file", id));
        }
        let bytes = self.blobs.get(id).await?;
        Ok((obj, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_ignores_names_and_reads_bytes() {
        let png = [
            0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d, b'I', b'H', b'D', b'R',
        ];
        assert_eq!(sniff_content_type(&png), "image/png");
        assert_eq!(sniff_content_type(b"hello world\n"), "text/plain; charset=utf-8");
        assert_eq!(sniff_content_type(&[0, 1, 2, 3, 200]), "application/octet-stream");
        assert_eq!(sniff_content_type(b"%PDF-1.7\n"), "application/pdf");
    }

    #[test]
    fn names_lose_paths_and_controls() {
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("C:\\x\\photo.png"), "photo.png");
        assert_eq!(clean_name("a\u{0}b"), "ab");
        assert_eq!(clean_name(".."), "file");
    }
}
