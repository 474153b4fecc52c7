//! The store conformance suite (`confab-store-conformance`) run against SQLite: each store is a database
//! file in a temporary directory of its own, opened again from the same path.

use std::sync::Arc;

use async_trait::async_trait;
use confab_domain::ports::{DynBus, DynStore};
use confab_store_conformance::Backend;

use crate::{SqliteConfig, SqliteStore};

struct SqliteBackend;

fn config(dir: &tempfile::TempDir) -> SqliteConfig {
    SqliteConfig::new(dir.path().join("store.db"))
}

#[async_trait]
impl Backend for SqliteBackend {
    type Data = tempfile::TempDir;

    async fn open(&self, bus: DynBus) -> (Self::Data, DynStore) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SqliteStore::open(config(&dir), bus).expect("the store opens");
        (dir, Arc::new(store))
    }

    async fn reopen(&self, dir: &Self::Data, bus: DynBus) -> DynStore {
        Arc::new(SqliteStore::open(config(dir), bus).expect("the store opens again"))
    }
}

confab_store_conformance::suite!(SqliteBackend);
