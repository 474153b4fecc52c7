//! The writer: one task per store owns the store's write connection and applies commands in batches.
//!
//! Group commit, as `store-sqlite`'s writer: the task takes every command that is waiting (up to
//! `max_batch`), opens one transaction, takes the cluster-wide write lock (`pg_advisory_xact_lock`, see the
//! crate documentation), applies each command inside its own savepoint (so one failing command does not undo
//! the others), commits once, publishes the batch's events to the bus in commit order, and only then answers
//! the callers. So an answer means "durable and announced". A batch whose transaction fails as a whole (the
//! connection lost, the commit refused) answers every command `Unavailable` and publishes nothing; one that
//! hits a serialization failure or a deadlock is applied again from the start.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use confab_domain::bot::{BotSettings, ReplyState, UsageRecord};
use confab_domain::flag::FlagState;
use confab_domain::model::{
    Appended, Channel, ChannelPatch, FileObject, FileQuota, MessagePatch, NewChannel, NewMessage, NewUser, User,
    UserPatch,
};
use confab_domain::outbox::{ChangeCause, ChangeRecorder, DeadLetter};
use confab_domain::ports::{DynBus, SessionRecord};
use confab_domain::{
    ChannelId, ChannelSeq, DomainError, DomainResult, Event, FileId, MessageId, Millis, Precondition, UserId,
    now_millis,
};
use deadpool_postgres::{Pool, Transaction};
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::db::{exec, rows};
use crate::error::{Fail, Res, Severity, db_err, describe, severity};
use crate::rows::get;
use crate::{files, queries};

mod accounts;
mod channels;
mod messages;

use accounts::*;
use channels::*;
use messages::*;

/// A write, kept whole until its batch commits: a batch that must be applied again applies the same ops.
#[derive(Debug)]
pub(crate) enum Op {
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
    /// This node's generating replies (and those of no node) become `interrupted`: its restart.
    SweepGenerating,
    /// Records this node alive at the time.
    Heartbeat(Millis),
    /// Other nodes' generating replies become `interrupted` when the node is silent since the time.
    SweepSilentNodes(Millis),
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
    /// (name, holder, now, until): takes or renews a lease; `Count(1)` when held afterwards.
    AcquireLease(String, String, Millis, Millis),
    ReleaseLease(String, String),
    PutDeadLetter(DeadLetter),
    DeleteDeadLetters(String, Option<u64>),
    /// Changes nothing, but goes through the queue, the write lock, a savepoint and a commit as any write
    /// does: a health probe.
    Ping,
    /// A command with a bug: it panics inside the batch (tests of the writer's recovery).
    #[cfg(test)]
    Panic,
    /// Raises an error with this SQLSTATE while `times` is above zero, counting down (tests of how the
    /// writer treats each kind of failure).
    #[cfg(test)]
    Raise {
        code: &'static str,
        times: Arc<std::sync::atomic::AtomicU32>,
    },
}

impl Op {
    /// What kind of change the op's events stand for (see [`ChangeCause`]).
    fn cause(&self) -> ChangeCause {
        match self {
            Op::Append(..) => ChangeCause::Send,
            Op::Edit(..) => ChangeCause::Edit,
            Op::FinishReply(..) | Op::SweepGenerating | Op::SweepSilentNodes(_) => ChangeCause::FinishReply,
            _ => ChangeCause::Other,
        }
    }
}

/// The installed recorder, shared with the store handle that installs it.
pub(crate) type RecorderSlot = Arc<std::sync::RwLock<Option<Arc<dyn ChangeRecorder>>>>;

#[derive(Debug)]
pub(crate) enum Outcome {
    Unit,
    Count(u64),
    User(User),
    Channel(Channel, bool),
    Seq(ChannelSeq),
    Appended(Box<Appended>),
    Message(Box<confab_domain::model::Message>),
    Bot(Box<confab_domain::bot::Bot>),
    FileIds(Vec<FileId>),
}

