//! Mapping between rows and domain entities. Column lists live next to their mappers so they stay in step.

use confab_domain::bot::{Bot, BotSettings, ReplyInfo, ReplyState, UsageRecord};
use confab_domain::flag::FlagState;
use confab_domain::model::{Channel, ChannelKind, FileObject, Member, Message, MessageKind, User};
use confab_domain::outbox::{DeadLetter, OutboxEntry};
use confab_domain::{ChannelId, ChannelSeq, FileId, MessageId, Millis, UserId};
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use crate::error::{Res, corrupt};

/// A column's value, or a corrupt-row error naming it.
pub(crate) fn get<'a, T: FromSql<'a>>(row: &'a Row, col: usize) -> Res<T> {
    row.try_get(col).map_err(|e| corrupt(format!("column {col}: {e}")))
}

pub(crate) fn user_id(row: &Row, col: usize) -> Res<UserId> {
    UserId::parse(get::<&str>(row, col)?).map_err(corrupt)
}

fn opt_user_id(row: &Row, col: usize) -> Res<Option<UserId>> {
    get::<Option<&str>>(row, col)?
        .map(|s| UserId::parse(s).map_err(corrupt))
        .transpose()
}

fn channel_id(row: &Row, col: usize) -> Res<ChannelId> {
    ChannelId::parse(get::<&str>(row, col)?).map_err(corrupt)
}

fn opt_channel_id(row: &Row, col: usize) -> Res<Option<ChannelId>> {
    get::<Option<&str>>(row, col)?
        .map(|s| ChannelId::parse(s).map_err(corrupt))
        .transpose()
}

fn json<T: serde::de::DeserializeOwned>(text: &str) -> Res<T> {
    serde_json::from_str(text).map_err(corrupt)
}

fn opt_json(row: &Row, col: usize) -> Res<Option<Value>> {
    get::<Option<&str>>(row, col)?.map(json).transpose()
}

fn seq(row: &Row, col: usize) -> Res<ChannelSeq> {
    Ok(ChannelSeq(get::<i64>(row, col)?.max(0) as u64))
}

fn count(row: &Row, col: usize) -> Res<u32> {
    Ok(get::<i64>(row, col)?.clamp(0, u32::MAX as i64) as u32)
}

/// JSON text of an optional value, as stored.
pub(crate) fn to_json(v: &Option<Value>) -> Option<String> {
    v.as_ref().map(|v| v.to_string())
}

/// An error that cannot happen when serializing the domain's types (kept, not unwrapped).
pub(crate) fn ser<T: serde::Serialize>(v: &T) -> Res<String> {
    serde_json::to_string(v).map_err(|e| confab_domain::DomainError::Internal(e.to_string()).into())
}

pub(crate) const USER_COLS: &str =
    "id, nickname, profile_url, metadata, is_bot, created_at, updated_at, last_seen_at, disabled";

pub(crate) fn user(row: &Row) -> Res<User> {
    Ok(User {
        id: user_id(row, 0)?,
        nickname: get(row, 1)?,
        profile_url: get(row, 2)?,
        metadata: json(get(row, 3)?)?,
        is_bot: get(row, 4)?,
        created_at: get(row, 5)?,
        updated_at: get(row, 6)?,
        last_seen_at: get(row, 7)?,
        disabled: get(row, 8)?,
    })
}

pub(crate) const CHANNEL_COLS: &str = "c.id, c.kind, c.name, c.cover_url, c.custom_type, c.data, c.created_by, \
                                       c.created_at, c.updated_at, c.last_seq, c.last_message_at, c.member_count, \
                                       c.distinct_key IS NOT NULL";
pub(crate) const CHANNEL_NCOLS: usize = 13;

pub(crate) fn channel(row: &Row) -> Res<Channel> {
    let kind: &str = get(row, 1)?;
    Ok(Channel {
        id: channel_id(row, 0)?,
        kind: ChannelKind::parse(kind).ok_or_else(|| corrupt(format!("unknown channel kind {kind:?}")))?,
        name: get(row, 2)?,
        cover_url: get(row, 3)?,
        custom_type: get(row, 4)?,
        data: opt_json(row, 5)?,
        created_by: opt_user_id(row, 6)?,
        created_at: get(row, 7)?,
        updated_at: get(row, 8)?,
        last_seq: seq(row, 9)?,
        last_message_at: get(row, 10)?,
        member_count: count(row, 11)?,
        distinct: get(row, 12)?,
    })
}

pub(crate) const MEMBER_COLS: &str = "channel_id, user_id, joined_at, read_seq";

pub(crate) fn member(row: &Row) -> Res<Member> {
    Ok(Member {
        channel_id: channel_id(row, 0)?,
        user_id: user_id(row, 1)?,
        joined_at: get(row, 2)?,
        read_seq: seq(row, 3)?,
    })
}

pub(crate) const MESSAGE_COLS: &str = "id, channel_id, seq, sender_id, kind, text, custom_type, data, payload, \
                                       mentions, client_msg_id, parent_id, reply_count, file, created_at, \
                                       updated_at, edited, deleted, reply_state, trigger_id, reply_reason";

/// The message columns of a query that names the messages table `m`.
pub(crate) const M_MESSAGE_COLS: &str = "m.id, m.channel_id, m.seq, m.sender_id, m.kind, m.text, m.custom_type, \
                                         m.data, m.payload, m.mentions, m.client_msg_id, m.parent_id, \
                                         m.reply_count, m.file, m.created_at, m.updated_at, m.edited, m.deleted, \
                                         m.reply_state, m.trigger_id, m.reply_reason";

