//! Read queries, usable on a pooled connection or inside the writer's transaction.

use confab_domain::bot::{Bot, UsageRecord};
use confab_domain::flag::{FlagQuery, FlaggedMessage};
use confab_domain::model::{
    Channel, FileObject, HistoryQuery, HistoryRange, Member, MemberChannel, Message, MessageFilter, User,
};
use confab_domain::outbox::{DeadLetter, OutboxEntry};
use confab_domain::ports::SessionRecord;
use confab_domain::{ChannelId, ChannelSeq, FileId, MessageId, Millis, UserId};
use deadpool_postgres::GenericClient;

use crate::db::{row, rows};
use crate::error::{Res, corrupt};
use crate::rows::{
    self as map, BOT_COLS, CHANNEL_COLS, CHANNEL_NCOLS, DEAD_LETTER_COLS, FILE_COLS, FLAG_COLS, M_MESSAGE_COLS,
    MEMBER_COLS, MESSAGE_COLS, OUTBOX_COLS, USAGE_COLS, USER_COLS, get,
};

fn all<T>(found: Vec<tokio_postgres::Row>, f: impl Fn(&tokio_postgres::Row) -> Res<T>) -> Res<Vec<T>> {
    found.iter().map(f).collect()
}

pub(crate) async fn user<C: GenericClient>(c: &C, id: &UserId) -> Res<Option<User>> {
    let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
    row(c, &sql, &[&id.as_str()]).await?.as_ref().map(map::user).transpose()
}

pub(crate) async fn users_after<C: GenericClient>(c: &C, after: Option<&UserId>, limit: u32) -> Res<Vec<User>> {
    let sql = format!("SELECT {USER_COLS} FROM users WHERE id > $1 ORDER BY id LIMIT $2");
    let after = after.map_or("", |a| a.as_str());
    all(rows(c, &sql, &[&after, &(limit as i64)]).await?, map::user)
}

pub(crate) async fn session<C: GenericClient>(c: &C, hash: &[u8; 32]) -> Res<Option<SessionRecord>> {
    let sql = "SELECT token_hash, user_id, created_at, expires_at FROM sessions WHERE token_hash = $1";
    let Some(r) = row(c, sql, &[&&hash[..]]).await? else {
        return Ok(None);
    };
    let h: &[u8] = get(&r, 0)?;
    Ok(Some(SessionRecord {
        token_hash: h.try_into().map_err(|_| corrupt("a token hash is not 32 bytes"))?,
        user_id: UserId::parse(get(&r, 1)?).map_err(corrupt)?,
        created_at: get(&r, 2)?,
        expires_at: get(&r, 3)?,
    }))
}

pub(crate) async fn channel<C: GenericClient>(c: &C, id: &ChannelId) -> Res<Option<Channel>> {
    let sql = format!("SELECT {CHANNEL_COLS} FROM channels c WHERE c.id = $1");
    row(c, &sql, &[&id.as_str()])
        .await?
        .as_ref()
        .map(map::channel)
        .transpose()
}

pub(crate) async fn channel_by_distinct_key<C: GenericClient>(c: &C, key: &str) -> Res<Option<Channel>> {
    let sql = format!("SELECT {CHANNEL_COLS} FROM channels c WHERE c.distinct_key = $1");
    row(c, &sql, &[&key]).await?.as_ref().map(map::channel).transpose()
}

pub(crate) async fn channels_after<C: GenericClient>(
    c: &C,
    after: Option<&ChannelId>,
    limit: u32,
) -> Res<Vec<Channel>> {
    let sql = format!("SELECT {CHANNEL_COLS} FROM channels c WHERE c.id > $1 ORDER BY c.id LIMIT $2");
    let after = after.map_or("", |a| a.as_str());
    all(rows(c, &sql, &[&after, &(limit as i64)]).await?, map::channel)
}

