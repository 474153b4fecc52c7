//! Writes of messages: append (with its preconditions), edit, delete, flags, and a bot reply's final state.

use super::*;

pub(super) fn append(
    conn: &Connection,
    m: NewMessage,
    preconditions: &[Precondition],
    now: Millis,
    events: &mut Vec<Event>,
) -> DomainResult<Appended> {
    if let (Some(sender), Some(trigger_id)) = (&m.sender_id, m.reply.as_ref().and_then(|r| r.trigger_id))
        && let Some(original) = queries::reply_to(conn, sender, trigger_id).map_err(db_err)?
    {
        return Ok(Appended {
            message: original,
            duplicate: true,
        });
    }
    facts::check(conn, preconditions)?;
    if let (Some(sender), Some(key)) = (&m.sender_id, &m.client_msg_id)
        && let Some(original) = queries::message_by_client_id(conn, sender, key).map_err(db_err)?
    {
        if original.channel_id != m.channel_id {
            return Err(DomainError::invalid(
                "client_msg_id",
                "already used for a message of another channel",
            ));
        }
        return Ok(Appended {
            message: original,
            duplicate: true,
        });
    }
    let parent_update = match m.parent_id {
        Some(parent_id)
            if facts::exists(conn, "SELECT 1 FROM messages WHERE id = ?1", [parent_id.0]).map_err(db_err)? =>
        {
            Some(parent_id)
        }
        Some(parent_id) => return Err(DomainError::not_found("message", parent_id)),
        None => None,
    };
    let file = match &m.file_id {
        Some(fid) => Some(
            queries::file(conn, fid)
                .map_err(db_err)?
                .ok_or_else(|| DomainError::not_found("file", fid))?,
        ),
        None => None,
    };
    let seq: Option<i64> = conn
        .prepare_cached(
            "UPDATE channels SET last_seq = last_seq + 1, last_message_at = ?2 WHERE id = ?1 RETURNING last_seq",
        )
        .and_then(|mut s| {
            s.query_row(params![m.channel_id.as_str(), now], |r| r.get(0))
                .optional()
        })
        .map_err(db_err)?;
    let seq = ChannelSeq(seq.ok_or_else(|| DomainError::not_found("channel", &m.channel_id))? as u64);
    let mentions = serde_json::to_string(&m.mentions).map_err(|e| DomainError::Internal(e.to_string()))?;
    let file_json = file
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| DomainError::Internal(e.to_string()))?;
    let id: i64 = conn
        .prepare_cached(
            "INSERT INTO messages (channel_id, seq, sender_id, kind, text, custom_type, data, payload, mentions, \
             client_msg_id, parent_id, file, created_at, updated_at, reply_state, trigger_id, reply_reason) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, ?14, ?15, ?16) RETURNING id",
        )
        .and_then(|mut s| {
            s.query_row(
                params![
                    m.channel_id.as_str(),
                    seq.0 as i64,
                    m.sender_id.as_ref().map(|u| u.as_str()),
                    m.kind.as_str(),
                    m.text,
                    m.custom_type,
                    to_json(&m.data),
                    to_json(&m.payload),
                    mentions,
                    m.client_msg_id,
                    m.parent_id.map(|p| p.0),
                    file_json,
                    now,
                    m.reply.as_ref().map(|r| r.state.as_str()),
                    m.reply.as_ref().and_then(|r| r.trigger_id).map(|t| t.0),
                    m.reply.as_ref().and_then(|r| r.reason.clone())
                ],
                |r| r.get(0),
            )
        })
        .map_err(db_err)?;
    if !m.flags.is_empty() {
        insert_flag(conn, MessageId(id), &m.channel_id, &m.flags, now)?;
    }
    if let Some(sender) = &m.sender_id {
        // The sender has read its own message.
        conn.prepare_cached("UPDATE members SET read_seq = ?3 WHERE channel_id = ?1 AND user_id = ?2")
            .and_then(|mut s| s.execute(params![m.channel_id.as_str(), sender.as_str(), seq.0 as i64]))
            .map_err(db_err)?;
    }
    let message = confab_domain::model::Message {
        id: MessageId(id),
        channel_id: m.channel_id,
        seq,
        sender_id: m.sender_id,
        kind: m.kind,
        text: m.text,
        custom_type: m.custom_type,
        data: m.data,
        payload: m.payload,
        mentions: m.mentions,
        client_msg_id: m.client_msg_id,
        parent_id: m.parent_id,
        reply_count: 0,
        file,
        created_at: now,
        updated_at: now,
        edited: false,
        deleted: false,
        reply: m.reply,
    };
    events.push(Event::MessageCreated(Arc::new(message.clone())));
    if let Some(parent_id) = parent_update {
        conn.prepare_cached("UPDATE messages SET reply_count = reply_count + 1 WHERE id = ?1")
            .and_then(|mut s| s.execute([parent_id.0]))
            .map_err(db_err)?;
        if let Some(parent) = queries::message(conn, parent_id).map_err(db_err)? {
            events.push(Event::MessageUpdated(Arc::new(parent)));
        }
    }
    Ok(Appended {
        message,
        duplicate: false,
    })
}

