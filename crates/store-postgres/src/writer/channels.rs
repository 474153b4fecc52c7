//! Writes of channels and their members, and read positions.

use std::collections::HashSet;

use confab_domain::model::ChannelKind;

use super::*;

pub(super) async fn create_channel(
    tx: &Transaction<'_>,
    c: &NewChannel,
    now: Millis,
    events: &mut Vec<Event>,
) -> Res<(Channel, bool)> {
    if let Some(key) = &c.distinct_key
        && let Some(existing) = queries::channel_by_distinct_key(tx, key).await?
    {
        return Ok((existing, false));
    }
    if let Some(existing) = queries::channel(tx, &c.id).await? {
        if c.kind == ChannelKind::Direct && existing.kind == ChannelKind::Direct {
            // Opening it again brings back a member who left (history intact).
            require_users(tx, &c.members).await?;
            let channel = insert_members(tx, existing, &c.members, c.created_by.clone(), now, events).await?;
            return Ok((channel, false));
        }
        return Err(DomainError::already_exists("channel", &c.id).into());
    }
    let mut members = c.members.clone();
    members.sort();
    members.dedup();
    require_users(tx, &members).await?;
    exec(
        tx,
        "INSERT INTO channels (id, kind, name, cover_url, custom_type, data, created_by, created_at, updated_at, \
         member_count, distinct_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10)",
        &[
            &c.id.as_str(),
            &c.kind.as_str(),
            &c.name,
            &c.cover_url,
            &c.custom_type,
            &crate::rows::to_json(&c.data),
            &c.created_by.as_ref().map(|u| u.as_str()),
            &now,
            &(members.len() as i64),
            &c.distinct_key,
        ],
    )
    .await?;
    let ids: Vec<&str> = members.iter().map(UserId::as_str).collect();
    exec(
        tx,
        "INSERT INTO members (channel_id, user_id, joined_at) SELECT $1, u, $3 FROM unnest($2::text[]) AS u",
        &[&c.id.as_str(), &ids, &now],
    )
    .await?;
    let channel = Channel {
        id: c.id.clone(),
        kind: c.kind,
        name: c.name.clone(),
        cover_url: c.cover_url.clone(),
        custom_type: c.custom_type.clone(),
        data: c.data.clone(),
        created_by: c.created_by.clone(),
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

pub(super) async fn load_channel(tx: &Transaction<'_>, id: &ChannelId) -> Res<Channel> {
    Ok(queries::channel(tx, id)
        .await?
        .ok_or_else(|| DomainError::not_found("channel", id))?)
}

pub(super) async fn update_channel(
    tx: &Transaction<'_>,
    id: &ChannelId,
    p: &ChannelPatch,
    now: Millis,
    events: &mut Vec<Event>,
) -> Res<Channel> {
    let mut c = load_channel(tx, id).await?;
    if let Some(n) = &p.name {
        c.name = n.clone();
    }
    if let Some(u) = &p.cover_url {
        c.cover_url = u.clone();
    }
    if let Some(t) = &p.custom_type {
        c.custom_type = t.clone();
    }
    if let Some(d) = &p.data {
        c.data = d.clone();
    }
    c.updated_at = now;
    exec(
        tx,
        "UPDATE channels SET name = $2, cover_url = $3, custom_type = $4, data = $5, updated_at = $6 WHERE id = $1",
        &[
            &id.as_str(),
            &c.name,
            &c.cover_url,
            &c.custom_type,
            &crate::rows::to_json(&c.data),
            &now,
        ],
    )
    .await?;
    events.push(Event::ChannelUpdated(Arc::new(c.clone())));
    Ok(c)
}

/// Deletes the channel with its members, messages (and their idempotency keys and flags) and files.
pub(super) async fn delete_channel(tx: &Transaction<'_>, id: &ChannelId, events: &mut Vec<Event>) -> Res<()> {
    let members = queries::member_ids(tx, id).await?;
    let n = exec(tx, "DELETE FROM channels WHERE id = $1", &[&id.as_str()]).await?;
    if n == 0 {
        return Err(DomainError::not_found("channel", id).into());
    }
    // The files' bytes are removed by the next sweep of unattached files, which `removed_files` feeds.
    for sql in [
        "DELETE FROM members WHERE channel_id = $1",
        "DELETE FROM message_keys WHERE channel_id = $1",
        "DELETE FROM flagged_messages WHERE channel_id = $1",
        "DELETE FROM messages WHERE channel_id = $1",
        "INSERT INTO removed_files (id) SELECT id FROM files WHERE channel_id = $1 ON CONFLICT DO NOTHING",
        "DELETE FROM files WHERE channel_id = $1",
    ] {
        exec(tx, sql, &[&id.as_str()]).await?;
    }
    events.push(Event::ChannelDeleted {
        channel_id: id.clone(),
        members: members.into(),
    });
    Ok(())
}

pub(super) async fn add_members(
    tx: &Transaction<'_>,
    id: &ChannelId,
    users: &[UserId],
    by: Option<UserId>,
    now: Millis,
    events: &mut Vec<Event>,
) -> Res<Channel> {
    let channel = load_channel(tx, id).await?;
    if channel.kind == ChannelKind::Direct {
        return Err(DomainError::forbidden("members of a direct channel cannot change").into());
    }
    require_users(tx, users).await?;
    insert_members(tx, channel, users, by, now, events).await
}

/// Adds those of `users` who are not members yet (they exist), in the order given.
pub(super) async fn insert_members(
    tx: &Transaction<'_>,
    mut channel: Channel,
    users: &[UserId],
    by: Option<UserId>,
    now: Millis,
    events: &mut Vec<Event>,
) -> Res<Channel> {
    let mut seen = HashSet::new();
    let wanted: Vec<&UserId> = users.iter().filter(|u| seen.insert(u.as_str())).collect();
    if wanted.is_empty() {
        return Ok(channel);
    }
    let ids: Vec<&str> = wanted.iter().map(|u| u.as_str()).collect();
    // A new member starts with nothing unread: history before joining is readable but not "new".
    let inserted = rows(
        tx,
        "INSERT INTO members (channel_id, user_id, joined_at, read_seq) \
         SELECT $1, u, $3, $4 FROM unnest($2::text[]) AS u ON CONFLICT DO NOTHING RETURNING user_id",
        &[
            &channel.id.as_str(),
            &ids,
            &now,
            &(channel.last_seq.0.min(i64::MAX as u64) as i64),
        ],
    )
    .await?;
    let inserted = inserted
        .iter()
        .map(|r| get::<&str>(r, 0))
        .collect::<Res<HashSet<_>>>()?;
    let added: Vec<UserId> = wanted
        .into_iter()
        .filter(|u| inserted.contains(u.as_str()))
        .cloned()
        .collect();
    if added.is_empty() {
        return Ok(channel);
    }
    channel.member_count += added.len() as u32;
    exec(
        tx,
        "UPDATE channels SET member_count = $2 WHERE id = $1",
        &[&channel.id.as_str(), &(channel.member_count as i64)],
    )
    .await?;
    events.push(Event::MembersJoined {
        channel: Arc::new(channel.clone()),
        user_ids: added.into(),
        by,
    });
    Ok(channel)
}

pub(super) async fn remove_member(
    tx: &Transaction<'_>,
    id: &ChannelId,
    user: &UserId,
    by: Option<UserId>,
    events: &mut Vec<Event>,
) -> Res<Channel> {
    let mut channel = load_channel(tx, id).await?;
    let n = exec(
        tx,
        "DELETE FROM members WHERE channel_id = $1 AND user_id = $2",
        &[&id.as_str(), &user.as_str()],
    )
    .await?;
    if n == 0 {
        return Err(DomainError::not_member(user, id).into());
    }
    channel.member_count = channel.member_count.saturating_sub(1);
    exec(
        tx,
        "UPDATE channels SET member_count = $2 WHERE id = $1",
        &[&id.as_str(), &(channel.member_count as i64)],
    )
    .await?;
    events.push(Event::MemberLeft {
        channel: Arc::new(channel.clone()),
        user_id: user.clone(),
        by,
    });
    Ok(channel)
}

pub(super) async fn mark_read(
    tx: &Transaction<'_>,
    id: &ChannelId,
    user: &UserId,
    seq: ChannelSeq,
    events: &mut Vec<Event>,
) -> Res<ChannelSeq> {
    let Some(channel) = queries::channel(tx, id).await? else {
        return Err(DomainError::not_found("channel", id).into());
    };
    let Some(member) = queries::member(tx, id, user).await? else {
        return Err(DomainError::not_member(user, id).into());
    };
    let target = ChannelSeq(seq.0.min(channel.last_seq.0));
    if target <= member.read_seq {
        return Ok(member.read_seq);
    }
    exec(
        tx,
        "UPDATE members SET read_seq = $3 WHERE channel_id = $1 AND user_id = $2",
        &[&id.as_str(), &user.as_str(), &(target.0 as i64)],
    )
    .await?;
    events.push(Event::ReadUpTo {
        channel_id: id.clone(),
        user_id: user.clone(),
        seq: target,
    });
    Ok(target)
}
