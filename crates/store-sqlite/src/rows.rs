//! Mapping between rows and domain entities. Column lists live next to their mappers so they stay in step.

use confab_domain::bot::{Bot, BotSettings, ReplyInfo, ReplyState, UsageRecord};
use confab_domain::model::{Channel, ChannelKind, FileObject, Member, Message, MessageKind, User};
use confab_domain::{ChannelId, ChannelSeq, FileId, MessageId, UserId};
use rusqlite::Row;
use rusqlite::types::Type;
use serde_json::Value;

fn conv_err(col: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, Type::Text, Box::new(e))
}

fn user_id(row: &Row<'_>, col: usize) -> rusqlite::Result<UserId> {
    let s: String = row.get(col)?;
    UserId::parse(&s).map_err(|e| conv_err(col, e))
}

fn opt_user_id(row: &Row<'_>, col: usize) -> rusqlite::Result<Option<UserId>> {
    let s: Option<String> = row.get(col)?;
    s.map(|s| UserId::parse(&s).map_err(|e| conv_err(col, e))).transpose()
}

fn channel_id(row: &Row<'_>, col: usize) -> rusqlite::Result<ChannelId> {
    let s: String = row.get(col)?;
    ChannelId::parse(&s).map_err(|e| conv_err(col, e))
}

fn opt_json(row: &Row<'_>, col: usize) -> rusqlite::Result<Option<Value>> {
    let s: Option<String> = row.get(col)?;
    s.map(|s| serde_json::from_str(&s).map_err(|e| conv_err(col, e)))
        .transpose()
}

pub fn to_json(v: &Option<Value>) -> Option<String> {
    v.as_ref().map(|v| v.to_string())
}

pub const USER_COLS: &str =
    "id, nickname, profile_url, metadata, is_bot, created_at, updated_at, last_seen_at, disabled";

pub fn user(row: &Row<'_>) -> rusqlite::Result<User> {
    let metadata: String = row.get(3)?;
    Ok(User {
        id: user_id(row, 0)?,
        nickname: row.get(1)?,
        profile_url: row.get(2)?,
        metadata: serde_json::from_str(&metadata).map_err(|e| conv_err(3, e))?,
        is_bot: row.get(4)?,
        created_at: row.get(5)?,
        updated_at: row.get(6)?,
        last_seen_at: row.get(7)?,
        disabled: row.get(8)?,
    })
}

pub const CHANNEL_COLS: &str = "c.id, c.kind, c.name, c.cover_url, c.custom_type, c.data, c.created_by, c.created_at, \
                                c.updated_at, c.last_seq, c.last_message_at, c.member_count, \
                                c.distinct_key IS NOT NULL";
pub const CHANNEL_NCOLS: usize = 13;

pub fn channel(row: &Row<'_>) -> rusqlite::Result<Channel> {
    let kind: String = row.get(1)?;
    Ok(Channel {
        id: channel_id(row, 0)?,
        kind: ChannelKind::parse(&kind).ok_or_else(|| conv_err(1, UnknownValue(kind)))?,
        name: row.get(2)?,
        cover_url: row.get(3)?,
        custom_type: row.get(4)?,
        data: opt_json(row, 5)?,
        created_by: opt_user_id(row, 6)?,
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
        last_seq: ChannelSeq(row.get::<_, i64>(9)? as u64),
        last_message_at: row.get(10)?,
        member_count: row.get(11)?,
        distinct: row.get(12)?,
    })
}

pub const MEMBER_COLS: &str = "channel_id, user_id, joined_at, read_seq";

pub fn member(row: &Row<'_>) -> rusqlite::Result<Member> {
    Ok(Member {
        channel_id: channel_id(row, 0)?,
        user_id: user_id(row, 1)?,
        joined_at: row.get(2)?,
        read_seq: ChannelSeq(row.get::<_, i64>(3)? as u64),
    })
}

pub const MESSAGE_COLS: &str = "id, channel_id, seq, sender_id, kind, text, custom_type, data, payload, mentions, \
                                client_msg_id, parent_id, reply_count, file, created_at, updated_at, edited, deleted, \
                                reply_state, trigger_id, reply_reason";

pub fn message(row: &Row<'_>) -> rusqlite::Result<Message> {
    let kind: String = row.get(4)?;
    let mentions: String = row.get(9)?;
    let file: Option<String> = row.get(13)?;
    Ok(Message {
        id: MessageId(row.get(0)?),
        channel_id: channel_id(row, 1)?,
        seq: ChannelSeq(row.get::<_, i64>(2)? as u64),
        sender_id: opt_user_id(row, 3)?,
        kind: MessageKind::parse(&kind).ok_or_else(|| conv_err(4, UnknownValue(kind)))?,
        text: row.get(5)?,
        custom_type: row.get(6)?,
        data: opt_json(row, 7)?,
        payload: opt_json(row, 8)?,
        mentions: serde_json::from_str(&mentions).map_err(|e| conv_err(9, e))?,
        client_msg_id: row.get(10)?,
        parent_id: row.get::<_, Option<i64>>(11)?.map(MessageId),
        reply_count: row.get(12)?,
        file: file
            .map(|f| serde_json::from_str(&f).map_err(|e| conv_err(13, e)))
            .transpose()?,
        created_at: row.get(14)?,
        updated_at: row.get(15)?,
        edited: row.get(16)?,
        deleted: row.get(17)?,
        reply: match row.get::<_, Option<String>>(18)? {
            Some(state) => Some(ReplyInfo {
                state: ReplyState::parse(&state).ok_or_else(|| conv_err(18, UnknownValue(state)))?,
                trigger_id: row.get::<_, Option<i64>>(19)?.map(MessageId),
                reason: row.get(20)?,
            }),
            None => None,
        },
    })
}

