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
mod store;
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
use confab_domain::ports::{DynBus, SessionRecord, SilentNodes, Store};
use confab_domain::{
    ChannelId, ChannelSeq, DomainError, DomainResult, Event, FileId, MessageId, Millis, Precondition, UserId,
};
use deadpool_postgres::{Client, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;

pub use error::PostgresError;
use error::{Res, describe};
pub use schema::Migration;
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
    apply_migrations(config).await.map(|applied| applied.len())
}

/// [`migrate`], returning the migrations it applied (version, name), oldest first.
pub async fn apply_migrations(config: &PostgresConfig) -> Result<Vec<(u32, &'static str)>, PostgresError> {
    let pg = config.connection()?;
    let mut client = connect_once(&pg).await?;
    let schema = check_schema(&client, &pg).await?;
    schema::migrate_client(&mut client, &schema).await
}

/// Every migration this release knows, oldest first.
pub fn migrations() -> &'static [Migration] {
    schema::MIGRATIONS
}

/// The version of the newest migration this release knows.
pub fn latest_version() -> u32 {
    schema::latest_version()
}

/// The schema's version (the newest migration applied; 0 before the first), read in a read-only
/// transaction that creates nothing and takes no lock. It may be newer than [`latest_version`]: a newer
/// release migrated the schema, and this one runs against it (every migration is additive).
pub async fn schema_version(config: &PostgresConfig) -> Result<u32, PostgresError> {
    let pg = config.connection()?;
    let mut client = connect_once(&pg).await?;
    check_schema(&client, &pg).await?;
    let version = schema::current_version(&mut client).await?;
    Ok(u32::try_from(version).unwrap_or(0))
}

/// The migrations (version, name) [`migrate`] would apply, oldest first, read like [`schema_version`]
/// (every one when the schema has none yet; none when it is newer than this release's).
pub async fn pending_migrations(config: &PostgresConfig) -> Result<Vec<(u32, &'static str)>, PostgresError> {
    let pg = config.connection()?;
    let mut client = connect_once(&pg).await?;
    check_schema(&client, &pg).await?;
    Ok(schema::after(schema::current_version(&mut client).await?))
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
    /// `confab_store_writer_queue` (see [`writer::Queued`]).
    queued: metrics::Gauge,
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
            queued: metrics::gauge!("confab_store_writer_queue"),
            recorder,
            readers,
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

#[cfg(test)]
mod bulk_tests;
#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod conformance;
#[cfg(test)]
mod semantics_tests;
#[cfg(test)]
mod test_data;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod upgrade_tests;