/// Records a message for review; flagging it again (an edit whose new content matched) adds the new rules
/// and puts it back in review: an approval was for the content as it was.
pub(super) fn insert_flag(
    conn: &Connection,
    id: MessageId,
    channel: &ChannelId,
    rules: &[String],
    now: Millis,
) -> DomainResult<()> {
    let existing: Option<String> = conn
        .prepare_cached("SELECT rules FROM flagged_messages WHERE message_id = ?1")
        .and_then(|mut s| s.query_row([id.0], |r| r.get(0)).optional())
        .map_err(db_err)?;
    let mut all: Vec<String> = existing.and_then(|r| serde_json::from_str(&r).ok()).unwrap_or_default();
    for r in rules {
        if !all.contains(r) {
            all.push(r.clone());
        }
    }
    let rules = serde_json::to_string(&all).map_err(|e| DomainError::Internal(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO flagged_messages (message_id, channel_id, rules, flagged_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (message_id) DO UPDATE SET rules = excluded.rules, state = 'pending', \
         flagged_at = excluded.flagged_at, reviewed_at = NULL, reviewed_by = NULL",
    )
    .and_then(|mut s| s.execute(params![id.0, channel.as_str(), rules, now]))
    .map_err(db_err)?;
    Ok(())
}

/// Settles a pending flag; the same decision again is a no-op, a different one a conflict.
pub(super) fn review_flag(
    conn: &Connection,
    id: MessageId,
    state: FlagState,
    by: Option<&UserId>,
    now: Millis,
) -> DomainResult<()> {
    if state == FlagState::Pending {
        return Err(DomainError::invalid("state", "a review decides: approved or removed"));
    }
    let current: Option<String> = conn
        .prepare_cached("SELECT state FROM flagged_messages WHERE message_id = ?1")
        .and_then(|mut s| s.query_row([id.0], |r| r.get(0)).optional())
        .map_err(db_err)?;
    match current.as_deref().and_then(FlagState::parse) {
        None => return Err(DomainError::not_found("flagged message", id)),
        Some(FlagState::Pending) => {}
        Some(s) if s == state => return Ok(()),
        Some(s) => {
            return Err(DomainError::already_exists(
                "review of flagged message",
                format!("{id} ({})", s.as_str()),
            ));
        }
    }
    conn.prepare_cached(
        "UPDATE flagged_messages SET state = ?2, reviewed_at = ?3, reviewed_by = ?4 WHERE message_id = ?1",
    )
    .and_then(|mut s| s.execute(params![id.0, state.as_str(), now, by.map(|u| u.as_str())]))
    .map_err(db_err)?;
    Ok(())
}

pub(super) fn load_message(conn: &Connection, id: MessageId) -> DomainResult<confab_domain::model::Message> {
    queries::message(conn, id)
        .map_err(db_err)?
        .ok_or_else(|| DomainError::not_found("message", id))
}

pub(super) fn edit(
    conn: &Connection,
    id: MessageId,
    p: MessagePatch,
    preconditions: &[Precondition],
    now: Millis,
    events: &mut Vec<Event>,
) -> DomainResult<confab_domain::model::Message> {
    let mut msg = load_message(conn, id)?;
    if msg.deleted {
        return Err(DomainError::not_found("message", id));
    }
    facts::check(conn, preconditions)?;
    let flags = p.flags;
    if let Some(t) = p.text {
        msg.text = t;
    }
    if let Some(c) = p.custom_type {
        msg.custom_type = c;
    }
    if let Some(d) = p.data {
        msg.data = d;
    }
    if let Some(pl) = p.payload {
        msg.payload = Some(pl);
    }
    msg.updated_at = now;
    msg.edited = true;
    conn.prepare_cached(
        "UPDATE messages SET text = ?2, custom_type = ?3, data = ?4, payload = ?5, updated_at = ?6, edited = 1 \
         WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            id.0,
            msg.text,
            msg.custom_type,
            to_json(&msg.data),
            to_json(&msg.payload),
            now
        ])
    })
    .map_err(db_err)?;
    // The new content's flags, in the edit's transaction (as a send's are).
    if !flags.is_empty() {
        insert_flag(conn, id, &msg.channel_id, &flags, now)?;
    }
    events.push(Event::MessageUpdated(Arc::new(msg.clone())));
    Ok(msg)
}

