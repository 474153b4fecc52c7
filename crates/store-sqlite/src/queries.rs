//! Read queries, usable on a reader connection or inside the writer's transaction.

use confab_domain::model::{
    Channel, FileObject, HistoryQuery, HistoryRange, Member, MemberChannel, Message, MessageFilter, User,
};
use confab_domain::ports::SessionRecord;
use confab_domain::{ChannelId, ChannelSeq, FileId, MessageId, Millis, UserId};
use rusqlite::{Connection, OptionalExtension, params};

use crate::rows::{
    self, BOT_COLS, CHANNEL_COLS, CHANNEL_NCOLS, FILE_COLS, MEMBER_COLS, MESSAGE_COLS, USAGE_COLS, USER_COLS,
};
use confab_domain::bot::{Bot, UsageRecord};
use confab_domain::flag::{FlagQuery, FlaggedMessage};

pub fn user(conn: &Connection, id: &UserId) -> rusqlite::Result<Option<User>> {
    conn.prepare_cached(&format!("SELECT {USER_COLS} FROM users WHERE id = ?1"))?
        .query_row([id.as_str()], rows::user)
        .optional()
}

pub fn users_after(conn: &Connection, after: Option<&UserId>, limit: u32) -> rusqlite::Result<Vec<User>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {USER_COLS} FROM users WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    stmt.query_map(params![after.map(|a| a.as_str()).unwrap_or(""), limit], rows::user)?
        .collect()
}

pub fn session(conn: &Connection, hash: &[u8; 32]) -> rusqlite::Result<Option<SessionRecord>> {
    conn.prepare_cached("SELECT token_hash, user_id, created_at, expires_at FROM sessions WHERE token_hash = ?1")?
        .query_row([&hash[..]], |r| {
            let h: Vec<u8> = r.get(0)?;
            let uid: String = r.get(1)?;
            let mut token_hash = [0u8; 32];
            token_hash.copy_from_slice(&h);
            Ok(SessionRecord {
                token_hash,
                user_id: UserId::parse(&uid).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
                })?,
                created_at: r.get(2)?,
                expires_at: r.get(3)?,
            })
        })
        .optional()
}

pub fn channel(conn: &Connection, id: &ChannelId) -> rusqlite::Result<Option<Channel>> {
    conn.prepare_cached(&format!("SELECT {CHANNEL_COLS} FROM channels c WHERE c.id = ?1"))?
        .query_row([id.as_str()], rows::channel)
        .optional()
}

pub fn channel_by_distinct_key(conn: &Connection, key: &str) -> rusqlite::Result<Option<Channel>> {
    conn.prepare_cached(&format!(
        "SELECT {CHANNEL_COLS} FROM channels c WHERE c.distinct_key = ?1"
    ))?
    .query_row([key], rows::channel)
    .optional()
}

pub fn channels_after(conn: &Connection, after: Option<&ChannelId>, limit: u32) -> rusqlite::Result<Vec<Channel>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CHANNEL_COLS} FROM channels c WHERE c.id > ?1 ORDER BY c.id LIMIT ?2"
    ))?;
    stmt.query_map(params![after.map(|a| a.as_str()).unwrap_or(""), limit], rows::channel)?
        .collect()
}

pub fn member_channels(
    conn: &Connection,
    user: &UserId,
    after: Option<&ChannelId>,
    limit: u32,
) -> rusqlite::Result<Vec<MemberChannel>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CHANNEL_COLS}, m.read_seq FROM members m JOIN channels c ON c.id = m.channel_id \
         WHERE m.user_id = ?1 AND m.channel_id > ?2 ORDER BY m.channel_id LIMIT ?3"
    ))?;
    stmt.query_map(
        params![user.as_str(), after.map(|a| a.as_str()).unwrap_or(""), limit],
        |r| {
            Ok(MemberChannel {
                channel: rows::channel(r)?,
                read_seq: ChannelSeq(r.get::<_, i64>(CHANNEL_NCOLS)? as u64),
            })
        },
    )?
    .collect()
}

pub fn member(conn: &Connection, channel: &ChannelId, user: &UserId) -> rusqlite::Result<Option<Member>> {
    conn.prepare_cached(&format!(
        "SELECT {MEMBER_COLS} FROM members WHERE channel_id = ?1 AND user_id = ?2"
    ))?
    .query_row([channel.as_str(), user.as_str()], rows::member)
    .optional()
}

pub fn members_after(
    conn: &Connection,
    channel: &ChannelId,
    after: Option<&UserId>,
    limit: u32,
) -> rusqlite::Result<Vec<Member>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MEMBER_COLS} FROM members WHERE channel_id = ?1 AND user_id > ?2 ORDER BY user_id LIMIT ?3"
    ))?;
    stmt.query_map(
        params![channel.as_str(), after.map(|a| a.as_str()).unwrap_or(""), limit],
        rows::member,
    )?
    .collect()
}