pub(crate) struct WriteCmd {
    pub op: Op,
    pub reply: oneshot::Sender<DomainResult<Outcome>>,
}

/// How often a batch is applied again after a serialization failure or a deadlock before it fails.
const ATTEMPTS: u32 = 3;

/// The cluster-wide write lock of the schema, held until the batch's transaction ends.
const LOCK_SQL: &str = "SELECT pg_advisory_xact_lock($1)";

pub(crate) struct Writer {
    /// A pool of one: the writer's own connection, made again when it breaks.
    pub pool: Pool,
    pub rx: mpsc::Receiver<WriteCmd>,
    pub bus: DynBus,
    pub max_batch: usize,
    pub recorder: RecorderSlot,
    pub lock_key: i64,
    /// Recorded on the generating replies this writer appends: they are this node's.
    pub node_id: String,
}

/// Why a batch's transaction failed as a whole.
enum BatchFailure {
    /// A serialization failure or a deadlock: nothing was committed, the batch may be applied again.
    Retry(tokio_postgres::Error),
    /// The connection, the lock or the commit failed.
    Sql(tokio_postgres::Error),
    /// No connection could be had.
    Connect(String),
}

impl BatchFailure {
    /// Every command of a failed batch is answered `Unavailable`: nothing of it was committed (or, when the
    /// connection was lost during the commit, nobody can tell; a retried send finds its original by its key).
    fn into_domain(self) -> DomainError {
        match self {
            BatchFailure::Retry(e) | BatchFailure::Sql(e) => match db_err(&e) {
                DomainError::Unavailable(m) => DomainError::Unavailable(m),
                _ => DomainError::Unavailable(format!("storage commit failed: {}", describe(&e))),
            },
            BatchFailure::Connect(m) => DomainError::Unavailable(m),
        }
    }

    fn of(e: tokio_postgres::Error) -> Self {
        if severity(&e) == Severity::Retry {
            BatchFailure::Retry(e)
        } else {
            BatchFailure::Sql(e)
        }
    }
}

type Applied = (Vec<DomainResult<Outcome>>, Vec<Event>);

impl Writer {
    pub(crate) async fn run(mut self) {
        let mut batch: Vec<WriteCmd> = Vec::with_capacity(self.max_batch);
        while self.rx.recv_many(&mut batch, self.max_batch).await > 0 {
            self.apply_batch(&mut batch).await;
        }
        tracing::debug!("store writer stopped");
    }

