//! Opening the configured store, bus and file storage: SQLite in the data dir, the in-process bus and the data
//! dir's `files/` (the default), or PostgreSQL (`[storage] backend = "postgres"`) and NATS (`[bus] backend =
//! "nats"`), whose start waits for each, retrying, and says what it waits for, and an S3 bucket (`[files]
//! backend = "s3"`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_bus::LocalBus;
use confab_bus_nats::{NatsBus, NatsBusError, NatsConfig};
use confab_domain::ports::{DynBus, DynStore};
use confab_files_object::ObjectBlobs;
use confab_service::blobs::{FileBlobs, LocalBlobs};
use confab_store_postgres::{PostgresConfig, PostgresError, PostgresStore};
use confab_store_sqlite::{SqliteConfig, SqliteStore};
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::config::{BusBackend, FilesBackend, StorageBackend};

/// The bus of this node: in-process, or NATS (closed, letting queued events out, at `shutdown`).
pub async fn open_bus(config: &Config, node_id: &str, shutdown: &CancellationToken) -> anyhow::Result<DynBus> {
    match config.bus.backend {
        BusBackend::Local => Ok(Arc::new(LocalBus::default())),
        BusBackend::Nats => {
            let b = &config.bus;
            let mut nats = NatsConfig::new(b.nats_url.clone());
            nats.subject_prefix = b.subject_prefix.clone();
            nats.node_id = node_id.to_string();
            let start_timeout = Duration::from_secs(b.start_timeout_secs);
            let bus = retrying("NATS", start_timeout, is_unreachable_nats, || {
                NatsBus::connect(nats.clone())
            })
            .await?;
            let bus = Arc::new(bus);
            let closing = bus.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                closing.close().await;
            });
            Ok(bus)
        }
    }
}

fn is_unreachable_nats(e: &NatsBusError) -> bool {
    matches!(e, NatsBusError::Unreachable { .. } | NatsBusError::Subscribe { .. })
}

fn is_unreachable_postgres(e: &PostgresError) -> bool {
    matches!(e, PostgresError::Connect { .. })
}

/// Longest pause between two attempts to reach the database.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// Where this node keeps uploaded files' bytes: the data dir's `files/`, or an object store (checked with a
/// write at start, so a wrong bucket, endpoint or credential stops the start with the store's reason).
pub async fn open_files(config: &Config, node_id: &str) -> anyhow::Result<Arc<dyn FileBlobs>> {
    let blobs: Arc<dyn FileBlobs> = match config.files.backend {
        FilesBackend::Local => Arc::new(LocalBlobs::new(config.data_dir.join("files"))),
        FilesBackend::S3 => {
            let blobs = ObjectBlobs::s3(&config.files.s3()).map_err(|e| anyhow::anyhow!("[files] {e}"))?;
            blobs
                .probe(node_id)
                .await
                .map_err(|e| anyhow::anyhow!("[files] cannot write to {}: {e}", blobs.describe()))?;
            Arc::new(blobs)
        }
    };
    tracing::info!(files = %blobs.describe(), "uploaded files");
    Ok(blobs)
}

/// `node_id` names this node among those sharing a PostgreSQL database (its generating replies are its own).
pub async fn open_store(config: &Config, node_id: &str, bus: DynBus) -> anyhow::Result<DynStore> {
    match config.storage.backend {
        StorageBackend::Sqlite => {
            let store =
                SqliteStore::open(sqlite_config(config), bus).map_err(|e| anyhow::anyhow!("opening storage: {e}"))?;
            Ok(Arc::new(store))
        }
        StorageBackend::Postgres => {
            let mut pg = postgres_config(config)?;
            pg.node_id = node_id.to_string();
            let start_timeout = Duration::from_secs(config.storage.start_timeout_secs);
            let store = retrying("PostgreSQL", start_timeout, is_unreachable_postgres, || {
                PostgresStore::connect(pg.clone(), bus.clone())
            })
            .await?;
            Ok(Arc::new(store))
        }
    }
}

