//! Uploads' records: quotas checked with the insert (writes of the cluster commit one batch at a time under
//! the write lock, and a batch applies one command at a time, so two uploads cannot pass a quota together)
//! and the removal of files no message carries.

use confab_domain::model::{FileObject, FileQuota};
use confab_domain::{DomainError, FileId, Millis};
use deadpool_postgres::GenericClient;

use crate::db::{exec, row, rows};
use crate::error::{Res, corrupt};
use crate::rows::get;

/// Bytes stored under `owner` in `file_usage` (kept by a trigger on `files`): `*` for all files, `u:<id>`
/// for one uploader's.
async fn usage<C: GenericClient>(c: &C, owner: &str) -> Res<u64> {
    let found = row(c, "SELECT bytes FROM file_usage WHERE owner = $1", &[&owner]).await?;
    Ok(match found {
        Some(r) => get::<i64>(&r, 0)?.max(0) as u64,
        None => 0,
    })
}

pub(crate) async fn put_file<C: GenericClient>(c: &C, f: &FileObject, quota: FileQuota) -> Res<()> {
    if crate::db::exists(c, "SELECT 1 FROM files WHERE id = $1", &[&f.id.as_str()]).await? {
        return Err(DomainError::already_exists("file", &f.id).into());
    }
    if usage(c, "*").await?.saturating_add(f.size) > quota.total {
        return Err(DomainError::LimitExceeded {
            what: "the server's file storage",
            limit: quota.total,
        }
        .into());
    }
    if let Some(u) = &f.uploader_id
        && usage(c, &format!("u:{u}")).await?.saturating_add(f.size) > quota.per_user
    {
        return Err(DomainError::LimitExceeded {
            what: "the uploader's file storage",
            limit: quota.per_user,
        }
        .into());
    }
    exec(
        c,
        "INSERT INTO files (id, channel_id, uploader_id, name, size, content_type, sha256, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &f.id.as_str(),
            &f.channel_id.as_str(),
            &f.uploader_id.as_ref().map(|u| u.as_str()),
            &f.name,
            &(f.size.min(i64::MAX as u64) as i64),
            &f.content_type,
            &f.sha256,
            &f.created_at,
        ],
    )
    .await?;
    Ok(())
}

/// Deletes the files of deleted channels, then the oldest files created before `before` that no message
/// carries (a deleted message no longer carries its file). Applied by the writer under the write lock: a send that attaches one of them commits
/// before or after, never in between.
pub(crate) async fn delete_unattached<C: GenericClient>(c: &C, before: Millis, limit: u32) -> Res<Vec<FileId>> {
    // Files of deleted channels first, whatever their age: their records went with the channel.
    let removed = rows(
        c,
        "DELETE FROM removed_files WHERE id IN (SELECT id FROM removed_files ORDER BY id LIMIT $1) RETURNING id",
        &[&(limit as i64)],
    )
    .await?;
    let mut ids = removed
        .iter()
        .map(|r| FileId::parse(get(r, 0)?).map_err(corrupt))
        .collect::<Res<Vec<_>>>()?;
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let left = limit.saturating_sub(ids.len() as u32);
    if left == 0 {
        return Ok(ids);
    }
    let found = rows(
        c,
        "DELETE FROM files WHERE id IN (SELECT f.id FROM files f WHERE f.created_at < $1 AND NOT EXISTS \
         (SELECT 1 FROM messages m WHERE m.file_id = f.id) ORDER BY f.created_at, f.id LIMIT $2) RETURNING id, created_at",
        &[&before, &(left as i64)],
    )
    .await?;
    let mut deleted = found
        .iter()
        .map(|r| Ok((get::<Millis>(r, 1)?, FileId::parse(get(r, 0)?).map_err(corrupt)?)))
        .collect::<Res<Vec<_>>>()?;
    // RETURNING follows no order: give them back oldest first.
    deleted.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.as_str().cmp(b.1.as_str())));
    ids.extend(deleted.into_iter().map(|(_, id)| id));
    Ok(ids)
}
