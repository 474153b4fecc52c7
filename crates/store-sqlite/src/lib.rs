//! The embedded store: SQLite in WAL mode, one writer thread with group commit, a small pool of readers.
//!
//! Invariants kept here:
//! - a write is answered only after its transaction committed (with `synchronous = FULL`, after the fsync);
//! - per-channel sequences come from `channels.last_seq` incremented in the same transaction as the insert,
//!   so a rolled-back insert leaves no gap;
//! - events reach the bus in commit order, before the write is answered.

pub mod backup;
mod facts;
mod files;
mod queries;
mod rows;
mod schema;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use confab_domain::bot::{Bot, BotSettings, ReplyState, UsageRecord};
use confab_domain::flag::{FlagQuery, FlagState, FlaggedMessage};
use confab_domain::model::{
    Appended, Channel, ChannelPatch, FileObject, FileQuota, HistoryQuery, Member, MemberChannel, Message,
    MessageFilter, MessagePatch, NewChannel, NewMessage, NewUser, User, UserPatch,
};
use confab_domain::outbox::{ChangeRecorder, DeadLetter, OutboxEntry};
use confab_domain::ports::{DynBus, SessionRecord, SilentNodes, Store};
use confab_domain::{
    ChannelId, ChannelSeq, DomainError, DomainResult, Event, FileId, MessageId, Millis, Precondition, UserId,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{Semaphore, mpsc, oneshot};

use writer::{Op, Outcome, WriteCmd, Writer, db_err};

pub use schema::{Migration, apply_migrations, latest_version, migrations, pending_migrations, schema_version};

/// How hard a commit waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: an acknowledged write survives power loss.
    Full,
    /// fsync at checkpoints: survives a process crash (`kill -9`), may lose the last commits on power loss.
    Normal,
}

#[derive(Clone, Debug)]
pub struct SqliteConfig {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    pub readers: usize,
    /// Most commands committed in one transaction.
    pub max_batch: usize,
    /// Commands waiting for the writer before senders are made to wait (backpressure).
    pub queue: usize,
    /// How long `open` waits for the database's lock while another handle lets go of it (a store being
    /// dropped finishes its last batch first).
    pub lock_wait: std::time::Duration,
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            synchronous: Synchronous::Full,
            readers: 4,
            max_batch: 512,
            queue: 8192,
            lock_wait: std::time::Duration::from_secs(5),
        }
    }
}

pub struct SqliteStore {
    writer: mpsc::Sender<WriteCmd>,
    /// `confab_store_writer_queue` (see [`writer::Queued`]).
    queued: metrics::Gauge,
    recorder: writer::RecorderSlot,
    readers: Arc<ReadPool>,
    /// Dropping it stops the checkpointer thread.
    _checkpointer: std::sync::mpsc::Sender<()>,
    /// Who this process holds a WebSocket session of: presence is not data (it ends with the process),
    /// and no other process shares the database.
    online: Mutex<std::collections::HashSet<UserId>>,
}

/// Takes the lock file beside the database (`<path>.lock`), so a second process (or a second store in this
/// one) cannot write the same database: each would number messages and sweep replies as if alone.
fn lock_database(path: &std::path::Path, wait: std::time::Duration) -> DomainResult<std::fs::File> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            DomainError::Unavailable(format!(
                "cannot open {}: {e}",
                std::path::Path::new(&lock_path).display()
            ))
        })?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DomainError::Unavailable(format!(
                    "the database {} is in use by another process (another confab with the same data dir?)",
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(DomainError::Unavailable(format!("cannot lock {}: {e}", path.display())));
            }
        }
    }
}

/// How often the checkpointer copies new WAL frames into the database file.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// WAL length (pages) at which the writer itself checkpoints after a commit. By then the checkpointer has
/// copied almost every frame, so the writer's checkpoint is short; and only the writer can complete one
/// while writes keep coming, which lets the next transaction start the WAL over instead of growing it.
const WRITER_CHECKPOINT_PAGES: i64 = 4096;

/// Passive checkpoints on a thread of their own: copying pages into the database file and its fsync happen
/// here, beside the writer's commits instead of inside them.
fn run_checkpointer(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    // Ends when the store is dropped (the sender goes away).
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_INTERVAL) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "checkpoint failed");
        }
    }
}