pub(crate) async fn member_channels<C: GenericClient>(
    c: &C,
    user: &UserId,
    after: Option<&ChannelId>,
    limit: u32,
) -> Res<Vec<MemberChannel>> {
    let sql = format!(
        "SELECT {CHANNEL_COLS}, m.read_seq FROM members m JOIN channels c ON c.id = m.channel_id \
         WHERE m.user_id = $1 AND m.channel_id > $2 ORDER BY m.channel_id LIMIT $3"
    );
    let after = after.map_or("", |a| a.as_str());
    all(rows(c, &sql, &[&user.as_str(), &after, &(limit as i64)]).await?, |r| {
        Ok(MemberChannel {
            channel: map::channel(r)?,
            read_seq: ChannelSeq(get::<i64>(r, CHANNEL_NCOLS)?.max(0) as u64),
        })
    })
}

pub(crate) async fn member<C: GenericClient>(c: &C, channel: &ChannelId, user: &UserId) -> Res<Option<Member>> {
    let sql = format!("SELECT {MEMBER_COLS} FROM members WHERE channel_id = $1 AND user_id = $2");
    row(c, &sql, &[&channel.as_str(), &user.as_str()])
        .await?
        .as_ref()
        .map(map::member)
        .transpose()
}

pub(crate) async fn members_after<C: GenericClient>(
    c: &C,
    channel: &ChannelId,
    after: Option<&UserId>,
    limit: u32,
) -> Res<Vec<Member>> {
    let sql =
        format!("SELECT {MEMBER_COLS} FROM members WHERE channel_id = $1 AND user_id > $2 ORDER BY user_id LIMIT $3");
    let after = after.map_or("", |a| a.as_str());
    all(
        rows(c, &sql, &[&channel.as_str(), &after, &(limit as i64)]).await?,
        map::member,
    )
}

fn user_ids(found: Vec<tokio_postgres::Row>) -> Res<Vec<UserId>> {
    all(found, |r| UserId::parse(get(r, 0)?).map_err(corrupt))
}

pub(crate) async fn member_ids<C: GenericClient>(c: &C, channel: &ChannelId) -> Res<Vec<UserId>> {
    user_ids(
        rows(
            c,
            "SELECT user_id FROM members WHERE channel_id = $1",
            &[&channel.as_str()],
        )
        .await?,
    )
}

pub(crate) async fn user_channel_ids<C: GenericClient>(c: &C, user: &UserId) -> Res<Vec<ChannelId>> {
    let found = rows(
        c,
        "SELECT channel_id FROM members WHERE user_id = $1 ORDER BY channel_id",
        &[&user.as_str()],
    )
    .await?;
    all(found, |r| ChannelId::parse(get(r, 0)?).map_err(corrupt))
}

pub(crate) async fn contacts<C: GenericClient>(c: &C, user: &UserId, max_members: u32) -> Res<Vec<UserId>> {
    let sql = "SELECT DISTINCT m2.user_id FROM members m1 \
               JOIN channels c ON c.id = m1.channel_id AND c.member_count <= $2 \
               JOIN members m2 ON m2.channel_id = m1.channel_id \
               WHERE m1.user_id = $1 AND m2.user_id <> $1";
    user_ids(rows(c, sql, &[&user.as_str(), &(max_members as i64)]).await?)
}

pub(crate) async fn message<C: GenericClient>(c: &C, id: MessageId) -> Res<Option<Message>> {
    let sql = format!("SELECT {MESSAGE_COLS} FROM messages WHERE id = $1");
    row(c, &sql, &[&id.0]).await?.as_ref().map(map::message).transpose()
}

/// A flagged message with its flag, if the message still exists.
pub(crate) async fn flag<C: GenericClient>(c: &C, id: MessageId) -> Res<Option<FlaggedMessage>> {
    let sql = format!(
        "SELECT {FLAG_COLS}, {M_MESSAGE_COLS} FROM flagged_messages f JOIN messages m ON m.id = f.message_id \
         WHERE f.message_id = $1"
    );
    row(c, &sql, &[&id.0]).await?.as_ref().map(map::flagged).transpose()
}

