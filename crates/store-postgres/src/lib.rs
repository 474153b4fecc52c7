//! The PostgreSQL store: several Confab nodes sharing one database. A `Store` that passes the conformance
//! suite unchanged, built like `store-sqlite`: one writer task per store with group commit, a small pool of
//! connections for reads.
//!
//! # Client
//! `tokio-postgres`, pooled by `deadpool-postgres`: explicit transactions and statement pipelining on one
//! connection (what group commit needs: one transaction, a savepoint per command, one commit), a small
//! dependency next to sqlx, and no database needed at compile time. Statements are prepared once per
//! connection and cached. No TLS yet (`NoTls`): the server is expected on a private network or the loopback.
//!
//! # Invariants, cluster-wide
//! Several nodes write the same database at once, so what `store-sqlite` gets from its one writer thread
//! must hold across processes: per-channel sequences gap-free and strictly increasing, message ids and outbox
//! ids increasing in commit order (an outbox reader on another node must never skip a row that commits later
//! with a smaller id). The simplest correct way, taken here: **every write transaction first takes one
//! cluster-wide advisory lock** (`pg_advisory_xact_lock`, one key per schema), held until it commits or
//! rolls back. Write batches therefore commit one at a time across the cluster, and every number is taken
//! inside the lock: a channel's sequence from `channels.last_seq` incremented in the transaction (rolled back
//! with it: no gap), message ids from an identity column, outbox ids from a one-row counter incremented in
//! the transaction (no gap, never reused, the head survives pruning). With one writer transaction in flight,
//! ids are handed out in commit order, and a commit is visible before the next transaction can take the
//! lock, so a reader that sees an id sees every smaller one.
//!
//! The cost: writes do not run in parallel across nodes. Throughput is one batch's round trips at a time
//! (group commit amortizes the commit's fsync and the lock over up to `max_batch` commands per node; a run
//! of consecutive sends in a batch takes a fixed number of round trips whatever its length, see
//! `writer/bulk.rs`), and
//! a node whose batch is slow (a slow disk, a long delete) holds everyone's writes for that long; the
//! `statement_timeout` bounds how long a batch waits for the lock (then it fails `Unavailable`). Reads are
//! not affected: they run on the pool, in PostgreSQL's default READ COMMITTED, never waiting for the lock.
//! The writer's transactions are READ COMMITTED too, and must be: each statement sees what committed before
//! it, so after taking the lock a batch sees every batch committed before it, on any node (a REPEATABLE READ
//! snapshot would be taken before the lock was had).
//!
//! Other invariants, as `store-sqlite`:
//! - a write is answered only after its transaction committed (with the server's `synchronous_commit`, which
//!   this crate never turns off), and its events were handed to the bus, in commit order, before the answer;
//! - a batch that fails as a whole (the connection lost, the commit refused) answers every command
//!   `Unavailable` and publishes nothing; a serialization failure or a deadlock applies the batch again (at
//!   most three times);
//! - a caller that abandons its call loses nothing: a write is owned by the writer task once queued, a read
//!   runs on a task of its own that returns its connection to the pool when its statement is done.
//!
//! # Layout
//! `writer.rs` runs the batches; `writer/ops.rs` applies one command, with the writes of
//! `writer/{accounts,channels,messages}.rs`; `writer/bulk.rs` applies a run of sends together (bulk
//! statements, with the answers, rows and events of applying them one by one); `facts.rs` tests a write's
//! preconditions; `queries.rs` and `rows.rs` read; `schema.rs` holds the migrations ([`migrate`]).
//!
//! # Metrics
//! As `store-sqlite`: `confab_store_batch_commands` (commands per batch), `confab_store_commit_seconds` (a
//! batch's transaction, lock to commit). Its own: `confab_store_lock_wait_seconds` (waiting for the
//! cluster-wide write lock), `confab_store_batch_retries_total` (batches applied again after a serialization
//! failure or deadlock), `confab_store_bulk_fallbacks_total` (runs of sends whose bulk statements failed,
//! applied again one by one).

