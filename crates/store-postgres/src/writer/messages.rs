//! Writes of messages: append (with its preconditions), edit, delete, flags, and a bot reply's final state.

use confab_domain::model::Message;

use super::*;
use crate::facts;
use crate::rows::{ser, to_json};

pub(super) async fn append(
    tx: &Transaction<'_>,
    m: &NewMessage,
    preconditions: &[Precondition],
    now: Millis,
    node: &str,
    events: &mut Vec<Event>,
) -> Res<Appended> {
    if let (Some(sender), Some(trigger_id)) = (&m.sender_id, m.reply.as_ref().and_then(|r| r.trigger_id))
        && let Some(original) = queries::reply_to(tx, sender, trigger_id).await?
    {
        return Ok(Appended {
            message: original,
            duplicate: true,
        });
    }
    facts::check(tx, preconditions).await?;
    if let (Some(sender), Some(key)) = (&m.sender_id, &m.client_msg_id)
        && let Some(original) = queries::message_by_client_id(tx, sender, key).await?
    {
        if original.channel_id != m.channel_id {
            return Err(DomainError::invalid("client_msg_id", "already used for a message of another channel").into());
        }
        return Ok(Appended {
            message: original,
            duplicate: true,
        });
    }
    if let Some(parent_id) = m.parent_id
        && !crate::db::exists(tx, "SELECT 1 FROM messages WHERE id = $1", &[&parent_id.0]).await?
    {
        return Err(DomainError::not_found("message", parent_id).into());
    }
    let file = match &m.file_id {
        Some(fid) => Some(
            queries::file(tx, fid)
                .await?
                .ok_or_else(|| DomainError::not_found("file", fid))?,
        ),
        None => None,
    };
    let file_json = file.as_ref().map(ser).transpose()?;
    let mentions: Vec<&str> = m.mentions.iter().map(UserId::as_str).collect();
    let reply = m.reply.as_ref();
    // One statement: the channel's next sequence, the row, the sender's idempotency key, and the sender's
    // read position (the sender has read its own message). The channel's row stays locked until the commit
    // (and the batch holds the cluster's write lock), so the sequence has no gap and no repeat.
    let inserted = crate::db::row(
        tx,
        "WITH s AS (UPDATE channels SET last_seq = last_seq + 1, last_message_at = $13 WHERE id = $1 \
         RETURNING last_seq), \
         m AS (INSERT INTO messages (channel_id, seq, sender_id, kind, text, custom_type, data, payload, mentions, \
         client_msg_id, parent_id, file, file_id, created_at, updated_at, reply_state, trigger_id, reply_reason, \
         reply_node) \
         SELECT $1, s.last_seq, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14, $15, $16, $17 FROM s \
         RETURNING id, seq), \
         k AS (INSERT INTO message_keys (sender_id, client_msg_id, channel_id, message_id) \
         SELECT $2, $9, $1, m.id FROM m WHERE $2::text IS NOT NULL AND $9::text IS NOT NULL), \
         r AS (UPDATE members SET read_seq = m.seq FROM m WHERE members.channel_id = $1 AND members.user_id = $2) \
         SELECT id, seq FROM m",
        &[
            &m.channel_id.as_str(),
            &m.sender_id.as_ref().map(|u| u.as_str()),
            &m.kind.as_str(),
            &m.text,
            &m.custom_type,
            &to_json(&m.data),
            &to_json(&m.payload),
            &mentions,
            &m.client_msg_id,
            &m.parent_id.map(|p| p.0),
            &file_json,
            &m.file_id.as_ref().map(|f| f.as_str()),
            &now,
            &reply.map(|r| r.state.as_str()),
            &reply.and_then(|r| r.trigger_id).map(|t| t.0),
            &reply.and_then(|r| r.reason.as_deref()),
            &reply.filter(|r| r.state == ReplyState::Generating).map(|_| node),
        ],
    )
    .await?;
    let Some(inserted) = inserted else {
        return Err(DomainError::not_found("channel", &m.channel_id).into());
    };
    let id = MessageId(get(&inserted, 0)?);
    let seq = ChannelSeq(get::<i64>(&inserted, 1)? as u64);
    if !m.flags.is_empty() {
        insert_flag(tx, id, &m.channel_id, &m.flags, now).await?;
    }
    let message = created(m, id, seq, file, now);
    events.push(Event::MessageCreated(Arc::new(message.clone())));
    if let Some(parent_id) = m.parent_id {
        exec(
            tx,
            "UPDATE messages SET reply_count = reply_count + 1 WHERE id = $1",
            &[&parent_id.0],
        )
        .await?;
        if let Some(parent) = queries::message(tx, parent_id).await? {
            events.push(Event::MessageUpdated(Arc::new(parent)));
        }
    }
    Ok(Appended {
        message,
        duplicate: false,
    })
}

