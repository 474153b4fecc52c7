//! Schema migrations, tracked with SQLite's `user_version`.

use rusqlite::Connection;

/// Each entry upgrades the schema from version `index` to `index + 1`. Append only.
const MIGRATIONS: &[&str] = &[
    r#"
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
    r#"
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
    r#"
CREATE TABLE providers (
    name        TEXT PRIMARY KEY,
    config      TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE settings (
    namespace   TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
"#,
    r#"
ALTER TABLE channels ADD COLUMN distinct_key TEXT;
CREATE UNIQUE INDEX channels_by_distinct_key ON channels(distinct_key) WHERE distinct_key IS NOT NULL;
CREATE INDEX messages_by_channel_time ON messages(channel_id, created_at, seq);
"#,
    r#"
ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
"#,
    // The outbox: events recorded with the change that caused them. AUTOINCREMENT: ids are never reused after
    // pruning, since they are webhook ids and consumers' cursors.
    r#"
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
    // Messages a moderation flag rule matched, for review.
    r#"
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
    // Uploads: the bytes stored per uploader and in all (`*`), kept by triggers, for the quotas; and what the
    // sweeper of unattached files needs (files by age, messages by the file they carry).
    r#"
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
    // Files of deleted channels, whose bytes the next sweep removes; flags of messages that are gone; and the
    // idempotency keys of deleted accounts, which a re-created account with the same id must not inherit.
    r#"
CREATE TABLE removed_files (
    id  TEXT PRIMARY KEY
) WITHOUT ROWID;
INSERT OR IGNORE INTO removed_files (id) SELECT id FROM files WHERE channel_id NOT IN (SELECT id FROM channels);
DELETE FROM files WHERE channel_id NOT IN (SELECT id FROM channels);
DELETE FROM flagged_messages WHERE message_id NOT IN (SELECT id FROM messages);
UPDATE messages SET client_msg_id = NULL
    WHERE client_msg_id IS NOT NULL AND sender_id IS NOT NULL AND sender_id NOT IN (SELECT id FROM users);
"#,
    // Leases: one holder at a time per name (a webhook endpoint's relay).
    r#"
CREATE TABLE leases (
    name    TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,
    until   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX leases_by_expiry ON leases(until);
"#,
];

pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
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