/// Brings the configured store's schema up to date (`confab migrate`); returns what it did, for the operator.
pub async fn migrate(config: &Config) -> anyhow::Result<String> {
    match config.storage.backend {
        StorageBackend::Sqlite => {
            let path = sqlite_config(config).path;
            std::fs::create_dir_all(&config.data_dir)
                .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", config.data_dir.display()))?;
            SqliteStore::open(sqlite_config(config), Arc::new(confab_bus::LocalBus::default()))
                .map_err(|e| anyhow::anyhow!("opening storage: {e}"))?;
            Ok(format!("SQLite schema up to date in {}", path.display()))
        }
        StorageBackend::Postgres => {
            let pg = postgres_config(config)?;
            let start_timeout = Duration::from_secs(config.storage.start_timeout_secs);
            let applied = retrying("PostgreSQL", start_timeout, is_unreachable_postgres, || {
                confab_store_postgres::migrate(&pg)
            })
            .await?;
            Ok(format!("PostgreSQL schema up to date ({applied} migrations applied)"))
        }
    }
}

fn sqlite_config(config: &Config) -> SqliteConfig {
    let mut c = SqliteConfig::new(config.data_dir.join("confab.db"));
    c.synchronous = config.storage.synchronous;
    c.readers = config.storage.readers;
    c.max_batch = config.storage.max_batch;
    c
}

fn postgres_config(config: &Config) -> anyhow::Result<PostgresConfig> {
    let s = &config.storage;
    if s.postgres_url.trim().is_empty() {
        anyhow::bail!(
            "storage.backend = \"postgres\" needs storage.postgres_url (or the environment variable \
             CONFAB_STORAGE__POSTGRES_URL), e.g. postgres://confab@127.0.0.1:5432/confab"
        );
    }
    let mut c = PostgresConfig::new(s.postgres_url.clone());
    c.pool_size = s.postgres_pool_size.max(1);
    c.statement_timeout = Duration::from_secs(s.postgres_statement_timeout_secs.max(1));
    c.max_batch = s.max_batch.max(1);
    Ok(c)
}

/// Runs `attempt` until it succeeds, fails for a reason waiting cannot fix (`unreachable` is false), or
/// `timeout` has passed; each failure to reach `what` is logged as waiting for it.
async fn retrying<T, E, F, Fut>(
    what: &'static str,
    timeout: Duration,
    unreachable: fn(&E) -> bool,
    mut attempt: F,
) -> anyhow::Result<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(200);
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if unreachable(&e) && started.elapsed() + pause < timeout => {
                tracing::warn!(
                    error = %e,
                    waited_secs = started.elapsed().as_secs(),
                    gives_up_after_secs = timeout.as_secs(),
                    "waiting for {what}"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
            Err(e) => return Err(anyhow::anyhow!("opening {what}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_database_is_retried_until_the_start_timeout_then_named() {
        let mut attempts = 0;
        let started = Instant::now();
        let err = retrying(
            "PostgreSQL",
            Duration::from_millis(700),
            is_unreachable_postgres,
            || {
                attempts += 1;
                async {
                    Err::<(), _>(PostgresError::Connect {
                        target: "db.example:5432".into(),
                        reason: "connection refused".into(),
                    })
                }
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(attempts >= 2, "retried: {attempts}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            err.contains("db.example:5432") && err.contains("connection refused"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn errors_that_waiting_cannot_fix_fail_at_once() {
        let mut attempts = 0;
        let err = retrying("PostgreSQL", Duration::from_secs(60), is_unreachable_postgres, || {
            attempts += 1;
            async { Err::<(), _>(PostgresError::Url("no scheme".into())) }
        })
        .await
        .unwrap_err();
        assert_eq!(attempts, 1);
        assert!(err.to_string().contains("invalid PostgreSQL URL"), "{err}");
    }

    #[test]
    fn postgres_needs_a_url() {
        let mut config = Config::default();
        config.storage.backend = StorageBackend::Postgres;
        let err = postgres_config(&config).unwrap_err().to_string();
        assert!(err.contains("CONFAB_STORAGE__POSTGRES_URL"), "{err}");
    }
}