/// A new message as stored: `m` with its id, sequence, file and time.
pub(super) fn created(
    m: &NewMessage,
    id: MessageId,
    seq: ChannelSeq,
    file: Option<FileObject>,
    now: Millis,
) -> Message {
    Message {
        id,
        channel_id: m.channel_id.clone(),
        seq,
        sender_id: m.sender_id.clone(),
        kind: m.kind,
        text: m.text.clone(),
        custom_type: m.custom_type.clone(),
        data: m.data.clone(),
        payload: m.payload.clone(),
        mentions: m.mentions.clone(),
        client_msg_id: m.client_msg_id.clone(),
        parent_id: m.parent_id,
        reply_count: 0,
        file,
        created_at: now,
        updated_at: now,
        edited: false,
        deleted: false,
        reply: m.reply.clone(),
    }
}

/// Stores a message's flag with all its rules (`$3`), pending review.
pub(super) const FLAG_SQL: &str = "INSERT INTO flagged_messages (message_id, channel_id, rules, flagged_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (message_id) DO UPDATE SET rules = excluded.rules, state = 'pending', \
     flagged_at = excluded.flagged_at, reviewed_at = NULL, reviewed_by = NULL";

/// `rules` without repeats, in order, after those of `all`.
pub(super) fn add_rules(all: &mut Vec<String>, rules: &[String]) {
    for r in rules {
        if !all.contains(r) {
            all.push(r.clone());
        }
    }
}

/// Records a message for review; flagging it again (an edit whose new content matched) adds the new rules
/// and puts it back in review: an approval was for the content as it was.
pub(super) async fn insert_flag(
    tx: &Transaction<'_>,
    id: MessageId,
    channel: &ChannelId,
    rules: &[String],
    now: Millis,
) -> Res<()> {
    let existing = crate::db::row(tx, "SELECT rules FROM flagged_messages WHERE message_id = $1", &[&id.0]).await?;
    let mut all: Vec<String> = match existing {
        Some(r) => get(&r, 0)?,
        None => Vec::new(),
    };
    add_rules(&mut all, rules);
    exec(tx, FLAG_SQL, &[&id.0, &channel.as_str(), &all, &now]).await?;
    Ok(())
}

/// Settles a pending flag; the same decision again is a no-op, a different one a conflict. A review
/// approves or removes: `Pending` is no decision (`Invalid`).
pub(super) async fn review_flag(
    tx: &Transaction<'_>,
    id: MessageId,
    state: FlagState,
    by: Option<&UserId>,
    now: Millis,
) -> Res<()> {
    if state == FlagState::Pending {
        return Err(DomainError::invalid("state", "a review approves or removes a flagged message").into());
    }
    let current = crate::db::row(tx, "SELECT state FROM flagged_messages WHERE message_id = $1", &[&id.0]).await?;
    let current = match &current {
        Some(r) => Some(get::<&str>(r, 0)?),
        None => None,
    };
    match current.and_then(FlagState::parse) {
        None => return Err(DomainError::not_found("flagged message", id).into()),
        Some(FlagState::Pending) => {}
        Some(s) if s == state => return Ok(()),
        Some(s) => {
            return Err(
                DomainError::already_exists("review of flagged message", format!("{id} ({})", s.as_str())).into(),
            );
        }
    }
    exec(
        tx,
        "UPDATE flagged_messages SET state = $2, reviewed_at = $3, reviewed_by = $4 WHERE message_id = $1",
        &[&id.0, &state.as_str(), &now, &by.map(|u| u.as_str())],
    )
    .await?;
    Ok(())
}

pub(super) async fn load_message(tx: &Transaction<'_>, id: MessageId) -> Res<Message> {
    Ok(queries::message(tx, id)
        .await?
        .ok_or_else(|| DomainError::not_found("message", id))?)
}