pub fn member_ids(conn: &Connection, channel: &ChannelId) -> rusqlite::Result<Vec<UserId>> {
    let mut stmt = conn.prepare_cached("SELECT user_id FROM members WHERE channel_id = ?1")?;
    stmt.query_map([channel.as_str()], |r| {
        let s: String = r.get(0)?;
        UserId::parse(&s)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
    })?
    .collect()
}

pub fn user_channel_ids(conn: &Connection, user: &UserId) -> rusqlite::Result<Vec<ChannelId>> {
    let mut stmt = conn.prepare_cached("SELECT channel_id FROM members WHERE user_id = ?1")?;
    stmt.query_map([user.as_str()], |r| {
        let s: String = r.get(0)?;
        ChannelId::parse(&s)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
    })?
    .collect()
}

pub fn contacts(conn: &Connection, user: &UserId, max_members: u32) -> rusqlite::Result<Vec<UserId>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT m2.user_id FROM members m1 \
         JOIN channels c ON c.id = m1.channel_id AND c.member_count <= ?2 \
         JOIN members m2 ON m2.channel_id = m1.channel_id \
         WHERE m1.user_id = ?1 AND m2.user_id != ?1",
    )?;
    stmt.query_map(params![user.as_str(), max_members], |r| {
        let s: String = r.get(0)?;
        UserId::parse(&s)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
    })?
    .collect()
}

pub fn message(conn: &Connection, id: MessageId) -> rusqlite::Result<Option<Message>> {
    conn.prepare_cached(&format!("SELECT {MESSAGE_COLS} FROM messages WHERE id = ?1"))?
        .query_row([id.0], rows::message)
        .optional()
}

/// A flagged message with its flag, if the message still exists.
pub fn flag(conn: &Connection, id: MessageId) -> rusqlite::Result<Option<FlaggedMessage>> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {} FROM flagged_messages WHERE message_id = ?1",
            rows::FLAG_COLUMNS
        ))?
        .query_row([id.0], rows::flag_row)
        .optional()?;
    row.map(|r| with_message(conn, r)).transpose().map(Option::flatten)
}

pub fn flags(conn: &Connection, q: &FlagQuery) -> rusqlite::Result<Vec<FlaggedMessage>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM flagged_messages WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR channel_id = ?2) \
         AND message_id > ?3 ORDER BY message_id LIMIT ?4",
        rows::FLAG_COLUMNS
    ))?;
    let found = stmt
        .query_map(
            params![
                q.state.map(|s| s.as_str()),
                q.channel_id.as_ref().map(|c| c.as_str()),
                q.after.map_or(0, |a| a.0),
                q.limit
            ],
            rows::flag_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(found.len());
    for r in found {
        if let Some(f) = with_message(conn, r)? {
            out.push(f);
        }
    }
    Ok(out)
}

fn with_message(conn: &Connection, r: rows::FlagRow) -> rusqlite::Result<Option<FlaggedMessage>> {
    Ok(message(conn, r.message_id)?.map(|message| FlaggedMessage {
        message,
        rules: r.rules,
        state: r.state,
        flagged_at: r.flagged_at,
        reviewed_at: r.reviewed_at,
        reviewed_by: r.reviewed_by,
    }))
}

pub fn message_by_client_id(
    conn: &Connection,
    sender: &UserId,
    client_msg_id: &str,
) -> rusqlite::Result<Option<Message>> {
    conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLS} FROM messages WHERE sender_id = ?1 AND client_msg_id = ?2"
    ))?
    .query_row([sender.as_str(), client_msg_id], rows::message)
    .optional()
}

/// Messages of a channel matching `filter`, in ascending sequence order. Each filter list travels as one JSON
/// array parameter (`json_each`), so the statement text is the same whatever the filter and stays cached.
pub fn history_matching(conn: &Connection, q: &HistoryQuery, filter: &MessageFilter) -> rusqlite::Result<Vec<Message>> {
    if filter.is_empty() {
        return history(conn, q);
    }
    let (cond, order, anchor, reverse) = match q.range {
        HistoryRange::Latest => ("seq > ?2", "DESC", 0i64, true),
        HistoryRange::Before(s) => ("seq < ?2", "DESC", s.0 as i64, true),
        HistoryRange::After(s) => ("seq > ?2", "ASC", s.0 as i64, false),
    };
    let sql = format!(
        "SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = ?1 AND {cond} \
         AND (?4 IS NULL OR custom_type IN (SELECT value FROM json_each(?4))) \
         AND (?5 IS NULL OR sender_id IN (SELECT value FROM json_each(?5))) \
         AND (?6 IS NULL OR kind IN (SELECT value FROM json_each(?6))) \
         AND (?7 = 0 OR deleted = 0) \
         ORDER BY seq {order} LIMIT ?3"
    );
    let as_json = |v: Option<Vec<&str>>| v.map(|v| serde_json::Value::from(v).to_string());
    let custom_types = as_json(
        filter
            .custom_types
            .as_ref()
            .map(|v| v.iter().map(String::as_str).collect()),
    );
    let senders = as_json(
        filter
            .sender_ids
            .as_ref()
            .map(|v| v.iter().map(UserId::as_str).collect()),
    );
    let kinds = as_json(filter.kinds.as_ref().map(|v| v.iter().map(|k| k.as_str()).collect()));
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut out: Vec<Message> = stmt
        .query_map(
            params![
                q.channel_id.as_str(),
                anchor,
                q.limit,
                custom_types,
                senders,
                kinds,
                filter.exclude_deleted
            ],
            rows::message,
        )?
        .collect::<rusqlite::Result<_>>()?;
    if reverse {
        out.reverse();
    }
    Ok(out)
}