/// Flags oldest message first. A flag whose message no longer exists (its channel was deleted) is left out
/// by the join, before the limit: a page is never short because of it.
pub(crate) async fn flags<C: GenericClient>(c: &C, q: &FlagQuery) -> Res<Vec<FlaggedMessage>> {
    let sql = format!(
        "SELECT {FLAG_COLS}, {M_MESSAGE_COLS} FROM flagged_messages f JOIN messages m ON m.id = f.message_id \
         WHERE ($1::text IS NULL OR f.state = $1) AND ($2::text IS NULL OR f.channel_id = $2) \
         AND f.message_id > $3 ORDER BY f.message_id LIMIT $4"
    );
    let state = q.state.map(|s| s.as_str());
    let channel = q.channel_id.as_ref().map(|c| c.as_str());
    let after = q.after.map_or(0, |a| a.0);
    all(
        rows(c, &sql, &[&state, &channel, &after, &(q.limit as i64)]).await?,
        map::flagged,
    )
}

/// The message a sender's idempotency key names (the key belongs to the account: see `message_keys`).
pub(crate) async fn message_by_client_id<C: GenericClient>(
    c: &C,
    sender: &UserId,
    client_msg_id: &str,
) -> Res<Option<Message>> {
    let sql = format!(
        "SELECT {M_MESSAGE_COLS} FROM message_keys k JOIN messages m ON m.id = k.message_id \
         WHERE k.sender_id = $1 AND k.client_msg_id = $2"
    );
    row(c, &sql, &[&sender.as_str(), &client_msg_id])
        .await?
        .as_ref()
        .map(map::message)
        .transpose()
}

/// The condition, order, anchor and whether to reverse, of a history range.
fn range(r: HistoryRange) -> (&'static str, &'static str, i64, bool) {
    match r {
        HistoryRange::Latest => ("seq > $2", "DESC", 0, true),
        HistoryRange::Before(s) => ("seq < $2", "DESC", s.0 as i64, true),
        HistoryRange::After(s) => ("seq > $2", "ASC", s.0 as i64, false),
    }
}

/// Messages of a channel in ascending sequence order.
pub(crate) async fn history<C: GenericClient>(c: &C, q: &HistoryQuery) -> Res<Vec<Message>> {
    let (cond, order, anchor, reverse) = range(q.range);
    let sql =
        format!("SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = $1 AND {cond} ORDER BY seq {order} LIMIT $3");
    let mut out = all(
        rows(c, &sql, &[&q.channel_id.as_str(), &anchor, &(q.limit as i64)]).await?,
        map::message,
    )?;
    if reverse {
        out.reverse();
    }
    Ok(out)
}

/// Messages of a channel matching `filter`, in ascending sequence order. Each filter list travels as one
/// array parameter, so the statement text is the same whatever the filter and stays cached.
pub(crate) async fn history_matching<C: GenericClient>(
    c: &C,
    q: &HistoryQuery,
    filter: &MessageFilter,
) -> Res<Vec<Message>> {
    if filter.is_empty() {
        return history(c, q).await;
    }
    let (cond, order, anchor, reverse) = range(q.range);
    let sql = format!(
        "SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = $1 AND {cond} \
         AND ($4::text[] IS NULL OR custom_type = ANY($4)) \
         AND ($5::text[] IS NULL OR sender_id = ANY($5)) \
         AND ($6::text[] IS NULL OR kind = ANY($6)) \
         AND (NOT $7 OR NOT deleted) \
         ORDER BY seq {order} LIMIT $3"
    );
    let custom_types: Option<Vec<&str>> = filter
        .custom_types
        .as_ref()
        .map(|v| v.iter().map(String::as_str).collect());
    let senders: Option<Vec<&str>> = filter
        .sender_ids
        .as_ref()
        .map(|v| v.iter().map(UserId::as_str).collect());
    let kinds: Option<Vec<&str>> = filter.kinds.as_ref().map(|v| v.iter().map(|k| k.as_str()).collect());
    let mut out = all(
        rows(
            c,
            &sql,
            &[
                &q.channel_id.as_str(),
                &anchor,
                &(q.limit as i64),
                &custom_types,
                &senders,
                &kinds,
                &filter.exclude_deleted,
            ],
        )
        .await?,
        map::message,
    )?;
    if reverse {
        out.reverse();
    }
    Ok(out)
}

