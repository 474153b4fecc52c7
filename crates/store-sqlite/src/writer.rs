//! The single writer: one thread owns the one write connection and applies commands in batches.
//!
//! Group commit: the thread takes every command that is waiting (up to `max_batch`), applies each inside its
//! own savepoint (so one failing command does not undo the others), commits once (one fsync for the batch),
//! publishes the batch's events to the bus in commit order, and only then answers the callers. So an answer
//! means "durable and announced".

use std::sync::Arc;

use confab_domain::bot::{Bot, BotSettings, ReplyState, UsageRecord};
use confab_domain::flag::FlagState;
use confab_domain::model::{
    Appended, Channel, ChannelKind, ChannelPatch, FileObject, FileQuota, MessageKind, MessagePatch, NewChannel,
    NewMessage, NewUser, User, UserPatch,
};
use confab_domain::outbox::{ChangeCause, ChangeRecorder, DeadLetter};
use confab_domain::ports::{DynBus, SessionRecord};
use confab_domain::{
    ChannelId, ChannelSeq, DomainError, DomainResult, Event, FileId, MessageId, Millis, UserId, now_millis,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use crate::queries;
use crate::rows::to_json;

pub enum Op {
    CreateUser(NewUser),
    UpdateUser(UserId, UserPatch),
    DeleteUser(UserId),
    SetLastSeen(UserId, Millis),
    CreateSession(SessionRecord),
    RevokeSessions(UserId),
    CreateChannel(NewChannel),
    UpdateChannel(ChannelId, ChannelPatch),
    DeleteChannel(ChannelId),
    AddMembers(ChannelId, Vec<UserId>, Option<UserId>),
    RemoveMember(ChannelId, UserId, Option<UserId>),
    MarkRead(ChannelId, UserId, ChannelSeq),
    Append(Box<NewMessage>),
    Edit(MessageId, MessagePatch),
    Delete(MessageId),
    PutFile(FileObject, FileQuota),
    DeleteUnattachedFiles(Millis, u32),
    CreateBot(NewUser, BotSettings),
    UpdateBot(UserId, BotSettings),
    /// Persists the text of a reply still generating; no event (deltas travel separately).
    SaveReplyText(MessageId, String),
    FinishReply(MessageId, String, ReplyState, Option<String>),
    SweepGenerating,
    RecordUsage(UsageRecord),
    PutProvider(String, String),
    DeleteProvider(String),
    PutSetting(String, String, String),
    DeleteSetting(String, String),
    PruneOutbox(u64),
    /// Flags a stored message (a bot reply, flagged once complete) for review.
    Flag(MessageId, Vec<String>),
    /// Approves a flag, or removes the message (deleted, as by its sender) and settles the flag.
    ReviewFlag(MessageId, FlagState, Option<UserId>),
    PutDeadLetter(DeadLetter),
    DeleteDeadLetters(String, Option<u64>),
    /// Changes nothing, but takes the write lock as any write does: a health probe's round trip through the
    /// queue, a savepoint and a commit.
    Ping,
    /// A command with a bug: it panics inside the batch (tests of the writer's recovery).
    #[cfg(test)]
    Panic,
}

impl Op {
    /// What kind of change the op's events stand for (see [`ChangeCause`]).
    fn cause(&self) -> ChangeCause {
        match self {
            Op::Append(_) => ChangeCause::Send,
            Op::Edit(..) => ChangeCause::Edit,
            Op::FinishReply(..) | Op::SweepGenerating => ChangeCause::FinishReply,
            _ => ChangeCause::Other,
        }
    }
}

/// The installed recorder, shared with the store handle that installs it.
pub type RecorderSlot = Arc<std::sync::RwLock<Option<Arc<dyn ChangeRecorder>>>>;

pub enum Outcome {
    Unit,
    Count(u64),
    User(User),
    Channel(Channel, bool),
    Seq(ChannelSeq),
    Appended(Box<Appended>),
    Message(Box<confab_domain::model::Message>),
    Bot(Box<Bot>),
    FileIds(Vec<FileId>),
}

pub struct WriteCmd {
    pub op: Op,
    pub reply: oneshot::Sender<DomainResult<Outcome>>,
}

pub struct Writer {
    pub conn: Connection,
    pub rx: mpsc::Receiver<WriteCmd>,
    pub bus: DynBus,
    pub runtime: tokio::runtime::Handle,
    pub max_batch: usize,
    pub recorder: RecorderSlot,
}

impl Writer {
    pub fn run(mut self) {
        let mut batch: Vec<WriteCmd> = Vec::with_capacity(self.max_batch);
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            self.apply_batch(&mut batch);
        }
        tracing::debug!("store writer stopped");
    }

    fn apply_batch(&mut self, batch: &mut Vec<WriteCmd>) {
        let started = std::time::Instant::now();
        metrics::histogram!("confab_store_batch_commands").record(batch.len() as f64);
        let mut events = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        let mut results = Vec::with_capacity(batch.len());
        let conn = &mut self.conn;
        let recorder = self.recorder.read().unwrap_or_else(|e| e.into_inner()).clone();
        // Every caller is answered, whatever happens below (the write lock not had, a failed command).
        let mut ops = Vec::with_capacity(batch.len());
        for WriteCmd { op, reply } in batch.drain(..) {
            ops.push(op);
            replies.push(reply);
        }
        // The command being applied, to tell the one that panicked (if one does) from the rest of its batch.
        let mut current = 0;
        let run = std::panic::AssertUnwindSafe(|| -> rusqlite::Result<()> {
            // IMMEDIATE: the write lock is taken once, for the batch (waiting at most the busy timeout), instead
            // of by each command in turn; so a lock held elsewhere fails the batch after one timeout, not one per
            // command.
            let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (i, op) in ops.into_iter().enumerate() {
                current = i;
                let sp = tx.savepoint()?;
                let mut local = Vec::new();
                let cause = op.cause();
                let applied = apply(&sp, op, &mut local).and_then(|out| {
                    if let Some(r) = &recorder {
                        record_changes(&sp, r.as_ref(), cause, &local)?;
                    }
                    Ok(out)
                });
                match applied {
                    Ok(out) => {
                        sp.commit()?;
                        events.append(&mut local);
                        results.push(Ok(out));
                    }
                    Err(e) => {
                        // Dropping the savepoint rolls back this command only.
                        drop(sp);
                        results.push(Err(e));
                        // Some errors (SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM) make SQLite roll back the whole
                        // transaction: the commands before this one are gone, and a next savepoint would start
                        // a transaction of its own, committed apart from the batch and never announced. The
                        // batch has failed: every command in it is refused.
                        if tx.is_autocommit() {
                            return Err(rusqlite::Error::SqliteFailure(
                                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                                Some("the batch's transaction was rolled back".into()),
                            ));
                        }
                    }
                }
            }
            tx.commit()
        });
        // A command that panics (a bug) must not take the writer, and every later write, down with it: the
        // batch's transaction rolls back as it unwinds, the command is answered as an internal error and the
        // rest of the batch as retryable.
        let committed = match std::panic::catch_unwind(run) {
            Ok(committed) => committed,
            Err(_) => {
                tracing::error!(
                    batch = replies.len(),
                    "a store command panicked; its batch was rolled back"
                );
                for (i, reply) in replies.into_iter().enumerate() {
                    let _ = reply.send(Err(if i == current {
                        DomainError::Internal("a store command panicked".into())
                    } else {
                        DomainError::Unavailable("storage batch rolled back; retry".into())
                    }));
                }
                return;
            }
        };
        // The whole transaction: the commands and the commit (its fsync, with `synchronous = FULL`).
        metrics::histogram!("confab_store_commit_seconds").record(started.elapsed().as_secs_f64());
        match committed {
            Ok(()) => {
                if !events.is_empty() {
                    // Announce before answering, so a client that got its ack can rely on the event being on its way.
                    self.runtime.block_on(self.bus.publish(events));
                }
                for (reply, res) in replies.into_iter().zip(results) {
                    let _ = reply.send(res);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = replies.len(), "store commit failed");
                // A command's own error (say, the disk full) says more than the batch's.
                let cause = results
                    .into_iter()
                    .find_map(|r| r.err())
                    .filter(|e| matches!(e, DomainError::Unavailable(_)));
                let err = cause.unwrap_or_else(|| match db_err(e) {
                    DomainError::Unavailable(m) => DomainError::Unavailable(m),
                    _ => DomainError::Unavailable("storage commit failed".into()),
                });
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// Records the events of one command that the recorder wants, inside the command's savepoint: the outbox
/// row commits or rolls back with the change.
fn record_changes(
    conn: &Connection,
    recorder: &dyn ChangeRecorder,
    cause: ChangeCause,
    events: &[Event],
) -> DomainResult<()> {
    for ev in events {
        if let Some(rec) = recorder.record(cause, ev) {
            conn.prepare_cached(
                "INSERT INTO outbox (event_type, channel_id, payload, created_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    rec.event_type,
                    rec.channel_id.as_ref().map(|c| c.as_str()),
                    rec.payload,
                    now_millis()
                ])
            })
            .map_err(db_err)?;
        }
    }
    Ok(())
}

/// Why a chosen session token that another account already has is refused.
const TOKEN_TAKEN: &str = "is already the token of another account";

/// Maps storage errors: constraint violations are the caller's fault (handled where they can occur), the rest
/// is an unavailable store.
pub fn db_err(e: rusqlite::Error) -> DomainError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            DomainError::Unavailable("storage busy".into())
        }
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
            DomainError::Unavailable("storage full".into())
        }
        rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..) => {
            DomainError::Internal(format!("corrupt row: {e}"))
        }
        _ => DomainError::Unavailable(format!("storage error: {e}")),
    }
}

