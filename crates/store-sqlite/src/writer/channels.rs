//! Writes of channels and their members, and read positions.

use super::*;

pub(super) fn create_channel(
    conn: &Connection,
    c: NewChannel,
    now: Millis,
    events: &mut Vec<Event>,
) -> DomainResult<(Channel, bool)> {
    if let Some(key) = &c.distinct_key
        && let Some(existing) = queries::channel_by_distinct_key(conn, key).map_err(db_err)?
    {
        return Ok((existing, false));
    }
    if let Some(existing) = queries::channel(conn, &c.id).map_err(db_err)? {
        if c.kind == ChannelKind::Direct && existing.kind == ChannelKind::Direct {
            // Opening it again brings back a member who left (history intact).
            require_users(conn, &c.members)?;
            let channel = insert_members(conn, existing, &c.members, c.created_by.clone(), now, events)?;
            return Ok((channel, false));
        }
        return Err(DomainError::already_exists("channel", &c.id));
    }
    let mut members = c.members.clone();
    members.sort();
    members.dedup();
    require_users(conn, &members)?;
    conn.prepare_cached(
        "INSERT INTO channels (id, kind, name, cover_url, custom_type, data, created_by, created_at, updated_at, \
         member_count, distinct_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10)",
    )
    .and_then(|mut s| {
        s.execute(params![
            c.id.as_str(),
            c.kind.as_str(),
            c.name,
            c.cover_url,
            c.custom_type,
            to_json(&c.data),
            c.created_by.as_ref().map(|u| u.as_str()),
            now,
            members.len() as i64,
            c.distinct_key
        ])
    })
    .map_err(db_err)?;
    {
        let mut ins = conn
            .prepare_cached("INSERT INTO members (channel_id, user_id, joined_at) VALUES (?1, ?2, ?3)")
            .map_err(db_err)?;
        for m in &members {
            ins.execute(params![c.id.as_str(), m.as_str(), now]).map_err(db_err)?;
        }
    }
    let channel = Channel {
        id: c.id,
        kind: c.kind,
        name: c.name,
        cover_url: c.cover_url,
        custom_type: c.custom_type,
        data: c.data,
        created_by: c.created_by,
        created_at: now,
        updated_at: now,
        last_seq: ChannelSeq::ZERO,
        last_message_at: None,
        member_count: members.len() as u32,
        distinct: c.distinct_key.is_some(),
    };
    events.push(Event::ChannelCreated {
        channel: Arc::new(channel.clone()),
        members: members.into(),
    });
    Ok((channel, true))
}

pub(super) fn load_channel(conn: &Connection, id: &ChannelId) -> DomainResult<Channel> {
    queries::channel(conn, id)
        .map_err(db_err)?
        .ok_or_else(|| DomainError::not_found("channel", id))
}

pub(super) fn update_channel(
    conn: &Connection,
    id: &ChannelId,
    p: ChannelPatch,
    now: Millis,
    events: &mut Vec<Event>,
) -> DomainResult<Channel> {
    let mut c = load_channel(conn, id)?;
    if let Some(n) = p.name {
        c.name = n;
    }
    if let Some(u) = p.cover_url {
        c.cover_url = u;
    }
    if let Some(t) = p.custom_type {
        c.custom_type = t;
    }
    if let Some(d) = p.data {
        c.data = d;
    }
    c.updated_at = now;
    conn.prepare_cached(
        "UPDATE channels SET name = ?2, cover_url = ?3, custom_type = ?4, data = ?5, updated_at = ?6 WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            id.as_str(),
            c.name,
            c.cover_url,
            c.custom_type,
            to_json(&c.data),
            now
        ])
    })
    .map_err(db_err)?;
    events.push(Event::ChannelUpdated(Arc::new(c.clone())));
    Ok(c)
}

pub(super) fn delete_channel(conn: &Connection, id: &ChannelId, events: &mut Vec<Event>) -> DomainResult<()> {
    let members = queries::member_ids(conn, id).map_err(db_err)?;
    let n = conn
        .prepare_cached("DELETE FROM channels WHERE id = ?1")
        .and_then(|mut s| s.execute([id.as_str()]))
        .map_err(db_err)?;
    if n == 0 {
        return Err(DomainError::not_found("channel", id));
    }
    // The files' bytes are removed by the next sweep of unattached files, which `removed_files` feeds.
    for sql in [
        "DELETE FROM members WHERE channel_id = ?1",
        "DELETE FROM flagged_messages WHERE channel_id = ?1",
        "DELETE FROM messages WHERE channel_id = ?1",
        "INSERT OR IGNORE INTO removed_files (id) SELECT id FROM files WHERE channel_id = ?1",
        "DELETE FROM files WHERE channel_id = ?1",
    ] {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([id.as_str()]))
            .map_err(db_err)?;
    }
    events.push(Event::ChannelDeleted {
        channel_id: id.clone(),
        members: members.into(),
    });
    Ok(())
}