/// The sequence of the newest message created before `at`, 0 if none. One seek in
/// `messages_by_channel_time`; ties on the millisecond go to the higher sequence.
pub(crate) async fn seq_before_time<C: GenericClient>(c: &C, channel: &ChannelId, at: Millis) -> Res<ChannelSeq> {
    let found = row(
        c,
        "SELECT seq FROM messages WHERE channel_id = $1 AND created_at < $2 \
         ORDER BY created_at DESC, seq DESC LIMIT 1",
        &[&channel.as_str(), &at],
    )
    .await?;
    Ok(ChannelSeq(match found {
        Some(r) => get::<i64>(&r, 0)?.max(0) as u64,
        None => 0,
    }))
}

pub(crate) async fn thread<C: GenericClient>(
    c: &C,
    parent: MessageId,
    after: Option<MessageId>,
    limit: u32,
) -> Res<Vec<Message>> {
    let sql = format!("SELECT {MESSAGE_COLS} FROM messages WHERE parent_id = $1 AND id > $2 ORDER BY id LIMIT $3");
    let after = after.map_or(0, |a| a.0);
    all(
        rows(c, &sql, &[&parent.0, &after, &(limit as i64)]).await?,
        map::message,
    )
}

pub(crate) async fn file<C: GenericClient>(c: &C, id: &FileId) -> Res<Option<FileObject>> {
    let sql = format!("SELECT {FILE_COLS} FROM files WHERE id = $1");
    row(c, &sql, &[&id.as_str()]).await?.as_ref().map(map::file).transpose()
}

pub(crate) async fn reply_to<C: GenericClient>(c: &C, bot: &UserId, trigger: MessageId) -> Res<Option<Message>> {
    let sql = format!("SELECT {MESSAGE_COLS} FROM messages WHERE sender_id = $1 AND trigger_id = $2");
    row(c, &sql, &[&bot.as_str(), &trigger.0])
        .await?
        .as_ref()
        .map(map::message)
        .transpose()
}

pub(crate) async fn bot<C: GenericClient>(c: &C, id: &UserId) -> Res<Option<Bot>> {
    let sql = format!("SELECT {BOT_COLS} FROM bots WHERE id = $1");
    row(c, &sql, &[&id.as_str()]).await?.as_ref().map(map::bot).transpose()
}

pub(crate) async fn bots<C: GenericClient>(c: &C) -> Res<Vec<Bot>> {
    let sql = format!("SELECT {BOT_COLS} FROM bots ORDER BY id");
    all(rows(c, &sql, &[]).await?, map::bot)
}

/// Usage rows of one day range, optionally for one bot and/or user, newest day first.
pub(crate) async fn usage<C: GenericClient>(
    c: &C,
    from_day: &str,
    to_day: &str,
    bot: Option<&UserId>,
    user: Option<&UserId>,
) -> Res<Vec<UsageRecord>> {
    let sql = format!(
        "SELECT {USAGE_COLS} FROM usage WHERE day >= $1 AND day <= $2 AND ($3::text IS NULL OR bot_id = $3) \
         AND ($4::text IS NULL OR user_id = $4) ORDER BY day DESC, bot_id, user_id, channel_id LIMIT 10000"
    );
    let (bot, user) = (bot.map(|b| b.as_str()), user.map(|u| u.as_str()));
    all(rows(c, &sql, &[&from_day, &to_day, &bot, &user]).await?, map::usage)
}