/// The sequence of the newest message created before `at`, 0 if none. One seek in
/// `messages_by_channel_time`; ties on the millisecond go to the higher sequence.
pub fn seq_before_time(conn: &Connection, channel: &ChannelId, at: Millis) -> rusqlite::Result<ChannelSeq> {
    let seq: Option<i64> = conn
        .prepare_cached(
            "SELECT seq FROM messages WHERE channel_id = ?1 AND created_at < ?2 \
             ORDER BY created_at DESC, seq DESC LIMIT 1",
        )?
        .query_row(params![channel.as_str(), at], |r| r.get(0))
        .optional()?;
    Ok(ChannelSeq(seq.unwrap_or(0) as u64))
}

/// Messages of a channel in ascending sequence order.
pub fn history(conn: &Connection, q: &HistoryQuery) -> rusqlite::Result<Vec<Message>> {
    let (sql, anchor, reverse) = match q.range {
        HistoryRange::Latest => (
            format!(
                "SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = ?1 AND seq > ?2 ORDER BY seq DESC LIMIT ?3"
            ),
            0i64,
            true,
        ),
        HistoryRange::Before(s) => (
            format!(
                "SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
            ),
            s.0 as i64,
            true,
        ),
        HistoryRange::After(s) => (
            format!("SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3"),
            s.0 as i64,
            false,
        ),
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut out: Vec<Message> = stmt
        .query_map(params![q.channel_id.as_str(), anchor, q.limit], rows::message)?
        .collect::<rusqlite::Result<_>>()?;
    if reverse {
        out.reverse();
    }
    Ok(out)
}

pub fn thread(
    conn: &Connection,
    parent: MessageId,
    after: Option<MessageId>,
    limit: u32,
) -> rusqlite::Result<Vec<Message>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLS} FROM messages WHERE parent_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
    ))?;
    stmt.query_map(params![parent.0, after.map(|a| a.0).unwrap_or(0), limit], rows::message)?
        .collect()
}

pub fn file(conn: &Connection, id: &FileId) -> rusqlite::Result<Option<FileObject>> {
    conn.prepare_cached(&format!("SELECT {FILE_COLS} FROM files WHERE id = ?1"))?
        .query_row([id.as_str()], rows::file)
        .optional()
}

pub fn reply_to(conn: &Connection, bot: &UserId, trigger: MessageId) -> rusqlite::Result<Option<Message>> {
    conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLS} FROM messages WHERE sender_id = ?1 AND trigger_id = ?2"
    ))?
    .query_row(params![bot.as_str(), trigger.0], rows::message)
    .optional()
}

pub fn bot(conn: &Connection, id: &UserId) -> rusqlite::Result<Option<Bot>> {
    conn.prepare_cached(&format!("SELECT {BOT_COLS} FROM bots WHERE id = ?1"))?
        .query_row([id.as_str()], rows::bot)
        .optional()
}

pub fn bots(conn: &Connection) -> rusqlite::Result<Vec<Bot>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {BOT_COLS} FROM bots ORDER BY id"))?;
    stmt.query_map([], rows::bot)?.collect()
}

/// Usage rows of one day range, optionally for one bot and/or user, newest day first.
pub fn usage(
    conn: &Connection,
    from_day: &str,
    to_day: &str,
    bot: Option<&UserId>,
    user: Option<&UserId>,
) -> rusqlite::Result<Vec<UsageRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {USAGE_COLS} FROM usage WHERE day >= ?1 AND day <= ?2 AND (?3 IS NULL OR bot_id = ?3) \
         AND (?4 IS NULL OR user_id = ?4) ORDER BY day DESC, bot_id, user_id, channel_id LIMIT 10000"
    ))?;
    stmt.query_map(
        params![from_day, to_day, bot.map(|b| b.as_str()), user.map(|u| u.as_str())],
        rows::usage,
    )?
    .collect()
}
