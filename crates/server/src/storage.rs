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

/// Brings the configured store's schema up to date (`confab migrate`), or with `dry_run` says what that would
/// apply and changes nothing (reads only: the SQLite file is opened read-only, PostgreSQL in a read-only
/// transaction without the migration lock); returns the report for the operator: the store, its schema
/// version, and each migration applied or to apply.
pub async fn migrate(config: &Config, dry_run: bool) -> anyhow::Result<String> {
    match config.storage.backend {
        StorageBackend::Sqlite => {
            let sqlite = sqlite_config(config);
            let path = sqlite.path.clone();
            let store = format!("SQLite database {}", path.display());
            let failed = |e: confab_domain::DomainError| anyhow::anyhow!("opening storage: {e}");
            let latest = confab_store_sqlite::latest_version();
            if dry_run {
                let version = confab_store_sqlite::schema_version(&path).map_err(failed)?;
                let pending = confab_store_sqlite::pending_migrations(&path).map_err(failed)?;
                return Ok(migration_report(&store, version, latest, &pending, true));
            }
            std::fs::create_dir_all(&config.data_dir)
                .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", config.data_dir.display()))?;
            let applied = confab_store_sqlite::apply_migrations(&sqlite).map_err(failed)?;
            let version = confab_store_sqlite::schema_version(&path).map_err(failed)?;
            Ok(migration_report(&store, version, latest, &applied, false))
        }
        StorageBackend::Postgres => {
            let pg = postgres_config(config)?;
            let store = format!("PostgreSQL at {}", pg.target());
            let start_timeout = Duration::from_secs(config.storage.start_timeout_secs);
            let latest = confab_store_postgres::latest_version();
            let (version, migrations) = retrying("PostgreSQL", start_timeout, is_unreachable_postgres, || {
                let pg = pg.clone();
                async move {
                    let migrations = if dry_run {
                        confab_store_postgres::pending_migrations(&pg).await?
                    } else {
                        confab_store_postgres::apply_migrations(&pg).await?
                    };
                    Ok::<_, PostgresError>((confab_store_postgres::schema_version(&pg).await?, migrations))
                }
            })
            .await?;
            Ok(migration_report(&store, version, latest, &migrations, dry_run))
        }
    }
}

/// What `confab migrate` prints: the store and its schema version, then one line per migration applied (or,
/// in a dry run, to apply), `  v9 files: …`.
fn migration_report(store: &str, version: u32, latest: u32, migrations: &[(u32, &str)], dry_run: bool) -> String {
    let count = match migrations.len() {
        1 => "1 migration".to_string(),
        n => format!("{n} migrations"),
    };
    let mut out = if migrations.is_empty() && version > latest {
        format!(
            "{store}: schema version {version}, newer than this release's {latest}: nothing to apply (a newer \
             release migrated it; this one runs against it)"
        )
    } else if migrations.is_empty() {
        format!("{store}: schema version {version}: up to date")
    } else if dry_run {
        format!("{store}: schema version {version}; would apply {count} (dry run: nothing changed):")
    } else {
        format!("{store}: applied {count}, schema version {version} now:")
    };
    for (v, name) in migrations {
        out.push_str(&format!("\n  v{v} {name}"));
    }
    out
}

fn sqlite_config(config: &Config) -> SqliteConfig {
    let mut c = SqliteConfig::new(config.data_dir.join("confab.db"));
    c.synchronous = config.storage.synchronous;
    c.readers = config.storage.readers;
    c.max_batch = config.storage.max_batch;
    c
}

pub(crate) fn postgres_config(config: &Config) -> anyhow::Result<PostgresConfig> {
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
    fn migration_reports_name_the_store_the_version_and_each_migration() {
        let store = "SQLite database /data/confab.db";
        let pending = [(10, "files: removed files of deleted channels"), (11, "leases")];
        assert_eq!(
            migration_report(store, 9, 11, &pending, true),
            "SQLite database /data/confab.db: schema version 9; would apply 2 migrations (dry run: nothing \
             changed):\n  v10 files: removed files of deleted channels\n  v11 leases"
        );
        assert_eq!(
            migration_report(store, 11, 11, &pending[1..], false),
            "SQLite database /data/confab.db: applied 1 migration, schema version 11 now:\n  v11 leases"
        );
        for dry_run in [true, false] {
            assert_eq!(
                migration_report(store, 11, 11, &[], dry_run),
                "SQLite database /data/confab.db: schema version 11: up to date"
            );
        }
        let newer = migration_report("PostgreSQL at db:5432", 2, 1, &[], true);
        assert!(
            newer.contains("schema version 2, newer than this release's 1: nothing to apply"),
            "{newer}"
        );
    }

    /// `--dry-run` on a data dir without a database lists every migration and creates nothing; applying
    /// says what it applied; the dry run then finds nothing.
    #[tokio::test]
    async fn migrate_dry_run_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        let all = confab_store_sqlite::migrations();
        let dry = migrate(&config, true).await.unwrap();
        assert!(dry.contains("schema version 0; would apply"), "{dry}");
        assert_eq!(dry.lines().count(), 1 + all.len(), "{dry}");
        assert!(dry.contains(&format!("\n  v1 {}", all[0].name)), "{dry}");
        assert!(!config.data_dir.exists(), "a dry run creates nothing");
        let applied = migrate(&config, false).await.unwrap();
        assert!(
            applied.contains(&format!("applied {} migrations", all.len())),
            "{applied}"
        );
        let again = migrate(&config, true).await.unwrap();
        assert!(
            again.ends_with(&format!("schema version {}: up to date", all.len())),
            "{again}"
        );
    }

    #[test]
    fn postgres_needs_a_url() {
        let mut config = Config::default();
        config.storage.backend = StorageBackend::Postgres;
        let err = postgres_config(&config).unwrap_err().to_string();
        assert!(err.contains("CONFAB_STORAGE__POSTGRES_URL"), "{err}");
    }
}