pub(super) async fn edit(
    tx: &Transaction<'_>,
    id: MessageId,
    p: &MessagePatch,
    preconditions: &[Precondition],
    now: Millis,
    events: &mut Vec<Event>,
) -> Res<Message> {
    let mut msg = load_message(tx, id).await?;
    if msg.deleted {
        return Err(DomainError::not_found("message", id).into());
    }
    facts::check(tx, preconditions).await?;
    if let Some(t) = &p.text {
        msg.text = t.clone();
    }
    if let Some(c) = &p.custom_type {
        msg.custom_type = c.clone();
    }
    if let Some(d) = &p.data {
        msg.data = d.clone();
    }
    if let Some(pl) = &p.payload {
        msg.payload = Some(pl.clone());
    }
    msg.updated_at = now;
    msg.edited = true;
    exec(
        tx,
        "UPDATE messages SET text = $2, custom_type = $3, data = $4, payload = $5, updated_at = $6, edited = TRUE \
         WHERE id = $1",
        &[
            &id.0,
            &msg.text,
            &msg.custom_type,
            &to_json(&msg.data),
            &to_json(&msg.payload),
            &now,
        ],
    )
    .await?;
    // The new content's flags, in the edit's transaction (as a send's are).
    if !p.flags.is_empty() {
        insert_flag(tx, id, &msg.channel_id, &p.flags, now).await?;
    }
    events.push(Event::MessageUpdated(Arc::new(msg.clone())));
    Ok(msg)
}

/// Soft delete: the message keeps its sequence and loses its content; a thread reply no longer counts on
/// its parent (the count changes silently: the deletion's event is the one clients get).
pub(super) async fn delete_message(
    tx: &Transaction<'_>,
    id: MessageId,
    now: Millis,
    events: &mut Vec<Event>,
) -> Res<Message> {
    let mut msg = load_message(tx, id).await?;
    if msg.deleted {
        return Ok(msg);
    }
    msg.text.clear();
    msg.data = None;
    msg.payload = None;
    msg.file = None;
    msg.mentions.clear();
    msg.deleted = true;
    msg.updated_at = now;
    exec(
        tx,
        "UPDATE messages SET text = '', data = NULL, payload = NULL, file = NULL, file_id = NULL, \
         mentions = '{}', deleted = TRUE, updated_at = $2 WHERE id = $1",
        &[&id.0, &now],
    )
    .await?;
    events.push(Event::MessageDeleted {
        channel_id: msg.channel_id.clone(),
        message_id: id,
        seq: msg.seq,
    });
    // A thread counts the replies it shows.
    if let Some(parent_id) = msg.parent_id {
        exec(
            tx,
            "UPDATE messages SET reply_count = greatest(reply_count - 1, 0) WHERE id = $1",
            &[&parent_id.0],
        )
        .await?;
        if let Some(parent) = queries::message(tx, parent_id).await? {
            events.push(Event::MessageUpdated(Arc::new(parent)));
        }
    }
    Ok(msg)
}

/// Writes a reply's final text and state, once: a reply already final is returned unchanged.
pub(super) async fn finish_reply(
    tx: &Transaction<'_>,
    id: MessageId,
    text: &str,
    state: ReplyState,
    reason: Option<String>,
    now: Millis,
    events: &mut Vec<Event>,
) -> Res<Message> {
    let mut msg = load_message(tx, id).await?;
    let Some(reply) = msg.reply.as_mut() else {
        return Err(DomainError::invalid("message_id", "not a bot reply").into());
    };
    if reply.state.is_final() {
        return Ok(msg);
    }
    reply.state = state;
    reply.reason = reason;
    // The sweep after a restart keeps whatever text was last saved; a deleted reply keeps no content.
    if !msg.deleted && (!text.is_empty() || state != ReplyState::Interrupted) {
        msg.text = text.to_string();
    }
    msg.updated_at = now;
    exec(
        tx,
        "UPDATE messages SET text = $2, reply_state = $3, reply_reason = $4, updated_at = $5 WHERE id = $1",
        &[
            &id.0,
            &msg.text,
            &state.as_str(),
            &msg.reply.as_ref().and_then(|r| r.reason.as_deref()),
            &now,
        ],
    )
    .await?;
    events.push(Event::MessageUpdated(Arc::new(msg.clone())));
    Ok(msg)
}
