//! Uploads' records: quotas checked with the insert (the writer applies one command at a time, so two
//! uploads cannot pass a quota together) and the removal of files no message carries.

use confab_domain::model::{FileObject, FileQuota};
use confab_domain::{DomainError, DomainResult, FileId, Millis};
use rusqlite::{Connection, OptionalExtension, params};

use crate::writer::db_err;

/// Bytes stored under `owner` in `file_usage` (kept by triggers on `files`): `*` for all files, `u:<id>`
/// for one uploader's.
fn usage(conn: &Connection, owner: &str) -> DomainResult<u64> {
    conn.prepare_cached("SELECT bytes FROM file_usage WHERE owner = ?1")
        .and_then(|mut s| s.query_row([owner], |r| r.get::<_, i64>(0)).optional())
        .map(|b| b.unwrap_or(0).max(0) as u64)
        .map_err(db_err)
}

pub(crate) fn put_file(conn: &Connection, f: &FileObject, quota: FileQuota) -> DomainResult<()> {
    if usage(conn, "*")?.saturating_add(f.size) > quota.total {
        return Err(DomainError::LimitExceeded {
            what: "the server's file storage",
            limit: quota.total,
        });
    }
    if let Some(u) = &f.uploader_id
        && usage(conn, &format!("u:{u}"))?.saturating_add(f.size) > quota.per_user
    {
        return Err(DomainError::LimitExceeded {
            what: "the uploader's file storage",
            limit: quota.per_user,
        });
    }
    if conn
        .prepare_cached("SELECT 1 FROM files WHERE id = ?1")
        .and_then(|mut s| s.exists([f.id.as_str()]))
        .map_err(db_err)?
    {
        return Err(DomainError::already_exists("file", &f.id));
    }
    conn.prepare_cached(
        "INSERT INTO files (id, channel_id, uploader_id, name, size, content_type, sha256, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            f.id.as_str(),
            f.channel_id.as_str(),
            f.uploader_id.as_ref().map(|u| u.as_str()),
            f.name,
            f.size as i64,
            f.content_type,
            f.sha256,
            f.created_at
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

/// Deletes the oldest files created before `before` that no message carries (a deleted message no longer
/// carries its file). Runs in the writer: a send that attaches one of them is applied before or after,
/// never in between.
pub(crate) fn delete_unattached(conn: &Connection, before: Millis, limit: u32) -> DomainResult<Vec<FileId>> {
    // Files of deleted channels first, whatever their age: their records went with the channel.
    let mut ids = conn
        .prepare_cached("DELETE FROM removed_files WHERE id IN (SELECT id FROM removed_files LIMIT ?1) RETURNING id")
        .and_then(|mut s| {
            s.query_map([limit], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(db_err)?;
    let left = limit.saturating_sub(ids.len() as u32);
    if left == 0 {
        return Ok(ids.into_iter().filter_map(|id| FileId::parse(&id).ok()).collect());
    }
    let unattached = conn
        .prepare_cached(
            "DELETE FROM files WHERE id IN (SELECT f.id FROM files f WHERE f.created_at < ?1 AND NOT EXISTS \
             (SELECT 1 FROM messages m WHERE m.file IS NOT NULL AND json_extract(m.file, '$.id') = f.id) \
             ORDER BY f.created_at LIMIT ?2) RETURNING id",
        )
        .and_then(|mut s| {
            s.query_map(params![before, left], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(db_err)?;
    ids.extend(unattached);
    Ok(ids.into_iter().filter_map(|id| FileId::parse(&id).ok()).collect())
}
