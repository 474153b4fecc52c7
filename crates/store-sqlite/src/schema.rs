//! Schema migrations, tracked with SQLite's `user_version`: an ordered list, forward-only.
//!
//! Migration `n` takes the schema from version `n - 1` to `n`, in a transaction that also sets
//! `user_version` to `n`. The list is append-only: a migration applied somewhere never changes (databases were
//! created from its text; `tests/migrations.rs` keeps the SHA-256 of each), a change of schema is a new
//! migration at the end, with its fixture (`tests/fixtures/README.md`). A database whose version is newer than
//! this release's last migration was written by a newer release, and is refused rather than misread.

use std::path::Path;

use confab_domain::{DomainError, DomainResult};
use rusqlite::{Connection, OpenFlags};

use crate::SqliteConfig;
use crate::writer::db_err;

/// One step of the schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The `user_version` the database has once it is applied: 1, 2, 3… without gaps.
    pub version: u32,
    /// What it does, in a few words (for `confab migrate`).
    pub name: &'static str,
    /// The script, applied once. Never edited once released.
    pub sql: &'static str,
}

/// Each entry upgrades the schema from version `version - 1` to `version`. Append only.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "users, sessions, channels, members, messages, files",
        sql: r#"
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    nickname      TEXT NOT NULL,
    profile_url   TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    is_bot        INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    last_seen_at  INTEGER
);

CREATE TABLE sessions (
    token_hash  BLOB PRIMARY KEY,
    user_id     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER
) WITHOUT ROWID;
CREATE INDEX sessions_by_user ON sessions(user_id);

