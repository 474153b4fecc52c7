//! What the tests share: a schema of their own per store in the test database, and skipping visibly when
//! PostgreSQL is not there.
//!
//! The database is `CONFAB_TEST_POSTGRES_URL` (default `postgres://root@127.0.0.1:5432/test`); each store
//! under test gets a fresh schema `confab_t_<random hex>`, selected by the connection's `search_path`, and
//! dropped when its [`TestSchema`] is. Nothing is shared between tests, which run in parallel.

use std::io::Write;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use confab_bus::LocalBus;
use confab_domain::ports::DynBus;
use tokio_postgres::NoTls;

use crate::{PostgresConfig, PostgresStore, target_of};

const DEFAULT_URL: &str = "postgres://root@127.0.0.1:5432/test";

/// The test database's URL.
pub fn base_url() -> String {
    std::env::var("CONFAB_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

fn base_config() -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::from_str(&base_url()).expect("CONFAB_TEST_POSTGRES_URL parses");
    pg.connect_timeout(Duration::from_secs(3));
    pg
}

/// Why PostgreSQL cannot be tested here, or `None` when it can. With `CONFAB_REQUIRE_POSTGRES=1` (CI) an
/// unreachable server fails the test instead.
pub async fn unavailable() -> Option<String> {
    let pg = base_config();
    let err = match pg.connect(NoTls).await {
        Ok((client, connection)) => {
            drop(client);
            let _ = connection.await;
            return None;
        }
        Err(e) => e,
    };
    let why = format!(
        "PostgreSQL not reachable at {} ({}); run with CONFAB_TEST_POSTGRES_URL=postgres://user@host:port/database",
        target_of(&pg),
        crate::error::describe(&err)
    );
    if std::env::var("CONFAB_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
        panic!("CONFAB_REQUIRE_POSTGRES=1 but {why}");
    }
    Some(why)
}

/// Skips the running test (see [`unavailable`]) when PostgreSQL is not there: true when it was skipped.
pub async fn skip_without_postgres() -> bool {
    match unavailable().await {
        Some(why) => {
            let thread = std::thread::current();
            let test = thread.name().filter(|n| *n != "main").unwrap_or("a test");
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
            true
        }
        None => false,
    }
}

/// A schema of its own in the test database, dropped (with everything in it) when this is dropped.
pub struct TestSchema {
    pub name: String,
}

impl TestSchema {
    pub async fn create() -> TestSchema {
        let name = format!("confab_t_{:016x}", rand::random::<u64>());
        let (client, connection) = base_config()
            .connect(NoTls)
            .await
            .expect("the test database is reachable");
        let conn = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("the test schema is created");
        drop(client);
        let _ = conn.await;
        TestSchema { name }
    }

    /// The store's URL: the test database, with this schema first (and only) in the search path.
    pub fn url(&self) -> String {
        with_search_path(&base_url(), &self.name)
    }

    /// Connects to the test database itself (not through a store), for a test's own statements.
    pub async fn admin(&self) -> tokio_postgres::Client {
        let (client, connection) = base_config()
            .connect(NoTls)
            .await
            .expect("the test database is reachable");
        tokio::spawn(connection);
        client
    }

    /// One node's configuration: the same node (by its id) every time, as a node restarting.
    pub fn config(&self) -> PostgresConfig {
        let mut config = PostgresConfig::new(self.url());
        config.node_id = format!("node-{}", self.name);
        config
    }

    /// A store on this schema as a node of its own (a fresh node id), with a bus of its own.
    pub async fn store(&self) -> (PostgresStore, Arc<LocalBus>) {
        let bus = Arc::new(LocalBus::default());
        let dyn_bus: DynBus = bus.clone();
        let store = PostgresStore::connect(PostgresConfig::new(self.url()), dyn_bus)
            .await
            .expect("the store connects");
        (store, bus)
    }
}

impl Drop for TestSchema {
    /// Best effort, on a thread of its own with a runtime of its own (this may run inside a test's runtime),
    /// waited for, so the process does not exit before the schema is gone.
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let Ok(runtime) = runtime else { return };
            runtime.block_on(async move {
                let Ok((client, connection)) = base_config().connect(NoTls).await else {
                    return;
                };
                let conn = tokio::spawn(connection);
                if let Err(e) = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
                {
                    let _ = writeln!(std::io::stderr(), "test schema {name} not dropped: {e}");
                }
                drop(client);
                let _ = conn.await;
            });
        });
        let _ = dropper.join();
    }
}

/// `url` with `search_path` set to `schema` through the connection's options (URL or key/value form), and
/// the schema's name as the application name (a test can find its own connections by it).
fn with_search_path(url: &str, schema: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-c%20search_path%3D{schema}&application_name={schema}")
    } else {
        format!("{url} options='-c search_path={schema}' application_name={schema}")
    }
}
