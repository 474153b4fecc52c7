//! `[files]`: where uploaded files' bytes are kept (their records are in the store).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// `local` (default): the data dir's `files/`; one node, or several that mount one directory there.
    /// `s3`: an S3 bucket, or an S3-compatible server's (`s3_endpoint`), that every node reaches.
    pub backend: FilesBackend,
    pub s3_bucket: String,
    /// Empty: the environment's (`AWS_REGION`), else `us-east-1`.
    pub s3_region: String,
    /// Empty: Amazon's endpoint; else the URL of an S3-compatible server (MinIO, Ceph, R2, …).
    pub s3_endpoint: String,
    /// Object keys start with it (empty: the bucket's root).
    pub s3_prefix: String,
    /// Lets `s3_endpoint` be plain `http://` (a server on a private network).
    pub s3_allow_http: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilesBackend {
    #[default]
    Local,
    S3,
}

impl FilesConfig {
    pub fn s3(&self) -> confab_files_object::S3Config {
        confab_files_object::S3Config {
            bucket: self.s3_bucket.clone(),
            region: self.s3_region.clone(),
            endpoint: self.s3_endpoint.clone(),
            prefix: self.s3_prefix.clone(),
            allow_http: self.s3_allow_http,
        }
    }
}
