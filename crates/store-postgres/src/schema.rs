//! Schema migrations: an ordered, append-only list of SQL scripts, recorded in `confab_schema_migrations`
//! and applied under a transaction-scoped advisory lock, so several nodes starting at once apply each once.
//!
//! The tables mirror `store-sqlite`'s schema in PostgreSQL types. Differences, each for a reason:
//! - ids and every text sorted for paging are `COLLATE "C"`: byte order, as SQLite compares, whatever the
//!   database's collation (a `en_US` collation would page `B` after `a`);
//! - JSON blobs an application owns (metadata, data, payload, settings, provider and bot configurations) are
//!   `TEXT` holding serde_json's text, read back exactly as written (`JSONB` would renormalize numbers and
//!   refuse `\u0000`); the two lists the store queries are arrays (`messages.mentions`,
//!   `flagged_messages.rules`), and the file a message carries has its id in a column of its own
//!   (`messages.file_id`, indexed for the sweep of unattached files);
//! - idempotency keys live in `message_keys`, owned by the account: deleting the account forgets them, so
//!   an account created again under the same id does not inherit them (its sends are new messages);
//! - outbox ids come from the one-row `outbox_counter`, incremented in the write's transaction: never
//!   reused, no gap left by a rolled-back write, and the head survives pruning.

use tokio_postgres::Client;

use crate::db::lock_key;
use crate::error::{PostgresError, describe};

/// One step of the schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The version recorded in `confab_schema_migrations` once it is applied: 1, 2, 3… without gaps.
    pub version: u32,
    /// What it does, in a few words (for `confab migrate`).
    pub name: &'static str,
    /// The script, applied once. Never edited once released.
    pub sql: &'static str,
}

/// Each entry upgrades the schema from version `version - 1` to `version`. Append only: an applied entry never
/// changes (`tests/migrations.rs` keeps the SHA-256 of each), and each is additive (a node running older code
/// reads a newer schema; see [`migrate_client`]).
pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "accounts, channels, messages, files, bots, outbox, flags, leases, nodes",
    sql: r#"