pub(crate) fn message(row: &Row) -> Res<Message> {
    message_at(row, 0)
}

pub(crate) const FILE_COLS: &str = "id, channel_id, uploader_id, name, size, content_type, sha256, created_at";

pub(crate) fn file(row: &Row) -> Res<FileObject> {
    Ok(FileObject {
        id: FileId::parse(get(row, 0)?).map_err(corrupt)?,
        channel_id: channel_id(row, 1)?,
        uploader_id: opt_user_id(row, 2)?,
        name: get(row, 3)?,
        size: get::<i64>(row, 4)?.max(0) as u64,
        content_type: get(row, 5)?,
        sha256: get(row, 6)?,
        created_at: get(row, 7)?,
    })
}

pub(crate) const BOT_COLS: &str = "id, settings, created_at, updated_at";

pub(crate) fn bot(row: &Row) -> Res<Bot> {
    Ok(Bot {
        id: user_id(row, 0)?,
        settings: json::<BotSettings>(get(row, 1)?)?,
        created_at: get(row, 2)?,
        updated_at: get(row, 3)?,
    })
}

pub(crate) const USAGE_COLS: &str = "day, bot_id, user_id, channel_id, prompt_tokens, completion_tokens, replies";

pub(crate) fn usage(row: &Row) -> Res<UsageRecord> {
    Ok(UsageRecord {
        day: get(row, 0)?,
        bot_id: user_id(row, 1)?,
        user_id: user_id(row, 2)?,
        channel_id: channel_id(row, 3)?,
        prompt_tokens: get::<i64>(row, 4)?.max(0) as u64,
        completion_tokens: get::<i64>(row, 5)?.max(0) as u64,
        replies: get::<i64>(row, 6)?.max(0) as u64,
    })
}

pub(crate) const OUTBOX_COLS: &str = "id, event_type, channel_id, payload, created_at";

pub(crate) fn outbox_entry(row: &Row) -> Res<OutboxEntry> {
    Ok(OutboxEntry {
        id: get::<i64>(row, 0)?.max(0) as u64,
        event_type: get(row, 1)?,
        channel_id: opt_channel_id(row, 2)?,
        payload: get(row, 3)?,
        created_at: get(row, 4)?,
    })
}

pub(crate) const DEAD_LETTER_COLS: &str =
    "event_id, event_type, channel_id, payload, created_at, endpoint_id, attempts, last_error, failed_at";

pub(crate) fn dead_letter(row: &Row) -> Res<DeadLetter> {
    Ok(DeadLetter {
        event: outbox_entry(row)?,
        endpoint_id: get(row, 5)?,
        attempts: count(row, 6)?,
        last_error: get(row, 7)?,
        failed_at: get(row, 8)?,
    })
}

/// A flag's columns, in a query that names the flags table `f`.
pub(crate) const FLAG_COLS: &str = "f.message_id, f.rules, f.state, f.flagged_at, f.reviewed_at, f.reviewed_by";

/// A flag row, its message's columns following its own.
pub(crate) fn flagged(row: &Row) -> Res<confab_domain::flag::FlaggedMessage> {
    const M: usize = 6;
    let state: &str = get(row, 2)?;
    Ok(confab_domain::flag::FlaggedMessage {
        message: message_at(row, M)?,
        rules: get(row, 1)?,
        state: FlagState::parse(state).ok_or_else(|| corrupt(format!("unknown flag state {state:?}")))?,
        flagged_at: get::<Millis>(row, 3)?,
        reviewed_at: get(row, 4)?,
        reviewed_by: opt_user_id(row, 5)?,
    })
}

/// A message whose columns start at `at` (joined after another table's).
fn message_at(row: &Row, at: usize) -> Res<Message> {
    let c = |i: usize| at + i;
    let kind: &str = get(row, c(4))?;
    let mentions: Vec<&str> = get(row, c(9))?;
    Ok(Message {
        id: MessageId(get(row, c(0))?),
        channel_id: channel_id(row, c(1))?,
        seq: seq(row, c(2))?,
        sender_id: opt_user_id(row, c(3))?,
        kind: MessageKind::parse(kind).ok_or_else(|| corrupt(format!("unknown message kind {kind:?}")))?,
        text: get(row, c(5))?,
        custom_type: get(row, c(6))?,
        data: opt_json(row, c(7))?,
        payload: opt_json(row, c(8))?,
        mentions: mentions
            .into_iter()
            .map(|m| UserId::parse(m).map_err(corrupt))
            .collect::<Res<_>>()?,
        client_msg_id: get(row, c(10))?,
        parent_id: get::<Option<i64>>(row, c(11))?.map(MessageId),
        reply_count: count(row, c(12))?,
        file: get::<Option<&str>>(row, c(13))?.map(json).transpose()?,
        created_at: get(row, c(14))?,
        updated_at: get(row, c(15))?,
        edited: get(row, c(16))?,
        deleted: get(row, c(17))?,
        reply: match get::<Option<&str>>(row, c(18))? {
            Some(state) => Some(ReplyInfo {
                state: ReplyState::parse(state).ok_or_else(|| corrupt(format!("unknown reply state {state:?}")))?,
                trigger_id: get::<Option<i64>>(row, c(19))?.map(MessageId),
                reason: get(row, c(20))?,
            }),
            None => None,
        },
    })
}
