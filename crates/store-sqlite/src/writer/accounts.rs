//! Writes of accounts: users and bots (a bot is a user with its settings).

use super::*;

pub(super) fn create_user(conn: &Connection, u: NewUser, now: Millis, events: &mut Vec<Event>) -> DomainResult<User> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO users (id, nickname, profile_url, metadata, is_bot, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT(id) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                u.id.as_str(),
                u.nickname,
                u.profile_url,
                serde_json::Value::Object(u.metadata.clone()).to_string(),
                u.is_bot,
                now
            ])
        })
        .map_err(db_err)?;
    if inserted == 0 {
        return Err(DomainError::already_exists("user", &u.id));
    }
    let user = User {
        id: u.id,
        nickname: u.nickname,
        profile_url: u.profile_url,
        metadata: u.metadata,
        is_bot: u.is_bot,
        created_at: now,
        updated_at: now,
        last_seen_at: None,
        disabled: false,
    };
    events.push(Event::UserCreated(Arc::new(user.clone())));
    Ok(user)
}

pub(super) fn update_user(
    conn: &Connection,
    id: &UserId,
    p: UserPatch,
    now: Millis,
    events: &mut Vec<Event>,
) -> DomainResult<User> {
    let mut user = queries::user(conn, id)
        .map_err(db_err)?
        .ok_or_else(|| DomainError::not_found("user", id))?;
    if let Some(n) = p.nickname {
        user.nickname = n;
    }
    if let Some(u) = p.profile_url {
        user.profile_url = u;
    }
    if let Some(m) = p.metadata {
        user.metadata = m;
    }
    if let Some(d) = p.disabled {
        user.disabled = d;
    }
    user.updated_at = now;
    conn.prepare_cached(
        "UPDATE users SET nickname = ?2, profile_url = ?3, metadata = ?4, updated_at = ?5, disabled = ?6 WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            id.as_str(),
            user.nickname,
            user.profile_url,
            serde_json::Value::Object(user.metadata.clone()).to_string(),
            now,
            user.disabled
        ])
    })
    .map_err(db_err)?;
    events.push(Event::UserUpdated(Arc::new(user.clone())));
    Ok(user)
}

pub(super) fn delete_user(conn: &Connection, id: &UserId, events: &mut Vec<Event>) -> DomainResult<()> {
    let n = conn
        .prepare_cached("DELETE FROM users WHERE id = ?1")
        .and_then(|mut s| s.execute([id.as_str()]))
        .map_err(db_err)?;
    if n == 0 {
        return Err(DomainError::not_found("user", id));
    }
    // Its messages stay, but their idempotency keys go: an account created again with this id starts afresh.
    for sql in [
        "DELETE FROM sessions WHERE user_id = ?1",
        "DELETE FROM bots WHERE id = ?1",
        "UPDATE messages SET client_msg_id = NULL WHERE sender_id = ?1 AND client_msg_id IS NOT NULL",
    ] {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([id.as_str()]))
            .map_err(db_err)?;
    }
    for channel in queries::user_channel_ids(conn, id).map_err(db_err)? {
        remove_member(conn, &channel, id, None, now_millis(), events)?;
    }
    events.push(Event::UserDeleted(id.clone()));
    Ok(())
}

pub(super) fn require_users(conn: &Connection, users: &[UserId]) -> DomainResult<()> {
    let mut stmt = conn
        .prepare_cached("SELECT 1 FROM users WHERE id = ?1")
        .map_err(db_err)?;
    for u in users {
        if !stmt.exists([u.as_str()]).map_err(db_err)? {
            return Err(DomainError::not_found("user", u));
        }
    }
    Ok(())
}

pub(super) fn create_bot(
    conn: &Connection,
    u: NewUser,
    settings: BotSettings,
    now: Millis,
    events: &mut Vec<Event>,
) -> DomainResult<Bot> {
    let id = u.id.clone();
    create_user(conn, NewUser { is_bot: true, ..u }, now, events)?;
    let json = serde_json::to_string(&settings).map_err(|e| DomainError::Internal(e.to_string()))?;
    conn.prepare_cached("INSERT INTO bots (id, settings, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)")
        .and_then(|mut s| s.execute(params![id.as_str(), json, now]))
        .map_err(db_err)?;
    events.push(Event::BotChanged(id.clone()));
    Ok(Bot {
        id,
        settings,
        created_at: now,
        updated_at: now,
    })
}

pub(super) fn update_bot(
    conn: &Connection,
    id: &UserId,
    settings: BotSettings,
    now: Millis,
    events: &mut Vec<Event>,
) -> DomainResult<Bot> {
    let json = serde_json::to_string(&settings).map_err(|e| DomainError::Internal(e.to_string()))?;
    let n = conn
        .prepare_cached("UPDATE bots SET settings = ?2, updated_at = ?3 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![id.as_str(), json, now]))
        .map_err(db_err)?;
    if n == 0 {
        return Err(DomainError::not_found("bot", id));
    }
    events.push(Event::BotChanged(id.clone()));
    queries::bot(conn, id)
        .map_err(db_err)?
        .ok_or_else(|| DomainError::not_found("bot", id))
}