mod db;
mod error;
mod facts;
mod files;
mod queries;
mod rows;
mod schema;
mod writer;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use confab_domain::bot::{Bot, BotSettings, ReplyState, UsageRecord};
use confab_domain::flag::{FlagQuery, FlagState, FlaggedMessage};
use confab_domain::model::{
    Appended, Channel, ChannelPatch, FileObject, FileQuota, HistoryQuery, Member, MemberChannel, Message,
    MessageFilter, MessagePatch, NewChannel, NewMessage, NewUser, User, UserPatch,
};
use confab_domain::outbox::{ChangeRecorder, DeadLetter, OutboxEntry};
use confab_domain::ports::{DynBus, SessionRecord, Store};
use confab_domain::{
    ChannelId, ChannelSeq, DomainError, DomainResult, Event, FileId, MessageId, Millis, Precondition, UserId,
};
use deadpool_postgres::{Client, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;

pub use error::PostgresError;
use error::{Res, describe};
use writer::{Op, Outcome, WriteCmd, Writer};

/// Where the database is and how the store uses it.
#[derive(Clone)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database` (or libpq's `key=value` form). Its `options` may set
    /// the `search_path` (`?options=-c%20search_path%3Dconfab`): the first schema of it holds the tables.
    pub url: String,
    /// Connections for reads (the writer has one more of its own).
    pub pool_size: usize,
    /// Longest a statement may run (and a write batch wait for the cluster-wide write lock); replaces a
    /// `statement_timeout` of the URL's options. Migrations wait this long for their lock, then run unbounded.
    pub statement_timeout: Duration,
    /// Most commands committed in one transaction.
    pub max_batch: usize,
    /// Commands waiting for the writer before senders are made to wait (backpressure).
    pub queue: usize,
    /// This node's name in the cluster: its generating replies are its own (swept at its restart, or by
    /// another node once it stops sending heartbeats). Unique per running node.
    pub node_id: String,
}

fn rand_node_suffix() -> u64 {
    rand::random()
}

impl PostgresConfig {
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            pool_size: 8,
            statement_timeout: Duration::from_secs(30),
            max_batch: 512,
            queue: 8192,
            node_id: format!("node-{:016x}", rand_node_suffix()),
        }
    }

    /// The connection settings: the URL's, with the statement timeout, an application name and a connect
    /// timeout unless the URL sets them.
    fn connection(&self) -> Result<tokio_postgres::Config, PostgresError> {
        let mut pg = tokio_postgres::Config::from_str(&self.url).map_err(|e| PostgresError::Url(describe(&e)))?;
        let options = pg.get_options().unwrap_or_default().to_string();
        let timeout_ms = self.statement_timeout.as_millis().max(1);
        pg.options(format!("{options} -c statement_timeout={timeout_ms}").trim_start());
        if pg.get_application_name().is_none() {
            pg.application_name("confab");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        Ok(pg)
    }

    /// `host:port` of each server the URL names (never its user or password), for messages.
    pub fn target(&self) -> String {
        match tokio_postgres::Config::from_str(&self.url) {
            Ok(pg) => target_of(&pg),
            Err(_) => "an unparsable URL".into(),
        }
    }
}

/// The URL is left out: it may hold a password.
impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("target", &self.target())
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("max_batch", &self.max_batch)
            .field("queue", &self.queue)
            .finish()
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn target_of(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let ports = pg.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| match h {
            Host::Tcp(name) => format!("{name}:{}", port(i)),
            #[cfg(unix)]
            Host::Unix(path) => format!("{}:{}", path.display(), port(i)),
        })
        .collect();
    if hosts.is_empty() {
        format!("localhost:{}", port(0))
    } else {
        hosts.join(",")
    }
}

/// One connection, for migrations and checks (outside the pools).
async fn connect_once(pg: &tokio_postgres::Config) -> Result<tokio_postgres::Client, PostgresError> {
    let (client, connection) = pg.connect(NoTls).await.map_err(|e| PostgresError::Connect {
        target: target_of(pg),
        reason: describe(&e),
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %describe(&e), "migration connection closed");
        }
    });
    Ok(client)
}

