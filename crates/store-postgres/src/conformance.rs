//! The store conformance suite (`confab-store-conformance`) run against PostgreSQL: each store is a schema
//! of its own in the test database (see `testing`), connected again for the durability checks. Without a
//! reachable server every check skips visibly (or fails, with `CONFAB_REQUIRE_POSTGRES=1`).

use std::sync::Arc;

use async_trait::async_trait;
use confab_domain::ports::{DynBus, DynStore};
use confab_store_conformance::Backend;

use crate::PostgresStore;
use crate::testing::{TestSchema, unavailable};

struct PostgresBackend;

#[async_trait]
impl Backend for PostgresBackend {
    type Data = TestSchema;

    async fn open(&self, bus: DynBus) -> (Self::Data, DynStore) {
        let schema = TestSchema::create().await;
        let store = PostgresStore::connect(schema.config(), bus)
            .await
            .expect("the store connects");
        (schema, Arc::new(store))
    }

    async fn reopen(&self, schema: &Self::Data, bus: DynBus) -> DynStore {
        Arc::new(
            PostgresStore::connect(schema.config(), bus)
                .await
                .expect("the store connects again"),
        )
    }

    async fn unavailable(&self) -> Option<String> {
        unavailable().await
    }
}

confab_store_conformance::suite!(PostgresBackend);