struct ReadPool {
    conns: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

fn open_conn(cfg: &SqliteConfig, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(&cfg.path, flags)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match cfg.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database and starts the writer thread.
    /// Must be called from within a tokio runtime: the writer publishes events through it.
    pub fn open(cfg: SqliteConfig, bus: DynBus) -> DomainResult<Self> {
        let lock = lock_database(&cfg.path, cfg.lock_wait)?;
        let rw = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = open_conn(&cfg, rw).map_err(db_err)?;
        schema::migrate(&mut conn)?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
            .map_err(db_err)?;
        let checkpoint_conn = open_conn(&cfg, rw).map_err(db_err)?;
        let (stop_checkpoints, stop_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("confab-store-checkpointer".into())
            .spawn(move || run_checkpointer(checkpoint_conn, stop_rx))
            .map_err(|e| DomainError::Unavailable(format!("cannot start the checkpointer: {e}")))?;
        let ro = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let readers = (0..cfg.readers.max(1))
            .map(|_| open_conn(&cfg, ro))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err)?;
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let recorder = writer::RecorderSlot::default();
        let writer = Writer {
            _lock: lock,
            recorder: recorder.clone(),
            conn,
            rx,
            bus,
            runtime: tokio::runtime::Handle::current(),
            max_batch: cfg.max_batch.max(1),
        };
        std::thread::Builder::new()
            .name("confab-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| DomainError::Unavailable(format!("cannot start the store writer: {e}")))?;
        Ok(SqliteStore {
            writer: tx,
            queued: metrics::gauge!("confab_store_writer_queue"),
            recorder,
            readers: Arc::new(ReadPool {
                permits: Arc::new(Semaphore::new(readers.len())),
                conns: Mutex::new(readers),
            }),
            _checkpointer: stop_checkpoints,
            online: Default::default(),
        })
    }

    async fn write(&self, op: Op) -> DomainResult<Outcome> {
        let _queued = writer::Queued::enter(&self.queued);
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(WriteCmd { op, reply })
            .await
            .map_err(|_| DomainError::Unavailable("store writer stopped".into()))?;
        rx.await
            .map_err(|_| DomainError::Unavailable("store writer stopped".into()))?
    }

    async fn read<T, F>(&self, f: F) -> DomainResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        // The permit and the connection move into the blocking task, which returns the connection to the pool
        // itself: a caller dropped mid-read (a client that went away) cannot lose it.
        let lease = ReadPool::lease(&self.readers).await?;
        let res = tokio::task::spawn_blocking(move || f(lease.conn()))
            .await
            .map_err(|e| DomainError::Internal(format!("reader task failed: {e}")))?;
        res.map_err(db_err)
    }
}

impl ReadPool {
    async fn lease(pool: &Arc<ReadPool>) -> DomainResult<ReadLease> {
        let permit = pool
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DomainError::Unavailable("store closed".into()))?;
        let conn = pool
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .ok_or_else(|| DomainError::Internal("reader pool out of step with its permits".into()))?;
        Ok(ReadLease {
            pool: pool.clone(),
            conn: Some(conn),
            _permit: permit,
        })
    }
}

/// A read connection taken from the pool with its permit. Dropping it (at the end of the read, on a panic,
/// or when the task that holds it goes away) puts the connection back before the permit is released.
struct ReadLease {
    pool: Arc<ReadPool>,
    conn: Option<Connection>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl ReadLease {
    fn conn(&self) -> &Connection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.conns.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
        }
    }
}

fn unexpected() -> DomainError {
    DomainError::Internal("store writer returned an unexpected outcome".into())
}