/// Applies the schema migrations not applied yet (for a `confab migrate` command, or before the first
/// start); returns how many it applied. Safe to run from several nodes at once: they take turns under an
/// advisory lock, and each migration is applied once. [`PostgresStore::connect`] runs it too.
pub async fn migrate(config: &PostgresConfig) -> Result<usize, PostgresError> {
    let pg = config.connection()?;
    let mut client = connect_once(&pg).await?;
    let schema = check_schema(&client, &pg).await?;
    schema::migrate_client(&mut client, &schema).await
}

/// The schema the tables live in: `search_path`'s first existing one.
async fn check_schema(client: &tokio_postgres::Client, pg: &tokio_postgres::Config) -> Result<String, PostgresError> {
    db::current_schema(client)
        .await
        .map_err(|e| PostgresError::Connect {
            target: target_of(pg),
            reason: describe(&e),
        })?
        .ok_or_else(|| PostgresError::NoSchema { target: target_of(pg) })
}

fn pool(pg: &tokio_postgres::Config, size: usize, wait: Duration) -> Result<Pool, PostgresError> {
    let manager = Manager::from_config(
        pg.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(pg.get_connect_timeout().copied().unwrap_or(CONNECT_TIMEOUT)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| PostgresError::Pool(e.to_string()))
}

/// The store. Each handle has its own writer task and pools; several handles (nodes) may share a schema.
pub struct PostgresStore {
    writer: mpsc::Sender<WriteCmd>,
    recorder: writer::RecorderSlot,
    readers: Pool,
}

impl PostgresStore {
    /// Connects, applies the migrations not applied yet, and starts the writer task. Must be called within a
    /// tokio runtime (the writer and the connections run on it). Fails with a message naming the server
    /// (never the password) when it cannot be reached.
    pub async fn connect(config: PostgresConfig, bus: DynBus) -> Result<PostgresStore, PostgresError> {
        let pg = config.connection()?;
        let mut client = connect_once(&pg).await?;
        let schema = check_schema(&client, &pg).await?;
        schema::migrate_client(&mut client, &schema).await?;
        drop(client);
        let readers = pool(&pg, config.pool_size, config.statement_timeout)?;
        let writer_pool = pool(&pg, 1, config.statement_timeout)?;
        // Both pools work before the store is handed out (a refused login shows here, not at the first write).
        for p in [&readers, &writer_pool] {
            drop(p.get().await.map_err(|e| PostgresError::Connect {
                target: target_of(&pg),
                reason: describe(&e),
            })?);
        }
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let recorder = writer::RecorderSlot::default();
        let writer = Writer {
            pool: writer_pool,
            rx,
            bus,
            max_batch: config.max_batch.max(1),
            recorder: recorder.clone(),
            lock_key: db::lock_key("writes", &schema),
            node_id: config.node_id.clone(),
            bulk_appends: true,
        };
        tokio::spawn(writer.run());
        Ok(PostgresStore {
            writer: tx,
            recorder,
            readers,
        })
    }

    async fn write(&self, op: Op) -> DomainResult<Outcome> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(WriteCmd { op, reply })
            .await
            .map_err(|_| DomainError::Unavailable("store writer stopped".into()))?;
        rx.await
            .map_err(|_| DomainError::Unavailable("store writer stopped".into()))?
    }

    /// Runs `f` on a pooled connection, on a task of its own: a caller dropped mid-read (a client that went
    /// away) leaves the statement to finish there, and the connection goes back to the pool idle.
    async fn read<T, F>(&self, f: F) -> DomainResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c Client) -> BoxFuture<'c, Res<T>> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::spawn(async move {
            let client = pool
                .get()
                .await
                .map_err(|e| DomainError::Unavailable(format!("storage unreachable: {}", describe(&e))))?;
            f(&client).await.map_err(error::Fail::into_domain)
        })
        .await
        .map_err(|e| DomainError::Internal(format!("reader task failed: {e}")))?
    }

    #[cfg(test)]
    pub(crate) fn read_pool(&self) -> &Pool {
        &self.readers
    }
}

fn unexpected() -> DomainError {
    DomainError::Internal("store writer returned an unexpected outcome".into())
}