    async fn apply_batch(&mut self, batch: &mut Vec<WriteCmd>) {
        let started = Instant::now();
        metrics::histogram!("confab_store_batch_commands").record(batch.len() as f64);
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.drain(..).map(|c| (c.op, c.reply)).unzip();
        let recorder = self.recorder.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            // The command being applied, to tell the one that panicked (if one does) from the rest.
            let mut current = 0;
            let run = AssertUnwindSafe(self.try_batch(&ops, recorder.as_deref(), &mut current))
                .catch_unwind()
                .await;
            match run {
                Ok(Err(BatchFailure::Retry(e))) if attempt < ATTEMPTS => {
                    metrics::counter!("confab_store_batch_retries_total").increment(1);
                    tracing::warn!(error = %describe(&e), attempt, "store batch conflicted; applying it again");
                }
                Ok(outcome) => break outcome,
                // A command that panics (a bug) must not take the writer, and every later write, down with
                // it: the batch's transaction rolls back as it unwinds (its drop sends ROLLBACK), the command
                // is answered as an internal error and the rest of the batch as retryable.
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
            }
        };
        // The whole transaction: the lock, the commands and the commit.
        metrics::histogram!("confab_store_commit_seconds").record(started.elapsed().as_secs_f64());
        match outcome {
            Ok((results, events)) => {
                if !events.is_empty() {
                    // Announce before answering, so a client that got its ack can rely on the event being on
                    // its way.
                    self.bus.publish(events).await;
                }
                for (reply, res) in replies.into_iter().zip(results) {
                    let _ = reply.send(res);
                }
            }
            Err(failure) => {
                let err = failure.into_domain();
                tracing::error!(error = %err, batch = replies.len(), "store batch failed");
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// One attempt at a batch: one transaction, one savepoint per command.
    async fn try_batch(
        &self,
        ops: &[Op],
        recorder: Option<&dyn ChangeRecorder>,
        current: &mut usize,
    ) -> Result<Applied, BatchFailure> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| BatchFailure::Connect(format!("storage unreachable: {}", describe(&e))))?;
        let tx = client.transaction().await.map_err(BatchFailure::of)?;
        let waiting = Instant::now();
        let lock = tx.prepare_cached(LOCK_SQL).await.map_err(BatchFailure::of)?;
        tx.execute(&lock, &[&self.lock_key]).await.map_err(BatchFailure::of)?;
        metrics::histogram!("confab_store_lock_wait_seconds").record(waiting.elapsed().as_secs_f64());
        let mut results = Vec::with_capacity(ops.len());
        let mut events = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            *current = i;
            // The previous command's savepoint is released with this one's taken, in one round trip; the
            // last one is released by the commit.
            let savepoint = if i == 0 {
                "SAVEPOINT cmd"
            } else {
                "RELEASE SAVEPOINT cmd; SAVEPOINT cmd"
            };
            tx.batch_execute(savepoint).await.map_err(BatchFailure::of)?;
            let mut local = Vec::new();
            let applied = match apply(&tx, op, &self.node_id, &mut local).await {
                Ok(out) => match recorder {
                    Some(r) => record_changes(&tx, r, op.cause(), &local).await.map(|()| out),
                    None => Ok(out),
                },
                Err(e) => Err(e),
            };
            let failed = match applied {
                Ok(out) => {
                    events.append(&mut local);
                    results.push(Ok(out));
                    continue;
                }
                Err(Fail::Domain(e)) => e,
                Err(Fail::Sql(e)) => match severity(&e) {
                    Severity::Command => db_err(&e),
                    Severity::Retry => return Err(BatchFailure::Retry(e)),
                    Severity::Batch => return Err(BatchFailure::Sql(e)),
                },
            };
            // This command only: what it wrote goes, the batch goes on (at once: a transaction left in
            // its failed state would make the COMMIT a rollback of the whole batch).
            tx.batch_execute("ROLLBACK TO SAVEPOINT cmd")
                .await
                .map_err(BatchFailure::of)?;
            results.push(Err(failed));
        }
        tx.commit().await.map_err(BatchFailure::of)?;
        Ok((results, events))
    }
}

/// Records the events of one command that the recorder wants, inside the command's savepoint: the outbox
/// row commits or rolls back with the change. Its id comes from the counter, in the transaction, under the
/// write lock: ids follow the commit order across the cluster and are never reused.
async fn record_changes(
    tx: &Transaction<'_>,
    recorder: &dyn ChangeRecorder,
    cause: ChangeCause,
    events: &[Event],
) -> Res<()> {
    for ev in events {
        if let Some(rec) = recorder.record(cause, ev) {
            exec(
                tx,
                "WITH c AS (UPDATE outbox_counter SET last_id = last_id + 1 RETURNING last_id) \
                 INSERT INTO outbox (id, event_type, channel_id, payload, created_at) \
                 SELECT last_id, $1, $2, $3, $4 FROM c",
                &[
                    &rec.event_type,
                    &rec.channel_id.as_ref().map(|c| c.as_str()),
                    &rec.payload,
                    &now_millis(),
                ],
            )
            .await?;
        }
    }
    Ok(())
}

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

async fn apply(tx: &Transaction<'_>, op: &Op, node: &str, events: &mut Vec<Event>) -> Res<Outcome> {
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
            interrupt(tx, &found, "the server generating this reply stopped", now, events).await
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