fn apply(conn: &Connection, op: Op, events: &mut Vec<Event>) -> DomainResult<Outcome> {
    let now = now_millis();
    match op {
        Op::CreateUser(u) => create_user(conn, u, now, events).map(Outcome::User),
        Op::UpdateUser(id, p) => update_user(conn, &id, p, now, events).map(Outcome::User),
        Op::DeleteUser(id) => delete_user(conn, &id, events).map(|_| Outcome::Unit),
        #[cfg(test)]
        Op::Panic => panic!("a command with a bug"),
        Op::Ping => conn
            .execute("UPDATE users SET id = id WHERE 0", [])
            .map(|_| Outcome::Unit)
            .map_err(db_err),
        Op::SetLastSeen(id, at) => {
            conn.prepare_cached("UPDATE users SET last_seen_at = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id.as_str(), at]))
                .map_err(db_err)?;
            Ok(Outcome::Unit)
        }
        Op::CreateSession(s) => {
            // A token an application chose may already be its user's (kept, with the new expiry) or another
            // account's: a client signs in with the token alone, so that one is refused.
            let stored = conn
                .prepare_cached(
                    "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (token_hash) DO UPDATE SET created_at = excluded.created_at, \
                     expires_at = excluded.expires_at WHERE sessions.user_id = excluded.user_id",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        &s.token_hash[..],
                        s.user_id.as_str(),
                        s.created_at,
                        s.expires_at
                    ])
                })
                .map_err(db_err)?;
            if stored == 0 {
                return Err(DomainError::invalid("token", TOKEN_TAKEN));
            }
            Ok(Outcome::Unit)
        }
        Op::RevokeSessions(id) => {
            let n = conn
                .prepare_cached("DELETE FROM sessions WHERE user_id = ?1")
                .and_then(|mut s| s.execute([id.as_str()]))
                .map_err(db_err)?;
            Ok(Outcome::Count(n as u64))
        }
        Op::CreateChannel(c) => create_channel(conn, c, now, events).map(|(c, created)| Outcome::Channel(c, created)),
        Op::UpdateChannel(id, p) => update_channel(conn, &id, p, now, events).map(|c| Outcome::Channel(c, false)),
        Op::DeleteChannel(id) => delete_channel(conn, &id, events).map(|_| Outcome::Unit),
        Op::AddMembers(id, users, by) => {
            add_members(conn, &id, &users, by, now, events).map(|c| Outcome::Channel(c, false))
        }
        Op::RemoveMember(id, user, by) => {
            remove_member(conn, &id, &user, by, now, events).map(|c| Outcome::Channel(c, false))
        }
        Op::MarkRead(id, user, seq) => mark_read(conn, &id, &user, seq, events).map(Outcome::Seq),
        Op::Append(m) => append(conn, *m, now, events).map(|a| Outcome::Appended(Box::new(a))),
        Op::Edit(id, p) => edit(conn, id, p, now, events).map(|m| Outcome::Message(Box::new(m))),
        Op::Delete(id) => delete_message(conn, id, now, events).map(|m| Outcome::Message(Box::new(m))),
        Op::CreateBot(u, settings) => create_bot(conn, u, settings, now, events).map(|b| Outcome::Bot(Box::new(b))),
        Op::UpdateBot(id, settings) => update_bot(conn, &id, settings, now, events).map(|b| Outcome::Bot(Box::new(b))),
        Op::SaveReplyText(id, text) => {
            conn.prepare_cached("UPDATE messages SET text = ?2 WHERE id = ?1 AND reply_state = 'generating'")
                .and_then(|mut s| s.execute(params![id.0, text]))
                .map_err(db_err)?;
            Ok(Outcome::Unit)
        }
        Op::FinishReply(id, text, state, reason) => {
            finish_reply(conn, id, text, state, reason, now, events).map(|m| Outcome::Message(Box::new(m)))
        }
        Op::SweepGenerating => {
            let ids: Vec<i64> = conn
                .prepare_cached("SELECT id FROM messages WHERE reply_state = 'generating'")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(db_err)?;
            for id in &ids {
                finish_reply(
                    conn,
                    MessageId(*id),
                    String::new(),
                    ReplyState::Interrupted,
                    Some("the server restarted while this reply was being generated".into()),
                    now,
                    events,
                )?;
            }
            Ok(Outcome::Count(ids.len() as u64))
        }
        Op::Flag(id, rules) => {
            let m = load_message(conn, id)?;
            insert_flag(conn, id, &m.channel_id, &rules, now)?;
            Ok(Outcome::Unit)
        }
        Op::ReviewFlag(id, state, by) => {
            review_flag(conn, id, state, by.as_ref(), now)?;
            if state == FlagState::Removed {
                let m = load_message(conn, id)?;
                if !m.deleted {
                    delete_message(conn, id, now, events)?;
                }
            }
            Ok(Outcome::Unit)
        }
        Op::PruneOutbox(through) => {
            let n = conn
                .prepare_cached("DELETE FROM outbox WHERE id <= ?1")
                .and_then(|mut s| s.execute([through as i64]))
                .map_err(db_err)?;
            Ok(Outcome::Count(n as u64))
        }
        Op::PutDeadLetter(d) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO webhook_dead_letters (endpoint_id, event_id, event_type, channel_id, payload, \
                 created_at, attempts, last_error, failed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    d.endpoint_id,
                    d.event.id as i64,
                    d.event.event_type,
                    d.event.channel_id.as_ref().map(|c| c.as_str()),
                    d.event.payload,
                    d.event.created_at,
                    d.attempts,
                    d.last_error,
                    d.failed_at
                ])
            })
            .map_err(db_err)?;
            Ok(Outcome::Unit)
        }
        Op::DeleteDeadLetters(endpoint, event) => {
            let n = match event {
                Some(id) => conn
                    .prepare_cached("DELETE FROM webhook_dead_letters WHERE endpoint_id = ?1 AND event_id = ?2")
                    .and_then(|mut s| s.execute(params![endpoint, id as i64])),
                None => conn
                    .prepare_cached("DELETE FROM webhook_dead_letters WHERE endpoint_id = ?1")
                    .and_then(|mut s| s.execute(params![endpoint])),
            }
            .map_err(db_err)?;
            Ok(Outcome::Count(n as u64))
        }
        Op::PutProvider(name, json) => {
            conn.prepare_cached(
                "INSERT INTO providers (name, config, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
            )
            .and_then(|mut s| s.execute(params![name, json, now]))
            .map_err(db_err)?;
            Ok(Outcome::Unit)
        }
        Op::DeleteProvider(name) => {
            let n = conn
                .prepare_cached("DELETE FROM providers WHERE name = ?1")
                .and_then(|mut s| s.execute([name.as_str()]))
                .map_err(db_err)?;
            if n == 0 {
                return Err(DomainError::not_found("provider", name));
            }
            Ok(Outcome::Unit)
        }
        Op::PutSetting(namespace, key, json) => {
            conn.prepare_cached(
                "INSERT INTO settings (namespace, key, value, updated_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .and_then(|mut s| s.execute(params![namespace, key, json, now]))
            .map_err(db_err)?;
            Ok(Outcome::Unit)
        }
        Op::DeleteSetting(namespace, key) => {
            let n = conn
                .prepare_cached("DELETE FROM settings WHERE namespace = ?1 AND key = ?2")
                .and_then(|mut s| s.execute(params![namespace, key]))
                .map_err(db_err)?;
            Ok(Outcome::Count(n as u64))
        }
        Op::RecordUsage(u) => {
            conn.prepare_cached(
                "INSERT INTO usage (day, bot_id, user_id, channel_id, prompt_tokens, completion_tokens, replies) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (day, bot_id, user_id, channel_id) DO UPDATE SET \
                 prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
                 completion_tokens = completion_tokens + excluded.completion_tokens, replies = replies + excluded.replies",
            )
            .and_then(|mut s| {
                s.execute(params![
                    u.day,
                    u.bot_id.as_str(),
                    u.user_id.as_str(),
                    u.channel_id.as_str(),
                    u.prompt_tokens as i64,
                    u.completion_tokens as i64,
                    u.replies as i64
                ])
            })
            .map_err(db_err)?;
            Ok(Outcome::Unit)
        }
        Op::PutFile(f, quota) => crate::files::put_file(conn, &f, quota).map(|_| Outcome::Unit),
        Op::DeleteUnattachedFiles(before, limit) => {
            crate::files::delete_unattached(conn, before, limit).map(Outcome::FileIds)
        }
    }
}

