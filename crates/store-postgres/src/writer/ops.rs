//! Applies one command (`Op`) inside the batch's transaction: the writes of `accounts`, `channels` and
//! `messages`, and the small ones written here.

use super::*;

/// Why a chosen session token that another account already has is refused.
const TOKEN_TAKEN: &str = "is already the token of another account";

/// Ends `interrupted` the generating replies of `found` (rows of ids), with `reason`.
async fn interrupt(
    tx: &Transaction<'_>,
    found: &[tokio_postgres::Row],
    reason: &str,
    now: Millis,
    events: &mut Vec<Event>,
) -> Res<Outcome> {
    let ids = found.iter().map(|r| get::<i64>(r, 0)).collect::<Res<Vec<_>>>()?;
    for id in &ids {
        finish_reply(
            tx,
            MessageId(*id),
            "",
            ReplyState::Interrupted,
            Some(reason.into()),
            now,
            events,
        )
        .await?;
    }
    Ok(Outcome::Count(ids.len() as u64))
}

/// Of the users whose presence rows were just deleted, those no node holds a session of any more.
async fn now_offline(tx: &Transaction<'_>, gone: &[tokio_postgres::Row]) -> Res<Vec<UserId>> {
    let mut users = gone
        .iter()
        .map(|r| crate::rows::user_id(r, 0))
        .collect::<Res<Vec<_>>>()?;
    users.sort();
    users.dedup();
    let names: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
    let left = rows(
        tx,
        "SELECT DISTINCT user_id FROM presence WHERE user_id = ANY($1)",
        &[&names],
    )
    .await?
    .iter()
    .map(|r| crate::rows::user_id(r, 0))
    .collect::<Res<std::collections::HashSet<_>>>()?;
    users.retain(|u| !left.contains(u));
    Ok(users)
}