pub(super) fn delete_message(
    conn: &Connection,
    id: MessageId,
    now: Millis,
    events: &mut Vec<Event>,
) -> DomainResult<confab_domain::model::Message> {
    let mut msg = load_message(conn, id)?;
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
    conn.prepare_cached(
        "UPDATE messages SET text = '', data = NULL, payload = NULL, file = NULL, mentions = '[]', deleted = 1, \
         updated_at = ?2 WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id.0, now]))
    .map_err(db_err)?;
    events.push(Event::MessageDeleted {
        channel_id: msg.channel_id.clone(),
        message_id: id,
        seq: msg.seq,
    });
    // A thread counts the replies it shows.
    if let Some(parent_id) = msg.parent_id {
        conn.prepare_cached("UPDATE messages SET reply_count = max(reply_count - 1, 0) WHERE id = ?1")
            .and_then(|mut s| s.execute([parent_id.0]))
            .map_err(db_err)?;
        if let Some(parent) = queries::message(conn, parent_id).map_err(db_err)? {
            events.push(Event::MessageUpdated(Arc::new(parent)));
        }
    }
    Ok(msg)
}

/// Writes a reply's final text and state, once: a reply already final is returned unchanged.
pub(super) fn finish_reply(
    conn: &Connection,
    id: MessageId,
    text: String,
    state: ReplyState,
    reason: Option<String>,
    now: Millis,
    events: &mut Vec<Event>,
) -> DomainResult<confab_domain::model::Message> {
    let mut msg = load_message(conn, id)?;
    let Some(reply) = msg.reply.as_mut() else {
        return Err(DomainError::invalid("message_id", "not a bot reply"));
    };
    if reply.state.is_final() {
        return Ok(msg);
    }
    reply.state = state;
    reply.reason = reason;
    // The sweep after a restart keeps whatever text was last saved; a deleted reply keeps no content.
    if !msg.deleted && (!text.is_empty() || state != ReplyState::Interrupted) {
        msg.text = text;
    }
    msg.updated_at = now;
    conn.prepare_cached(
        "UPDATE messages SET text = ?2, reply_state = ?3, reply_reason = ?4, updated_at = ?5 WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            id.0,
            msg.text,
            state.as_str(),
            msg.reply.as_ref().and_then(|r| r.reason.clone()),
            now
        ])
    })
    .map_err(db_err)?;
    events.push(Event::MessageUpdated(Arc::new(msg.clone())));
    Ok(msg)
}