#[async_trait]
impl Store for PostgresStore {
    /// A real read on a pooled connection and a real (empty) write committed by the writer.
    async fn ready(&self) -> bool {
        !self.writer.is_closed()
            && self
                .read(|c| Box::pin(async move { db::exists(c, "SELECT 1", &[]).await }))
                .await
                .is_ok()
            && self.write(Op::Ping).await.is_ok()
    }

    async fn create_user(&self, user: NewUser) -> DomainResult<User> {
        match self.write(Op::CreateUser(user)).await? {
            Outcome::User(u) => Ok(u),
            _ => Err(unexpected()),
        }
    }

    async fn get_user(&self, id: &UserId) -> DomainResult<Option<User>> {
        let id = id.clone();
        self.read(move |c| Box::pin(async move { queries::user(c, &id).await }))
            .await
    }

    async fn list_users(&self, after: Option<&UserId>, limit: u32) -> DomainResult<Vec<User>> {
        let after = after.cloned();
        self.read(move |c| Box::pin(async move { queries::users_after(c, after.as_ref(), limit).await }))
            .await
    }

    async fn update_user(&self, id: &UserId, patch: UserPatch) -> DomainResult<User> {
        match self.write(Op::UpdateUser(id.clone(), patch)).await? {
            Outcome::User(u) => Ok(u),
            _ => Err(unexpected()),
        }
    }

    async fn delete_user(&self, id: &UserId) -> DomainResult<()> {
        self.write(Op::DeleteUser(id.clone())).await.map(|_| ())
    }

    async fn set_last_seen(&self, id: &UserId, at: Millis) -> DomainResult<()> {
        self.write(Op::SetLastSeen(id.clone(), at)).await.map(|_| ())
    }

    async fn create_session(&self, session: SessionRecord) -> DomainResult<()> {
        self.write(Op::CreateSession(session)).await.map(|_| ())
    }

    async fn find_session(&self, token_hash: &[u8; 32]) -> DomainResult<Option<SessionRecord>> {
        let h = *token_hash;
        self.read(move |c| Box::pin(async move { queries::session(c, &h).await }))
            .await
    }