fn create_user(conn: &Connection, u: NewUser, now: Millis, events: &mut Vec<Event>) -> DomainResult<User> {
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

fn update_user(
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

fn delete_user(conn: &Connection, id: &UserId, events: &mut Vec<Event>) -> DomainResult<()> {
    let n = conn
        .prepare_cached("DELETE FROM users WHERE id = ?1")
        .and_then(|mut s| s.execute([id.as_str()]))
        .map_err(db_err)?;
    if n == 0 {
        return Err(DomainError::not_found("user", id));
    }
    for sql in [
        "DELETE FROM sessions WHERE user_id = ?1",
        "DELETE FROM bots WHERE id = ?1",
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

fn require_users(conn: &Connection, users: &[UserId]) -> DomainResult<()> {
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

fn create_channel(
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

fn load_channel(conn: &Connection, id: &ChannelId) -> DomainResult<Channel> {
    queries::channel(conn, id)
        .map_err(db_err)?
        .ok_or_else(|| DomainError::not_found("channel", id))
}

fn update_channel(
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

fn delete_channel(conn: &Connection, id: &ChannelId, events: &mut Vec<Event>) -> DomainResult<()> {
    let members = queries::member_ids(conn, id).map_err(db_err)?;
    let n = conn
        .prepare_cached("DELETE FROM channels WHERE id = ?1")
        .and_then(|mut s| s.execute([id.as_str()]))
        .map_err(db_err)?;
    if n == 0 {
        return Err(DomainError::not_found("channel", id));
    }
    for sql in [
        "DELETE FROM members WHERE channel_id = ?1",
        "DELETE FROM messages WHERE channel_id = ?1",
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

fn add_members(
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
fn insert_members(
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

fn remove_member(
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

fn mark_read(
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

/// A bot that is not a member may still answer a message of the channel that mentions it: the member who
/// wrote it invoked the bot there (NIM's `robotAccount` on a private message, an `@bot` in a group).
fn invoked_by_trigger(conn: &Connection, m: &NewMessage, sender: &UserId) -> Result<bool, DomainError> {
    let Some(trigger_id) = m.reply.as_ref().and_then(|r| r.trigger_id) else {
        return Ok(false);
    };
    let trigger: Option<(String, String)> = conn
        .prepare_cached("SELECT channel_id, mentions FROM messages WHERE id = ?1")
        .and_then(|mut s| s.query_row([trigger_id.0], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(db_err)?;
    Ok(trigger.is_some_and(|(channel, mentions)| {
        channel == m.channel_id.as_str()
            && serde_json::from_str::<Vec<String>>(&mentions).is_ok_and(|ids| ids.iter().any(|i| i == sender.as_str()))
    }))
}

fn membership_error(conn: &Connection, channel: &ChannelId, user: &UserId) -> DomainError {
    match queries::channel(conn, channel) {
        Ok(Some(_)) => DomainError::not_member(user, channel),
        Ok(None) => DomainError::not_found("channel", channel),
        Err(e) => db_err(e),
    }
}

fn append(conn: &Connection, m: NewMessage, now: Millis, events: &mut Vec<Event>) -> DomainResult<Appended> {
    if let (Some(sender), Some(trigger_id)) = (&m.sender_id, m.reply.as_ref().and_then(|r| r.trigger_id))
        && let Some(original) = queries::reply_to(conn, sender, trigger_id).map_err(db_err)?
    {
        return Ok(Appended {
            message: original,
            duplicate: true,
        });
    }
    if let Some(sender) = &m.sender_id {
        // One lookup for both rules: the sender is a member, and its account is not blocked.
        let member_blocked: Option<bool> = conn
            .prepare_cached(
                "SELECT u.disabled FROM members m JOIN users u ON u.id = m.user_id \
                 WHERE m.channel_id = ?1 AND m.user_id = ?2",
            )
            .and_then(|mut s| {
                s.query_row([m.channel_id.as_str(), sender.as_str()], |r| r.get::<_, bool>(0))
                    .optional()
            })
            .map_err(db_err)?;
        match member_blocked {
            Some(false) => {}
            Some(true) => return Err(DomainError::forbidden("the sender's account is blocked")),
            None if invoked_by_trigger(conn, &m, sender)? => {}
            None => return Err(membership_error(conn, &m.channel_id, sender)),
        }
    }
    // A retry is answered with the original only after the membership check, so a removed member cannot
    // read a message's current state by resending; and only in the channel the original is in.
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
    let mut parent_update = None;
    if let Some(parent_id) = m.parent_id {
        let parent: Option<(String, Option<i64>)> = conn
            .prepare_cached("SELECT channel_id, parent_id FROM messages WHERE id = ?1")
            .and_then(|mut s| s.query_row([parent_id.0], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(db_err)?;
        match parent {
            Some((ch, None)) if ch == m.channel_id.as_str() => parent_update = Some(parent_id),
            Some((ch, Some(_))) if ch == m.channel_id.as_str() => {
                return Err(DomainError::invalid(
                    "parent_id",
                    "replies cannot have replies; reply to the thread's parent",
                ));
            }
            _ => return Err(DomainError::not_found("message", parent_id)),
        }
    }
    let file = match &m.file_id {
        Some(fid) => {
            let f = queries::file(conn, fid)
                .map_err(db_err)?
                .ok_or_else(|| DomainError::not_found("file", fid))?;
            if f.channel_id != m.channel_id {
                return Err(DomainError::invalid(
                    "file_id",
                    "the file was uploaded for another channel",
                ));
            }
            Some(f)
        }
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
fn insert_flag(
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
fn review_flag(
    conn: &Connection,
    id: MessageId,
    state: FlagState,
    by: Option<&UserId>,
    now: Millis,
) -> DomainResult<()> {
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

fn load_message(conn: &Connection, id: MessageId) -> DomainResult<confab_domain::model::Message> {
    queries::message(conn, id)
        .map_err(db_err)?
        .ok_or_else(|| DomainError::not_found("message", id))
}

fn edit(
    conn: &Connection,
    id: MessageId,
    p: MessagePatch,
    now: Millis,
    events: &mut Vec<Event>,
) -> DomainResult<confab_domain::model::Message> {
    let mut msg = load_message(conn, id)?;
    if msg.deleted {
        return Err(DomainError::not_found("message", id));
    }
    let flags = p.flags;
    if let Some(t) = p.text {
        if matches!(msg.kind, MessageKind::Image | MessageKind::File | MessageKind::Custom) && t.is_empty() {
            return Err(DomainError::invalid("text", "must not be empty"));
        }
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

fn delete_message(
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
    Ok(msg)
}

fn create_bot(
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

fn update_bot(
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

/// Writes a reply's final text and state, once: a reply already final is returned unchanged.
fn finish_reply(
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
    // The sweep after a restart keeps whatever text was last saved.
    if !text.is_empty() || state != ReplyState::Interrupted {
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
