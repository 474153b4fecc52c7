//! A stored file, as attached to a message and as answered by an upload.

use confab_domain::FileId;
use confab_domain::model::FileObject;
use serde::Serialize;
use utoipa::ToSchema;

/// Where a stored file is served from.
pub fn file_url(id: &FileId) -> String {
    format!("/api/v1/files/{id}")
}

#[derive(Serialize, ToSchema)]
pub struct FileDto<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub size: u64,
    /// Sniffed from the content when uploaded.
    pub content_type: &'a str,
    /// Relative URL; members of the channel fetch it with their session token.
    pub url: String,
    pub sha256: &'a str,
}

impl<'a> From<&'a FileObject> for FileDto<'a> {
    fn from(f: &'a FileObject) -> Self {
        FileDto {
            id: f.id.as_str(),
            name: &f.name,
            size: f.size,
            content_type: &f.content_type,
            url: file_url(&f.id),
            sha256: &f.sha256,
        }
    }
}
