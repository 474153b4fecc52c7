//! `[storage]`, `[bus]` and `[cluster]`: where the data is and how several nodes meet (`docs/scale-out.md`).

use confab_store_sqlite::Synchronous;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `sqlite` (the default: one file in the data dir, one node) or `postgres` (`postgres_url`; what
    /// several nodes share).
    pub backend: StorageBackend,
    /// SQLite. `full`: every acknowledged write survives power loss. `normal`: survives a crash of the
    /// process.
    pub synchronous: Synchronous,
    /// SQLite: read connections.
    pub readers: usize,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// `/healthz` answers 503 once the store has failed every probe (a read and a write) for this long.
    pub unhealthy_after_secs: u64,
    /// PostgreSQL: `postgres://user:password@host:port/database` (or libpq's `key=value` form); its
    /// `options` may name the schema (`?options=-c%20search_path%3Dconfab`). Better given as
    /// `CONFAB_STORAGE__POSTGRES_URL` than written in a file, when it holds a password.
    pub postgres_url: String,
    /// PostgreSQL: read connections (the writer has one more).
    pub postgres_pool_size: usize,
    /// PostgreSQL: longest a statement may run.
    pub postgres_statement_timeout_secs: u64,
    /// How long a start waits for the database to answer, retrying, before it gives up (0: one attempt).
    pub start_timeout_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique among the nodes of one database (letters, digits, `-`, `_`; at most 64).
    /// Empty: generated on the first start and kept in the data dir (`node_id`).
    pub node_id: String,
    /// How often the node tells the database it is alive.
    pub heartbeat_secs: u64,
    /// A node silent for this long is taken for dead: another node ends its generating replies
    /// `interrupted`.
    pub node_silent_after_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: String::new(),
            heartbeat_secs: 5,
            node_silent_after_secs: 30,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `local` (the default: events stay in this process) or `nats` (several nodes exchange events through
    /// the NATS server at `nats_url`; use with `[storage] backend = "postgres"`).
    pub backend: BusBackend,
    /// `nats://host:port`, several separated by commas; may carry `user:password@` (better given as
    /// `CONFAB_BUS__NATS_URL`).
    pub nats_url: String,
    /// The first tokens of every subject: the nodes of one deployment share it.
    pub subject_prefix: String,
    /// The longest wait for NATS at start, retrying, before the start gives up.
    pub start_timeout_secs: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            backend: BusBackend::Local,
            nats_url: "nats://127.0.0.1:4222".into(),
            subject_prefix: "confab".into(),
            start_timeout_secs: 60,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusBackend {
    #[default]
    Local,
    Nats,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    #[default]
    Sqlite,
    Postgres,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Sqlite,
            synchronous: Synchronous::Full,
            readers: 4,
            max_batch: 512,
            unhealthy_after_secs: 30,
            postgres_url: String::new(),
            postgres_pool_size: 8,
            postgres_statement_timeout_secs: 30,
            start_timeout_secs: 60,
        }
    }
}