#[async_trait]
impl Store for SqliteStore {
    /// A real read on a pooled connection and a real (empty) write committed by the writer thread.
    async fn ready(&self) -> bool {
        !self.writer.is_closed()
            && self.read(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await.is_ok()
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
        self.read(move |c| queries::user(c, &id)).await
    }

    async fn list_users(&self, after: Option<&UserId>, limit: u32) -> DomainResult<Vec<User>> {
        let after = after.cloned();
        self.read(move |c| queries::users_after(c, after.as_ref(), limit)).await
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
        self.read(move |c| queries::session(c, &h)).await
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
        self.read(move |c| queries::channel(c, &id)).await
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
        self.read(move |c| queries::channels_after(c, after.as_ref(), limit))
            .await
    }

    async fn list_member_channels(
        &self,
        user: &UserId,
        after: Option<&ChannelId>,
        limit: u32,
    ) -> DomainResult<Vec<MemberChannel>> {
        let (user, after) = (user.clone(), after.cloned());
        self.read(move |c| queries::member_channels(c, &user, after.as_ref(), limit))
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
        self.read(move |c| queries::member(c, &channel, &user)).await
    }

    async fn list_members(&self, channel: &ChannelId, after: Option<&UserId>, limit: u32) -> DomainResult<Vec<Member>> {
        let (channel, after) = (channel.clone(), after.cloned());
        self.read(move |c| queries::members_after(c, &channel, after.as_ref(), limit))
            .await
    }

    async fn member_ids(&self, channel: &ChannelId) -> DomainResult<Vec<UserId>> {
        let channel = channel.clone();
        self.read(move |c| queries::member_ids(c, &channel)).await
    }

    async fn member_channel_ids(&self, user: &UserId) -> DomainResult<Vec<ChannelId>> {
        let user = user.clone();
        self.read(move |c| queries::user_channel_ids(c, &user)).await
    }

    async fn contacts(&self, user: &UserId, max_members: u32) -> DomainResult<Vec<UserId>> {
        let user = user.clone();
        self.read(move |c| queries::contacts(c, &user, max_members)).await
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
        self.read(move |c| queries::message(c, id)).await
    }

    async fn history(&self, query: HistoryQuery) -> DomainResult<Vec<Message>> {
        self.read(move |c| queries::history(c, &query)).await
    }

    async fn history_matching(&self, query: HistoryQuery, filter: MessageFilter) -> DomainResult<Vec<Message>> {
        self.read(move |c| queries::history_matching(c, &query, &filter)).await
    }

    async fn seq_before_time(&self, channel: &ChannelId, at: Millis) -> DomainResult<ChannelSeq> {
        let channel = channel.clone();
        self.read(move |c| queries::seq_before_time(c, &channel, at)).await
    }

    async fn thread(&self, parent: MessageId, after: Option<MessageId>, limit: u32) -> DomainResult<Vec<Message>> {
        self.read(move |c| queries::thread(c, parent, after, limit)).await
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

    async fn delete_unattached_files(&self, before: Millis, limit: u32) -> DomainResult<Vec<FileId>> {
        match self.write(Op::DeleteUnattachedFiles(before, limit)).await? {
            Outcome::FileIds(ids) => Ok(ids),
            _ => Err(unexpected()),
        }
    }

    async fn get_file(&self, id: &FileId) -> DomainResult<Option<FileObject>> {
        let id = id.clone();
        self.read(move |c| queries::file(c, &id)).await
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
        self.read(move |c| queries::bot(c, &id)).await
    }

    async fn list_bots(&self) -> DomainResult<Vec<Bot>> {
        self.read(queries::bots).await
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

    async fn sweep_generating(&self) -> DomainResult<u64> {
        match self.write(Op::SweepGenerating).await? {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    /// One process holds the database (its lock): no other node exists to be told this one is alive.
    async fn heartbeat(&self, _at: Millis) -> DomainResult<()> {
        Ok(())
    }

    /// No other node can have written here (one process holds the database), so none has replies to sweep.
    async fn sweep_silent_nodes(&self, _silent_since: Millis) -> DomainResult<SilentNodes> {
        Ok(SilentNodes::default())
    }

    async fn set_presence(&self, user: &UserId, here: bool) -> DomainResult<bool> {
        let mut online = self.online.lock().unwrap_or_else(|e| e.into_inner());
        Ok(match here {
            true => online.insert(user.clone()),
            false => online.remove(user),
        })
    }

    async fn online_among(&self, users: &[UserId]) -> DomainResult<Vec<UserId>> {
        let online = self.online.lock().unwrap_or_else(|e| e.into_inner());
        Ok(users.iter().filter(|u| online.contains(*u)).cloned().collect())
    }

    /// Presence is held in memory only: a new process starts with none.
    async fn forget_own_presence(&self) -> DomainResult<Vec<UserId>> {
        let mut online = self.online.lock().unwrap_or_else(|e| e.into_inner());
        Ok(online.drain().collect())
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
        self.read(move |c| queries::usage(c, &from, &to, bot.as_ref(), user.as_ref()))
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
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT name, config FROM providers ORDER BY name")?;
            stmt.query_map([], |r| {
                let name: String = r.get(0)?;
                let cfg: String = r.get(1)?;
                let v = serde_json::from_str(&cfg).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
                })?;
                Ok((name, v))
            })?
            .collect()
        })
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
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT value FROM settings WHERE namespace = ?1 AND key = ?2")?;
            let mut rows = stmt.query(params![namespace, key])?;
            let Some(row) = rows.next()? else {
                return Ok(None);
            };
            let text: String = row.get(0)?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
        })
        .await
    }

    async fn flag_message(&self, id: MessageId, rules: Vec<String>) -> DomainResult<()> {
        self.write(Op::Flag(id, rules)).await.map(|_| ())
    }

    async fn review_flag(&self, id: MessageId, state: FlagState, by: Option<UserId>) -> DomainResult<()> {
        self.write(Op::ReviewFlag(id, state, by)).await.map(|_| ())
    }

    async fn get_flag(&self, id: MessageId) -> DomainResult<Option<FlaggedMessage>> {
        self.read(move |c| queries::flag(c, id)).await
    }

    async fn list_flags(&self, query: FlagQuery) -> DomainResult<Vec<FlaggedMessage>> {
        self.read(move |c| queries::flags(c, &query)).await
    }

    async fn list_settings(&self, namespace: &str) -> DomainResult<Vec<(String, serde_json::Value)>> {
        let namespace = namespace.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT key, value FROM settings WHERE namespace = ?1 ORDER BY key")?;
            let rows = stmt.query_map([namespace], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            rows.map(|r| {
                let (k, v) = r?;
                let v = serde_json::from_str(&v).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
                })?;
                Ok((k, v))
            })
            .collect()
        })
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
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {} FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
                rows::OUTBOX_COLUMNS
            ))?;
            stmt.query_map(params![after as i64, limit], rows::outbox_entry)?
                .collect()
        })
        .await
    }

    async fn outbox_head(&self) -> DomainResult<u64> {
        // The AUTOINCREMENT counter, not MAX(id): it survives pruning.
        self.read(|c| {
            c.query_row("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|v| v.unwrap_or(0) as u64)
        })
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
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {} FROM webhook_dead_letters WHERE endpoint_id = ?1 AND event_id = ?2",
                rows::DEAD_LETTER_COLUMNS
            ))?
            .query_row(params![endpoint, event_id as i64], rows::dead_letter)
            .optional()
        })
        .await
    }

    async fn list_dead_letters(&self, endpoint: &str, after: u64, limit: u32) -> DomainResult<Vec<DeadLetter>> {
        let endpoint = endpoint.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {} FROM webhook_dead_letters WHERE endpoint_id = ?1 AND event_id > ?2 ORDER BY event_id LIMIT ?3",
                rows::DEAD_LETTER_COLUMNS
            ))?;
            stmt.query_map(params![endpoint, after as i64, limit], rows::dead_letter)?
                .collect()
        })
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

    async fn delete_setting(&self, namespace: &str, key: &str) -> DomainResult<bool> {
        match self
            .write(Op::DeleteSetting(namespace.to_string(), key.to_string()))
            .await?
        {
            Outcome::Count(n) => Ok(n > 0),
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod fault_tests;

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[tokio::test]
    async fn one_store_at_a_time_writes_a_database() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SqliteConfig::new(dir.path().join("store.db"));
        cfg.lock_wait = std::time::Duration::from_millis(100);
        let bus: DynBus = Arc::new(confab_bus::LocalBus::default());
        let first = SqliteStore::open(cfg.clone(), bus.clone()).unwrap();
        let Err(e) = SqliteStore::open(cfg.clone(), bus.clone()) else {
            panic!("a second store opened a database in use");
        };
        assert!(e.to_string().contains("in use by another process"), "{e}");

        // Once the first lets go (its writer done), the database opens again.
        drop(first);
        cfg.lock_wait = std::time::Duration::from_secs(10);
        SqliteStore::open(cfg, bus).unwrap();
    }
}