CREATE TABLE channels (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    name             TEXT NOT NULL,
    cover_url        TEXT NOT NULL,
    custom_type      TEXT NOT NULL,
    data             TEXT,
    created_by       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    last_seq         INTEGER NOT NULL DEFAULT 0,
    last_message_at  INTEGER,
    member_count     INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE members (
    channel_id  TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    joined_at   INTEGER NOT NULL,
    read_seq    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (channel_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members(user_id, channel_id);

CREATE TABLE messages (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id     TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    sender_id      TEXT,
    kind           TEXT NOT NULL,
    text           TEXT NOT NULL,
    custom_type    TEXT NOT NULL,
    data           TEXT,
    payload        TEXT,
    mentions       TEXT NOT NULL,
    client_msg_id  TEXT,
    parent_id      INTEGER,
    reply_count    INTEGER NOT NULL DEFAULT 0,
    file           TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    edited         INTEGER NOT NULL DEFAULT 0,
    deleted        INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX messages_by_channel_seq ON messages(channel_id, seq);
CREATE UNIQUE INDEX messages_by_client_id ON messages(sender_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
CREATE INDEX messages_by_parent ON messages(parent_id, id) WHERE parent_id IS NOT NULL;

CREATE TABLE files (
    id            TEXT PRIMARY KEY,
    channel_id    TEXT NOT NULL,
    uploader_id   TEXT,
    name          TEXT NOT NULL,
    size          INTEGER NOT NULL,
    content_type  TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);
"#,
    },
    Migration {
        version: 2,
        name: "bots: settings, reply state of messages, token usage",
        sql: r#"
CREATE TABLE bots (
    id          TEXT PRIMARY KEY,
    settings    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
ALTER TABLE messages ADD COLUMN reply_state TEXT;
ALTER TABLE messages ADD COLUMN trigger_id INTEGER;
ALTER TABLE messages ADD COLUMN reply_reason TEXT;
CREATE UNIQUE INDEX messages_by_trigger ON messages(sender_id, trigger_id) WHERE trigger_id IS NOT NULL;
CREATE INDEX messages_generating ON messages(reply_state) WHERE reply_state = 'generating';
CREATE TABLE usage (
    day                TEXT NOT NULL,
    bot_id             TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    channel_id         TEXT NOT NULL,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    replies            INTEGER NOT NULL,
    PRIMARY KEY (day, bot_id, user_id, channel_id)
) WITHOUT ROWID;
"#,
    },
    Migration {
        version: 3,
        name: "providers added through the admin API",
        sql: r#"
CREATE TABLE providers (
    name        TEXT PRIMARY KEY,
    config      TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
"#,
    },
    Migration {
        version: 4,
        name: "settings: small JSON settings per namespace",
        sql: r#"
CREATE TABLE settings (
    namespace   TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
"#,
    },
    Migration {
        version: 5,
        name: "channels: distinct key; messages: index by time",
        sql: r#"
ALTER TABLE channels ADD COLUMN distinct_key TEXT;
CREATE UNIQUE INDEX channels_by_distinct_key ON channels(distinct_key) WHERE distinct_key IS NOT NULL;
CREATE INDEX messages_by_channel_time ON messages(channel_id, created_at, seq);
"#,
    },
    Migration {
        version: 6,
        name: "users: disabled flag",
        sql: r#"
ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
"#,
    },
    // The outbox: events recorded with the change that caused them. AUTOINCREMENT: ids are never reused after
    // pruning, since they are webhook ids and consumers' cursors.
    Migration {
        version: 7,
        name: "outbox and webhook dead letters",
        sql: r#"
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type  TEXT NOT NULL,
    channel_id  TEXT,
    payload     BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE webhook_dead_letters (
    endpoint_id TEXT NOT NULL,
    event_id    INTEGER NOT NULL,
    event_type  TEXT NOT NULL,
    channel_id  TEXT,
    payload     BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    last_error  TEXT NOT NULL,
    failed_at   INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, event_id)
) WITHOUT ROWID;
"#,
    },
    // Messages a moderation flag rule matched, for review.
    Migration {
        version: 8,
        name: "flagged messages",
        sql: r#"
CREATE TABLE flagged_messages (
    message_id  INTEGER PRIMARY KEY,
    channel_id  TEXT NOT NULL,
    rules       TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',
    flagged_at  INTEGER NOT NULL,
    reviewed_at INTEGER,
    reviewed_by TEXT
);
CREATE INDEX flagged_by_state ON flagged_messages(state, message_id);
"#,
    },
    // Uploads: the bytes stored per uploader and in all (`*`), kept by triggers, for the quotas; and what the
    // sweeper of unattached files needs (files by age, messages by the file they carry).
    Migration {
        version: 9,
        name: "files: storage usage per uploader, indexes of the sweep",
        sql: r#"
CREATE TABLE file_usage (
    owner  TEXT PRIMARY KEY,
    bytes  INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO file_usage (owner, bytes) SELECT '*', coalesce(sum(size), 0) FROM files;
INSERT INTO file_usage (owner, bytes)
    SELECT 'u:' || uploader_id, sum(size) FROM files WHERE uploader_id IS NOT NULL GROUP BY uploader_id;
CREATE TRIGGER files_usage_insert AFTER INSERT ON files BEGIN
    UPDATE file_usage SET bytes = bytes + NEW.size WHERE owner IN ('*', 'u:' || NEW.uploader_id);
    INSERT OR IGNORE INTO file_usage (owner, bytes) SELECT 'u:' || NEW.uploader_id, NEW.size
        WHERE NEW.uploader_id IS NOT NULL;
END;
CREATE TRIGGER files_usage_delete AFTER DELETE ON files BEGIN
    UPDATE file_usage SET bytes = bytes - OLD.size WHERE owner IN ('*', 'u:' || OLD.uploader_id);
END;
CREATE INDEX files_by_age ON files(created_at);
CREATE INDEX messages_by_file ON messages(json_extract(file, '$.id')) WHERE file IS NOT NULL;
"#,
    },
    // Files of deleted channels, whose bytes the next sweep removes; flags of messages that are gone; and the
    // idempotency keys of deleted accounts, which a re-created account with the same id must not inherit.
    Migration {
        version: 10,
        name: "files: removed files of deleted channels; stale flags and keys",
        sql: r#"
CREATE TABLE removed_files (
    id  TEXT PRIMARY KEY
) WITHOUT ROWID;
INSERT OR IGNORE INTO removed_files (id) SELECT id FROM files WHERE channel_id NOT IN (SELECT id FROM channels);
DELETE FROM files WHERE channel_id NOT IN (SELECT id FROM channels);
DELETE FROM flagged_messages WHERE message_id NOT IN (SELECT id FROM messages);
UPDATE messages SET client_msg_id = NULL
    WHERE client_msg_id IS NOT NULL AND sender_id IS NOT NULL AND sender_id NOT IN (SELECT id FROM users);
"#,
    },
    // Leases: one holder at a time per name (a webhook endpoint's relay).
    Migration {
        version: 11,
        name: "leases",
        sql: r#"
CREATE TABLE leases (
    name    TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,
    until   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX leases_by_expiry ON leases(until);
"#,
    },
];

/// Every migration this release knows, oldest first.
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

/// The version of the newest migration this release knows.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The refusal of a database written by a newer release: reading it with this release's code could misread
/// or damage what the newer release stored.
pub(crate) fn newer_schema(database: &str, version: i64) -> String {
    format!(
        "the database {database} has schema version {version}, but this release knows schema versions up to \
         {}: it was written by a newer release of Confab. Run the newer release, or restore a backup taken by \
         this one",
        latest_version()
    )
}

fn name_of(conn: &Connection) -> String {
    conn.path().filter(|p| !p.is_empty()).unwrap_or("in memory").to_string()
}

/// Applies the migrations the database lacks, each in a transaction of its own; returns them (version, name).
/// Refuses a database whose schema is newer than this release's, changing nothing.
pub(crate) fn migrate(conn: &mut Connection) -> DomainResult<Vec<(u32, &'static str)>> {
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_err)?;
    if current > latest_version() as i64 {
        return Err(DomainError::Unavailable(newer_schema(&name_of(conn), current)));
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version as i64 > current) {
        let tx = conn.transaction().map_err(db_err)?;
        tx.execute_batch(m.sql).map_err(db_err)?;
        tx.pragma_update(None, "user_version", m.version as i64)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        applied.push((m.version, m.name));
    }
    if !applied.is_empty() {
        tracing::info!(database = %name_of(conn), from = current, to = latest_version(), "database schema migrated");
    }
    Ok(applied)
}

/// The schema version of the database at `path` (its `user_version`), read without changing anything: 0
/// when there is no file yet. A version newer than this release's is returned as it is (see
/// [`pending_migrations`] for the refusal).
pub fn schema_version(path: &Path) -> DomainResult<u32> {
    let exists = path
        .try_exists()
        .map_err(|e| DomainError::Unavailable(format!("cannot read {}: {e}", path.display())))?;
    if !exists {
        return Ok(0);
    }
    let version = read_user_version(path)?;
    u32::try_from(version)
        .map_err(|_| DomainError::Internal(format!("the database {} has schema version {version}", path.display())))
}

/// `user_version` of the database at `path`, changing nothing. A database with no `-wal`, `-shm` or
/// `-journal` file beside it is open nowhere and wholly in its file: its header holds the committed version,
/// read there (a read-only SQLite connection to a WAL database would leave `-wal` and `-shm` files behind,
/// owned by whoever ran this, which a server running as another user could not open). Otherwise SQLite reads
/// it, read-only and without the lock file: a running server may hold the database.
fn read_user_version(path: &Path) -> DomainResult<i64> {
    let beside = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        Path::new(&p).exists()
    };
    if !["-wal", "-shm", "-journal"].iter().any(|s| beside(s)) {
        use std::io::Read;
        let unreadable = |e: std::io::Error| DomainError::Unavailable(format!("cannot read {}: {e}", path.display()));
        let mut header = Vec::with_capacity(100);
        std::fs::File::open(path)
            .and_then(|f| f.take(100).read_to_end(&mut header))
            .map_err(unreadable)?;
        if header.is_empty() {
            return Ok(0);
        }
        if header.len() < 100 || !header.starts_with(b"SQLite format 3\0") {
            return Err(DomainError::Unavailable(format!(
                "{} is not a SQLite database",
                path.display()
            )));
        }
        return Ok(i32::from_be_bytes([header[60], header[61], header[62], header[63]]) as i64);
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(db_err)?;
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_err)
}

/// The migrations (version, name) that opening the database at `path` would apply, oldest first, read
/// without changing anything (every one when there is no file yet). A database of a newer release is the
/// error [`SqliteStore::open`](crate::SqliteStore::open) would give.
pub fn pending_migrations(path: &Path) -> DomainResult<Vec<(u32, &'static str)>> {
    let current = schema_version(path)?;
    if current > latest_version() {
        return Err(DomainError::Unavailable(newer_schema(
            &path.display().to_string(),
            current as i64,
        )));
    }
    Ok(MIGRATIONS
        .iter()
        .filter(|m| m.version > current)
        .map(|m| (m.version, m.name))
        .collect())
}

/// Applies the migrations the database at `cfg.path` lacks (creating it if needed), holding its lock file as
/// the store does, and returns them (version, name); nothing else is started. A running store holds the
/// lock: this waits `cfg.lock_wait` for it, then fails.
pub fn apply_migrations(cfg: &SqliteConfig) -> DomainResult<Vec<(u32, &'static str)>> {
    let _lock = crate::lock_database(&cfg.path, cfg.lock_wait)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = crate::open_conn(cfg, flags).map_err(db_err)?;
    migrate(&mut conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap().len(), MIGRATIONS.len());
        assert!(migrate(&mut conn).unwrap().is_empty());
        let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
    }

    #[test]
    fn a_newer_schema_is_refused_unchanged() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", latest_version() as i64 + 1)
            .unwrap();
        let err = migrate(&mut conn).unwrap_err().to_string();
        assert!(
            err.contains(&format!("schema version {}", latest_version() + 1)),
            "{err}"
        );
        assert!(err.contains("Run the newer release, or restore a backup"), "{err}");
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0, "nothing applied");
    }

    #[test]
    fn time_lookups_seek_the_time_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let plan: Vec<String> = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT seq FROM messages WHERE channel_id = ?1 AND created_at < ?2 \
                 ORDER BY created_at DESC, seq DESC LIMIT 1",
            )
            .unwrap()
            .query_map(["c", "0"], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let plan = plan.join(" | ");
        assert!(plan.contains("COVERING INDEX messages_by_channel_time"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