pub const FILE_COLS: &str = "id, channel_id, uploader_id, name, size, content_type, sha256, created_at";

pub fn file(row: &Row<'_>) -> rusqlite::Result<FileObject> {
    let id: String = row.get(0)?;
    Ok(FileObject {
        id: FileId::parse(&id).map_err(|e| conv_err(0, e))?,
        channel_id: channel_id(row, 1)?,
        uploader_id: opt_user_id(row, 2)?,
        name: row.get(3)?,
        size: row.get::<_, i64>(4)? as u64,
        content_type: row.get(5)?,
        sha256: row.get(6)?,
        created_at: row.get(7)?,
    })
}

pub const BOT_COLS: &str = "id, settings, created_at, updated_at";

pub fn bot(row: &Row<'_>) -> rusqlite::Result<Bot> {
    let settings: String = row.get(1)?;
    Ok(Bot {
        id: user_id(row, 0)?,
        settings: serde_json::from_str::<BotSettings>(&settings).map_err(|e| conv_err(1, e))?,
        created_at: row.get(2)?,
        updated_at: row.get(3)?,
    })
}

pub const USAGE_COLS: &str = "day, bot_id, user_id, channel_id, prompt_tokens, completion_tokens, replies";

pub fn usage(row: &Row<'_>) -> rusqlite::Result<UsageRecord> {
    Ok(UsageRecord {
        day: row.get(0)?,
        bot_id: user_id(row, 1)?,
        user_id: user_id(row, 2)?,
        channel_id: channel_id(row, 3)?,
        prompt_tokens: row.get::<_, i64>(4)? as u64,
        completion_tokens: row.get::<_, i64>(5)? as u64,
        replies: row.get::<_, i64>(6)? as u64,
    })
}

#[derive(Debug)]
struct UnknownValue(String);

impl std::fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown stored value {:?}", self.0)
    }
}

impl std::error::Error for UnknownValue {}

pub const OUTBOX_COLUMNS: &str = "id, event_type, channel_id, payload, created_at";

pub fn outbox_entry(row: &Row<'_>) -> rusqlite::Result<confab_domain::outbox::OutboxEntry> {
    let channel: Option<String> = row.get(2)?;
    Ok(confab_domain::outbox::OutboxEntry {
        id: row.get::<_, i64>(0)? as u64,
        event_type: row.get(1)?,
        channel_id: channel
            .map(|c| ChannelId::parse(&c).map_err(|e| conv_err(2, e)))
            .transpose()?,
        payload: row.get(3)?,
        created_at: row.get(4)?,
    })
}

pub const DEAD_LETTER_COLUMNS: &str =
    "event_id, event_type, channel_id, payload, created_at, endpoint_id, attempts, last_error, failed_at";

pub fn dead_letter(row: &Row<'_>) -> rusqlite::Result<confab_domain::outbox::DeadLetter> {
    Ok(confab_domain::outbox::DeadLetter {
        event: outbox_entry(row)?,
        endpoint_id: row.get(5)?,
        attempts: row.get(6)?,
        last_error: row.get(7)?,
        failed_at: row.get(8)?,
    })
}

pub const FLAG_COLUMNS: &str = "message_id, rules, state, flagged_at, reviewed_at, reviewed_by";

/// A row of `flagged_messages`, before its message is joined.
pub struct FlagRow {
    pub message_id: MessageId,
    pub rules: Vec<String>,
    pub state: confab_domain::flag::FlagState,
    pub flagged_at: confab_domain::Millis,
    pub reviewed_at: Option<confab_domain::Millis>,
    pub reviewed_by: Option<UserId>,
}

pub fn flag_row(row: &Row<'_>) -> rusqlite::Result<FlagRow> {
    let rules: String = row.get(1)?;
    let state: String = row.get(2)?;
    Ok(FlagRow {
        message_id: MessageId(row.get(0)?),
        rules: serde_json::from_str(&rules).map_err(|e| conv_err(1, e))?,
        state: confab_domain::flag::FlagState::parse(&state).ok_or_else(|| conv_err(2, UnknownValue(state)))?,
        flagged_at: row.get(3)?,
        reviewed_at: row.get(4)?,
        reviewed_by: opt_user_id(row, 5)?,
    })
}
