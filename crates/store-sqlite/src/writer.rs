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
    Appended, Channel, ChannelKind, ChannelPatch, FileObject, FileQuota, MessagePatch, NewChannel, NewMessage, NewUser,
    User, UserPatch,
};
use confab_domain::outbox::{ChangeCause, ChangeRecorder, DeadLetter};
use confab_domain::ports::{DynBus, SessionRecord};
use confab_domain::{
    ChannelId, ChannelSeq, DomainError, DomainResult, Event, FileId, MessageId, Millis, Precondition, UserId,
    now_millis,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use crate::{facts, queries};

mod accounts;
mod channels;
mod messages;

use crate::rows::to_json;
use accounts::*;
use channels::*;
use messages::*;

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
    Append(Box<NewMessage>, Vec<Precondition>),
    Edit(MessageId, MessagePatch, Vec<Precondition>),
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
    /// Changes no row: its events are recorded in the outbox (by the change recorder, as any write's) and
    /// published (a bot triggered by a message already stored).
    Announce(Vec<Event>),
    /// Flags a stored message (a bot reply, flagged once complete) for review.
    Flag(MessageId, Vec<String>),
    /// Approves a flag, or removes the message (deleted, as by its sender) and settles the flag.
    ReviewFlag(MessageId, FlagState, Option<UserId>),
    PutDeadLetter(DeadLetter),
    /// (name, holder, now, until): takes or renews a lease; `Count(1)` when held afterwards.
    AcquireLease(String, String, Millis, Millis),
    ReleaseLease(String, String),
    PruneLeases(Millis),
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
            Op::Append(..) => ChangeCause::Send,
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

/// Counts a write in `confab_store_writer_queue` from the moment it is asked of the writer until it is answered
/// (or its caller gives up): waiting for room in a full queue, queued, or in the batch being applied. One
/// atomic add each way.
pub(crate) struct Queued<'a>(&'a metrics::Gauge);

impl<'a> Queued<'a> {
    pub(crate) fn enter(gauge: &'a metrics::Gauge) -> Queued<'a> {
        gauge.increment(1.0);
        Queued(gauge)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

pub struct WriteCmd {
    pub op: Op,
    pub reply: oneshot::Sender<DomainResult<Outcome>>,
}

pub struct Writer {
    /// The database's lock file, held while this writer runs: one process writes a database at a time.
    pub _lock: std::fs::File,
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
            require_users(conn, std::slice::from_ref(&s.user_id))?;
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
        Op::Append(m, pre) => append(conn, *m, &pre, now, events).map(|a| Outcome::Appended(Box::new(a))),
        Op::Edit(id, p, pre) => edit(conn, id, p, &pre, now, events).map(|m| Outcome::Message(Box::new(m))),
        Op::Delete(id) => delete_message(conn, id, now, events).map(|m| Outcome::Message(Box::new(m))),
        Op::CreateBot(u, settings) => create_bot(conn, u, settings, now, events).map(|b| Outcome::Bot(Box::new(b))),
        Op::UpdateBot(id, settings) => update_bot(conn, &id, settings, now, events).map(|b| Outcome::Bot(Box::new(b))),
        Op::SaveReplyText(id, text) => {
            conn.prepare_cached(
                "UPDATE messages SET text = ?2 WHERE id = ?1 AND reply_state = 'generating' AND NOT deleted",
            )
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
        Op::Announce(announced) => {
            events.extend(announced);
            Ok(Outcome::Unit)
        }
        Op::PruneOutbox(through) => {
            let n = conn
                .prepare_cached("DELETE FROM outbox WHERE id <= ?1")
                .and_then(|mut s| s.execute([through as i64]))
                .map_err(db_err)?;
            Ok(Outcome::Count(n as u64))
        }
        Op::AcquireLease(name, holder, now, until) => {
            let n = conn
                .prepare_cached(
                    "INSERT INTO leases (name, holder, until) VALUES (?1, ?2, ?4) ON CONFLICT (name) DO UPDATE \
                     SET holder = excluded.holder, until = excluded.until \
                     WHERE leases.holder = excluded.holder OR leases.until < ?3",
                )
                .and_then(|mut s| s.execute(params![name, holder, now, until]))
                .map_err(db_err)?;
            Ok(Outcome::Count(n as u64))
        }
        Op::PruneLeases(before) => {
            let n = conn
                .prepare_cached("DELETE FROM leases WHERE until < ?1")
                .and_then(|mut s| s.execute([before]))
                .map_err(db_err)?;
            Ok(Outcome::Count(n as u64))
        }
        Op::ReleaseLease(name, holder) => {
            conn.prepare_cached("DELETE FROM leases WHERE name = ?1 AND holder = ?2")
                .and_then(|mut s| s.execute(params![name, holder]))
                .map_err(db_err)?;
            Ok(Outcome::Unit)
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
