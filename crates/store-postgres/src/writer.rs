//! The writer: one task per store owns the store's write connection and applies commands in batches.
//!
//! Group commit, as `store-sqlite`'s writer: the task takes every command that is waiting (up to
//! `max_batch`), opens one transaction, takes the cluster-wide write lock (`pg_advisory_xact_lock`, see the
//! crate documentation), applies each command inside its own savepoint (so one failing command does not undo
//! the others), commits once, publishes the batch's events to the bus in commit order, and only then answers
//! the callers. So an answer means "durable and announced". A run of consecutive appends (the common case
//! under load) is applied together inside one savepoint, with bulk statements (`bulk.rs`); if they fail,
//! the writer rolls back to that savepoint and applies the run's commands one by one. A batch whose transaction fails as a whole (the
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
mod bulk;
mod channels;
mod messages;
mod ops;

use accounts::*;
use channels::*;
use messages::*;
use ops::apply;

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
    /// Other nodes' generating replies become `interrupted`, and their sessions are forgotten, when the
    /// node is silent since the time.
    SweepSilentNodes(Millis),
    /// This node holds (true) or no longer holds a session of the user: `Count(1)` when that changed
    /// whether the user is online anywhere.
    SetPresence(UserId, bool),
    /// At start: this node's sessions from before are forgotten.
    ForgetOwnPresence,
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
    PruneLeases(Millis),
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
    /// Replies interrupted, and users now offline everywhere.
    Swept(u64, Vec<UserId>),
}

/// Counts a write in `confab_store_writer_queue` from the moment it is asked of this node's writer until it is
/// answered (or its caller gives up): waiting for room in a full queue, queued, or in the batch being applied.
/// One atomic add each way.
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

pub(crate) struct WriteCmd {
    pub op: Op,
    pub reply: oneshot::Sender<DomainResult<Outcome>>,
}

/// Per schema (its write lock's key): commands the bulk path applied, and runs it gave back to the
/// per-command path (tests).
#[cfg(test)]
pub(crate) static BULK_STATS: std::sync::Mutex<std::collections::BTreeMap<i64, (usize, usize)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

#[cfg(test)]
fn bulk_stats(lock_key: i64, applied: usize, fallbacks: usize) {
    let mut stats = BULK_STATS.lock().unwrap_or_else(|e| e.into_inner());
    let entry = stats.entry(lock_key).or_default();
    entry.0 += applied;
    entry.1 += fallbacks;
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
    /// Whether runs of consecutive appends are applied together (`bulk`); off, every command is applied
    /// alone (the reference the bulk path is tested against).
    pub bulk_appends: bool,
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
        let mut savepoint = Savepoint::None;
        let mut i = 0;
        while i < ops.len() {
            *current = i;
            let run = match self.bulk_appends {
                true => ops[i..].iter().take_while(|op| matches!(op, Op::Append(..))).count(),
                false => 0,
            };
            if run < 2 {
                results.push(
                    self.apply_one(&tx, &ops[i], recorder, &mut savepoint, &mut events)
                        .await?,
                );
                i += 1;
                continue;
            }
            let cmds: Vec<bulk::Cmd<'_>> = ops[i..i + run]
                .iter()
                .filter_map(|op| match op {
                    Op::Append(m, pre) => Some((&**m, &pre[..])),
                    _ => None,
                })
                .collect();
            savepoint.take(&tx).await?;
            match bulk::append_run(&tx, &cmds, &self.node_id, recorder, now_millis()).await {
                Ok(applied) => {
                    #[cfg(test)]
                    bulk_stats(self.lock_key, applied.handled, 0);
                    results.extend(applied.results);
                    events.extend(applied.events);
                    i += applied.handled;
                    if applied.handled < run {
                        // It depends on a message the run may have appended: applied alone, after it.
                        *current = i;
                        results.push(
                            self.apply_one(&tx, &ops[i], recorder, &mut savepoint, &mut events)
                                .await?,
                        );
                        i += 1;
                    }
                }
                Err(Fail::Sql(e)) if severity(&e) != Severity::Command => return Err(BatchFailure::of(e)),
                Err(e) => {
                    // Nothing of the run is kept: each of its commands is applied alone, and fails alone.
                    metrics::counter!("confab_store_bulk_fallbacks_total").increment(1);
                    #[cfg(test)]
                    bulk_stats(self.lock_key, 0, 1);
                    tracing::warn!(
                        error = %e.into_domain(),
                        run,
                        "a run of appends failed together; applying them one by one"
                    );
                    tx.batch_execute("ROLLBACK TO SAVEPOINT cmd")
                        .await
                        .map_err(BatchFailure::of)?;
                    for op in &ops[i..i + run] {
                        *current = i;
                        results.push(self.apply_one(&tx, op, recorder, &mut savepoint, &mut events).await?);
                        i += 1;
                    }
                }
            }
        }
        tx.commit().await.map_err(BatchFailure::of)?;
        Ok((results, events))
    }

    /// One command in a savepoint of its own: what it wrote goes if it fails, and the batch goes on.
    async fn apply_one(
        &self,
        tx: &Transaction<'_>,
        op: &Op,
        recorder: Option<&dyn ChangeRecorder>,
        savepoint: &mut Savepoint,
        events: &mut Vec<Event>,
    ) -> Result<DomainResult<Outcome>, BatchFailure> {
        savepoint.take(tx).await?;
        let mut local = Vec::new();
        let applied = match apply(tx, op, &self.node_id, &mut local).await {
            Ok(out) => match recorder {
                Some(r) => record_changes(tx, r, op.cause(), &local).await.map(|()| out),
                None => Ok(out),
            },
            Err(e) => Err(e),
        };
        let failed = match applied {
            Ok(out) => {
                events.append(&mut local);
                return Ok(Ok(out));
            }
            Err(Fail::Domain(e)) => e,
            Err(Fail::Sql(e)) => match severity(&e) {
                Severity::Command => db_err(&e),
                Severity::Retry => return Err(BatchFailure::Retry(e)),
                Severity::Batch => return Err(BatchFailure::Sql(e)),
            },
        };
        // At once: a transaction left in its failed state would make the COMMIT a rollback of the batch.
        tx.batch_execute("ROLLBACK TO SAVEPOINT cmd")
            .await
            .map_err(BatchFailure::of)?;
        Ok(Err(failed))
    }
}

/// The savepoint of the command (or run of appends) being applied, `cmd`, taken again for each.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Savepoint {
    None,
    Taken,
}

impl Savepoint {
    /// Takes `cmd` for the next command; the previous command's is released in the same round trip (the
    /// last one is released by the commit).
    async fn take(&mut self, tx: &Transaction<'_>) -> Result<(), BatchFailure> {
        let sql = match self {
            Savepoint::None => "SAVEPOINT cmd",
            Savepoint::Taken => "RELEASE SAVEPOINT cmd; SAVEPOINT cmd",
        };
        tx.batch_execute(sql).await.map_err(BatchFailure::of)?;
        *self = Savepoint::Taken;
        Ok(())
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
