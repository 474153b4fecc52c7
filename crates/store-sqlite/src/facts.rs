//! Tests the [`Fact`]s of a write's preconditions against the rows, inside the write's transaction.

use confab_domain::{DomainResult, Fact, Precondition};
use rusqlite::{Connection, OptionalExtension};

use crate::writer::db_err;

/// `Ok` when every precondition holds, else the first failing one's error.
pub fn check(conn: &Connection, preconditions: &[Precondition]) -> DomainResult<()> {
    Precondition::check_all(preconditions, |f| holds(conn, f)).map_err(db_err)?
}

pub fn exists(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<bool> {
    conn.prepare_cached(sql)?
        .query_row(params, |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

fn holds(conn: &Connection, fact: &Fact) -> rusqlite::Result<bool> {
    match fact {
        Fact::ChannelExists(c) => exists(conn, "SELECT 1 FROM channels WHERE id = ?1", [c.as_str()]),
        Fact::Member { channel, user } => exists(
            conn,
            "SELECT 1 FROM members WHERE channel_id = ?1 AND user_id = ?2",
            [channel.as_str(), user.as_str()],
        ),
        Fact::ActiveAccount(u) => exists(conn, "SELECT 1 FROM users WHERE id = ?1 AND NOT disabled", [u.as_str()]),
        Fact::MessageIn { message, channel } => exists(
            conn,
            "SELECT 1 FROM messages WHERE id = ?1 AND channel_id = ?2",
            rusqlite::params![message.0, channel.as_str()],
        ),
        Fact::Mentions { message, user } => {
            let mentions: Option<String> = conn
                .prepare_cached("SELECT mentions FROM messages WHERE id = ?1")?
                .query_row([message.0], |r| r.get(0))
                .optional()?;
            Ok(mentions.is_some_and(|m| {
                serde_json::from_str::<Vec<String>>(&m).is_ok_and(|ids| ids.iter().any(|i| i == user.as_str()))
            }))
        }
        Fact::ThreadRoot(m) => exists(
            conn,
            "SELECT 1 FROM messages WHERE id = ?1 AND parent_id IS NULL",
            [m.0],
        ),
        Fact::FileExists(f) => exists(conn, "SELECT 1 FROM files WHERE id = ?1", [f.as_str()]),
        Fact::FileIn { file, channel } => exists(
            conn,
            "SELECT 1 FROM files WHERE id = ?1 AND channel_id = ?2",
            [file.as_str(), channel.as_str()],
        ),
    }
}