pub(super) fn add_members(
    conn: &Connection,
    id: &ChannelId,
    users: &[UserId],
    by: Option<UserId>,
    now: Millis,
    events: &mut Vec<Event>,
) -> DomainResult<Channel> {
    let channel = load_channel(conn, id)?;
    if channel.kind == ChannelKind::Direct {
        return Err(DomainError::forbidden("members of a direct channel cannot change"));
    }
    require_users(conn, users)?;
    insert_members(conn, channel, users, by, now, events)
}

/// Adds those of `users` who are not members yet (they exist).
pub(super) fn insert_members(
    conn: &Connection,
    mut channel: Channel,
    users: &[UserId],
    by: Option<UserId>,
    now: Millis,
    events: &mut Vec<Event>,
) -> DomainResult<Channel> {
    let id = channel.id.clone();
    let mut added = Vec::new();
    {
        let mut ins = conn
            .prepare_cached(
                "INSERT INTO members (channel_id, user_id, joined_at, read_seq) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT DO NOTHING",
            )
            .map_err(db_err)?;
        for u in users {
            // A new member starts with nothing unread: history before joining is readable but not "new".
            if ins
                .execute(params![id.as_str(), u.as_str(), now, channel.last_seq.0 as i64])
                .map_err(db_err)?
                == 1
            {
                added.push(u.clone());
            }
        }
    }
    if added.is_empty() {
        return Ok(channel);
    }
    channel.member_count += added.len() as u32;
    if channel.member_count > 0 {
        conn.prepare_cached("UPDATE channels SET member_count = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id.as_str(), channel.member_count]))
            .map_err(db_err)?;
    }
    events.push(Event::MembersJoined {
        channel: Arc::new(channel.clone()),
        user_ids: added.into(),
        by,
    });
    Ok(channel)
}

pub(super) fn remove_member(
    conn: &Connection,
    id: &ChannelId,
    user: &UserId,
    by: Option<UserId>,
    _now: Millis,
    events: &mut Vec<Event>,
) -> DomainResult<Channel> {
    let mut channel = load_channel(conn, id)?;
    let n = conn
        .prepare_cached("DELETE FROM members WHERE channel_id = ?1 AND user_id = ?2")
        .and_then(|mut s| s.execute([id.as_str(), user.as_str()]))
        .map_err(db_err)?;
    if n == 0 {
        return Err(DomainError::not_member(user, id));
    }
    channel.member_count = channel.member_count.saturating_sub(1);
    conn.prepare_cached("UPDATE channels SET member_count = ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![id.as_str(), channel.member_count]))
        .map_err(db_err)?;
    events.push(Event::MemberLeft {
        channel: Arc::new(channel.clone()),
        user_id: user.clone(),
        by,
    });
    Ok(channel)
}

pub(super) fn mark_read(
    conn: &Connection,
    id: &ChannelId,
    user: &UserId,
    seq: ChannelSeq,
    events: &mut Vec<Event>,
) -> DomainResult<ChannelSeq> {
    let member = queries::member(conn, id, user).map_err(db_err)?.ok_or_else(|| {
        if queries::channel(conn, id).ok().flatten().is_none() {
            DomainError::not_found("channel", id)
        } else {
            DomainError::not_member(user, id)
        }
    })?;
    let last: i64 = conn
        .prepare_cached("SELECT last_seq FROM channels WHERE id = ?1")
        .and_then(|mut s| s.query_row([id.as_str()], |r| r.get(0)))
        .map_err(db_err)?;
    let target = ChannelSeq(seq.0.min(last as u64));
    if target <= member.read_seq {
        return Ok(member.read_seq);
    }
    conn.prepare_cached("UPDATE members SET read_seq = ?3 WHERE channel_id = ?1 AND user_id = ?2")
        .and_then(|mut s| s.execute(params![id.as_str(), user.as_str(), target.0 as i64]))
        .map_err(db_err)?;
    events.push(Event::ReadUpTo {
        channel_id: id.clone(),
        user_id: user.clone(),
        seq: target,
    });
    Ok(target)
}
