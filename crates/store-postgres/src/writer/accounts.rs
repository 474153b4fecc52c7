//! Writes of accounts: users and bots (a bot is a user with its settings).

use std::collections::HashSet;

use confab_domain::bot::Bot;

use super::*;

fn metadata_json(m: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::Value::Object(m.clone()).to_string()
}

pub(super) async fn create_user(tx: &Transaction<'_>, u: &NewUser, now: Millis, events: &mut Vec<Event>) -> Res<User> {
    let inserted = exec(
        tx,
        "INSERT INTO users (id, nickname, profile_url, metadata, is_bot, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (id) DO NOTHING",
        &[
            &u.id.as_str(),
            &u.nickname,
            &u.profile_url,
            &metadata_json(&u.metadata),
            &u.is_bot,
            &now,
        ],
    )
    .await?;
    if inserted == 0 {
        return Err(DomainError::already_exists("user", &u.id).into());
    }
    let user = User {
        id: u.id.clone(),
        nickname: u.nickname.clone(),
        profile_url: u.profile_url.clone(),
        metadata: u.metadata.clone(),
        is_bot: u.is_bot,
        created_at: now,
        updated_at: now,
        last_seen_at: None,
        disabled: false,
    };
    events.push(Event::UserCreated(Arc::new(user.clone())));
    Ok(user)
}

pub(super) async fn update_user(
    tx: &Transaction<'_>,
    id: &UserId,
    p: &UserPatch,
    now: Millis,
    events: &mut Vec<Event>,
) -> Res<User> {
    let mut user = queries::user(tx, id)
        .await?
        .ok_or_else(|| DomainError::not_found("user", id))?;
    if let Some(n) = &p.nickname {
        user.nickname = n.clone();
    }
    if let Some(u) = &p.profile_url {
        user.profile_url = u.clone();
    }
    if let Some(m) = &p.metadata {
        user.metadata = m.clone();
    }
    if let Some(d) = p.disabled {
        user.disabled = d;
    }
    user.updated_at = now;
    exec(
        tx,
        "UPDATE users SET nickname = $2, profile_url = $3, metadata = $4, updated_at = $5, disabled = $6 \
         WHERE id = $1",
        &[
            &id.as_str(),
            &user.nickname,
            &user.profile_url,
            &metadata_json(&user.metadata),
            &now,
            &user.disabled,
        ],
    )
    .await?;
    events.push(Event::UserUpdated(Arc::new(user.clone())));
    Ok(user)
}

/// Deletes the account with its sessions, bot settings, memberships and idempotency keys; its messages stay,
/// attributed to its id. The keys go with the account: one created again under the same id starts without
/// them, so its sends are never taken for retries of the deleted account's.
pub(super) async fn delete_user(tx: &Transaction<'_>, id: &UserId, events: &mut Vec<Event>) -> Res<()> {
    let n = exec(tx, "DELETE FROM users WHERE id = $1", &[&id.as_str()]).await?;
    if n == 0 {
        return Err(DomainError::not_found("user", id).into());
    }
    for sql in [
        "DELETE FROM sessions WHERE user_id = $1",
        "DELETE FROM bots WHERE id = $1",
        "DELETE FROM message_keys WHERE sender_id = $1",
    ] {
        exec(tx, sql, &[&id.as_str()]).await?;
    }
    for channel in queries::user_channel_ids(tx, id).await? {
        remove_member(tx, &channel, id, None, events).await?;
    }
    events.push(Event::UserDeleted(id.clone()));
    Ok(())
}

/// `NotFound` for the first of `users` without an account.
pub(super) async fn require_users(tx: &Transaction<'_>, users: &[UserId]) -> Res<()> {
    if users.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
    let found = rows(tx, "SELECT id FROM users WHERE id = ANY($1)", &[&ids]).await?;
    let existing = found.iter().map(|r| get::<&str>(r, 0)).collect::<Res<HashSet<_>>>()?;
    match users.iter().find(|u| !existing.contains(u.as_str())) {
        Some(missing) => Err(DomainError::not_found("user", missing).into()),
        None => Ok(()),
    }
}

pub(super) async fn create_bot(
    tx: &Transaction<'_>,
    u: &NewUser,
    settings: &BotSettings,
    now: Millis,
    events: &mut Vec<Event>,
) -> Res<Bot> {
    let account = NewUser {
        is_bot: true,
        ..u.clone()
    };
    create_user(tx, &account, now, events).await?;
    let json = crate::rows::ser(settings)?;
    exec(
        tx,
        "INSERT INTO bots (id, settings, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        &[&u.id.as_str(), &json, &now],
    )
    .await?;
    events.push(Event::BotChanged(u.id.clone()));
    Ok(Bot {
        id: u.id.clone(),
        settings: settings.clone(),
        created_at: now,
        updated_at: now,
    })
}

pub(super) async fn update_bot(
    tx: &Transaction<'_>,
    id: &UserId,
    settings: &BotSettings,
    now: Millis,
    events: &mut Vec<Event>,
) -> Res<Bot> {
    let json = crate::rows::ser(settings)?;
    let n = exec(
        tx,
        "UPDATE bots SET settings = $2, updated_at = $3 WHERE id = $1",
        &[&id.as_str(), &json, &now],
    )
    .await?;
    if n == 0 {
        return Err(DomainError::not_found("bot", id).into());
    }
    events.push(Event::BotChanged(id.clone()));
    Ok(queries::bot(tx, id)
        .await?
        .ok_or_else(|| DomainError::not_found("bot", id))?)
}