/// `(key, JSON)` pairs of a statement returning text key and text JSON.
fn json_pairs(found: Vec<tokio_postgres::Row>) -> Res<Vec<(String, serde_json::Value)>> {
    all(found, |r| {
        let value: &str = get(r, 1)?;
        Ok((get(r, 0)?, serde_json::from_str(value).map_err(corrupt)?))
    })
}

pub(crate) async fn online_among<C: GenericClient>(c: &C, users: &[String]) -> Res<Vec<UserId>> {
    rows(
        c,
        "SELECT DISTINCT user_id FROM presence WHERE user_id = ANY($1)",
        &[&users],
    )
    .await?
    .iter()
    .map(|r| crate::rows::user_id(r, 0))
    .collect()
}

pub(crate) async fn providers<C: GenericClient>(c: &C) -> Res<Vec<(String, serde_json::Value)>> {
    json_pairs(rows(c, "SELECT name, config FROM providers ORDER BY name", &[]).await?)
}

pub(crate) async fn setting<C: GenericClient>(c: &C, namespace: &str, key: &str) -> Res<Option<serde_json::Value>> {
    let found = row(
        c,
        "SELECT value FROM settings WHERE namespace = $1 AND key = $2",
        &[&namespace, &key],
    )
    .await?;
    found
        .map(|r| serde_json::from_str(get(&r, 0)?).map_err(corrupt))
        .transpose()
}

pub(crate) async fn settings<C: GenericClient>(c: &C, namespace: &str) -> Res<Vec<(String, serde_json::Value)>> {
    json_pairs(
        rows(
            c,
            "SELECT key, value FROM settings WHERE namespace = $1 ORDER BY key",
            &[&namespace],
        )
        .await?,
    )
}

pub(crate) async fn outbox_after<C: GenericClient>(c: &C, after: u64, limit: u32) -> Res<Vec<OutboxEntry>> {
    let sql = format!("SELECT {OUTBOX_COLS} FROM outbox WHERE id > $1 ORDER BY id LIMIT $2");
    all(
        rows(c, &sql, &[&(after.min(i64::MAX as u64) as i64), &(limit as i64)]).await?,
        map::outbox_entry,
    )
}

/// The counter, not `max(id)`: it survives pruning.
pub(crate) async fn outbox_head<C: GenericClient>(c: &C) -> Res<u64> {
    let found = row(c, "SELECT last_id FROM outbox_counter", &[]).await?;
    Ok(match found {
        Some(r) => get::<i64>(&r, 0)?.max(0) as u64,
        None => 0,
    })
}

pub(crate) async fn dead_letter<C: GenericClient>(c: &C, endpoint: &str, event_id: u64) -> Res<Option<DeadLetter>> {
    let sql = format!("SELECT {DEAD_LETTER_COLS} FROM webhook_dead_letters WHERE endpoint_id = $1 AND event_id = $2");
    row(c, &sql, &[&endpoint, &(event_id.min(i64::MAX as u64) as i64)])
        .await?
        .as_ref()
        .map(map::dead_letter)
        .transpose()
}

pub(crate) async fn dead_letters<C: GenericClient>(
    c: &C,
    endpoint: &str,
    after: u64,
    limit: u32,
) -> Res<Vec<DeadLetter>> {
    let sql = format!(
        "SELECT {DEAD_LETTER_COLS} FROM webhook_dead_letters WHERE endpoint_id = $1 AND event_id > $2 \
         ORDER BY event_id LIMIT $3"
    );
    all(
        rows(
            c,
            &sql,
            &[&endpoint, &(after.min(i64::MAX as u64) as i64), &(limit as i64)],
        )
        .await?,
        map::dead_letter,
    )
}