pub(super) async fn apply(tx: &Transaction<'_>, op: &Op, node: &str, events: &mut Vec<Event>) -> Res<Outcome> {
    let now = now_millis();
    match op {
        Op::CreateUser(u) => create_user(tx, u, now, events).await.map(Outcome::User),
        Op::UpdateUser(id, p) => update_user(tx, id, p, now, events).await.map(Outcome::User),
        Op::DeleteUser(id) => delete_user(tx, id, events).await.map(|_| Outcome::Unit),
        #[cfg(test)]
        Op::Panic => panic!("a command with a bug"),
        #[cfg(test)]
        Op::Raise { code, times } => {
            use std::sync::atomic::Ordering;
            if times
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                tx.batch_execute(&format!(
                    "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{code}'; END $$"
                ))
                .await?;
            }
            Ok(Outcome::Unit)
        }
        Op::Ping => Ok(Outcome::Unit),
        Op::SetLastSeen(id, at) => {
            exec(
                tx,
                "UPDATE users SET last_seen_at = $2 WHERE id = $1",
                &[&id.as_str(), at],
            )
            .await?;
            Ok(Outcome::Unit)
        }
        Op::CreateSession(s) => {
            if queries::user(tx, &s.user_id).await?.is_none() {
                return Err(DomainError::not_found("user", &s.user_id).into());
            }
            // A token an application chose may already be its user's (kept, with the new expiry) or another
            // account's: a client signs in with the token alone, so that one is refused.
            let stored = exec(
                tx,
                "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (token_hash) DO UPDATE SET created_at = excluded.created_at, \
                 expires_at = excluded.expires_at WHERE sessions.user_id = excluded.user_id",
                &[&&s.token_hash[..], &s.user_id.as_str(), &s.created_at, &s.expires_at],
            )
            .await?;
            if stored == 0 {
                return Err(DomainError::invalid("token", TOKEN_TAKEN).into());
            }
            Ok(Outcome::Unit)
        }
        Op::RevokeSessions(id) => {
            let n = exec(tx, "DELETE FROM sessions WHERE user_id = $1", &[&id.as_str()]).await?;
            Ok(Outcome::Count(n))
        }
        Op::CreateChannel(c) => create_channel(tx, c, now, events)
            .await
            .map(|(c, created)| Outcome::Channel(c, created)),
        Op::UpdateChannel(id, p) => update_channel(tx, id, p, now, events)
            .await
            .map(|c| Outcome::Channel(c, false)),
        Op::DeleteChannel(id) => delete_channel(tx, id, events).await.map(|_| Outcome::Unit),
        Op::AddMembers(id, users, by) => add_members(tx, id, users, by.clone(), now, events)
            .await
            .map(|c| Outcome::Channel(c, false)),
        Op::RemoveMember(id, user, by) => remove_member(tx, id, user, by.clone(), events)
            .await
            .map(|c| Outcome::Channel(c, false)),
        Op::MarkRead(id, user, seq) => mark_read(tx, id, user, *seq, events).await.map(Outcome::Seq),
        Op::Append(m, pre) => append(tx, m, pre, now, node, events)
            .await
            .map(|a| Outcome::Appended(Box::new(a))),
        Op::Edit(id, p, pre) => edit(tx, *id, p, pre, now, events)
            .await
            .map(|m| Outcome::Message(Box::new(m))),
        Op::Delete(id) => delete_message(tx, *id, now, events)
            .await
            .map(|m| Outcome::Message(Box::new(m))),
        Op::CreateBot(u, settings) => create_bot(tx, u, settings, now, events)
            .await
            .map(|b| Outcome::Bot(Box::new(b))),
        Op::UpdateBot(id, settings) => update_bot(tx, id, settings, now, events)
            .await
            .map(|b| Outcome::Bot(Box::new(b))),
        Op::SaveReplyText(id, text) => {
            exec(
                tx,
                "UPDATE messages SET text = $2 WHERE id = $1 AND reply_state = 'generating' AND NOT deleted",
                &[&id.0, text],
            )
            .await?;
            Ok(Outcome::Unit)
        }
        Op::FinishReply(id, text, state, reason) => finish_reply(tx, *id, text, *state, reason.clone(), now, events)
            .await
            .map(|m| Outcome::Message(Box::new(m))),
        Op::SweepGenerating => {
            // This node's replies only: the others' nodes may be generating them right now.
            let found = rows(
                tx,
                "SELECT id FROM messages WHERE reply_state = 'generating' AND (reply_node = $1 OR reply_node IS NULL) \
                 ORDER BY id",
                &[&node],
            )
            .await?;
            interrupt(
                tx,
                &found,
                "the server restarted while this reply was being generated",
                now,
                events,
            )
            .await
        }
        Op::SweepSilentNodes(silent_since) => {
            let found = rows(
                tx,
                "SELECT id FROM messages m WHERE reply_state = 'generating' AND reply_node IS NOT NULL \
                 AND reply_node <> $1 AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = m.reply_node \
                 AND n.heartbeat_at >= $2) ORDER BY id",
                &[&node, silent_since],
            )
            .await?;
            let Outcome::Count(replies) =
                interrupt(tx, &found, "the server generating this reply stopped", now, events).await?
            else {
                unreachable!("interrupt counts")
            };
            let gone = rows(
                tx,
                "DELETE FROM presence p WHERE node_id <> $1 AND NOT EXISTS (SELECT 1 FROM nodes n \
                 WHERE n.node_id = p.node_id AND n.heartbeat_at >= $2) RETURNING user_id",
                &[&node, silent_since],
            )
            .await?;
            let offline = now_offline(tx, &gone).await?;
            Ok(Outcome::Swept(replies, offline))
        }
        Op::SetPresence(user, here) => {
            // One decision at a time per user across the nodes (the write lock serialises them anyway;
            // this keeps it true if presence ever leaves the writer).
            let elsewhere = crate::db::row(
                tx,
                "SELECT count(*) FROM presence WHERE user_id = $1 AND node_id <> $2",
                &[&user.as_str(), &node],
            )
            .await?
            .map(|r| get::<i64>(&r, 0))
            .transpose()?
            .unwrap_or(0);
            let changed = match here {
                true => {
                    exec(
                        tx,
                        "INSERT INTO presence (user_id, node_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[&user.as_str(), &node],
                    )
                    .await?
                }
                false => {
                    exec(
                        tx,
                        "DELETE FROM presence WHERE user_id = $1 AND node_id = $2",
                        &[&user.as_str(), &node],
                    )
                    .await?
                }
            };
            Ok(Outcome::Count(u64::from(changed == 1 && elsewhere == 0)))
        }
        Op::ForgetOwnPresence => {
            let gone = rows(
                tx,
                "DELETE FROM presence WHERE node_id = $1 RETURNING user_id",
                &[&node],
            )
            .await?;
            let offline = now_offline(tx, &gone).await?;
            Ok(Outcome::Swept(0, offline))
        }
        Op::Heartbeat(at) => {
            exec(
                tx,
                "INSERT INTO nodes (node_id, heartbeat_at) VALUES ($1, $2) ON CONFLICT (node_id) \
                 DO UPDATE SET heartbeat_at = greatest(nodes.heartbeat_at, EXCLUDED.heartbeat_at)",
                &[&node, at],
            )
            .await?;
            Ok(Outcome::Unit)
        }
        Op::Flag(id, rules) => {
            let m = load_message(tx, *id).await?;
            insert_flag(tx, *id, &m.channel_id, rules, now).await?;
            Ok(Outcome::Unit)
        }
        Op::ReviewFlag(id, state, by) => {
            review_flag(tx, *id, *state, by.as_ref(), now).await?;
            if *state == FlagState::Removed {
                let m = load_message(tx, *id).await?;
                if !m.deleted {
                    delete_message(tx, *id, now, events).await?;
                }
            }
            Ok(Outcome::Unit)
        }
        Op::Announce(announced) => {
            events.extend(announced.iter().cloned());
            Ok(Outcome::Unit)
        }
        Op::PruneOutbox(through) => {
            let through = (*through).min(i64::MAX as u64) as i64;
            let n = exec(tx, "DELETE FROM outbox WHERE id <= $1", &[&through]).await?;
            Ok(Outcome::Count(n))
        }
        Op::AcquireLease(name, holder, at, until) => {
            let n = exec(
                tx,
                "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $4) ON CONFLICT (name) DO UPDATE \
                 SET holder = EXCLUDED.holder, until = EXCLUDED.until \
                 WHERE leases.holder = EXCLUDED.holder OR leases.until < $3",
                &[name, holder, at, until],
            )
            .await?;
            Ok(Outcome::Count(n))
        }
        Op::PruneLeases(before) => {
            let n = exec(tx, "DELETE FROM leases WHERE until < $1", &[before]).await?;
            Ok(Outcome::Count(n))
        }
        Op::ReleaseLease(name, holder) => {
            exec(
                tx,
                "DELETE FROM leases WHERE name = $1 AND holder = $2",
                &[name, holder],
            )
            .await?;
            Ok(Outcome::Unit)
        }
        Op::PutDeadLetter(d) => {
            exec(
                tx,
                "INSERT INTO webhook_dead_letters (endpoint_id, event_id, event_type, channel_id, payload, \
                 created_at, attempts, last_error, failed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (endpoint_id, event_id) DO UPDATE SET event_type = excluded.event_type, \
                 channel_id = excluded.channel_id, payload = excluded.payload, created_at = excluded.created_at, \
                 attempts = excluded.attempts, last_error = excluded.last_error, failed_at = excluded.failed_at",
                &[
                    &d.endpoint_id,
                    &(d.event.id.min(i64::MAX as u64) as i64),
                    &d.event.event_type,
                    &d.event.channel_id.as_ref().map(|c| c.as_str()),
                    &d.event.payload,
                    &d.event.created_at,
                    &(d.attempts as i64),
                    &d.last_error,
                    &d.failed_at,
                ],
            )
            .await?;
            Ok(Outcome::Unit)
        }
        Op::DeleteDeadLetters(endpoint, event) => {
            let n = match event {
                Some(id) => {
                    exec(
                        tx,
                        "DELETE FROM webhook_dead_letters WHERE endpoint_id = $1 AND event_id = $2",
                        &[endpoint, &((*id).min(i64::MAX as u64) as i64)],
                    )
                    .await?
                }
                None => {
                    exec(
                        tx,
                        "DELETE FROM webhook_dead_letters WHERE endpoint_id = $1",
                        &[endpoint],
                    )
                    .await?
                }
            };
            Ok(Outcome::Count(n))
        }
        Op::PutProvider(name, json) => {
            exec(
                tx,
                "INSERT INTO providers (name, config, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
                &[name, json, &now],
            )
            .await?;
            Ok(Outcome::Unit)
        }
        Op::DeleteProvider(name) => {
            let n = exec(tx, "DELETE FROM providers WHERE name = $1", &[name]).await?;
            if n == 0 {
                return Err(DomainError::not_found("provider", name).into());
            }
            Ok(Outcome::Unit)
        }
        Op::PutSetting(namespace, key, json) => {
            exec(
                tx,
                "INSERT INTO settings (namespace, key, value, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                &[namespace, key, json, &now],
            )
            .await?;
            Ok(Outcome::Unit)
        }
        Op::DeleteSetting(namespace, key) => {
            let n = exec(
                tx,
                "DELETE FROM settings WHERE namespace = $1 AND key = $2",
                &[namespace, key],
            )
            .await?;
            Ok(Outcome::Count(n))
        }
        Op::RecordUsage(u) => {
            exec(
                tx,
                "INSERT INTO usage (day, bot_id, user_id, channel_id, prompt_tokens, completion_tokens, replies) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (day, bot_id, user_id, channel_id) DO UPDATE SET \
                 prompt_tokens = usage.prompt_tokens + excluded.prompt_tokens, \
                 completion_tokens = usage.completion_tokens + excluded.completion_tokens, \
                 replies = usage.replies + excluded.replies",
                &[
                    &u.day,
                    &u.bot_id.as_str(),
                    &u.user_id.as_str(),
                    &u.channel_id.as_str(),
                    &(u.prompt_tokens.min(i64::MAX as u64) as i64),
                    &(u.completion_tokens.min(i64::MAX as u64) as i64),
                    &(u.replies.min(i64::MAX as u64) as i64),
                ],
            )
            .await?;
            Ok(Outcome::Unit)
        }
        Op::PutFile(f, quota) => files::put_file(tx, f, *quota).await.map(|_| Outcome::Unit),
        Op::DeleteUnattachedFiles(before, limit) => files::delete_unattached(tx, *before, *limit)
            .await
            .map(Outcome::FileIds),
    }
}