    async fn revoke_sessions(&self, user: &UserId) -> DomainResult<u64> {
        match self.write(Op::RevokeSessions(user.clone())).await? {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn create_channel(&self, channel: NewChannel) -> DomainResult<(Channel, bool)> {
        match self.write(Op::CreateChannel(channel)).await? {
            Outcome::Channel(c, created) => Ok((c, created)),
            _ => Err(unexpected()),
        }
    }

    async fn get_channel(&self, id: &ChannelId) -> DomainResult<Option<Channel>> {
        let id = id.clone();
        self.read(move |c| Box::pin(async move { queries::channel(c, &id).await }))
            .await
    }

    async fn update_channel(&self, id: &ChannelId, patch: ChannelPatch) -> DomainResult<Channel> {
        match self.write(Op::UpdateChannel(id.clone(), patch)).await? {
            Outcome::Channel(c, _) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn delete_channel(&self, id: &ChannelId) -> DomainResult<()> {
        self.write(Op::DeleteChannel(id.clone())).await.map(|_| ())
    }

    async fn list_channels(&self, after: Option<&ChannelId>, limit: u32) -> DomainResult<Vec<Channel>> {
        let after = after.cloned();
        self.read(move |c| Box::pin(async move { queries::channels_after(c, after.as_ref(), limit).await }))
            .await
    }

    async fn list_member_channels(
        &self,
        user: &UserId,
        after: Option<&ChannelId>,
        limit: u32,
    ) -> DomainResult<Vec<MemberChannel>> {
        let (user, after) = (user.clone(), after.cloned());
        self.read(move |c| Box::pin(async move { queries::member_channels(c, &user, after.as_ref(), limit).await }))
            .await
    }

    async fn add_members(&self, channel: &ChannelId, users: Vec<UserId>, by: Option<UserId>) -> DomainResult<Channel> {
        match self.write(Op::AddMembers(channel.clone(), users, by)).await? {
            Outcome::Channel(c, _) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn remove_member(&self, channel: &ChannelId, user: &UserId, by: Option<UserId>) -> DomainResult<Channel> {
        match self.write(Op::RemoveMember(channel.clone(), user.clone(), by)).await? {
            Outcome::Channel(c, _) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn get_member(&self, channel: &ChannelId, user: &UserId) -> DomainResult<Option<Member>> {
        let (channel, user) = (channel.clone(), user.clone());
        self.read(move |c| Box::pin(async move { queries::member(c, &channel, &user).await }))
            .await
    }

    async fn list_members(&self, channel: &ChannelId, after: Option<&UserId>, limit: u32) -> DomainResult<Vec<Member>> {
        let (channel, after) = (channel.clone(), after.cloned());
        self.read(move |c| Box::pin(async move { queries::members_after(c, &channel, after.as_ref(), limit).await }))
            .await
    }

    async fn member_ids(&self, channel: &ChannelId) -> DomainResult<Vec<UserId>> {
        let channel = channel.clone();
        self.read(move |c| Box::pin(async move { queries::member_ids(c, &channel).await }))
            .await
    }

    async fn contacts(&self, user: &UserId, max_members: u32) -> DomainResult<Vec<UserId>> {
        let user = user.clone();
        self.read(move |c| Box::pin(async move { queries::contacts(c, &user, max_members).await }))
            .await
    }

    async fn mark_read(&self, channel: &ChannelId, user: &UserId, seq: ChannelSeq) -> DomainResult<ChannelSeq> {
        match self.write(Op::MarkRead(channel.clone(), user.clone(), seq)).await? {
            Outcome::Seq(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }

    async fn append_message(&self, message: NewMessage, preconditions: Vec<Precondition>) -> DomainResult<Appended> {
        match self.write(Op::Append(Box::new(message), preconditions)).await? {
            Outcome::Appended(a) => Ok(*a),
            _ => Err(unexpected()),
        }
    }

    async fn get_message(&self, id: MessageId) -> DomainResult<Option<Message>> {
        self.read(move |c| Box::pin(async move { queries::message(c, id).await }))
            .await
    }

    async fn history(&self, query: HistoryQuery) -> DomainResult<Vec<Message>> {
        self.read(move |c| Box::pin(async move { queries::history(c, &query).await }))
            .await
    }

    async fn history_matching(&self, query: HistoryQuery, filter: MessageFilter) -> DomainResult<Vec<Message>> {
        self.read(move |c| Box::pin(async move { queries::history_matching(c, &query, &filter).await }))
            .await
    }

    async fn seq_before_time(&self, channel: &ChannelId, at: Millis) -> DomainResult<ChannelSeq> {
        let channel = channel.clone();
        self.read(move |c| Box::pin(async move { queries::seq_before_time(c, &channel, at).await }))
            .await
    }

    async fn thread(&self, parent: MessageId, after: Option<MessageId>, limit: u32) -> DomainResult<Vec<Message>> {
        self.read(move |c| Box::pin(async move { queries::thread(c, parent, after, limit).await }))
            .await
    }

    async fn edit_message(
        &self,
        id: MessageId,
        patch: MessagePatch,
        preconditions: Vec<Precondition>,
    ) -> DomainResult<Message> {
        match self.write(Op::Edit(id, patch, preconditions)).await? {
            Outcome::Message(m) => Ok(*m),
            _ => Err(unexpected()),
        }
    }

    async fn delete_message(&self, id: MessageId) -> DomainResult<Message> {
        match self.write(Op::Delete(id)).await? {
            Outcome::Message(m) => Ok(*m),
            _ => Err(unexpected()),
        }
    }

    async fn put_file(&self, file: FileObject, quota: FileQuota) -> DomainResult<()> {
        self.write(Op::PutFile(file, quota)).await.map(|_| ())
    }

    async fn get_file(&self, id: &FileId) -> DomainResult<Option<FileObject>> {
        let id = id.clone();
        self.read(move |c| Box::pin(async move { queries::file(c, &id).await }))
            .await
    }

    async fn delete_unattached_files(&self, before: Millis, limit: u32) -> DomainResult<Vec<FileId>> {
        match self.write(Op::DeleteUnattachedFiles(before, limit)).await? {
            Outcome::FileIds(ids) => Ok(ids),
            _ => Err(unexpected()),
        }
    }

    async fn create_bot(&self, user: NewUser, settings: BotSettings) -> DomainResult<Bot> {
        match self.write(Op::CreateBot(user, settings)).await? {
            Outcome::Bot(b) => Ok(*b),
            _ => Err(unexpected()),
        }
    }

    async fn update_bot(&self, id: &UserId, settings: BotSettings) -> DomainResult<Bot> {
        match self.write(Op::UpdateBot(id.clone(), settings)).await? {
            Outcome::Bot(b) => Ok(*b),
            _ => Err(unexpected()),
        }
    }

    async fn get_bot(&self, id: &UserId) -> DomainResult<Option<Bot>> {
        let id = id.clone();
        self.read(move |c| Box::pin(async move { queries::bot(c, &id).await }))
            .await
    }

    async fn list_bots(&self) -> DomainResult<Vec<Bot>> {
        self.read(|c| Box::pin(async move { queries::bots(c).await })).await
    }

    async fn save_reply_text(&self, id: MessageId, text: String) -> DomainResult<()> {
        self.write(Op::SaveReplyText(id, text)).await.map(|_| ())
    }

    async fn finish_reply(
        &self,
        id: MessageId,
        text: String,
        state: ReplyState,
        reason: Option<String>,
    ) -> DomainResult<Message> {
        match self.write(Op::FinishReply(id, text, state, reason)).await? {
            Outcome::Message(m) => Ok(*m),
            _ => Err(unexpected()),
        }
    }

    /// Every reply of the database still `generating` becomes `interrupted`. Meant for a start after every
    /// node stopped: with several nodes, it must not be called by one node on the replies another live node
    /// is generating (the cluster will need an owner per reply for that; not done yet).
    async fn sweep_generating(&self) -> DomainResult<u64> {
        match self.write(Op::SweepGenerating).await? {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn heartbeat(&self, at: Millis) -> DomainResult<()> {
        self.write(Op::Heartbeat(at)).await.map(|_| ())
    }

    async fn sweep_silent_nodes(&self, silent_since: Millis) -> DomainResult<u64> {
        match self.write(Op::SweepSilentNodes(silent_since)).await? {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn record_usage(&self, usage: UsageRecord) -> DomainResult<()> {
        self.write(Op::RecordUsage(usage)).await.map(|_| ())
    }

    async fn usage(
        &self,
        from_day: &str,
        to_day: &str,
        bot: Option<&UserId>,
        user: Option<&UserId>,
    ) -> DomainResult<Vec<UsageRecord>> {
        let (from, to, bot, user) = (from_day.to_string(), to_day.to_string(), bot.cloned(), user.cloned());
        self.read(move |c| Box::pin(async move { queries::usage(c, &from, &to, bot.as_ref(), user.as_ref()).await }))
            .await
    }

    async fn put_provider(&self, name: &str, config: serde_json::Value) -> DomainResult<()> {
        self.write(Op::PutProvider(name.to_string(), config.to_string()))
            .await
            .map(|_| ())
    }

    async fn delete_provider(&self, name: &str) -> DomainResult<()> {
        self.write(Op::DeleteProvider(name.to_string())).await.map(|_| ())
    }

    async fn list_providers(&self) -> DomainResult<Vec<(String, serde_json::Value)>> {
        self.read(|c| Box::pin(async move { queries::providers(c).await }))
            .await
    }

    async fn put_setting(&self, namespace: &str, key: &str, value: serde_json::Value) -> DomainResult<()> {
        self.write(Op::PutSetting(
            namespace.to_string(),
            key.to_string(),
            value.to_string(),
        ))
        .await
        .map(|_| ())
    }

    async fn get_setting(&self, namespace: &str, key: &str) -> DomainResult<Option<serde_json::Value>> {
        let (namespace, key) = (namespace.to_string(), key.to_string());
        self.read(move |c| Box::pin(async move { queries::setting(c, &namespace, &key).await }))
            .await
    }

    async fn delete_setting(&self, namespace: &str, key: &str) -> DomainResult<bool> {
        match self
            .write(Op::DeleteSetting(namespace.to_string(), key.to_string()))
            .await?
        {
            Outcome::Count(n) => Ok(n > 0),
            _ => Err(unexpected()),
        }
    }

    async fn flag_message(&self, id: MessageId, rules: Vec<String>) -> DomainResult<()> {
        self.write(Op::Flag(id, rules)).await.map(|_| ())
    }

    async fn review_flag(&self, id: MessageId, state: FlagState, by: Option<UserId>) -> DomainResult<()> {
        self.write(Op::ReviewFlag(id, state, by)).await.map(|_| ())
    }

    async fn get_flag(&self, id: MessageId) -> DomainResult<Option<FlaggedMessage>> {
        self.read(move |c| Box::pin(async move { queries::flag(c, id).await }))
            .await
    }

    async fn list_flags(&self, query: FlagQuery) -> DomainResult<Vec<FlaggedMessage>> {
        self.read(move |c| Box::pin(async move { queries::flags(c, &query).await }))
            .await
    }

    async fn list_settings(&self, namespace: &str) -> DomainResult<Vec<(String, serde_json::Value)>> {
        let namespace = namespace.to_string();
        self.read(move |c| Box::pin(async move { queries::settings(c, &namespace).await }))
            .await
    }

    fn set_change_recorder(&self, recorder: Arc<dyn ChangeRecorder>) {
        *self.recorder.write().unwrap_or_else(|e| e.into_inner()) = Some(recorder);
    }

    async fn announce(&self, events: Vec<Event>) -> DomainResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.write(Op::Announce(events)).await.map(|_| ())
    }

    async fn outbox_after(&self, after: u64, limit: u32) -> DomainResult<Vec<OutboxEntry>> {
        self.read(move |c| Box::pin(async move { queries::outbox_after(c, after, limit).await }))
            .await
    }

    async fn outbox_head(&self) -> DomainResult<u64> {
        self.read(|c| Box::pin(async move { queries::outbox_head(c).await }))
            .await
    }

    async fn prune_outbox(&self, through: u64) -> DomainResult<u64> {
        match self.write(Op::PruneOutbox(through)).await? {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn put_dead_letter(&self, letter: DeadLetter) -> DomainResult<()> {
        self.write(Op::PutDeadLetter(letter)).await.map(|_| ())
    }

    async fn get_dead_letter(&self, endpoint: &str, event_id: u64) -> DomainResult<Option<DeadLetter>> {
        let endpoint = endpoint.to_string();
        self.read(move |c| Box::pin(async move { queries::dead_letter(c, &endpoint, event_id).await }))
            .await
    }

    async fn list_dead_letters(&self, endpoint: &str, after: u64, limit: u32) -> DomainResult<Vec<DeadLetter>> {
        let endpoint = endpoint.to_string();
        self.read(move |c| Box::pin(async move { queries::dead_letters(c, &endpoint, after, limit).await }))
            .await
    }

    async fn acquire_lease(&self, name: &str, holder: &str, now: Millis, until: Millis) -> DomainResult<bool> {
        match self
            .write(Op::AcquireLease(name.to_string(), holder.to_string(), now, until))
            .await?
        {
            Outcome::Count(n) => Ok(n > 0),
            _ => Err(unexpected()),
        }
    }

    async fn prune_leases(&self, before: Millis) -> DomainResult<u64> {
        match self.write(Op::PruneLeases(before)).await? {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn release_lease(&self, name: &str, holder: &str) -> DomainResult<()> {
        self.write(Op::ReleaseLease(name.to_string(), holder.to_string()))
            .await
            .map(|_| ())
    }

    async fn delete_dead_letters(&self, endpoint: &str, event_id: Option<u64>) -> DomainResult<u64> {
        match self
            .write(Op::DeleteDeadLetters(endpoint.to_string(), event_id))
            .await?
        {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }
}

#[cfg(test)]
mod bulk_tests;
#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod conformance;
#[cfg(test)]
mod semantics_tests;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