CREATE TABLE users (
    id            TEXT COLLATE "C" PRIMARY KEY,
    nickname      TEXT NOT NULL,
    profile_url   TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    is_bot        BOOLEAN NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    last_seen_at  BIGINT,
    disabled      BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE sessions (
    token_hash  BYTEA PRIMARY KEY,
    user_id     TEXT COLLATE "C" NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT
);
CREATE INDEX sessions_by_user ON sessions (user_id);

CREATE TABLE channels (
    id               TEXT COLLATE "C" PRIMARY KEY,
    kind             TEXT NOT NULL,
    name             TEXT NOT NULL,
    cover_url        TEXT NOT NULL,
    custom_type      TEXT NOT NULL,
    data             TEXT,
    created_by       TEXT COLLATE "C",
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    last_seq         BIGINT NOT NULL DEFAULT 0,
    last_message_at  BIGINT,
    member_count     BIGINT NOT NULL DEFAULT 0,
    distinct_key     TEXT
);
CREATE UNIQUE INDEX channels_by_distinct_key ON channels (distinct_key) WHERE distinct_key IS NOT NULL;

CREATE TABLE members (
    channel_id  TEXT COLLATE "C" NOT NULL,
    user_id     TEXT COLLATE "C" NOT NULL,
    joined_at   BIGINT NOT NULL,
    read_seq    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id, channel_id);

-- Message ids come from an identity with no cache per session (the default CACHE 1): taken under the write
-- lock, they follow the commit order across nodes, which a cache of ids per connection would break.
CREATE TABLE messages (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel_id     TEXT COLLATE "C" NOT NULL,
    seq            BIGINT NOT NULL,
    sender_id      TEXT COLLATE "C",
    kind           TEXT NOT NULL,
    text           TEXT NOT NULL,
    custom_type    TEXT NOT NULL,
    data           TEXT,
    payload        TEXT,
    mentions       TEXT[] NOT NULL,
    client_msg_id  TEXT,
    parent_id      BIGINT,
    reply_count    BIGINT NOT NULL DEFAULT 0,
    file           TEXT,
    file_id        TEXT COLLATE "C",
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    edited         BOOLEAN NOT NULL DEFAULT FALSE,
    deleted        BOOLEAN NOT NULL DEFAULT FALSE,
    reply_state    TEXT,
    trigger_id     BIGINT,
    reply_reason   TEXT,
    -- The node generating the reply (while `generating`): its restart, or its silence, ends it.
    reply_node     TEXT COLLATE "C"
);
-- Leases: one holder at a time per name (a webhook endpoint's relay).
CREATE TABLE leases (
    name    TEXT COLLATE "C" PRIMARY KEY,
    holder  TEXT NOT NULL,
    until   BIGINT NOT NULL
);
CREATE INDEX leases_by_expiry ON leases (until);
-- The nodes of the cluster and when each last said it was alive.
CREATE TABLE nodes (
    node_id       TEXT COLLATE "C" PRIMARY KEY,
    heartbeat_at  BIGINT NOT NULL
);
-- Which node holds a WebSocket session of which user (a user is online while any node does).
CREATE TABLE presence (
    user_id  TEXT COLLATE "C" NOT NULL,
    node_id  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (user_id, node_id)
);
CREATE INDEX presence_by_node ON presence (node_id);
CREATE UNIQUE INDEX messages_by_channel_seq ON messages (channel_id, seq);
CREATE INDEX messages_by_parent ON messages (parent_id, id) WHERE parent_id IS NOT NULL;
CREATE UNIQUE INDEX messages_by_trigger ON messages (sender_id, trigger_id) WHERE trigger_id IS NOT NULL;
CREATE INDEX messages_generating ON messages (id) WHERE reply_state = 'generating';
CREATE INDEX messages_by_channel_time ON messages (channel_id, created_at, seq);
CREATE INDEX messages_by_file ON messages (file_id) WHERE file_id IS NOT NULL;

CREATE TABLE message_keys (
    sender_id      TEXT COLLATE "C" NOT NULL,
    client_msg_id  TEXT NOT NULL,
    channel_id     TEXT COLLATE "C" NOT NULL,
    message_id     BIGINT NOT NULL,
    PRIMARY KEY (sender_id, client_msg_id)
);
CREATE INDEX message_keys_by_channel ON message_keys (channel_id);

CREATE TABLE files (
    id            TEXT COLLATE "C" PRIMARY KEY,
    channel_id    TEXT COLLATE "C" NOT NULL,
    uploader_id   TEXT COLLATE "C",
    name          TEXT NOT NULL,
    size          BIGINT NOT NULL,
    content_type  TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX files_by_age ON files (created_at);
CREATE INDEX files_by_channel ON files (channel_id);
-- Files of deleted channels, whose bytes the next sweep removes.
CREATE TABLE removed_files (
    id  TEXT COLLATE "C" PRIMARY KEY
);

-- Bytes stored per uploader (`u:<id>`) and in all (`*`), kept by a trigger, for the quotas.
CREATE TABLE file_usage (
    owner  TEXT COLLATE "C" PRIMARY KEY,
    bytes  BIGINT NOT NULL
);
INSERT INTO file_usage (owner, bytes) VALUES ('*', 0);
CREATE FUNCTION confab_file_usage() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE file_usage SET bytes = bytes + NEW.size WHERE owner = '*';
        IF NEW.uploader_id IS NOT NULL THEN
            INSERT INTO file_usage (owner, bytes) VALUES ('u:' || NEW.uploader_id, NEW.size)
                ON CONFLICT (owner) DO UPDATE SET bytes = file_usage.bytes + EXCLUDED.bytes;
        END IF;
        RETURN NEW;
    END IF;
    UPDATE file_usage SET bytes = bytes - OLD.size WHERE owner IN ('*', 'u:' || OLD.uploader_id);
    RETURN OLD;
END
$$;
CREATE TRIGGER files_usage AFTER INSERT OR DELETE ON files FOR EACH ROW EXECUTE FUNCTION confab_file_usage();

CREATE TABLE bots (
    id          TEXT COLLATE "C" PRIMARY KEY,
    settings    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE usage (
    day                TEXT COLLATE "C" NOT NULL,
    bot_id             TEXT COLLATE "C" NOT NULL,
    user_id            TEXT COLLATE "C" NOT NULL,
    channel_id         TEXT COLLATE "C" NOT NULL,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    replies            BIGINT NOT NULL,
    PRIMARY KEY (day, bot_id, user_id, channel_id)
);

CREATE TABLE providers (
    name        TEXT COLLATE "C" PRIMARY KEY,
    config      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE settings (
    namespace   TEXT COLLATE "C" NOT NULL,
    key         TEXT COLLATE "C" NOT NULL,
    value       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (namespace, key)
);

-- The outbox: events recorded with the change that caused them. Ids are webhook ids and consumers'
-- cursors: taken from the counter in the write's transaction, so they follow the commit order and are
-- never reused after pruning.
CREATE TABLE outbox (
    id          BIGINT PRIMARY KEY,
    event_type  TEXT NOT NULL,
    channel_id  TEXT COLLATE "C",
    payload     BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE outbox_counter (
    one      BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    last_id  BIGINT NOT NULL
);
INSERT INTO outbox_counter (last_id) VALUES (0);

CREATE TABLE webhook_dead_letters (
    endpoint_id TEXT COLLATE "C" NOT NULL,
    event_id    BIGINT NOT NULL,
    event_type  TEXT NOT NULL,
    channel_id  TEXT COLLATE "C",
    payload     BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    attempts    BIGINT NOT NULL,
    last_error  TEXT NOT NULL,
    failed_at   BIGINT NOT NULL,
    PRIMARY KEY (endpoint_id, event_id)
);

-- Messages a moderation flag rule matched, for review.
CREATE TABLE flagged_messages (
    message_id  BIGINT PRIMARY KEY,
    channel_id  TEXT COLLATE "C" NOT NULL,
    rules       TEXT[] NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',
    flagged_at  BIGINT NOT NULL,
    reviewed_at BIGINT,
    reviewed_by TEXT COLLATE "C"
);
CREATE INDEX flagged_by_state ON flagged_messages (state, message_id);
CREATE INDEX flagged_by_channel ON flagged_messages (channel_id, message_id);
"#,
}];

/// The version of the newest migration this release knows.
pub(crate) fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The migrations (version, name) after `version`, oldest first.
pub(crate) fn after(version: i64) -> Vec<(u32, &'static str)> {
    MIGRATIONS
        .iter()
        .filter(|m| m.version as i64 > version)
        .map(|m| (m.version, m.name))
        .collect()
}

/// Applies the migrations not applied yet, in one transaction holding the schema's migration lock (taken
/// first, so a second node starting at the same time waits and then finds them applied). Returns those it
/// applied (version, name).
pub(crate) async fn migrate_client(
    client: &mut Client,
    schema: &str,
) -> Result<Vec<(u32, &'static str)>, PostgresError> {
    let fail = |e: tokio_postgres::Error| PostgresError::Migrate(describe(&e));
    let tx = client.transaction().await.map_err(fail)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key("migrate", schema)])
        .await
        .map_err(fail)?;
    // The wait for the lock is bounded by the statement timeout (a node that cannot start says so); the
    // migrations themselves are not: one may rewrite a large table.
    tx.batch_execute("SET LOCAL statement_timeout = 0")
        .await
        .map_err(fail)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS confab_schema_migrations (\
             version BIGINT PRIMARY KEY, \
             applied_at BIGINT NOT NULL)",
    )
    .await
    .map_err(fail)?;
    let current: i64 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM confab_schema_migrations", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(fail)?;
    if current > latest_version() as i64 {
        // Rolling upgrades: a node of an older release may run against a schema migrated further. Every
        // migration is additive, so it can; it says so once.
        tracing::warn!(
            schema = %schema,
            database = current,
            known = latest_version(),
            "the database schema is newer than this release"
        );
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version as i64 > current) {
        tx.batch_execute(m.sql).await.map_err(fail)?;
        tx.execute(
            "INSERT INTO confab_schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&(m.version as i64), &confab_domain::now_millis()],
        )
        .await
        .map_err(fail)?;
        applied.push((m.version, m.name));
    }
    tx.commit().await.map_err(fail)?;
    if !applied.is_empty() {
        tracing::info!(schema = %schema, applied = applied.len(), "database schema migrated");
    }
    Ok(applied)
}

/// The schema's version (the newest migration recorded; 0 before the first), read in a read-only
/// transaction: it creates nothing (not even `confab_schema_migrations`) and takes no lock.
pub(crate) async fn current_version(client: &mut Client) -> Result<i64, PostgresError> {
    let fail = |e: tokio_postgres::Error| PostgresError::Migrate(describe(&e));
    let tx = client.build_transaction().read_only(true).start().await.map_err(fail)?;
    let recorded: bool = tx
        .query_one("SELECT to_regclass('confab_schema_migrations') IS NOT NULL", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(fail)?;
    let version = if recorded {
        tx.query_one("SELECT coalesce(max(version), 0) FROM confab_schema_migrations", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(fail)?
    } else {
        0
    };
    tx.commit().await.map_err(fail)?;
    Ok(version)
}
